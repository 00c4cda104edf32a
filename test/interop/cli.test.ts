import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { M, ioOk, qemuIo } from '../helpers/api.js';
import { cli, cliOk } from '../helpers/cli.js';
import { TOKEN, startServer } from '../helpers/server.js';
import { requireTools } from '../helpers/tools.js';

requireTools('qemu-io');

t.test('help and usage need no appliance', async (t) => {
  const top = await cli(null, ['--help']);
  t.equal(top.code, 0);
  for (const noun of ['volume', 'host', 'array', 'farm', 'bind', 'map', 'unmap', 'unbind', 'job', 'trace', 'resolve', 'image', 'vm', 'config', 'serve']) {
    t.match(top.stdout, new RegExp(`\\n  ${noun}\\b`), `--help lists ${noun}`);
  }
  const vol = await cli(null, ['volume', '--help']);
  t.equal(vol.code, 0);
  for (const v of ['list', 'show', 'create', 'configure', 'break', 'deallocate', 'resize', 'scrub', 'copy', 'snap', 'delete']) t.match(vol.stdout, new RegExp(`\\n  ${v}\\b`));
  const scrub = await cli(null, ['volume', 'scrub', '--help']);
  t.match(scrub.stdout, /--pattern/);
  t.match(scrub.stdout, /--no-wait/);
  t.equal((await cli(null, ['no-such-noun'])).code, 2, 'unknown command: usage exit code');
  t.equal((await cli(null, ['volume', 'create', 'x'])).code, 2, 'missing --size: usage exit code');
  const unreachable = await cli(null, ['volume', 'list'], { BLOCKGATE_API: 'http://127.0.0.1:9' });
  t.equal(unreachable.code, 6, 'unreachable API');
  t.match(unreachable.stderr, /^blockgate: cannot reach the control API/);
});

t.test('the README lifecycle walk with the CLI alone', async (t) => {
  // copy-image fails on purpose in this appliance, to see a failed job's exit code.
  const s = await startServer(t, { demo: false, env: { BLOCKGATE_FAULTS: 'copy-image' } });
  const bg = (...args: string[]) => cliOk(s, args);
  const bgJson = async (...args: string[]) => (await cliOk(s, [...args, '--json'])).json;

  // Flags beat the environment; the data directory gives the address (run.json).
  const flags = await cli(s, ['--api', s.api, '--token', TOKEN, 'farm', 'create', 'acme'], { BLOCKGATE_API: 'http://127.0.0.1:9', BLOCKGATE_API_TOKEN: 'wrong' });
  t.equal(flags.code, 0, flags.stderr);
  const viaDir = await cli(s, ['farm', 'list', '--json', '--data-dir', s.dataDir], { BLOCKGATE_API: '' });
  t.same(viaDir.json.farms.map((f: any) => f.name), ['acme']);
  const badToken = await cli(s, ['farm', 'list', '--token', 'nope']);
  t.equal(badToken.code, 5, 'wrong token: unauthorized');

  await bg('array', 'create', 'a0', '--size', '64M');
  await bg('array', 'create', 'a1', '--size', '64M', '--class', 'std');
  const arrays = await bgJson('array', 'list');
  t.same(arrays.arrays.map((a: any) => [a.name, a.size]), [['a0', 64 * M], ['a1', 64 * M]]);
  const table = await bg('array', 'list');
  t.match(table.stdout, /^NAME\s+CLASS\s+STATE\s+SIZE\s+USED\s+FREE\s+ALLOCATED\s+FS FREE\s+FILE\n/);
  t.match(table.stdout, /a0\s+std\s+online\s+64M\s+0B\s+64M\s+\S+\s+\S+ \([\d.]+% used\)/);

  await bg('host', 'create', 'web1', '--farm', 'acme');
  t.equal((await cli(s, ['host', 'create', 'web1', '--farm', 'acme'])).code, 4, 'duplicate host: conflict');

  // 96M does not fit one 64M array: a meta volume, stopped in allocated.
  const v = await bgJson('volume', 'create', 'web1-boot', '--size', '96M', '--farm', 'acme', '--no-configure');
  t.equal(v.state, 'allocated');
  t.equal(v.meta, true);
  t.equal(v.size, 96 * M);

  const refused = await cli(s, ['bind', 'web1-boot', 'web1', '--unit', '0/0']);
  t.equal(refused.code, 4, 'bind in allocated: illegal state');
  t.match(refused.stderr, /^blockgate: cannot bind volume 'web1-boot' in state 'allocated'/);
  t.equal((await cli(s, ['bind', 'web1-boot', 'web1', '--unit', 'zero'])).code, 2, 'bad unit: usage');

  t.equal((await bgJson('volume', 'configure', 'web1-boot')).state, 'configured');
  const b = await bgJson('bind', 'web1-boot', 'web1', '--unit', '0/0', '--no-map');
  t.equal(b.mapped, false);
  t.equal((await bgJson('map', String(b.id))).mapped, true);

  const ns = await bgJson('host', 'namespace', 'web1');
  t.equal(ns.units.length, 1);
  t.equal(ns.units[0].volume, 'web1-boot');
  t.equal(ns.units[0].exportName, '0/0');
  const nsTable = await bg('host', 'namespace', 'web1');
  t.match(nsTable.stdout, new RegExp(`0/0\\s+web1-boot\\s+96M\\s+${v.serial}`));

  // A write across the extent boundary, through the unit the CLI mapped.
  t.ok(ioOk(await qemuIo(s, 'web1', '0/0', `write -P 0x5a ${64 * M - 512} 1024`, `read -P 0x5a ${64 * M - 512} 1024`)));
  const tr = await bgJson('trace', 'web1', '0/0', '--offset', String(64 * M - 512), '--length', '1024');
  t.same(tr.segments.map((x: any) => [x.array, x.length]), [['a0', 512], ['a1', 512]]);
  const res = await bgJson('resolve', '--serial', v.serial);
  t.equal(res.volume.name, 'web1-boot');
  t.equal((await bgJson('resolve', '--export', '0/0', '--host', 'web1')).volume.name, 'web1-boot');

  // Release: each refused step exits 4 and changes nothing.
  t.equal((await cli(s, ['volume', 'scrub', 'web1-boot'])).code, 4, 'scrub while mapped');
  t.equal((await bgJson('unmap', '--host', 'web1', '--unit', '0/0')).mapped, false);
  t.equal((await cli(s, ['unbind', '--host', 'web1', '--unit', '1/0'])).code, 3, 'no binding there: not found');
  await bg('unbind', '--host', 'web1', '--unit', '0/0');
  t.equal((await bgJson('volume', 'break', 'web1-boot')).state, 'unconfigured');
  const dirty = await cli(s, ['volume', 'deallocate', 'web1-boot']);
  t.equal(dirty.code, 4);
  t.match(dirty.stderr, /scrub it before de-allocating/);

  // Scrub with the progress shown on stderr, the outcome on stdout.
  const scrub = await bg('volume', 'scrub', 'web1-boot', '--pattern', '0');
  t.match(scrub.stderr, /job \d+ scrub 100%/);
  t.match(scrub.stderr, /MiB\/s/);
  t.match(scrub.stdout, /^job \d+ \(scrub\) succeeded: bytes=96M pattern=0 verified=true/);
  t.equal((await bgJson('volume', 'deallocate', 'web1-boot')).state, 'free');
  t.equal((await bgJson('volume', 'show', 'web1-boot')).state, 'free');
  await bg('volume', 'delete', 'web1-boot');
  t.equal((await cli(s, ['volume', 'show', 'web1-boot'])).code, 3, 'deleted: not found');

  // --no-wait gives the job at once; job wait follows it.
  await bg('volume', 'create', 'scratch', '--size', '32M', '--farm', 'acme');
  await bg('bind', 'scratch', 'web1', '--unit', '1/0');
  await bg('unmap', '--host', 'web1', '--unit', '1/0');
  await bg('unbind', '--host', 'web1', '--unit', '1/0');
  const queued = await bgJson('volume', 'scrub', 'scratch', '--no-wait');
  t.ok(queued.job.id > 0);
  const waited = await bgJson('job', 'wait', String(queued.job.id));
  t.equal(waited.state, 'succeeded');
  t.equal(waited.result.verified, true);
  const jobs = await bgJson('job', 'list');
  t.same(jobs.jobs.map((j: any) => [j.kind, j.state]), [['scrub', 'succeeded'], ['scrub', 'succeeded']]);

  // Resize, snapshot of a mapped volume, copy between unbound volumes.
  t.equal((await bgJson('volume', 'resize', 'scratch', '--size', '40M')).size, 40 * M);
  await bg('volume', 'create', 'db', '--size', '8M', '--farm', 'acme');
  await bg('bind', 'db', 'web1', '--unit', '2/0');
  t.ok(ioOk(await qemuIo(s, 'web1', '2/0', 'write -P 0x33 0 1M')));
  const snap = await bgJson('volume', 'snap', 'db', 'db-snap');
  t.equal(snap.state, 'succeeded');
  t.equal((await bgJson('volume', 'show', 'db-snap')).snapshotOf, 'db');
  t.equal((await cli(s, ['volume', 'copy', 'db', '--to', 'scratch'])).code, 4, 'copy from a mapped volume: illegal state');
  t.equal((await cli(s, ['volume', 'copy', 'db-snap', '--to', 'scratch'])).code, 0, 'copy from its snapshot');
  await bg('volume', 'create', 'blank', '--size', '8M', '--farm', 'acme');

  // A job that fails (an injected image-copy fault) exits 7 and says why.
  fs.mkdirSync(path.join(s.dataDir, 'images'), { recursive: true });
  fs.writeFileSync(path.join(s.dataDir, 'images', 'os.img'), Buffer.alloc(M, 0x11));
  t.equal((await bgJson('image', 'create', 'os', '--path', 'images/os.img')).size, M);
  t.match((await bg('image', 'list')).stdout, /os\s+1M/);
  const failed = await cli(s, ['volume', 'copy-image', 'blank', '--image', 'os']);
  t.equal(failed.code, 7, 'failed job: exit 7');
  t.match(failed.stderr, /blockgate: job \d+ \(image-copy\) failed: .*injected fault/);
  t.equal((await bgJson('volume', 'show', 'blank')).state, 'unconfigured', 'the failure edge was applied');
  t.match((await bg('job', 'list')).stdout, /image-copy\s+blank\s+failed/);
});
