import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';

/** A child the runner started; it is only ever signalled by this PID. */
export interface Proc {
  name: string;
  pid: number;
  child: ChildProcess;
  /** Last few KiB of stdout+stderr, for error messages. */
  output(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const TAIL = 8192;

/**
 * Every process the benchmark starts is registered here, so a finally block
 * or a SIGINT can stop exactly those PIDs and nothing else on the machine.
 */
export class ProcessRegistry {
  private readonly live = new Map<number, Proc>();

  start(name: string, cmd: string, args: string[], opts: { env?: NodeJS.ProcessEnv; cwd?: string } = {}): Proc {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: opts.env ?? process.env, cwd: opts.cwd });
    if (child.pid === undefined) throw new Error(`could not start ${cmd}`);
    let out = '';
    const keep = (d: Buffer): void => {
      out += d.toString();
      if (out.length > 2 * TAIL) out = out.slice(-TAIL);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    const pid = child.pid;
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
      child.once('error', () => resolve({ code: null, signal: null }));
      child.once('exit', (code, signal) => {
        this.live.delete(pid);
        resolve({ code, signal });
      });
    });
    const p: Proc = { name, pid, child, output: () => out.slice(-TAIL), exited };
    this.live.set(pid, p);
    return p;
  }

  isRunning(p: Proc): boolean {
    return this.live.has(p.pid) && p.child.exitCode === null && p.child.signalCode === null;
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves with how it ended. */
  async stop(p: Proc, graceMs = 15_000): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.isRunning(p)) signal(p.pid, 'SIGTERM');
    const timer = setTimeout(() => {
      if (this.isRunning(p)) signal(p.pid, 'SIGKILL');
    }, graceMs);
    try {
      return await p.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.live.values()].map((p) => this.stop(p, 5_000)));
  }

  get count(): number {
    return this.live.size;
  }
}

function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    /* already gone */
  }
}

/** A free loopback TCP port (bound then released; the window for a race is tiny on loopback). */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

export type Endpoint = { kind: 'unix'; path: string } | { kind: 'tcp'; host: string; port: number };

function tryConnect(ep: Endpoint): Promise<boolean> {
  return new Promise((resolve) => {
    const s = ep.kind === 'unix' ? net.connect(ep.path) : net.connect(ep.port, ep.host);
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** Waits until the endpoint accepts connections, failing fast if the server died. */
export async function waitListening(ep: Endpoint, proc: Proc, reg: ProcessRegistry, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (!reg.isRunning(proc)) throw new Error(`${proc.name} exited before listening:\n${proc.output()}`);
    if (await tryConnect(ep)) return;
    await sleep(50);
  }
  throw new Error(`${proc.name} did not listen within ${timeoutMs} ms:\n${proc.output()}`);
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
