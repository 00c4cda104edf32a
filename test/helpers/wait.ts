import type { BuiltPlugins, Test } from '@tapjs/test';

/** A tap subtest, for helpers that assert. */
export type TapTest = Test<BuiltPlugins> & BuiltPlugins;

/** Polls `probe` until it returns a value (not undefined); throws after a generous deadline (never a timing assertion). */
export async function waitFor<T>(label: string, probe: () => Promise<T | undefined>, deadlineMs = 30_000): Promise<T> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${label}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Settles as `p` does, or rejects after a generous deadline: a hang guard for one event (never a timing assertion). */
export async function within<T>(label: string, p: Promise<T>, deadlineMs = 30_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no ${label} within ${deadlineMs} ms`)), deadlineMs);
  });
  try {
    return await Promise.race([p, guard]);
  } finally {
    clearTimeout(timer);
  }
}
