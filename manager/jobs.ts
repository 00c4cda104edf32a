import type { Logger } from 'pino';
import { BlockgateError, notFound } from '../common/errors.js';
import type { Db } from './db.js';
import type { EventLog } from './events.js';
import type { JobView } from './views.js';

type JSONType = JobView['params'];

export const JOB_STATES = ['queued', 'running', 'succeeded', 'failed', 'cancelled'] as const;
export type JobState = (typeof JOB_STATES)[number];

export interface JobRow {
  id: number;
  kind: string;
  state: JobState;
  params: string;
  done: number;
  total: number;
  checkpoint: string | null;
  result: string | null;
  error: string | null;
  attempts: number;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

export interface JobContext<P = Record<string, unknown>> {
  id: number;
  params: P;
  signal: AbortSignal;
  /** The checkpoint saved by an earlier run of this job, when it is resumed after a restart. */
  resumeFrom: unknown;
  progress(done: number, total: number, checkpoint?: unknown): void;
}

export interface JobKind<P = Record<string, unknown>> {
  run(ctx: JobContext<P>): Promise<unknown>;
  /**
   * What a restart does with a job that was running: 'resume' runs it again
   * with its last checkpoint; 'fail' marks it failed and calls onFail.
   */
  onRestart: 'resume' | 'fail';
  /** The failure edges: called (outside any transaction) when the job fails or is cancelled. */
  onFail?(params: P, error: Error, jobId: number): void | Promise<void>;
}

const now = (): string => new Date().toISOString();
/** Progress rows are rewritten at most this often: each commit is an fsync. */
const PROGRESS_EVERY_MS = 200;

/**
 * The seed's request queue (816) with its handler (818) and processor (820):
 * jobs are rows in the control database, run in-process, one at a time per
 * volume, with progress, cancel, and a defined outcome after a restart.
 */
export class JobQueue {
  private readonly kinds = new Map<string, JobKind<any>>();
  private readonly running = new Map<number, { abort: AbortController; volumes: number[]; done: Promise<void> }>();
  private started = false;
  private stopping = false;

  constructor(
    private readonly db: Db,
    private readonly events: EventLog,
    private readonly log: Logger,
  ) {}

  register<P>(kind: string, k: JobKind<P>): void {
    this.kinds.set(kind, k as JobKind<any>);
  }

  /** Queues a job (inside the caller's transaction when there is one). */
  submit(kind: string, params: Record<string, unknown>, volumeIds: number[]): JobRow {
    if (!this.kinds.has(kind)) throw new BlockgateError('INTERNAL', `no job kind '${kind}'`);
    const id = Number(this.db.prepare("INSERT INTO jobs (kind, state, params, created_at) VALUES (?, 'queued', ?, ?)").run(kind, JSON.stringify(params), now()).lastInsertRowid);
    const ins = this.db.prepare('INSERT OR IGNORE INTO job_volumes (job_id, volume_id) VALUES (?, ?)');
    for (const v of volumeIds) ins.run(id, v);
    this.events.emit('job.queued', `job/${id}`, { id, kind });
    this.log.info({ op: 'job.submit', job: id, kind, volumes: volumeIds }, 'job queued');
    queueMicrotask(() => this.pump());
    return this.get(id);
  }

  get(id: number): JobRow {
    const j = this.db.prepare('SELECT * FROM jobs WHERE id = ?').get(id) as JobRow | undefined;
    if (!j) throw notFound('job', id);
    return j;
  }

  /** Newest first; only jobs in `state` and/or of `kind` when given. */
  list(filter: { state?: JobState | undefined; kind?: string | undefined; limit?: number | undefined } = {}): JobRow[] {
    const { state = null, kind = null, limit = 200 } = filter;
    return this.db.prepare('SELECT * FROM jobs WHERE (? IS NULL OR state = ?) AND (? IS NULL OR kind = ?) ORDER BY id DESC LIMIT ?').all(state, state, kind, kind, limit) as JobRow[];
  }

  /** The kinds a job can be (for validating filters). */
  kindNames(): string[] {
    return [...this.kinds.keys()].sort();
  }

  /** A queued or running job on this volume, if any (operations on it wait or are refused). */
  activeOn(volumeId: number): JobRow | undefined {
    return this.db
      .prepare("SELECT j.* FROM jobs j JOIN job_volumes v ON v.job_id = j.id WHERE v.volume_id = ? AND j.state IN ('queued', 'running') ORDER BY j.id LIMIT 1")
      .get(volumeId) as JobRow | undefined;
  }

  /**
   * Restart recovery: jobs found 'running' were cut off by a crash. Each kind
   * says whether it resumes from its checkpoint or fails with its failure
   * edges applied; nothing stays 'running' without a runner.
   */
  async start(): Promise<void> {
    const stale = this.db.prepare("SELECT * FROM jobs WHERE state = 'running'").all() as JobRow[];
    for (const j of stale) {
      const k = this.kinds.get(j.kind);
      if (k && k.onRestart === 'resume') {
        this.db.prepare("UPDATE jobs SET state = 'queued' WHERE id = ?").run(j.id);
        this.events.emit('job.resumed', `job/${j.id}`, { id: j.id, kind: j.kind, checkpoint: j.checkpoint ? JSON.parse(j.checkpoint) : null });
        this.log.warn({ op: 'job.resume', job: j.id, kind: j.kind }, 'job interrupted by restart: resuming from its checkpoint');
      } else {
        await this.finishFailed(j, new BlockgateError('INTERNAL', 'interrupted by a restart of the appliance'), 'failed');
      }
    }
    this.started = true;
    this.pump();
  }

  async cancel(id: number): Promise<JobRow> {
    const j = this.get(id);
    if (j.state === 'queued') {
      await this.finishFailed(j, new BlockgateError('CONFLICT', 'cancelled before it started'), 'cancelled');
    } else if (j.state === 'running') {
      const r = this.running.get(id);
      r?.abort.abort();
      await r?.done;
    } else {
      throw new BlockgateError('ILLEGAL_STATE', `job ${id} is already ${j.state}`, { state: j.state });
    }
    return this.get(id);
  }

  /** Resolves when the job has finished (for in-process callers and tests). */
  async wait(id: number): Promise<JobRow> {
    for (;;) {
      const j = this.get(id);
      if (j.state !== 'queued' && j.state !== 'running') return j;
      const r = this.running.get(id);
      if (r) await r.done;
      else await new Promise((res) => setTimeout(res, 20));
    }
  }

  async stop(): Promise<void> {
    this.stopping = true;
    for (const r of this.running.values()) r.abort.abort();
    await Promise.allSettled([...this.running.values()].map((r) => r.done));
  }

  private volumesOf(id: number): number[] {
    return (this.db.prepare('SELECT volume_id FROM job_volumes WHERE job_id = ?').all(id) as { volume_id: number }[]).map((r) => r.volume_id);
  }

  private pump(): void {
    if (!this.started || this.stopping) return;
    const busy = new Set([...this.running.values()].flatMap((r) => r.volumes));
    const queued = this.db.prepare("SELECT * FROM jobs WHERE state = 'queued' ORDER BY id").all() as JobRow[];
    for (const j of queued) {
      const vols = this.volumesOf(j.id);
      // Per-volume serialisation; a later job on a free volume may overtake.
      if (vols.some((v) => busy.has(v))) continue;
      for (const v of vols) busy.add(v);
      this.launch(j, vols);
    }
  }

  private launch(j: JobRow, volumes: number[]): void {
    const kind = this.kinds.get(j.kind);
    const abort = new AbortController();
    const params = JSON.parse(j.params) as Record<string, unknown>;
    const resumeFrom = j.checkpoint ? (JSON.parse(j.checkpoint) as unknown) : undefined;
    this.db.prepare("UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?), attempts = attempts + 1 WHERE id = ?").run(now(), j.id);
    this.events.emit('job.running', `job/${j.id}`, { id: j.id, kind: j.kind });
    let last = 0;
    const ctx: JobContext = {
      id: j.id,
      params,
      signal: abort.signal,
      resumeFrom,
      progress: (done, total, checkpoint) => {
        const t = Date.now();
        if (t - last < PROGRESS_EVERY_MS && done < total) return;
        last = t;
        if (checkpoint === undefined) this.db.prepare('UPDATE jobs SET done = ?, total = ? WHERE id = ?').run(done, total, j.id);
        else this.db.prepare('UPDATE jobs SET done = ?, total = ?, checkpoint = ? WHERE id = ?').run(done, total, JSON.stringify(checkpoint), j.id);
      },
    };
    const done = (async () => {
      try {
        if (!kind) throw new BlockgateError('INTERNAL', `no job kind '${j.kind}'`);
        const result = await kind.run(ctx);
        this.db
          .prepare("UPDATE jobs SET state = 'succeeded', done = total, result = ?, finished_at = ? WHERE id = ?")
          .run(JSON.stringify(result ?? null), now(), j.id);
        this.events.emit('job.succeeded', `job/${j.id}`, { id: j.id, kind: j.kind });
        this.log.info({ op: 'job', job: j.id, kind: j.kind, state: 'succeeded' }, 'job succeeded');
      } catch (e) {
        if (this.stopping && abort.signal.aborted) {
          // A clean shutdown leaves the job 'running' on purpose: start() applies the restart rule.
          return;
        }
        await this.finishFailed(this.get(j.id), e as Error, abort.signal.aborted ? 'cancelled' : 'failed');
      } finally {
        this.running.delete(j.id);
        queueMicrotask(() => this.pump());
      }
    })();
    this.running.set(j.id, { abort, volumes, done });
  }

  private async finishFailed(j: JobRow, err: Error, state: 'failed' | 'cancelled'): Promise<void> {
    const kind = this.kinds.get(j.kind);
    // A queued job is closed first so the pump cannot start it meanwhile; a
    // running one stays 'running' until its failure edges are applied, so a
    // reader never sees 'failed' on a volume still being rolled back.
    if (j.state === 'queued') this.db.prepare('UPDATE jobs SET state = ?, error = ?, finished_at = ? WHERE id = ?').run(state, err.message, now(), j.id);
    let message = err.message;
    try {
      await kind?.onFail?.(JSON.parse(j.params) as Record<string, unknown>, err, j.id);
    } catch (e) {
      message += `; compensation failed: ${(e as Error).message}`;
      this.log.error({ op: 'job.compensate', job: j.id, err: e }, 'job compensation failed');
    }
    this.db.prepare('UPDATE jobs SET state = ?, error = ?, finished_at = ? WHERE id = ?').run(state, message, now(), j.id);
    this.events.emit(`job.${state}`, `job/${j.id}`, { id: j.id, kind: j.kind, error: message });
    this.log.warn({ op: 'job', job: j.id, kind: j.kind, state, error: message }, `job ${state}`);
  }

  /** Every state with its count (zero included, so a gauge drops back to 0). */
  countByState(): Record<JobState, number> {
    const out: Record<JobState, number> = { queued: 0, running: 0, succeeded: 0, failed: 0, cancelled: 0 };
    for (const r of this.db.prepare('SELECT state, COUNT(*) AS n FROM jobs GROUP BY state').all() as { state: JobState; n: number }[]) out[r.state] = r.n;
    return out;
  }

  describe(j: JobRow): JobView {
    return {
      id: j.id,
      kind: j.kind,
      state: j.state,
      params: JSON.parse(j.params) as JSONType,
      progress: { done: j.done, total: j.total, fraction: j.total > 0 ? j.done / j.total : j.state === 'succeeded' ? 1 : 0 },
      result: j.result ? (JSON.parse(j.result) as JSONType) : null,
      error: j.error,
      attempts: j.attempts,
      createdAt: j.created_at,
      startedAt: j.started_at,
      finishedAt: j.finished_at,
    };
  }
}
