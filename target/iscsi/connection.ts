/**
 * One iSCSI connection and its session (MaxConnections=1, ErrorRecoveryLevel=0):
 * login, then full feature phase — the CmdSN window, Data-Out gathering
 * (immediate, unsolicited, R2T), Data-In and SCSI Response, NOP, Text
 * (SendTargets), Task Management, Logout, Reject and Async Message.
 * Everything below the CDB is here; the CDB goes to the ScsiDevice.
 */
import type { Socket } from 'node:net';
import type { UnitIO } from '../core/contract.js';
import { LARGE_MIN, ReplyBatch, type IdlePoll, type PolledSession, SMALL_MAX, dataBuffer, readIntoSharedBuffer, releaseLarge, releaseSmall, releaseWhenWritten, type BudgetHolder, type IoBudget } from '../core/index.js';
import type { Nexus, ScsiDevice, ScsiResponse, TaskAttribute } from './scsi/contract.js';
import { Login, LOGIN_STATUS, type LoginDirectory, type SessionParams, type TargetParams } from './login.js';
import { decodeLun, targetIqn } from './naming.js';
import { BHS, NO_TAG, OP, PduReader, REJECT, encodeKeys, frame, newBhs, parseKeys, snAdd, snLess, type FramingError, type Pdu } from './pdu.js';

export interface IscsiLimits {
  /** Commands in flight per session; also the CmdSN window the target advertises. */
  maxTasks: number;
  /** Write data held per session while it is gathered and executed. */
  maxBufferedBytes: number;
  /** Reply bytes queued on the socket before reading pauses. */
  maxQueuedBytes: number;
  /** Login must reach full feature phase within this. */
  loginTimeoutMs: number;
  /** An initiator silent this long is pinged (NOP-In); one that does not answer within nopTimeoutMs is dropped. */
  nopIntervalMs: number;
  nopTimeoutMs: number;
  /** After asking a host to log out (Async Message), the connection is dropped if it has not within this. */
  logoutGraceMs: number;
  /** Largest text request (login or Text) gathered across continued PDUs. */
  maxTextBytes: number;
  params: TargetParams;
}

export type CloseReason =
  | 'logout'
  | 'client-disconnect'
  | 'login-failed'
  | 'login-timeout'
  | 'protocol-error'
  | 'digest-error'
  | 'nop-timeout'
  | 'revoked'
  | 'target-reset'
  | 'reinstated'
  | 'server-shutdown'
  | 'socket-error';

/** What a connection needs from its server. */
export interface ConnectionContext {
  directory: LoginDirectory;
  device: ScsiDevice;
  limits: IscsiLimits;
  tpgt: number;
  /** The LUNs of a host's target right now. */
  luns(host: string, target: number): ReadonlyMap<number, UnitIO>;
  /** Target numbers of a host (SendTargets). */
  targets(host: string): number[];
  /** A login is about to finish: assigns the TSIH, or returns a login status refusing it (limits). */
  admit(conn: IscsiConnection): { tsih: number } | { status: number };
  onClose(conn: IscsiConnection, reason: CloseReason): void;
  /** The appliance-wide bound on buffered requests and queued replies, shared with the other protocols. */
  budget?: IoBudget | undefined;
  /** Polls a lone QD1 host's socket for its next command before the loop sleeps, shared with the other protocols. */
  poll?: IdlePoll | undefined;
}

const ATTRS: TaskAttribute[] = ['untagged', 'simple', 'ordered', 'head-of-queue', 'aca', 'simple', 'simple', 'simple'];

/** SAM status codes the transport itself uses. */
const STATUS_GOOD = 0x00;
const STATUS_TASK_SET_FULL = 0x28;

interface R2TState {
  offset: number;
  length: number;
  received: number;
  nextDataSN: number;
}

interface Task {
  itt: number;
  lun: number;
  /** The LUN field as received, echoed in Data-In/R2T. */
  lunField: Buffer;
  cdb: Buffer;
  edtl: number;
  read: boolean;
  write: boolean;
  attr: TaskAttribute;
  cmdSN: number;
  data: Buffer | null;
  /** The pooled buffer (largeBuffer) `data` lives in, given back once the device is done with the task. */
  own: Buffer | null;
  /** Bytes of write data received, from offset 0 (data sequences are in order). */
  filled: number;
  /** Unsolicited data (immediate + Data-Out without R2T) may reach this offset. */
  unsolLimit: number;
  unsolDone: boolean;
  unsolDataSN: number;
  nextR2TOffset: number;
  r2tSN: number;
  r2ts: Map<number, R2TState>;
  executing: boolean;
  aborted: boolean;
  /** Settles when the device has finished with the task (TMF and logout wait on it). */
  settled: Promise<void> | null;
}

interface PendingText {
  ttt: number;
  rest: Buffer;
}

const enum State {
  Login,
  FullFeature,
  /** Logout accepted or shutting down: no new commands, waiting for tasks. */
  Draining,
  Closed,
}

let nextConnId = 1;

export class IscsiConnection implements BudgetHolder, PolledSession {
  readonly id = nextConnId++;
  readonly remote: string;
  private state = State.Login;
  private readonly reader: PduReader;
  private login: Login;
  private loginStarted = false;
  private loginText: Buffer[] = [];
  private loginTextBytes = 0;
  private isid = Buffer.alloc(6);
  tsih = 0;
  private cid = 0;
  /** Session state after login. */
  host: string | null = null;
  target = -1;
  sessionType: 'Normal' | 'Discovery' = 'Normal';
  initiatorName = '';
  targetName = '';
  nexus: Nexus | null = null;
  private params: SessionParams | null = null;
  private hd = false;
  private dd = false;
  private expCmdSN = 0;
  private maxCmdSN = 0;
  private statSN = 1;
  private readonly tasks = new Map<number, Task>();
  /** Non-immediate commands that arrived ahead of ExpCmdSN, by CmdSN. */
  private readonly queued = new Map<number, Pdu>();
  private buffered = 0;
  /** Data bytes of the tasks open (write payloads gathered, read data to come): what the budget is told, with the socket's queue. */
  private taskBytes = 0;
  budgetCharged = 0;
  pollWarm = true;
  pollIdleAt = 0;
  /** PDUs parsed so far, and whether the last socket read carried at most one (the idle poll's QD1 test). */
  private pdus = 0;
  private lone = false;
  private nextTtt = 1;
  private pendingText: PendingText | null = null;
  private textParts: Buffer[] = [];
  private textBytes = 0;
  private lastRx = Date.now();
  private pingTtt: number | null = null;
  private pingDeadline = 0;
  private readonly timer: NodeJS.Timeout;
  private readonly loginDeadline: number;
  private logoutDeadline = 0;
  private closeReason: CloseReason | null = null;
  private readonly closedPromise: Promise<void>;
  private resolveClosed!: () => void;
  private readonly replies = new ReplyBatch();

  constructor(
    private readonly sock: Socket,
    private readonly ctx: ConnectionContext,
  ) {
    this.remote = sock.remoteAddress ? `${sock.remoteAddress}:${sock.remotePort}` : 'unknown';
    this.closedPromise = new Promise((r) => (this.resolveClosed = r));
    this.login = new Login(ctx.directory, ctx.limits.params, ctx.tpgt);
    this.reader = new PduReader(
      ctx.limits.params.maxRecvDataSegmentLength,
      (p) => this.onPdu(p),
      (e, n) => this.onFramingError(e, n),
    );
    this.loginDeadline = Date.now() + ctx.limits.loginTimeoutMs;
    const tick = Math.max(10, Math.min(ctx.limits.nopIntervalMs, ctx.limits.loginTimeoutMs, ctx.limits.nopTimeoutMs) / 2);
    this.timer = setInterval(() => this.onTimer(), tick);
    this.timer.unref();
    const onChunk = (c: Buffer): void => {
      if (this.state === State.Closed) return;
      this.lastRx = Date.now();
      this.ctx.poll?.read(this);
      const before = this.pdus;
      this.replies.around(sock, () => this.reader.feed(c));
      // A read that carried several PDUs is an initiator keeping many commands in flight: no poll.
      this.lone = this.reader.borrowed && this.pdus - before <= 1;
      if (this.tasks.size === 0 && this.lone) this.ctx.poll?.idle(this);
    };
    // Reads into the shared buffer: a fresh 64 KiB chunk per read was ~40,000 new buffers a second under 1 MiB
    // writes, and once they outlived the young generation V8 ran full collections back to back
    // (docs/bench/findings.md, session 12).
    if (readIntoSharedBuffer(sock, (buf, n) => onChunk(buf.subarray(0, n)))) this.reader.borrowed = true;
    else sock.on('data', onChunk);
    sock.on('drain', () => {
      this.recharge();
      if (this.state !== State.Closed) sock.resume();
    });
    sock.on('error', () => this.close('socket-error'));
    sock.on('end', () => this.close('client-disconnect'));
    sock.on('close', () => this.close('client-disconnect'));
  }

  get loggedIn(): boolean {
    return this.state === State.FullFeature || this.state === State.Draining;
  }

  /** Open tasks (tests and revocation). */
  get taskCount(): number {
    return this.tasks.size;
  }

  get isidHex(): string {
    return this.isid.toString('hex');
  }

  closed(): Promise<void> {
    return this.closedPromise;
  }

  // ---- output ---------------------------------------------------------------

  /** `written`: called once the socket has written the whole PDU (not when the connection is closed first). */
  private send(bhs: Buffer, data: Buffer | null = null, written?: (err?: Error | null) => void): void {
    if (this.state === State.Closed) return;
    const parts = frame(bhs, data, this.hd, this.dd);
    for (let i = 0; i < parts.length; i++) this.sock.write(parts[i]!, i === parts.length - 1 ? written : undefined);
    // A peer that does not read cannot make us queue without bound: stop reading until it drains.
    if (this.sock.writableLength > this.ctx.limits.maxQueuedBytes) this.sock.pause();
    this.recharge();
  }

  // ---- the appliance-wide budget ---------------------------------------------

  /**
   * iSCSI has its own back-pressure (TASK SET FULL, which the initiator
   * retries), so a session over the budget is refused a command rather than
   * made to wait; it never waits on the budget and is never woken.
   */
  private budgetAdmits(n: number): boolean {
    const b = this.ctx.budget;
    if (b === undefined) return true;
    this.recharge();
    if (b.admits(this, n)) return true;
    b.refusals++;
    return false;
  }

  private recharge(): void {
    if (this.state !== State.Closed) this.ctx.budget?.charge(this, this.taskBytes + this.sock.writableLength);
  }

  budgetResume(): void {}

  /** Fills StatSN (advancing it when `advance`), ExpCmdSN and MaxCmdSN. */
  private seal(bhs: Buffer, advance: boolean): Buffer {
    bhs.writeUInt32BE(this.statSN, 24);
    if (advance) this.statSN = snAdd(this.statSN, 1);
    this.updateWindow();
    bhs.writeUInt32BE(this.expCmdSN, 28);
    bhs.writeUInt32BE(this.maxCmdSN, 32);
    return bhs;
  }

  /** The window only ever opens (RFC 7143 §4.2.2.1); it narrows as tasks fill the session. */
  private updateWindow(): void {
    const room = this.ctx.limits.maxTasks - this.tasks.size - this.queued.size;
    const max = snAdd(this.expCmdSN, room - 1);
    if (snLess(this.maxCmdSN, max)) this.maxCmdSN = max;
  }

  private reject(p: Pdu, reason: number): void {
    const b = newBhs(OP.REJECT, NO_TAG);
    b[2] = reason;
    this.send(this.seal(b, true), Buffer.from(p.bhs.subarray(0, BHS)));
  }

  private asyncMessage(event: number, p1: number, p2: number, p3: number, sense: Buffer | null, lun = 0): void {
    const b = newBhs(OP.ASYNC, NO_TAG);
    b[9] = lun & 0xff;
    b[8] = lun > 255 ? 0x40 | (lun >> 8) : 0;
    this.seal(b, true);
    b[36] = event;
    b.writeUInt16BE(p1, 38);
    b.writeUInt16BE(p2, 40);
    b.writeUInt16BE(p3, 42);
    let data: Buffer | null = null;
    if (sense) {
      data = Buffer.alloc(2 + sense.length);
      data.writeUInt16BE(sense.length, 0);
      sense.copy(data, 2);
    }
    this.send(b, data);
  }

  // ---- input ----------------------------------------------------------------

  private onFramingError(e: FramingError, _n: number): void {
    this.close(e === 'header-digest' ? 'digest-error' : 'protocol-error');
  }

  private onPdu(p: Pdu): void {
    this.pdus++;
    if (this.state === State.Closed) return;
    if (this.state === State.Login) {
      if (p.opcode !== OP.LOGIN_REQ) return this.close('protocol-error');
      return this.onLogin(p);
    }
    if (p.dataDigestBad) return this.reject(p, REJECT.DATA_DIGEST);
    const op = p.opcode;
    if (op === OP.DATA_OUT) return this.onDataOut(p);
    if (op === OP.NOP_OUT && p.bhs.readUInt32BE(16) === NO_TAG) return this.onPingAnswer(p);
    if (op !== OP.SCSI_CMD && op !== OP.NOP_OUT && op !== OP.TMF_REQ && op !== OP.TEXT_REQ && op !== OP.LOGOUT_REQ) {
      return this.reject(p, op === OP.LOGIN_REQ || op === OP.SNACK ? REJECT.PROTOCOL : REJECT.NOT_SUPPORTED);
    }
    if (p.ahs.length > 0 && op !== OP.SCSI_CMD) return this.reject(p, REJECT.INVALID_FIELD);
    if (p.immediate) return this.dispatch(p);
    const sn = p.bhs.readUInt32BE(24);
    if (sn === this.expCmdSN) {
      this.expCmdSN = snAdd(this.expCmdSN, 1);
      this.dispatch(p);
      this.drainQueue();
    } else if (snLess(this.expCmdSN, sn) && !snLess(this.maxCmdSN, sn) && !this.queued.has(sn)) {
      // Ahead of a gap: keep it (copied: the reader reuses its header buffer) until the gap fills.
      this.queued.set(sn, { ...p, bhs: Buffer.from(p.bhs), ahs: Buffer.from(p.ahs), data: Buffer.from(p.data), transient: false });
    }
    // Outside the window (or a duplicate): silently ignored, as RFC 7143 §4.2.2.1 says.
  }

  private drainQueue(): void {
    for (let p = this.queued.get(this.expCmdSN); p !== undefined && this.state === State.FullFeature; p = this.queued.get(this.expCmdSN)) {
      this.queued.delete(this.expCmdSN);
      this.expCmdSN = snAdd(this.expCmdSN, 1);
      this.dispatch(p);
    }
  }

  private dispatch(p: Pdu): void {
    if (this.state !== State.FullFeature) return this.reject(p, REJECT.WAITING_FOR_LOGOUT);
    switch (p.opcode) {
      case OP.NOP_OUT:
        return this.onNopOut(p);
      case OP.TEXT_REQ:
        return this.onText(p);
      case OP.LOGOUT_REQ:
        return this.onLogout(p);
    }
    if (this.sessionType === 'Discovery') return this.reject(p, REJECT.PROTOCOL);
    if (p.opcode === OP.SCSI_CMD) return this.onCommand(p);
    return this.onTmf(p);
  }

  // ---- login ----------------------------------------------------------------

  private onLogin(p: Pdu): void {
    const b = p.bhs;
    const flags = b[1]!;
    const cont = (flags & 0x40) !== 0;
    if (!this.loginStarted) {
      this.loginStarted = true;
      b.copy(this.isid, 0, 8, 14);
      this.cid = b.readUInt16BE(20);
      // Login requests are immediate: the session's first CmdSN is the login's.
      this.expCmdSN = b.readUInt32BE(24);
      this.maxCmdSN = snAdd(this.expCmdSN, this.ctx.limits.maxTasks - 1);
    } else if (!b.subarray(8, 14).equals(this.isid)) {
      return this.loginReply(b, LOGIN_STATUS.INITIATOR_ERROR, false, 0, 0, null);
    }
    this.loginTextBytes += p.data.length;
    if (this.loginTextBytes > this.ctx.limits.maxTextBytes) return this.loginReply(b, LOGIN_STATUS.INITIATOR_ERROR, false, 0, 0, null);
    this.loginText.push(Buffer.from(p.data));
    const csg = (flags >> 2) & 3;
    if (cont) {
      // More key text follows in the next PDU: acknowledge with an empty response, no transit.
      return this.loginReply(b, LOGIN_STATUS.SUCCESS, false, csg, 0, null);
    }
    const text = Buffer.concat(this.loginText);
    this.loginText = [];
    this.loginTextBytes = 0;
    const { keys, bad } = parseKeys(text);
    const r = this.login.step({
      transit: (flags & 0x80) !== 0,
      cont: false,
      csg,
      nsg: flags & 3,
      versionMax: b[2]!,
      versionMin: b[3]!,
      tsih: b.readUInt16BE(14),
      keys,
      malformed: bad,
    });
    if (r.status !== LOGIN_STATUS.SUCCESS) return this.loginReply(b, r.status, false, csg, 0, null);
    if (r.done) {
      const l = this.login;
      this.initiatorName = l.initiatorName;
      this.sessionType = l.sessionType;
      this.host = l.access!.host;
      this.target = l.target;
      this.targetName = l.targetName;
      this.params = l.params;
      const admitted = this.ctx.admit(this);
      if ('status' in admitted) {
        this.host = null;
        return this.loginReply(b, admitted.status, false, csg, 0, null);
      }
      this.tsih = admitted.tsih;
    }
    this.loginReply(b, LOGIN_STATUS.SUCCESS, r.transit, csg, r.nsg, encodeKeys(r.keys));
    if (r.done) this.enterFullFeature();
  }

  private loginReply(req: Buffer, status: number, transit: boolean, csg: number, nsg: number, data: Buffer | null): void {
    const b = newBhs(OP.LOGIN_RSP, req.readUInt32BE(16));
    b[1] = (transit ? 0x80 : 0) | (csg << 2) | nsg;
    b[2] = 0;
    b[3] = 0;
    req.copy(b, 8, 8, 14);
    b.writeUInt16BE(this.tsih, 14);
    this.seal(b, true);
    b[36] = status >> 8;
    b[37] = status & 0xff;
    this.send(b, data);
    if (status !== LOGIN_STATUS.SUCCESS) {
      this.state = State.Closed;
      this.reader.stop();
      this.sock.end();
      this.finishClose('login-failed');
    }
  }

  private enterFullFeature(): void {
    const p = this.params!;
    this.state = State.FullFeature;
    // Digests start with the first PDU after the final login response, both ways.
    this.hd = this.reader.headerDigest = p.headerDigest;
    this.dd = this.reader.dataDigest = p.dataDigest;
    if (this.sessionType === 'Normal') {
      const tpgtHex = this.ctx.tpgt.toString(16);
      this.nexus = {
        id: `${this.initiatorName},i,0x${this.isidHex},${this.targetName},t,0x${tpgtHex}`,
        initiatorName: this.initiatorName,
        isid: this.isidHex,
        targetName: this.targetName,
        tpgt: this.ctx.tpgt,
        host: this.host!,
      };
      this.ctx.device.nexusAdded(this.nexus);
    }
  }

  // ---- SCSI commands and data -------------------------------------------------

  private onCommand(p: Pdu): void {
    const b = p.bhs;
    const flags = b[1]!;
    const itt = b.readUInt32BE(16);
    const params = this.params!;
    if (itt === NO_TAG || this.tasks.has(itt)) return this.reject(p, REJECT.INVALID_FIELD);
    const edtl = b.readUInt32BE(20);
    const read = (flags & 0x40) !== 0;
    const write = (flags & 0x20) !== 0;
    const final = (flags & 0x80) !== 0;
    const imm = p.data.length;
    if (imm > 0 && (!write || !params.immediateData || imm > edtl || imm > params.firstBurstLength)) return this.reject(p, REJECT.PROTOCOL);
    // Unsolicited Data-Out may follow only when InitialR2T=No and there is room in the first burst.
    if (!final && (!write || params.initialR2T || imm >= Math.min(edtl, params.firstBurstLength))) return this.reject(p, REJECT.PROTOCOL);
    let cdb: Buffer;
    if (p.ahs.length > 0) {
      const ext = extendedCdb(p.ahs);
      if (ext === null) return this.reject(p, REJECT.INVALID_FIELD);
      cdb = Buffer.concat([b.subarray(32, 48), ext]);
    } else {
      cdb = Buffer.from(b.subarray(32, 48));
    }
    const task: Task = {
      itt,
      lun: decodeLun(b),
      lunField: Buffer.from(b.subarray(8, 16)),
      cdb,
      edtl,
      read,
      write,
      attr: ATTRS[flags & 7]!,
      cmdSN: b.readUInt32BE(24),
      data: null,
      own: null,
      filled: 0,
      unsolLimit: 0,
      unsolDone: true,
      unsolDataSN: 0,
      nextR2TOffset: 0,
      r2tSN: 0,
      r2ts: new Map(),
      executing: false,
      aborted: false,
      settled: null,
    };
    const gather = write ? edtl : 0;
    if (this.tasks.size >= this.ctx.limits.maxTasks || this.buffered + gather > this.ctx.limits.maxBufferedBytes || !this.budgetAdmits(edtl)) {
      // Over the session's or the appliance's limits: the initiator retries later (SAM TASK SET FULL), nothing is buffered.
      return this.respond(task, { status: STATUS_TASK_SET_FULL });
    }
    this.tasks.set(itt, task);
    this.taskBytes += edtl;
    this.recharge();
    if (write) {
      this.buffered += gather;
      if (imm === edtl) {
        // All of it came with the command. Kept as it is unless it lies in the shared read buffer, or is small and
        // not 8-byte aligned (the cache copies word-wise only between aligned addresses): copied then.
        if (p.transient || (imm <= SMALL_MAX && (p.data.byteOffset & 7) !== 0)) {
          task.data = dataBuffer(imm);
          p.data.copy(task.data, 0);
          if (imm >= LARGE_MIN) task.own = task.data;
        } else {
          task.data = p.data;
          task.own = p.own ?? null;
        }
      } else {
        // A large burst's buffer comes from the pool (fresh memory costs a fault per page on its first touch), a
        // small one from the arena.
        task.data = dataBuffer(edtl);
        if (edtl >= LARGE_MIN) task.own = task.data;
        p.data.copy(task.data, 0);
        this.copied(p);
      }
      task.filled = imm;
      task.unsolLimit = params.initialR2T ? imm : Math.min(edtl, params.firstBurstLength);
      task.unsolDone = final;
      task.nextR2TOffset = imm;
    }
    this.advance(task);
  }

  /** Sends R2Ts while data is missing, within MaxOutstandingR2T; executes once everything is in. */
  private advance(t: Task): void {
    if (!t.unsolDone || t.aborted) return;
    if (!t.write) return this.execute(t);
    const params = this.params!;
    while (t.r2ts.size < params.maxOutstandingR2T && t.nextR2TOffset < t.edtl) {
      const len = Math.min(params.maxBurstLength, t.edtl - t.nextR2TOffset);
      let ttt = this.nextTtt;
      this.nextTtt = this.nextTtt >= 0x7fffffff ? 1 : this.nextTtt + 1;
      ttt >>>= 0;
      t.r2ts.set(ttt, { offset: t.nextR2TOffset, length: len, received: 0, nextDataSN: 0 });
      const b = newBhs(OP.R2T, t.itt);
      t.lunField.copy(b, 8);
      b.writeUInt32BE(ttt, 20);
      this.seal(b, false);
      b.writeUInt32BE(t.r2tSN++, 36);
      b.writeUInt32BE(t.nextR2TOffset, 40);
      b.writeUInt32BE(len, 44);
      this.send(b);
      t.nextR2TOffset += len;
    }
    if (t.filled === t.edtl && t.r2ts.size === 0) this.execute(t);
  }

  private onDataOut(p: Pdu): void {
    if (this.sessionType === 'Discovery') return this.reject(p, REJECT.PROTOCOL);
    const b = p.bhs;
    const t = this.tasks.get(b.readUInt32BE(16));
    if (!t || !t.write || t.executing) return this.reject(p, REJECT.INVALID_FIELD);
    const ttt = b.readUInt32BE(20);
    const dataSN = b.readUInt32BE(36);
    const offset = b.readUInt32BE(40);
    const final = (b[1]! & 0x80) !== 0;
    const len = p.data.length;
    // DataPDUInOrder and DataSequenceInOrder are Yes: every byte arrives at the next offset.
    if (offset !== t.filled) return this.reject(p, REJECT.INVALID_FIELD);
    if (ttt === NO_TAG) {
      if (t.unsolDone || dataSN !== t.unsolDataSN || offset + len > t.unsolLimit) return this.reject(p, REJECT.INVALID_FIELD);
      p.data.copy(t.data!, offset);
      this.copied(p);
      t.filled += len;
      t.unsolDataSN++;
      if (final) {
        t.unsolDone = true;
        t.nextR2TOffset = t.filled;
      }
    } else {
      const r = t.r2ts.get(ttt);
      if (!r || dataSN !== r.nextDataSN || offset !== r.offset + r.received || r.received + len > r.length) return this.reject(p, REJECT.INVALID_FIELD);
      if (final !== (r.received + len === r.length)) return this.reject(p, REJECT.PROTOCOL);
      p.data.copy(t.data!, offset);
      this.copied(p);
      t.filled += len;
      r.received += len;
      r.nextDataSN++;
      if (final) t.r2ts.delete(ttt);
    }
    this.advance(t);
  }

  /**
   * p's data has been copied where it goes: the buffer the reader gathered it into goes back (the pool's when
   * large, the arena's when small; a view of a socket chunk is nobody's to give back).
   */
  private copied(p: Pdu): void {
    if (p.own) releaseLarge(p.own);
    else if (!p.transient) releaseSmall(p.data);
  }

  private execute(t: Task): void {
    t.executing = true;
    const nexus = this.nexus!;
    let run: ScsiResponse | Promise<ScsiResponse> | null;
    try {
      run = this.ctx.device.execute({
        nexus,
        lun: t.lun,
        cdb: t.cdb,
        expectedLength: t.edtl,
        read: t.read,
        write: t.write,
        data: t.write ? t.data : null,
        taskTag: t.itt,
        attr: t.attr,
      });
    } catch {
      run = null;
    }
    // Completed in memory (or refused at once): answered in this turn, no promise hop.
    if (!(run instanceof Promise)) return this.finishTask(t, run);
    t.settled = run.then(
      (rsp) => this.finishTask(t, rsp),
      () => this.finishTask(t, null),
    );
  }

  private finishTask(t: Task, rsp: ScsiResponse | null): void {
    this.release(t);
    if (t.own) {
      // The device is done with the write data (the store keeps no reference once it settles).
      releaseLarge(t.own);
      t.own = null;
    } else if (t.write && t.data && rsp !== null && rsp.status === STATUS_GOOD) {
      // A small payload carved from the arena goes back to it (releaseSmall). Not after a failure: the first
      // failing part settles the write while others may still be reading the payload.
      releaseSmall(t.data);
    }
    if (t.aborted || this.state === State.Closed) return;
    this.replies.hold(this.sock, this.tasks.size > 0);
    this.respond(t, rsp);
    if (this.state === State.FullFeature) this.drainQueue();
    if (this.tasks.size === 0 && this.lone) this.ctx.poll?.idle(this);
  }

  /** The idle poller may read the next command now: logged in, nothing open or queued, reading. */
  pollable(): Socket | null {
    const now = this.state === State.FullFeature && this.reader.borrowed && this.tasks.size === 0 && this.queued.size === 0 && !this.sock.isPaused();
    return now ? this.sock : null;
  }

  private release(t: Task): void {
    if (this.tasks.get(t.itt) === t) {
      this.tasks.delete(t.itt);
      if (t.write) this.buffered -= t.edtl;
      this.taskBytes -= t.edtl;
      this.recharge();
    }
  }

  /**
   * Data-In split at the initiator's MaxRecvDataSegmentLength, F at each
   * MaxBurstLength sequence end, status folded into the last Data-In when
   * GOOD; otherwise a SCSI Response with sense. `rsp` null: target failure.
   */
  private respond(t: Task, rsp: ScsiResponse | null): void {
    const params = this.params!;
    if (rsp === null) {
      const b = newBhs(OP.SCSI_RSP, t.itt);
      b[2] = 0x01;
      this.send(this.seal(b, true));
      return;
    }
    const data = t.read && rsp.data ? rsp.data : null;
    // Residuals compare what the CDB asked to move with what the initiator expected.
    const spdtl = rsp.transferLength ?? (rsp.data ? rsp.data.length : t.write ? t.edtl : 0);
    let residualFlag = 0;
    let residual = 0;
    if (spdtl > t.edtl) {
      residualFlag = 0x04;
      residual = spdtl - t.edtl;
    } else if (spdtl < t.edtl) {
      residualFlag = 0x02;
      residual = t.edtl - spdtl;
    }
    const sendLen = data ? Math.min(data.length, t.edtl) : 0;
    const collapse = sendLen > 0 && rsp.status === STATUS_GOOD && !rsp.sense;
    this.sock.cork();
    let dataSN = 0;
    for (let off = 0; off < sendLen; ) {
      const seg = Math.min(params.sendDataSegmentLength, sendLen - off, params.maxBurstLength - (off % params.maxBurstLength));
      const last = off + seg === sendLen;
      const b = newBhs(OP.DATA_IN, t.itt);
      const endOfBurst = last || (off + seg) % params.maxBurstLength === 0;
      b[1] = endOfBurst ? 0x80 : 0;
      t.lunField.copy(b, 8);
      b.writeUInt32BE(NO_TAG, 20);
      if (last && collapse) {
        b[1] = 0x80 | 0x01 | residualFlag;
        b[3] = rsp.status;
        this.seal(b, true);
        b.writeUInt32BE(residual, 44);
      } else {
        this.seal(b, false);
        b.writeUInt32BE(0, 24);
      }
      b.writeUInt32BE(dataSN++, 36);
      b.writeUInt32BE(off, 40);
      let written: ((err?: Error | null) => void) | undefined;
      if (last && rsp.recycle) {
        // The buffer goes back once its last segment is written: a large one to the pool, a small one to its arena.
        if (data!.length >= LARGE_MIN) written = releaseWhenWritten(data!);
        else if (this.state !== State.Closed) {
          // Counted only for a write that is made (send() drops PDUs once closed): each `sent` call is one carve's.
          this.replies.carved(data!);
          written = this.replies.sent;
        }
      }
      this.send(b, data!.subarray(off, off + seg), written);
      off += seg;
    }
    if (!collapse) {
      const b = newBhs(OP.SCSI_RSP, t.itt);
      b[1] = 0x80 | residualFlag;
      b[3] = rsp.status;
      this.seal(b, true);
      b.writeUInt32BE(dataSN, 36);
      b.writeUInt32BE(residual, 44);
      let sense: Buffer | null = null;
      if (rsp.sense && rsp.sense.length > 0) {
        sense = Buffer.alloc(2 + rsp.sense.length);
        sense.writeUInt16BE(rsp.sense.length, 0);
        rsp.sense.copy(sense, 2);
      }
      this.send(b, sense);
    }
    this.sock.uncork();
  }

  // ---- task management --------------------------------------------------------

  private onTmf(p: Pdu): void {
    const b = p.bhs;
    const fn = b[1]! & 0x7f;
    const itt = b.readUInt32BE(16);
    const ref = b.readUInt32BE(20);
    const refCmdSN = b.readUInt32BE(32);
    const lun = decodeLun(b);
    const nexus = this.nexus!;
    const reply = (response: number): void => {
      if (this.state === State.Closed) return;
      const r = newBhs(OP.TMF_RSP, itt);
      r[2] = response;
      this.send(this.seal(r, true));
    };
    const lunKnown = lun === 0 || this.ctx.luns(this.host!, this.target).has(lun);
    const onLun = (): Task[] => [...this.tasks.values()].filter((t) => t.lun === lun && t.itt !== itt);
    switch (fn) {
      case 1: {
        // ABORT TASK
        const t = this.tasks.get(ref);
        if (!t || t.lun !== lun) {
          // Never received (ahead of ExpCmdSN): nothing to abort, but it must not run when it arrives.
          for (const [sn, q] of this.queued) if (q.bhs.readUInt32BE(16) === ref) this.queued.delete(sn);
          return reply(snLess(refCmdSN, this.expCmdSN) ? 1 : 0);
        }
        void this.abort([t]).then(() => reply(0));
        return;
      }
      case 2:
      case 4:
        // ABORT TASK SET, CLEAR TASK SET (only this nexus's tasks: other sessions keep theirs).
        if (!lunKnown) return reply(2);
        void this.abort(onLun()).then(() => reply(0));
        return;
      case 5:
        if (!lunKnown) return reply(2);
        void this.abort(onLun()).then(() => {
          this.ctx.device.lunReset(nexus, lun);
          reply(0);
        });
        return;
      case 6:
      case 7:
        void this.abort([...this.tasks.values()].filter((t) => t.itt !== itt)).then(() => {
          this.ctx.device.targetReset(nexus, fn === 7);
          reply(0);
          // A cold reset ends the I_T nexus (RFC 7143 §11.5.1).
          if (fn === 7) this.close('target-reset');
        });
        return;
      case 3:
        return reply(5);
      case 8:
        return reply(4);
      default:
        return reply(255);
    }
  }

  /** Drops tasks: no response is sent for them; resolves once the device is done with each. */
  private async abort(list: Task[]): Promise<void> {
    const waits: Promise<void>[] = [];
    for (const t of list) {
      t.aborted = true;
      if (t.settled) waits.push(t.settled);
      else this.release(t);
    }
    await Promise.all(waits);
  }

  // ---- NOP, Text, Logout ------------------------------------------------------

  private onNopOut(p: Pdu): void {
    const b = p.bhs;
    const ttt = b.readUInt32BE(20);
    if (ttt !== NO_TAG && ttt === this.pingTtt) this.pingTtt = null;
    const r = newBhs(OP.NOP_IN, b.readUInt32BE(16));
    b.copy(r, 8, 8, 16);
    r.writeUInt32BE(NO_TAG, 20);
    this.seal(r, true);
    const echo = p.data.length > 0 ? Buffer.from(p.data.subarray(0, this.params!.sendDataSegmentLength)) : null;
    this.send(r, echo);
  }

  private onPingAnswer(p: Pdu): void {
    // An initiator's answer to our NOP-In ping (ITT 0xffffffff, immediate, no CmdSN).
    if (p.bhs.readUInt32BE(20) === this.pingTtt) this.pingTtt = null;
  }

  private onText(p: Pdu): void {
    const b = p.bhs;
    const itt = b.readUInt32BE(16);
    const ttt = b.readUInt32BE(20);
    const cont = (b[1]! & 0x40) !== 0;
    const limit = this.params!.sendDataSegmentLength;
    if (ttt !== NO_TAG) {
      // The initiator asks for the next part of a long response.
      const pend = this.pendingText;
      if (!pend || pend.ttt !== ttt) return this.reject(p, REJECT.INVALID_FIELD);
      this.pendingText = null;
      return this.textReply(itt, pend.rest, limit);
    }
    this.pendingText = null;
    this.textBytes += p.data.length;
    if (this.textBytes > this.ctx.limits.maxTextBytes) {
      this.textParts = [];
      this.textBytes = 0;
      return this.reject(p, REJECT.OUT_OF_RESOURCES);
    }
    this.textParts.push(Buffer.from(p.data));
    if (cont) {
      const r = newBhs(OP.TEXT_RSP, itt);
      r[1] = 0;
      r.writeUInt32BE(this.allocTtt(), 20);
      return this.send(this.seal(r, true));
    }
    const { keys, bad } = parseKeys(Buffer.concat(this.textParts));
    this.textParts = [];
    this.textBytes = 0;
    if (bad) return this.reject(p, REJECT.PROTOCOL);
    const out: [string, string][] = [];
    for (const [k, v] of keys) {
      if (k === 'SendTargets') out.push(...this.sendTargets(v));
      else out.push([k, 'NotUnderstood']);
    }
    this.textReply(itt, encodeKeys(out), limit);
  }

  private textReply(itt: number, text: Buffer, limit: number): void {
    const r = newBhs(OP.TEXT_RSP, itt);
    if (text.length > limit) {
      const ttt = this.allocTtt();
      this.pendingText = { ttt, rest: text.subarray(limit) };
      r[1] = 0x40;
      r.writeUInt32BE(ttt, 20);
      this.send(this.seal(r, true), text.subarray(0, limit));
      return;
    }
    r.writeUInt32BE(NO_TAG, 20);
    this.send(this.seal(r, true), text.length > 0 ? text : null);
  }

  private allocTtt(): number {
    const t = this.nextTtt;
    this.nextTtt = this.nextTtt >= 0x7fffffff ? 1 : this.nextTtt + 1;
    return t;
  }

  /** Only the host's own targets; in a normal session, only the session's target (RFC 7143 §13.1). */
  private sendTargets(v: string): [string, string][] {
    const host = this.host!;
    const addr = this.portalAddress();
    const names =
      this.sessionType === 'Normal'
        ? v === '' || v === this.targetName || v === 'All'
          ? [this.targetName]
          : []
        : this.ctx.targets(host).map((t) => targetIqn(host, t)).filter((n) => v === 'All' || v === n);
    const out: [string, string][] = [];
    for (const n of names) out.push(['TargetName', n], ['TargetAddress', `${addr},${this.ctx.tpgt}`]);
    return out;
  }

  private portalAddress(): string {
    const a = this.sock.localAddress ?? '127.0.0.1';
    const host = a.includes(':') ? (a.startsWith('::ffff:') ? a.slice(7) : `[${a}]`) : a;
    return `${host}:${this.sock.localPort}`;
  }

  private onLogout(p: Pdu): void {
    const b = p.bhs;
    const reason = b[1]! & 0x7f;
    const itt = b.readUInt32BE(16);
    // With one connection per session, closing the connection closes the session.
    const response = reason === 2 ? 2 : reason === 1 && b.readUInt16BE(20) !== this.cid ? 1 : 0;
    if (response !== 0) {
      const r = newBhs(OP.LOGOUT_RSP, itt);
      r[2] = response;
      return this.send(this.seal(r, true));
    }
    this.state = State.Draining;
    this.queued.clear();
    // Commands already executing are answered first; data not yet gathered is dropped.
    const gathering = [...this.tasks.values()].filter((t) => !t.executing);
    void this.abort(gathering);
    const running = [...this.tasks.values()].filter((t) => t.settled).map((t) => t.settled!);
    void Promise.all(running).then(() => {
      if (this.state === State.Closed) return;
      const r = newBhs(OP.LOGOUT_RSP, itt);
      this.seal(r, true);
      r.writeUInt16BE(0, 40);
      r.writeUInt16BE(0, 42);
      this.send(r);
      this.endGracefully('logout');
    });
  }

  // ---- target-initiated ---------------------------------------------------------

  private onTimer(): void {
    if (this.state === State.Closed) return;
    const now = Date.now();
    if (this.state === State.Login) {
      if (now > this.loginDeadline) this.close('login-timeout');
      return;
    }
    if (this.logoutDeadline && now > this.logoutDeadline) return this.close('revoked');
    if (this.pingTtt !== null) {
      if (now > this.pingDeadline) this.close('nop-timeout');
      return;
    }
    // Busy sessions prove themselves; only an idle one is pinged.
    if (now - this.lastRx >= this.ctx.limits.nopIntervalMs && this.state === State.FullFeature) {
      this.pingTtt = this.allocTtt();
      this.pingDeadline = now + this.ctx.limits.nopTimeoutMs;
      const b = newBhs(OP.NOP_IN, NO_TAG);
      b.writeUInt32BE(this.pingTtt, 20);
      this.send(this.seal(b, false));
    }
  }

  /** Asks the initiator to log out (Async Message event 1); drops it if it has not within the grace. */
  requestLogout(): void {
    if (!this.loggedIn || this.state === State.Closed) return this.close('revoked');
    if (this.logoutDeadline) return;
    this.logoutDeadline = Date.now() + this.ctx.limits.logoutGraceMs;
    this.asyncMessage(1, 0, 0, Math.ceil(this.ctx.limits.logoutGraceMs / 1000), null);
  }

  /** Tells the initiator its LUN inventory or a capacity changed (Async Message event 0 with the unit attention's sense). */
  reportChange(kind: 'luns' | 'capacity', lun: number): void {
    if (this.state !== State.FullFeature || this.sessionType !== 'Normal') return;
    const sense = Buffer.alloc(18);
    sense[0] = 0x70;
    sense[2] = 0x06;
    sense[7] = 10;
    sense[12] = kind === 'luns' ? 0x3f : 0x2a;
    sense[13] = kind === 'luns' ? 0x0e : 0x09;
    this.asyncMessage(0, 0, 0, 0, sense, lun);
  }

  /** Waits for the tasks on `lun` to finish (after the unit left the namespace, no new ones start). */
  async quiesceLun(lun: number): Promise<void> {
    const waits = [...this.tasks.values()].filter((t) => t.lun === lun && t.settled).map((t) => t.settled!);
    for (const t of [...this.tasks.values()]) if (t.lun === lun && !t.settled) {
      t.aborted = true;
      this.release(t);
    }
    await Promise.all(waits);
  }

  /** Graceful end (server shutdown): executing commands are answered, then the socket closes. */
  async shutdown(): Promise<void> {
    if (this.state === State.Closed) return;
    if (this.state === State.Login) {
      this.close('server-shutdown');
      return;
    }
    this.state = State.Draining;
    this.queued.clear();
    await this.abort([...this.tasks.values()].filter((t) => !t.executing));
    await Promise.all([...this.tasks.values()].filter((t) => t.settled).map((t) => t.settled!));
    this.endGracefully('server-shutdown');
    await this.closedPromise;
  }

  private endGracefully(reason: CloseReason): void {
    if (this.state === State.Closed) return;
    this.state = State.Closed;
    this.reader.stop();
    this.sock.end();
    // A peer that never closes its side must not keep the connection.
    const t = setTimeout(() => this.sock.destroy(), 5000);
    t.unref();
    this.finishClose(reason);
  }

  close(reason: CloseReason): void {
    if (this.state === State.Closed) {
      this.sock.destroy();
      return;
    }
    this.state = State.Closed;
    this.reader.stop();
    this.queued.clear();
    for (const t of this.tasks.values()) {
      t.aborted = true;
      if (!t.settled) this.release(t);
    }
    // Responses already made (to commands before the PDU that ended the connection) still go out.
    this.replies.flush();
    this.sock.destroy();
    this.replies.drop();
    this.ctx.budget?.leave(this);
    this.finishClose(reason);
  }

  private finishClose(reason: CloseReason): void {
    if (this.closeReason !== null) return;
    this.closeReason = reason;
    clearInterval(this.timer);
    if (this.nexus) this.ctx.device.nexusRemoved(this.nexus);
    this.ctx.onClose(this, reason);
    this.resolveClosed();
  }
}

/** The CDB bytes beyond 16 from an Extended CDB AHS (type 1), or null when the AHS is malformed. */
function extendedCdb(ahs: Buffer): Buffer | null {
  let pos = 0;
  let ext: Buffer | null = null;
  while (pos + 4 <= ahs.length) {
    const len = ahs.readUInt16BE(pos);
    const type = ahs[pos + 2]!;
    const end = pos + 3 + len;
    if (len === 0 || end > ahs.length) return null;
    if (type === 1) {
      if (ext) return null;
      // AHSLength counts the reserved byte plus CDB bytes 16..: the extension is len-1 bytes.
      ext = Buffer.from(ahs.subarray(pos + 4, end));
    } else if (type !== 2) {
      return null;
    }
    pos = (end + 3) & ~3;
  }
  return ext;
}
