import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t, { type Test } from 'tap';
import { ReplyBatch, releaseSmall, smallBuffer } from '../../target/core/index.js';

// Small replies are carved from arenas that are used again once every carve
// in them is back; a reply's carve comes back through the write callback of
// its own socket write (ReplyBatch.sent). Over a real socket whose reader
// has stopped, some writes complete and others wait in the socket: the
// waiting ones must keep their bytes while the arenas are churned.

const BLOCK = 4096;

function pattern(i: number): Buffer {
  const b = Buffer.alloc(BLOCK);
  for (let p = 0; p < BLOCK; p += 4) b.writeUInt32BE((i * 0x9e3779b1 + p) >>> 0, p);
  return b;
}

async function socketPair(t: Test): Promise<{ server: net.Socket; client: net.Socket }> {
  // A unix socket: its kernel buffers hold ~200 KiB, where loopback TCP's grow to megabytes.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'reply-memory-'));
  const file = path.join(dir, 's');
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(file, r));
  const accepted = new Promise<net.Socket>((r) => srv.once('connection', r));
  const client = net.connect(file);
  client.pause();
  const server = await accepted;
  t.teardown(() => {
    client.destroy();
    server.destroy();
    srv.close();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return { server, client };
}

t.test('a reply carve goes back when its own write completes, not when an earlier one does', async (t) => {
  const { server, client } = await socketPair(t);
  const replies = new ReplyBatch();
  const n = 1024;
  // 4 MiB of replies into a socket nobody reads: the first ones reach the kernel, the rest wait.
  for (let i = 0; i < n; i++) {
    const c = smallBuffer(BLOCK);
    pattern(i).copy(c);
    replies.carved(c);
    server.write(c, replies.sent);
  }
  await new Promise((r) => setTimeout(r, 100));
  t.ok(server.writableLength > 0, 'some replies still wait in the socket');
  // Churn the arenas: carve and give back 24 MiB in 1 MiB rounds, overwriting whatever is handed out.
  for (let round = 0; round < 24; round++) {
    const held: Buffer[] = [];
    for (let k = 0; k < 256; k++) held.push(smallBuffer(BLOCK).fill(0xee));
    for (const h of held) releaseSmall(h);
  }
  client.resume();
  const got: Buffer[] = [];
  let have = 0;
  await new Promise<void>((resolve) => {
    client.on('data', (d: Buffer) => {
      got.push(d);
      have += d.length;
      if (have >= n * BLOCK) resolve();
    });
  });
  const all = Buffer.concat(got);
  let bad = 0;
  for (let i = 0; i < n; i++) if (!all.subarray(i * BLOCK, (i + 1) * BLOCK).equals(pattern(i))) bad++;
  t.equal(bad, 0, 'every reply arrived with its own bytes');
});

t.test('an arena whose carves are all back is used again; a carve given back twice is refused', async (t) => {
  // Fill the current arena to its end with carves given back at once (each is undone by the next), then a
  // run of held carves that crosses into the next arena.
  const first = smallBuffer(8);
  const held: Buffer[] = [first];
  for (let k = 0; k < 300; k++) held.push(smallBuffer(BLOCK));
  const arenas = new Set(held.map((b) => b.buffer));
  t.ok(arenas.size >= 2, 'the carves span arenas');
  for (const h of held) releaseSmall(h);
  // The arenas left behind are spares now: 600 more carves (2.4 MiB) come from them, not new memory.
  const again = new Set<ArrayBufferLike>();
  const more: Buffer[] = [];
  for (let k = 0; k < 600; k++) {
    const b = smallBuffer(BLOCK);
    more.push(b);
    again.add(b.buffer);
  }
  const reused = [...again].filter((a) => arenas.has(a)).length;
  t.ok(reused >= 2, `${reused} of the ${again.size} arenas used were used before`);
  for (const b of more) releaseSmall(b);
  t.throws(() => releaseSmall(more[0]!), /given back twice/, 'a second give-back of one carve is refused');
});
