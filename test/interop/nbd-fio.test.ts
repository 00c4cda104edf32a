import t from 'tap';
import { startServer } from '../helpers/server.js';
import { requireTools, runOk } from '../helpers/tools.js';
import { fioVerifyArgs } from '../helpers/fio.js';

// fio's nbd engine opens one connection per job: 4 jobs = 4 connections on
// one volume (multi-conn), each writing its own region and verifying it.

requireTools('fio');

t.test('fio: 4 connections, random writes of mixed sizes, crc32c verify', async (t) => {
  const s = await startServer(t);
  const r = await runOk('fio', fioVerifyArgs(s.unixUri('demo', '0/0'), { jobs: 4, size: '16M', name: 'verify4', stateDir: s.dataDir }), { timeoutMs: 180_000 });
  const out = JSON.parse(r.stdout.slice(r.stdout.indexOf('{')));
  const job = out.jobs[0];
  t.equal(job.error, 0, 'no job error');
  t.ok(job.write.io_bytes >= 4 * 16 * 1024 * 1024 * 0.99, `wrote ${job.write.io_bytes} bytes`);
  t.ok(job.read.io_bytes > 0, 'verified by reading back');
  const info = JSON.parse((await runOk('nbdinfo', ['--json', s.unixUri('demo', '0/0')])).stdout);
  t.equal(info.exports[0].can_multi_conn, true);
});
