import t from 'tap';
import { M, ioOk, qemuIo, readFileRegion, waitJob } from '../helpers/api.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';

requireTools('qemu-io');

const G = 1024 * M;

/** Waits until the job has made some progress but not finished, then kills the server with SIGKILL. */
async function killMidJob(t: { comment: (...a: unknown[]) => void }, s: TestServer, id: number): Promise<boolean> {
  for (;;) {
    const j = await s.call('GET', `/v1/jobs/${id}`);
    if (j.state === 'running' && j.progress.done > 0) {
      await s.kill();
      return true;
    }
    if (j.state !== 'queued' && j.state !== 'running') {
      t.comment(`job ${id} finished (${j.state}) before it could be killed`);
      return false;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A volume brought to unbound with data written on it by a host. */
async function writtenUnbound(s: TestServer, name: string, size: string, byte: number): Promise<void> {
  await s.call('POST', '/v1/volumes', { name, size, farm: 'f' });
  const b = await s.call('POST', '/v1/bindings', { volume: name, host: 'h', target: 0, lun: 0 });
  const v = await s.call('GET', `/v1/volumes/${name}`);
  if (!ioOk(await qemuIo(s, 'h', '0/0', `write -P ${byte} 0 1M`, `write -P ${byte} ${v.size - M} 1M`, 'flush'))) throw new Error('write failed');
  await s.call('POST', `/v1/bindings/${b.id}/unmap`);
  await s.call('DELETE', `/v1/bindings/${b.id}`);
}

t.test('kill -9 during a scrub: after restart the scrub resumes from its checkpoint and completes', async (t) => {
  const s = await startServer(t, { demo: false });
  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '2G' });
  await s.call('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  await writtenUnbound(s, 'big', '1G', 0x77);
  const r = await s.call('POST', '/v1/volumes/big/scrub', { pattern: 0 });
  const killed = await killMidJob(t, s, r.job.id);
  t.comment(killed ? 'killed mid-job' : 'job ended before the kill');
  await s.start();
  const j = await waitJob(s, r.job.id);
  t.equal(j.state, 'succeeded', 'never stuck: the job finished');
  if (killed) {
    t.equal(j.attempts, 2, 'it ran again after the restart');
    t.ok(j.result.resumedAt >= 0, 'resumed at its checkpoint');
    const ev = await s.call('GET', '/v1/events?since=0');
    t.ok(ev.events.some((e: any) => e.type === 'job.resumed' && e.data.id === r.job.id), 'the resume is in the event log');
  }
  t.equal(j.result.verified, true);
  const v = await s.call('GET', '/v1/volumes/big');
  t.equal(v.dirty, false);
  const file = (await s.call('GET', '/v1/arrays')).arrays[0].path;
  for (const off of [0, G / 2, G - M]) t.ok(readFileRegion(file, v.extents[0].offset + off, M).every((x) => x === 0), `scrubbed at ${off}`);
  await s.call('POST', '/v1/volumes/big/break');
  t.equal((await s.call('POST', '/v1/volumes/big/deallocate')).state, 'free');
});

t.test('kill -9 during a copy: after restart the copy is failed cleanly and its targets must be scrubbed', async (t) => {
  const s = await startServer(t, { demo: false });
  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '2G' });
  await s.call('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  await writtenUnbound(s, 'src', '512M', 0x31);
  await writtenUnbound(s, 'dst', '512M', 0x32);
  await s.call('POST', '/v1/volumes/dst/scrub', {}).then((r) => waitJob(s, r.job.id));
  const r = await s.call('POST', '/v1/volumes/src/copy', { targets: ['dst'] });
  const killed = await killMidJob(t, s, r.job.id);
  t.comment(killed ? 'killed mid-job' : 'job ended before the kill');
  await s.start();
  const j = await waitJob(s, r.job.id);
  if (killed) {
    t.equal(j.state, 'failed', 'a copy cut by a crash is failed, not left running');
    t.match(j.error, /restart/);
  } else {
    t.equal(j.state, 'succeeded');
  }
  for (const n of ['src', 'dst']) {
    const v = await s.call('GET', `/v1/volumes/${n}`);
    t.equal(v.state, 'unbound', `${n} is back in a defined state`);
    t.equal(v.job, null, `${n} is not held by a job`);
  }
  const dst = await s.call('GET', '/v1/volumes/dst');
  t.equal(dst.dirty, true, 'the partial target must be scrubbed before reuse');
  const x = await s.request('POST', '/v1/volumes/dst/break');
  t.equal(x.status, 200);
  t.equal((await s.request('POST', '/v1/volumes/dst/deallocate')).status, 409, 'not freed unscrubbed');
  const sj = await s.call('POST', '/v1/volumes/dst/scrub', {});
  t.equal((await waitJob(s, sj.job.id)).state, 'succeeded');
  t.equal((await s.call('POST', '/v1/volumes/dst/deallocate')).state, 'free');
});

t.test('cancel a running scrub: cancelled, volume still dirty and usable', async (t) => {
  const s = await startServer(t, { demo: false });
  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '2G' });
  await s.call('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  await writtenUnbound(s, 'v', '1G', 0x11);
  const r = await s.call('POST', '/v1/volumes/v/scrub', {});
  const c = await s.request('POST', `/v1/jobs/${r.job.id}/cancel`);
  t.equal(c.status, 200);
  const j = await waitJob(s, r.job.id);
  t.ok(j.state === 'cancelled' || j.state === 'succeeded', `ended ${j.state}`);
  if (j.state === 'cancelled') t.equal((await s.call('GET', '/v1/volumes/v')).dirty, true, 'a cancelled scrub cleans nothing');
  t.equal((await s.request('POST', `/v1/jobs/${r.job.id}/cancel`)).status, 409, 'a finished job cannot be cancelled');
});
