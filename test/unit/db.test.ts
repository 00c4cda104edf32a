import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { openDb, SCHEMA_VERSION } from '../../manager/index.js';

t.test('migrations create the schema once and reopen without change', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bg-db-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'c.db');
  const db = openDb(file);
  t.equal(db.pragma('user_version', { simple: true }), SCHEMA_VERSION);
  t.equal(db.pragma('journal_mode', { simple: true }), 'wal');
  const tables = (db.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").all() as { name: string }[]).map((r) => r.name);
  for (const want of ['arrays', 'bindings', 'extents', 'farms', 'hosts', 'settings', 'volumes']) t.ok(tables.includes(want), `table ${want}`);
  db.prepare("INSERT INTO farms (name, created_at) VALUES ('f', 'now')").run();
  db.close();
  const again = openDb(file);
  t.equal(again.pragma('user_version', { simple: true }), SCHEMA_VERSION, 'no migration re-run');
  t.equal((again.prepare('SELECT count(*) AS n FROM farms').get() as { n: number }).n, 1, 'data kept');
  again.close();
});

t.test('constraints refuse impossible rows', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bg-db-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const db = openDb(path.join(dir, 'c.db'));
  t.teardown(() => db.close());
  db.prepare("INSERT INTO farms (name, created_at) VALUES ('f', 'now')").run();
  db.prepare("INSERT INTO hosts (name, farm_id, created_at) VALUES ('h', 1, 'now')").run();
  t.throws(() => db.prepare("INSERT INTO farms (name, created_at) VALUES ('f', 'now')").run(), /UNIQUE/, 'duplicate farm name');
  t.throws(() => db.prepare("INSERT INTO arrays (name, path, size, created_at) VALUES ('a', '/x', 0, 'now')").run(), /CHECK/, 'zero-size array');
  t.throws(() => db.prepare("INSERT INTO bindings (volume_id, host_id, target, lun, created_at) VALUES (99, 1, 0, 0, 'now')").run(), /FOREIGN KEY/, 'binding to a missing volume');
});

t.test('a database from a newer blockgate is refused', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bg-db-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const file = path.join(dir, 'c.db');
  const db = openDb(file);
  db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
  db.close();
  t.throws(() => openDb(file), /newer/);
});
