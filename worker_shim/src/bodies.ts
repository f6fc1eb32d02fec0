// Request bodies the shim refuses.

/** How much of a refused body is read before the rest is cancelled. */
const DISCARD_BYTES = 1 << 20;

/** Read a refused request's body (up to DISCARD_BYTES, then cancel it): a body left unread
 * makes workerd report the forwarding Worker's stream as an uncaught error. */
export async function discard(request: Request): Promise<void> {
  if (request.body === null) return;
  const reader = request.body.getReader();
  let read = 0;
  try {
    for (let i = 0; i < 100_000 && read < DISCARD_BYTES; i++) {
      const { done, value } = await reader.read();
      if (done) return;
      read += value.byteLength;
    }
    await reader.cancel();
  } catch {
    // the sender went away
  }
}
