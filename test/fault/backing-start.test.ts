import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ioOk, qemuIo, twoArraysWritten } from '../helpers/api.js';
import { RawNbd } from '../helpers/nbd-client.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';
import type { TapTest } from '../helpers/wait.js';

requireTools('qemu-io');

const EIO = 5;
const M = 1024 * 1024;

/** Two arrays with a written, flushed, mapped volume each; then the server is stopped. */
async function prepared(t: { teardown: (fn: () => unknown) => void }): Promise<{ s: TestServer; a0: string }> {
  const s = await startServer(t, { demo: false });
  const { a0 } = await twoArraysWritten(s);
  await s.stop();
  return { s, a0 };
}

/** After a restart with a0 damaged: the appliance serves v1, refuses v0 with EIO, and health says why. */
async function startsDegraded(t: TapTest, s: TestServer, reason: string): Promise<void> {
  await s.start();
  const h = (await s.request('GET', '/v1/health', undefined, null)).body;
  t.equal(h.status, 'degraded', 'the appliance starts, degraded');
  t.equal(h.reasons.length, 1);
  t.equal(h.reasons[0]?.array, 'a0');
  t.equal(h.reasons[0]?.reason, reason, `reason: ${h.reasons[0]?.message}`);
  t.same(h.reasons[0]?.volumes, ['v0']);
  t.ok(ioOk(await qemuIo(s, 'h1', '0/1', 'read -P 0x6b 0 1M')), 'the healthy array is served');
  const c = await RawNbd.connect(s.socket('h1'), '0/0');
  try {
    const e = await c.read(0, 4096).then(() => null, (err: { errno?: number }) => err.errno);
    t.equal(e, EIO, 'the failed volume answers EIO, not zeroes');
  } finally {
    c.close();
  }
  t.match(s.log, /"op":"array.failed"[^\n]*"array":"a0"[^\n]*"volumes":\["v0"\]/, 'an error line names array and volume');
}

t.test('a missing array file at start fails that array only; touching it does not make zeroes of the data', async (t) => {
  const { s, a0 } = await prepared(t);
  fs.copyFileSync(a0, `${a0}.bak`);
  fs.rmSync(a0);
  await startsDegraded(t, s, 'missing');
  await s.stop();

  // The tester's `touch`: an empty file where the array was is not the array.
  fs.writeFileSync(a0, '');
  await startsDegraded(t, s, 'truncated');
  t.equal(fs.statSync(a0).size, 0, 'the empty file was not re-extended');

  fs.renameSync(`${a0}.bak`, a0);
  const back = await s.call('POST', '/v1/arrays/a0/attach');
  t.equal(back.state, 'online');
  t.ok(ioOk(await qemuIo(s, 'h1', '0/0', 'read -P 0x5a 0 1M')), 'restore + attach: the data is back');
});

t.test('an allocation map that cannot be loaded fails that array only, and the rest starts', async (t) => {
  const { s, a0 } = await prepared(t);
  const map = `${a0}.alloc`;
  fs.copyFileSync(map, `${map}.bak`);
  // Half the map is gone: loading it would turn written blocks into holes.
  fs.truncateSync(map, 4096 + 1024);
  await startsDegraded(t, s, 'map-truncated');
  await s.stop();

  // A sidecar that is not a map at all.
  fs.writeFileSync(map, Buffer.alloc(4096 + 8192, 0x17));
  await startsDegraded(t, s, 'map-corrupt');

  fs.renameSync(`${map}.bak`, map);
  t.equal((await s.call('POST', '/v1/arrays/a0/attach')).state, 'online', 'attach once the map is restored');
  t.ok(ioOk(await qemuIo(s, 'h1', '0/0', 'read -P 0x5a 0 1M', `read -P 0 1M ${15 * M}`)), 'data and holes are what they were');
});
