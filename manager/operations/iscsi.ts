import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { badRequest, conflict, notFound } from '../../common/errors.js';
import type { Frontend } from '../../target/core/index.js';
import { isValidIqn, type InitiatorAccess } from '../../target/iscsi/index.js';
import type { ReservationStore } from '../../target/iscsi/scsi/index.js';
import type { StorageManager } from '../manager.js';
import type { HostRow } from '../model.js';
import type { IscsiIdentity } from '../views.js';

const now = (): string => new Date().toISOString();

export type ChapMode = 'one-way' | 'mutual';

/** What is kept in DATA/iscsi/chap/<host>.json (mode 0600); the database records only the mode. */
interface ChapFile {
  username: string;
  secret: string;
  mutualUsername?: string;
  mutualSecret?: string;
}

/** CHAP secrets are shown once, when created; afterwards only their existence is. */
export interface ChapCreated {
  host: string;
  mode: ChapMode;
  username: string;
  secret: string;
  mutualUsername?: string;
  mutualSecret?: string;
}

/** 16 characters: the longest secret every initiator accepts (Windows wants 12-16). */
const newSecret = (): string => crypto.randomBytes(12).toString('base64url');

/**
 * A host's iSCSI identity: the initiator names that are this host, its CHAP
 * secrets, and the per-volume SCSI state the command set persists
 * (reservations). The target asks `initiator()` on every login; it answers
 * from memory (secrets are read once at start, written on change).
 */
export class IscsiAccess {
  private readonly secrets = new Map<string, ChapFile>();

  constructor(private readonly m: StorageManager) {}

  private frontend(): Frontend | undefined {
    return this.m.dataPath.frontends.find((f) => f.protocol === 'iscsi');
  }

  private chapDir(): string {
    return path.join(this.m.dataDir, 'iscsi', 'chap');
  }

  private chapFile(host: string): string {
    return path.join(this.chapDir(), `${host}.json`);
  }

  /** Reads every host's CHAP secrets (start-up). A host whose file is missing fails CHAP until rotated. */
  async load(): Promise<void> {
    this.secrets.clear();
    for (const h of this.m.listHosts()) {
      if (!h.chap) continue;
      try {
        this.secrets.set(h.name, JSON.parse(await fs.promises.readFile(this.chapFile(h.name), 'utf8')) as ChapFile);
      } catch (e) {
        this.m.log.error({ op: 'iscsi.chap', host: h.name, err: e }, 'CHAP secret file unreadable: logins of this host will fail until the secret is rotated');
      }
    }
  }

  /** The login directory's answer: which host an initiator is, if that host may use iSCSI. */
  initiator(name: string): InitiatorAccess | null {
    const row = this.m.db
      .prepare('SELECT h.* FROM host_initiators i JOIN hosts h ON h.id = i.host_id WHERE i.iqn = ?')
      .get(name.toLowerCase()) as HostRow | undefined;
    if (!row || !row.protocols.split(',').includes('iscsi')) return null;
    if (!row.chap) return { host: row.name, chap: null, mutualChap: null };
    const s = this.secrets.get(row.name);
    const otherChap = this.m.credentials.chapOf(row.name);
    // CHAP is required but the secret is unknown: a secret nobody knows refuses every response.
    if (!s) return { host: row.name, chap: { username: row.name, secret: crypto.randomBytes(32).toString('hex') }, otherChap, mutualChap: null };
    return {
      host: row.name,
      chap: { username: s.username, secret: s.secret },
      otherChap,
      mutualChap: s.mutualUsername && s.mutualSecret ? { username: s.mutualUsername, secret: s.mutualSecret } : null,
    };
  }

  initiators(host: string): string[] {
    const h = this.m.host(host);
    return (this.m.db.prepare('SELECT iqn FROM host_initiators WHERE host_id = ? ORDER BY iqn').all(h.id) as { iqn: string }[]).map((r) => r.iqn);
  }

  addInitiator(host: string, iqn: string): string[] {
    const h = this.m.host(host);
    const name = iqn.toLowerCase();
    if (!isValidIqn(name)) throw badRequest(`'${iqn}' is not an iSCSI name (iqn.YYYY-MM.domain[:id], eui.<16 hex> or naa.<hex>)`);
    const owner = this.m.db.prepare('SELECT h.name FROM host_initiators i JOIN hosts h ON h.id = i.host_id WHERE i.iqn = ?').get(name) as { name: string } | undefined;
    // One initiator is one host: otherwise its logins could not say which host acts.
    if (owner && owner.name !== h.name) throw conflict(`initiator '${name}' already belongs to host '${owner.name}'`, { host: owner.name });
    if (!owner) this.m.db.prepare('INSERT INTO host_initiators (iqn, host_id, created_at) VALUES (?, ?, ?)').run(name, h.id, now());
    this.m.events.emit('host.initiator.added', `host/${h.name}`, { host: h.name, iqn: name });
    this.m.log.info({ op: 'host.initiator.add', host: h.name, iqn: name }, 'initiator added');
    return this.initiators(host);
  }

  async removeInitiator(host: string, iqn: string): Promise<string[]> {
    const h = this.m.host(host);
    const name = iqn.toLowerCase();
    const r = this.m.db.prepare('DELETE FROM host_initiators WHERE host_id = ? AND iqn = ?').run(h.id, name);
    if (r.changes === 0) throw notFound('initiator', name);
    this.m.events.emit('host.initiator.removed', `host/${h.name}`, { host: h.name, iqn: name });
    this.m.log.info({ op: 'host.initiator.remove', host: h.name, iqn: name }, 'initiator removed');
    // Sessions that logged in under this name act for the host no longer.
    await this.frontend()?.revoke(h.name, null);
    return this.initiators(host);
  }

  /** Creates or rotates a host's CHAP secrets; the only time they are returned. */
  async setChap(host: string, opts: { mode: ChapMode; username?: string | undefined; mutualUsername?: string | undefined }): Promise<ChapCreated> {
    const h = this.m.host(host);
    const username = opts.username ?? h.name;
    if (!/^[\x21-\x7e]{1,255}$/.test(username)) throw badRequest('CHAP username must be 1-255 printable ASCII characters without spaces');
    const file: ChapFile = { username, secret: newSecret() };
    if (opts.mode === 'mutual') {
      file.mutualUsername = opts.mutualUsername ?? 'blockgate';
      if (!/^[\x21-\x7e]{1,255}$/.test(file.mutualUsername)) throw badRequest('mutual CHAP username must be 1-255 printable ASCII characters without spaces');
      file.mutualSecret = newSecret();
    }
    await fs.promises.mkdir(this.chapDir(), { recursive: true, mode: 0o700 });
    const target = this.chapFile(h.name);
    const tmp = `${target}.tmp`;
    await fs.promises.writeFile(tmp, JSON.stringify(file), { mode: 0o600 });
    await fs.promises.rename(tmp, target);
    this.m.db.prepare('UPDATE hosts SET chap = ? WHERE id = ?').run(opts.mode, h.id);
    this.secrets.set(h.name, file);
    this.m.events.emit('host.chap.set', `host/${h.name}`, { host: h.name, mode: opts.mode });
    this.m.log.info({ op: 'host.chap', host: h.name, mode: opts.mode }, 'CHAP secret set');
    return { host: h.name, mode: opts.mode, ...file };
  }

  async clearChap(host: string): Promise<void> {
    const h = this.m.host(host);
    this.m.db.prepare('UPDATE hosts SET chap = NULL WHERE id = ?').run(h.id);
    this.secrets.delete(h.name);
    await fs.promises.rm(this.chapFile(h.name), { force: true });
    this.m.events.emit('host.chap.cleared', `host/${h.name}`, { host: h.name });
    this.m.log.info({ op: 'host.chap', host: h.name, mode: null }, 'CHAP cleared');
  }

  /** A deleted host's secrets go with it (its initiator rows went with the host row). */
  async forget(host: string): Promise<void> {
    this.secrets.delete(host);
    await fs.promises.rm(this.chapFile(host), { force: true });
  }

  /**
   * Which protocols a host speaks (default both) and its default protocol
   * ('both' only when it speaks both). A binding served over both is served
   * over what is left (and over both again when the host gets both back); a
   * binding served only over a dropped protocol must be switched first
   * (CONFLICT, nothing changed). Dropping iscsi logs its sessions out.
   */
  async setProtocols(host: string, protocols: string[], defaultProtocol?: string): Promise<void> {
    const h = this.m.host(host);
    const allowed = ['nbd', 'iscsi'];
    const list = [...new Set(protocols)];
    if (list.length === 0 || list.some((p) => !allowed.includes(p))) throw badRequest(`protocols must be a non-empty subset of ${allowed.join(', ')}`);
    const both = list.length === 2;
    if (defaultProtocol !== undefined && !(defaultProtocol === 'both' ? both : list.includes(defaultProtocol))) {
      throw badRequest(`default protocol '${defaultProtocol}' is not one the host speaks (${list.join(', ')})`);
    }
    const kept = defaultProtocol ?? h.default_protocol;
    const def = (kept === 'both' ? both : list.includes(kept)) ? kept : list[0]!;
    const bindings = this.m.bindingsOfHost(h.id);
    const stranded = bindings.filter((b) => b.protocol !== 'both' && !list.includes(b.protocol));
    if (stranded.length > 0) {
      throw conflict(`bindings ${stranded.map((b) => b.id).join(', ')} of host '${h.name}' are served only over ${stranded[0]!.protocol}: switch them first`, {
        host: h.name,
        bindings: stranded.map((b) => b.id),
      });
    }
    this.m.db.prepare('UPDATE hosts SET protocols = ?, default_protocol = ? WHERE id = ?').run(list.join(','), def, h.id);
    this.m.log.info({ op: 'host.protocols', host: h.name, protocols: list, defaultProtocol: def }, 'host protocols changed');
    await this.m.publishHost(h.id);
    if (!list.includes('iscsi')) await this.frontend()?.revoke(h.name, null);
  }

  /** The admin's view of a host's iSCSI identity (never the secrets). */
  describe(h: HostRow, initiators: string[] = this.initiators(h.name)): IscsiIdentity {
    const s = this.secrets.get(h.name);
    return {
      initiators,
      chap: h.chap === 'one-way' || h.chap === 'mutual' ? { mode: h.chap, username: s?.username ?? null, mutualUsername: s?.mutualUsername ?? null } : null,
    };
  }

  /** The store the SCSI command set keeps reservations in, one row per volume. */
  readonly reservations: ReservationStore = {
    load: (volumeId) => {
      const r = this.m.db.prepare('SELECT state FROM scsi_reservations WHERE volume_id = ?').get(volumeId) as { state: string } | undefined;
      return r ? (JSON.parse(r.state) as unknown) : undefined;
    },
    save: (volumeId, state) => {
      if (state === undefined || state === null) this.m.db.prepare('DELETE FROM scsi_reservations WHERE volume_id = ?').run(volumeId);
      else this.m.db.prepare('INSERT INTO scsi_reservations (volume_id, state) VALUES (?, ?) ON CONFLICT(volume_id) DO UPDATE SET state = excluded.state').run(volumeId, JSON.stringify(state));
    },
  };

  /** MODE SELECT's caching page: saved as the volume's cache policy and applied to the live volume. */
  async setCachePolicy(volumeId: number, policy: 'none' | 'write-through' | 'write-back'): Promise<void> {
    const v = this.m.volumeById(volumeId);
    if (v.cache_policy === policy) return;
    this.m.db.prepare('UPDATE volumes SET cache_policy = ?, updated_at = ? WHERE id = ?').run(policy, now(), volumeId);
    const hosts = this.m.hostsMappingVolume(volumeId);
    // Writes cached so far reach the array before the volume stops caching them.
    const live = hosts.flatMap((id) => this.m.dataPath.namespaces.list(this.m.hostById(id).name)).find((u) => u.volume.id === volumeId);
    if (live && policy !== 'write-back') await this.m.dataPath.store.flush(live.volume);
    for (const hostId of hosts) this.m.publishHost(hostId);
  }

}
