import type { BlockStore, VolumeHandle } from '../../cache/index.js';

export interface HeldResult<T> {
  value: T;
  /** Milliseconds from the hold to the release: how long hosts' I/O to the group waited. */
  pauseMs: number;
}

/**
 * A consistency group: new I/O to every volume of the group is held at one
 * instant (the holds are all taken before anything is awaited), what is in
 * flight drains, each volume's cached writes reach its arrays and are synced,
 * then `fn` runs with nothing moving, and the group is let go. Protocol
 * switch, migration's cutover and VM-consistent backups use it.
 *
 * `fn` should only change what hosts see (namespaces, fences, snapshots) and
 * return: anything that waits on requests the hold is keeping back (a session
 * that must finish its commands) must be awaited after this resolves.
 */
export async function holdGroup<T>(store: BlockStore, volumes: readonly VolumeHandle[], fn: () => T | Promise<T>): Promise<HeldResult<T>> {
  const unique = [...new Map(volumes.map((v) => [v.id, v])).values()];
  const t0 = performance.now();
  const holding = unique.map((v) => store.quiesce(v.id));
  const releases: (() => void)[] = [];
  let value: T;
  try {
    for (const h of holding) releases.push(await h);
    await Promise.all(unique.map((v) => store.flush(v)));
    value = await fn();
  } finally {
    // Every quiesce took its hold synchronously; wait for the ones still draining so none is left held.
    for (const r of await Promise.allSettled(holding)) if (r.status === 'fulfilled' && !releases.includes(r.value)) releases.push(r.value);
    for (const r of releases) r();
  }
  return { value, pauseMs: performance.now() - t0 };
}
