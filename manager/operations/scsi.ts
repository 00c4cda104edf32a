import type { CachePolicy } from '../../cache/index.js';
import type { ReservationStore } from '../../target/iscsi/scsi/contract.js';
import type { Db } from '../db.js';
import type { Namespaces } from '../../target/index.js';

const now = (): string => new Date().toISOString();

/**
 * Persistent reservations per volume, in the control database (migration 4),
 * so an APTPL reservation outlives a restart. The SCSI layer decides what to
 * keep; this only stores it.
 */
export class SqliteReservationStore implements ReservationStore {
  constructor(private readonly db: Db) {}

  load(volumeId: number): unknown | undefined {
    const row = this.db.prepare('SELECT state FROM scsi_reservations WHERE volume_id = ?').get(volumeId) as { state: string } | undefined;
    if (!row) return undefined;
    try {
      return JSON.parse(row.state) as unknown;
    } catch {
      return undefined;
    }
  }

  save(volumeId: number, state: unknown): void {
    // A volume forgotten under a live session has no row to keep state for.
    const exists = this.db.prepare('SELECT 1 FROM volumes WHERE id = ?').get(volumeId);
    if (!exists) return;
    this.db
      .prepare(
        `INSERT INTO scsi_reservations (volume_id, state, updated_at) VALUES (?, ?, ?)
         ON CONFLICT(volume_id) DO UPDATE SET state = excluded.state, updated_at = excluded.updated_at`,
      )
      .run(volumeId, JSON.stringify(state), now());
  }
}

/**
 * A volume's cache policy set from a host (SCSI MODE SELECT caching page,
 * WCE): saved as the volume's policy and applied to the live handles every
 * unit of the volume shares with the data path.
 */
export function setVolumeCachePolicy(db: Db, namespaces: Namespaces, hosts: readonly string[], volumeId: number, policy: CachePolicy): void {
  db.prepare('UPDATE volumes SET cache_policy = ?, updated_at = ? WHERE id = ?').run(policy, now(), volumeId);
  for (const h of hosts) for (const u of namespaces.list(h)) if (u.volume.id === volumeId) u.volume.cachePolicy = policy;
}
