import fs from 'node:fs';
import t from 'tap';
import { pipelinedReads } from '../helpers/nbd-frames.js';
import { startServer } from '../helpers/server.js';
import { CMD, FLAG, OPT, REP, WireClient } from '../helpers/nbd-wire.js';

// A client that pipelines huge reads and never reads a reply must not grow
// the server without bound: reading stops at the in-flight and queued-reply
// limits. Memory is read from the server's /proc status, not timed.

const MiB = 1024 * 1024;

function rssMiB(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : NaN;
}

t.test('pipelined reads whose replies are never read: RSS stays bounded', async (t) => {
  const s = await startServer(t);
  const sock = { path: s.socket('demo') };
  const before = rssMiB(s.pid);
  const greedy: WireClient[] = [];
  // 3 connections x 200 reads of 32 MiB = 19 GiB of replies asked for.
  for (let c = 0; c < 3; c++) {
    const w = await (await WireClient.connect(sock)).open('0/0');
    w.sock.pause();
    // Stop our side from reading: the server's replies back up.
    w.sock.removeAllListeners('data');
    w.sock.write(pipelinedReads(200, 32 * MiB));
    greedy.push(w);
  }
  let peak = 0;
  for (let i = 0; i < 30; i++) {
    await new Promise((r) => setTimeout(r, 100));
    peak = Math.max(peak, rssMiB(s.pid));
  }
  t.ok(peak - before < 600, `server RSS grew ${Math.round(peak - before)} MiB (from ${Math.round(before)} MiB) for 19 GiB of unread replies`);
  // Everyone else is still served.
  const ok = await (await WireClient.connect(sock)).open('0/0');
  t.equal((await ok.request(CMD.READ, 0, 4096)).error, 0, 'a well-behaved client is served meanwhile');
  ok.destroy();
  for (const w of greedy) w.destroy();
  t.equal(s.exitCode, null, 'server alive');
});

t.test('replies a client has not read yet do not stop its session reading requests, below maxQueuedReplyBytes', async (t) => {
  // Reading used to pause whenever the socket held more than Node's 16 KiB high-water mark of replies, until
  // they had all gone: a pipelining client's next requests then waited for its last replies to drain, however
  // far under the limit. Only the 16 MiB of maxQueuedReplyBytes may pause it.
  const s = await startServer(t);
  const sock = { path: s.socket('demo') };
  const a = await (await WireClient.connect(sock)).open('0/0');
  a.sock.pause();
  a.sock.removeAllListeners('data');
  // 2 MiB of replies: more than the socket's kernel buffer holds, far less than 16 MiB.
  a.sock.write(pipelinedReads(32, 64 * 1024));
  await new Promise((r) => setTimeout(r, 300));
  const data = Buffer.alloc(4096, 0x6b);
  a.send(CMD.WRITE, 1024 * 1024, data.length, 0, data);
  const b = await (await WireClient.connect(sock)).open('0/0', { structured: false });
  let seen = false;
  for (let i = 0; i < 50 && !seen; i++) {
    const r = await b.request(CMD.READ, 1024 * 1024, data.length);
    seen = r.error === 0 && r.data!.equals(data);
    if (!seen) await new Promise((r) => setTimeout(r, 100));
  }
  t.ok(seen, 'the write sent behind 2 MiB of unread replies was read and applied');
  a.destroy();
  b.destroy();
});

t.test('replies a client has not read yet keep their bytes while other sessions reuse reply memory', async (t) => {
  // Small replies are carved from arenas that are reused once every carve in them is given back, a reply's by
  // the write callback of its own socket write (ReplyBatch.sent). Replies queued behind a client that does not
  // read must keep their bytes while another session carves and gives back megabytes of its own.
  const s = await startServer(t);
  const sock = { path: s.socket('demo') };
  const blocks = 1024;
  const block = (i: number): Buffer => {
    const b = Buffer.alloc(4096);
    for (let p = 0; p < 4096; p += 4) b.writeUInt32BE((i * 0x9e3779b1 + p) >>> 0, p);
    return b;
  };
  const w = await (await WireClient.connect(sock)).open('0/0', { structured: false });
  for (let i = 0; i < blocks; i++) w.send(CMD.WRITE, i * 4096, 4096, 0, block(i));
  for (let i = 0; i < blocks; i++) t.equal((await w.reply()).error, 0);
  w.destroy();
  const a = await (await WireClient.connect(sock)).open('0/0', { structured: false });
  a.sock.pause();
  const lengths = new Map<bigint, number>();
  const order: bigint[] = [];
  // 4 MiB of replies: far more than the socket's kernel buffer, so most wait in the server.
  for (let i = 0; i < blocks; i++) {
    const c = a.send(CMD.READ, i * 4096, 4096);
    lengths.set(c, 4096);
    order.push(c);
  }
  await new Promise((r) => setTimeout(r, 200));
  const b = await (await WireClient.connect(sock)).open('0/0', { structured: false });
  const other = Buffer.alloc(4096, 0xee);
  const churn = async (): Promise<void> => {
    for (let round = 0; round < 64; round++) {
      const mine = new Map<bigint, number>();
      for (let k = 0; k < 32; k++) mine.set(b.send(CMD.READ, 64 * MiB + k * 4096, 4096), 4096);
      for (let k = 0; k < 32; k++) b.send(CMD.WRITE, 64 * MiB + k * 4096, 4096, 0, other);
      for (let k = 0; k < 64; k++) t.equal((await b.reply(mine)).error, 0);
    }
  };
  let bad = 0;
  const check = async (n: number): Promise<void> => {
    for (let i = 0; i < n; i++) {
      const r = await a.reply(lengths);
      const at = order.indexOf(r.cookie);
      if (r.error !== 0 || !r.data!.equals(block(at))) bad++;
    }
  };
  await churn();
  // Some replies taken, so some of the server's writes complete while later ones still wait; churn again.
  a.sock.resume();
  await check(blocks / 4);
  a.sock.pause();
  await new Promise((r) => setTimeout(r, 200));
  await churn();
  b.destroy();
  a.sock.resume();
  await check(blocks - blocks / 4);
  t.equal(bad, 0, 'every queued reply carries its own block');
  a.destroy();
});

t.test('a write whose payload never comes holds one request, and its connection can be dropped', async (t) => {
  const s = await startServer(t);
  const w = await (await WireClient.connect({ path: s.socket('demo') })).open('0/0');
  w.send(CMD.WRITE, 0, 32 * MiB, 0, Buffer.alloc(1000));
  const tooBig = await (await WireClient.connect({ path: s.socket('demo') })).open('0/0');
  tooBig.send(CMD.WRITE, 0, 64 * MiB);
  t.ok(await tooBig.closed(), 'a write over the 32 MiB maximum payload disconnects');
  w.destroy();
  const ok = await (await WireClient.connect({ path: s.socket('demo') })).open('0/0');
  t.equal((await ok.request(CMD.READ, 0, 4096)).error, 0);
  ok.destroy();
});

t.test('a client that keeps sending after DISC without reading is dropped', async (t) => {
  const s = await startServer(t);
  const w = await (await WireClient.connect({ path: s.socket('demo') })).open('0/0');
  w.sock.removeAllListeners('data');
  w.sock.pause();
  w.send(CMD.DISC, 0, 0);
  // 64 MiB nobody will read: the server must not wait for this client's FIN forever.
  for (let i = 0; i < 64; i++) w.sock.write(Buffer.alloc(MiB, 0x25));
  const closed = await new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => resolve(false), 30_000);
    w.sock.once('close', () => {
      clearTimeout(timer);
      resolve(true);
    });
  });
  t.ok(closed, 'the server closed the connection');
});

t.test('option limits: an over-long option is skipped and refused ERR_TOO_BIG in sync; EXPORT_NAME that long and the 257th option disconnect', async (t) => {
  const s = await startServer(t);
  const sock = { path: s.socket('demo') };
  const c = await WireClient.connect(sock);
  await c.greet();
  const big = await c.option(OPT.LIST, Buffer.alloc(64 * 1024 + 1, 0x41));
  t.equal(big.length, 1);
  t.equal(big[0]!.type, REP.ERR_TOO_BIG, 'an option over 64 KiB: ERR_TOO_BIG');
  t.equal(big[0]!.option, OPT.LIST, 'for that option');
  const next = await c.option(OPT.LIST);
  t.equal(next[next.length - 1]!.type, REP.ACK, 'the session is still in sync');
  c.destroy();

  const e = await WireClient.connect(sock);
  await e.greet();
  e.sendOption(OPT.EXPORT_NAME, Buffer.alloc(64 * 1024 + 1, 0x30));
  t.ok(await e.closed(30_000), 'EXPORT_NAME over 64 KiB (no error reply exists) disconnects');

  const f = await WireClient.connect(sock);
  await f.greet();
  // 256 options are answered; the 257th ends the session.
  for (let i = 0; i < 256; i++) f.sendOption(OPT.STRUCTURED_REPLY);
  let acks = 0;
  for (let i = 0; i < 256; i++) {
    await f.optionReply();
    acks++;
  }
  t.equal(acks, 256, '256 options answered');
  f.sendOption(OPT.LIST);
  t.ok(await f.closed(30_000), 'the 257th option disconnects');
  const ok = await (await WireClient.connect(sock)).open('0/0');
  t.equal((await ok.request(CMD.READ, 0, 4096)).error, 0, 'others are still served');
  ok.destroy();
});
