// The session summary a SessionStore keeps beside each main transcript, sans I/O: a port of
// the Agent SDK's `fold_session_summary` (claude_agent_sdk/_internal/session_summary.py).
// The store folds each append's entries into the previous summary and persists the result;
// `list_session_summaries` answers with it, so the SDK lists sessions without loading every
// transcript. Both folds replay tests/storage/golden/summary_fold.jsonl (test/summary.test.ts
// here; tests/storage/test_summary_fold.py checks the file against the SDK's own fold).

/** A summary's opaque data: set-once and last-wins fields derived from the entries. */
export type SummaryData = { [key: string]: unknown };

/** JSONL entry keys whose latest string value wins, and their summary keys. */
const LAST_WINS: ReadonlyArray<[string, string]> = [
  ["customTitle", "custom_title"],
  ["aiTitle", "ai_title"],
  ["lastPrompt", "last_prompt"],
  ["summary", "summary_hint"],
  ["gitBranch", "git_branch"],
];

/** The SDK's `_COMMAND_NAME_RE` (Python's `.` is any character but `\n`). */
const COMMAND_NAME = /<command-name>([^\n]*?)<\/command-name>/;
/** The SDK's `_SKIP_FIRST_PROMPT_PATTERN`, matched at the start as `re.match` does. */
const SKIP_FIRST_PROMPT =
  /^(?:<local-command-stdout>|<session-start-hook>|<tick>|<goal>|\[Request interrupted by user[^\]]*\]|\s*<ide_opened_file>[\s\S]*<\/ide_opened_file>\s*$|\s*<ide_selection>[\s\S]*<\/ide_selection>\s*$)/;
/** The first prompt is cut to this many code points (then `…`). */
const FIRST_PROMPT_MAX = 200;

/** ISO 8601 as the SDK's `datetime.fromisoformat` reads it in practice: a date, an optional
 * time (`T` or a space; hours, minutes, seconds, any fraction) and an optional offset. */
const ISO = /^(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2})(?::(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?)?(Z|[+-]\d{2}(?::?\d{2})?)?$/;

/** Fold one append's entries into `prev` (the data of the session's summary so far, or
 * null for its first append); the new data. Only for main transcripts: a subagent's
 * entries never reach its session's summary. */
export function foldSummary(prev: SummaryData | null, entries: ReadonlyArray<{ [key: string]: unknown }>): SummaryData {
  const data: SummaryData = { ...(prev ?? {}) };
  for (const entry of entries) {
    const ms = isoToEpochMs(entry.timestamp);
    if (!("is_sidechain" in data)) data.is_sidechain = entry.isSidechain === true;
    if (!("created_at" in data) && ms !== null) data.created_at = ms;
    if (!("cwd" in data) && typeof entry.cwd === "string" && entry.cwd !== "") data.cwd = entry.cwd;
    foldFirstPrompt(data, entry);
    for (const [source, target] of LAST_WINS) {
      if (typeof entry[source] === "string") data[target] = entry[source];
    }
    if (entry.type === "tag") {
      if (typeof entry.tag === "string" && entry.tag !== "") data.tag = entry.tag;
      else delete data.tag; // an empty or absent tag clears it
    }
  }
  return data;
}

/** Epoch milliseconds of an ISO 8601 timestamp as Python computes them
 * (`int(datetime.fromisoformat(ts).timestamp() * 1000)`, a naive time read as UTC), or
 * null for anything that is no timestamp. */
export function isoToEpochMs(ts: unknown): number | null {
  if (typeof ts !== "string") return null;
  const m = ISO.exec(ts);
  if (m === null) return null;
  const [year, month, day, hour, minute, second] = [1, 2, 3, 4, 5, 6].map((i) => Number(m[i] ?? 0));
  if (year < 1 || month < 1 || month > 12 || day < 1 || day > daysIn(year, month) || hour > 23 || minute > 59 || second > 59) return null;
  const micros = Number((m[7] ?? "").slice(0, 6).padEnd(6, "0"));
  let offsetS = 0;
  const zone = m[8];
  if (zone !== undefined && zone !== "Z") {
    const digits = zone.slice(1).replace(":", "");
    const [oh, om] = [Number(digits.slice(0, 2)), Number(digits.slice(2, 4) || 0)];
    if (oh > 23 || om > 59) return null;
    offsetS = (zone[0] === "-" ? -1 : 1) * (oh * 3600 + om * 60);
  }
  const at = new Date(0);
  at.setUTCFullYear(year, month - 1, day); // not Date.UTC, which reads years below 100 as 19xx
  at.setUTCHours(hour, minute, second, 0);
  const wholeS = at.getTime() / 1000 - offsetS;
  // Python: timedelta.total_seconds() is (µs as an integer) / 10**6, then * 1000, truncated.
  return Math.trunc(((wholeS * 1_000_000 + micros) / 1_000_000) * 1000);
}

function daysIn(year: number, month: number): number {
  const last = new Date(0);
  last.setUTCFullYear(year, month, 0); // day 0 of the next month
  return last.getUTCDate();
}

/** The SDK's `_fold_first_prompt`: the first real user prompt, or a slash command's name. */
function foldFirstPrompt(data: SummaryData, entry: { [key: string]: unknown }): void {
  if (data.first_prompt_locked) return;
  if (entry.type !== "user") return;
  if (entry.isMeta === true || entry.isCompactSummary === true) return;
  const message = entry.message;
  const content = isObject(message) ? message.content : undefined;
  if (Array.isArray(content) && content.some((b) => isObject(b) && b.type === "tool_result")) return;
  for (const raw of textBlocks(content)) {
    let result = raw.replaceAll("\n", " ").trim();
    if (result === "") continue;
    const command = COMMAND_NAME.exec(result);
    if (command !== null) {
      if (!data.command_fallback) data.command_fallback = command[1];
      continue;
    }
    if (SKIP_FIRST_PROMPT.test(result)) continue;
    const points = [...result];
    if (points.length > FIRST_PROMPT_MAX) result = points.slice(0, FIRST_PROMPT_MAX).join("").trimEnd() + "\u2026";
    data.first_prompt = result;
    data.first_prompt_locked = true;
    return;
  }
}

/** The text of a user message's content: a string, or its `text` blocks. */
function textBlocks(content: unknown): string[] {
  if (typeof content === "string") return [content];
  if (!Array.isArray(content)) return [];
  return content.filter((b) => isObject(b) && b.type === "text" && typeof b.text === "string").map((b) => (b as { text: string }).text);
}

function isObject(value: unknown): value is { [key: string]: unknown } {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
