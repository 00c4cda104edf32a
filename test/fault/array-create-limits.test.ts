import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { startServer, type TestServer } from '../helpers/server.js';
import type { TapTest } from '../helpers/wait.js';

const T = 1024 ** 4;

/** Nothing of a refused create may remain: no file (image, map, probe) and no row. */
async function nothingLeft(t: TapTest, s: TestServer, name: string): Promise<void> {
  const left = fs.readdirSync(path.join(s.dataDir, 'arrays')).filter((f) => f.includes(name));
  t.same(left, [], `no file of '${name}' is left in DATA/arrays`);
  const arrays = (await s.call('GET', '/v1/arrays')).arrays as { name: string }[];
  t.notOk(arrays.some((a) => a.name === name), `no array row '${name}'`);
}

t.test('arrays larger than the file system or the allocation map can hold are refused before anything is made', async (t) => {
  const s = await startServer(t, { demo: false });

  const r16 = await s.request('POST', '/v1/arrays', { name: 'big16', size: '16T' });
  t.equal(r16.status, 400, `16T is refused as a bad request: ${r16.body.error?.message}`);
  t.equal(r16.body.error.code, 'BAD_REQUEST');
  // ext4 says EFBIG at 16 TiB; a file system that would hold it still meets the thin-provisioning limit.
  t.match(r16.body.error.message, /EFBIG|overcommit/);
  await nothingLeft(t, s, 'big16');

  // Past the map's own limit (1 PiB), whatever the file system holds.
  const r2p = await s.request('POST', '/v1/arrays', { name: 'big2p', size: `${2 * 1024}T` });
  t.equal(r2p.status, 400, `2 PiB is refused: ${r2p.body.error?.message}`);
  t.match(r2p.body.error.message, /largest supported array|EFBIG/);
  await nothingLeft(t, s, 'big2p');

  // …and the appliance still starts afterwards (it aborted on every start after a failed 8T create).
  await s.stop();
  await s.start();
  t.equal((await s.request('GET', '/v1/health', undefined, null)).body.status, 'ok', 'restart after the refused creates is clean');
  const ok = await s.call('POST', '/v1/arrays', { name: 'fine', size: '64M' });
  t.equal(ok.size, 64 * 1024 * 1024, 'an ordinary array is still created');
});

t.test('an 8 TiB array (a 2 GiB map before) is created and attached with a map the size of a header', async (t) => {
  const s = await startServer(t, { demo: false, args: ['--overcommit', '1000000'] });
  const a = await s.call('POST', '/v1/arrays', { name: 'big8', size: '8T' });
  t.equal(a.size, 8 * T);
  t.equal(a.state, 'online');
  t.equal(fs.statSync(path.join(s.dataDir, 'arrays', 'big8.img.alloc')).size, 4096, 'the map file is its header');
  await s.stop();
  await s.start();
  const again = (await s.call('GET', '/v1/arrays')).arrays as { name: string; state: string }[];
  t.same(again.map((x) => [x.name, x.state]), [['big8', 'online']], 'attached again at start');
});

t.test('an array file with a broken map, left by an older build, does not stop the appliance starting', async (t) => {
  const s = await startServer(t, { demo: false });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '32M' });
  await s.stop();
  // What a failed 8T create used to leave: the sparse image and a partial map (no header: not a map at all).
  const img = path.join(s.dataDir, 'arrays', 'old8t.img');
  fs.writeFileSync(img, '');
  fs.truncateSync(img, 8 * T);
  fs.writeFileSync(`${img}.alloc`, Buffer.alloc(4096 + 65536));
  await s.start();
  const h = (await s.request('GET', '/v1/health', undefined, null)).body;
  t.equal(h.status, 'ok', 'the appliance starts');
  const arrays = (await s.call('GET', '/v1/arrays')).arrays as { name: string; state: string }[];
  t.same(
    arrays.map((a) => [a.name, a.state]),
    [['a0', 'online']],
    'the oversized file is not adopted; the real array serves',
  );
  t.match(s.log, /old8t\.img not adopted/, 'and the log says why');
  const scan = await s.call('POST', '/v1/discovery');
  t.equal(scan.skipped?.[0]?.file, img, 'discovery reports the file it skipped');
});
