import path from 'node:path';
import { TOKEN, type TestServer } from './server.js';
import { ROOT, run, type RunResult } from './tools.js';

const BIN = path.join(ROOT, 'dist/bin/blockgate.js');

export interface CliResult extends RunResult {
  /** stdout parsed as JSON when it is JSON, else undefined. */
  json: any;
}

/**
 * Runs `blockgate ARGS…` as an admin would, against a test server: the API
 * address and token come from the environment unless `env` overrides them.
 */
export async function cli(s: TestServer | null, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const base: NodeJS.ProcessEnv = { ...process.env, BLOCKGATE_API: s?.api ?? '', BLOCKGATE_API_TOKEN: TOKEN, BLOCKGATE_DATA_DIR: s?.dataDir ?? '' };
  const r = await run(process.execPath, [BIN, ...args], { env: { ...base, ...env }, timeoutMs: 120_000 });
  let json: unknown;
  try {
    json = r.stdout.trim() ? JSON.parse(r.stdout) : undefined;
  } catch {
    json = undefined;
  }
  return { ...r, json };
}

/** Like cli(), but fails with the command's output unless it exits 0. */
export async function cliOk(s: TestServer | null, args: string[], env: NodeJS.ProcessEnv = {}): Promise<CliResult> {
  const r = await cli(s, args, env);
  if (r.code !== 0) throw new Error(`blockgate ${args.join(' ')} exited ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}
