import { DEMO_IQN, IscsiWire, demoTarget, read10, syncCache10, tur, write10, type WirePdu } from './iscsi-wire.js';

const SECTOR = 512;

/** A command's outcome: iSCSI response byte, SCSI status, sense bytes (fixed format, when CHECK CONDITION) and data in. */
export interface ScsiResult {
  response: number;
  status: number;
  sense: Buffer;
  data: Buffer;
}

/** Sense key, ASC and ASCQ of fixed-format sense data. */
export const senseCode = (s: Buffer): [number, number, number] => [s[2]! & 0x0f, s[12]!, s[13]!];

interface Pending {
  resolve: (r: ScsiResult) => void;
  reject: (e: Error) => void;
  /** Read buffer filled by Data-In; null for commands without data in. */
  data: Buffer | null;
}

/**
 * A small many-commands-in-flight iSCSI initiator for tests that need a
 * workload rather than exact wire control: one normal session, immediate data
 * for writes, one reader routing replies by ITT. Built on IscsiWire, so every
 * read has a deadline: a command that gets no reply within `replyMs` fails
 * with "no reply within", and everything pending fails when the target drops
 * the connection.
 */
export class IscsiSession {
  private readonly pending = new Map<number, Pending>();
  private pumping: Promise<void>;

  private constructor(
    readonly wire: IscsiWire,
    private readonly replyMs: number,
  ) {
    this.pumping = this.pump();
  }

  /** Logs in to `target` as `iqn` and clears the new nexus's unit attention on each of `luns` with TEST UNIT READY. */
  static async open(portal: string, luns: number[], o: { iqn?: string; target?: string; replyMs?: number; isid?: Buffer<ArrayBuffer> } = {}): Promise<IscsiSession> {
    const w = await IscsiWire.connect(portal);
    // Same initiator, ISID and target as a live session would reinstate (end) it: give a second session its own ISID.
    const r = await w.login(o.iqn ?? DEMO_IQN, o.target ?? demoTarget(), {}, o.isid);
    if (r.bhs[36] !== 0 || r.bhs[37] !== 0) {
      w.close();
      throw new Error(`iSCSI login refused ${r.bhs[36]}/${r.bhs[37]}`);
    }
    for (const lun of luns) {
      let ready = false;
      for (let i = 0; i < 4 && !ready; i++) {
        w.command(tur(), { edtl: 0, lun });
        const p = await w.recvReply();
        if (!p) break;
        ready = p.bhs[3] === 0;
      }
      if (!ready) {
        w.close();
        throw new Error(`iSCSI TEST UNIT READY on LUN ${lun} never GOOD`);
      }
    }
    return new IscsiSession(w, o.replyMs ?? 60_000);
  }

  private async pump(): Promise<void> {
    for (;;) {
      let p: WirePdu | null;
      try {
        p = await this.wire.recvReply(this.replyMs);
      } catch (e) {
        this.failAll((e as Error).message);
        return;
      }
      if (!p) {
        if (this.wire.closed) return this.failAll('iSCSI connection closed');
        if (this.pending.size) {
          this.failAll(`no reply within ${this.replyMs} ms`);
          this.wire.close();
          return;
        }
        continue;
      }
      const c = this.pending.get(p.itt);
      if (!c) continue;
      if (p.opcode === 0x25) {
        if (c.data) p.data.copy(c.data, p.offset);
        if (!(p.flags & 1)) continue;
      } else if (p.opcode !== 0x21) {
        this.pending.delete(p.itt);
        c.reject(new Error(`iSCSI error: unexpected opcode 0x${p.opcode.toString(16)}`));
        continue;
      }
      this.pending.delete(p.itt);
      const sense = p.opcode === 0x21 && p.data.length >= 2 ? p.data.subarray(2, 2 + p.data.readUInt16BE(0)) : Buffer.alloc(0);
      c.resolve({ response: p.opcode === 0x21 ? p.bhs[2]! : 0, status: p.bhs[3]!, sense, data: c.data ?? Buffer.alloc(0) });
    }
  }

  private failAll(why: string): void {
    const all = [...this.pending.values()];
    this.pending.clear();
    for (const c of all) c.reject(new Error(why));
  }

  /** Any command (data out as immediate data, within FirstBurstLength); resolves with whatever status it got. */
  command(lun: number, cdb: Buffer, o: { read?: number; write?: Buffer } = {}): Promise<ScsiResult> {
    if (this.wire.closed) return Promise.reject(new Error('iSCSI connection closed'));
    return new Promise((resolve, reject) => {
      const itt = this.wire.itt();
      this.pending.set(itt, { resolve, reject, data: o.read ? Buffer.alloc(o.read) : null });
      this.wire.command(cdb, { itt, lun, read: !!o.read, write: !!o.write, edtl: o.read ?? o.write?.length ?? 0, immediate: o.write });
    });
  }

  /** A command that must complete GOOD: anything else is an "iSCSI error". */
  private async issue(lun: number, cdb: Buffer, o: { read?: number; write?: Buffer }): Promise<Buffer> {
    const r = await this.command(lun, cdb, o);
    if (r.response !== 0 || r.status !== 0) throw new Error(`iSCSI error: response ${r.response} status 0x${r.status.toString(16)} sense ${r.sense.subarray(0, 18).toString('hex')}`);
    return r.data;
  }

  /** WRITE(10) sent as immediate data (keep it within FirstBurstLength, 64 KiB). */
  write(lun: number, offset: number, data: Buffer, fua = false): Promise<void> {
    return this.issue(lun, write10(offset / SECTOR, data.length / SECTOR, fua), { write: data }).then(() => undefined);
  }

  async read(lun: number, offset: number, length: number): Promise<Buffer> {
    const out = Buffer.alloc(length);
    // READ(10) moves at most 65535 sectors: split long reads.
    const step = 8192 * SECTOR;
    for (let at = 0; at < length; at += step) {
      const n = Math.min(step, length - at);
      (await this.issue(lun, read10((offset + at) / SECTOR, n / SECTOR), { read: n })).copy(out, at);
    }
    return out;
  }

  /** SYNCHRONIZE CACHE(10) over the whole unit. */
  sync(lun: number): Promise<void> {
    return this.issue(lun, syncCache10(), {}).then(() => undefined);
  }

  close(): void {
    this.wire.close();
    void this.pumping;
  }
}
