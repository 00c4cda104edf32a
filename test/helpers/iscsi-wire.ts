import net from 'node:net';
import { crc32c } from '../../target/iscsi/crc32c.js';

/** A received PDU, fields decoded for assertions. */
export interface WirePdu {
  opcode: number;
  flags: number;
  bhs: Buffer;
  data: Buffer;
  itt: number;
  ttt: number;
  statSN: number;
  expCmdSN: number;
  maxCmdSN: number;
  dataSN: number;
  offset: number;
  /** Bytes 44-47: residual (Data-In/Response) or desired length (R2T). */
  word44: number;
}

export const DEMO_IQN = 'iqn.2026-11.io.blockgate:demo-initiator';
export const demoTarget = (host = 'demo', t = 0): string => `iqn.2026-11.io.blockgate:${host}.t${t}`;

const pad4 = (n: number): number => (n + 3) & ~3;

export const keys = (kv: Record<string, string>): Buffer => Buffer.from(Object.entries(kv).map(([k, v]) => `${k}=${v}\0`).join(''));
export const parseKeyText = (b: Buffer): Record<string, string> =>
  Object.fromEntries(
    b
      .toString()
      .split('\0')
      .filter(Boolean)
      .map((p) => [p.slice(0, p.indexOf('=')), p.slice(p.indexOf('=') + 1)]),
  );

/**
 * A raw iSCSI initiator for protocol tests: builds PDUs byte by byte and reads
 * replies with a deadline on every read. Not a client library: each test says
 * exactly what goes on the wire.
 */
export class IscsiWire {
  private buf: Buffer = Buffer.alloc(0);
  private waiter: (() => void) | null = null;
  closed = false;
  headerDigest = false;
  dataDigest = false;
  cmdSN = 1;
  expStatSN = 0;
  private nextItt = 1;

  private constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      this.waiter?.();
    });
    const end = (): void => {
      this.closed = true;
      this.waiter?.();
    };
    sock.on('close', end);
    sock.on('error', end);
  }

  static connect(portal: string): Promise<IscsiWire> {
    const i = portal.lastIndexOf(':');
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: portal.slice(0, i), port: Number(portal.slice(i + 1)) }, () => resolve(new IscsiWire(s)));
      s.once('error', reject);
    });
  }

  itt(): number {
    return this.nextItt++;
  }

  write(b: Buffer): void {
    this.sock.write(b);
  }

  /** A PDU on the wire: BHS (with DSL filled), digests as negotiated, data padded. */
  pdu(bhs: Buffer, data: Buffer = Buffer.alloc(0), opts: { badHeaderDigest?: boolean; badDataDigest?: boolean } = {}): Buffer {
    bhs.writeUIntBE(data.length, 5, 3);
    const parts: Buffer[] = [bhs];
    if (this.headerDigest) {
      const d = Buffer.alloc(4);
      d.writeUInt32LE((crc32c(bhs) ^ (opts.badHeaderDigest ? 1 : 0)) >>> 0);
      parts.push(d);
    }
    if (data.length) {
      const padded = Buffer.alloc(pad4(data.length));
      data.copy(padded);
      parts.push(padded);
      if (this.dataDigest) {
        const d = Buffer.alloc(4);
        d.writeUInt32LE((crc32c(padded) ^ (opts.badDataDigest ? 1 : 0)) >>> 0);
        parts.push(d);
      }
    }
    return Buffer.concat(parts);
  }

  send(bhs: Buffer, data?: Buffer): void {
    this.write(this.pdu(bhs, data));
  }

  /** Waits for `n` bytes; null when the connection closed or the deadline passed. */
  private async need(n: number, ms: number): Promise<boolean> {
    const deadline = Date.now() + ms;
    while (this.buf.length < n) {
      if (this.closed) return false;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiter = () => {
          clearTimeout(t);
          r();
        };
      });
      this.waiter = null;
    }
    return true;
  }

  /** The next PDU, or null when the target closed the connection (or `ms` passed). */
  async recv(ms = 10_000): Promise<WirePdu | null> {
    if (!(await this.need(48, ms))) return null;
    const ahs = this.buf[4]! * 4;
    const hlen = 48 + ahs + (this.headerDigest ? 4 : 0);
    if (!(await this.need(hlen, ms))) return null;
    const dsl = this.buf.readUIntBE(5, 3);
    const dlen = dsl ? pad4(dsl) + (this.dataDigest ? 4 : 0) : 0;
    if (!(await this.need(hlen + dlen, ms))) return null;
    const bhs = Buffer.from(this.buf.subarray(0, 48));
    if (this.headerDigest && crc32c(this.buf, 0, 48 + ahs) !== this.buf.readUInt32LE(48 + ahs)) throw new Error('bad header digest from target');
    if (dsl && this.dataDigest && crc32c(this.buf, hlen, hlen + pad4(dsl)) !== this.buf.readUInt32LE(hlen + pad4(dsl))) throw new Error('bad data digest from target');
    const data = Buffer.from(this.buf.subarray(hlen, hlen + dsl));
    this.buf = this.buf.subarray(hlen + dlen);
    const p: WirePdu = {
      opcode: bhs[0]! & 0x3f,
      flags: bhs[1]!,
      bhs,
      data,
      itt: bhs.readUInt32BE(16),
      ttt: bhs.readUInt32BE(20),
      statSN: bhs.readUInt32BE(24),
      expCmdSN: bhs.readUInt32BE(28),
      maxCmdSN: bhs.readUInt32BE(32),
      dataSN: bhs.readUInt32BE(36),
      offset: bhs.readUInt32BE(40),
      word44: bhs.readUInt32BE(44),
    };
    // Status-bearing PDUs advance ExpStatSN.
    if ([0x21, 0x22, 0x23, 0x24, 0x26, 0x3f, 0x32].includes(p.opcode) || (p.opcode === 0x25 && p.flags & 1) || (p.opcode === 0x20 && p.itt !== 0xffffffff)) {
      this.expStatSN = (p.statSN + 1) >>> 0;
    }
    return p;
  }

  /** Next PDU that is not a target NOP-In ping (answered) or an Async Message (skipped). */
  async recvReply(ms = 10_000): Promise<WirePdu | null> {
    for (;;) {
      const p = await this.recv(ms);
      if (!p) return null;
      if (p.opcode === 0x20 && p.itt === 0xffffffff) {
        this.nopOut(0xffffffff, p.ttt, true);
        continue;
      }
      if (p.opcode === 0x32) continue;
      return p;
    }
  }

  loginBhs(flags: number, itt: number, isid: Buffer, cmdSN: number): Buffer {
    const b = Buffer.alloc(48);
    b[0] = 0x43;
    b[1] = flags;
    isid.copy(b, 8);
    b.writeUInt32BE(itt, 16);
    b.writeUInt32BE(cmdSN, 24);
    b.writeUInt32BE(this.expStatSN, 28);
    return b;
  }

  /**
   * One-PDU login from the operational stage straight to full feature (what
   * libiscsi does without CHAP). Returns the login response.
   */
  async login(initiator: string, target: string | null, extra: Record<string, string> = {}, isid = Buffer.from([0x80, 0, 0, 0, 0x12, 0x34])): Promise<WirePdu> {
    const k: Record<string, string> = { InitiatorName: initiator, SessionType: target ? 'Normal' : 'Discovery' };
    if (target) k.TargetName = target;
    Object.assign(k, { HeaderDigest: 'None', DataDigest: 'None', ImmediateData: 'Yes', InitialR2T: 'No', MaxRecvDataSegmentLength: '65536', MaxBurstLength: '262144', FirstBurstLength: '65536' }, extra);
    this.send(this.loginBhs(0x80 | (1 << 2) | 3, this.itt(), isid, this.cmdSN), keys(k));
    const r = await this.recv();
    if (!r) throw new Error('no login response');
    const rk = parseKeyText(r.data);
    if (r.bhs[36] === 0 && r.flags & 0x80) {
      this.headerDigest = rk.HeaderDigest === 'CRC32C';
      this.dataDigest = rk.DataDigest === 'CRC32C';
    }
    return r;
  }

  /** SCSI Command PDU. */
  command(cdb: Buffer, o: { read?: boolean; write?: boolean; edtl: number; lun?: number; immediate?: Buffer; final?: boolean; itt?: number; cmdSN?: number; immediateFlag?: boolean }): number {
    const b = Buffer.alloc(48);
    const itt = o.itt ?? this.itt();
    b[0] = 0x01 | (o.immediateFlag ? 0x40 : 0);
    b[1] = (o.final === false ? 0 : 0x80) | (o.read ? 0x40 : 0) | (o.write ? 0x20 : 0) | 1;
    b[9] = o.lun ?? 0;
    b.writeUInt32BE(itt, 16);
    b.writeUInt32BE(o.edtl, 20);
    b.writeUInt32BE(o.cmdSN ?? this.cmdSN, 24);
    if (o.cmdSN === undefined && !o.immediateFlag) this.cmdSN = (this.cmdSN + 1) >>> 0;
    b.writeUInt32BE(this.expStatSN, 28);
    cdb.copy(b, 32);
    this.send(b, o.immediate);
    return itt;
  }

  dataOut(itt: number, ttt: number, dataSN: number, offset: number, data: Buffer, final: boolean, lun = 0): void {
    const b = Buffer.alloc(48);
    b[0] = 0x05;
    b[1] = final ? 0x80 : 0;
    b[9] = lun;
    b.writeUInt32BE(itt, 16);
    b.writeUInt32BE(ttt, 20);
    b.writeUInt32BE(this.expStatSN, 28);
    b.writeUInt32BE(dataSN, 36);
    b.writeUInt32BE(offset, 40);
    this.send(b, data);
  }

  nopOut(itt: number, ttt: number, immediate: boolean, data?: Buffer): void {
    const b = Buffer.alloc(48);
    b[0] = 0x00 | (immediate ? 0x40 : 0);
    b[1] = 0x80;
    b.writeUInt32BE(itt, 16);
    b.writeUInt32BE(ttt, 20);
    b.writeUInt32BE(this.cmdSN, 24);
    if (!immediate && itt !== 0xffffffff) this.cmdSN = (this.cmdSN + 1) >>> 0;
    b.writeUInt32BE(this.expStatSN, 28);
    this.send(b, data);
  }

  tmf(fn: number, refItt: number, lun = 0, refCmdSN = 0): number {
    const b = Buffer.alloc(48);
    const itt = this.itt();
    b[0] = 0x02 | 0x40;
    b[1] = 0x80 | fn;
    b[9] = lun;
    b.writeUInt32BE(itt, 16);
    b.writeUInt32BE(refItt, 20);
    b.writeUInt32BE(this.cmdSN, 24);
    b.writeUInt32BE(this.expStatSN, 28);
    b.writeUInt32BE(refCmdSN, 32);
    this.send(b);
    return itt;
  }

  text(kv: Record<string, string>, ttt = 0xffffffff): number {
    const b = Buffer.alloc(48);
    const itt = this.itt();
    b[0] = 0x04 | 0x40;
    b[1] = 0x80;
    b.writeUInt32BE(itt, 16);
    b.writeUInt32BE(ttt, 20);
    b.writeUInt32BE(this.cmdSN, 24);
    b.writeUInt32BE(this.expStatSN, 28);
    this.send(b, keys(kv));
    return itt;
  }

  logout(): number {
    const b = Buffer.alloc(48);
    const itt = this.itt();
    b[0] = 0x06 | 0x40;
    b[1] = 0x80;
    b.writeUInt32BE(itt, 16);
    b.writeUInt32BE(this.cmdSN, 24);
    b.writeUInt32BE(this.expStatSN, 28);
    this.send(b);
    return itt;
  }

  close(): void {
    this.sock.destroy();
  }
}

export function read10(lba: number, blocks: number, fua = false): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x28;
  c[1] = fua ? 0x08 : 0;
  c.writeUInt32BE(lba, 2);
  c.writeUInt16BE(blocks, 7);
  return c;
}

export function write10(lba: number, blocks: number, fua = false): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x2a;
  c[1] = fua ? 0x08 : 0;
  c.writeUInt32BE(lba, 2);
  c.writeUInt16BE(blocks, 7);
  return c;
}

export function syncCache10(): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x35;
  return c;
}

export function tur(): Buffer {
  return Buffer.alloc(16);
}

/** REPORT LUNS, up to 4 KiB back. */
export function reportLuns(): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0xa0;
  c.writeUInt32BE(4096, 6);
  return c;
}

/** READ CAPACITY(16), 32 bytes back. */
export function readCapacity16(): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x9e;
  c[1] = 0x10;
  c.writeUInt32BE(32, 10);
  return c;
}
/** INQUIRY for a VPD page. */
export function vpd(page: number): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x12;
  c[1] = 1;
  c[2] = page;
  c.writeUInt16BE(255, 3);
  return c;
}
export function writeSame16(lba: number, blocks: number, unmap: boolean): Buffer {
  const c = Buffer.alloc(16);
  c[0] = 0x93;
  c[1] = unmap ? 0x08 : 0;
  c.writeUInt32BE(lba, 6);
  c.writeUInt32BE(blocks, 10);
  return c;
}
/** UNMAP of one range: the CDB and its parameter list (send as data out). */
export function unmap(lba: number, blocks: number): { cdb: Buffer; data: Buffer } {
  const cdb = Buffer.alloc(16);
  cdb[0] = 0x42;
  cdb.writeUInt16BE(24, 7);
  const data = Buffer.alloc(24);
  data.writeUInt16BE(22, 0);
  data.writeUInt16BE(16, 2);
  data.writeUInt32BE(lba, 12);
  data.writeUInt32BE(blocks, 16);
  return { cdb, data };
}
