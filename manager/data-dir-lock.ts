import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import Database from 'better-sqlite3';
import { BlockgateError } from '../common/errors.js';

/** Who holds a data directory: written beside the lock once it is held. */
export interface Holder {
  pid: number;
  dataDir: string;
  appliance: string | null;
  hostname: string;
  startedAt: string;
}

export const LOCK_FILE = 'blockgate.lock';
export const HOLDER_FILE = 'blockgate.lock.json';

/**
 * The data directory belongs to one appliance process at a time.
 *
 * Node has no flock(), so the lock is SQLite's: `DATA/blockgate.lock` is a
 * tiny database held in `locking_mode=EXCLUSIVE` after one write, which is an
 * fcntl() byte-range write lock owned by this process. The kernel drops it
 * when the process dies, kill -9 included, so a stale lock never needs a pid
 * guess to break it; and unlike a lock socket it holds across containers
 * that share the directory but not a network namespace. Nobody can read a
 * file locked that way, so who holds it is written to a JSON file beside it.
 */
export class DataDirLock {
  private constructor(
    private readonly db: Database.Database,
    readonly dataDir: string,
    private holder: Holder,
  ) {}

  /** Takes the lock or throws CONFLICT naming the holder. Call before touching anything else in the directory. */
  static acquire(dataDir: string): DataDirLock {
    const dir = fs.realpathSync(dataDir);
    const file = path.join(dir, LOCK_FILE);
    let db: Database.Database | null = null;
    try {
      // A short wait: another process may be probing the lock (probeHolder) right now.
      db = new Database(file, { timeout: 2000 });
      db.pragma('journal_mode = MEMORY');
      db.pragma('locking_mode = EXCLUSIVE');
      db.exec('BEGIN EXCLUSIVE');
      db.exec('CREATE TABLE IF NOT EXISTS held (pid INTEGER, at TEXT)');
      db.prepare('INSERT INTO held (pid, at) VALUES (?, ?)').run(process.pid, new Date().toISOString());
      db.exec('DELETE FROM held WHERE rowid NOT IN (SELECT MAX(rowid) FROM held)');
      db.exec('COMMIT');
    } catch (e) {
      db?.close();
      if ((e as { code?: string }).code !== 'SQLITE_BUSY') throw e;
      throw inUse(dir, readHolder(dir));
    }
    const holder: Holder = { pid: process.pid, dataDir: dir, appliance: null, hostname: os.hostname(), startedAt: new Date().toISOString() };
    const lock = new DataDirLock(db, dir, holder);
    // Start-up: a rename makes it whole or absent.
    const holderFile = path.join(dir, HOLDER_FILE);
    fs.writeFileSync(`${holderFile}.tmp`, JSON.stringify(holder, null, 2) + '\n');
    fs.renameSync(`${holderFile}.tmp`, holderFile);
    return lock;
  }

  /** Records the appliance id once the control database is open (and after an import changes it). */
  async setAppliance(id: string): Promise<void> {
    if (this.holder.appliance === id) return;
    this.holder = { ...this.holder, appliance: id };
    const file = path.join(this.dataDir, HOLDER_FILE);
    await fs.promises.writeFile(`${file}.tmp`, JSON.stringify(this.holder, null, 2) + '\n');
    await fs.promises.rename(`${file}.tmp`, file);
  }

  release(): void {
    if (!this.db.open) return;
    fs.rmSync(path.join(this.dataDir, HOLDER_FILE), { force: true });
    this.db.close();
  }
}

function readHolder(dir: string): Holder | null {
  try {
    return JSON.parse(fs.readFileSync(path.join(dir, HOLDER_FILE), 'utf8')) as Holder;
  } catch {
    return null;
  }
}

export function describeHolder(h: Holder | null, dir: string): string {
  if (!h) return `another process (data directory ${dir})`;
  return `blockgate pid ${h.pid} on ${h.hostname} (data directory ${h.dataDir}, appliance ${h.appliance ?? 'starting'}, since ${h.startedAt})`;
}

function inUse(dir: string, h: Holder | null): BlockgateError {
  return new BlockgateError('CONFLICT', `data directory ${dir} is in use by ${describeHolder(h, dir)}; stop it first, or use another data directory`, {
    dataDir: dir,
    holder: h,
  });
}

/**
 * Whether an appliance holds `dataDir` now, and who: a read attempt on its
 * lock fails while the lock is held. Never creates anything there. (The
 * open is synchronous, as every SQLite call here is; it reads one page.)
 */
export async function probeHolder(dataDir: string): Promise<{ live: boolean; holder: Holder | null }> {
  const file = path.join(dataDir, LOCK_FILE);
  let live = false;
  let db: Database.Database | null = null;
  try {
    db = new Database(file, { readonly: true, fileMustExist: true, timeout: 0 });
    db.prepare('SELECT COUNT(*) FROM sqlite_master').get();
  } catch (e) {
    live = (e as { code?: string }).code === 'SQLITE_BUSY';
  } finally {
    db?.close();
  }
  const holder = await fs.promises
    .readFile(path.join(dataDir, HOLDER_FILE), 'utf8')
    .then((t) => JSON.parse(t) as Holder)
    .catch(() => null);
  return { live, holder };
}
