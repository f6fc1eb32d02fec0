// src/outbox.ts: frames queued unsent, counted from the bytes a socket says it holds.

import { describe, expect, it } from "vitest";
import { Outbox } from "../src/outbox";

describe("outbox", () => {
  it("counts a frame as queued until its last byte is transmitted", () => {
    const socket = { sent: [] as string[], bufferedAmount: 0, send(text: string) { this.sent.push(text); this.bufferedAmount += new TextEncoder().encode(text).length; } };
    const box = new Outbox(socket);
    for (const text of ["aaaa", "é€😀", "bb"]) box.send(text); // 4 + 9 + 2 bytes
    expect([box.queued(), box.drained()]).toEqual([3, false]);
    socket.bufferedAmount -= 4; // the first frame is out
    expect(box.queued()).toBe(2);
    socket.bufferedAmount -= 8; // all but the last byte of the second
    expect(box.queued()).toBe(2);
    socket.bufferedAmount = 0;
    expect([box.queued(), box.drained()]).toEqual([0, true]);
  });

  it("counts nothing where the socket does not say what it holds", () => {
    const box = new Outbox({ send() {} });
    for (let n = 0; n < 100; n++) box.send("x");
    expect([box.measured, box.queued(), box.drained()]).toEqual([false, 0, true]);
  });
});
