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
  /** Arena carves (smallBuffer) of replies handed to the socket, oldest first from `head`: given back as their writes complete. */
  private carves: Buffer[] = [];
  private head = 0;

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
  };

  /**
   * Counts `carve` (a smallBuffer() a reply lies in) to be given back to its
   * arena by `sent`, which must be the write callback of the one socket write
   * that hands over its last bytes, made next. Writes complete in order, so
   * the n-th `sent` call is the n-th carve's. Not for TLS sockets: their
   * writes may hold the plaintext longer.
   */
  carved(carve: Buffer): void {
    this.carves.push(carve);
  }

  /** The write callback of a carved reply: the socket is done with its bytes (kept on error: the GC's then). */
  readonly sent = (err?: Error | null): void => {
    const c = this.carves;
    if (this.head >= c.length) return;
    const b = c[this.head++]!;
    if (this.head === c.length) {
      c.length = 0;
      this.head = 0;
    }
    if (!err) releaseSmall(b);
  };

  /** The socket is being destroyed with writes perhaps under way: its carves are left to the GC. */
  drop(): void {
    this.carves = [];
    this.head = 0;
  }
}
