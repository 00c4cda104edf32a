import t from 'tap';
import { crc32c } from '../../target/iscsi/crc32c.js';
import { Login, LOGIN_STATUS, DEFAULT_TARGET_PARAMS, type LoginDirectory, type LoginRequest } from '../../target/iscsi/login.js';
import { chapResponse } from '../../target/iscsi/chap.js';
import { decodeLun, parseTargetIqn, targetIqn, isValidIqn } from '../../target/iscsi/naming.js';
import { PduReader, frame, parseKeys, snLess, type Pdu } from '../../target/iscsi/pdu.js';
import { LARGE_MIN, releaseLarge } from '../../target/core/index.js';
import { prng } from '../helpers/prng.js';

t.test('CRC32C matches the RFC 3720 B.4 vectors', async (t) => {
  const le = (n: number): string => {
    const b = Buffer.alloc(4);
    b.writeUInt32LE(n);
    return b.toString('hex');
  };
  t.equal(le(crc32c(Buffer.alloc(32))), 'aa36918a');
  t.equal(le(crc32c(Buffer.alloc(32, 0xff))), '43aba862');
  t.equal(le(crc32c(Buffer.from([...Array(32).keys()]))), '4e79dd46');
  t.equal(crc32c(Buffer.from('123456789')), 0xe3069283);
  // Incremental equals one-shot, at every split (the slice-by-8 path and the tail path).
  const r = prng(7);
  const data = Buffer.from(Array.from({ length: 103 }, () => Math.floor(r() * 256)));
  const whole = crc32c(data);
  for (let i = 0; i <= data.length; i++) t.equal(crc32c(data, i, data.length, crc32c(data, 0, i)), whole);
});

/** A SCSI-Command-like PDU with AHS and a data segment whose length is not a multiple of 4. */
function samplePdu(hd: boolean, dd: boolean, dsl: number, ahsWords: number): Buffer {
  const bhs = Buffer.alloc(48 + ahsWords * 4);
  bhs[0] = 0x01;
  bhs[1] = 0xa1;
  bhs.writeUInt32BE(0x1234, 16);
  for (let i = 48; i < bhs.length; i++) bhs[i] = i;
  const data = Buffer.from(Array.from({ length: dsl }, (_, i) => (i * 7) & 0xff));
  const parts = frame(bhs.subarray(0, 48), data, false, dd);
  // frame() writes BHS only; put the AHS length and bytes in for the reader.
  const head = Buffer.from(bhs);
  head[4] = ahsWords;
  const out: Buffer[] = [head];
  if (hd) {
    const d = Buffer.alloc(4);
    d.writeUInt32LE(crc32c(head));
    out.push(d);
  }
  out.push(...parts.slice(1));
  return Buffer.concat(out);
}

t.test('PduReader parses a PDU split at every byte, with and without digests', async (t) => {
  for (const [hd, dd] of [
    [false, false],
    [true, true],
    [true, false],
  ] as const) {
    for (const [dsl, ahs] of [
      [0, 0],
      [5, 0],
      [301, 1],
      [13, 2],
    ] as const) {
      const wire = samplePdu(hd, dd, dsl, ahs);
      const two = Buffer.concat([wire, wire]);
      for (let cut = 0; cut <= two.length; cut++) {
        const got: { itt: number; data: string; ahs: number; bad: boolean }[] = [];
        const r = new PduReader(
          1 << 20,
          (p: Pdu) => got.push({ itt: p.bhs.readUInt32BE(16), data: p.data.toString('hex'), ahs: p.ahs.length, bad: p.dataDigestBad }),
          (e) => t.fail(`framing error ${e}`),
        );
        r.headerDigest = hd;
        r.dataDigest = dd;
        r.feed(two.subarray(0, cut));
        r.feed(two.subarray(cut));
        if (got.length !== 2) {
          t.fail(`split at ${cut} (hd=${hd} dd=${dd} dsl=${dsl}): ${got.length} PDUs`);
          return;
        }
        const want = Buffer.from(Array.from({ length: dsl }, (_, i) => (i * 7) & 0xff)).toString('hex');
        for (const g of got) {
          if (g.itt !== 0x1234 || g.data !== want || g.ahs !== ahs * 4 || g.bad) {
            t.fail(`split at ${cut}: wrong PDU ${JSON.stringify(g).slice(0, 200)}`);
            return;
          }
        }
      }
      t.pass(`hd=${hd} dd=${dd} dsl=${dsl} ahs=${ahs}: every split`);
    }
  }
  // Byte at a time.
  const wire = samplePdu(true, true, 999, 1);
  let n = 0;
  const r = new PduReader(1 << 20, () => n++, () => t.fail('framing'));
  r.headerDigest = r.dataDigest = true;
  for (let i = 0; i < wire.length; i++) r.feed(wire.subarray(i, i + 1));
  t.equal(n, 1, 'one byte per chunk');
});

t.test('PduReader over lent chunks: a header whose data spans reads is kept, in-place data is marked transient', async (t) => {
  // With the shared socket read buffer, each chunk is overwritten by the next read: the reader must copy what
  // it keeps across feed() calls, and say which data segments a caller must copy to keep.
  for (const [hd, dd] of [
    [false, false],
    [true, true],
  ] as const) {
    for (const [dsl, ahs] of [
      [0, 0],
      [301, 1],
      [4096, 0],
    ] as const) {
      const wire = samplePdu(hd, dd, dsl, ahs);
      const two = Buffer.concat([wire, wire]);
      const want = Buffer.from(Array.from({ length: dsl }, (_, i) => (i * 7) & 0xff)).toString('hex');
      for (let cut = 0; cut <= two.length; cut += cut < 200 ? 1 : 97) {
        const got: { itt: number; data: string; transient: boolean }[] = [];
        const r = new PduReader(
          1 << 20,
          (p: Pdu) => got.push({ itt: p.bhs.readUInt32BE(16), data: p.data.toString('hex'), transient: p.transient }),
          (e) => t.fail(`framing error ${e}`),
        );
        r.headerDigest = hd;
        r.dataDigest = dd;
        r.borrowed = true;
        const lent = Buffer.alloc(two.length);
        for (const part of [two.subarray(0, cut), two.subarray(cut)]) {
          part.copy(lent, 0);
          r.feed(lent.subarray(0, part.length));
          lent.fill(0xa5);
        }
        const bad = got.filter((g) => g.itt !== 0x1234 || g.data !== want);
        if (got.length !== 2 || bad.length > 0) {
          t.fail(`split at ${cut} (hd=${hd} dsl=${dsl}): ${got.length} PDUs, ${bad.length} wrong`);
          return;
        }
        // A data segment inside the chunk that ends its header is a view of it; one that starts a chunk later or
        // spans chunks is gathered into the reader's own memory.
        const segStart = 48 + ahs * 4 + (hd ? 4 : 0);
        const inOne = (pdu: number): boolean => cut < pdu + segStart || cut >= pdu + wire.length;
        const expect = [inOne(0), inOne(wire.length)].map((whole) => dsl > 0 && whole);
        if (got[0]!.transient !== expect[0] || got[1]!.transient !== expect[1]) {
          t.fail(`split at ${cut} (dsl=${dsl}): transient ${got[0]!.transient},${got[1]!.transient}, expected ${expect}`);
          return;
        }
      }
      t.pass(`hd=${hd} dd=${dd} dsl=${dsl} ahs=${ahs}: every split, chunks overwritten after each feed`);
    }
  }
});

t.test('PduReader refuses bad header digests and oversize segments, flags bad data digests', async (t) => {
  const wire = samplePdu(true, true, 100, 0);
  const errs: string[] = [];
  const pdus: Pdu[] = [];
  const mk = (max: number): PduReader => {
    const r = new PduReader(max, (p) => pdus.push(p), (e) => errs.push(e));
    r.headerDigest = r.dataDigest = true;
    return r;
  };
  const badHdr = Buffer.from(wire);
  badHdr[20] ^= 1;
  mk(1 << 20).feed(badHdr);
  t.same(errs, ['header-digest']);
  mk(64).feed(wire);
  t.same(errs, ['header-digest', 'data-too-long']);
  const badData = Buffer.from(wire);
  badData[60] ^= 1;
  mk(1 << 20).feed(badData);
  t.equal(pdus.length, 1);
  t.equal(pdus[0]!.dataDigestBad, true);
  // Padding is covered by the data digest.
  const badPad = Buffer.from(samplePdu(true, true, 99, 0));
  badPad[52 + 99] ^= 1;
  mk(1 << 20).feed(badPad);
  t.equal(pdus[1]!.dataDigestBad, true);
});

t.test('names, LUN fields, keys, serial numbers', async (t) => {
  t.equal(targetIqn('web-1', 3), 'iqn.2026-11.io.blockgate:web-1.t3');
  t.same(parseTargetIqn('iqn.2026-11.io.blockgate:web-1.t3'), { host: 'web-1', target: 3 });
  t.same(parseTargetIqn('iqn.2026-11.io.blockgate:a.t1.t2'), { host: 'a.t1', target: 2 });
  t.equal(parseTargetIqn('iqn.2026-11.io.blockgate:web-1.t256'), null);
  t.equal(parseTargetIqn('iqn.2026-11.io.blockgate:web-1.t01'), null);
  t.equal(parseTargetIqn('iqn.2024-01.other:web-1.t0'), null);
  t.ok(isValidIqn('iqn.2026-11.io.blockgate:demo-initiator'));
  t.notOk(isValidIqn('IQN.nope'));
  const l = Buffer.alloc(16);
  l[9] = 7;
  t.equal(decodeLun(l), 7);
  l[8] = 0x41;
  l[9] = 0x02;
  t.equal(decodeLun(l), 0x102, 'flat space addressing');
  l[8] = 0x80;
  t.equal(decodeLun(l), -1);
  t.same(parseKeys(Buffer.from('A=1\0B=x=y\0')).keys, [
    ['A', '1'],
    ['B', 'x=y'],
  ]);
  t.equal(parseKeys(Buffer.from('novalue\0')).bad, true);
  t.ok(snLess(0xffffffff, 0), 'wraps');
  t.notOk(snLess(5, 5));
});

const dir: LoginDirectory = {
  initiator: (name) =>
    name === 'iqn.2026-01.test:open'
      ? { host: 'alpha', chap: null, mutualChap: null }
      : name === 'iqn.2026-01.test:chap'
        ? { host: 'beta', chap: { username: 'u', secret: 'secret-secret' }, mutualChap: { username: 'tgt', secret: 'target-secret' } }
        : null,
  hasTarget: (host, t) => (host === 'alpha' && t === 0) || (host === 'beta' && t === 1),
};

const req = (csg: number, nsg: number, transit: boolean, keys: Record<string, string>): LoginRequest => ({
  transit,
  cont: false,
  csg,
  nsg,
  versionMax: 0,
  versionMin: 0,
  tsih: 0,
  keys: Object.entries(keys),
  malformed: false,
});

t.test('login negotiation: operational keys, declarations, refusals', async (t) => {
  const l = new Login(dir, DEFAULT_TARGET_PARAMS, 1);
  const r = l.step(
    req(1, 3, true, {
      InitiatorName: 'iqn.2026-01.test:open',
      SessionType: 'Normal',
      TargetName: 'iqn.2026-11.io.blockgate:alpha.t0',
      HeaderDigest: 'None,CRC32C',
      DataDigest: 'CRC32C,None',
      MaxBurstLength: '16776192',
      FirstBurstLength: '262144',
      MaxRecvDataSegmentLength: '131072',
      InitialR2T: 'No',
      ImmediateData: 'Yes',
      MaxOutstandingR2T: '16',
      ErrorRecoveryLevel: '2',
      MaxConnections: '8',
      DefaultTime2Wait: '0',
      DefaultTime2Retain: '60',
      'X-com.example.Foo': 'bar',
    }),
  );
  t.equal(r.status, 0);
  t.equal(r.done, true);
  const k = Object.fromEntries(r.keys);
  t.equal(k.HeaderDigest, 'None', 'first acceptable value of the offer');
  t.equal(k.DataDigest, 'CRC32C');
  t.equal(k.MaxBurstLength, String(DEFAULT_TARGET_PARAMS.maxBurstLength), 'min of offers');
  t.equal(k.MaxOutstandingR2T, String(DEFAULT_TARGET_PARAMS.maxOutstandingR2T));
  t.equal(k.ErrorRecoveryLevel, '0');
  t.equal(k.MaxConnections, '1');
  t.equal(k.InitialR2T, 'No');
  t.equal(k.MaxRecvDataSegmentLength, String(DEFAULT_TARGET_PARAMS.maxRecvDataSegmentLength), 'our own is declared');
  t.equal(k.TargetPortalGroupTag, '1');
  t.equal(k['X-com.example.Foo'], 'NotUnderstood');
  t.equal(l.params.sendDataSegmentLength, 131072);
  t.equal(l.params.dataDigest, true);

  const refuse = (keys: Record<string, string>, status: number, msg: string): void => {
    t.equal(new Login(dir, DEFAULT_TARGET_PARAMS, 1).step(req(1, 3, true, keys)).status, status, msg);
  };
  refuse({ InitiatorName: 'iqn.2026-01.test:stranger', TargetName: 'iqn.2026-11.io.blockgate:alpha.t0' }, LOGIN_STATUS.AUTH_FAILED, 'unknown initiator');
  refuse({ InitiatorName: 'iqn.2026-01.test:open', TargetName: 'iqn.2026-11.io.blockgate:beta.t1' }, LOGIN_STATUS.AUTH_FAILED, "another host's target");
  refuse({ InitiatorName: 'iqn.2026-01.test:open', TargetName: 'iqn.2026-11.io.blockgate:alpha.t9' }, LOGIN_STATUS.AUTH_FAILED, 'no such target');
  refuse({ InitiatorName: 'iqn.2026-01.test:chap', TargetName: 'iqn.2026-11.io.blockgate:beta.t1' }, LOGIN_STATUS.AUTH_FAILED, 'CHAP host skipping security');
  refuse({ TargetName: 'iqn.2026-11.io.blockgate:alpha.t0' }, LOGIN_STATUS.MISSING_PARAMETER, 'no InitiatorName');
  refuse({ InitiatorName: 'iqn.2026-01.test:open', SessionType: 'Weird' }, LOGIN_STATUS.SESSION_TYPE_UNSUPPORTED, 'session type');
  t.equal(new Login(dir, DEFAULT_TARGET_PARAMS, 1).step({ ...req(1, 3, true, { InitiatorName: 'iqn.2026-01.test:open', SessionType: 'Discovery' }), versionMin: 2 }).status, LOGIN_STATUS.UNSUPPORTED_VERSION);
  const d = new Login(dir, DEFAULT_TARGET_PARAMS, 1).step(req(1, 3, true, { InitiatorName: 'iqn.2026-01.test:open', SessionType: 'Discovery' }));
  t.equal(d.status, 0, 'discovery needs no target');
  t.notOk(Object.fromEntries(d.keys).TargetPortalGroupTag, 'TPGT only in normal sessions');
});

t.test('login CHAP: one-way and mutual, wrong responses refused', async (t) => {
  const run = (respond: (id: number, ch: Buffer) => Record<string, string>): { status: number; keys: Record<string, string> } => {
    const l = new Login(dir, DEFAULT_TARGET_PARAMS, 1);
    const a = l.step(req(0, 1, false, { InitiatorName: 'iqn.2026-01.test:chap', SessionType: 'Normal', TargetName: 'iqn.2026-11.io.blockgate:beta.t1', AuthMethod: 'CHAP,None' }));
    t.equal(Object.fromEntries(a.keys).AuthMethod, 'CHAP');
    const b = Object.fromEntries(l.step(req(0, 1, false, { CHAP_A: '5' })).keys);
    t.equal(b.CHAP_A, '5');
    const c = l.step(req(0, 1, true, respond(Number(b.CHAP_I), Buffer.from(b.CHAP_C!.slice(2), 'hex'))));
    if (c.status !== 0) return { status: c.status, keys: {} };
    t.equal(c.transit, true, 'leaves security once authenticated');
    const d = l.step(req(1, 3, true, { MaxRecvDataSegmentLength: '8192' }));
    return { status: d.status, keys: Object.fromEntries(c.keys) };
  };
  const ok = run((id, ch) => ({ CHAP_N: 'u', CHAP_R: '0x' + chapResponse(id, 'secret-secret', ch).toString('hex') }));
  t.equal(ok.status, 0, 'one-way CHAP');
  t.equal(run((id, ch) => ({ CHAP_N: 'u', CHAP_R: '0x' + chapResponse(id, 'wrong-secret', ch).toString('hex') })).status, LOGIN_STATUS.AUTH_FAILED, 'wrong secret');
  t.equal(run((id, ch) => ({ CHAP_N: 'v', CHAP_R: '0x' + chapResponse(id, 'secret-secret', ch).toString('hex') })).status, LOGIN_STATUS.AUTH_FAILED, 'wrong name');
  t.equal(run(() => ({ CHAP_N: 'u', CHAP_R: 'zz' })).status, LOGIN_STATUS.AUTH_FAILED, 'malformed response');
  const myChallenge = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
  const mutual = run((id, ch) => ({ CHAP_N: 'u', CHAP_R: '0x' + chapResponse(id, 'secret-secret', ch).toString('hex'), CHAP_I: '77', CHAP_C: '0x' + myChallenge.toString('hex') }));
  t.equal(mutual.status, 0, 'mutual CHAP');
  t.equal(mutual.keys.CHAP_N, 'tgt');
  t.equal(mutual.keys.CHAP_R, '0x' + chapResponse(77, 'target-secret', myChallenge).toString('hex'), 'target proves its secret');
  t.equal(
    run((id, ch) => ({ CHAP_N: 'u', CHAP_R: '0x' + chapResponse(id, 'secret-secret', ch).toString('hex'), CHAP_I: String(id), CHAP_C: '0x' + ch.toString('hex') })).status,
    LOGIN_STATUS.AUTH_FAILED,
    'a reflected challenge is refused',
  );
});

t.test('PduReader gathers a large segment spanning reads into a pooled buffer, and reuses it once given back', async (t) => {
  const seg = 256 * 1024;
  const got: Pdu[] = [];
  const r = new PduReader(seg, (p) => got.push(p), () => t.fail('framing'));
  const bhs = Buffer.alloc(48);
  bhs[0] = 0x05;
  const send = (fill: number): void => {
    const wire = Buffer.concat(frame(bhs, Buffer.alloc(seg, fill), false, false));
    for (let at = 0; at < wire.length; at += 65536) r.feed(wire.subarray(at, at + 65536));
  };
  send(1);
  t.equal(got.length, 1);
  const own = got[0]!.own;
  t.ok(own && own.length >= LARGE_MIN, 'gathered into a pooled buffer');
  t.equal(got[0]!.data.buffer, own!.buffer, 'data is a view of it');
  releaseLarge(own!);
  send(2);
  t.equal(got[1]!.own, own, 'the next gathered segment reuses it');
  t.equal(got[1]!.data[0], 2);
  // A segment that arrives in one read stays in place: nothing to give back.
  const whole = Buffer.concat(frame(bhs, Buffer.alloc(seg, 3), false, false));
  r.feed(whole);
  t.equal(got[2]!.own, undefined, 'in place, not pooled');
});
