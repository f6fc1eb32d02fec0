// The lines of `GET /_kit/sessions/{id}/events` as kit/cli/follow.py writes them
// (`event_line`, `end_line`: Python's `json.dumps`, so its separators ", " and ": "):
// one event a line, then one `{"end": reason, "message": …}` line.

import type { EventRow } from "./frames";

/** Python's `json.dumps(value, ensure_ascii=ascii)` of a decoded JSON value. */
export function pyJson(value: unknown, ascii = false): string {
  if (value === null || value === undefined) return "null";
  if (typeof value === "string") return text(value, ascii);
  if (typeof value === "number" || typeof value === "boolean") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map((v) => pyJson(v, ascii)).join(", ")}]`;
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>);
    return `{${entries.map(([k, v]) => `${text(k, ascii)}: ${pyJson(v, ascii)}`).join(", ")}}`;
  }
  return "null";
}

function text(value: string, ascii: boolean): string {
  const json = JSON.stringify(value);
  return ascii ? json.replace(/[\u0080-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`) : json;
}

/** One event as an NDJSON line (kit/cli/follow.py `event_line`). */
export function eventLine(row: EventRow): string {
  const body = { seq: row.seq, kind: row.kind, turn_id: row.turn_id, data: JSON.parse(row.data) as unknown, ts: row.ts };
  return pyJson(body) + "\n";
}

/** Why a stream of events ended: `done` (every stored event was sent), `stopping` (the
 * follow reached its bound), or `error` (kit/cli/follow.py `End`). */
export type EndReason = "done" | "stopping" | "error";

/** The line that closes a stream (kit/cli/follow.py `end_line`). */
export function endLine(reason: EndReason, message: string): string {
  return pyJson({ end: reason, message }, true) + "\n";
}
