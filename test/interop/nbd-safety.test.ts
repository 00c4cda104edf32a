import net from 'node:net';
import t from 'tap';
import { READ_DEADLINE_MS } from '../helpers/nbd-wire.js';
import { startServer } from '../helpers/server.js';
import { requireTools, run } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

// Safe by default: a peer that says nothing after connecting is cut off, and one host
// (or one listener) cannot hold more than its share of connections.

requireTools('nbdinfo');

/** Connects and resolves with what the server sent before it closed (or null if it still holds the socket at the deadline). */
function connectAndWait(path: string): { sock: net.Socket; greeted: Promise<boolean>; closed: Promise<Buffer | null> } {
  const sock = net.connect(path);
  const got: Buffer[] = [];
  let greet: (v: boolean) => void = () => undefined;
  const greeted = new Promise<boolean>((r) => (greet = r));
  const closed = new Promise<Buffer | null>((resolve) => {
    const deadline = setTimeout(() => resolve(null), READ_DEADLINE_MS);
    sock.on('data', (d: Buffer) => {
      got.push(d);
      greet(true);
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      clearTimeout(deadline);
      greet(false);
      resolve(Buffer.concat(got));
    });
  });
  return { sock, greeted, closed };
}

t.test('handshake timeout and per-host connection limit on a real serve', async (t) => {
  const s = await startServer(t, { args: ['--handshake-timeout', '300', '--max-connections-per-host', '2', '--log-level', 'info'] });
  // Silent after the greeting: closed by the server once the handshake time is up.
  const silent = connectAndWait(s.socket());
  t.equal(await silent.greeted, true, 'greeted');
  const rest = await silent.closed;
  t.not(rest, null, 'the server closed a connection that never negotiated');
  // The server logs the close after it happened: wait for the line to be read, bounded.
  t.ok(await waitFor('handshake-timeout log line', async () => (s.log.includes('"reason":"handshake-timeout"') ? true : undefined)));

  // Two connections hold the host's two slots (until the handshake timeout closes them)…
  const a = connectAndWait(s.socket());
  const b = connectAndWait(s.socket());
  t.equal(await a.greeted, true);
  t.equal(await b.greeted, true);
  // …so a third is closed at once, before any greeting.
  const c = connectAndWait(s.socket());
  t.equal(await c.greeted, false, 'the third connection of the host is refused');
  t.ok(await waitFor('connection-limit log line', async () => (s.log.includes('"reason":"connection-limit"') ? true : undefined)));
  a.sock.destroy();
  b.sock.destroy();
  await a.closed;
  await b.closed;
  // Once they are gone a stock client of the host connects again (the server may need a moment to see the closes: retry, bounded).
  let ok = false;
  for (let i = 0; i < 50 && !ok; i++) ok = (await run('nbdinfo', ['--size', s.unixUri()], { timeoutMs: 60_000 })).code === 0;
  t.ok(ok, 'slots are given back when connections end');
});
