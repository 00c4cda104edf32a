import net from 'node:net';
import t from 'tap';
import { startServer } from '../helpers/server.js';
import { requireTools, run } from '../helpers/tools.js';
import { IscsiWire, keys, read10, tur, write10 } from '../helpers/iscsi-wire.js';
import { Fuzzer } from '../helpers/prng.js';
import { crc32c } from '../../target/iscsi/crc32c.js';

// iSCSI fuzzing from raw sockets: a fixed seed, >=100k random and mutated
// PDUs over login and full feature phase (bad opcodes, lengths over
// MaxRecvDataSegmentLength, wrong digests, CmdSN outside the window, Data-Out
// with wrong TTT or offset, full-feature PDUs before login). Meanwhile qemu-io
// writes and verifies patterns on another host's volume over iSCSI. After:
// the server is alive and serving, and the writer saw no error.

requireTools('qemu-io');

const SEED = Number(process.env.BLOCKGATE_FUZZ_SEED ?? 0x15c5_2026);
const PDUS = Number(process.env.BLOCKGATE_FUZZ_PDUS ?? 100_000);
const PARALLEL = 6;
const FUZZ_IQN = 'iqn.2026-01.fuzz:initiator';
const FUZZ_TARGET = 'iqn.2026-11.io.blockgate:fz.t0';
const STEADY_IQN = 'iqn.2026-01.fuzz:steady';


const pad4 = (n: number): number => (n + 3) & ~3;

/** One PDU with digests as the session negotiated them; `lie` overrides the DataSegmentLength field. */
function pdu(bhs: Buffer, data: Buffer, hd: boolean, dd: boolean, lie?: number): Buffer {
  bhs.writeUIntBE(lie ?? data.length, 5, 3);
  const parts = [bhs];
  if (hd) {
    const d = Buffer.alloc(4);
    d.writeUInt32LE(crc32c(bhs));
    parts.push(d);
  }
  if (data.length) {
    const p = Buffer.alloc(pad4(data.length));
    data.copy(p);
    parts.push(p);
    if (dd) {
      const d = Buffer.alloc(4);
      d.writeUInt32LE(crc32c(p));
      parts.push(d);
    }
  }
  return Buffer.concat(parts);
}

function bhs(g: Fuzzer, opcode: number, sn: number): Buffer {
  const b = Buffer.alloc(48);
  b[0] = opcode | (g.int(3) === 0 ? 0x40 : 0);
  b[1] = g.int(4) === 0 ? g.int(256) : 0x80;
  b[9] = g.pick([0, 0, 0, 1, 7, 255]);
  b.writeUInt32BE(g.int(5) === 0 ? 0xffffffff : 1 + g.int(64), 16);
  b.writeUInt32BE(g.int(3) === 0 ? 0xffffffff : g.int(64), 20);
  // CmdSN: mostly in the window, sometimes far outside or behind.
  b.writeUInt32BE(g.int(4) === 0 ? g.int(0x100000000) : (sn + g.int(8) - 2) >>> 0, 24);
  return b;
}

function loginPdu(g: Fuzzer): Buffer {
  const b = Buffer.alloc(48);
  b[0] = 0x43;
  b[1] = g.pick([0x87, 0x81, 0x83, 0x04, 0x40 | 0x04, g.int(256)]);
  b[3] = g.int(8) === 0 ? 1 : 0;
  b[8] = 0x80;
  b.writeUInt16BE(g.int(8) === 0 ? g.int(65536) : 0, 14);
  const k: Record<string, string> = { InitiatorName: g.pick([FUZZ_IQN, 'iqn.2026-01.fuzz:nobody', '', 'x'.repeat(300)]) };
  if (g.int(2)) k.SessionType = g.pick(['Normal', 'Discovery', 'Bogus']);
  if (g.int(2)) k.TargetName = g.pick([FUZZ_TARGET, 'iqn.2026-11.io.blockgate:steady.t0', 'iqn.2026-11.io.blockgate:fz.t9', 'junk']);
  if (g.int(2)) k.AuthMethod = g.pick(['None', 'CHAP', 'CHAP,None', 'KRB5']);
  if (g.int(3) === 0) k.CHAP_A = g.pick(['5', '7', '']);
  if (g.int(3) === 0) k.CHAP_R = g.pick(['0x00', 'zz', '0x' + 'ab'.repeat(16)]);
  if (g.int(2)) k.HeaderDigest = g.pick(['None', 'CRC32C', 'CRC32C,None', 'MD5']);
  if (g.int(2)) k.MaxRecvDataSegmentLength = g.pick(['0', '511', '8192', '16777216', 'lots', '0x1000']);
  if (g.int(2)) k.MaxBurstLength = g.pick(['512', '99999999', '-1']);
  let data: Buffer = keys(k);
  if (g.int(5) === 0) data = Buffer.concat([data, g.bytes(g.int(200))]);
  const f = pdu(b, data, false, false, g.int(10) === 0 ? g.int(1 << 24) : undefined);
  return g.int(4) === 0 ? g.mutate(f, 64, 10) : f;
}

function ffpPdu(g: Fuzzer, sn: number, hd: boolean, dd: boolean): Buffer {
  const op = g.int(8) === 0 ? g.int(64) : g.pick([0x00, 0x01, 0x01, 0x01, 0x02, 0x04, 0x05, 0x05, 0x06, 0x03, 0x10]);
  const b = bhs(g, op, sn);
  let data: Buffer = Buffer.alloc(0);
  let lie: number | undefined;
  if (op === 0x01) {
    const cdb = g.pick([tur(), read10(g.int(40000), g.int(64)), write10(g.int(40000), g.int(64)), g.bytes(16)]);
    cdb.copy(b, 32);
    b[1] = g.pick([0x80 | 0x40 | 1, 0x80 | 0x20 | 1, 0x20 | 1, 0x80 | 0x60, g.int(256)]);
    b.writeUInt32BE(g.pick([0, 512, 4096, 65536, 1 << 20, 0xffffffff, g.int(1 << 22)]), 20);
    if (b[1]! & 0x20 && g.int(2)) data = Buffer.alloc(g.pick([512, 4096, 8192, 70000]), g.int(256));
    if (g.int(10) === 0) b[4] = 1 + g.int(4); // AHS that is not there
  } else if (op === 0x05) {
    b.writeUInt32BE(g.int(3) === 0 ? 0 : g.int(1 << 20), 40);
    b.writeUInt32BE(g.int(4), 36);
    data = Buffer.alloc(g.pick([1, 512, 4096, 65536]), 0xdd);
  } else if (op === 0x04) {
    data = keys(g.pick<Record<string, string>>([{ SendTargets: 'All' }, { SendTargets: '' }, { Foo: 'bar' }, { SendTargets: 'x'.repeat(500) }]));
  } else if (op === 0x00 && g.int(2)) {
    data = g.bytes(g.int(1000));
  } else if (op === 0x02) {
    b.writeUInt32BE(1 + g.int(64), 20);
  }
  // Lengths over MaxRecvDataSegmentLength, or lying about the length.
  if (g.int(30) === 0) lie = g.pick([300 * 1024, 1 << 23, 0xffffff]);
  const f = pdu(b, data, hd, dd, lie);
  const k = g.int(12);
  if (k === 0) return g.mutate(f, 64, 10);
  if (k === 1 && (hd || dd)) {
    // A wrong digest.
    const m = Buffer.from(f);
    m[hd ? 48 : m.length - 1] ^= 0xff;
    return m;
  }
  return f;
}

let hung = 0;

async function session(portal: string, g: Fuzzer, n: number): Promise<number> {
  const style = g.int(5);
  if (style === 0) {
    // Pre-login: mutated logins and full-feature PDUs before login.
    const i = portal.lastIndexOf(':');
    const sock = net.connect({ host: portal.slice(0, i), port: Number(portal.slice(i + 1)) });
    sock.on('error', () => undefined);
    sock.on('data', () => undefined);
    await new Promise<void>((r) => {
      sock.once('connect', r);
      sock.once('close', r);
    });
    const out: Buffer[] = [];
    for (let k = 0; k < n; k++) out.push(g.int(3) === 0 ? ffpPdu(g, 0, false, false) : loginPdu(g));
    return finish(sock, out, n);
  }
  // A real login (sometimes with digests), then full feature fuzz.
  const w = await IscsiWire.connect(portal);
  w.sock.removeAllListeners('data');
  w.sock.on('error', () => undefined);
  const digests = style === 1;
  const r = await new Promise<boolean>((resolve) => {
    let got = Buffer.alloc(0);
    const timer = setTimeout(() => resolve(false), 10_000);
    w.sock.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length >= 48) {
        clearTimeout(timer);
        resolve(got[36] === 0);
      }
    });
    w.send(
      w.loginBhs(0x87, 1, Buffer.from([0x80, 0, 0, 0, 0, g.int(256)]), 1),
      keys({ InitiatorName: FUZZ_IQN, SessionType: 'Normal', TargetName: FUZZ_TARGET, HeaderDigest: digests ? 'CRC32C' : 'None', DataDigest: digests ? 'CRC32C' : 'None', InitialR2T: 'No', ImmediateData: 'Yes', MaxRecvDataSegmentLength: '65536' }),
    );
  });
  w.sock.removeAllListeners('data');
  w.sock.on('data', () => undefined);
  if (!r) {
    w.close();
    return 1;
  }
  const out: Buffer[] = [];
  for (let k = 0; k < n; k++) out.push(ffpPdu(g, 1 + k, digests, digests));
  return finish(w.sock, out, n + 1);
}

async function finish(sock: net.Socket, out: Buffer[], n: number): Promise<number> {
  if (!sock.destroyed) {
    sock.write(Buffer.concat(out));
    sock.end();
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        hung++;
        sock.destroy();
        resolve();
      }, 30_000);
      sock.once('close', () => {
        clearTimeout(timer);
        resolve();
      });
    });
  }
  return n;
}

t.test(`fuzz: ${PDUS} PDUs (seed ${SEED.toString(16)}) while qemu-io writes and verifies over iSCSI`, async (t) => {
  const s = await startServer(t);
  for (const [host, iqn, vol] of [
    ['fz', FUZZ_IQN, 'fz-disk'],
    ['steady', STEADY_IQN, 'steady-disk'],
  ] as const) {
    await s.call('POST', '/v1/hosts', { name: host, farm: 'default' });
    await s.call('POST', '/v1/hosts/' + host + '/initiators', { iqn });
    await s.call('POST', '/v1/volumes', { name: vol, size: '32M' });
    await s.call('POST', '/v1/bindings', { volume: vol, host, target: 0, lun: 0, map: true });
  }
  const i = s.iscsi.lastIndexOf(':');
  const steady = `driver=iscsi,transport=tcp,portal=${s.iscsi.slice(0, i)}:${s.iscsi.slice(i + 1)},target=iqn.2026-11.io.blockgate:steady.t0,lun=0,initiator-name=${STEADY_IQN}`;

  let done = false;
  let rounds = 0;
  const writerErrors: string[] = [];
  const writer = (async () => {
    while (!done || rounds < 2) {
      const cmds: string[] = [];
      for (let k = 0; k < 16; k++) {
        const off = ((rounds * 16 + k) % 120) * 256 * 1024;
        const p = (rounds * 16 + k) % 251;
        cmds.push('-c', `write -P ${p} ${off} 256k`, '-c', `read -P ${p} ${off} 256k`);
      }
      const r = await run('qemu-io', ['--image-opts', steady, ...cmds], { timeoutMs: 120_000 });
      if (r.code !== 0 || /fail|error/i.test(r.stdout + r.stderr)) writerErrors.push(`${r.code} ${r.stdout.slice(0, 300)} ${r.stderr.slice(0, 300)}`);
      rounds++;
    }
  })();

  const g = new Fuzzer(SEED);
  let total = 0;
  let sessions = 0;
  const worker = async (): Promise<void> => {
    while (total < PDUS) {
      const n = 500 + g.int(3000);
      sessions++;
      total += await session(s.iscsi, g, n);
    }
  };
  await Promise.all(Array.from({ length: PARALLEL }, worker));
  done = true;
  await writer;
  t.ok(total >= PDUS, `${total} PDUs in ${sessions} sessions`);
  t.equal(hung, 0, 'every session ended: the server read everything or hung up');
  t.same(writerErrors, [], `the well-behaved writer saw no error in ${rounds} rounds`);
  t.equal(s.exitCode, null, 'server alive');
  const w = await IscsiWire.connect(s.iscsi);
  const l = await w.login(FUZZ_IQN, FUZZ_TARGET);
  t.equal(l.bhs[36], 0, 'still logs in');
  let st = -1;
  for (let k = 0; k < 3 && st !== 0; k++) {
    w.command(tur(), { edtl: 0 });
    st = (await w.recvReply())?.bhs[3] ?? -1;
  }
  t.equal(st, 0, 'and serves');
  w.close();
});
