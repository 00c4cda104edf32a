import type { Command } from 'commander';
import { CliError, EXIT } from '../client.js';
import { print, printJson, table } from '../output.js';
import { client, details, followJob, humanSize, out, parseIntArg, verb } from '../context.js';

interface Job {
  id: number;
  kind: string;
  state: string;
  params: Record<string, unknown>;
  progress: { done: number; total: number; fraction: number };
  result: unknown;
  error: string | null;
  createdAt: string;
  finishedAt: string | null;
}

const subject = (j: Job): string => String(j.params.volume ?? j.params.source ?? j.params.image ?? j.params.host ?? '');

const jobTable = (js: Job[]): string =>
  table(js, [
    ['ID', (j) => j.id],
    ['KIND', (j) => j.kind],
    ['SUBJECT', subject],
    ['STATE', (j) => j.state],
    ['PROGRESS', (j) => `${(j.progress.fraction * 100).toFixed(0)}%`],
    ['DONE', (j) => (j.progress.total >= 1024 * 1024 ? `${humanSize(j.progress.done)}/${humanSize(j.progress.total)}` : null)],
    ['CREATED', (j) => j.createdAt],
    ['ERROR', (j) => j.error],
  ]);

/** `blockgate job …` and `blockgate event …`: the request queue and the event log. */
export function register(program: Command): void {
  const job = program.command('job').description('jobs: long operations (scrub, copy, image copy, snap, activate) with progress');
  const id = parseIntArg('job id');
  verb(job, 'list', 'list jobs, newest first')
    .option('--state <state>', 'only jobs in this state (queued, running, succeeded, failed, cancelled)')
    .action(async (o: { state?: string }, cmd: Command) => {
      const r = await client(cmd).call<{ jobs: Job[] }>('GET', '/v1/jobs');
      if (o.state) r.jobs = r.jobs.filter((j) => j.state === o.state);
      out(cmd, r, () => jobTable(r.jobs));
    });
  verb(job, 'show <id>', 'one job with progress').action(async (n: string, _o, cmd: Command) => {
    const j = await client(cmd).call<Job>('GET', `/v1/jobs/${id(n)}`);
    out(cmd, j, () => details(j as unknown as Record<string, unknown>));
  });
  verb(job, 'cancel <id>', 'cancel a queued or running job').action(async (n: string, _o, cmd: Command) => {
    const j = await client(cmd).call<Job>('POST', `/v1/jobs/${id(n)}/cancel`);
    out(cmd, j, () => `job ${j.id} (${j.kind}) ${j.state}\n`);
  });
  verb(job, 'wait <id>', 'follow a job with a progress bar; exit 7 if it does not succeed').action(async (n: string, _o, cmd: Command) => {
    const j = await client(cmd).call<Job>('GET', `/v1/jobs/${id(n)}`);
    await followJob(cmd, { job: j });
  });

  const event = program.command('event').description('the event log (job state, namespace, host and VM changes)');
  verb(event, 'list', 'events after an id, oldest first')
    .option('--since <id>', 'after this event id', parseIntArg('since'), 0)
    .option('--limit <n>', 'at most this many', parseIntArg('limit'), 100)
    .action(async (o: { since: number; limit: number }, cmd: Command) => {
      const r = await client(cmd).call<{ events: { id: number; at: string; type: string; subject: string | null; data: unknown }[] }>(
        'GET',
        `/v1/events?since=${o.since}&limit=${Math.max(1, Math.min(1000, o.limit))}`,
      );
      out(cmd, r, () => table(r.events, [['ID', (e) => e.id], ['AT', (e) => e.at], ['TYPE', (e) => e.type], ['SUBJECT', (e) => e.subject], ['DATA', (e) => JSON.stringify(e.data)]]));
    });
  verb(event, 'watch', 'follow events live (server-sent events) until interrupted')
    .option('--since <id>', 'replay events after this id first', parseIntArg('since'))
    .action(async (o: { since?: number }, cmd: Command) => {
      const api = client(cmd);
      const url = `${api.conn.api}/v1/events?stream=true${o.since !== undefined ? `&since=${o.since}` : ''}`;
      const res = await fetch(url, { headers: { accept: 'text/event-stream', ...(api.conn.token ? { authorization: `Bearer ${api.conn.token}` } : {}) } }).catch((e: Error) => {
        throw new CliError(`cannot reach the control API at ${api.conn.api}: ${e.message}`, EXIT.UNREACHABLE);
      });
      if (!res.ok || !res.body) throw new CliError(`event stream refused: HTTP ${res.status}`, res.status === 401 ? EXIT.UNAUTHORIZED : EXIT.ERROR);
      let buf = '';
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += Buffer.from(chunk).toString();
        let i: number;
        while ((i = buf.indexOf('\n\n')) >= 0) {
          const data = buf.slice(0, i).split('\n').find((l) => l.startsWith('data: '));
          buf = buf.slice(i + 2);
          if (!data) continue;
          const e = JSON.parse(data.slice(6)) as { id: number; at: string; type: string; subject: string | null; data: unknown };
          if (cmd.optsWithGlobals().json) printJson(e);
          else print(`${e.id}  ${e.at}  ${e.type}  ${e.subject ?? '-'}  ${JSON.stringify(e.data)}\n`);
        }
      }
    });
}
