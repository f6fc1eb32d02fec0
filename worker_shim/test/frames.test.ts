// parseClientFrame against the rules of kit/protocol/frames.py: messages, code point
// counting, Python's whitespace, the order of checks.

import { describe, expect, it } from "vitest";
import { MAX_ID_CHARS, MAX_JSON_DEPTH, ProtocolError, parseClientFrame } from "../src/frames";

function refusal(text: string): [string, string] {
  try {
    parseClientFrame(text);
  } catch (exc) {
    if (exc instanceof ProtocolError) return [exc.code, exc.message];
    throw exc;
  }
  throw new Error(`accepted: ${text.slice(0, 80)}`);
}

describe("frames", () => {
  it("names the first lone surrogate as frames.py does", () => {
    expect(refusal('{"type":"user","client_msg_id":"m2","text":"half an emoji \\ud83d"}')).toEqual([
      "bad_frame",
      "user.text is not valid Unicode (a lone surrogate at character 14); send UTF-8 text.",
    ]);
    expect(refusal('{"type":"user","\\udc00":1}')[1]).toBe(
      "A key in the frame is not valid Unicode (a lone surrogate at character 0); send UTF-8 text.",
    );
    expect(refusal('{"type":"shout","x":[{"y":"\\ud800"}]}')[1]).toMatch(/^frame\.x\[0\]\.y is not valid Unicode/);
  });

  it("checks Unicode before the type is known, and the size before anything", () => {
    expect(refusal('{"type":"shout","t":"\\ud800"}')[0]).toBe("bad_frame");
    expect(refusal("x".repeat(300_000))[0]).toBe("too_large");
  });

  it("counts code points, not UTF-16 units, against the limits", () => {
    const astral = "😀".repeat(MAX_ID_CHARS); // 256 UTF-16 units, 128 code points
    expect(parseClientFrame(JSON.stringify({ type: "user", client_msg_id: astral, text: "hi" }))).toMatchObject({ type: "user" });
    expect(refusal(JSON.stringify({ type: "user", client_msg_id: astral + "😀", text: "hi" }))).toEqual([
      "bad_frame",
      `user.client_msg_id must be at most ${MAX_ID_CHARS} characters.`,
    ]);
  });

  it("takes blank text as Python's str.strip() does", () => {
    expect(refusal(JSON.stringify({ type: "user", client_msg_id: "m", text: " \u001c\u0085 " }))[0]).toBe("bad_frame");
    expect(parseClientFrame(JSON.stringify({ type: "user", client_msg_id: "m", text: "\ufeff" }))).toMatchObject({ type: "user" });
  });

  it("refuses NaN and Infinity as bad_json, and keeps the last of a repeated key", () => {
    expect(refusal('{"type":"ack","seq":NaN}')[0]).toBe("bad_json");
    expect(parseClientFrame('{"type":"ack","seq":"x","seq":4}')).toEqual({ type: "ack", seq: 4 });
  });

  it("refuses nesting deeper than MAX_JSON_DEPTH as bad_json, as kit's json.loads does past its recursion limit", () => {
    const nested = (depth: number, open = "[", close = "]", leaf = "") =>
      '{"type":"ping","x":' + open.repeat(depth - 1) + leaf + close.repeat(depth - 1) + "}"; // the frame is level 1
    expect(parseClientFrame(nested(1000))).toEqual({ type: "ping" });
    expect(refusal(nested(1001))).toEqual(["bad_json", "Frame is not valid JSON: it nests deeper than 1000 levels."]);
    expect(refusal(nested(1001, '{"a":', "}", "0"))[0]).toBe("bad_json");
    expect(refusal(nested(100_000))[0]).toBe("bad_json"); // tests/protocol/test_frames.py
    // Brackets inside strings are text, not nesting.
    expect(parseClientFrame(JSON.stringify({ type: "ping", x: "[".repeat(5_000), y: '\\"[{' }))).toEqual({ type: "ping" });
    expect(MAX_JSON_DEPTH).toBe(1000);
  });
});
