import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ioOk, qemuIo, twoArraysWritten } from '../helpers/api.js';
import { cli } from '../helpers/cli.js';
import { RawNbd } from '../helpers/nbd-client.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';
import { waitFor, type TapTest } from '../helpers/wait.js';

requireTools('qemu-io');

const EIO = 5;

async function degraded(s: TestServer, array: string): Promise<any> {
  return waitFor(`health to report ${array} failed`, async () => {
    const h = (await s.request('GET', '/v1/health', undefined, null)).body;
    return h.status === 'degraded' && h.reasons.some((r: any) => r.array === array) ? h : undefined;
  });
}

const setup = twoArraysWritten;

/** The failure as every interface shows it: EIO to the host, health, event, one error line naming array and volume; v1 unaffected. */
async function assertFailed(t: TapTest, s: TestServer, reason: string): Promise<void> {
  const h = await degraded(s, 'a0');
  const r = h.reasons.find((x: any) => x.array === 'a0');
  t.equal(r.reason, reason, `health names the reason: ${r.message}`);
  t.same(r.volumes, ['v0'], 'and the volume on it');
  t.notOk(h.reasons.some((x: any) => x.array === 'a1'), 'the other array is not reported');

  const c = await RawNbd.connect(s.socket('h1'), '0/0');
  try {
    const e1 = await c.read(0, 4096).then(() => null, (e: { errno?: number }) => e.errno);
    t.equal(e1, EIO, 'a read of written data gets EIO');
    const e2 = await c.read(8 * 1024 * 1024, 4096).then(() => null, (e: { errno?: number }) => e.errno);
    t.equal(e2, EIO, 'a read of a never-written block gets EIO too, not zeroes');
    const e3 = await c.write(0, Buffer.alloc(4096, 1)).then(() => null, (e: { errno?: number }) => e.errno);
    t.equal(e3, EIO, 'a write gets EIO');
  } finally {
    c.close();
  }
  t.notOk(ioOk(await qemuIo(s, 'h1', '0/0', 'read -P 0x5a 0 4k')), 'qemu-io cannot read the failed volume');
  t.ok(ioOk(await qemuIo(s, 'h1', '0/1', 'read -P 0x6b 0 1M', 'write -P 0x6c 1M 1M', 'flush')), 'the volume on the healthy array is still served');

  const arrays = (await s.call('GET', '/v1/arrays')).arrays;
  t.equal(arrays.find((a: any) => a.name === 'a0').state, 'failed');
  t.equal(arrays.find((a: any) => a.name === 'a1').state, 'online');
  const v0 = await s.call('GET', '/v1/volumes/v0');
  t.equal(v0.health, 'failed');
  t.same(v0.failedArrays, ['a0']);
  const events = (await s.call('GET', '/v1/events?since=0&limit=1000')).events as any[];
  const failed = events.filter((e) => e.type === 'array.failed');
  t.equal(failed.length, 1, 'one array.failed event');
  t.same(failed[0]?.data.volumes, ['v0']);
  await waitFor('the error line in the log', async () => (/"op":"array.failed"/.test(s.log) ? true : undefined));
  const lines = s.log.split('\n').filter((l) => l.includes('"op":"array.failed"'));
  t.equal(lines.length, 1, 'one error line for the failure');
  t.match(lines[0], /"array":"a0"/);
  t.match(lines[0], /"volumes":\["v0"\]/);
}

async function assertAttachedBack(t: TapTest, s: TestServer, viaCli = false): Promise<void> {
  if (viaCli) {
    const r = await cli(s, ['array', 'attach', 'a0']);
    t.equal(r.code, 0, `blockgate array attach a0: ${r.stderr}`);
    t.match(r.stdout, /state\s+online/, 'the CLI shows the array online');
  } else {
    const a = await s.call('POST', '/v1/arrays/a0/attach');
    t.equal(a.state, 'online', 'attach brings the array back');
  }
  const h = (await s.request('GET', '/v1/health', undefined, null)).body;
  t.equal(h.status, 'ok', 'health is ok again');
  t.ok(ioOk(await qemuIo(s, 'h1', '0/0', 'read -P 0x5a 0 1M', 'read -P 0 1M 1M')), 'the restored data is served again');
  t.ok(ioOk(await qemuIo(s, 'h1', '0/0', 'write -P 0x77 2M 1M', 'flush', 'read -P 0x77 2M 1M')), 'and takes writes');
  t.equal((await s.call('GET', '/v1/volumes/v0')).health, 'ok');
}

t.test('an array file deleted under a mapped volume fails that array; restore + attach brings the data back', async (t) => {
  const s = await startServer(t, { demo: false, args: ['--check-interval', '100'] });
  const { a0 } = await setup(s);
  fs.copyFileSync(a0, `${a0}.bak`);
  fs.rmSync(a0);
  await assertFailed(t, s, 'missing');

  const early = await s.request('POST', '/v1/arrays/a0/attach');
  t.equal(early.status, 409, 'attach is refused while the file is still missing');
  t.match(early.body.error.message, /a0/);
  t.equal((await s.request('GET', '/v1/health', undefined, null)).body.status, 'degraded', 'and the array stays failed');

  fs.renameSync(`${a0}.bak`, a0);
  await assertAttachedBack(t, s);
});

t.test('a truncated array file fails the array instead of reading zeroes', async (t) => {
  const s = await startServer(t, { demo: false, args: ['--check-interval', '100'] });
  const { a0 } = await setup(s);
  fs.copyFileSync(a0, `${a0}.bak`);
  fs.truncateSync(a0, 0);
  await assertFailed(t, s, 'truncated');
  t.equal(fs.statSync(a0).size, 0, 'the appliance did not re-extend the file behind the admin');
  const list = await cli(s, ['array', 'list']);
  t.match(list.stdout, /a0\s+std\s+FAILED \(truncated\)/, 'array list shows it failed');
  const early = await cli(s, ['array', 'attach', 'a0']);
  t.equal(early.code, 4, `the CLI attach is refused (conflict) while the file is short: ${early.stderr.trim()}`);
  fs.copyFileSync(`${a0}.bak`, a0);
  await assertAttachedBack(t, s, true);
});

t.test('an array file replaced by another file fails the array; putting the right one back + attach recovers', async (t) => {
  const s = await startServer(t, { demo: false, args: ['--check-interval', '100'] });
  const { a0 } = await setup(s);
  fs.copyFileSync(a0, `${a0}.bak`);
  // Same size, other contents: only the identity tells.
  fs.writeFileSync(`${a0}.other`, Buffer.alloc(0));
  fs.truncateSync(`${a0}.other`, 32 * 1024 * 1024);
  fs.renameSync(`${a0}.other`, a0);
  await assertFailed(t, s, 'replaced');
  fs.renameSync(`${a0}.bak`, a0);
  await assertAttachedBack(t, s);
});

t.test('FLUSH does not acknowledge writes to a file deleted under it (no periodic check)', async (t) => {
  const s = await startServer(t, { demo: false, args: ['--check-interval', '0'] });
  const { a0 } = await setup(s);
  fs.rmSync(a0);
  const c = await RawNbd.connect(s.socket('h1'), '0/0');
  try {
    await c.write(4096, Buffer.alloc(4096, 9)).catch(() => undefined);
    const e = await c.flush().then(() => null, (err: { errno?: number }) => err.errno);
    t.equal(e, EIO, 'the flush that would have lied gets EIO');
  } finally {
    c.close();
  }
  const h = await degraded(s, 'a0');
  t.equal(h.reasons[0].reason, 'missing');
});
