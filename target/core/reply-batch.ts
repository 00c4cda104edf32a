/**
 * Reply batching, the same for every protocol: the replies produced while one
 * socket read is parsed leave in one syscall when the parse ends. A reply
 * that completes later goes out at once when nothing else is in flight (QD1
 * waits for no timer and no later phase of the loop), else it is corked until
 * the end of the loop turn, with the other completions of that turn. Why:
 * docs/bench/findings.md ("Data path measurements"; iSCSI, session 6).
 */
import type { Socket } from 'node:net';

export class ReplyBatch {
  /** The socket replies are corked on, if any (NBD's STARTTLS swaps sockets mid-batch: the raw one must be uncorked). */
  private corked: Socket | null = null;

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
}
