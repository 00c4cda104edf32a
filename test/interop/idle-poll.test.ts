import t from 'tap';
import { IscsiSession } from '../helpers/iscsi-session.js';
import { CMD, WireClient } from '../helpers/nbd-wire.js';
import { prng } from '../helpers/prng.js';
import { startServer, type TestServer } from '../helpers/server.js';

// After the reply to a lone host's last request the server reads that host's
// socket without waiting for a moment (serve --idle-poll), so a QD1 host's
// next request is taken by a direct read rather than by the event loop after
// a wake-up. Those reads stand in for libuv's: the bytes must land where
// libuv's would have (the shared buffer, or the rest of a large payload), and
// the buffer after them must be the one the next read uses. The client here
// runs in this process, the server in its own, as a host and blockgate do.

const KiB = 1024;
const SPAN = 16 * 1024 * KiB;

async function polls(s: TestServer): Promise<{ found: number; empty: number }> {
  const r = await fetch(`${s.api}/metrics`, { headers: { authorization: 'Bearer test-token-0123456789' } });
  const text = await r.text();
  const get = (result: string): number => {
    const m = new RegExp(`^blockgate_idle_polls_total\\{result="${result}"\\} (\\S+)$`, 'm').exec(text);
    if (!m) throw new Error(`no blockgate_idle_polls_total{result="${result}"} in /metrics`);
    return Number(m[1]);
  };
  return { found: get('found'), empty: get('empty') };
}

/**
 * A QD1 closed loop of writes (4 KiB to 192 KiB, so payloads span several
 * socket reads) and read-backs at random places, against a model of the span.
 */
async function closedLoop(c: WireClient, model: Buffer, n: number, seed: number): Promise<{ bad: number; spanOk: boolean }> {
  const r = prng(seed);
  let bad = 0;
  for (let i = 0; i < n; i++) {
    const len = (1 + Math.floor(r() * 48)) * 4 * KiB;
    const off = Math.floor(r() * ((SPAN - len) / (4 * KiB))) * 4 * KiB;
    if (r() < 0.6) {
      const d = Buffer.alloc(len, (i * 7 + 1) & 0xff);
      d.writeUInt32BE(i, 0);
      if ((await c.request(CMD.WRITE, off, len, 0, d)).error !== 0) bad++;
      d.copy(model, off);
    } else {
      const got = await c.request(CMD.READ, off, len);
      if (got.error !== 0 || !got.data!.equals(model.subarray(off, off + len))) bad++;
    }
  }
  const all = await c.request(CMD.READ, 0, SPAN / 2);
  const rest = await c.request(CMD.READ, SPAN / 2, SPAN / 2);
  return { bad, spanOk: all.data!.equals(model.subarray(0, SPAN / 2)) && rest.data!.equals(model.subarray(SPAN / 2)) };
}

t.test('a lone QD1 host is read by the idle poll, and every byte lands where it belongs', async (t) => {
  const s = await startServer(t);
  const c = await WireClient.connect({ path: s.socket() });
  t.teardown(() => c.destroy());
  await c.open('0/0', { structured: false });
  const model = Buffer.alloc(SPAN);
  t.equal((await c.request(CMD.WRITE, 0, SPAN / 2, 0, model.subarray(0, SPAN / 2))).error, 0);
  t.equal((await c.request(CMD.WRITE, SPAN / 2, SPAN / 2, 0, model.subarray(SPAN / 2))).error, 0);

  const before = await polls(s);
  const { bad, spanOk } = await closedLoop(c, model, 1500, 14);
  t.equal(bad, 0, '1,500 requests at QD1, every reply right');
  t.ok(spanOk, 'the span reads back as written');
  const after = await polls(s);
  t.ok(after.found - before.found > 0, `requests read by the poll: ${after.found - before.found} (empty polls ${after.empty - before.empty})`);

  await t.test('a host that pauses between requests costs one empty poll, not one each', async (t) => {
    const a = await polls(s);
    for (let i = 0; i < 30; i++) {
      await new Promise((r) => setTimeout(r, 5));
      t.equal((await c.request(CMD.READ, i * 4 * KiB, 4 * KiB)).error, 0);
    }
    const b = await polls(s);
    t.ok(b.empty - a.empty <= 2, `30 requests 5 ms apart: ${b.empty - a.empty} empty polls`);
    t.equal(b.found - a.found, 0, 'none of them found by a poll');
  });

  await t.test('iSCSI: a lone QD1 initiator is read by the poll too', async (t) => {
    const w = await IscsiSession.open(s.iscsi, [0]);
    t.teardown(() => w.close());
    const a = await polls(s);
    const r = prng(15);
    let bad = 0;
    for (let i = 0; i < 600; i++) {
      const off = Math.floor(r() * 2048) * 4 * KiB;
      const d = Buffer.alloc(8 * KiB, i & 0xff);
      await w.write(0, off, d);
      d.copy(model, off);
      const back = await w.read(0, off, 8 * KiB);
      if (!back.equals(d)) bad++;
    }
    t.equal(bad, 0, '600 writes at QD1, each read back');
    const b = await polls(s);
    t.ok(b.found - a.found > 0, `commands read by the poll: ${b.found - a.found}`);
    const nbd = await c.request(CMD.READ, 0, 8 * 1024 * KiB);
    t.ok(nbd.data!.equals(model.subarray(0, 8 * 1024 * KiB)), 'and NBD reads what iSCSI wrote');
  });
});

t.test('two busy hosts: the loop has work, nobody polls', async (t) => {
  const s = await startServer(t);
  const [a, b] = await Promise.all([WireClient.connect({ path: s.socket() }), WireClient.connect({ path: s.socket() })]);
  t.teardown(() => {
    a.destroy();
    b.destroy();
  });
  await a.open('0/0', { structured: false });
  await b.open('0/0', { structured: false });
  // Counted only while both loops run: once one ends, the other is alone and
  // is meant to be polled. Stalls of the machine still leave a session alone
  // for a moment, hence a bound rather than zero (903 polls without the rule).
  let stop = false;
  const done = [0, 0];
  const loop = async (c: WireClient, k: number, base: number): Promise<void> => {
    for (let i = 0; !stop; i++) {
      await c.request(CMD.READ, base + (i % 64) * 4 * KiB, 4 * KiB);
      done[k]++;
    }
  };
  const both = Promise.all([loop(a, 0, 0), loop(b, 1, SPAN)]);
  while (done[0] < 50 || done[1] < 50) await new Promise((r) => setTimeout(r, 1));
  const p0 = await polls(s);
  const d0 = done[0] + done[1];
  while (done[0] + done[1] - d0 < 2000) await new Promise((r) => setTimeout(r, 1));
  const p1 = await polls(s);
  const served = done[0] + done[1] - d0;
  stop = true;
  await both;
  const n = p1.found + p1.empty - p0.found - p0.empty;
  t.ok(n < served / 10, `${served} requests from two sessions at once: ${p1.found - p0.found} found and ${p1.empty - p0.empty} empty polls`);
});

t.test('a host keeping 8 requests in flight is not polled: its requests batch up by themselves', async (t) => {
  const s = await startServer(t);
  const c = await WireClient.connect({ path: s.socket() });
  t.teardown(() => c.destroy());
  await c.open('0/0', { structured: false });
  const p0 = await polls(s);
  let bad = 0;
  for (let round = 0; round < 200; round++) {
    // Eight requests in one segment, as a pipelining client's queue refills.
    const lengths = new Map<bigint, number>();
    c.sock.cork();
    for (let i = 0; i < 8; i++) lengths.set(c.send(CMD.READ, ((round * 8 + i) % 512) * 4 * KiB, 4 * KiB, 0), 4 * KiB);
    c.sock.uncork();
    for (let i = 0; i < 8; i++) {
      const r = await c.reply(lengths);
      if (r.error !== 0 || r.data?.length !== 4 * KiB) bad++;
    }
  }
  const p1 = await polls(s);
  t.equal(bad, 0, '1,600 reads, 8 at a time');
  t.ok(p1.found + p1.empty - p0.found - p0.empty < 20, `200 batches of 8: ${p1.found - p0.found} found and ${p1.empty - p0.empty} empty polls`);
});

t.test('--idle-poll 0: no polls', async (t) => {
  const s = await startServer(t, { args: ['--idle-poll', '0'] });
  const c = await WireClient.connect({ path: s.socket() });
  t.teardown(() => c.destroy());
  await c.open('0/0', { structured: false });
  let bad = 0;
  for (let i = 0; i < 300; i++) if ((await c.request(CMD.READ, i * 4 * KiB, 4 * KiB)).error !== 0) bad++;
  t.equal(bad, 0, '300 reads at QD1');
  t.same(await polls(s), { found: 0, empty: 0 });
});
