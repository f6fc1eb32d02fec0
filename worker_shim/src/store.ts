// The session's transcript store in the DO's SQLite: the Agent SDK's SessionStore
// (`append`, `load`, `list_sessions`, `list_session_summaries`, `delete`, `list_subkeys`)
// with the semantics of kit/storage/sqlite.py, sans HTTP (storeapi.ts serves it).
//
// An entry is kept as the JSON text it arrived as (numbers exactly as written), so `load`
// answers exactly what was appended, in order. A row of DO SQLite holds at most 2 MB, so an
// entry's text is cut into parts of at most PART_CHARS UTF-16 code units (never between
// the two halves of a surrogate pair; ≤ 3 bytes of UTF-8 each): `part` 0 starts an entry
// and holds its uuid, parts 1, 2, … follow it in rowid order. An entry's `uuid` is its
// idempotency key (a uuid stored under the key already is skipped, also within one
// append). Each append is one transaction (`transactionSync`), summary fold included.
//
// The tables are made when the first store token is minted (storeapi.ts), so a DO that
// holds no session has none; every read first checks they exist.

import { foldSummary, type SummaryData } from "./summary";

export const STORE_SCHEMA = `
CREATE TABLE IF NOT EXISTS store_entries (
  id INTEGER PRIMARY KEY, project_key TEXT NOT NULL, session_id TEXT NOT NULL, subpath TEXT NOT NULL,
  uuid TEXT, part INTEGER NOT NULL, body TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS store_entries_uuid
  ON store_entries(project_key, session_id, subpath, uuid) WHERE uuid IS NOT NULL;
CREATE INDEX IF NOT EXISTS store_entries_key ON store_entries(project_key, session_id, subpath, id);
CREATE TABLE IF NOT EXISTS store_keys (
  project_key TEXT NOT NULL, session_id TEXT NOT NULL, subpath TEXT NOT NULL, mtime INTEGER NOT NULL,
  PRIMARY KEY (project_key, session_id, subpath)
);
CREATE TABLE IF NOT EXISTS store_summaries (
  project_key TEXT NOT NULL, session_id TEXT NOT NULL, mtime INTEGER NOT NULL, data TEXT NOT NULL,
  PRIMARY KEY (project_key, session_id)
);
`;

/** DO SQLite's limit on one string, BLOB or row (reference: cloudflare.md §4). */
export const MAX_ROW_BYTES = 2_000_000;
/** UTF-16 code units per part of an entry's text: at most 1.5 MB of UTF-8, under MAX_ROW_BYTES
 * with the key's columns beside it. */
export const PART_CHARS = 512 * 1024;

/** A transcript key (`subpath` "" for the main transcript). */
export interface StoreKey {
  project_key: string;
  session_id: string;
  subpath: string;
}

/** An entry to append: its JSON text, its uuid (if any) and the parsed value (for the
 * summary fold). */
export interface NewEntry {
  text: string;
  uuid: string | null;
  value: { [key: string]: unknown };
}

export class TranscriptStore {
  constructor(private readonly storage: DurableObjectStorage) {}

  private get sql(): SqlStorage {
    return this.storage.sql;
  }

  /** Make the tables (idempotent). */
  create(): void {
    this.sql.exec(STORE_SCHEMA);
  }

  /** Whether the tables exist (a store token was ever minted here). */
  exists(): boolean {
    return this.sql.exec("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store_keys'").toArray().length > 0;
  }

  /** Append in order, skipping uuids already stored under `key`; nothing for no new entry. */
  append(key: StoreKey, entries: readonly NewEntry[]): void {
    if (entries.length === 0) return;
    this.create();
    this.storage.transactionSync(() => {
      const fresh: NewEntry[] = [];
      for (const entry of entries) {
        const parts = split(entry.text, PART_CHARS);
        const head = this.sql.exec(
          "INSERT OR IGNORE INTO store_entries (project_key, session_id, subpath, uuid, part, body) VALUES (?, ?, ?, ?, 0, ?)",
          key.project_key,
          key.session_id,
          key.subpath,
          entry.uuid,
          parts[0],
        );
        if (head.rowsWritten === 0) continue; // its uuid is stored already
        for (let i = 1; i < parts.length; i++) {
          this.sql.exec(
            "INSERT INTO store_entries (project_key, session_id, subpath, uuid, part, body) VALUES (?, ?, ?, NULL, ?, ?)",
            key.project_key,
            key.session_id,
            key.subpath,
            i,
            parts[i],
          );
        }
        fresh.push(entry);
      }
      if (fresh.length === 0) return;
      const mtime = this.nextMtime();
      this.sql.exec(
        "INSERT INTO store_keys VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET mtime = excluded.mtime",
        key.project_key,
        key.session_id,
        key.subpath,
        mtime,
      );
      if (key.subpath !== "") return; // a subagent's entries never reach the summary
      const prev = this.sql
        .exec<{ data: string }>("SELECT data FROM store_summaries WHERE project_key = ? AND session_id = ?", key.project_key, key.session_id)
        .toArray()[0];
      const data = foldSummary(prev === undefined ? null : (JSON.parse(prev.data) as SummaryData), fresh.map((e) => e.value));
      this.sql.exec(
        "INSERT INTO store_summaries VALUES (?, ?, ?, ?) ON CONFLICT DO UPDATE SET mtime = excluded.mtime, data = excluded.data",
        key.project_key,
        key.session_id,
        mtime,
        JSON.stringify(data),
      );
    });
  }

  /** The JSON texts of `key`'s entries in append order, or null if it was never written. */
  load(key: StoreKey): string[] | null {
    if (!this.exists()) return null;
    const known = this.sql
      .exec("SELECT 1 FROM store_keys WHERE project_key = ? AND session_id = ? AND subpath = ?", key.project_key, key.session_id, key.subpath)
      .toArray();
    if (known.length === 0) return null;
    const texts: string[] = [];
    let current: string[] = [];
    const rows = this.sql.exec<{ part: number; body: string }>(
      "SELECT part, body FROM store_entries WHERE project_key = ? AND session_id = ? AND subpath = ? ORDER BY id",
      key.project_key,
      key.session_id,
      key.subpath,
    );
    for (const row of rows) {
      if (row.part === 0 && current.length > 0) {
        texts.push(current.join(""));
        current = [];
      }
      current.push(row.body);
    }
    if (current.length > 0) texts.push(current.join(""));
    return texts;
  }

  /** Main transcripts of `projectKey` (of `sessionId` only, unless null), with their write
   * time (epoch ms). */
  listSessions(projectKey: string, sessionId: string | null): Array<{ session_id: string; mtime: number }> {
    if (!this.exists()) return [];
    return this.sql
      .exec<{ session_id: string; mtime: number }>(
        "SELECT session_id, mtime FROM store_keys WHERE project_key = ? AND subpath = '' AND (? IS NULL OR session_id = ?) ORDER BY session_id",
        projectKey,
        sessionId,
        sessionId,
      )
      .toArray()
      .map((r) => ({ session_id: r.session_id, mtime: r.mtime }));
  }

  /** The summaries of `projectKey` (of `sessionId` only, unless null); `data` as stored
   * (JSON text). */
  listSummaries(projectKey: string, sessionId: string | null): Array<{ session_id: string; mtime: number; data: string }> {
    if (!this.exists()) return [];
    return this.sql
      .exec<{ session_id: string; mtime: number; data: string }>(
        "SELECT session_id, mtime, data FROM store_summaries WHERE project_key = ? AND (? IS NULL OR session_id = ?) ORDER BY session_id",
        projectKey,
        sessionId,
        sessionId,
      )
      .toArray()
      .map((r) => ({ session_id: r.session_id, mtime: r.mtime, data: r.data }));
  }

  /** Delete a key; a main key (`subpath` null) takes its subkeys and summary with it. */
  delete(projectKey: string, sessionId: string, subpath: string | null): void {
    if (!this.exists()) return;
    this.storage.transactionSync(() => {
      if (subpath === null) {
        for (const table of ["store_entries", "store_keys", "store_summaries"]) {
          this.sql.exec(`DELETE FROM ${table} WHERE project_key = ? AND session_id = ?`, projectKey, sessionId);
        }
        return;
      }
      for (const table of ["store_entries", "store_keys"]) {
        this.sql.exec(`DELETE FROM ${table} WHERE project_key = ? AND session_id = ? AND subpath = ?`, projectKey, sessionId, subpath);
      }
    });
  }

  /** The subpaths (subagent transcripts) stored under a session. */
  listSubkeys(projectKey: string, sessionId: string): string[] {
    if (!this.exists()) return [];
    return this.sql
      .exec<{ subpath: string }>(
        "SELECT subpath FROM store_keys WHERE project_key = ? AND session_id = ? AND subpath != '' ORDER BY subpath",
        projectKey,
        sessionId,
      )
      .toArray()
      .map((r) => r.subpath);
  }

  /** A write time (epoch ms) after every one stored: Date.now() stands still between I/O
   * in a Worker, and list_sessions callers compare these times. */
  private nextMtime(): number {
    const last = this.sql.exec<{ m: number | null }>("SELECT MAX(mtime) AS m FROM store_keys").one().m ?? 0;
    return Math.max(Date.now(), last + 1);
  }
}

/** `text` cut into pieces of at most `size` code units, never inside a surrogate pair. */
export function split(text: string, size: number): string[] {
  if (text.length <= size) return [text];
  const parts: string[] = [];
  for (let start = 0; start < text.length; ) {
    let end = Math.min(start + size, text.length);
    const last = text.charCodeAt(end - 1);
    if (end < text.length && end - 1 > start && last >= 0xd800 && last <= 0xdbff) end -= 1; // keep the pair together
    parts.push(text.slice(start, end));
    start = end;
  }
  return parts;
}
