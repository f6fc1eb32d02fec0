// Signal names as `kit sandbox kill --signal` takes them: kit/cli/control.py
// `signal_number`, which reads Python's `signal.Signals` on Linux. The table below is that
// enum's members (aliases included); tests/cli/test_signal_names.py checks it against
// Python's own.

/** `signal.Signals.__members__` on Linux: every name and its number. */
export const SIGNALS: Readonly<Record<string, number>> = {
  SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGIOT: 6, SIGBUS: 7,
  SIGFPE: 8, SIGKILL: 9, SIGUSR1: 10, SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14,
  SIGTERM: 15, SIGSTKFLT: 16, SIGCHLD: 17, SIGCLD: 17, SIGCONT: 18, SIGSTOP: 19, SIGTSTP: 20,
  SIGTTIN: 21, SIGTTOU: 22, SIGURG: 23, SIGXCPU: 24, SIGXFSZ: 25, SIGVTALRM: 26, SIGPROF: 27,
  SIGWINCH: 28, SIGIO: 29, SIGPOLL: 29, SIGPWR: 30, SIGSYS: 31, SIGRTMIN: 34, SIGRTMAX: 64,
};

const NUMBERS = new Set(Object.values(SIGNALS));

/** A signal name or number that names no signal; the message is kit's. */
export class UnknownSignal extends Error {
  override name = "UnknownSignal";
}

/** Python's `str.isspace` characters, which `str.strip()` removes. */
const PY_SPACE = /^[\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+|[\t\n\v\f\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$/g;

/** `KILL`, `SIGKILL`, `kill` or `9` → 9; UnknownSignal naming the choices otherwise. */
export function signalNumber(name: string): number {
  let text = name.replace(PY_SPACE, "").toUpperCase();
  if (text.startsWith("SIG")) text = text.slice(3);
  if (/^[0-9]+$/.test(text)) {
    const number = Number(text);
    if (NUMBERS.has(number)) return number;
  } else if (Object.hasOwn(SIGNALS, `SIG${text}`)) {
    return SIGNALS[`SIG${text}`];
  }
  throw new UnknownSignal(`Unknown signal ${pyRepr(name)}; use a name like KILL, TERM, INT or SEGV, or a number.`);
}

/** Python's `str(value)` of a decoded JSON value (`body.get("signal")` before it is read
 * as a signal). */
export function pyStr(value: unknown): string {
  return typeof value === "string" ? value : pyRepr(value);
}

/** Python's `repr` of a decoded JSON value: quotes as Python chooses them, `None`, `True`,
 * lists and dicts with Python's separators. */
export function pyRepr(value: unknown): string {
  if (value === null || value === undefined) return "None";
  if (typeof value === "boolean") return value ? "True" : "False";
  if (typeof value === "number") return String(value);
  if (typeof value === "string") return reprText(value);
  if (Array.isArray(value)) return `[${value.map(pyRepr).join(", ")}]`;
  if (typeof value === "object") {
    return `{${Object.entries(value as Record<string, unknown>).map(([k, v]) => `${reprText(k)}: ${pyRepr(v)}`).join(", ")}}`;
  }
  return String(value);
}

function reprText(text: string): string {
  const quote = text.includes("'") && !text.includes('"') ? '"' : "'";
  let out = "";
  for (const ch of text) {
    const code = ch.codePointAt(0)!;
    if (ch === "\\" || ch === quote) out += `\\${ch}`;
    else if (ch === "\n") out += "\\n";
    else if (ch === "\r") out += "\\r";
    else if (ch === "\t") out += "\\t";
    else if (code < 0x20 || (code >= 0x7f && code < 0xa0)) out += `\\x${code.toString(16).padStart(2, "0")}`;
    else out += ch;
  }
  return quote + out + quote;
}
