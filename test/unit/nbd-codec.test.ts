import { IoStats } from '../../target/stats.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import t from 'tap';
import { BlockStore } from '../../cache/index.js';
import { ArrayFile } from '../../disks/index.js';
import { VolumeLayout } from '../../mapper/index.js';
import { Namespaces, freshFences } from '../../target/index.js';
import { NbdConnection, DEFAULT_LIMITS } from '../../target/nbd/connection.js';
import { CMD, CMD_FLAG, INFO, OPT, REP, SIMPLE_REPLY_MAGIC, STRUCTURED_REPLY_MAGIC } from '../../target/nbd/constants.js';
import { clientFlags, infoRequest, option, request } from '../helpers/nbd-frames.js';

const SIZE = 1024 * 1024;

async function backend(t: { teardown: (fn: () => unknown) => void }): Promise<{ namespaces: Namespaces; store: BlockStore }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bg-codec-'));
  const file = new ArrayFile(1, 'a', path.join(dir, 'a.img'), SIZE);
  await file.open(true);
  // Known content where the session reads: byte i of the first 64 KiB = i & 0xff.
  const pre = Buffer.alloc(65536);
  for (let i = 0; i < pre.length; i++) pre[i] = i & 0xff;
  await file.write(pre, 0, pre.length, 0);
  const store = new BlockStore();
  store.addArray(file);
  const namespaces = new Namespaces();
  namespaces.publish('h', [
    { host: 'h', target: 0, lun: 0, volume: { id: 1, layout: new VolumeLayout([{ arrayId: 1, offset: 0, length: SIZE }]), cachePolicy: 'none' }, volumeName: 'v', serial: 'S1', naa: '3000', readOnly: false, stats: new IoStats(), protocols: ['nbd'], fences: freshFences() },
  ]);
  t.teardown(async () => {
    await file.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { namespaces, store };
}

/** An in-memory transport: what the test feeds becomes 'data', what the server writes is collected. */
function transport(): { sock: Socket; out: Buffer[]; ended: Promise<void> } {
  const out: Buffer[] = [];
  let end!: () => void;
  const ended = new Promise<void>((r) => (end = r));
  const d = new Duplex({
    read() {},
    write(chunk: Buffer, _enc, cb) {
      out.push(Buffer.from(chunk));
      cb();
    },
    final(cb) {
      end();
      cb();
    },
  });
  d.on('close', () => end());
  return { sock: d as unknown as Socket, out, ended };
}

const payload = Buffer.alloc(512, 0xc3);
const session = Buffer.concat([
  clientFlags(3),
  option(OPT.STRUCTURED_REPLY),
  option(0x7654321, Buffer.from('unknown option data')),
  option(OPT.LIST),
  option(OPT.INFO, infoRequest('9/9')),
  option(OPT.GO, infoRequest('', [INFO.NAME, INFO.BLOCK_SIZE])),
  request(CMD.WRITE, 1, 131072, payload.length, CMD_FLAG.FUA, payload),
  request(CMD.READ, 2, 1000, 3000),
  request(CMD.READ, 3, SIZE - 10, 20),
  request(CMD.WRITE, 4, SIZE - 100, payload.length, 0, payload),
  request(CMD.FLUSH, 5, 0, 0),
  request(99, 6, 0, 0),
  request(CMD.READ, 7, 0, 16, 0x40),
  request(CMD.DISC, 8, 0, 0),
]);

interface Parsed {
  handshake: string[];
  replies: Map<number, string>;
}

/** Decodes the server's output into comparable records (replies keyed by cookie: order may vary). */
function parse(buf: Buffer): Parsed {
  let p = 18; // greeting
  const handshake: string[] = [];
  const replies = new Map<number, string>();
  let inTransmission = false;
  while (p < buf.length) {
    if (!inTransmission) {
      const opt = buf.readUInt32BE(p + 8);
      const type = buf.readUInt32BE(p + 12);
      const len = buf.readUInt32BE(p + 16);
      handshake.push(`${opt}:${type.toString(16)}:${buf.subarray(p + 20, p + 20 + len).toString('hex')}`);
      p += 20 + len;
      if (opt === OPT.GO && type === REP.ACK) inTransmission = true;
      continue;
    }
    const magic = buf.readUInt32BE(p);
    if (magic === SIMPLE_REPLY_MAGIC) {
      const cookie = Number(buf.readBigUInt64BE(p + 8));
      replies.set(cookie, `simple:${buf.readUInt32BE(p + 4)}`);
      p += 16;
    } else if (magic === STRUCTURED_REPLY_MAGIC) {
      const type = buf.readUInt16BE(p + 6);
      const cookie = Number(buf.readBigUInt64BE(p + 8));
      const len = buf.readUInt32BE(p + 16);
      replies.set(cookie, `chunk:${type}:${buf.subarray(p + 20, p + 20 + len).toString('hex')}`);
      p += 20 + len;
    } else {
      throw new Error(`bad reply magic at ${p}`);
    }
  }
  return { handshake, replies };
}

async function runSession(be: { namespaces: Namespaces; store: BlockStore }, chunks: Buffer[]): Promise<Parsed> {
  const { sock, out, ended } = transport();
  new NbdConnection(sock, 'h', be, DEFAULT_LIMITS, () => undefined);
  for (const c of chunks) sock.emit('data', c);
  await ended;
  return parse(Buffer.concat(out));
}

t.test('a whole session parses the same when split at every byte', async (t) => {
  const be = await backend(t);
  const whole = await runSession(be, [session]);
  // Sanity of the reference run itself.
  t.equal(whole.handshake.length, 10, 'every option answered (SR, unsup, list+ack, info err, GO infos+ack)');
  t.match(whole.handshake[1], new RegExp(`^${0x7654321}:80000001:`), 'unknown option gets ERR_UNSUP and sync is kept');
  t.match(whole.handshake[4], /:80000006:/, 'unknown export gets ERR_UNKNOWN');
  t.equal(whole.replies.get(1), 'simple:0', 'FUA write acknowledged');
  const expect = Buffer.alloc(3000);
  for (let i = 0; i < 3000; i++) expect[i] = (1000 + i) & 0xff;
  const off = Buffer.alloc(8);
  off.writeBigUInt64BE(1000n);
  t.equal(whole.replies.get(2), `chunk:1:${Buffer.concat([off, expect]).toString('hex')}`, 'read returns the file bytes as OFFSET_DATA');
  t.match(whole.replies.get(3), /^chunk:32769:00000016/, 'read past the end: structured EINVAL');
  t.match(whole.replies.get(4), /^chunk:32769:0000001c/, 'write past the end: structured ENOSPC');
  t.equal(whole.replies.get(5), 'simple:0', 'flush acknowledged');
  t.match(whole.replies.get(6), /^chunk:32769:00000016/, 'unknown command: EINVAL');
  t.match(whole.replies.get(7), /^chunk:32769:00000016/, 'unknown flag: EINVAL');
  t.equal(whole.replies.size, 7, 'DISC has no reply');

  for (let k = 1; k < session.length; k++) {
    const split = await runSession(be, [session.subarray(0, k), session.subarray(k)]);
    if (JSON.stringify([split.handshake, [...split.replies].sort()]) !== JSON.stringify([whole.handshake, [...whole.replies].sort()])) {
      t.fail(`split at byte ${k} differs`);
      return;
    }
  }
  t.pass(`identical for all ${session.length - 1} split points`);

  const bytes = [...session].map((b) => Buffer.from([b]));
  const single = await runSession(be, bytes);
  t.same([single.handshake, [...single.replies].sort()], [whole.handshake, [...whole.replies].sort()], 'one byte per chunk');
});

t.test('bad request magic disconnects; bad option magic disconnects; unknown client flags disconnect', async (t) => {
  const be = await backend(t);
  const go = Buffer.concat([clientFlags(3), option(OPT.GO, infoRequest(''))]);
  const badReq = request(CMD.READ, 1, 0, 512);
  badReq.writeUInt32BE(0xdeadbeef, 0);
  for (const [name, input] of [
    ['bad request magic', Buffer.concat([go, badReq])],
    ['bad option magic', Buffer.concat([clientFlags(3), Buffer.alloc(16, 0xee)])],
    ['unknown client flags', clientFlags(0x80)],
  ] as const) {
    const { sock, ended } = transport();
    let reason = '';
    new NbdConnection(sock, 'h', be, DEFAULT_LIMITS, (_c, r) => (reason = r));
    sock.emit('data', input);
    await ended;
    t.equal(reason, 'protocol-error', name);
  }
});

t.test('a host without the unit cannot open it by any name', async (t) => {
  const be = await backend(t);
  for (const name of ['', '0/0', 'v', 'h', '/0/0']) {
    const { sock, out, ended } = transport();
    new NbdConnection(sock, 'other', be, DEFAULT_LIMITS, () => undefined);
    sock.emit('data', Buffer.concat([clientFlags(3), option(OPT.GO, infoRequest(name)), option(OPT.ABORT)]));
    await ended;
    const p = parse(Buffer.concat(out));
    t.match(p.handshake[0], /^7:80000006:/, `'${name}' is unknown to another host`);
  }
});
