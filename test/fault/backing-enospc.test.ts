import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { RawNbd } from '../helpers/nbd-client.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools, run } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

requireTools('qemu-io');

const ENOSPC = 28;
const M = 1024 * 1024;

/**
 * DATA/arrays on its own 64 MiB tmpfs (the control database stays on the
 * ordinary file system, so the API keeps answering while the arrays' file
 * system is full).
 */
function smallArraysFs(t: { teardown: (fn: () => unknown) => void }): string {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-enospc-'));
  const arrays = path.join(dataDir, 'arrays');
  fs.mkdirSync(arrays);
  const m = spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=64m', 'tmpfs', arrays], { encoding: 'utf8' });
  if (m.status !== 0) {
    fs.rmSync(dataDir, { recursive: true, force: true });
    throw new Error(`mount -t tmpfs failed: ${m.stderr}`);
  }
  // Registered before the server's stop, so it runs after it (teardowns run in reverse order).
  t.teardown(() => {
    spawnSync('umount', [arrays]);
    fs.rmSync(dataDir, { recursive: true, force: true });
  });
  return dataDir;
}

/** Whether this machine lets us mount a tmpfs (root or CAP_SYS_ADMIN); probed once. */
function canMountTmpfs(): boolean {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-mnt-'));
  try {
    if (spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', dir]).status !== 0) return false;
    spawnSync('umount', [dir]);
    return true;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

const events = async (s: TestServer, type: string): Promise<any[]> =>
  ((await s.call('GET', '/v1/events?since=0&limit=1000')).events as any[]).filter((e) => e.type === type);

const skip = canMountTmpfs() ? false : 'mount -t tmpfs is not available here (needs root or CAP_SYS_ADMIN)';

t.test('a full backing file system: ENOSPC to NBD hosts, 507 from the API, one log line per burst, capacity warnings', { skip }, async (t) => {
  const dataDir = smallArraysFs(t);
  const s = await startServer(t, { dataDir, demo: false, args: ['--check-interval', '100', '--cache-size', '32M'] });
  const arraysDir = path.join(dataDir, 'arrays');

  // Thin provisioning has a limit: 1 TiB on 64 MiB is refused before anything is made.
  const huge = await s.request('POST', '/v1/arrays', { name: 'huge', size: '1T' });
  t.equal(huge.status, 507, 'a 1 TiB array on a 64 MiB file system is refused');
  t.equal(huge.body.error.code, 'NO_SPACE');
  t.match(huge.body.error.message, /overcommit/);
  t.same(fs.readdirSync(arraysDir), [], 'and leaves no file behind');
  t.same((await s.call('GET', '/v1/arrays')).arrays, [], 'and no array row');

  await s.call('POST', '/v1/arrays', { name: 'small', size: '128M' });
  const a = await s.call('GET', '/v1/arrays/small');
  t.equal(a.size, 128 * M, 'virtual size');
  t.equal(a.fileSystem.size, 64 * M, "the backing file system's size is reported");
  t.ok(a.fileSystem.available <= 64 * M && a.fileSystem.available > 60 * M, 'and its free space');
  t.ok(a.allocated < M, 'a new thin array allocates almost nothing');

  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/hosts', { name: 'h1', farm: 'f' });
  await s.call('POST', '/v1/volumes', { name: 'big', size: '128M', farm: 'f', layout: [{ array: 'small', size: '128M' }] });
  await s.call('POST', '/v1/bindings', { volume: 'big', host: 'h1', target: 0, lun: 0 });

  // Durable writes (FUA) until the file system is full: the ones that do not fit get ENOSPC, nothing else.
  const c = await RawNbd.connect(s.socket('h1'), '0/0');
  const errnos = new Set<number>();
  try {
    for (let i = 0; i < 80; i++) {
      const e = await c.write(i * M, Buffer.alloc(M, 0x42), true).then(() => 0, (err: { errno?: number }) => err.errno ?? -1);
      errnos.add(e);
    }
    t.ok(errnos.has(0), 'writes that fit succeed');
    t.ok(errnos.has(ENOSPC), 'writes that do not fit get ENOSPC');
    t.same([...errnos].filter((e) => e !== 0 && e !== ENOSPC), [], 'and never EIO');
    // A large write-back write goes around the cache to the array: the ENOSPC comes with its reply.
    const le = await c.write(110 * M, Buffer.alloc(M, 0x43)).then(() => 0, (err: { errno?: number }) => err.errno);
    t.equal(le, ENOSPC, 'a 1 MiB write-back write that does not fit gets ENOSPC at once');
    // A small one is acknowledged into the cache, then the FLUSH tells the truth.
    await c.write(120 * M, Buffer.alloc(128 * 1024, 0x43));
    const fe = await c.flush().then(() => 0, (err: { errno?: number }) => err.errno);
    t.equal(fe, ENOSPC, 'a FLUSH whose write-back does not fit gets ENOSPC');
  } finally {
    c.close();
  }

  const q = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x44 100M 1M', '-c', 'flush', s.unixUri('h1', '0/0')]);
  t.match(q.stdout + q.stderr, /No space left on device/, 'a stock client reports "No space left on device"');

  // A full file system is a condition, not a failure: the array stays online, health warns.
  const h = await waitFor('a capacity warning', async () => {
    const b = (await s.request('GET', '/v1/health', undefined, null)).body;
    return b.warnings.some((w: any) => w.level === 95) ? b : undefined;
  });
  t.equal(h.status, 'ok', 'ENOSPC does not fail the array');
  t.equal((await s.call('GET', '/v1/arrays/small')).state, 'online');
  const levels = (await events(s, 'array.capacity')).map((e) => e.data.level);
  t.ok(levels.includes(95), `capacity events crossed 95% (levels ${levels.join(', ')})`);

  // One error line for the whole burst of ENOSPC, naming array, volume and errno.
  const lines = s.log.split('\n').filter((l) => l.includes('"op":"array.io-error"'));
  t.equal(lines.length, 1, 'one log line for the burst, not one per failed I/O');
  t.match(lines[0], /"array":"small"/);
  t.match(lines[0], /"volumes":\["big"\]/);
  t.match(lines[0], /"errno":"ENOSPC"/);
  t.equal((await events(s, 'array.io-error')).length, 1, 'one io-error event for the burst');

  // The API says 507 for the full file system, never 500.
  const more = await s.request('POST', '/v1/arrays', { name: 'more', size: '4M' });
  t.equal(more.status, 507, 'creating an array on the full file system is 507');
  t.equal(more.body.error.code, 'NO_SPACE');
  t.notOk(fs.readdirSync(arraysDir).some((f) => f.startsWith('more')), 'and leaves nothing behind');
});
