import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { pino } from 'pino';
import t from 'tap';
import { openDb, type Db } from '../../manager/db.js';
import { EventLog } from '../../manager/events.js';
import { JobQueue, type JobContext, type JobKind } from '../../manager/jobs.js';

// The job queue on a real control database: outcomes and their rows and
// events, per-volume serialisation, cancel of queued and running jobs, the
// failure edges, and what a restart does with a job left running. Issue 17,
// Stryker on manager/jobs.ts.

type T = { teardown: (fn: () => unknown) => void };

function dbIn(t: T): { db: Db; file: string } {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-jobs-'));
  const file = path.join(dir, 'control.db');
  const db = openDb(file);
  t.teardown(() => {
    db.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { db, file };
}

const log = pino({ level: 'silent' });

/** A job kind the test drives: each run waits until the test releases it (or it is aborted). */
function gated(onRestart: 'resume' | 'fail' = 'resume'): JobKind & {
  started: JobContext[];
  release: (id: number, value?: unknown, err?: Error) => void;
  failed: [Record<string, unknown>, string, number][];
  failEdge?: Error;
} {
  const gates = new Map<number, { ok: (v: unknown) => void; no: (e: Error) => void }>();
  const k = {
    onRestart,
    started: [] as JobContext[],
    failed: [] as [Record<string, unknown>, string, number][],
    failEdge: undefined as Error | undefined,
    run(ctx: JobContext): Promise<unknown> {
      k.started.push(ctx);
      return new Promise((ok, no) => {
        gates.set(ctx.id, { ok, no });
        ctx.signal.addEventListener('abort', () => no(new Error('aborted')));
      });
    },
    onFail(params: Record<string, unknown>, error: Error, jobId: number): void {
      k.failed.push([params, error.message, jobId]);
      if (k.failEdge) throw k.failEdge;
    },
    release(id: number, value?: unknown, err?: Error): void {
      const g = gates.get(id)!;
      if (err) g.no(err);
      else g.ok(value);
    },
  };
  return k;
}

const events = (db: Db): string[] => (db.prepare('SELECT type, subject FROM events ORDER BY id').all() as { type: string; subject: string }[]).map((e) => `${e.type} ${e.subject}`);
const tick = (): Promise<void> => new Promise((r) => setImmediate(r));

/** A started queue on a fresh database with one gated kind, 'scrub'. */
async function started(t: T): Promise<{ db: Db; q: JobQueue; k: ReturnType<typeof gated> }> {
  const { db } = dbIn(t);
  const q = new JobQueue(db, new EventLog(db), log);
  const k = gated();
  q.register('scrub', k);
  await q.start();
  return { db, q, k };
}

t.test('a job runs once started: rows, result, events, progress', async (t) => {
  const { db } = dbIn(t);
  const q = new JobQueue(db, new EventLog(db), log);
  const k = gated();
  q.register('scrub', k);
  t.throws(() => q.submit('nope', {}, [1]), { code: 'INTERNAL', message: "no job kind 'nope'" });
  const j = q.submit('scrub', { volume: 'v', n: 1 }, [1]);
  t.match(j, { kind: 'scrub', state: 'queued', params: '{"volume":"v","n":1}', done: 0, total: 0, attempts: 0, started_at: null, finished_at: null });
  await tick();
  t.equal(k.started.length, 0, 'nothing runs before start()');
  t.equal(q.activeOn(1)?.id, j.id, 'a queued job is active on its volume');
  t.equal(q.activeOn(2), undefined, 'and on no other');
  await q.start();
  t.equal(k.started.length, 1);
  const ctx = k.started[0]!;
  t.same([ctx.id, ctx.params, ctx.resumeFrom], [j.id, { volume: 'v', n: 1 }, undefined]);
  t.match(q.get(j.id), { state: 'running', attempts: 1 });
  t.ok(q.get(j.id).started_at);
  ctx.progress(5, 10, { at: 5 });
  t.match(q.get(j.id), { done: 5, total: 10, checkpoint: '{"at":5}' }, 'the first progress is written');
  ctx.progress(10, 10);
  t.match(q.get(j.id), { done: 10, total: 10, checkpoint: '{"at":5}' }, 'the last is always written; no checkpoint keeps the old one');
  k.release(j.id, { digest: 'abc' });
  const done = await q.wait(j.id);
  t.match(done, { state: 'succeeded', result: '{"digest":"abc"}', error: null, done: 10 });
  t.ok(done.finished_at);
  t.equal(q.activeOn(1), undefined, 'nothing active once it ended');
  t.same(events(db), [`job.queued job/${j.id}`, `job.running job/${j.id}`, `job.succeeded job/${j.id}`]);
  const view = q.describe(done);
  t.match(view, { id: j.id, kind: 'scrub', state: 'succeeded', params: { volume: 'v', n: 1 }, progress: { done: 10, total: 10, fraction: 1 }, result: { digest: 'abc' }, error: null, attempts: 1 });
  t.equal(view.createdAt, done.created_at);
  t.equal(view.startedAt, done.started_at);
  t.equal(view.finishedAt, done.finished_at);
  await t.rejects(q.cancel(j.id), { code: 'ILLEGAL_STATE', message: `job ${j.id} is already succeeded`, details: { state: 'succeeded' } });
  t.throws(() => q.get(999), { code: 'NOT_FOUND' });
});

t.test('a job with no result stores null; progress fractions', async (t) => {
  const { db, q, k } = await started(t);
  const j = q.submit('scrub', {}, [1]);
  await tick();
  t.equal(q.describe(q.get(j.id)).progress.fraction, 0, 'running with no total: 0');
  k.started[0]!.progress(1, 4);
  t.equal(q.describe(q.get(j.id)).progress.fraction, 0.25);
  k.release(j.id);
  const done = await q.wait(j.id);
  t.equal(done.result, 'null');
  t.equal(q.describe(done).result, null);
  t.equal(q.describe({ ...done, total: 0, done: 0 }).progress.fraction, 1, 'succeeded with no total: 1');
});

t.test('jobs on one volume run one at a time; a job on a free volume overtakes', async (t) => {
  const { db, q, k } = await started(t);
  const a = q.submit('scrub', {}, [1, 2]);
  const b = q.submit('scrub', {}, [2]);
  const c = q.submit('scrub', {}, [3]);
  await tick();
  t.same(k.started.map((x) => x.id), [a.id, c.id], 'b waits for a (volume 2); c on volume 3 runs');
  t.equal(q.get(b.id).state, 'queued');
  t.equal(q.activeOn(2)?.id, a.id, 'the oldest active job on the volume');
  k.release(c.id);
  await q.wait(c.id);
  await tick();
  t.equal(q.get(b.id).state, 'queued', 'c ending does not free volume 2');
  k.release(a.id);
  await q.wait(a.id);
  await tick();
  t.same(k.started.map((x) => x.id), [a.id, c.id, b.id], 'b runs once a is done');
  k.release(b.id);
  await q.wait(b.id);
  t.same(q.list().map((j) => j.id), [c.id, b.id, a.id], 'newest first');
  t.same(q.list({ limit: 2 }).map((j) => j.id), [c.id, b.id]);
  q.register('copy', gated());
  t.same(q.kindNames(), ['copy', 'scrub']);
  t.same(q.list({ kind: 'copy' }), []);
  t.same(q.list({ state: 'succeeded', kind: 'scrub' }).length, 3);
  t.same(q.list({ state: 'failed' }), []);
  t.same(q.countByState(), { queued: 0, running: 0, succeeded: 3, failed: 0, cancelled: 0 });
});

t.test('cancel: a queued job never runs, a running one is aborted; both apply the failure edges', async (t) => {
  const { db, q, k } = await started(t);
  const a = q.submit('scrub', { v: 'a' }, [1]);
  const b = q.submit('scrub', { v: 'b' }, [1]);
  await tick();
  const cb = await q.cancel(b.id);
  t.match(cb, { state: 'cancelled', error: 'cancelled before it started' });
  t.ok(cb.finished_at);
  t.same(k.failed, [[{ v: 'b' }, 'cancelled before it started', b.id]], 'onFail with its params, error and id');
  const ca = await q.cancel(a.id);
  t.match(ca, { state: 'cancelled', error: 'aborted' }, 'the running job ends cancelled, not failed');
  t.ok(k.started[0]!.signal.aborted, 'its signal fired');
  t.same(k.failed[1], [{ v: 'a' }, 'aborted', a.id]);
  await tick();
  t.same(k.started.map((x) => x.id), [a.id], 'the cancelled queued job never ran');
  t.same(q.countByState(), { queued: 0, running: 0, succeeded: 0, failed: 0, cancelled: 2 });
  t.same(events(db).filter((e) => e.startsWith('job.cancelled')), [`job.cancelled job/${b.id}`, `job.cancelled job/${a.id}`]);
});

t.test('a failing job is failed with its error; a failing failure edge is added to it', async (t) => {
  const { db, q, k } = await started(t);
  const a = q.submit('scrub', { v: 1 }, [1]);
  await tick();
  k.release(a.id, undefined, new Error('disk on fire'));
  t.match(await q.wait(a.id), { state: 'failed', error: 'disk on fire' });
  t.same(k.failed, [[{ v: 1 }, 'disk on fire', a.id]]);
  k.failEdge = new Error('rollback refused');
  const b = q.submit('scrub', { v: 2 }, [1]);
  await tick();
  k.release(b.id, undefined, new Error('disk on fire again'));
  t.match(await q.wait(b.id), { state: 'failed', error: 'disk on fire again; compensation failed: rollback refused' });
  t.match(events(db).at(-1), `job.failed job/${b.id}`);
  const row = db.prepare("SELECT data FROM events WHERE type = 'job.failed' ORDER BY id DESC LIMIT 1").get() as { data: string };
  t.same(JSON.parse(row.data), { id: b.id, kind: 'scrub', error: 'disk on fire again; compensation failed: rollback refused' });
});

t.test('restart: a stopped job stays running; a resumable kind resumes from its checkpoint, another fails', async (t) => {
  const { db } = dbIn(t);
  const q = new JobQueue(db, new EventLog(db), log);
  // The restart's log lines are the admin's record of what it did with each job.
  const lines: Record<string, unknown>[] = [];
  const captured = pino({ level: 'info' }, { write: (l: string) => lines.push(JSON.parse(l) as Record<string, unknown>) });
  const resumable = gated('resume');
  const once = gated('fail');
  q.register('scrub', resumable);
  q.register('activate', once);
  await q.start();
  const a = q.submit('scrub', { v: 'a' }, [1]);
  const b = q.submit('activate', { v: 'b' }, [2]);
  await tick();
  resumable.started[0]!.progress(3, 9, { next: 3 });
  await q.stop();
  t.equal(q.get(a.id).state, 'running', 'a clean stop leaves the job running for the restart rule');
  t.equal(q.get(b.id).state, 'running');
  t.same(resumable.failed, [], 'no failure edge at a clean stop');
  const c = q.submit('scrub', {}, [3]);
  await tick();
  t.equal(q.get(c.id).state, 'queued', 'a stopped queue starts nothing');

  const q2 = new JobQueue(db, new EventLog(db), captured);
  const resumable2 = gated('resume');
  const once2 = gated('fail');
  q2.register('scrub', resumable2);
  q2.register('activate', once2);
  await q2.start();
  t.match(q2.get(b.id), { state: 'failed', error: 'interrupted by a restart of the appliance' });
  t.same(once2.failed, [[{ v: 'b' }, 'interrupted by a restart of the appliance', b.id]]);
  await tick();
  const resumed = resumable2.started.find((x) => x.id === a.id)!;
  t.ok(resumed, 'the scrub runs again');
  t.same(resumed.resumeFrom, { next: 3 }, 'from its checkpoint');
  t.equal(q2.get(a.id).attempts, 2);
  const ev = db.prepare("SELECT subject, data FROM events WHERE type = 'job.resumed'").get() as { subject: string; data: string };
  t.equal(ev.subject, `job/${a.id}`, 'the resumed event names the job');
  t.same(JSON.parse(ev.data), { id: a.id, kind: 'scrub', checkpoint: { next: 3 } });
  t.match(lines.find((l) => l.op === 'job.resume'), { level: 40, job: a.id, kind: 'scrub', msg: 'job interrupted by restart: resuming from its checkpoint' }, 'a warning says the job resumes');
  t.ok(resumable2.started.some((x) => x.id === c.id), 'the job queued meanwhile runs too');
  resumable2.release(a.id, 'ok');
  resumable2.release(c.id, 'ok');
  t.equal((await q2.wait(a.id)).state, 'succeeded');
  t.equal((await q2.wait(c.id)).state, 'succeeded');
  await q2.stop();

  // A kind nobody registered after the restart: failed, not left running.
  db.prepare("UPDATE jobs SET state = 'running' WHERE id = ?").run(a.id);
  const q3 = new JobQueue(db, new EventLog(db), log);
  await q3.start();
  t.match(q3.get(a.id), { state: 'failed', error: 'interrupted by a restart of the appliance' });
});
