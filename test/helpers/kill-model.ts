import { IscsiSession } from './iscsi-session.js';
import { RawNbd } from './nbd-client.js';
import { prng } from './prng.js';
import type { TestServer } from './server.js';
import type { TapTest } from './wait.js';

/**
 * The durability contract under kill -9: every write acknowledged before an
 * acknowledged FLUSH (or acknowledged with FUA) survives; a block may hold a
 * newer write that was sent but never flushed; no block ever holds bytes
 * written for another offset or another volume; a block never written reads
 * as zeroes.
 *
 * Writes to one block are never in flight twice at once, so each block's
 * versions are totally ordered by their sequence number and "newer" is well
 * defined.
 *
 * Each volume is written over the protocols `writers` names for it (NBD WRITE,
 * FUA, FLUSH; iSCSI WRITE(10) with and without FUA, SYNCHRONIZE CACHE); a
 * volume written over both at once proves a flush on one protocol covers
 * writes acknowledged on the other. After each restart every volume is read
 * over NBD, and the iSCSI-written ones over iSCSI as well, which must return
 * the same bytes.
 */

const BLOCK = 4096;
const QD = 12;

type Proto = 'nbd' | 'iscsi';

export interface KillModelOptions {
  /** NBD exports of one host, each a volume (every volume is read back over NBD). */
  host: string;
  exports: string[];
  /** Protocols writing each volume (default: NBD only). iSCSI needs `luns` and the host's default initiator. */
  writers?: Proto[][];
  /** The iSCSI LUN of each volume. */
  luns?: number[];
  rounds: number;
  /** Blocks tracked per export. */
  blocks: number;
  /** Byte offset of tracked block `b` (default: contiguous from 0). */
  offset?: (b: number) => number;
  seed?: number;
}


/** A block's bytes name its volume, block index and version; the rest is derived from those. */
function payload(vol: number, block: number, seq: number): Buffer {
  const b = Buffer.allocUnsafe(BLOCK);
  b.write('BGKT', 0, 'latin1');
  b.writeUInt32BE(vol, 4);
  b.writeUInt32BE(block, 8);
  b.writeUInt32BE(seq, 12);
  let x = (vol * 0x9e3779b1) ^ (block * 0x85ebca6b) ^ (seq * 0xc2b2ae35) || 1;
  for (let i = 16; i < BLOCK; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b.writeInt32BE(x | 0, i);
  }
  return b;
}

/** One protocol's way to one volume. */
interface Writer {
  proto: Proto;
  write(offset: number, data: Buffer, fua: boolean): Promise<unknown>;
  flush(): Promise<unknown>;
}

interface BlockModel {
  /** Every version ever sent (a crash may leave any of them that is not older than `floor`). */
  sent: Set<number>;
  /** Newest version that must survive (acknowledged before an acknowledged flush, or FUA). */
  floor: number;
  /** Newest acknowledged version. */
  acked: number;
  inflight: boolean;
}


/** Runs `rounds` of random writes and flushes, SIGKILL, restart, verify; asserts the contract. */
export async function killRounds(t: TapTest, s: TestServer, o: KillModelOptions): Promise<void> {
  const ROUNDS = o.rounds;
  const REGION_BLOCKS = o.blocks;
  const at = o.offset ?? ((b: number) => b * BLOCK);
  const contiguous = o.offset === undefined;
  const exports = o.exports;
  const model: BlockModel[][] = exports.map(() =>
    Array.from({ length: REGION_BLOCKS }, () => ({ sent: new Set<number>(), floor: 0, acked: 0, inflight: false })),
  );
  const protos: Proto[][] = o.writers ?? exports.map(() => ['nbd']);
  const usesIscsi = protos.some((ps) => ps.includes('iscsi'));
  const luns = o.luns ?? exports.map((_, v) => v);
  const rand = prng(o.seed ?? 20261122);
  let seq = 0;
  let checked = 0;
  let survivedUnflushed = 0;
  // What the server answered before each kill: an error reply is a failure (every request here is valid);
  // only requests cut off by the kill itself (connection closed) may go unanswered.
  const acked = { nbd: { writes: 0, fua: 0, flushes: 0 }, iscsi: { writes: 0, fua: 0, flushes: 0 } };
  const errors: string[] = [];
  const refused = (what: string) => (e: Error & { errno?: number }): void => {
    if (/^NBD error|^iSCSI error|no reply within/.test(e.message)) errors.push(`${what}: ${e.message}`);
  };

  for (let round = 0; round < ROUNDS; round++) {
    if (round > 0) await s.start();
    const conns = await Promise.all(exports.map((e) => RawNbd.connect(s.socket(o.host), e)));
    const iscsi = usesIscsi ? await IscsiSession.open(s.iscsi, luns) : null;
    const writers: Writer[][] = protos.map((ps, v) =>
      ps.map((proto): Writer =>
        proto === 'nbd'
          ? { proto, write: (off, d, f) => conns[v]!.write(off, d, f), flush: () => conns[v]!.flush() }
          : { proto, write: (off, d, f) => iscsi!.write(luns[v]!, off, d, f), flush: () => iscsi!.sync(luns[v]!) },
      ),
    );

    // ---- verify what the last crash left -------------------------------------
    for (let v = 0; v < exports.length; v++) {
      const got = await readTracked((off, len) => conns[v]!.read(off, len), REGION_BLOCKS, at, contiguous);
      if (iscsi && protos[v]!.includes('iscsi')) {
        let overIscsi: Buffer | null = null;
        try {
          overIscsi = await readTracked((off, len) => iscsi.read(luns[v]!, off, len), REGION_BLOCKS, at, contiguous);
        } catch (e) {
          errors.push(`round ${round}: iSCSI read of volume ${v}: ${(e as Error).message}`);
        }
        if (overIscsi && !overIscsi.equals(got)) t.fail(`round ${round}: volume ${v} reads differently over iSCSI and NBD`);
      }
      for (let b = 0; b < REGION_BLOCKS; b++) {
        const m = model[v]![b]!;
        const blk = got.subarray(b * BLOCK, (b + 1) * BLOCK);
        let version = 0;
        if (blk.readUInt32BE(0) !== 0 || !blk.equals(Buffer.alloc(BLOCK))) {
          if (blk.toString('latin1', 0, 4) !== 'BGKT') {
            t.fail(`round ${round}: volume ${v} block ${b} holds foreign bytes`);
            continue;
          }
          const [bv, bb, bs] = [blk.readUInt32BE(4), blk.readUInt32BE(8), blk.readUInt32BE(12)];
          if (bv !== v || bb !== b) {
            t.fail(`round ${round}: volume ${v} block ${b} holds data written for volume ${bv} block ${bb}`);
            continue;
          }
          if (!blk.equals(payload(v, b, bs))) {
            t.fail(`round ${round}: volume ${v} block ${b} version ${bs} is torn`);
            continue;
          }
          version = bs;
        }
        if (version !== 0 && !m.sent.has(version)) t.fail(`round ${round}: volume ${v} block ${b} holds version ${version} that was never sent`);
        if (version < m.floor) {
          t.fail(`round ${round}: volume ${v} block ${b} lost flushed version ${m.floor} (has ${version || 'zeroes'})`);
        }
        if (version > m.floor) survivedUnflushed++;
        // What is read back after a restart is in the file: it is the new floor.
        m.floor = m.acked = version;
        m.sent = new Set(version ? [version] : []);
        m.inflight = false;
        checked++;
      }
    }
    if (round === ROUNDS - 1 || errors.length > 0) {
      // Done, or the server answered a valid request with an error: no point in more rounds.
      for (const c of conns) c.close();
      iscsi?.close();
      break;
    }

    // ---- random workload, then SIGKILL with requests in flight ----------------
    const ops = 40 + Math.floor(rand() * 500);
    const inflight = new Set<Promise<unknown>>();
    const track = (p: Promise<unknown>): void => {
      const q = p.catch(() => undefined).finally(() => inflight.delete(q));
      inflight.add(q);
    };
    for (let i = 0; i < ops; i++) {
      while (inflight.size >= QD) await Promise.race(inflight);
      const v = Math.floor(rand() * exports.length);
      const ws = writers[v]!;
      const c = ws[Math.floor(rand() * ws.length)]!;
      const r = rand();
      if (r < 0.12) {
        // FLUSH / SYNCHRONIZE CACHE: everything acknowledged now (on any session) must be durable once it is acknowledged.
        const snapshot = model[v]!.map((m) => m.acked);
        track(
          c.flush().then(() => {
            acked[c.proto].flushes++;
            snapshot.forEach((a, b) => {
              const m = model[v]![b]!;
              if (a > m.floor) m.floor = a;
            });
          }, refused(`round ${round} ${c.proto} flush`)),
        );
      } else {
        // Multi-block writes only where tracked blocks are adjacent on the volume.
        const n = contiguous ? 1 + Math.floor(rand() * 4) : 1;
        const first = Math.floor(rand() * (REGION_BLOCKS - n));
        let busy = false;
        for (let b = first; b < first + n; b++) busy ||= model[v]![b]!.inflight;
        if (busy) continue;
        const versions: number[] = [];
        const parts: Buffer[] = [];
        for (let b = first; b < first + n; b++) {
          const sq = ++seq;
          versions.push(sq);
          parts.push(payload(v, b, sq));
          const m = model[v]![b]!;
          m.sent.add(sq);
          m.inflight = true;
        }
        const fua = rand() < 0.08;
        track(
          c.write(at(first), Buffer.concat(parts), fua).then(
            () => {
              acked[c.proto].writes++;
              if (fua) acked[c.proto].fua++;
              versions.forEach((sq, k) => {
                const m = model[v]![first + k]!;
                m.acked = sq;
                m.inflight = false;
                if (fua) m.floor = sq;
              });
            },
            refused(`round ${round} ${c.proto} write at block ${first}`),
          ),
        );
      }
      // Now and then let background write-back run, so kills land at every stage.
      if (rand() < 0.01) await new Promise((r) => setTimeout(r, Math.floor(rand() * 700)));
    }
    await s.kill();
    for (const c of conns) c.close();
    iscsi?.close();
    await Promise.allSettled([...inflight]);
  }
  t.same(errors.slice(0, 10), [], `no request answered with an error (${errors.length} were)`);
  t.ok(checked >= ROUNDS * exports.length * REGION_BLOCKS, `checked ${checked} blocks`);
  // The model only proves something if the server took writes and flushes in most rounds.
  for (const p of ['nbd', 'iscsi'] as const) {
    if (!protos.some((ps) => ps.includes(p))) continue;
    const a = acked[p];
    t.ok(a.writes >= (ROUNDS - 1) * 10, `${p}: ${a.writes} writes acknowledged`);
    t.ok(a.fua >= ROUNDS / 2, `${p}: ${a.fua} FUA writes acknowledged`);
    t.ok(a.flushes >= ROUNDS / 2, `${p}: ${a.flushes} flushes acknowledged`);
  }
  t.comment(`${survivedUnflushed} block checks found a newer unflushed version (allowed)`);
}

/** The tracked blocks of one export, in order: one read when they are contiguous, else one per block. */
async function readTracked(read: (offset: number, length: number) => Promise<Buffer>, blocks: number, at: (b: number) => number, contiguous: boolean): Promise<Buffer> {
  if (contiguous) return read(0, blocks * BLOCK);
  const out = Buffer.alloc(blocks * BLOCK);
  for (let b = 0; b < blocks; b += 16) {
    const parts = await Promise.all(Array.from({ length: Math.min(16, blocks - b) }, (_, k) => read(at(b + k), BLOCK)));
    parts.forEach((p, k) => p.copy(out, (b + k) * BLOCK));
  }
  return out;
}
