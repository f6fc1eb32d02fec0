// What one client socket has not yet taken: the frames the DO sent to it that are still
// queued unsent. kit's host keeps an outbox per client (kit/host/app.py `ClientSocket`): a
// replay sends its next page only once the socket has taken the last, and a client more
// than MAX_QUEUED_FRAMES behind is closed with `slow_consumer` (4408), to resume.
//
// A DO does not hold the queue itself: workerd does, behind `ws.send()`. What it says of it
// is `ws.bufferedAmount` (bytes queued unsent). Frames are counted from it: each frame sent
// is remembered by the byte offset it ends at, and the frames whose end is past what was
// transmitted are the ones queued. A runtime that has no `bufferedAmount` (workerd before
// it, cloudflare/workerd#988) tells nothing: every socket counts as keeping up.

import { utf8Length } from "./log";

/** More frames than this queued unsent to one client: `slow_consumer`, close 4408
 * (kit/host/app.py MAX_QUEUED_FRAMES). */
export const MAX_QUEUED_FRAMES = 50_000;

/** What the outbox needs of a socket. */
export interface Outlet {
  send(text: string): void;
  /** Bytes sent and not yet transmitted; absent where the runtime does not say. */
  readonly bufferedAmount?: number;
}

export class Outbox {
  /** The byte offset each remembered frame ends at (from the first frame sent here). */
  private ends: number[] = [];
  /** Frames before this index in `ends` are known to be transmitted. */
  private head = 0;
  private sent = 0;

  constructor(private readonly socket: Outlet) {}

  /** Whether the runtime says how much a socket holds unsent. */
  get measured(): boolean {
    return typeof this.socket.bufferedAmount === "number";
  }

  send(text: string): void {
    this.socket.send(text);
    if (!this.measured) return;
    this.sent += utf8Length(text);
    this.ends.push(this.sent);
  }

  /** Frames sent here and not all transmitted yet (0 where the runtime does not say). */
  queued(): number {
    const buffered = this.socket.bufferedAmount;
    if (typeof buffered !== "number") return 0;
    const transmitted = this.sent - buffered;
    while (this.head < this.ends.length && this.ends[this.head] <= transmitted) this.head++;
    if (this.head > 1024 && this.head * 2 > this.ends.length) {
      this.ends = this.ends.slice(this.head);
      this.head = 0;
    }
    return this.ends.length - this.head;
  }

  /** Whether the socket has taken everything sent to it (true where the runtime does not say). */
  drained(): boolean {
    const buffered = this.socket.bufferedAmount;
    return typeof buffered !== "number" || buffered <= 0;
  }
}
