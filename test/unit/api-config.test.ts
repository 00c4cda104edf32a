import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { configDocument } from '../../manager/index.js';
import { MiB, startApi } from '../helpers/api-app.js';
import { freePort } from '../helpers/ports.js';

/** Values a field takes when nobody set it: a field showing only these was not exercised by the round trip. */
const UNSET = new Set<unknown>([null, false, 'exclusive', 'write-back', 'std']);

/**
 * An array file is served by one appliance only (DATA/arrays/NAME.img.id names its owner), so a
 * configuration moves to another data directory the documented way: copy the array files (and their
 * allocation maps, not their identities) there and point the document at the copies.
 */
function movedTo(doc: Record<string, any>, from: string, to: string): Record<string, any> {
  const d = structuredClone(doc);
  // A copy-on-write snapshot's ownership map is data too: it travels with the array files.
  fs.mkdirSync(path.join(to, 'snapshots'), { recursive: true });
  for (const l of (d.cowLinks ?? []) as { snapshot: string }[]) {
    const id = (d.volumes as { name: string; id: number }[]).find((v) => v.name === l.snapshot)!.id;
    fs.copyFileSync(path.join(from, 'snapshots', `${id}.cow`), path.join(to, 'snapshots', `${id}.cow`));
  }
  for (const a of d.arrays as { path: string }[]) {
    const dest = path.join(to, path.relative(from, a.path));
    fs.mkdirSync(path.dirname(dest), { recursive: true });
    fs.copyFileSync(a.path, dest);
    if (fs.existsSync(`${a.path}.alloc`)) fs.copyFileSync(`${a.path}.alloc`, `${dest}.alloc`);
    a.path = dest;
  }
  return d;
}

/** Every field of every row kind, with some row holding a value someone had to set. */
function assertEveryFieldSet(t: { ok: (v: unknown, msg: string) => unknown }, doc: Record<string, unknown>): void {
  const shape = configDocument.shape;
  for (const [kind, schema] of Object.entries(shape)) {
    const rows = doc[kind];
    if (!Array.isArray(rows)) continue;
    // Row kinds added after version 1 default to [] for older documents: look through the default.
    const def = (schema as unknown as { _zod: { def: { type: string; innerType?: unknown } } })._zod.def;
    const list = def.type === 'default' ? def.innerType : schema;
    const rowShape = (list as { element: { shape: Record<string, unknown> } }).element.shape;
    t.ok(rows.length > 0, `${kind}: the fixture has rows`);
    for (const field of Object.keys(rowShape)) {
      const set = rows.some((r: Record<string, unknown>) => !UNSET.has(r[field]) && !(Array.isArray(r[field]) && (r[field] as unknown[]).length === 0));
      t.ok(set, `${kind}.${field} is set on some row, so the round trip proves it`);
    }
  }
}

/**
 * What the configuration leaves behind on purpose: history, runtime state and credentials. Every
 * other table must come back row for row, column for column; a table added later fails the round
 * trip until it is exported or listed here.
 */
const NOT_CONFIGURATION = new Set(['jobs', 'job_volumes', 'events', 'webhook_deliveries', 'host_credentials', 'backups', 'backup_volumes', 'scsi_reservations', 'sqlite_sequence']);
/** Columns the round trip changes on purpose: the moved array files, the copy's own listener port; an initiator is dated by its host. */
const MOVED_COLUMNS: Record<string, string[]> = { arrays: ['path'], hosts: ['nbd_tcp'], host_initiators: ['created_at'], settings: [] };

function tableDump(db: { prepare: (sql: string) => { all: () => unknown[] } }): Record<string, unknown[]> {
  const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map((r) => r.name).filter((n) => !NOT_CONFIGURATION.has(n));
  const dump: Record<string, unknown[]> = {};
  for (const table of tables) {
    dump[table] = (db.prepare(`SELECT * FROM ${table}`).all() as Record<string, unknown>[])
      .filter((r) => table !== 'settings' || !['seeded', 'seeding'].includes(r.key as string))
      .map((r) => Object.fromEntries(Object.entries(r).filter(([k]) => !(MOVED_COLUMNS[table] ?? []).includes(k))))
      .map((r) => JSON.stringify(r))
      .sort();
  }
  return dump;
}

t.test('config: export → import → export is lossless over every field', async (t) => {
  const A = await startApi(t);
  const call = A.call;
  const ok = async (method: string, url: string, body?: unknown): Promise<any> => {
    const r = await call(method, url, body);
    if (r.status >= 300) throw new Error(`${method} ${url}: ${r.status} ${JSON.stringify(r.body)}`);
    return r.body;
  };
  await ok('POST', '/v1/farms', { name: 'f' });
  await ok('POST', '/v1/arrays', { name: 'a0', size: '32M', qualityClass: 'fast' });
  await ok('POST', '/v1/arrays', { name: 'a1', size: '32M' });
  fs.mkdirSync(path.join(A.dataDir, 'images'), { recursive: true });
  fs.writeFileSync(path.join(A.dataDir, 'images', 'os.img'), Buffer.alloc(MiB, 1));
  await ok('POST', '/v1/images', { name: 'os', path: 'images/os.img' });
  await ok('POST', '/v1/hosts', { name: 'h', farm: 'f', nbdTcp: `127.0.0.1:${await freePort()}` });
  await ok('POST', '/v1/hosts', { name: 'h2', farm: 'f' });
  await ok('PUT', '/v1/hosts/h/tls', { requireTls: true });
  await ok('POST', '/v1/hosts/h/initiators', { iqn: 'iqn.2026-11.test:h-initiator' });
  await ok('POST', '/v1/hosts/h/chap', { mode: 'mutual' });
  await ok('POST', '/v1/volumes', { name: 'v', size: '8M', farm: 'f', layout: [{ array: 'a0', size: '4M' }, { array: 'a1', size: '4M' }] });
  await ok('POST', '/v1/volumes', { name: 'sh', size: '4M', farm: 'f', shareMode: 'shared', qualityClass: 'fast' });
  await ok('POST', '/v1/volumes', { name: 'pre', size: '4M' });
  const bv = await ok('POST', '/v1/bindings', { volume: 'v', host: 'h', target: 1, lun: 2 });
  await ok('POST', '/v1/bindings', { volume: 'sh', host: 'h2', target: 0, lun: 7, mode: 'read-only', map: false });
  await ok('POST', '/v1/vms', { name: 'vm', host: 'h', bindings: [bv.id] });
  await ok('POST', '/v1/volumes/v/snap', { snapshot: 'vs' });
  const hook = await ok('POST', '/v1/webhooks', { name: 'orch', url: 'http://127.0.0.1:9/hook', classes: ['vm.added', 'volume.modified'], maxAttempts: 3, backoffMs: 50 });
  await ok('PUT', '/v1/vms/vm/backup-policy', { schedule: '0 3 * * *', keepLast: 4, keepDailyDays: 7 });
  await ok('PUT', '/v1/farms/f/backup-policy', { store: path.join(A.dataDir, 'backup-store'), keepLast: 2 });
  // What no route sets yet (cache policy) or takes a job and a client to reach, straight into the database.
  A.m.db.prepare("UPDATE volumes SET cache_policy = 'write-through', image_id = (SELECT id FROM images WHERE name = 'os') WHERE name = 'v'").run();
  A.m.db.prepare("UPDATE volumes SET snapshot_of = (SELECT id FROM volumes WHERE name = 'v'), scrubbed_at = '2026-01-02T03:04:05.000Z' WHERE name = 'pre'").run();
  A.m.setSetting('nbd.default_host', 'h2');

  const saved = await ok('GET', '/v1/config');
  assertEveryFieldSet(t, saved);
  t.equal(saved.hosts.find((h: { name: string }) => h.name === 'h').requireTls, true, 'the TLS requirement is saved');

  const B = await startApi(t);
  const r0 = await B.call('POST', '/v1/config', saved);
  t.equal(r0.status, 409, "another appliance's array files are refused");
  const moved = movedTo(saved, A.dataDir, B.dataDir);
  // A's host h still listens on its port: the copy gets a port of its own.
  moved.hosts.find((h: { name: string }) => h.name === 'h').nbdTcp = `127.0.0.1:${await freePort()}`;
  const r = await B.call('POST', '/v1/config', moved);
  t.equal(r.status, 201, JSON.stringify(r.body));
  t.same(r.body.imported, { farms: 1, arrays: 2, images: 1, volumes: 4, hosts: 2, bindings: 2, vms: 1, cowLinks: 1, webhooks: 1, backupPolicies: 2 });
  // The document holds no secrets: the webhook gets a fresh one, shown once, and it is not A's.
  t.equal(r.body.webhookSecrets.length, 1);
  t.equal(r.body.webhookSecrets[0].webhook, 'orch');
  t.not(r.body.webhookSecrets[0].secret, hook.secret, 'a fresh secret, not the exported appliance\'s');
  const secretFile = path.join(B.dataDir, 'webhooks', `${saved.webhooks[0].id}.secret`);
  t.equal(fs.readFileSync(secretFile, 'utf8').trim(), r.body.webhookSecrets[0].secret, 'the fresh secret is the one deliveries sign with');
  t.equal(fs.statSync(secretFile).mode & 0o777, 0o600);
  t.notOk(JSON.stringify(saved).includes(hook.secret), 'the exported document holds no webhook secret');
  const restored = (await B.call('GET', '/v1/config')).body;
  const { exportedAt: _a, ...before } = moved;
  const { exportedAt: _b, ...after } = restored;
  t.same(after, before, 'the restored appliance exports the same document');
  t.same(tableDump(B.m.db), tableDump(A.m.db), 'every configuration table holds the same rows, column for column');
  // The restored snapshot is linked on the data path, not just in the table: it still shares its origin's regions.
  t.same((await B.call('GET', '/v1/volumes/vs')).body.copyOnWrite, (await call('GET', '/v1/volumes/vs')).body.copyOnWrite);
  t.equal((await B.call('GET', '/v1/volumes/vs')).body.copyOnWrite?.origin, 'v');
  t.same((await B.call('GET', '/v1/vms/vm/backup-policy')).body, { schedule: '0 3 * * *', keepLast: 4, keepDailyDays: 7, store: null });

  // The restored host still refuses plaintext on TCP: the data path was told, not just the database.
  t.equal((await B.call('GET', '/v1/hosts/h')).body.nbd.requireTls, true);
  t.equal(B.m.dataPath.namespaces.requiresTls('h'), true, 'the data path of the restored appliance requires TLS for h');
  t.equal(B.m.dataPath.namespaces.requiresTls('h2'), false);
  t.equal((await B.call('GET', '/v1/volumes/v')).body.serial, (await call('GET', '/v1/volumes/v')).body.serial);
});

t.test('config: import refuses what is not one consistent document, and writes nothing', async (t) => {
  const A = await startApi(t);
  await A.call('POST', '/v1/farms', { name: 'f' });
  await A.call('POST', '/v1/arrays', { name: 'a0', size: '8M' });
  await A.call('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  await A.call('POST', '/v1/volumes', { name: 'v', size: '4M', farm: 'f' });
  const b = (await A.call('POST', '/v1/bindings', { volume: 'v', host: 'h', target: 0, lun: 0 })).body;
  await A.call('POST', '/v1/vms', { name: 'vm', host: 'h', bindings: [b.id] });
  t.equal((await A.call('POST', '/v1/volumes/v/snap', { snapshot: 'vs' })).status, 202);
  const B = await startApi(t);
  const saved = movedTo((await A.call('GET', '/v1/config')).body, A.dataDir, B.dataDir);
  const bad = (mut: (d: any) => void): unknown => {
    const d = structuredClone(saved);
    mut(d);
    return d;
  };
  const cases: [string, unknown, number][] = [
    ['a VM listing a binding twice', bad((d) => d.vms[0].bindings.push(b.id)), 400],
    ['a host field misspelt', bad((d) => (d.hosts[0].requireTLS = true)), 400],
    ['requireTls not a boolean', bad((d) => (d.hosts[0].requireTls = 'yes')), 400],
    ['a binding on an unknown host', bad((d) => (d.bindings[0].host = 'ghost')), 400],
    ['not a configuration', bad((d) => (d.kind = 'other')), 400],
    ['a backup policy of an unknown VM', bad((d) => d.backupPolicies.push({ scope: 'vm', name: 'ghost', schedule: null, keepLast: 1, keepDailyDays: null, store: null })), 400],
    ['a copy-on-write link that its volumes contradict', bad((d) => (d.cowLinks[0].origin = 'vs')), 400],
  ];
  for (const [what, doc, status] of cases) {
    const r = await B.call('POST', '/v1/config', doc);
    t.equal(r.status, status, what);
    t.equal(r.body.error.code, 'BAD_REQUEST', what);
  }
  t.same((await B.call('GET', '/v1/hosts')).body.hosts, [], 'nothing was written');

  // Without the snapshot's ownership map the link cannot be recreated truthfully: refused, naming the file.
  const vsId = saved.volumes.find((v: { name: string }) => v.name === 'vs').id;
  const map = path.join(B.dataDir, 'snapshots', `${vsId}.cow`);
  fs.renameSync(map, `${map}.away`);
  const noMap = await B.call('POST', '/v1/config', saved);
  t.equal(noMap.status, 409);
  t.match(noMap.body.error.message, new RegExp(`'vs' is a copy-on-write snapshot of 'v'.*snapshots/${vsId}\\.cow`));
  t.same((await B.call('GET', '/v1/hosts')).body.hosts, [], 'nothing was written');
  fs.renameSync(`${map}.away`, map);

  // A document saved before hosts could require TLS restores them as they were: plaintext allowed.
  const old = bad((d) => delete d.hosts[0].requireTls);
  let r = await B.call('POST', '/v1/config', old);
  t.equal(r.status, 201, JSON.stringify(r.body));
  t.equal((await B.call('GET', '/v1/hosts/h')).body.nbd.requireTls, false);
  r = await B.call('POST', '/v1/config', saved);
  t.equal(r.status, 409, 'only an empty appliance takes an import');
  t.equal(r.body.error.code, 'CONFLICT');
});
