// A session socket for an id that names no session, served without any Durable Object
// state: it answers as kit's host answers such a socket (docs/protocol.md §5, §8) — `pong`
// to a ping, the frame errors for bad frames, `hello_required` before hello, and
// `unknown_session` with close 4404 to the hello; no hello within HELLO_TIMEOUT_MS:
// `hello_required`, close 4400. The socket is a plain (not hibernatable) one held by the
// code that answered the upgrade, and its deadline is a timer, so nothing is stored.

import { CLOSE, E, PONG, ProtocolError, errorFrame, parseClientFrame } from "./frames";

/** No hello this long after the socket opened: `hello_required`, close 4400. */
export const HELLO_TIMEOUT_MS = 10_000;

/** The 101 answer to an upgrade whose session does not exist. */
export function noSessionSocket(helloTimeoutMs: number = HELLO_TIMEOUT_MS): Response {
  const [client, server] = Object.values(new WebSocketPair());
  server.accept();
  let closed = false;
  const fail = (exc: ProtocolError): void => {
    if (closed) return;
    try {
      server.send(errorFrame(exc.code, exc.message));
      if (exc.closeCode === null) return;
      closed = true;
      clearTimeout(deadline);
      server.close(exc.closeCode, exc.code);
    } catch {
      closed = true; // closed under us
    }
  };
  const deadline = setTimeout(
    () => fail(new ProtocolError(E.HELLO_REQUIRED, `No hello within ${helloTimeoutMs / 1000} s; send hello first.`, CLOSE.BAD_REQUEST)),
    helloTimeoutMs,
  );
  server.addEventListener("message", (event) => {
    if (closed) return;
    try {
      if (typeof event.data !== "string") {
        throw new ProtocolError(E.BAD_FRAME, "Send frames as WebSocket text messages holding JSON.");
      }
      const frame = parseClientFrame(event.data);
      if (frame.type === "ping") {
        server.send(PONG);
        return;
      }
      if (frame.type === "hello") {
        throw new ProtocolError(E.UNKNOWN_SESSION, "No session has this id; create one with POST /v1/sessions.", CLOSE.UNKNOWN_SESSION);
      }
      throw new ProtocolError(E.HELLO_REQUIRED, "Send hello with the session token first.");
    } catch (exc) {
      fail(exc instanceof ProtocolError ? exc : new ProtocolError(E.INTERNAL, "The host failed on this connection; reconnect and resume.", CLOSE.INTERNAL));
    }
  });
  const ended = (): void => {
    closed = true;
    clearTimeout(deadline);
  };
  server.addEventListener("close", ended);
  server.addEventListener("error", ended);
  return new Response(null, { status: 101, webSocket: client });
}
