/**
 * Reply batching, the same for every protocol: the replies produced while one
 * socket read is parsed leave in one syscall when the parse ends. A reply
 * that completes later goes out at once when nothing else is in flight (QD1
 * waits for no timer and no later phase of the loop), else it is corked until
 * the end of the loop turn, with the other completions of that turn. Why:
 * docs/bench/findings.md ("Data path measurements"; iSCSI, session 6).
 */
import type { Socket } from 'node:net';
import { releaseSmall } from './buffers.js';

export class ReplyBatch {
  /** The socket replies are corked on, if any (NBD's STARTTLS swaps sockets mid-batch: the raw one must be uncorked). */
  private corked: Socket | null = null;
  /** Arena carves (smallBuffer) sent or about to be: given back once the socket has nothing queued. */
  private carves: Buffer[] = [];

  /** Runs `parse` (one socket read) with replies corked, then sends what it produced. */
  around(sock: Socket, parse: () => void): void {
    if (this.corked) {
      parse();
      return;
    }
    this.corked = sock;
    sock.cork();
    try {
      parse();
    } finally {
      this.flush();
    }
  }

  /** Before a reply written outside a parse: with `others` in flight, it waits for this turn's other completions. */
  hold(sock: Socket, others: boolean): void {
    if (this.corked || !others) return;
    this.corked = sock;
    sock.cork();
    setImmediate(this.flush);
  }

  /** Sends what is corked now. */
  readonly flush = (): void => {
    const sock = this.corked;
    if (!sock) return;
    this.corked = null;
    sock.uncork();
    this.settle(sock);
  };

  /**
   * `carve` (a smallBuffer() a reply lies in) goes back to its arena once the
   * socket is done with it (settle). Not for TLS sockets: their writes may
   * hold the plaintext past what writableLength shows.
   */
  carved(carve: Buffer): void {
    this.carves.push(carve);
  }

  /**
   * After bytes were handed to sock: with nothing queued (not corked, nothing
   * buffered, no write under way; Node counts a write until the kernel has
   * all of it), every reply sent so far is in the kernel and its carve can go
   * back. Otherwise they wait for a later call (the next send, flush or drain).
   */
  settle(sock: Socket): void {
    if (this.carves.length === 0 || sock.writableLength !== 0) return;
    const c = this.carves;
    for (let i = 0; i < c.length; i++) releaseSmall(c[i]!);
    c.length = 0;
  }

  /** The socket is being destroyed with writes perhaps under way: its carves are left to the GC. */
  drop(): void {
    this.carves = [];
  }
}
