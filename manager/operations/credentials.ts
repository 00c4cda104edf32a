import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { ChapSecret } from '../../target/iscsi/index.js';
import type { BindingProtocol, HostRow } from '../model.js';
import { protocolsOf } from '../model.js';
import type { OperationContext } from './context.js';

const now = (): string => new Date().toISOString();

/** A credential as handed to the host, once: the secret is never shown again. */
export type IssuedCredential =
  | { kind: 'tls-psk'; identity: string; key: string; pskFile: string }
  | { kind: 'chap'; username: string; secret: string };

interface Row {
  identity: string;
  host_id: number;
  vm: string;
  protocol: 'nbd' | 'iscsi';
}

/**
 * Credentials issued to a host for one VM's disks when the VM migrates to
 * it: a fresh NBD TLS-PSK identity and key, or a fresh CHAP secret where the
 * host logs in to iSCSI with CHAP (a host admitted by its initiator name alone
 * has no secret to refresh). The row (identity, host, VM) is in the database,
 * the secret in DATA/credentials/<identity>.key (0600); both are loaded at
 * start. They authenticate as the host they were issued to. A rolled-back
 * migration withdraws them; a committed one withdraws the old host's
 * credentials for that VM, so they are refused from then on.
 */
export class HostCredentials {
  private readonly chap = new Map<string, ChapSecret[]>();

  constructor(private readonly c: OperationContext) {}

  private dir(): string {
    return path.join(this.c.dataDir, 'credentials');
  }

  private file(identity: string): string {
    return path.join(this.dir(), `${identity}.key`);
  }

  private rows(hostId: number, vm?: string): Row[] {
    return this.c.db
      .prepare('SELECT c.*, h.name AS host FROM host_credentials c JOIN hosts h ON h.id = c.host_id WHERE c.host_id = ? AND (? IS NULL OR c.vm = ?) ORDER BY c.identity')
      .all(hostId, vm ?? null, vm ?? null) as Row[];
  }

  /** Reads every issued credential into memory (start-up); one whose file is gone is dropped. */
  async load(): Promise<void> {
    this.chap.clear();
    const all = this.c.db.prepare('SELECT c.*, h.name AS host FROM host_credentials c JOIN hosts h ON h.id = c.host_id').all() as (Row & { host: string })[];
    for (const r of all) {
      const secret = await fs.promises.readFile(this.file(r.identity), 'utf8').catch(() => null);
      if (secret === null) {
        this.c.log.error({ op: 'credentials.load', identity: r.identity, host: r.host }, 'issued credential file missing: withdrawn');
        this.c.db.prepare('DELETE FROM host_credentials WHERE identity = ?').run(r.identity);
        continue;
      }
      this.install(r, r.host, secret.trim());
    }
  }

  private install(r: Row, host: string, secret: string): void {
    if (r.protocol === 'nbd') this.c.dataPath.tls?.setPsk(r.identity, Buffer.from(secret, 'hex'), host);
    else this.chap.set(host, [...(this.chap.get(host) ?? []).filter((x) => x.username !== r.identity), { username: r.identity, secret }]);
  }

  private uninstall(r: Row, host: string): void {
    if (r.protocol === 'nbd') this.c.dataPath.tls?.deletePsk(r.identity);
    else {
      const left = (this.chap.get(host) ?? []).filter((x) => x.username !== r.identity);
      if (left.length > 0) this.chap.set(host, left);
      else this.chap.delete(host);
    }
  }

  /** The CHAP secrets issued to a host (the login accepts them beside the host's own). */
  chapOf(host: string): readonly ChapSecret[] {
    return this.chap.get(host) ?? [];
  }

  /** The identity a host uses for a volume over a protocol, when one was issued to it for the VM that owns the volume. */
  identityFor(hostId: number, volumeId: number, protocol: 'nbd' | 'iscsi'): string | null {
    const r = this.c.db
      .prepare(
        `SELECT c.identity FROM host_credentials c JOIN vms v ON v.name = c.vm JOIN vm_bindings vb ON vb.vm_id = v.id JOIN bindings b ON b.id = vb.binding_id
         WHERE c.host_id = ? AND c.protocol = ? AND b.volume_id = ? ORDER BY c.created_at DESC LIMIT 1`,
      )
      .get(hostId, protocol, volumeId) as { identity: string } | undefined;
    return r?.identity ?? null;
  }

  /**
   * Issues `host` fresh credentials for `vm` over `protocol` (a PSK for nbd;
   * a CHAP secret for iscsi when the host uses CHAP), replacing any it held
   * for that VM. Returns the secrets: the only time they are shown.
   */
  async issue(host: HostRow, vm: string, protocol: BindingProtocol, job: number | null): Promise<IssuedCredential[]> {
    await this.withdraw(host, vm);
    await fs.promises.mkdir(this.dir(), { recursive: true, mode: 0o700 });
    const out: IssuedCredential[] = [];
    for (const p of protocolsOf(protocol)) {
      if (p === 'iscsi' && !host.chap) continue;
      const identity = this.newIdentity();
      // 32 bytes for a PSK (what the host PSK verb generates); 16 characters for CHAP, what every initiator accepts.
      const secret = p === 'nbd' ? crypto.randomBytes(32).toString('hex') : crypto.randomBytes(12).toString('base64url');
      const tmp = `${this.file(identity)}.tmp`;
      await fs.promises.writeFile(tmp, `${secret}\n`, { mode: 0o600 });
      await fs.promises.rename(tmp, this.file(identity));
      const row: Row = { identity, host_id: host.id, vm, protocol: p };
      this.c.db.prepare('INSERT INTO host_credentials (identity, host_id, vm, protocol, job_id, created_at) VALUES (?, ?, ?, ?, ?, ?)').run(identity, host.id, vm, p, job, now());
      this.install(row, host.name, secret);
      this.c.events.emit('host.credential.issued', `host/${host.name}`, { host: host.name, vm, protocol: p, identity });
      out.push(p === 'nbd' ? { kind: 'tls-psk', identity, key: secret, pskFile: `${identity}:${secret}\n` } : { kind: 'chap', username: identity, secret });
    }
    return out;
  }

  /** Withdraws what `host` was issued for `vm`: handshakes and logins with it are refused from now on. */
  async withdraw(host: HostRow, vm: string): Promise<void> {
    for (const r of this.rows(host.id, vm)) {
      this.uninstall(r, host.name);
      this.c.db.prepare('DELETE FROM host_credentials WHERE identity = ?').run(r.identity);
      await fs.promises.rm(this.file(r.identity), { force: true });
      this.c.events.emit('host.credential.withdrawn', `host/${host.name}`, { host: host.name, vm, protocol: r.protocol, identity: r.identity });
    }
  }

  /** Everything issued to a host (it is being deleted). */
  async withdrawAll(host: HostRow): Promise<void> {
    for (const vm of new Set(this.rows(host.id).map((r) => r.vm))) await this.withdraw(host, vm);
  }

  /** "mig-" and 12 hex digits: URI- and psk-file-safe, and not a host's name. */
  private newIdentity(): string {
    for (;;) {
      const id = `mig-${crypto.randomBytes(6).toString('hex')}`;
      if (!this.c.db.prepare('SELECT 1 FROM hosts WHERE name = ? UNION SELECT 1 FROM host_credentials WHERE identity = ?').get(id, id)) return id;
    }
  }
}
