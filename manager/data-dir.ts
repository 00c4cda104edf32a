import fs from 'node:fs';
import path from 'node:path';
import { BlockgateError } from '../common/errors.js';
import type { Db } from './db.js';

/** The files of a data directory the appliance owns (never an image, never adopted as an array). */
export const DB_FILE = 'blockgate.db';
export const SAVED_CONFIG = 'blockgate.config.json';
export const OWN_FILES = [DB_FILE, `${DB_FILE}-wal`, `${DB_FILE}-shm`, 'api-token', SAVED_CONFIG, 'run.json', 'blockgate.lock', 'blockgate.lock.json'] as const;

/** Tables whose rows are what an admin built; any row means the database is not a new one. */
const CONFIG_TABLES = ['farms', 'arrays', 'volumes', 'hosts', 'images'];

export function hasConfiguration(db: Db): boolean {
  return CONFIG_TABLES.some((t) => db.prepare(`SELECT 1 FROM ${t} LIMIT 1`).get() !== undefined);
}

export interface SavedSummary {
  file: string;
  volumes: number;
  hosts: number;
  arrays: number;
  exportedAt: string | null;
}

/** What an appliance left in a data directory, whatever its database says. */
export interface Remains {
  /** Array files stamped by an appliance, and allocation maps: both exist only once an appliance used the file. */
  arrayTraces: string[];
  /** Any file at all under arrays/ (a dropped-in array file too): the demo is not seeded over those. */
  arrayFiles: number;
  saved: SavedSummary | null;
}

export async function inspectRemains(dataDir: string): Promise<Remains> {
  const names = (await fs.promises.readdir(path.join(dataDir, 'arrays')).catch(() => [] as string[])).sort();
  const arrayTraces = names.filter((n) => n.endsWith('.img.id') || n.endsWith('.img.alloc')).map((n) => path.join('arrays', n));
  return { arrayTraces, arrayFiles: names.length, saved: await readSavedSummary(path.join(dataDir, SAVED_CONFIG)) };
}

async function readSavedSummary(file: string): Promise<SavedSummary | null> {
  try {
    const doc = JSON.parse(await fs.promises.readFile(file, 'utf8')) as { volumes?: unknown[]; hosts?: unknown[]; arrays?: unknown[]; exportedAt?: string };
    const n = (x: unknown[] | undefined): number => (Array.isArray(x) ? x.length : 0);
    return { file, volumes: n(doc.volumes), hosts: n(doc.hosts), arrays: n(doc.arrays), exportedAt: doc.exportedAt ?? null };
  } catch {
    return null;
  }
}

/** True when the remains show an appliance lived here: its database must not be replaced by a new one silently. */
export function hasRemains(r: Remains): boolean {
  return r.arrayTraces.length > 0 || (r.saved !== null && r.saved.arrays + r.saved.volumes + r.saved.hosts > 0);
}

/**
 * A start with a missing or empty control database over an appliance's
 * remains would be a new appliance over old arrays (and the demo seed over
 * array0): refused, with the one command that brings the old one back.
 */
export function lostDatabase(dataDir: string, why: string, r: Remains): BlockgateError {
  const traces = r.arrayTraces.length > 4 ? [...r.arrayTraces.slice(0, 4), `… (${r.arrayTraces.length} in all)`] : r.arrayTraces;
  const lines = [
    `data directory ${dataDir} has ${why}, but an appliance's data is there${traces.length ? `: ${traces.join(', ')}` : ''}.`,
    'Starting would make a new, empty appliance over those arrays, so blockgate will not start.',
  ];
  if (r.saved && r.saved.arrays + r.saved.volumes + r.saved.hosts > 0) {
    lines.push(
      `The appliance's saved configuration is ${r.saved.file} (${r.saved.volumes} volumes, ${r.saved.hosts} hosts, ${r.saved.arrays} arrays, saved ${r.saved.exportedAt ?? 'at an unknown time'}). To restore it, run:`,
      `  blockgate serve --data-dir ${dataDir} --restore`,
      `or, from a configuration exported with \`blockgate config export\`: blockgate serve --data-dir ${dataDir} --restore FILE`,
    );
  } else {
    lines.push(`No saved configuration is there. To restore one exported with \`blockgate config export\`, run:`, `  blockgate serve --data-dir ${dataDir} --restore FILE`);
  }
  return new BlockgateError('CONFLICT', lines.join('\n'), { dataDir, arrayTraces: r.arrayTraces, saved: r.saved?.file ?? null });
}

/** Keeps what is left of a lost database (a zero-length file, a stray WAL) for inspection, out of the new one's way. */
export async function moveAsideLostDatabase(dataDir: string): Promise<string[]> {
  const stamp = new Date().toISOString().replace(/[:.]/g, '-');
  const moved: string[] = [];
  for (const f of [DB_FILE, `${DB_FILE}-wal`, `${DB_FILE}-shm`]) {
    const from = path.join(dataDir, f);
    if (!fs.existsSync(from)) continue;
    const to = `${from}.lost-${stamp}`;
    await fs.promises.rename(from, to);
    moved.push(path.basename(to));
  }
  return moved;
}
