import fs from 'node:fs';
import path from 'node:path';
import type { ProcessRegistry } from './procs.js';
import { parseFioJson, statsFromFio, type RunStats } from './stats.js';
import type { Workload } from './workloads.js';

export interface FioTiming {
  runtimeS: number;
  rampS: number;
}

/** Runs one job file with its ${VARS} from the environment; output goes to a file, not stdout, to keep it pure JSON. */
async function runJob(reg: ProcessRegistry, jobFile: string, vars: Record<string, string>, outFile: string, limitS: number): Promise<string> {
  const env = { ...process.env, ...vars };
  const proc = reg.start(`fio ${path.basename(jobFile)}`, 'fio', ['--output-format=json+', `--output=${outFile}`, jobFile], { env });
  // A bound on every run, so a wedged server fails the benchmark instead of hanging it.
  const timer = setTimeout(() => void reg.stop(proc, 2_000), limitS * 1000);
  const { code, signal } = await proc.exited.finally(() => clearTimeout(timer));
  if (code !== 0) throw new Error(`fio ${path.basename(jobFile)} on ${vars.URI} failed (${code ?? signal}):\n${proc.output()}`);
  return fs.promises.readFile(outFile, 'utf8');
}

export async function runWorkload(
  reg: ProcessRegistry,
  jobsDir: string,
  outDir: string,
  uri: string,
  w: Workload,
  t: FioTiming,
  tag: string,
): Promise<RunStats> {
  const vars = {
    URI: uri,
    RW: w.rw,
    QD: String(w.qd),
    JOBS: String(w.jobs),
    RUNTIME: `${Math.round(t.runtimeS * 1000)}ms`,
    RAMP: `${Math.round(t.rampS * 1000)}ms`,
  };
  const out = path.join(outDir, `${tag}.json`);
  const text = await runJob(reg, path.join(jobsDir, w.job), vars, out, t.runtimeS + t.rampS + 60);
  return statsFromFio(parseFioJson(text));
}

/** Writes every byte of the export once (see jobs/fill.fio). */
export async function fill(reg: ProcessRegistry, jobsDir: string, outDir: string, uri: string, tag: string): Promise<void> {
  await runJob(reg, path.join(jobsDir, 'fill.fio'), { URI: uri }, path.join(outDir, `fill-${tag}.json`), 300);
}
