import { Command, Option } from 'commander';
import { ApiClient, CliError, EXIT, resolveConnection, type GlobalOptions } from './client.js';
import { details, humanSize, print, printJson } from './output.js';

export interface CliOptions extends GlobalOptions {
  json?: boolean;
  wait?: boolean;
}

/**
 * The connection options every admin verb takes. They are accepted after the
 * verb (`blockgate volume list --json`) as well as before the noun
 * (`blockgate --json volume list`), because scripts are written both ways.
 */
export function withGlobals(cmd: Command): Command {
  return cmd
    .addOption(new Option('--api <url>', 'control API URL (default: $BLOCKGATE_API, else DATA/run.json, else http://127.0.0.1:8480)'))
    .addOption(new Option('--token <token>', 'bearer token (default: $BLOCKGATE_API_TOKEN, else DATA/api-token)'))
    .addOption(new Option('--data-dir <dir>', 'data directory of a local appliance (default: $BLOCKGATE_DATA_DIR, else ./var)'))
    .addOption(new Option('--json', 'print JSON instead of tables'));
}

/** A verb under a noun, with the global options attached. */
export function verb(noun: Command, nameAndArgs: string, description: string): Command {
  return withGlobals(noun.command(nameAndArgs).description(description));
}

export function opts(cmd: Command): CliOptions {
  return cmd.optsWithGlobals() as CliOptions;
}

export function client(cmd: Command): ApiClient {
  return new ApiClient(resolveConnection(opts(cmd)));
}

/** `--limit` and `--after` on a list verb: one page of it (the server checks the values). */
export function pageOptions(cmd: Command): Command {
  return cmd.option('--limit <n>', 'at most N rows (1..1000); all when left out').option('--after <key>', 'start after this name (an id for bindings): the key the previous page printed');
}

/** The list URL with its filters and page; what is left undefined is left out. */
export function listUrl(base: string, query: Record<string, string | undefined>): string {
  const q = new URLSearchParams(Object.entries(query).filter((e): e is [string, string] => e[1] !== undefined));
  return q.size === 0 ? base : `${base}?${q.toString()}`;
}

/** Says on stderr (stdout stays the table or JSON) how to ask for the next page, when there is one. */
export function notePage(api: ApiClient, limit: string | undefined): void {
  if (api.nextAfter !== null) process.stderr.write(`more: --limit ${limit ?? ''} --after ${api.nextAfter}\n`);
}

/** Prints `data` as JSON with --json, else what `human` renders. */
export function out(cmd: Command, data: unknown, human: () => string): void {
  if (opts(cmd).json) printJson(data);
  else print(human());
}

export function usage(message: string): CliError {
  return new CliError(message, EXIT.USAGE, 'BAD_REQUEST');
}

/** "T/L" → target and lun, the way unit addresses are written everywhere else. */
export function parseUnit(s: string): { target: number; lun: number } {
  const m = /^(\d{1,3})\/(\d{1,5})$/.exec(s);
  if (!m || Number(m[1]) > 255 || Number(m[2]) > 16383) throw usage(`unit '${s}' is not TARGET/LUN (e.g. 0/0, 1/0)`);
  return { target: Number(m[1]), lun: Number(m[2]) };
}

export function parseIntArg(what: string) {
  return (s: string): number => {
    if (!/^\d+$/.test(s)) throw usage(`${what} '${s}' is not a non-negative integer`);
    return Number(s);
  };
}

export const list = (s: string): string[] => s.split(',').map((x) => x.trim()).filter(Boolean);

// ---- jobs ------------------------------------------------------------------

interface Job {
  id: number;
  kind: string;
  state: string;
  progress: { done: number; total: number; fraction: number };
  result: unknown;
  error: string | null;
}

const POLL_MS = 250;
const MiB = 1024 * 1024;

function clock(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60)).padStart(2, '0');
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
}

/**
 * Renders a job's progress on stderr: a bar repainted in place on a terminal,
 * a line per tenth otherwise (so logs of scripted runs stay readable).
 * Rate and ETA come from the progress the job reports, smoothed over the run.
 */
class ProgressBar {
  private readonly tty = process.stderr.isTTY === true;
  private readonly start = Date.now();
  private lastTenth = -1;
  private painted = false;

  constructor(private readonly label: string) {}

  update(j: Job): void {
    const { done, total } = j.progress;
    const frac = total > 0 ? Math.min(1, done / total) : j.state === 'succeeded' ? 1 : 0;
    const elapsed = (Date.now() - this.start) / 1000;
    const rate = elapsed > 0 ? done / elapsed : 0;
    const eta = rate > 0 ? (total - done) / rate : Infinity;
    const bytes = total >= MiB;
    const pct = `${(frac * 100).toFixed(0).padStart(3)}%`;
    const tail = bytes ? `  ${(rate / MiB).toFixed(1)} MiB/s  ${humanSize(done)}/${humanSize(total)}  ETA ${clock(eta)}` : `  ${j.state}`;
    if (this.tty) {
      const width = 30;
      const fill = Math.round(frac * width);
      process.stderr.write(`\r${this.label} [${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${pct}${tail}\x1b[K`);
      this.painted = true;
    } else {
      const tenth = Math.floor(frac * 10);
      if (tenth !== this.lastTenth) {
        this.lastTenth = tenth;
        process.stderr.write(`${this.label} ${pct}${tail}\n`);
      }
    }
  }

  finish(): void {
    if (this.painted) process.stderr.write('\n');
  }
}

/** Polls a job until it ends; calls `onUpdate` with every state seen. */
export async function waitJob(api: ApiClient, id: number, onUpdate?: (j: Job) => void): Promise<Job> {
  for (;;) {
    const j = await api.call<Job>('GET', `/v1/jobs/${id}`);
    onUpdate?.(j);
    if (j.state !== 'queued' && j.state !== 'running') return j;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
}

/**
 * What every long operation does with its 202 answer: with --no-wait, print
 * the job and return; otherwise follow it (a progress bar unless --json) and
 * exit JOB_FAILED if it did not succeed.
 */
export async function followJob(cmd: Command, accepted: { job: Job; [k: string]: unknown }): Promise<Job> {
  const o = opts(cmd);
  const api = client(cmd);
  if (o.wait === false) {
    out(cmd, accepted, () => `job ${accepted.job.id} (${accepted.job.kind}) ${accepted.job.state}; follow it with: blockgate job wait ${accepted.job.id}\n`);
    return accepted.job;
  }
  const bar = o.json ? null : new ProgressBar(`job ${accepted.job.id} ${accepted.job.kind}`);
  let final: Job;
  try {
    final = await waitJob(api, accepted.job.id, (j) => bar?.update(j));
  } finally {
    bar?.finish();
  }
  if (o.json) printJson(final);
  else print(`job ${final.id} (${final.kind}) ${final.state}${final.result ? `: ${summarise(final.result)}` : ''}\n`);
  if (final.state !== 'succeeded') throw new CliError(`job ${final.id} (${final.kind}) ${final.state}: ${final.error ?? 'no reason given'}`, EXIT.JOB_FAILED);
  return final;
}

function summarise(result: unknown): string {
  if (typeof result !== 'object' || result === null) return String(result);
  return Object.entries(result)
    .filter(([, v]) => v !== undefined && v !== null && typeof v !== 'object')
    .map(([k, v]) => `${k}=${k === 'bytes' && typeof v === 'number' ? humanSize(v) : String(v)}`)
    .join(' ');
}

export function jobOptions(cmd: Command): Command {
  return cmd.option('--no-wait', 'print the job and return at once instead of following it');
}

export { details, humanSize };
