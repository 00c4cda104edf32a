import crypto from 'node:crypto';
import t from 'tap';
import { cliOk } from '../helpers/cli.js';
import { IscsiSession, senseCode } from '../helpers/iscsi-session.js';
import { readCapacity16, unmap, vpd, writeSame16 } from '../helpers/iscsi-wire.js';
import { RawNbd } from '../helpers/nbd-client.js';
import { startServer } from '../helpers/server.js';
import { requireTools, runOk } from '../helpers/tools.js';

// Thick volumes against a real `blockgate serve`: their space is allocated
// (as zeroes) from the start and stays so whatever NBD or SCSI asks, the
// protocols say "not thin provisioned", and the setting survives a restart,
// a change through the API and CLI, and the configuration document.

requireTools('nbdinfo', 'iscsi-readcapacity16');

const M = 1024 * 1024;
const SIZE = 16 * M;
const s = await startServer(t);
await s.call('POST', '/v1/volumes', { name: 'thick1', size: '16M', provisioning: 'thick' });
await s.call('POST', '/v1/bindings', { volume: 'thick1', host: 'demo', target: 0, lun: 3, map: true });
await s.call('POST', '/v1/volumes', { name: 'thin1', size: '16M' });
await s.call('POST', '/v1/bindings', { volume: 'thin1', host: 'demo', target: 0, lun: 4, map: true });
const vol = (name: string): Promise<{ provisioning: string; allocated: number }> => s.call('GET', `/v1/volumes/${name}`);

/** LBPME, LBPRZ from READ CAPACITY(16) on `lun`. */
async function lbp(w: IscsiSession, lun: number): Promise<[boolean, boolean]> {
  const r = await w.command(lun, readCapacity16(), { read: 32 });
  if (r.status !== 0) throw new Error(`READ CAPACITY 16 status ${r.status}`);
  return [(r.data[14]! & 0x80) !== 0, (r.data[14]! & 0x40) !== 0];
}

t.test('a thick volume is allocated in full from the start; a thin one is not', async (t) => {
  const thick = await vol('thick1');
  t.equal(thick.provisioning, 'thick');
  t.equal(thick.allocated, SIZE, 'every byte allocated');
  const thin = await vol('thin1');
  t.equal(thin.provisioning, 'thin');
  t.equal(thin.allocated, 0);
  const map = await runOk('nbdinfo', ['--map', s.unixUri('demo', '0/3')]);
  t.match(map.stdout, /^\s*0\s+16777216\s+2\s+zero\s*$/m, 'NBD block status: one allocated zero run, no hole');
  const thinMap = await runOk('nbdinfo', ['--map', s.unixUri('demo', '0/4')]);
  t.match(thinMap.stdout, /^\s*0\s+16777216\s+3\s+hole,zero\s*$/m);
});

t.test('NBD: TRIM is not offered on a thick unit; sent anyway, it keeps bytes and space; zeroing keeps space', async (t) => {
  const info = JSON.parse((await runOk('nbdinfo', ['--json', s.unixUri('demo', '0/3')])).stdout).exports[0];
  t.equal(info.can_trim, false, 'thick: no TRIM');
  t.equal(info.can_zero, true);
  const thinInfo = JSON.parse((await runOk('nbdinfo', ['--json', s.unixUri('demo', '0/4')])).stdout).exports[0];
  t.equal(thinInfo.can_trim, true, 'thin: TRIM');

  const c = await RawNbd.connect(s.socket('demo'), '0/3');
  const data = crypto.randomBytes(256 * 1024);
  await c.write(0, data);
  await c.command(4, 0, 0, M); // TRIM
  t.ok((await c.read(0, data.length)).equals(data), 'a trim leaves the bytes');
  await c.command(6, 0, M, 4 * M); // WRITE_ZEROES without NO_HOLE
  t.ok((await c.read(M, 4 * M)).equals(Buffer.alloc(4 * M)), 'zeroed');
  await c.flush();
  c.close();
  t.equal((await vol('thick1')).allocated, SIZE, 'still fully allocated');
});

t.test('SCSI: LBPME=0, VPD 0xB2 without unmap, UNMAP and WRITE SAME(UNMAP) refused, WRITE SAME keeps space', async (t) => {
  const w = await IscsiSession.open(s.iscsi, [3, 4]);
  t.teardown(() => w.close());
  t.same(await lbp(w, 3), [false, false], 'thick: READ CAPACITY 16 LBPME=0 LBPRZ=0');
  t.same(await lbp(w, 4), [true, true], 'thin: LBPME=1 LBPRZ=1');
  const b2 = await w.command(3, vpd(0xb2), { read: 255 });
  t.equal(b2.status, 0);
  t.equal(b2.data[5]! & 0xe0, 0, 'thick: VPD 0xB2 offers no LBPU/LBPWS/LBPWS10');
  const b2thin = await w.command(4, vpd(0xb2), { read: 255 });
  t.equal(b2thin.data[5]! & 0xe0, 0xe0, 'thin: VPD 0xB2 offers unmap');

  const u = unmap(0, 8);
  const ru = await w.command(3, u.cdb, { write: u.data });
  t.equal(ru.status, 2, 'UNMAP on thick: CHECK CONDITION');
  t.same(senseCode(ru.sense), [5, 0x20, 0], 'ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE');
  const block = Buffer.alloc(512);
  const rws = await w.command(3, writeSame16(0, 8, true), { write: block });
  t.equal(rws.status, 2, 'WRITE SAME with UNMAP on thick: CHECK CONDITION');
  t.same(senseCode(rws.sense), [5, 0x24, 0], 'ILLEGAL REQUEST / INVALID FIELD IN CDB');
  const ok = await w.command(3, writeSame16(0, 2048, false), { write: block });
  t.equal(ok.status, 0, 'WRITE SAME without UNMAP: GOOD');
  await w.sync(3);
  t.equal((await vol('thick1')).allocated, SIZE, 'still fully allocated');
  // The thin unit takes UNMAP.
  const tu = await w.command(4, u.cdb, { write: u.data });
  t.equal(tu.status, 0, 'UNMAP on thin: GOOD');
});

t.test('thin → thick through the API allocates every hole and keeps data; live sessions follow; bad values are 400', async (t) => {
  const w = await IscsiSession.open(s.iscsi, [4]);
  t.teardown(() => w.close());
  const data = crypto.randomBytes(64 * 1024);
  await w.write(4, 8 * M, data, true);
  t.equal((await vol('thin1')).allocated, 64 * 1024);
  const v = await s.call('PATCH', '/v1/volumes/thin1', { provisioning: 'thick' });
  t.equal(v.provisioning, 'thick');
  t.equal(v.allocated, SIZE, 'every hole allocated');
  const ua = await w.command(4, readCapacity16(), { read: 32 });
  t.same([ua.status, ...senseCode(ua.sense)], [2, 6, 0x2a, 0x09], 'the open session gets CAPACITY DATA HAS CHANGED');
  t.same(await lbp(w, 4), [false, false], 'and then reports not thin');
  t.ok((await w.read(4, 8 * M, data.length)).equals(data), 'data kept');
  const bad = await s.request('PATCH', '/v1/volumes/thin1', { provisioning: 'fat' });
  t.equal(bad.status, 400);
  t.equal((await s.request('PATCH', '/v1/volumes/nosuch', { provisioning: 'thick' })).status, 404);
  // Back to thin: the space stays until trimmed, then goes.
  t.equal((await s.call('PATCH', '/v1/volumes/thin1', { provisioning: 'thin' })).provisioning, 'thin');
  t.equal((await w.command(4, readCapacity16(), { read: 32 })).status, 2, 'unit attention again');
  t.same(await lbp(w, 4), [true, true]);
  const u = unmap(0, 8 * 2048);
  t.equal((await w.command(4, u.cdb, { write: u.data })).status, 0);
  await w.sync(4);
  t.equal((await vol('thin1')).allocated, SIZE - 8 * M, 'the unmapped 8 MiB went back');
});

t.test('CLI --thick and volume set; the config document and a restart keep the setting', async (t) => {
  const made = (await cliOk(s, ['volume', 'create', 'thick2', '--size', '8M', '--thick', '--json'])).json;
  t.equal(made.provisioning, 'thick');
  t.equal(made.allocated, 8 * M);
  const set = (await cliOk(s, ['volume', 'set', 'thick2', '--provisioning', 'thin', '--json'])).json;
  t.equal(set.provisioning, 'thin');
  const doc = await s.call('GET', '/v1/config');
  const byName = new Map((doc.volumes as { name: string; provisioning: string }[]).map((v) => [v.name, v.provisioning]));
  t.equal(byName.get('thick1'), 'thick');
  t.equal(byName.get('thick2'), 'thin');

  await s.stop();
  await s.start();
  const w = await IscsiSession.open(s.iscsi, [3]);
  t.teardown(() => w.close());
  t.same(await lbp(w, 3), [false, false], 'thick after a restart');
  const info = JSON.parse((await runOk('nbdinfo', ['--json', s.unixUri('demo', '0/3')])).stdout).exports[0];
  t.equal(info.can_trim, false);
  t.equal((await vol('thick1')).allocated, SIZE);
});

