import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { M, ioOk, qemuIo, readFileRegion, regionIs, waitJob } from '../helpers/api.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';

requireTools('qemu-io');

// Scrub, copy, image copy and activate read back what they wrote. Here the
// storage does not hold it: BLOCKGATE_FAULTS=bulk-corrupt flips the first byte
// a bulk job wrote, after its write pass and before any read-back. Every job
// must then fail with its verify error and leave nothing marked clean.

let s: TestServer;

t.before(async () => {
  s = await startServer(t, { demo: false, env: { BLOCKGATE_FAULTS: 'bulk-corrupt' } });
  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '256M' });
  await s.call('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  fs.mkdirSync(path.join(s.dataDir, 'images'), { recursive: true });
  fs.writeFileSync(path.join(s.dataDir, 'images', 'os.img'), Buffer.alloc(4 * M, 0x07));
  await s.call('POST', '/v1/images', { name: 'os', path: 'images/os.img' });
});

const arrayFile = async (): Promise<string> => (await s.call('GET', '/v1/arrays')).arrays[0].path;

/** A volume with host data on it, left unbound; `target` is a free unit address for the bind. */
async function writtenUnbound(name: string, byte: number, target: number): Promise<any> {
  await s.call('POST', '/v1/volumes', { name, size: '8M', farm: 'f' });
  const b = await s.call('POST', '/v1/bindings', { volume: name, host: 'h', target, lun: 0 });
  if (!ioOk(await qemuIo(s, 'h', `${target}/0`, `write -P ${byte} 0 8M`, 'flush'))) throw new Error('write failed');
  await s.call('POST', `/v1/bindings/${b.id}/unmap`);
  await s.call('DELETE', `/v1/bindings/${b.id}`);
  return s.call('GET', `/v1/volumes/${name}`);
}

t.test('scrub: a read-back that differs from the pattern fails the job and the volume stays dirty', async (t) => {
  const v = await writtenUnbound('sv', 0x5a, 1);
  const r = await s.call('POST', '/v1/volumes/sv/scrub', { pattern: 0 });
  const j = await waitJob(s, r.job.id);
  t.equal(j.state, 'failed', 'the scrub did not pass verification');
  t.match(j.error, /did not verify/);
  const after = await s.call('GET', '/v1/volumes/sv');
  t.equal(after.dirty, true, 'an unverified scrub never clears the dirty mark');
  t.equal(after.scrubbedAt, v.scrubbedAt, 'nor records a scrub');
  const refused = await s.request('POST', '/v1/volumes/sv/break').then(() => s.request('POST', '/v1/volumes/sv/deallocate'));
  t.equal(refused.status, 409, 'so the space cannot be freed');
  t.match(refused.body?.error?.message, /scrub it before de-allocating/);
  // The corruption is real: the first byte is not the pattern.
  t.equal(readFileRegion(await arrayFile(), v.extents[0].offset, 1)[0], 0xff);
});

t.test('copy: a target that does not hold what was written fails the job in the worker verify', async (t) => {
  await writtenUnbound('cs', 0x42, 2);
  await s.call('POST', '/v1/volumes', { name: 'ct', size: '8M', farm: 'f' });
  const b = await s.call('POST', '/v1/bindings', { volume: 'ct', host: 'h', target: 3, lun: 0, map: false });
  await s.call('DELETE', `/v1/bindings/${b.id}`);
  const r = await s.call('POST', '/v1/volumes/cs/copy', { targets: ['ct'] });
  const j = await waitJob(s, r.job.id);
  t.equal(j.state, 'failed', 'the copy did not pass verification');
  t.match(j.error, /verify failed at array \d+ offset \d+/);
  t.equal((await s.call('GET', '/v1/volumes/ct')).dirty, true, 'the target holds partial data: scrub before reuse');
});

t.test('copy-image: a failed verify takes the failure edge to unconfigured', async (t) => {
  await s.call('POST', '/v1/volumes', { name: 'iv', size: '8M', farm: 'f' });
  const r = await s.call('POST', '/v1/volumes/iv/copy-image', { image: 'os' });
  const j = await waitJob(s, r.job.id);
  t.equal(j.state, 'failed');
  t.match(j.error, /verify failed/);
  const v = await s.call('GET', '/v1/volumes/iv');
  t.equal(v.state, 'unconfigured');
  t.equal(v.image, null);
  t.equal(v.dirty, true);
});

t.test('activate: a failed image copy rolls the volume back to free, scrubbing what the copy wrote', async (t) => {
  const file = await arrayFile();
  const r = await s.call('POST', '/v1/hosts/h/activate', { volume: 'act', size: '8M', image: 'os', target: 5, lun: 0 });
  // Allocated with the job: where its bytes will be.
  const { extents } = await s.call('GET', '/v1/volumes/act');
  t.equal(extents.length, 1);
  const j = await waitJob(s, r.job.id);
  t.equal(j.state, 'failed');
  t.match(j.error, /verify failed/);
  const v = await s.call('GET', '/v1/volumes/act');
  t.equal(v.state, 'free', 'walked back to free');
  t.equal(v.dirty, false, 'after a scrub');
  const ev = await s.call('GET', '/v1/events?since=0');
  const ops = ev.events.filter((e: any) => e.subject === 'volume/act').map((e: any) => e.data.operation ?? e.type);
  t.ok(ops.includes('copy-image-failed'), `the failure edge was taken (${ops.join(', ')})`);
  t.ok(regionIs(file, extents[0].offset, 8 * M, 0), 'the image bytes the copy wrote were scrubbed');
  t.same((await s.call('GET', '/v1/hosts/h/namespace')).units, [], 'no unit left behind');
});
