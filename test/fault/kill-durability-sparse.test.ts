import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { killRounds } from '../helpers/kill-model.js';
import { startServer } from '../helpers/server.js';

// The kill -9 contract on a 64 TiB sparse array: blocks spread over the whole
// of two 32 TiB volumes, so every write lands in its own allocation-map leaf
// and the sidecar grows slot by slot while the kills land.

const TiB = 1024 ** 4;
const VOLUME = 32 * TiB;
const BLOCKS = 256;

// ext4 stops files at 16 TiB; tmpfs holds a 64 TiB sparse file.
const shm = '/dev/shm';
const skip = fs.existsSync(shm) ? false : 'needs /dev/shm (tmpfs) for a 64 TiB sparse file';

t.test('flushed writes to a 64 TiB array survive SIGKILL; unwritten space reads zeroes', { skip }, async (t) => {
  const dataDir = fs.mkdtempSync(path.join(fs.existsSync(shm) ? shm : os.tmpdir(), 'blockgate-kill64-'));
  t.teardown(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  const s = await startServer(t, { dataDir, demo: false, args: ['--cache-size', '32M', '--overcommit', '1000000'] });
  await s.call('POST', '/v1/arrays', { name: 'big', size: '64T' });
  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/hosts', { name: 'h1', farm: 'f' });
  for (const [i, name] of ['huge0', 'huge1'].entries()) {
    await s.call('POST', '/v1/volumes', { name, size: '32T', farm: 'f', layout: [{ array: 'big', size: '32T' }] });
    await s.call('POST', '/v1/bindings', { volume: name, host: 'h1', target: 0, lun: i });
  }
  // Spread over each volume, a little off each leaf's start, last block at the very end.
  const stride = VOLUME / BLOCKS;
  const offset = (b: number): number => (b === BLOCKS - 1 ? VOLUME - 4096 : b * stride + (b % 13) * 4096);
  await killRounds(t, s, { host: 'h1', exports: ['0/0', '0/1'], rounds: 6, blocks: BLOCKS, offset, seed: 64 });
  const map = fs.statSync(path.join(dataDir, 'arrays', 'big.img.alloc'));
  t.ok(map.size < 8 * 1024 * 1024, `the 64 TiB array's map file is ${map.size} bytes (one slot per leaf written)`);
});
