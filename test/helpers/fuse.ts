import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { run } from './tools.js';

/**
 * FUSE daemons for tests that really mount a disk (nbdfuse, fuse2fs) and the
 * waits around them. Every daemon started here is in `children`, so a test's
 * teardown can end them by their own handles.
 */
export const children = new Set<ChildProcess>();

export const mounted = (p: string): boolean => fs.readFileSync('/proc/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === p);

export async function unmount(p: string): Promise<void> {
  if (!mounted(p)) return;
  const fm = ['/usr/bin/fusermount3', '/bin/fusermount3', '/usr/bin/fusermount', '/bin/fusermount'].find((f) => fs.existsSync(f));
  const r = fm ? await run(fm, ['-u', p], { timeoutMs: 30_000 }) : await run('umount', [p], { timeoutMs: 30_000 });
  if (r.code !== 0 && mounted(p)) await run('umount', ['-l', p], { timeoutMs: 30_000 });
}

/** Polls an observable condition (a mount appearing, a socket file), with a hang guard. */
export async function until(what: string, cond: () => boolean, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Starts a long-running daemon in the foreground; resolves its exit. */
export function daemon(cmd: string, args: string[]): { exited: Promise<number | null>; child: ChildProcess } {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  let err = '';
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) =>
    child.on('exit', (code) => {
      children.delete(child);
      if (code) process.stderr.write(`${cmd}: ${err}\n`);
      resolve(code);
    }),
  );
  return { exited, child };
}

export async function bounded<T>(p: Promise<T>, what: string, ms = 30_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const to = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)));
  try {
    return await Promise.race([p, to]);
  } finally {
    clearTimeout(timer);
  }
}

/** Ends every daemon still running (teardown), each by its own handle. */
export function killChildren(): void {
  for (const c of children) c.kill('SIGKILL');
}
