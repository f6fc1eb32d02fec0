// A session's files: path → bytes, kept in the session DO's SQLite before an upload is
// acknowledged, and put into every container of the session before it runs a turn (the
// runtime's `PUT /v1/files`, kit/protocol/runtime_api.py). Email attachments arrive this way
// (mail/handler.ts), and so does `PUT /v1/sessions/{id}/files/{path}`:
//
//   PUT /v1/sessions/{id}/files/{path}   Bearer KIT_API_TOKEN, the file's bytes as the body:
//                                        204 once stored; 400 a bad path (the rule named);
//                                        413 a file over 10 MiB, or a session past 100 files
//                                        or 100 MiB in all (which one said); 409 a path that
//                                        is a folder of another file, or under one; 404 no
//                                        session (docs/protocol.md "A session's files")
//   GET /v1/sessions/{id}/files          200 {"files": [{"path", "size", "sha256"}]} by path
//
// Storage: DO SQLite (the shim's DOs are SQLite-backed: `new_sqlite_classes`) holds at most
// 2 MB in a row, string or BLOB (developers.cloudflare.com/durable-objects/platform/limits/,
// reference/cloudflare.md §4), so a file's bytes are cut into CHUNK_BYTES rows
// (`file_chunks`) and listed in `files` (path, size, sha256, chunks). A file is written in
// one transaction, its chunks first and its row last, so a reader (the push before a turn)
// sees the old file or the new one whole, never half of one. A refused file writes nothing.
// The tables are made by the first file: a session without files has none.

/** The largest file (the runtime's MAX_FILE_BYTES, an email attachment's limit). */
export const MAX_FILE_BYTES = 10 * 1024 * 1024;
/** The most files a session keeps. */
export const MAX_SESSION_FILES = 100;
/** The most bytes a session's files hold in all. */
export const MAX_SESSION_FILE_BYTES = 100 * 1024 * 1024;
/** Parts of a file path at most (kit/protocol/runtime_api.py MAX_PATH_PARTS). */
export const MAX_PATH_PARTS = 8;
/** Bytes per stored chunk: under DO SQLite's 2 MB per row, with room for the key. */
export const CHUNK_BYTES = 1024 * 1024;

const PART_RULE =
  "each part of a file path is a plain name: not empty, not starting with a dot, no control characters or backslashes, at most 255 bytes";

/** Why `path` is no plain relative file path (kit/protocol/runtime_api.py
 * `file_path_parts`' rules), naming the rule; null when it is one. */
export function filePathProblem(path: string): string | null {
  const parts = path.split("/");
  if (path === "" || parts.length > MAX_PATH_PARTS) {
    return `A file path needs 1 to ${MAX_PATH_PARTS} parts separated by "/", got ${path === "" ? "none" : parts.length}.`;
  }
  for (const part of parts) {
    let why: string | null = null;
    if (part === "") why = "an empty part (a leading, trailing or double /)";
    else if (part.startsWith(".")) why = `the part ${JSON.stringify(part)} starts with a dot`;
    else if (/[\x00-\x1f\x7f-\x9f]/.test(part)) why = `the part ${JSON.stringify(part)} has a control character`;
    else if (part.includes("\\")) why = `the part ${JSON.stringify(part)} has a backslash`;
    else if (new TextEncoder().encode(part).length > 255) why = `a part is over 255 bytes`;
    if (why !== null) return `${JSON.stringify(path.slice(0, 300))} has ${why}; ${PART_RULE}.`;
  }
  return null;
}

/** One stored file, as `GET …/files` lists it. */
export interface FileInfo {
  path: string;
  size: number;
  sha256: string;
}

/** A refused upload: the HTTP status, kit's error code and the message (docs/protocol.md
 * "A session's files": `refused`, or `too_large` for a body over MAX_FILE_BYTES). */
export interface FileRefusal {
  status: 400 | 409 | 413;
  error: string;
  message: string;
}

/** What a push needs of the runtime (runtime.ts ContainerRuntime `putFile`). */
export interface FileTarget {
  putFile(path: string, data: Uint8Array): Promise<void>;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS files (
  path TEXT PRIMARY KEY, size INTEGER NOT NULL, sha256 TEXT NOT NULL, chunks INTEGER NOT NULL, stored_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS file_chunks (
  path TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (path, n)
);
`;

const MIB = 1024 * 1024;

export class SessionFiles {
  private tablesKnown = false;

  constructor(private readonly storage: DurableObjectStorage) {}

  private get sql(): SqlStorage {
    return this.storage.sql;
  }

  /** Whether the tables exist (reads only). */
  private hasTables(): boolean {
    if (!this.tablesKnown) {
      this.tablesKnown = this.sql.exec("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'files'").toArray().length > 0;
    }
    return this.tablesKnown;
  }

  /** Every stored file, by path (SQLite compares UTF-8 bytes: code point order). */
  list(): FileInfo[] {
    if (!this.hasTables()) return [];
    return this.sql.exec<{ path: string; size: number; sha256: string }>("SELECT path, size, sha256 FROM files ORDER BY path").toArray().map((r) => ({ ...r }));
  }

  /** The stored bytes of `path` and their SHA-256, read in one synchronous step (so one
   * version whole); null when there is no such file. */
  read(path: string): { data: Uint8Array; sha256: string } | null {
    if (!this.hasTables()) return null;
    const row = this.sql.exec<{ size: number; sha256: string; chunks: number }>("SELECT size, sha256, chunks FROM files WHERE path = ?", path).toArray()[0];
    if (row === undefined) return null;
    const data = new Uint8Array(row.size);
    let at = 0;
    for (const chunk of this.sql.exec<{ data: ArrayBuffer }>("SELECT data FROM file_chunks WHERE path = ? ORDER BY n", path)) {
      const bytes = new Uint8Array(chunk.data);
      data.set(bytes, at);
      at += bytes.length;
    }
    if (at !== row.size) throw new Error(`The stored file ${path} has ${at} bytes in its chunks, not ${row.size}.`);
    return { data, sha256: row.sha256 };
  }

  /** Store `files` (a new path is added, a known one replaced), all or none: the refusal of
   * the first bad path, a file over MAX_FILE_BYTES, or a session that would pass
   * MAX_SESSION_FILES or MAX_SESSION_FILE_BYTES; null once stored. */
  async put(files: Array<{ path: string; data: Uint8Array }>): Promise<FileRefusal | null> {
    for (const file of files) {
      const bad = filePathProblem(file.path);
      if (bad !== null) return { status: 400, error: "refused", message: bad };
      if (file.data.length > MAX_FILE_BYTES) return { ...tooLarge(file.data.length), error: "refused" };
    }
    const digests = await Promise.all(files.map((f) => sha256Hex(f.data)));
    // From here on one synchronous step: the limits are checked against what is stored now.
    const last = new Map(files.map((f, i) => [f.path, i])); // a path twice: the last one wins
    const current = new Map(this.list().map((f) => [f.path, f.size]));
    const after = new Map(current);
    for (const [path, i] of last) after.set(path, files[i].data.length);
    for (const path of last.keys()) {
      // kit/host/files.py `check`: a path cannot be a file and a folder of another.
      for (const other of after.keys()) {
        if (other.startsWith(path + "/") || path.startsWith(other + "/")) {
          const [folder, inside] = [path, other].sort((a, b) => a.length - b.length);
          return {
            status: 409,
            error: "refused",
            message: `${JSON.stringify(path)}: the session has ${JSON.stringify(other)}, and ${JSON.stringify(folder)} cannot be both a file and the folder of ${JSON.stringify(inside)}.`,
          };
        }
      }
    }
    if (after.size > MAX_SESSION_FILES) {
      return {
        status: 413,
        error: "refused",
        message: `The session would have ${after.size} files; it keeps at most ${MAX_SESSION_FILES}, and a PUT to a path it has replaces that file.`,
      };
    }
    const total = [...after.values()].reduce((a, b) => a + b, 0);
    if (total > MAX_SESSION_FILE_BYTES) {
      return {
        status: 413,
        error: "refused",
        message: `The session's files would hold ${total} bytes in all; it keeps at most ${MAX_SESSION_FILE_BYTES} (${MAX_SESSION_FILE_BYTES / MIB} MiB).`,
      };
    }
    this.sql.exec(SCHEMA);
    this.tablesKnown = true;
    const now = Date.now();
    this.storage.transactionSync(() => {
      for (const [path, i] of last) {
        const data = files[i].data;
        this.sql.exec("DELETE FROM file_chunks WHERE path = ?", path);
        const chunks = Math.ceil(data.length / CHUNK_BYTES);
        for (let n = 0; n < chunks; n++) {
          this.sql.exec("INSERT INTO file_chunks (path, n, data) VALUES (?, ?, ?)", path, n, data.subarray(n * CHUNK_BYTES, (n + 1) * CHUNK_BYTES));
        }
        // The row last: it is what says the file is there.
        this.sql.exec("INSERT OR REPLACE INTO files (path, size, sha256, chunks, stored_ms) VALUES (?, ?, ?, ?, ?)", path, data.length, digests[i], chunks, now);
      }
    });
    return null;
  }

  /** Put every stored file into the sandbox behind `target` unless `pushed` (path → the
   * SHA-256 it was given) says it has that version, as kit/host/session.py does; a file
   * put back as it was before is given again. A runtime that cannot be reached throws
   * (runtime.ts RuntimeLost: a lost sandbox); a file it refuses (the agent made a folder on
   * its path a link) is logged and left out of that sandbox, and the turn runs. */
  async push(target: FileTarget, pushed: Map<string, string>, sessionId: string): Promise<number> {
    let count = 0;
    for (const info of this.list()) {
      if (pushed.get(info.path) === info.sha256) continue;
      const file = this.read(info.path); // one version whole, maybe newer than the listing
      if (file === null || pushed.get(info.path) === file.sha256) continue;
      try {
        await target.putFile(info.path, file.data);
        count++;
      } catch (exc) {
        if (!(exc instanceof FileRefused)) throw exc;
        console.log(`session ${sessionId}: file ${info.path} not given to its sandbox: ${exc.message}`);
      }
      pushed.set(info.path, file.sha256);
    }
    return count;
  }
}

/** The runtime answered a file with something other than 204 (it is still there). */
export class FileRefused extends Error {
  override name = "FileRefused";
}

export function tooLarge(size: number | null): FileRefusal {
  return {
    status: 413,
    error: "too_large",
    message: `The file is ${size === null ? "over " + MAX_FILE_BYTES : size} bytes; a session file holds at most ${MAX_FILE_BYTES} (${MAX_FILE_BYTES / MIB} MiB).`,
  };
}

export async function sha256Hex(data: Uint8Array): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", data);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

/** A request body of at most `limit` bytes; null (the rest cancelled) past it. */
export async function boundedBody(request: Request, limit: number): Promise<Uint8Array | null> {
  const declared = request.headers.get("content-length");
  if (declared !== null && Number(declared) > limit) {
    await request.body?.cancel();
    return null;
  }
  if (request.body === null) return new Uint8Array(0);
  const pieces: Uint8Array[] = [];
  let size = 0;
  const reader = request.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.length;
    if (size > limit) {
      await reader.cancel();
      return null;
    }
    pieces.push(value);
  }
  const body = new Uint8Array(size);
  let at = 0;
  for (const piece of pieces) {
    body.set(piece, at);
    at += piece.length;
  }
  return body;
}

/** The routes' pattern: the session id, and `/{path}` (percent-encoded) or nothing. */
export const FILES_ROUTE = /^\/v1\/sessions\/([^/]+)\/files(\/.*)?$/;

/** The file path of a route's `/{path}` rest, percent-decoded; a refusal when it is not
 * percent-encoded UTF-8 or breaks a rule of `filePathProblem`. */
export function routePath(rest: string): string | FileRefusal {
  let path: string;
  try {
    path = decodeURIComponent(rest.slice(1));
  } catch {
    return { status: 400, error: "refused", message: "The file path is not percent-encoded UTF-8; encode each part of it as a URL path segment." };
  }
  const bad = filePathProblem(path);
  return bad === null ? path : { status: 400, error: "refused", message: bad };
}

/** The session DO's side of the routes, for a session that exists (the Worker checked the
 * API token and the method). */
export async function serveFiles(request: Request, files: SessionFiles, rest: string | undefined): Promise<Response> {
  if (rest === undefined) {
    await request.body?.cancel();
    return Response.json({ files: files.list() });
  }
  const path = routePath(rest);
  if (typeof path !== "string") {
    await request.body?.cancel();
    return refusal(path);
  }
  const data = await boundedBody(request, MAX_FILE_BYTES);
  if (data === null) return refusal(tooLarge(null));
  const refused = await files.put([{ path, data }]);
  return refused === null ? new Response(null, { status: 204 }) : refusal(refused);
}

export function refusal(r: FileRefusal): Response {
  return Response.json({ error: r.error, message: r.message }, { status: r.status });
}
