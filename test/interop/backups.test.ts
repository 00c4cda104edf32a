import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { M, ioOk, qemuIo, waitJob } from '../helpers/api.js';
import { RawNbd } from '../helpers/nbd-client.js';
import { cli, cliOk } from '../helpers/cli.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools, runOk } from '../helpers/tools.js';

requireTools('qemu-io', 'nbdcopy', 'nbdinfo');

const BLOCK = 4096;
const MAGIC = 0x42474b50; // "BGKP"

async function appliance(t: Parameters<typeof startServer>[0], args: string[] = []): Promise<TestServer> {
  return startServer(t, { demo: false, args });
}

/** Farm f, array a0, host h, volumes v0..v(n-1) bound at 0/k, and VM vm1 owning them all. */
async function vmWithVolumes(s: TestServer, n: number, size: string): Promise<void> {
  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '768M' });
  await s.call('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  const ids: number[] = [];
  for (let k = 0; k < n; k++) {
    await s.call('POST', '/v1/volumes', { name: `v${k}`, size, farm: 'f' });
    ids.push((await s.call('POST', '/v1/bindings', { volume: `v${k}`, host: 'h', target: 0, lun: k })).id as number);
  }
  await s.call('POST', '/v1/vms', { name: 'vm1', host: 'h', bindings: ids });
}

/** A unit read whole by nbdcopy into a local file (a stock client), returned with its SHA-256. */
async function copyOut(s: TestServer, host: string, unit: string, dir: string): Promise<{ file: string; sha: string }> {
  const file = path.join(dir, `${host}-${unit.replace('/', '_')}-${crypto.randomUUID()}.raw`);
  await runOk('nbdcopy', [s.unixUri(host, unit), file], { timeoutMs: 120_000 });
  return { file, sha: crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex') };
}

/** The highest sequence number in a volume image written by the ordered writer. */
function maxSeq(file: string, vol: number): number {
  const b = fs.readFileSync(file);
  let max = 0;
  for (let o = 0; o < b.length; o += BLOCK) {
    if (b.readUInt32LE(o) !== MAGIC) continue;
    if (b.readUInt32LE(o + 8) !== vol) throw new Error(`block at ${o} of volume ${vol} says volume ${b.readUInt32LE(o + 8)}`);
    max = Math.max(max, b.readUInt32LE(o + 4));
  }
  return max;
}

async function restoreNew(s: TestServer, id: number, body: Record<string, unknown> = {}): Promise<any> {
  const r = await s.call('POST', `/v1/backups/${id}/restore`, { host: 'h', target: 1, ...body });
  const j = await waitJob(s, r.job.id);
  if (j.state !== 'succeeded') throw new Error(`restore of backup ${id} ${j.state}: ${j.error}`);
  return j.result;
}

t.test('VM-consistent backups under cross-volume ordered writes; restore into new volumes, read back by nbdcopy', async (t) => {
  // A slow bulk rate keeps each backup's copy going while the writer goes on: a copy that read the live
  // volumes instead of the snapshots would see later writes on later volumes.
  const s = await appliance(t, ['--bulk-rate', '4M']);
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'bg-backups-'));
  t.teardown(() => fs.rmSync(tmp, { recursive: true, force: true }));
  await vmWithVolumes(s, 3, '16M');
  const conns = await Promise.all([0, 1, 2].map((k) => RawNbd.connect(s.socket('h'), `0/${k}`)));
  t.teardown(() => conns.forEach((c) => c.close()));

  // Round n writes one block on v0, then (once acknowledged) on v1, then on v2: B's write is issued only after A's completed.
  // Each round's block opens a 64 KiB change chunk of its own (the tracking granularity): a write that reaches a snapshot
  // without its chunk marked in that backup's change map then always fails the incremental's restore check (with 4 KiB
  // steps it showed only when the write was the first of its chunk since the last backup: one hold in 16).
  let stop = false;
  let rounds = 0;
  let writerError: Error | null = null;
  const CHUNK = 64 * 1024;
  const chunks = (16 * M) / CHUNK;
  const writer = (async () => {
    const buf = Buffer.alloc(BLOCK);
    for (let n = 1; !stop; n++) {
      for (let k = 0; k < 3; k++) {
        buf.fill(0);
        buf.writeUInt32LE(MAGIC, 0);
        buf.writeUInt32LE(n, 4);
        buf.writeUInt32LE(k, 8);
        await conns[k]!.write((n % chunks) * CHUNK, buf);
      }
      rounds = n;
    }
  })().catch((e: Error) => {
    writerError = e;
  });
  t.teardown(() => {
    stop = true;
  });

  const ids: number[] = [];
  const pauses: number[] = [];
  for (let i = 0; i < 3; i++) {
    // Each backup waits for some writes after the previous one, so the load is on while the group is held.
    const from = rounds;
    for (const deadline = Date.now() + 120_000; rounds < from + 50; await new Promise((r) => setTimeout(r, 10))) {
      if (writerError) throw new Error(`the writer failed: ${(writerError as Error).message}\n${s.log}`);
      if (Date.now() > deadline) throw new Error(`the writer made no progress (${rounds} rounds)\n${s.log}`);
    }
    const r = await s.request('POST', '/v1/vms/vm1/backups', { label: 'load' });
    t.equal(r.status, 202, 'backup accepted');
    t.match(r.body.backup.name, /^vm1-load-\d{8}T\d{6}Z(-\d+)?$/, 'named <vm>-<label>-<UTC timestamp>');
    const j = await waitJob(s, r.body.job.id);
    t.equal(j.state, 'succeeded', `backup ${i} succeeded ${j.error ?? ''}`);
    t.equal(j.result.volumes.length, 3);
    pauses.push(j.result.pauseMs);
    ids.push(j.result.id);
  }
  stop = true;
  await writer;
  t.equal(writerError, null, 'every ordered write was acknowledged');
  t.ok(rounds > 150, `the writer made progress (${rounds} rounds)`);
  const store = path.join(s.dataDir, 'backups', 'f');
  t.equal(fs.statSync(store).mode & 0o777, 0o700, 'the backup store is 0700');
  t.same((await s.call('GET', '/v1/volumes')).volumes.filter((v: any) => v.name.startsWith('bk')), [], 'no snapshot is left behind');

  const cat = await s.call('GET', '/v1/backups?vm=vm1');
  t.same(
    cat.backups.map((b: any) => b.kind),
    ['full', 'incr', 'incr'],
    'the first backup is full, the next ones incremental',
  );
  t.equal(cat.backups[1].parent, ids[0]);
  for (const b of cat.backups) {
    t.equal(b.host, 'h');
    t.ok(b.pauseMs >= 0);
    for (const v of b.volumes) t.equal(v.size, 16 * M);
  }

  for (const [i, id] of ids.entries()) {
    // The restore checks every volume against its catalog checksum: an incremental that missed a changed chunk fails here.
    const res = await restoreNew(s, id, { suffix: `-r${i}` });
    t.same(
      res.volumes.map((v: any) => v.restoredAs),
      [`v0-r${i}`, `v1-r${i}`, `v2-r${i}`],
      `backup ${i} restored into new volumes`,
    );
    const show = await s.call('GET', `/v1/backups/${id}`);
    const seq: number[] = [];
    for (let k = 0; k < 3; k++) {
      const b = (await s.call('GET', '/v1/bindings?volume=' + `v${k}-r${i}`)).bindings[0];
      t.equal(b.target, 1);
      const img = await copyOut(s, 'h', `1/${b.lun}`, tmp);
      t.equal(img.sha, show.volumes.find((v: any) => v.volume === `v${k}`).checksum, `backup ${i} v${k}: nbdcopy reads what the catalog checksum says`);
      seq.push(maxSeq(img.file, k));
      fs.rmSync(img.file);
    }
    t.ok(seq[0]! > 0, `backup ${i} holds writes (${seq.join(', ')})`);
    t.ok(seq[0]! >= seq[1]! && seq[1]! >= seq[2]! && seq[0]! <= seq[2]! + 1, `backup ${i} is consistent: no volume has a write its predecessor lacks (${seq.join(', ')})`);
  }
  t.comment(`consistency-group pauses (ms): ${pauses.map((p) => p.toFixed(2)).join(', ')}`);
  const metrics = (await s.request('GET', '/metrics')).body as string;
  t.match(metrics, /blockgate_cutovers_total\{kind="backup",outcome="succeeded"\} 3/, 'backups are counted in /metrics');
});

t.test('incrementals copy the changed chunks; a clean restart keeps the maps, kill -9 makes the next backup full; corrupt files fail the restore', async (t) => {
  const s = await appliance(t);
  await vmWithVolumes(s, 2, '64M');
  for (const u of ['0/0', '0/1']) t.ok(ioOk(await qemuIo(s, 'h', u, 'write -P 0xaa 0 64M', 'flush')));
  const backup = async (label: string): Promise<any> => {
    const r = await s.call('POST', '/v1/vms/vm1/backups', { label });
    const j = await waitJob(s, r.job.id);
    t.equal(j.state, 'succeeded', `backup ${label}: ${j.error ?? 'ok'}`);
    return j.result;
  };
  const b1 = await backup('one');
  t.equal(b1.kind, 'full');
  t.equal(b1.stored, 128 * M, 'the full backup stored every data byte');

  // 1 % of each volume changes.
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0xbb 0 640K')));
  t.ok(ioOk(await qemuIo(s, 'h', '0/1', 'write -P 0xcc 32M 640K')));
  const b2 = await backup('two');
  t.equal(b2.kind, 'incr');
  t.equal(b2.stored, 2 * 640 * 1024, 'the incremental stored only the changed chunks');
  t.comment(`incremental / full stored bytes after 1 % changed: ${((b2.stored / b1.stored) * 100).toFixed(2)} %`);
  const res2 = await restoreNew(s, b2.id);
  t.same(res2.volumes.map((v: any) => v.restoredAs), [`v0-r${b2.id}`, `v1-r${b2.id}`]);
  t.ok(ioOk(await qemuIo(s, 'h', '1/0', 'read -P 0xbb 0 640K', 'read -P 0xaa 640K 64896K')), 'v0 from the full + incremental chain');
  t.ok(ioOk(await qemuIo(s, 'h', '1/1', 'read -P 0xaa 0 32M', 'read -P 0xcc 32M 640K', 'read -P 0xaa 33408K 32128K')), 'v1 from the chain');

  // A clean restart saves the change maps: the next backup is still incremental.
  await s.stop();
  await s.start();
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0xdd 1M 64K')));
  const b3 = await backup('three');
  t.equal(b3.kind, 'incr', 'after a clean restart the maps are trusted');
  t.equal(b3.stored, 64 * 1024);

  // kill -9 after a clean start: the maps (saved clean at the last stop) cannot be trusted, the next backup of every volume is full.
  await s.stop();
  await s.start();
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0xee 2M 64K', 'flush')));
  await s.kill();
  await s.start();
  const b4 = await backup('four');
  t.equal(b4.kind, 'full', 'after kill -9 the next backup is full');
  t.ok(b4.volumes.every((v: any) => v.full), 'every volume part is full');
  const res4 = await restoreNew(s, b4.id, { target: 2 });
  t.ok(ioOk(await qemuIo(s, 'h', '2/0', 'read -P 0xbb 0 640K', 'read -P 0xaa 640K 384K', 'read -P 0xdd 1M 64K', 'read -P 0xee 2M 64K')), 'the post-crash full holds every write');
  t.equal(res4.volumes.length, 2);

  // In place: v0 goes back to backup two.
  const r = await s.call('POST', `/v1/backups/${b2.id}/restore`, { inPlace: true, volumes: ['v0'] });
  t.equal((await waitJob(s, r.job.id)).state, 'succeeded');
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'read -P 0xbb 0 640K', 'read -P 0xaa 640K 64896K')), 'v0 rewritten in place and mapped again');

  // A corrupted file: the restore fails before anything is created or bound.
  const part = (await s.call('GET', `/v1/backups/${b4.id}`)).volumes.find((v: any) => v.volume === 'v1');
  const fd = fs.openSync(part.file, 'r+');
  fs.writeSync(fd, Buffer.from([0x00]), 0, 1, 5 * M);
  fs.closeSync(fd);
  const bindingsBefore = (await s.call('GET', '/v1/bindings')).bindings.length;
  const bad = await s.call('POST', `/v1/backups/${b4.id}/restore`, { host: 'h', target: 3, suffix: '-bad' });
  const jb = await waitJob(s, bad.job.id);
  t.equal(jb.state, 'failed');
  t.match(jb.error, /v1.*does not match its catalog checksum/, 'a clear error names the corrupt volume');
  t.equal((await s.call('GET', '/v1/bindings')).bindings.length, bindingsBefore, 'nothing was bound');
  t.equal((await s.request('GET', '/v1/volumes/v0-bad')).status, 404, 'no volume was created');

  // Catalog filters and validation.
  t.same((await s.call('GET', '/v1/backups?label=two')).backups.map((b: any) => b.id), [b2.id]);
  t.equal((await s.call('GET', `/v1/backups?since=${encodeURIComponent(new Date(Date.now() + 3_600_000).toISOString())}`)).backups.length, 0);
  t.equal((await s.request('GET', '/v1/backups?since=yesterday')).status, 400, 'a bad since is a 400');
  t.equal((await s.request('GET', '/v1/backups?colour=red')).status, 400, 'an unknown filter is a 400');
  t.equal((await s.request('POST', '/v1/vms/vm1/backups', { label: 'no spaces' })).status, 400);
  t.equal((await s.request('POST', '/v1/vms/nope/backups', {})).status, 404);

  // Delete: refused while an incremental counts from it; files go with the row.
  t.equal((await s.request('DELETE', `/v1/backups/${b1.id}`)).status, 409, 'a parent of incrementals is kept');
  const dir3 = path.dirname((await s.call('GET', `/v1/backups/${b3.id}`)).volumes[0].file);
  t.equal((await s.request('DELETE', `/v1/backups/${b3.id}`)).status, 204);
  t.notOk(fs.existsSync(dir3), 'its files are gone');

  // Retention: keep the last one (and what it stands on).
  await s.call('PUT', '/v1/vms/vm1/backup-policy', { keepLast: 1 });
  const b5 = await backup('five');
  t.ok(b5.pruned.length >= 2, `older backups pruned: ${b5.pruned.join(', ')}`);
  const left = (await s.call('GET', '/v1/backups?vm=vm1&state=complete')).backups;
  t.same(
    left.map((b: any) => b.id),
    b5.kind === 'incr' ? [b4.id, b5.id] : [b5.id],
    'the newest backup and the full it counts from are kept',
  );
  const g = await s.call('GET', '/v1/graph?q=backups-of&volume=v1');
  t.same([...g.answer].sort(), left.map((b: any) => `backup/${b.name}`).sort(), 'the graph answers backups-of a volume');
  t.ok(g.edges.some((e: any) => e.from === 'volume/v1' && e.rel === 'has-backup'));

  // The CLI verbs.
  const job = (await cliOk(s, ['vm', 'backup', 'vm1', '--label', 'cli', '--json'])).json;
  t.equal(job.state, 'succeeded');
  t.match(job.result.backup, /^vm1-cli-/);
  const listed = (await cliOk(s, ['backup', 'list', '--vm', 'vm1', '--label', 'cli', '--json'])).json.backups;
  t.same(listed.map((b: any) => b.id), [job.result.id], 'backup list filters');
  t.match((await cliOk(s, ['backup', 'show', String(job.result.id)])).stdout, job.result.backup, 'backup show');
  const rj = (await cliOk(s, ['backup', 'restore', String(job.result.id), '--host', 'h', '--target', '4', '--volumes', 'v0', '--json'])).json;
  // (v1's chain runs through the file corrupted above; v0's part of backup five was full.)
  t.same(rj.result.volumes.map((v: any) => v.restoredAs), [`v0-r${job.result.id}`], 'backup restore --volumes');
  t.equal((await cli(s, ['backup', 'restore', String(job.result.id), '--json'])).code !== 0, true, 'a restore with neither --host nor --in-place is refused');
  t.equal((await cliOk(s, ['backup', 'policy-vm', 'vm1', '--keep-last', '2', '--json'])).json.keepLast, 2);

  // Schedules: a cron expression run by croner queues backups as jobs.
  t.equal((await s.request('PUT', '/v1/vms/vm1/backup-policy', { schedule: 'every second' })).status, 400, 'a bad cron expression is a 400');
  await s.call('PUT', '/v1/vms/vm1/backup-policy', { schedule: '* * * * * *', keepLast: 3 });
  let scheduled: any[] = [];
  for (const deadline = Date.now() + 120_000; Date.now() < deadline; await new Promise((r) => setTimeout(r, 200))) {
    scheduled = (await s.call('GET', '/v1/backups?vm=vm1&label=scheduled&state=complete')).backups;
    if (scheduled.length >= 1) break;
  }
  await s.call('PUT', '/v1/vms/vm1/backup-policy', { schedule: null });
  t.ok(scheduled.length >= 1, 'the schedule took a backup');
  t.same((await s.call('GET', '/v1/vms/vm1/backup-policy')).schedule, null);
});
