import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { M, ioOk, qemuIo, readFileRegion, regionIs, waitJob } from '../helpers/api.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';

requireTools('qemu-io');

// Jobs cut by kill -9, SIGTERM or cancel. Every job here runs under
// --bulk-rate, so it is still running when the test acts on it: a check that
// could not happen fails instead of being skipped.

const CHUNK = M; // the bulk engine's chunk: a scrub resumes at a chunk boundary
const RATE = '8M';
const SIZE = 64 * M;

/** Waits until the job is running and has done at least `min` bytes (and not all); returns its progress then. */
async function midJob(s: TestServer, id: number, min = 1): Promise<{ done: number; total: number }> {
  // A hang guard (a job stuck in queued), not a timing check.
  const deadline = Date.now() + 300_000;
  for (;;) {
    const j = await s.call('GET', `/v1/jobs/${id}`);
    if (j.state === 'running' && j.progress.done >= min && j.progress.done < j.progress.total) return j.progress;
    if (j.state !== 'queued' && j.state !== 'running') throw new Error(`job ${id} ended ${j.state} before the test could act on it: ${JSON.stringify(j)}`);
    if (Date.now() > deadline) throw new Error(`job ${id} never got going: ${JSON.stringify(j)}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A volume brought to unbound with data written on it by a host (its first and last MiB, or all of it). */
async function writtenUnbound(s: TestServer, name: string, size: string, byte: number, all = false): Promise<void> {
  await s.call('POST', '/v1/volumes', { name, size, farm: 'f' });
  const b = await s.call('POST', '/v1/bindings', { volume: name, host: 'h', target: 0, lun: 0 });
  const v = await s.call('GET', `/v1/volumes/${name}`);
  const writes = all ? [`write -P ${byte} 0 ${v.size}`] : [`write -P ${byte} 0 1M`, `write -P ${byte} ${v.size - M} 1M`];
  if (!ioOk(await qemuIo(s, 'h', '0/0', ...writes, 'flush'))) throw new Error('write failed');
  await s.call('POST', `/v1/bindings/${b.id}/unmap`);
  await s.call('DELETE', `/v1/bindings/${b.id}`);
}

async function appliance(t: Parameters<typeof startServer>[0], args: string[] = ['--bulk-rate', RATE]): Promise<TestServer> {
  const s = await startServer(t, { demo: false, args });
  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '1G' });
  await s.call('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  return s;
}

/** kill -9 (or SIGTERM), then the same appliance again without the bulk rate, so what follows runs at full speed. */
async function restart(t: Parameters<typeof startServer>[0], s: TestServer, how: 'kill' | 'stop' = 'kill'): Promise<TestServer> {
  if (how === 'kill') await s.kill();
  else await s.stop();
  return startServer(t, { demo: false, dataDir: s.dataDir });
}

const arrayFile = async (s: TestServer): Promise<string> => (await s.call('GET', '/v1/arrays')).arrays[0].path;

/** Resumes a scrub cut at `seen`: asserts it restarted at its checkpoint (not at 0) and finished verified. */
async function checkResumed(t: Test, s: TestServer, id: number, seen: { done: number }): Promise<void> {
  const j = await waitJob(s, id);
  t.equal(j.state, 'succeeded', 'never stuck: the job finished');
  t.equal(j.attempts, 2, 'it ran again after the restart');
  // The checkpoint is saved with the progress, so it is at least what was seen before the cut.
  const floor = Math.floor(Math.min(seen.done, SIZE) / CHUNK) * CHUNK;
  t.ok(j.result.resumedAt > 0, `resumed past the start (at ${j.result.resumedAt})`);
  t.ok(j.result.resumedAt >= floor, `resumed at its checkpoint: ${j.result.resumedAt} >= ${floor} seen before the cut`);
  t.equal(j.result.verified, true, 'and verified the whole volume');
  const ev = await s.call('GET', '/v1/events?since=0');
  const resumed = ev.events.find((e: any) => e.type === 'job.resumed' && e.data.id === id);
  t.ok(resumed, 'the resume is in the event log');
  t.ok(resumed?.data.checkpoint?.written >= seen.done, 'with the checkpoint it resumed from');
  const v = await s.call('GET', '/v1/volumes/big');
  t.equal(v.dirty, false);
  const file = await arrayFile(s);
  t.ok(regionIs(file, v.extents[0].offset, SIZE, 0), 'every byte scrubbed, before and after the checkpoint');
  await s.call('POST', '/v1/volumes/big/break');
  t.equal((await s.call('POST', '/v1/volumes/big/deallocate')).state, 'free');
}

t.test('kill -9 during a scrub: after restart the scrub resumes from its checkpoint and completes', async (t) => {
  const s = await appliance(t);
  await writtenUnbound(s, 'big', '64M', 0x77);
  const r = await s.call('POST', '/v1/volumes/big/scrub', { pattern: 0 });
  const seen = await midJob(s, r.job.id, 8 * M);
  await checkResumed(t, await restart(t, s), r.job.id, seen);
});

t.test('SIGTERM during a scrub: the job stops at a checkpoint, exit 0, and resumes at the next start', async (t) => {
  const s = await appliance(t);
  await writtenUnbound(s, 'big', '64M', 0x66);
  const r = await s.call('POST', '/v1/volumes/big/scrub', { pattern: 0 });
  const seen = await midJob(s, r.job.id, 8 * M);
  const s2 = await restart(t, s, 'stop');
  t.equal(s.exitCode, 0, 'graceful exit with a job cut short');
  await checkResumed(t, s2, r.job.id, seen);
});

t.test('kill -9 during a copy: after restart the copy is failed cleanly and its targets must be scrubbed', async (t) => {
  const s0 = await appliance(t);
  // Written whole: a copy moves only allocated runs, and must still be running when the kill comes.
  await writtenUnbound(s0, 'src', '64M', 0x31, true);
  // A target that never held data (bound unmapped, unbound): clean until the copy writes to it.
  await s0.call('POST', '/v1/volumes', { name: 'dst', size: '64M', farm: 'f' });
  const b = await s0.call('POST', '/v1/bindings', { volume: 'dst', host: 'h', target: 1, lun: 0, map: false });
  await s0.call('DELETE', `/v1/bindings/${b.id}`);
  t.equal((await s0.call('GET', '/v1/volumes/dst')).dirty, false, 'the target starts clean');
  const r = await s0.call('POST', '/v1/volumes/src/copy', { targets: ['dst'] });
  await midJob(s0, r.job.id);
  const s = await restart(t, s0);
  const j = await waitJob(s, r.job.id);
  t.equal(j.state, 'failed', 'a copy cut by a crash is failed, not left running');
  t.match(j.error, /interrupted by a restart/);
  for (const n of ['src', 'dst']) {
    const v = await s.call('GET', `/v1/volumes/${n}`);
    t.equal(v.state, 'unbound', `${n} is back in a defined state`);
    t.equal(v.job, null, `${n} is not held by a job`);
  }
  const dst = await s.call('GET', '/v1/volumes/dst');
  t.equal(dst.dirty, true, 'the partial target must be scrubbed before reuse');
  t.equal((await s.request('POST', '/v1/volumes/dst/break')).status, 200);
  const refused = await s.request('POST', '/v1/volumes/dst/deallocate');
  t.equal(refused.status, 409, 'not freed unscrubbed');
  t.match(refused.body.error.message, /scrub/);
  const sj = await s.call('POST', '/v1/volumes/dst/scrub', {});
  t.equal((await waitJob(s, sj.job.id)).state, 'succeeded');
  t.equal((await s.call('POST', '/v1/volumes/dst/deallocate')).state, 'free');
});

t.test('kill -9 during copy-image: the job fails and the volume takes the failure edge to unconfigured', async (t) => {
  const s0 = await appliance(t);
  fs.mkdirSync(path.join(s0.dataDir, 'images'), { recursive: true });
  fs.writeFileSync(path.join(s0.dataDir, 'images', 'os.img'), Buffer.alloc(64 * M, 0x07));
  await s0.call('POST', '/v1/images', { name: 'os', path: 'images/os.img' });
  await s0.call('POST', '/v1/volumes', { name: 'v', size: '64M', farm: 'f' });
  const r = await s0.call('POST', '/v1/volumes/v/copy-image', { image: 'os' });
  await midJob(s0, r.job.id);
  const s = await restart(t, s0);
  const j = await waitJob(s, r.job.id);
  t.equal(j.state, 'failed');
  t.match(j.error, /interrupted by a restart/);
  const v = await s.call('GET', '/v1/volumes/v');
  t.equal(v.state, 'unconfigured', 'T5: a failed image copy leaves the volume unconfigured');
  t.equal(v.dirty, true, 'holding part of the image: scrub before reuse');
  t.equal(v.image, null, 'the image was never recorded as copied');
});

t.test('kill -9 during a materialise: the snapshot stays a point in time, the job resumes and completes, the source keeps serving', async (t) => {
  // Materialise runs on the main thread through the cache: held to the bulk rate, so the kill lands mid-copy.
  const s0 = await appliance(t, ['--bulk-rate', '4M']);
  await s0.call('POST', '/v1/volumes', { name: 'v', size: '64M', farm: 'f' });
  await s0.call('POST', '/v1/bindings', { volume: 'v', host: 'h', target: 0, lun: 0 });
  t.ok(ioOk(await qemuIo(s0, 'h', '0/0', 'write -P 0xaa 0 64M', 'flush')));
  const snap = await s0.call('POST', '/v1/volumes/v/snap', { snapshot: 'v-snap' });
  t.equal((await waitJob(s0, snap.job.id)).state, 'succeeded', 'the snapshot exists at once');
  const r = await s0.call('POST', '/v1/volumes/v-snap/materialise');
  await midJob(s0, r.job.id);
  t.ok(ioOk(await qemuIo(s0, 'h', '0/0', 'write -P 0xbb 60M 4M', 'flush')), 'the origin is written ahead of the copy');
  const s = await restart(t, s0);
  const j = await waitJob(s, r.job.id);
  t.equal(j.state, 'succeeded', 'the ownership map was persisted: the copy resumed');
  t.equal(j.attempts, 2, 'it ran again after the restart');
  const after = await s.call('GET', '/v1/volumes/v-snap');
  t.equal(after.copyOnWrite, null, 'the snapshot no longer depends on the origin');
  t.equal((await s.call('GET', '/v1/volumes/v')).state, 'mapped', 'the source is still mapped');
  await s.call('POST', '/v1/bindings', { volume: 'v-snap', host: 'h', target: 1, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'read -P 0xaa 0 64M')), 'the snapshot is the point in time');
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'read -P 0xaa 0 60M', 'read -P 0xbb 60M 4M', 'write -P 0xcc 0 1M', 'read -P 0xcc 0 1M')), 'and the source serves reads and writes');
});

t.test('kill -9 during activate: after restart the volume is walked back to free and what the image copy wrote is scrubbed', async (t) => {
  const s0 = await appliance(t);
  fs.mkdirSync(path.join(s0.dataDir, 'images'), { recursive: true });
  fs.writeFileSync(path.join(s0.dataDir, 'images', 'os.img'), Buffer.alloc(64 * M, 0x07));
  await s0.call('POST', '/v1/images', { name: 'os', path: 'images/os.img' });
  let s = s0;
  const r = await s.call('POST', '/v1/hosts/h/activate', { volume: 'act', size: '64M', image: 'os', target: 1, lun: 0 });
  // Activate's progress is by steps (1 of 4 once configured): the image copy is under way.
  // Hang guards (a job stuck running), not timing checks.
  const deadline = Date.now() + 300_000;
  for (;;) {
    const j = await s.call('GET', `/v1/jobs/${r.job.id}`);
    if (j.state === 'running' && j.progress.done >= 1) break;
    if (j.state !== 'queued' && j.state !== 'running') throw new Error(`activate ended ${j.state} before the kill`);
    if (Date.now() > deadline) throw new Error(`activate never got going: ${JSON.stringify(j)}`);
    await new Promise((res) => setTimeout(res, 20));
  }
  const v0 = await s.call('GET', '/v1/volumes/act');
  const file = await arrayFile(s);
  // Wait for image bytes to reach the array, so the scrub has something to undo.
  for (;;) {
    if (readFileRegion(file, v0.extents[0].offset, 4096).every((x) => x === 0x07)) break;
    const j = await s.call('GET', `/v1/jobs/${r.job.id}`);
    if (j.state !== 'running') throw new Error(`activate ended ${j.state} before the image copy wrote anything`);
    if (Date.now() > deadline) throw new Error('the image copy wrote nothing to the array');
    await new Promise((res) => setTimeout(res, 20));
  }
  s = await restart(t, s0);
  const j = await waitJob(s, r.job.id);
  t.equal(j.state, 'failed');
  t.match(j.error, /interrupted by a restart/);
  const v = await s.call('GET', '/v1/volumes/act');
  t.equal(v.state, 'free', 'rolled back all the way to free');
  t.equal(v.dirty, false);
  t.ok(regionIs(file, v0.extents[0].offset, 64 * M, 0), 'what the image copy wrote is scrubbed');
  t.same((await s.call('GET', '/v1/hosts/h/namespace')).units, [], 'no unit left behind');
});

t.test('cancel a running scrub: cancelled, stopped where it was, volume still dirty and usable', async (t) => {
  const s = await appliance(t);
  await writtenUnbound(s, 'v', '64M', 0x11);
  const r = await s.call('POST', '/v1/volumes/v/scrub', {});
  await midJob(s, r.job.id);
  const c = await s.request('POST', `/v1/jobs/${r.job.id}/cancel`);
  t.equal(c.status, 200);
  t.equal(c.body.state, 'cancelled', 'the answer is the cancelled job');
  const j = await waitJob(s, r.job.id);
  t.equal(j.state, 'cancelled', 'a running job is aborted, not left to finish');
  t.ok(j.progress.done < j.progress.total, `stopped part way (${j.progress.done} of ${j.progress.total})`);
  const v = await s.call('GET', '/v1/volumes/v');
  t.equal(v.dirty, true, 'a cancelled scrub cleans nothing');
  t.equal(v.job, null, 'the volume is free for the next operation');
  const again = await s.request('POST', `/v1/jobs/${r.job.id}/cancel`);
  t.equal(again.status, 409, 'a finished job cannot be cancelled');
  t.equal(again.body.error.code, 'ILLEGAL_STATE');
  t.match(again.body.error.message, /already cancelled/);
  const sj = await s.call('POST', '/v1/volumes/v/scrub', {});
  t.equal((await waitJob(s, sj.job.id)).state, 'succeeded', 'a new scrub runs on the volume');
});
