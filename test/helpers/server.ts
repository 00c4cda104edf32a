import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { ROOT } from './tools.js';

export const TOKEN = 'test-token-0123456789';
const BIN = path.join(ROOT, 'dist/bin/blockgate.js');

export interface ServerOptions {
  dataDir?: string;
  demo?: boolean;
  args?: string[];
  env?: NodeJS.ProcessEnv;
}

/** A real `blockgate serve` on free ports, stopped by its PID. */
export class TestServer {
  readonly dataDir: string;
  pid = 0;
  api = '';
  nbd = '';
  /** iSCSI portal "host:port" from run.json. */
  iscsi = '';
  private child: ChildProcess | null = null;
  private readonly opts: ServerOptions;
  log = '';

  constructor(opts: ServerOptions = {}) {
    this.opts = opts;
    this.dataDir = opts.dataDir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-test-'));
  }

  socket(host = 'demo'): string {
    return path.join(this.dataDir, 'sockets', `${host}.sock`);
  }

  /** libnbd URI of a unit on a host's own unix socket. */
  unixUri(host = 'demo', unit = '0/0'): string {
    return `nbd+unix:///${unit}?socket=${this.socket(host)}`;
  }

  tcpUri(unit = ''): string {
    return `nbd://${this.nbd}/${unit}`;
  }

  async start(): Promise<this> {
    const runFile = path.join(this.dataDir, 'run.json');
    fs.rmSync(runFile, { force: true });
    const args = [BIN, 'serve', '--data-dir', this.dataDir, '--api', '127.0.0.1:0', '--nbd', '127.0.0.1:0', '--iscsi', '127.0.0.1:0', '--api-token', TOKEN, '--log-level', 'warn'];
    if (this.opts.demo === false) args.push('--no-demo');
    args.push(...(this.opts.args ?? []));
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...this.opts.env } });
    this.child = child;
    this.pid = child.pid!;
    child.stdout!.on('data', (d: Buffer) => (this.log += d.toString()));
    child.stderr!.on('data', (d: Buffer) => (this.log += d.toString()));
    // A hang guard, not a timing check: a loaded machine may take a while to start a server.
    const deadline = Date.now() + 120_000;
    for (;;) {
      if (child.exitCode !== null || child.signalCode !== null) throw new Error(`blockgate exited early:\n${this.log}`);
      try {
        const info = JSON.parse(fs.readFileSync(runFile, 'utf8')) as { pid: number; api: string; nbd: string; iscsi: string };
        if (info.pid === this.pid) {
          this.api = info.api;
          this.nbd = info.nbd;
          this.iscsi = info.iscsi;
          return this;
        }
      } catch {
        /* not ready yet */
      }
      if (Date.now() > deadline) {
        await this.kill();
        throw new Error(`blockgate did not become ready:\n${this.log}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  private waitExit(ms: number): Promise<boolean> {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), ms);
      c.once('exit', () => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  /** Graceful stop (SIGTERM, then SIGKILL if it hangs). */
  async stop(): Promise<void> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    process.kill(this.pid, 'SIGTERM');
    if (!(await this.waitExit(20_000))) await this.kill();
  }

  /** kill -9: the crash the durability contract is about. */
  async kill(): Promise<void> {
    if (!this.child || this.child.exitCode !== null || this.child.signalCode !== null) return;
    process.kill(this.pid, 'SIGKILL');
    await this.waitExit(10_000);
  }

  get exitCode(): number | null {
    return this.child?.exitCode ?? null;
  }

  async request(method: string, url: string, body?: unknown, token: string | null = TOKEN): Promise<{ status: number; body: any }> {
    const headers: Record<string, string> = {};
    if (token !== null) headers.authorization = `Bearer ${token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(this.api + url, { method, headers, body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body) });
    const text = await res.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : null;
    } catch {
      /* leave as text */
    }
    return { status: res.status, body: parsed };
  }

  /** API call that must succeed (2xx); returns the body. */
  async call(method: string, url: string, body?: unknown): Promise<any> {
    const r = await this.request(method, url, body);
    if (r.status < 200 || r.status >= 300) throw new Error(`${method} ${url} -> ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  }
}

/** Starts a server and registers its stop (by PID) with the test, even on failure. */
export async function startServer(t: { teardown: (fn: () => unknown) => void }, opts: ServerOptions = {}): Promise<TestServer> {
  const s = new TestServer(opts);
  t.teardown(async () => {
    await s.stop();
    if (!opts.dataDir) fs.rmSync(s.dataDir, { recursive: true, force: true });
  });
  return s.start();
}

/**
 * Runs a `blockgate serve` that should refuse to start. Resolves with its exit
 * code and output; if it starts instead (writes run.json with its own pid), it
 * is stopped by its PID and `started` is true. Never touches run.json itself.
 */
export async function serveRefused(dataDir: string, args: string[] = [], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; output: string; started: boolean }> {
  const argv = [BIN, 'serve', '--data-dir', dataDir, '--api', '127.0.0.1:0', '--nbd', '127.0.0.1:0', '--api-token', TOKEN, '--log-level', 'warn', ...args];
  const child = spawn(process.execPath, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } });
  let output = '';
  child.stdout!.on('data', (d: Buffer) => (output += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (output += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const runFile = path.join(dataDir, 'run.json');
  // Generous: a refusal is quick, but a loaded machine can take long to start node at all.
  const deadline = Date.now() + 120_000;
  const signal = (sig: NodeJS.Signals): void => {
    try {
      process.kill(child.pid!, sig);
    } catch {
      /* already gone */
    }
  };
  for (;;) {
    const done = await Promise.race([exited.then((c) => ({ c })), new Promise<null>((r) => setTimeout(() => r(null), 50))]);
    if (done) return { code: done.c, output, started: false };
    let pid = 0;
    try {
      pid = (JSON.parse(fs.readFileSync(runFile, 'utf8')) as { pid: number }).pid;
    } catch {
      /* not there, or being replaced */
    }
    if (pid === child.pid || Date.now() > deadline) {
      signal(pid === child.pid ? 'SIGTERM' : 'SIGKILL');
      const code = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 20_000))]);
      if (code === null && child.exitCode === null) signal('SIGKILL');
      return { code, output, started: pid === child.pid };
    }
  }
}
