import t from 'tap';
import { RawNbd } from '../helpers/nbd-client.js';
import { CMD, FLAG } from '../helpers/nbd-wire.js';
import { prng } from '../helpers/prng.js';
import { startServer } from '../helpers/server.js';

/**
 * Model-based check of map-changing commands against everything else in
 * flight on the same cache blocks (issue 13, item 0).
 *
 * Several connections keep many requests in flight on three neighbouring
 * 64 KiB cache blocks: WRITE (±FUA), WRITE_ZEROES (±NO_HOLE, ±FUA), TRIM
 * (±FUA), READ, FLUSH and CACHE, aligned to 4 KiB or only to 512 bytes. An
 * in-memory model of what was acknowledged checks every sector of every
 * read: a sector with a change in flight may hold the old or the new value;
 * one whose change was acknowledged must hold exactly that. Then the server
 * is killed -9 with requests in flight, and after restart every sector must
 * hold what the last acknowledged FLUSH (or FUA) covered, or something sent
 * after it.
 *
 * Changes to one sector are never in flight twice at once, so each sector's
 * history is totally ordered and "sent after" is well defined. Each write's
 * bytes name the write and the sector, so a value can be recognised exactly.
 */

const SECTOR = 512;
const PAGE = 4096;
const CACHE_BLOCK = 64 * 1024;
/** Region start in the volume: 1 MiB in, so neighbouring blocks outside it exist too. */
const BASE = 1024 * 1024;
const REGION = 3 * CACHE_BLOCK;
const NS = REGION / SECTOR;
const CONNS = 4;
const QD = 6;
const ROUNDS = 2;
const ROUND_MS = 9000;
/** Hang guard for one request: a reply that never comes fails the test, it does not wait forever. */
const REPLY_DEADLINE_MS = 30_000;

interface Mod {
  /** Values the sector may hold once this change applied (TRIM may leave the old bytes). */
  vals: number[];
  fua: boolean;
  /** Acknowledgement order, -1 while in flight. */
  ackSeq: number;
}

interface Sector {
  hist: Mod[];
  pending: Mod | null;
}

interface InflightRead {
  first: number;
  count: number;
  allowed: Set<number>[];
}

function sectorBytes(id: number, sector: number, out: Buffer, at: number): void {
  out.write('BGZM', at, 'latin1');
  out.writeUInt32BE(id, at + 4);
  out.writeUInt32BE(sector, at + 8);
  let x = (id * 0x9e3779b1) ^ (sector * 0x85ebca6b) || 1;
  for (let i = 12; i < SECTOR; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out.writeInt32BE(x | 0, at + i);
  }
}

const scratch = Buffer.alloc(SECTOR);

/** The write id a sector holds, 0 for zeroes, -1 for bytes no request ever wrote there. */
function decode(buf: Buffer, at: number, sector: number): number {
  let zero = true;
  for (let i = 0; i < SECTOR; i += 4) {
    if (buf.readUInt32BE(at + i) !== 0) {
      zero = false;
      break;
    }
  }
  if (zero) return 0;
  if (buf.toString('latin1', at, at + 4) !== 'BGZM' || buf.readUInt32BE(at + 8) !== sector) return -1;
  const id = buf.readUInt32BE(at + 4);
  sectorBytes(id, sector, scratch, 0);
  return scratch.equals(buf.subarray(at, at + SECTOR)) ? id : -1;
}

function within<T>(p: Promise<T>, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const guard = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no reply to ${what} within ${REPLY_DEADLINE_MS} ms`)), REPLY_DEADLINE_MS);
  });
  return Promise.race([p, guard]).finally(() => clearTimeout(timer));
}

t.test('acknowledged zeroes and trims stick under concurrent I/O on the same cache blocks, and survive kill -9', async (t) => {
  const s = await startServer(t, { args: ['--cache-size', '64M'] });
  const rand = prng(20261130);
  const sectors: Sector[] = Array.from({ length: NS }, () => ({ hist: [{ vals: [0], fua: true, ackSeq: 0 }], pending: null }));
  const reads = new Set<InflightRead>();
  let ackSeq = 0;
  let durableAck = 0;
  let nextId = 1;
  let stale = 0;
  let foreign = 0;
  let checked = 0;
  let errors = 0;
  let crashLost = 0;
  let crashChecked = 0;
  const counts: Record<string, number> = { write: 0, zero: 0, trim: 0, read: 0, flush: 0, cache: 0 };
  const firstStale: string[] = [];

  const lastAcked = (sec: Sector): Mod => {
    for (let i = sec.hist.length - 1; i >= 0; i--) if (sec.hist[i]!.ackSeq >= 0) return sec.hist[i]!;
    throw new Error('sector without a base value');
  };
  const allowedNow = (sec: Sector): Set<number> => {
    const a = new Set(lastAcked(sec).vals);
    if (sec.pending) for (const v of sec.pending.vals) a.add(v);
    return a;
  };
  const free = (first: number, count: number): boolean => {
    for (let i = first; i < first + count; i++) if (sectors[i]!.pending) return false;
    return true;
  };

  /** Registers a change on sectors [first, first+count) and returns the function to call on its ack. */
  const begin = (first: number, count: number, valsOf: (sec: Sector, i: number) => number[], fua: boolean): (() => void) => {
    const mods: Mod[] = [];
    for (let i = first; i < first + count; i++) {
      const sec = sectors[i]!;
      const m: Mod = { vals: valsOf(sec, i), fua, ackSeq: -1 };
      sec.hist.push(m);
      sec.pending = m;
      mods.push(m);
      for (const r of reads) if (i >= r.first && i < r.first + r.count) for (const v of m.vals) r.allowed[i - r.first]!.add(v);
    }
    return () => {
      const seq = ++ackSeq;
      for (let i = 0; i < count; i++) {
        mods[i]!.ackSeq = seq;
        sectors[first + i]!.pending = null;
      }
    };
  };

  const pickRange = (): [number, number] => {
    if (rand() < 0.8) {
      const pages = REGION / PAGE;
      const len = rand() < 0.9 ? 1 + Math.floor(rand() * 4) : 1 + Math.floor(rand() * 16);
      const p = Math.floor(rand() * (pages - len + 1));
      return [(p * PAGE) / SECTOR, (len * PAGE) / SECTOR];
    }
    const len = 1 + Math.floor(rand() * 16);
    return [Math.floor(rand() * (NS - len + 1)), len];
  };

  let crashing = false;

  /** After a restart: every sector holds what its last durable change left, or something sent after; that becomes the new base. */
  const judgeCrash = async (c: RawNbd, round: number): Promise<void> => {
    const got = await within(c.read(BASE, REGION), 'READ after restart');
    for (let i = 0; i < NS; i++) {
      const sec = sectors[i]!;
      let k = 0;
      for (let j = sec.hist.length - 1; j > 0; j--) {
        const m = sec.hist[j]!;
        if (m.ackSeq >= 0 && (m.fua || m.ackSeq <= durableAck)) {
          k = j;
          break;
        }
      }
      const allowed = new Set<number>();
      for (let j = k; j < sec.hist.length; j++) for (const v of sec.hist[j]!.vals) allowed.add(v);
      const v = decode(got, i * SECTOR, i);
      crashChecked++;
      if (v < 0) foreign++;
      else if (!allowed.has(v)) {
        crashLost++;
        if (firstStale.length < 10) firstStale.push(`after crash ${round}: sector ${i} holds ${v}, allowed ${[...allowed].join('/')}`);
      }
      sec.hist = [{ vals: [v < 0 ? 0 : v], fua: true, ackSeq: 0 }];
      sec.pending = null;
    }
  };

  const oneOp = async (c: RawNbd): Promise<void> => {
    const r = rand();
    let [first, count] = pickRange();
    const off = BASE + first * SECTOR;
    const len = count * SECTOR;
    let kind = r < 0.34 ? 'write' : r < 0.54 ? 'zero' : r < 0.62 ? 'trim' : r < 0.92 ? 'read' : r < 0.97 ? 'flush' : 'cache';
    if ((kind === 'write' || kind === 'zero' || kind === 'trim') && !free(first, count)) kind = 'read';
    counts[kind]!++;
    if (kind === 'write') {
      const id = nextId++;
      const data = Buffer.allocUnsafe(len);
      for (let i = 0; i < count; i++) sectorBytes(id, first + i, data, i * SECTOR);
      const fua = rand() < 0.15;
      const ack = begin(first, count, () => [id], fua);
      await within(c.write(off, data, fua), 'WRITE');
      ack();
      return;
    }
    if (kind === 'zero') {
      const flags = (rand() < 0.5 ? FLAG.NO_HOLE : 0) | (rand() < 0.25 ? FLAG.FUA : 0);
      const ack = begin(first, count, () => [0], (flags & FLAG.FUA) !== 0);
      await within(c.command(CMD.WRITE_ZEROES, flags, off, len), 'WRITE_ZEROES');
      ack();
      return;
    }
    if (kind === 'trim') {
      const fua = rand() < 0.25;
      // TRIM is advisory: a sector may keep what it held, or read as zeroes.
      const ack = begin(first, count, (sec) => [0, ...lastAcked(sec).vals], fua);
      await within(c.command(CMD.TRIM, fua ? FLAG.FUA : 0, off, len), 'TRIM');
      ack();
      return;
    }
    if (kind === 'flush') {
      const covers = ackSeq;
      await within(c.flush(), 'FLUSH');
      if (covers > durableAck) durableAck = covers;
      return;
    }
    if (kind === 'cache') {
      await within(c.command(CMD.CACHE, 0, BASE + (first - (first % 128)) * SECTOR, CACHE_BLOCK), 'CACHE');
      return;
    }
    // READ: 4 KiB aligned pieces up to the whole region, sometimes odd sectors.
    if (rand() < 0.7) {
      const len4 = rand() < 0.2 ? REGION / PAGE : 1 + Math.floor(rand() * 8);
      const p = Math.floor(rand() * (REGION / PAGE - len4 + 1));
      [first, count] = [(p * PAGE) / SECTOR, (len4 * PAGE) / SECTOR];
    }
    const rd: InflightRead = { first, count, allowed: [] };
    for (let i = 0; i < count; i++) rd.allowed.push(allowedNow(sectors[first + i]!));
    reads.add(rd);
    let got: Buffer;
    try {
      got = await within(c.read(BASE + first * SECTOR, count * SECTOR), 'READ');
    } finally {
      reads.delete(rd);
    }
    for (let i = 0; i < count; i++) {
      const v = decode(got, i * SECTOR, first + i);
      checked++;
      if (v < 0) foreign++;
      else if (!rd.allowed[i]!.has(v)) {
        stale++;
        if (firstStale.length < 5) firstStale.push(`sector ${first + i}: read ${v}, allowed ${[...rd.allowed[i]!].join('/')}`);
      }
    }
  };

  const worker = async (c: RawNbd, until: number): Promise<void> => {
    while (Date.now() < until && !crashing) {
      try {
        await oneOp(c);
      } catch (e) {
        if (crashing) return;
        errors++;
        if (errors <= 3) t.comment(`request failed: ${(e as Error).message}`);
        return;
      }
    }
  };

  for (let round = 0; round < ROUNDS; round++) {
    if (round > 0) await s.start();
    const conns = await Promise.all(Array.from({ length: CONNS }, () => RawNbd.connect(s.socket('demo'), '0/0')));

    if (round > 0) {
      await judgeCrash(conns[0]!, round);
      // Make the new base durable so the next crash is judged only on this round's requests.
      await within(conns[0]!.flush(), 'FLUSH');
      durableAck = ackSeq;
    }

    crashing = false;
    const until = Date.now() + ROUND_MS;
    const loops: Promise<void>[] = [];
    for (const c of conns) for (let q = 0; q < QD; q++) loops.push(worker(c, until));
    // Kill -9 while requests are still in flight: a fixed share of the round, not a measured time.
    await new Promise((r) => setTimeout(r, ROUND_MS * 0.9));
    crashing = true;
    await s.kill();
    for (const c of conns) c.close();
    await Promise.all(loops);
  }
  // Judge the last crash too.
  await s.start();
  const c = await RawNbd.connect(s.socket('demo'), '0/0');
  await judgeCrash(c, ROUNDS);
  c.close();

  t.comment(`ops ${JSON.stringify(counts)}; sectors read ${checked}, stale ${stale}, foreign ${foreign}; after crash checked ${crashChecked}, lost ${crashLost}`);
  for (const l of firstStale) t.comment(l);
  t.ok(counts.zero! > 150 && counts.read! > 300, 'the mix ran enough zeroes and reads to mean something');
  t.equal(errors, 0, 'no request failed');
  t.equal(foreign, 0, 'no sector ever held bytes written for another sector');
  t.equal(stale, 0, 'every read matched the acknowledged model');
  t.equal(crashLost, 0, 'after kill -9 every sector holds what an acknowledged FLUSH/FUA covered, or something newer');
});
