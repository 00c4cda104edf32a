/**
 * Session lifecycle: the socket, the limits, requests in flight, output
 * batching and flow control, and the ways a session ends (close, graceful
 * shutdown, polite finish).
 */
import type { Socket } from 'node:net';
import type tls from 'node:tls';
import type { BlockStore } from '../../cache/index.js';
import { ReplyBatch, readIntoSharedBuffer, type IdlePoll, type PolledSession, type BudgetHolder, type IoBudget } from '../core/index.js';
import { CMD, MAX_PAYLOAD } from './constants.js';
import type { Namespaces } from '../namespace.js';
import { FrameReader, Mode } from './framing.js';

export interface NbdLimits {
  /** Options a client may send before it must have chosen an export. */
  maxOptions: number;
  /** Largest option payload read into memory; larger ones are skipped and refused. */
  maxOptionLength: number;
  /** Requests being served at once; reading pauses above this. */
  maxInflight: number;
  /** Reply bytes queued on the socket before reading pauses (a client that never reads cannot grow us). */
  maxQueuedReplyBytes: number;
  /** Payload and read-buffer bytes held by requests being served; parsing stops above this. */
  maxInflightBytes: number;
  /** Block-status descriptors in one reply (the spec suggests at most 2^20). */
  maxExtents: number;
  /** A connection that has not chosen an export by then is closed (a peer cannot hold a slot by saying nothing). */
  handshakeTimeoutMs: number;
  /** A session with nothing in flight and no traffic for this long is closed; 0 = never (NBD clients of mounted disks idle for hours). */
  idleTimeoutMs: number;
  /** Connections open at once on one listener, and for one host over all listeners; more are closed at accept. */
  maxConnectionsPerListener: number;
  maxConnectionsPerHost: number;
}

export const DEFAULT_LIMITS: NbdLimits = {
  maxOptions: 256,
  maxOptionLength: 64 * 1024,
  maxInflight: 128,
  maxQueuedReplyBytes: 16 * 1024 * 1024,
  maxInflightBytes: 64 * 1024 * 1024,
  maxExtents: 65536,
  handshakeTimeoutMs: 30_000,
  idleTimeoutMs: 0,
  maxConnectionsPerListener: 256,
  maxConnectionsPerHost: 64,
};

/** TLS as the server offers it after NBD_OPT_STARTTLS. */
export interface NbdTls {
  /** Server-side options for the upgrade (PSK callback, certificate, CA...). */
  options(): tls.TLSSocketOptions;
  /** The host a finished handshake proves (PSK identity or certificate CN), or null to refuse. */
  identify(sock: tls.TLSSocket): string | null;
}

export interface NbdBackend {
  namespaces: Namespaces;
  store: BlockStore;
  tls?: NbdTls | undefined;
  /** The appliance-wide bound on buffered requests and queued replies, shared with the other protocols. */
  budget?: IoBudget | undefined;
  /** Polls a lone QD1 host's socket for its next request before the loop sleeps (shared with the other protocols). */
  poll?: IdlePoll | undefined;
}

/** What the listener that accepted a connection vouches for. */
export interface ListenerTraits {
  /** STARTTLS may replace the host with the one the TLS identity names. */
  tlsSelectsHost: boolean;
  /** The listener alone proves the host (its own unix socket): a host's require-TLS does not apply. */
  authenticated: boolean;
}

/** Why a session ended, for the per-session log line. */
export type CloseReason =
  | 'client-disconnect'
  | 'abort'
  | 'protocol-error'
  | 'socket-error'
  | 'revoked'
  | 'server-shutdown'
  | 'export-unknown'
  | 'tls-refused'
  | 'handshake-timeout'
  | 'idle-timeout'
  | 'connection-limit';

const FINISH_GRACE_MS = 2_000;

/**
 * Output: replies are batched per socket read and per loop turn (ReplyBatch,
 * shared with iSCSI). Flow control: before each new request the
 * limits are checked; above any of them the rest of the chunk is held and the
 * socket paused, so memory held per connection is bounded by the limits plus
 * one request, whatever the client does.
 */
export abstract class NbdSession extends FrameReader implements BudgetHolder, PolledSession {
  protected hostName: string | null;
  protected socket: Socket;
  protected readonly backend: NbdBackend;
  protected readonly limits: NbdLimits;
  protected readonly traits: ListenerTraits;
  protected closeReason: CloseReason | null = null;
  protected inflight = 0;
  protected inflightBytes = 0;
  private paused = false;
  private readonly replies = new ReplyBatch();
  /** A WRITE payload being gathered (held before the request begins). */
  private filling = 0;
  budgetCharged = 0;
  pollWarm = true;
  pollIdleAt = 0;
  /** The last socket read carried at most one request (a host at queue depth 1, as far as it shows). */
  private lone = false;

  constructor(socket: Socket, host: string | null, backend: NbdBackend, limits: NbdLimits, traits: ListenerTraits) {
    super();
    this.socket = socket;
    this.hostName = host;
    this.backend = backend;
    this.limits = limits;
    this.traits = traits;
  }

  /** The session ended (reported once). */
  protected abstract onClosed(reason: CloseReason): void;

  /** Requests are being served (an idle timeout does not cut them off). */
  get busy(): boolean {
    return this.inflight > 0;
  }

  /** The host this session acts for: the listener's, or after STARTTLS the TLS identity's. */
  get host(): string | null {
    return this.hostName;
  }

  protected readonly handlers = {
    data: (chunk: Buffer) => this.onData(chunk),
    error: () => this.close('socket-error'),
    close: () => this.close(this.closeReason ?? 'client-disconnect'),
    drain: () => {
      this.recharge();
      this.maybeResume();
    },
  };

  protected attach(sock: Socket): void {
    sock.on('data', this.handlers.data);
    sock.on('error', this.handlers.error);
    sock.on('close', this.handlers.close);
    sock.on('drain', this.handlers.drain);
  }

  protected detach(sock: Socket): void {
    sock.off('data', this.handlers.data);
    sock.off('error', this.handlers.error);
    sock.off('close', this.handlers.close);
    sock.off('drain', this.handlers.drain);
  }

  /** Ends the session now (unmap, shutdown); in-flight replies are dropped. */
  close(reason: CloseReason): void {
    if (this.mode === Mode.Closed) return;
    this.mode = Mode.Closed;
    this.closeReason = reason;
    this.held = null;
    // Replies already made (to requests before the one that ended the session) still go out.
    this.replies.flush();
    this.socket.destroy();
    this.replies.drop();
    this.backend.budget?.leave(this);
    this.onClosed(reason);
  }

  /**
   * Graceful end for a server shutdown: read no further requests, let the ones
   * in flight finish and send their replies, then close. Resolves once the
   * socket is closed (or destroyed after `graceMs` if the client never lets go).
   */
  shutdown(graceMs = 10_000): Promise<void> {
    if (this.mode === Mode.Closed) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(() => this.close('server-shutdown'), graceMs);
      this.socket.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
      this.closeReason = 'server-shutdown';
      this.disconnecting = true;
      this.stopRequests();
      this.maybeFinishDisconnect();
    });
  }

  /**
   * Reads no further requests (DISC, shutdown). A socket reading into the
   * shared buffer stops its handle on pause(), so it would never see the
   * client's FIN and every session would sit out FINISH_GRACE_MS before it
   * ends: it keeps reading, and the parser drops what comes (disconnecting).
   */
  protected stopRequests(): void {
    if (!this.borrowedChunks) this.socket.pause();
  }

  private onData(chunk: Buffer): void {
    this.batch(chunk, 0, chunk.length);
  }

  /** Parses one socket read with replies corked, and sends what it produced at once. */
  private batch(buf: Buffer, p: number, n: number): void {
    this.replies.around(this.socket, () => this.process(buf, p, n));
  }

  /** From the next read on, the socket's bytes arrive in the shared read buffer (no garbage per read). */
  protected readShared(): void {
    if (readIntoSharedBuffer(this.socket, this.onLent, this.nextRead)) this.borrowedChunks = true;
  }

  private readonly nextRead = (): Buffer | null => this.directRead();

  private readonly onLent = (buf: Buffer, n: number): void => {
    this.backend.poll?.read(this);
    const before = this.headers;
    this.batch(buf, 0, n);
    // A read that carried several requests is a host keeping many in flight: no poll, its next ones batch up by themselves.
    this.lone = this.headers - before <= 1;
    if (this.inflight === 0 && this.lone) this.backend.poll?.idle(this);
  };

  /** The idle poller may read the next request now: nothing in flight or held, reading, in transmission. */
  pollable(): Socket | null {
    const now = this.flowControlled && this.borrowedChunks && this.inflight === 0 && this.held === null && !this.paused && !this.disconnecting && this.mode !== Mode.Closed;
    return now ? this.socket : null;
  }

  protected overLimits(h: Buffer, hp: number): boolean {
    if (
      this.inflight >= this.limits.maxInflight ||
      this.inflightBytes >= this.limits.maxInflightBytes ||
      this.socket.writableLength > this.limits.maxQueuedReplyBytes
    ) {
      return true;
    }
    const budget = this.backend.budget;
    if (budget === undefined) return false;
    const type = h.readUInt16BE(hp + 6);
    const length = h.readUInt32BE(hp + 24);
    // Past the maximum payload the request is refused (or the session closed) without holding anything.
    const n = (type === CMD.READ || type === CMD.WRITE) && length <= MAX_PAYLOAD ? length : 0;
    this.recharge();
    if (budget.admits(this, n)) return false;
    budget.wait(this, n);
    return true;
  }

  /** Tells the budget what this session holds now: payloads in flight or being gathered, and replies not yet sent. */
  protected recharge(): void {
    if (this.mode === Mode.Closed) return;
    this.backend.budget?.charge(this, this.inflightBytes + this.filling + this.socket.writableLength);
  }

  /** A WRITE's payload of n bytes is being gathered (0: done). */
  protected gathering(n: number): void {
    this.filling = n;
    this.recharge();
  }

  budgetResume(): void {
    this.recharge();
    this.maybeResume();
  }

  protected protocolViolation(): void {
    this.close('protocol-error');
  }

  protected begin(bytes: number): void {
    this.inflight++;
    this.inflightBytes += bytes;
    this.recharge();
  }

  protected end(bytes: number): void {
    this.inflight--;
    this.inflightBytes -= bytes;
    this.recharge();
    this.maybeResume();
    this.maybeFinishDisconnect();
    if (this.inflight === 0 && this.lone) this.backend.poll?.idle(this);
  }

  protected maybeFinishDisconnect(): void {
    if (this.disconnecting && this.inflight === 0 && this.mode !== Mode.Closed) {
      this.replies.flush();
      this.finish();
    }
  }

  /**
   * Ends the session politely (FIN after the last reply), but does not wait
   * for the client's FIN forever: a client that keeps sending after DISC or
   * ABORT, into a socket we no longer read, would otherwise hold it open.
   */
  protected finish(): void {
    this.socket.end();
    const sock = this.socket;
    setTimeout(() => {
      if (!sock.destroyed) this.close(this.closeReason ?? 'client-disconnect');
    }, FINISH_GRACE_MS).unref();
  }

  // ---- output batching and flow control ----------------------------------

  /**
   * Queues b in the current cork batch; `written` runs once the socket is
   * done with it. Reading pauses only past maxQueuedReplyBytes, not at the
   * socket's own 16 KiB high-water mark (write() returning false): paused
   * there, a pipelining client's next requests waited in the kernel until
   * every queued reply had gone, however far under the limit (no speed
   * change measured: docs/bench/findings.md, session 11). Past the limit,
   * write() has returned false too, so 'drain' resumes us.
   */
  protected send(b: Buffer, written?: (err?: Error | null) => void): void {
    if (this.mode === Mode.Closed) return;
    this.replies.hold(this.socket, this.inflight > 1);
    this.socket.write(b, written);
    if (this.socket.writableLength > this.limits.maxQueuedReplyBytes) this.pauseInput();
    this.recharge();
  }

  /**
   * send(b), whose last bytes lie in `carve`, a smallBuffer() given back to
   * its arena once the socket has written them (ReplyBatch.sent). Under TLS,
   * or once closed, it is left to the GC.
   */
  protected sendCarved(b: Buffer, carve: Buffer): void {
    if (this.mode === Mode.Closed || 'encrypted' in this.socket) return this.send(b);
    this.replies.carved(carve);
    this.send(b, this.replies.sent);
  }

  /** Sends the replies corked so far now. */
  protected flushReplies(): void {
    this.replies.flush();
  }

  protected pauseInput(): void {
    if (!this.paused) {
      this.paused = true;
      this.socket.pause();
    }
  }

  private maybeResume(): void {
    if (!this.paused || this.disconnecting || this.mode === Mode.Closed) return;
    if (
      this.inflight < this.limits.maxInflight &&
      this.inflightBytes < this.limits.maxInflightBytes &&
      this.socket.writableLength <= this.limits.maxQueuedReplyBytes / 2
    ) {
      this.paused = false;
      this.resumeHeld();
      if (!this.paused && (this.mode as Mode) !== Mode.Closed) this.socket.resume();
    }
  }
}
