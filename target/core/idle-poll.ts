/**
 * A quiet session's socket, polled for a moment before the loop sleeps.
 *
 * A host at queue depth 1 sends its next request a few microseconds after it
 * reads our reply. If the loop has gone to sleep in epoll by then, the
 * request waits for this CPU to be woken — an interrupt and, in a VM, the
 * hypervisor running the vCPU again — and the loop runs its first requests
 * after the wake on a cold CPU. Whenever the scheduler kept the loop on
 * another CPU than the client that cost blockgate about half its QD1 rate
 * (docs/bench/findings.md, sessions 11 and 14). Reading the socket without
 * waiting, for up to `budgetUs` after the reply, keeps the CPU awake for the
 * next request instead: the same trade as the kernel's busy polling.
 *
 * Bounded so that it costs no one else:
 * - it runs in the check phase after the reply has gone, once per reply, and
 *   never longer than the budget, and only after a socket read that carried
 *   at most one request (the sessions say so): a host keeping many requests
 *   in flight sends them in bursts that batch up while the loop sleeps;
 * - only the session that alone has read in the last millisecond polls (with
 *   several active sessions the loop has other work and is not sleeping),
 *   and not while the cache is at its dirty limit: writes then go to the
 *   arrays until write-back completions make room, and a polling loop would
 *   hold those completions up;
 * - a poll that finds nothing marks its session cold; a cold session polls
 *   again only once a request comes within four budgets of its reply, so a
 *   host that pauses between requests costs one empty poll, not one each.
 */
import type { Socket } from 'node:net';
import { readNow } from './socket-reads.js';

/** What the poller keeps of a session; the session owns the object and says when it may be read. */
export interface PolledSession {
  /** The socket to read now, or null: something in flight, paused or closing, or not reading into the shared buffer. */
  pollable(): Socket | null;
  /** Poller state (initialise warm: true, idleAt: 0). */
  pollWarm: boolean;
  pollIdleAt: number;
}

/** Budget when not told otherwise (measured: docs/bench/findings.md, session 14). */
export const DEFAULT_IDLE_POLL_US = 50;

/** Another session read this recently (ms): nobody polls. */
const ALONE_MS = 1;

export class IdlePoll {
  /** Polls that read the session's next request, and polls that ran out (for metrics and tests). */
  found = 0;
  empty = 0;
  private readonly budgetMs: number;
  private lastReader: PolledSession | null = null;
  private lastReadAt = -Infinity;
  /** When a session other than lastReader last read. */
  private otherReadAt = -Infinity;
  private pending: PolledSession | null = null;

  /** `busy`: the loop has completions to wait for that others depend on (the cache at its dirty limit): no poll then. */
  constructor(
    readonly budgetUs = DEFAULT_IDLE_POLL_US,
    private readonly busy: () => boolean = () => false,
  ) {
    this.budgetMs = budgetUs / 1000;
  }

  /** Every socket read of a session, before its bytes are parsed. */
  read(s: PolledSession): void {
    if (this.budgetMs <= 0) return;
    const now = performance.now();
    if (s !== this.lastReader) {
      this.otherReadAt = this.lastReadAt;
      this.lastReader = s;
    }
    this.lastReadAt = now;
    if (!s.pollWarm && s.pollIdleAt > 0 && now - s.pollIdleAt < 4 * this.budgetMs) s.pollWarm = true;
    s.pollIdleAt = 0;
  }

  /** `s` has nothing in flight and its replies are on the socket. */
  idle(s: PolledSession): void {
    if (this.budgetMs <= 0) return;
    const now = performance.now();
    s.pollIdleAt = now;
    if (!s.pollWarm || this.pending !== null || this.lastReader !== s || now - this.otherReadAt < ALONE_MS) return;
    this.pending = s;
    setImmediate(this.poll);
  }

  private readonly poll = (): void => {
    const s = this.pending;
    this.pending = null;
    const socket = s?.pollable();
    if (!s || !socket || this.busy()) return;
    const until = performance.now() + this.budgetMs;
    for (;;) {
      const n = readNow(socket);
      if (n > 0) {
        this.found++;
        return;
      }
      if (n < 0) return;
      if (performance.now() >= until) {
        s.pollWarm = false;
        this.empty++;
        return;
      }
    }
  };
}
