// kit's chat page: one session over the protocol of docs/protocol.md (v1).
//
// Where things are kept:
// - localStorage "kit:session:<id>": {session_id, token, ws_url, used_at}, so a reload or a
//   second tab on the same URL (#s=<id>) rejoins the session; sessions unused for 30 days,
//   and all but the 50 used last, are forgotten when the page loads;
// - localStorage "kit:log:<id>": {last_seq, events}: the events shown so far (text deltas of
//   ended turns dropped), written together with last_seq, so a reload shows them at once and
//   resumes after last_seq; every event is applied at most once (dedupe by seq);
// - sessionStorage "kit:unconfirmed:<id>": messages sent but not yet seen as a user event
//   (re-sent with the same client_msg_id after a reconnect or a reload; the host applies
//   an id once).
//
// On kit dev, /web/config.json also names `mail_url`: the "Mail" button lists the agent's
// email threads from it, and choosing one keeps its session as if this page had opened it.

import { renderMarkdown } from "./render.js";

// 1009 (too_large) is not fatal: the host refused one frame, the session goes on. The page
// checks a message before sending it (`refusal`), and drops one the host refused anyway.
const FATAL_CLOSES = new Set([4400, 4401, 4404]);
const HEALTHY_AFTER_MS = 5000;
const SAVE_DELAY_MS = 150;
const STREAM_RENDER_MS = 50; // streamed text is rendered at most this often (a timer: it runs in background tabs)
const MAX_TEXT_CHARS = 100_000; // docs/protocol.md §3: code points of user.text
const MAX_FRAME_BYTES = 262_144; // docs/protocol.md §3: UTF-8 bytes of a client frame
const REFUSED_BY_HOST = new Set(["too_large", "bad_frame"]);
const FORGET_AFTER_MS = 30 * 24 * 3600 * 1000; // a session unused this long is forgotten
const KEEP_SESSIONS = 50; // and only this many, the most recently used, are kept
const SESSION_ID = /^[0-9a-f-]{36}$/;
// The head the mail channel puts on an email's turn (kit/mail/text.py turn_text).
const MAIL_HEAD = /^Email from [^\n]*\n(?:Subject: [^\n]*\n)?(?=\n)/;

const $ = (id) => document.getElementById(id);
const ui = {
  log: $("log"),
  status: $("status"),
  banner: $("banner"),
  form: $("composer"),
  input: $("input"),
  composerError: $("composer-error"),
  send: $("send"),
  stop: $("stop"),
  newSession: $("new-session"),
  mailToggle: $("mail-toggle"),
  mail: $("mail"),
};

// ---------------------------------------------------------------- storage

/** The browser's storage `name`, or, where the browser blocks it (reading it throws), a
 * stand-in in memory: the page then works for this tab's life and keeps nothing. */
function storageOr(name) {
  try {
    const storage = window[name];
    void storage.length; // a blocked storage throws here
    return storage;
  } catch {
    const items = new Map();
    return {
      get length() { return items.size; },
      key: (i) => [...items.keys()][i] ?? null,
      getItem: (k) => items.get(k) ?? null,
      setItem: (k, v) => void items.set(k, String(v)),
      removeItem: (k) => void items.delete(k),
    };
  }
}
const local = storageOr("localStorage");
const perTab = storageOr("sessionStorage");

const keys = {
  session: (id) => `kit:session:${id}`,
  log: (id) => `kit:log:${id}`,
  unconfirmed: (id) => `kit:unconfirmed:${id}`,
};

function readJSON(storage, key) {
  try {
    return JSON.parse(storage.getItem(key) ?? "null");
  } catch {
    return null;
  }
}

function writeJSON(storage, key, value) {
  try {
    storage.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    return false; // over quota: the page still works, a reload replays from the host
  }
}

/** Drop the stored logs of every session but `keep`: they are copies (a reload replays the
 * rest from the host), a token is not. */
function dropOtherLogs(keep) {
  const others = [];
  for (let i = 0; i < local.length; i++) {
    const key = local.key(i) ?? "";
    if (key.startsWith("kit:log:") && key !== keys.log(keep)) others.push(key);
  }
  for (const key of others) local.removeItem(key);
}

/** Write `value` at `key` of localStorage for session `id`; when the storage is full (other
 * sessions' logs fill it), again after dropping those logs. False when it still fails. */
function store(id, key, value) {
  if (writeJSON(local, key, value)) return true;
  dropOtherLogs(id);
  return writeJSON(local, key, value);
}

/**
 * Forget, with their tokens and logs, the sessions this browser has not used for
 * FORGET_AFTER_MS and all but the KEEP_SESSIONS used last, except `current`: a session
 * token is a credential, and logs fill the storage. (A forgotten session stays on the host;
 * this browser just no longer holds a way in.) Logs whose session is gone go too.
 */
function forgetOldSessions(current, now = Date.now()) {
  const sessions = [];
  const logs = [];
  for (let i = 0; i < local.length; i++) {
    const key = local.key(i) ?? "";
    if (key.startsWith("kit:session:")) sessions.push(key.slice("kit:session:".length));
    else if (key.startsWith("kit:log:")) logs.push(key.slice("kit:log:".length));
  }
  const used = new Map();
  for (const id of sessions) {
    const saved = readJSON(local, keys.session(id));
    if (saved !== null && typeof saved.used_at !== "number") {
      saved.used_at = now; // saved by an older page: counted from today
      writeJSON(local, keys.session(id), saved);
    }
    used.set(id, saved?.used_at ?? 0);
  }
  const recent = [...used.keys()].sort((a, b) => used.get(b) - used.get(a));
  recent.forEach((id, rank) => {
    if (id === current) return;
    if (rank >= KEEP_SESSIONS || now - used.get(id) > FORGET_AFTER_MS) {
      local.removeItem(keys.session(id));
      used.delete(id);
    }
  });
  for (const id of logs) if (!used.has(id)) local.removeItem(keys.log(id));
}

function sessionIdFromUrl() {
  const params = new URLSearchParams(location.hash.slice(1));
  const id = params.get("s") ?? new URLSearchParams(location.search).get("session");
  return id && SESSION_ID.test(id) ? id : null;
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;

/** Why the host would refuse `frame` (a `user` frame), or null when it would take it. */
function refusal(frame) {
  const text = frame.text;
  const wellFormed = typeof text.isWellFormed === "function" ? text.isWellFormed() : !LONE_SURROGATE.test(text);
  if (!wellFormed) {
    return "it holds half of an emoji or another broken character (a lone surrogate); delete it and type it again.";
  }
  let chars = 0;
  for (const _ of text) chars++; // code points, as the host counts them
  if (chars > MAX_TEXT_CHARS) {
    return `it is ${chars.toLocaleString("en")} characters long; the most is ${MAX_TEXT_CHARS.toLocaleString("en")}.`;
  }
  const bytes = new TextEncoder().encode(JSON.stringify(frame)).length;
  if (bytes > MAX_FRAME_BYTES) {
    return `it takes ${bytes.toLocaleString("en")} bytes to send; the most is ${MAX_FRAME_BYTES.toLocaleString("en")}.`;
  }
  return null;
}

// ---------------------------------------------------------------- conversation view

/** What the page shows, built from events; each seq is applied once. */
class Conversation {
  constructor(root, onRetry) {
    this.root = root;
    this.onRetry = onRetry;
    this.reset();
  }

  reset() {
    this.cancelStreamRender();
    this.root.replaceChildren();
    this.root.removeAttribute("aria-busy");
    this.lastSeq = 0;
    this.events = [];
    this.openTurns = new Set();
    this.turnText = new Map(); // turn_id -> whether an assistant text was shown
    this.streaming = null; // {node, text, turn}
    this.streamTimer = null; // a render of the streamed text, waiting
    this.tools = new Map(); // tool_use id -> card
    this.running = new Set(); // cards of tool calls with no result yet
    this.pending = new Map(); // client_msg_id -> node of a message not yet confirmed
    this.sandbox = "";
    this.store = "";
    this.following = null; // this frame's changes: whether the view follows them (null: none yet)
    this.forceFollow = false; // the reader's own message: it does
  }

  nearBottom() {
    const s = document.scrollingElement;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 80;
  }

  /** Add `node`; follow it to the bottom if the reader was there (or `force`): a reader
   * who scrolled up to read stays where they are. */
  append(node, force = false) {
    this.willChange(force);
    this.root.append(node);
  }

  /**
   * Call before changing what the view shows: the view follows this frame's changes to the
   * bottom, at the next frame, if the reader was at the bottom before the first of them (or
   * `force`: the reader's own message). Measured once a frame, not once an event: a layout
   * per event made showing a long conversation quadratic (10 000 events took minutes).
   */
  willChange(force = false) {
    if (force) this.forceFollow = true;
    if (this.following !== null) return;
    this.following = this.nearBottom();
    requestAnimationFrame(() => {
      if (this.following || this.forceFollow) this.toBottom();
      this.following = null;
      this.forceFollow = false;
    });
  }

  /** To the very bottom of the page (the composer below the conversation included). */
  toBottom() {
    const s = document.scrollingElement;
    s.scrollTop = s.scrollHeight;
  }

  message(role, label) {
    const node = document.createElement("article");
    node.className = `msg ${role}`;
    const who = document.createElement("div");
    who.className = "who";
    who.textContent = label;
    const body = document.createElement("div");
    body.className = "body";
    node.append(who, body);
    return node;
  }

  /** A message the host will not take (or did not): shown greyed, with why, never sent. */
  showRefused(id, text, why) {
    let node = this.pending.get(id);
    this.pending.delete(id);
    if (!node) {
      node = this.message("user", "You");
      node.querySelector(".body").textContent = text;
      this.append(node);
    }
    node.className = "msg user refused";
    const note = document.createElement("p");
    note.className = "note refused";
    note.textContent = `Not sent: ${why}`;
    this.willChange();
    node.after(note);
  }

  showPending(id, text) {
    if (this.pending.has(id)) return;
    const node = this.message("user pending", "You");
    node.querySelector(".body").textContent = text;
    this.pending.set(id, node);
    this.append(node, true); // the reader's own message: back to the bottom
  }

  /** Apply one event; false when it was already applied (seq not new). */
  apply(event) {
    if (event.seq <= this.lastSeq) return false;
    this.lastSeq = event.seq;
    this.events.push(event);
    const handler = this[`on_${event.kind}`];
    if (handler) handler.call(this, event.data ?? {}, event.turn_id);
    return true; // kinds this page does not know are kept and ignored
  }

  on_user(data, turn) {
    const pending = this.pending.get(data.client_msg_id);
    this.pending.delete(data.client_msg_id);
    const text = data.text ?? "";
    // An email's turn (its client_msg_id is the mail channel's): the sender and subject
    // lines are shown quieter than the mail's own text.
    const head = String(data.client_msg_id ?? "").startsWith("mail-") ? MAIL_HEAD.exec(text) : null;
    const node = this.message(head ? "user mail" : "user", head ? "Email" : "You");
    const body = node.querySelector(".body");
    if (head) {
      const lines = document.createElement("span");
      lines.className = "mail-head";
      lines.textContent = head[0];
      body.append(lines, text.slice(head[0].length));
    } else {
      body.textContent = text;
    }
    if (pending) pending.replaceWith(node);
    else this.append(node);
    if (turn) this.openTurns.add(turn);
    // A failed turn is retried from the latest one only: once the conversation moved on
    // (a retry, or another message, here or in another tab, or before a reload), an
    // older Retry would send an old message out of its place.
    for (const retry of this.root.querySelectorAll("button.retry")) retry.disabled = true;
  }

  on_text_delta(data, turn) {
    if (!this.streaming) {
      const node = this.message("assistant streaming", "Agent");
      this.streaming = { node, text: "", turn };
      // The log is a live region: re-rendered every 50 ms, the growing text would be read
      // out again each time. Busy, a screen reader waits for the final text.
      this.root.setAttribute("aria-busy", "true");
      this.append(node);
    }
    this.streaming.text += data.text ?? "";
    // Rendering the whole text on each delta is quadratic: render at most every
    // STREAM_RENDER_MS. The final text (`assistant`) is rendered at once and cancels this.
    if (this.streamTimer === null) {
      this.streamTimer = setTimeout(() => {
        this.streamTimer = null;
        if (this.streaming) this.renderInto(this.streaming.node, this.streaming.text);
      }, STREAM_RENDER_MS);
    }
  }

  cancelStreamRender() {
    clearTimeout(this.streamTimer);
    this.streamTimer = null;
  }

  on_assistant(data, turn) {
    if (data.parent_tool_use_id) return; // a subagent's text: its tool card says enough
    let node;
    this.cancelStreamRender();
    if (this.streaming) {
      node = this.streaming.node;
      this.streaming = null;
      this.root.removeAttribute("aria-busy");
    } else {
      node = this.message("assistant", "Agent");
      this.append(node);
    }
    node.classList.remove("streaming");
    this.renderInto(node, data.text ?? "");
    if (turn) this.turnText.set(turn, true);
  }

  on_tool_use(data) {
    this.dropStreaming();
    const card = document.createElement("details");
    card.className = "tool running";
    const summary = document.createElement("summary");
    const name = document.createElement("span");
    name.className = "tool-name";
    name.textContent = data.name ?? "tool";
    const state = document.createElement("span");
    state.className = "tool-state";
    state.textContent = "running…";
    summary.append(name, state);
    const input = document.createElement("pre");
    input.className = "tool-input";
    input.textContent = JSON.stringify(data.input ?? {}, null, 2);
    const output = document.createElement("pre");
    output.className = "tool-output";
    output.hidden = true;
    card.append(summary, input, output);
    if (data.id) this.tools.set(data.id, card);
    this.running.add(card);
    this.append(card);
  }

  on_tool_result(data) {
    const card = this.tools.get(data.tool_use_id);
    if (!card) return;
    this.running.delete(card);
    card.classList.remove("running");
    card.classList.add(data.is_error ? "failed" : "done");
    card.querySelector(".tool-state").textContent = data.is_error ? "error" : "done";
    const output = card.querySelector(".tool-output");
    output.textContent = data.content ?? "";
    output.hidden = false;
  }

  on_result(data, turn) {
    this.dropStreaming();
    if (!this.turnText.get(turn) && data.text) {
      const node = this.message("assistant", "Agent");
      this.renderInto(node, data.text);
      this.append(node);
    }
    if (data.is_error) {
      this.note(
        data.subtype === "error_during_execution" ? "Stopped." : `The turn ended with an error (${data.subtype}).`,
        "stopped",
      );
    }
    this.endTurn(turn);
  }

  on_error(data, turn) {
    if (data.code === "turn_failed") {
      this.dropStreaming();
      const node = this.note(`The turn failed: ${data.message ?? ""}`, "failed");
      const text = this.userText(turn);
      if (text !== null) {
        const retry = document.createElement("button");
        retry.type = "button";
        retry.className = "retry";
        retry.textContent = "Retry";
        // Once: a double click must not send the message twice.
        retry.addEventListener("click", () => {
          if (this.onRetry(text)) retry.disabled = true;
        });
        node.append(" ", retry);
      }
      this.endTurn(turn);
    } else {
      this.note(data.message ?? data.code ?? "error", "warning");
    }
  }

  on_sandbox(data, turn) {
    const died = `Sandbox died (${data.reason ?? "?"})`;
    const labels = {
      starting: "Sandbox starting…",
      running: data.resumed ? "Sandbox resumed" : "Sandbox running",
      // Only a death mid-turn is followed by a new sandbox; one between turns (no turn_id)
      // is replaced when the next message comes.
      died: turn ? `${died}; restarting…` : `${died} between turns; your next message starts a new one.`,
      failed: "A sandbox failed to start; trying again…",
      stopped: "",
    };
    // The status line shows a turn's sandbox; an event of no turn must not linger into the next.
    this.sandbox = turn ? (labels[data.state] ?? "") : "";
    if (data.state === "died" || data.state === "failed") this.dropStreaming();
    if (data.state === "died") {
      this.abandonTools("interrupted: the sandbox died");
      this.note(labels.died, "sandbox");
    }
  }

  on_store(data) {
    this.store = data.state === "available" ? "" : `Transcript store ${data.state}: ${data.message ?? ""}`;
  }

  /** Tool calls that will get no result: their sandbox went away, or their turn ended. */
  abandonTools(why) {
    for (const card of this.running) {
      card.classList.replace("running", "interrupted");
      card.querySelector(".tool-state").textContent = why;
    }
    this.running.clear();
  }

  endTurn(turn) {
    this.abandonTools("interrupted");
    this.openTurns.delete(turn);
    if (this.openTurns.size === 0) this.sandbox = "";
  }

  userText(turn) {
    const found = this.events.find((e) => e.kind === "user" && e.turn_id === turn);
    return found ? found.data.text : null;
  }

  /** Text streamed before a sandbox died or a tool ran, never confirmed by `assistant`. */
  dropStreaming() {
    this.cancelStreamRender();
    if (this.streaming && this.streaming.node.classList.contains("streaming")) {
      // A tool call follows its text block's `assistant` event; a death may leave deltas.
      this.streaming.node.remove();
    }
    this.streaming = null;
    this.root.removeAttribute("aria-busy");
  }

  note(text, kind) {
    const node = document.createElement("p");
    node.className = `note ${kind}`;
    node.textContent = text;
    this.append(node);
    return node;
  }

  renderInto(node, markdown) {
    this.renders = (this.renders ?? 0) + 1; // counted for the browser tests
    const body = node.querySelector(".body");
    this.willChange(); // the text grows the page: the view stays at the bottom
    try {
      body.replaceChildren(renderMarkdown(markdown, copyText));
    } catch (exc) {
      // Whatever the text holds, the reader still reads it (as text) and the turn goes on.
      console.warn("markdown rendering failed; shown as text", exc);
      body.textContent = markdown;
    }
  }

  /** Events worth keeping for a reload: text deltas only of turns still open. */
  kept() {
    return this.events.filter((e) => e.kind !== "text_delta" || this.openTurns.has(e.turn_id));
  }
}

function copyText(value, button) {
  navigator.clipboard?.writeText(value).then(
    () => (button.textContent = "Copied"),
    () => (button.textContent = "Copy failed"),
  );
}

// ---------------------------------------------------------------- the connection

class Chat {
  constructor(session) {
    this.session = session;
    this.view = new Conversation(ui.log, (text) => this.say(text));
    this.unconfirmed = new Map(readJSON(perTab, keys.unconfirmed(session.session_id)) ?? []);
    this.ws = null;
    this.live = false;
    this.attempt = 0;
    this.welcomedAt = 0;
    this.everOpen = false;
    this.stopping = false;
    this.interruptUnacked = false; // sent, no interrupt_ack yet: sent again on the next connection
    this.sentHere = []; // client_msg_ids sent on this connection, in order
    this.saveTimer = null;
    this.closed = false;
    this.hint = "";
    const saved = readJSON(local, keys.log(session.session_id));
    for (const event of saved?.events ?? []) {
      this.view.apply(event);
      // Confirmed while this tab was away (by its reload's host replay, or another tab's log).
      if (event.kind === "user") this.unconfirmed.delete(event.data?.client_msg_id);
    }
    this.saveUnconfirmed();
    for (const [id, text] of this.unconfirmed) this.view.showPending(id, text);
    this.update();
  }

  connect() {
    const ws = new WebSocket(this.session.ws_url);
    this.ws = ws;
    this.live = false;
    this.welcomedAt = 0;
    this.sentHere = [];
    ws.onopen = () =>
      this.send({ type: "hello", token: this.session.token, last_seq: this.view.lastSeq });
    ws.onmessage = ({ data }) => {
      if (ws === this.ws) this.frame(JSON.parse(data));
    };
    ws.onclose = ({ code, reason }) => {
      if (ws === this.ws) this.closedWith(code, reason);
    };
  }

  send(frame) {
    this.ws.send(JSON.stringify(frame));
  }

  frame(f) {
    if (f.type === "welcome") {
      this.live = true;
      this.everOpen = true;
      this.welcomedAt = Date.now();
      if (f.resume !== "none") this.send({ type: "ack", seq: this.view.lastSeq });
      for (const [id, text] of this.unconfirmed) this.sendUser(id, text);
      if (this.interruptUnacked) this.send({ type: "interrupt" });
      showBanner(null);
    } else if (f.type === "event") {
      if (f.seq <= this.view.lastSeq) return; // already shown
      if (f.seq !== this.view.lastSeq + 1) {
        this.ws.close(); // a gap: resume from what we have
        return;
      }
      this.attempt = 0;
      if (f.kind === "user") this.unconfirmed.delete(f.data.client_msg_id);
      this.view.apply(f);
      if (f.kind === "result" || (f.kind === "error" && f.data.code === "turn_failed")) {
        this.stopping = false;
        this.interruptUnacked = false; // its turn ended: do not stop the next one
        this.hint = "";
      }
      this.saveSoon();
    } else if (f.type === "interrupt_ack") {
      this.interruptUnacked = false;
      if (f.turn_id === null) this.stopping = false; // nothing was open to stop
      else if (!f.interrupted) {
        this.stopping = false;
        this.hint = "Nothing to stop yet (the sandbox is starting); press Stop again in a moment.";
      }
    } else if (f.type === "error") {
      console.warn("kit:", f.code, f.message);
      if (f.code === "seq_ahead") this.forget();
      else if (REFUSED_BY_HOST.has(f.code)) this.refusedByHost(f.message);
    }
    this.update();
  }

  closedWith(code, reason) {
    this.live = false;
    if (this.closed) return;
    if (code === 4400 && reason === "seq_ahead") {
      this.forget();
    } else if (FATAL_CLOSES.has(code)) {
      this.closed = true;
      const why = {
        4401: "This browser's token for the session was refused.",
        4404: "The host has no such session.",
      }[code] ?? `The host closed the session (${code} ${reason}).`;
      showBanner(`${why} Start a new session to go on.`, true);
      this.update();
      return;
    }
    if (this.welcomedAt && Date.now() - this.welcomedAt >= HEALTHY_AFTER_MS) this.attempt = 0;
    const wait = Math.min(250 * 2 ** this.attempt++, 10_000) * (0.5 + Math.random() / 2);
    if (this.everOpen) showBanner("Connection lost: reconnecting…");
    this.update();
    setTimeout(() => this.connect(), wait);
  }

  /** The host has fewer events than we showed (a reset store): start over from nothing. */
  forget() {
    local.removeItem(keys.log(this.session.session_id));
    this.view.reset();
    for (const [id, text] of this.unconfirmed) this.view.showPending(id, text);
  }

  /** Send `text` (true), or say inline why the host would refuse it and keep it (false). */
  say(text) {
    if (!text.trim() || this.closed) return false;
    const id = crypto.randomUUID();
    const why = refusal({ type: "user", client_msg_id: id, text });
    if (why !== null) {
      showComposerError(`This message cannot be sent: ${why}`);
      return false;
    }
    showComposerError(null);
    this.unconfirmed.set(id, text);
    this.saveUnconfirmed();
    this.view.showPending(id, text);
    if (this.live) this.sendUser(id, text);
    this.update();
    return true;
  }

  sendUser(id, text) {
    this.sentHere.push(id);
    this.send({ type: "user", client_msg_id: id, text });
  }

  /**
   * The host refused a frame (`too_large`, `bad_frame`): if it was a message still pending,
   * drop it (sending it again would be refused again) and show why. The host answers frames
   * in order and confirms an accepted message before it reads the next frame, so the
   * refused one is the first sent on this connection and not yet confirmed.
   */
  refusedByHost(message) {
    const id = this.sentHere.find((sent) => this.unconfirmed.has(sent));
    if (id === undefined) return;
    const text = this.unconfirmed.get(id);
    this.unconfirmed.delete(id);
    this.saveUnconfirmed();
    this.view.showRefused(id, text, `the host refused it (${message})`);
  }

  interrupt() {
    if (!this.live) return;
    this.stopping = true;
    this.interruptUnacked = true;
    this.hint = "";
    this.send({ type: "interrupt" });
    this.update();
  }

  saveUnconfirmed() {
    writeJSON(perTab, keys.unconfirmed(this.session.session_id), [...this.unconfirmed]);
  }

  saveSoon() {
    if (this.saveTimer !== null) return;
    this.saveTimer = setTimeout(() => this.save(), SAVE_DELAY_MS);
  }

  save() {
    clearTimeout(this.saveTimer);
    this.saveTimer = null;
    const key = keys.log(this.session.session_id);
    if (!store(this.session.session_id, key, { last_seq: this.view.lastSeq, events: this.view.kept() })) {
      local.removeItem(key); // a reload then replays everything from the host
    }
    this.saveUnconfirmed();
  }

  update() {
    const busy = this.view.openTurns.size > 0;
    let status = "";
    if (!this.live) status = this.everOpen ? "Reconnecting…" : "Connecting…";
    else if (this.unconfirmed.size) status = "Sending…";
    else if (this.stopping && busy) status = "Stopping…";
    else if (this.view.store) status = this.view.store;
    else if (busy) status = this.view.sandbox ? `${this.view.sandbox} · thinking…` : "Thinking…";
    if (this.hint && busy) status = this.hint;
    ui.status.textContent = status;
    ui.stop.disabled = !busy || !this.live;
    ui.send.disabled = this.closed;
  }
}

// ---------------------------------------------------------------- the page

function showComposerError(text) {
  ui.composerError.hidden = text === null;
  ui.composerError.textContent = text ?? "";
}

function showBanner(text, withNew = false) {
  ui.banner.hidden = text === null;
  ui.banner.querySelector(".text").textContent = text ?? "";
  ui.newSession.hidden = !withNew;
}

async function newSession() {
  const config = await (await fetch("/web/config.json")).json();
  if (!config.session_url) {
    throw new Error("This host gives the page no sessions: open a link to one.");
  }
  const answer = await fetch(config.session_url, { method: "POST", credentials: "include" });
  const body = await answer.json().catch(() => ({}));
  if (!answer.ok) throw new Error(body.message ?? `The host answered ${answer.status}.`);
  const session = { session_id: body.session_id, token: body.token, ws_url: body.ws_url, used_at: Date.now() };
  // Kept even when the storage is full (other sessions' logs dropped first); failing that,
  // this page still talks to it, and only a reload would lose it.
  store(session.session_id, keys.session(session.session_id), session);
  history.replaceState(null, "", `#s=${session.session_id}`);
  return session;
}

// ---------------------------------------------------------------- email threads (kit dev)

let mailUrl = null; // kit dev's POST /web/mail, when the host serves it

/** Show the Mail button when the host lists email threads (only kit dev does). */
async function offerMail() {
  let config;
  try {
    config = await (await fetch("/web/config.json")).json();
  } catch {
    return; // no list; the chat works as before
  }
  if (typeof config?.mail_url !== "string") return;
  mailUrl = config.mail_url;
  ui.mailToggle.hidden = false;
  ui.mailToggle.addEventListener("click", () => showMail(ui.mail.hidden));
  ui.mail.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      showMail(false);
      ui.mailToggle.focus();
    }
  });
}

/** Open (and list anew) or close the Email list. */
async function showMail(open) {
  ui.mail.hidden = !open;
  ui.mailToggle.setAttribute("aria-expanded", String(open));
  if (!open) return;
  const note = ui.mail.querySelector(".mail-note");
  note.textContent = "Loading…";
  let body;
  try {
    const answer = await fetch(mailUrl, { method: "POST" });
    body = await answer.json().catch(() => ({}));
    if (!answer.ok) throw new Error(body.message ?? `The host answered ${answer.status}.`);
  } catch (err) {
    note.textContent = `Could not list the email threads: ${err.message}`;
    ui.mail.querySelector(".mail-threads").replaceChildren(); // not an older list as if current
    return;
  }
  const threads = (Array.isArray(body.threads) ? body.threads : []).filter((t) => SESSION_ID.test(t?.session_id));
  // Subjects and addresses are whoever mailed the agent: they reach the page only as text.
  ui.mail.querySelector(".mail-address").textContent = String(body.address ?? "");
  note.textContent = threads.length ? "" : `No mail yet: write to ${body.address}.`;
  ui.mail.querySelector(".mail-threads").replaceChildren(...threads.map(threadItem));
}

/** One thread of the list: a link to its session, kept in this browser when chosen. */
function threadItem(thread) {
  const link = document.createElement("a");
  link.href = `#s=${thread.session_id}`;
  if (thread.session_id === sessionIdFromUrl()) link.setAttribute("aria-current", "page");
  const subject = document.createElement("span");
  subject.className = "mail-subject";
  subject.textContent = thread.subject || "(no subject)";
  const meta = document.createElement("span");
  meta.className = "mail-meta";
  const count = Number(thread.messages) || 0;
  const when = new Date(Number(thread.last_at) * 1000);
  meta.textContent = [
    (Array.isArray(thread.participants) ? thread.participants : []).join(", "),
    `${count} message${count === 1 ? "" : "s"}`,
    Number.isNaN(when.getTime()) ? "" : when.toLocaleString([], { dateStyle: "medium", timeStyle: "short" }),
  ].filter(Boolean).join(" · ");
  link.append(subject, meta);
  // Kept before the link is followed (the hash change reloads the page, which joins it);
  // a middle click's new tab finds it too.
  const keep = () => {
    const session = { session_id: thread.session_id, token: thread.token, ws_url: thread.ws_url, used_at: Date.now() };
    store(thread.session_id, keys.session(thread.session_id), session);
  };
  link.addEventListener("auxclick", keep);
  link.addEventListener("click", (e) => {
    keep();
    if (e.ctrlKey || e.metaKey || e.shiftKey) return; // another tab or window opens it
    if (thread.session_id !== sessionIdFromUrl()) return; // the hash changes: the page reloads
    if (chat?.session.session_id === thread.session_id) showMail(false); // shown already
    else location.reload(); // shown without a token until now
  });
  const item = document.createElement("li");
  item.append(link);
  return item;
}

// ---------------------------------------------------------------- the session

let chat = null; // the Chat, once the page has a session
let starting = false; // creating a session for the first message

/** The page joins session `id` (its token in this browser's storage, or `session` just
 * made); null when it cannot. */
function join(id, session = readJSON(local, keys.session(id))) {
  if (!session?.token) {
    showBanner(
      "This browser has no token for that session (it was opened in another browser, or not used for 30 days and forgotten).",
      true,
    );
    ui.send.disabled = true;
    return null;
  }
  session.used_at = Date.now();
  store(id, keys.session(id), session);
  const joined = new Chat(session);
  window.kitChat = joined; // for the browser tests and the curious
  addEventListener("pagehide", () => joined.save());
  joined.connect();
  return joined;
}

/**
 * Send what the composer holds. Without a session yet, the first message creates one: a
 * session is opened only by the reader's own Send, never by merely loading the page (a page
 * of another site could open this one in a tab; it cannot press Send).
 */
async function submit() {
  const text = ui.input.value;
  if (chat !== null) {
    if (chat.say(text)) ui.input.value = "";
    return;
  }
  if (starting || !text.trim()) return;
  const why = refusal({ type: "user", client_msg_id: crypto.randomUUID(), text });
  if (why !== null) {
    showComposerError(`This message cannot be sent: ${why}`);
    return;
  }
  starting = true;
  ui.send.disabled = true;
  ui.status.textContent = "Starting a session…";
  let session;
  try {
    session = await newSession();
  } catch (err) {
    showComposerError(`Could not start a session: ${err.message}`);
    return;
  } finally {
    starting = false;
    ui.send.disabled = false;
    ui.status.textContent = "";
  }
  showComposerError(null);
  chat = join(session.session_id, session);
  if (chat?.say(text)) ui.input.value = "";
}

function start() {
  ui.form.addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
    ui.input.focus();
  });
  ui.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      ui.form.requestSubmit();
    }
  });
  ui.stop.addEventListener("click", () => chat?.interrupt());
  const id = sessionIdFromUrl();
  forgetOldSessions(id);
  if (id !== null) chat = join(id);
  offerMail();
  document.documentElement.dataset.ready = "1"; // for the browser tests: handlers are set
}

ui.newSession.addEventListener("click", () => {
  history.replaceState(null, "", location.pathname);
  location.reload();
});
addEventListener("hashchange", () => location.reload());

start();
