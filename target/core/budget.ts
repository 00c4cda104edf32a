/**
 * The appliance-wide bound on memory held for hosts' I/O: request payloads
 * buffered and reply bytes queued on sockets, summed over every session of
 * every protocol. Each session is capped on its own too, but many sessions
 * that each stay under their cap (clients that pipeline huge reads and never
 * read the replies) would otherwise add up to any amount.
 *
 * Sessions report what they hold (`charge`, counter arithmetic only, no
 * allocation) and ask before reading each new request (`admits`). A session
 * refused stops reading its socket (back-pressure: nothing acknowledged is
 * dropped) and is woken when the budget frees up. Fairness:
 * - a session holding nothing may read one small request (`floor`) from a
 *   reserve on top of the limit (a quarter of it), so hosts doing ordinary
 *   I/O are served even while stalled clients hold the whole budget;
 * - a session holding something may take more only up to its share (the
 *   budget split among the sessions holding or waiting), so one session
 *   cannot keep the others out as long as it drains its replies.
 * Memory is bounded by `limit` plus the reserve. A client that never reads
 * its replies keeps what it holds until it goes (or the idle timeout ends it):
 * nothing it was sent can be taken back.
 */

/** What the budget knows of a session. The session owns the fields; the budget updates them. */
export interface BudgetHolder {
  /** Bytes this session holds now, as last reported. */
  budgetCharged: number;
  /** Called when the budget frees up while the session waits. */
  budgetResume(): void;
}

export const DEFAULT_IO_BUDGET = 64 * 1024 * 1024;
/** A request this size or smaller is read by a session holding nothing, from the reserve if need be. */
export const BUDGET_FLOOR = 1024 * 1024;

export class IoBudget {
  readonly limit: number;
  readonly floor: number;
  /** Room above the limit for the floor requests of sessions holding nothing. */
  readonly reserve: number;
  private usedBytes = 0;
  /** Sessions with a non-zero charge. */
  private holders = 0;
  private readonly waiters = new Set<BudgetHolder>();
  private waking = false;
  /** The smallest request a waiter was refused for: waking is pointless until it fits. */
  private minNeed = Infinity;
  /** Times a session was refused (for metrics and tests). */
  refusals = 0;

  constructor(limit = DEFAULT_IO_BUDGET, floor = Math.min(BUDGET_FLOOR, limit)) {
    if (!(limit > 0)) throw new RangeError('the I/O budget must be positive');
    this.limit = limit;
    this.floor = floor;
    this.reserve = Math.floor(limit / 4);
  }

  get used(): number {
    return this.usedBytes;
  }

  get waiting(): number {
    return this.waiters.size;
  }

  /** The session now holds `bytes` in all (payloads being served and replies not yet sent). */
  charge(s: BudgetHolder, bytes: number): void {
    const was = s.budgetCharged;
    if (bytes === was) return;
    s.budgetCharged = bytes;
    this.usedBytes += bytes - was;
    if (was === 0) this.holders++;
    else if (bytes === 0) this.holders--;
    // Waking costs a check per waiter: only once the smallest refused request fits, or a holder is gone (shares grow).
    if (bytes < was && this.waiters.size > 0 && (bytes === 0 || this.usedBytes + this.minNeed <= this.limit + this.reserve)) this.wake();
  }

  /** May the session read a request that will hold `n` more bytes? */
  admits(s: BudgetHolder, want: number): boolean {
    const held = s.budgetCharged;
    // A request larger than the whole budget runs once it has the budget to itself.
    const n = want < this.limit ? want : this.limit;
    if (held === 0 && n <= this.floor && this.usedBytes + n <= this.limit + this.reserve) return true;
    if (this.usedBytes + n > this.limit) return false;
    if (held === 0) return true;
    const sharers = this.holders + this.waiters.size;
    return held + n <= this.limit / sharers;
  }

  /** The session was refused and stopped reading: budgetResume() once there is room. */
  wait(s: BudgetHolder, n: number): void {
    this.refusals++;
    if (n < this.minNeed) this.minNeed = n;
    this.waiters.add(s);
  }

  /** The session is gone: everything it held is free. */
  leave(s: BudgetHolder): void {
    this.waiters.delete(s);
    this.charge(s, 0);
  }

  private wake(): void {
    if (this.waking) return;
    this.waking = true;
    try {
      // A waiter refused again re-adds itself: take the current ones out first.
      const now = [...this.waiters];
      this.waiters.clear();
      this.minNeed = Infinity;
      for (const s of now) s.budgetResume();
    } finally {
      this.waking = false;
    }
  }
}
