import { BlockgateError, conflict, notFound } from '../../common/errors.js';
import type { CutoverStats } from '../cutover-stats.js';
import { chooseProtocol, protocolsOf, type BindingProtocol, type BindingRow } from '../model.js';
import type { JobContext } from '../jobs.js';
import type { JobView } from '../views.js';
import { holdGroup } from './consistency.js';
import type { HostCredentials, IssuedCredential } from './credentials.js';
import type { Lifecycle, OperationContext } from './context.js';

export type MigrationMode = 'live' | 'stop-and-copy';

export interface MigrateParams {
  vm: string;
  from: string;
  to: string;
  mode: MigrationMode;
  protocol: BindingProtocol;
  timeoutMs: number;
}

/** Saved after each step; a restart rolls back before the cutover committed and finishes after it. */
interface Checkpoint {
  step: 'bound' | 'cut';
  bBindings: number[];
}

export interface MigrationResult {
  outcome: 'migrated';
  vm: string;
  from: string;
  to: string;
  protocol: BindingProtocol;
  /** How long the VM's disks held I/O at the cutover (null when a restart finished it). */
  pauseMs: number | null;
  resumed: boolean;
}

const now = (): string => new Date().toISOString();

/** A migration that ended with A keeping its access and B having none: the job fails with this, saying why. */
const rolledBack = (p: MigrateParams, reason: string): BlockgateError =>
  new BlockgateError('OPERATION_FAILED', `migration of vm '${p.vm}' to '${p.to}' rolled back (host '${p.from}' keeps its disks, '${p.to}' has none): ${reason}`, { vm: p.vm, outcome: 'rolled-back' });
const POLL_MS = 100;

/**
 * VM migration from host A to host B (seed 000): bind B at A's unit
 * addresses over a protocol B speaks, wait for B to connect (or an explicit
 * cutover), then in one consistency group hold every disk of the VM, sync,
 * move the bindings and the VM to B in one transaction and revoke A (its
 * sessions end, what the hold caught from them is refused: fenced), and let
 * go. Before that transaction commits, any failure, timeout or restart
 * rolls back to A alone; after it, the migration is done.
 */
export class Migrations {
  private readonly m: Lifecycle;
  /** Explicit cutover requests, by VM name (in memory: a restart rolls an uncut migration back anyway). */
  private readonly cutoverAsked = new Set<string>();

  constructor(
    private readonly c: OperationContext,
    private readonly cutovers: CutoverStats,
    private readonly credentials: HostCredentials,
  ) {
    this.m = c.lifecycle;
    c.jobs.register<MigrateParams>('vm-migrate', {
      onRestart: 'resume',
      run: (ctx) => this.m.asJob(ctx.id, () => this.run(ctx)),
    });
  }

  private vmRow(name: string): { id: number; name: string; host_id: number } {
    const v = this.c.db.prepare('SELECT * FROM vms WHERE name = ?').get(name) as { id: number; name: string; host_id: number } | undefined;
    if (!v) throw notFound('vm', name);
    return v;
  }

  private vmBindings(vmId: number): BindingRow[] {
    return this.c.db.prepare('SELECT b.* FROM bindings b JOIN vm_bindings vb ON vb.binding_id = b.id WHERE vb.vm_id = ? ORDER BY b.target, b.lun').all(vmId) as BindingRow[];
  }

  /**
   * Checks the precondition (CONFLICT/NOT_FOUND, nothing changed), issues B
   * fresh credentials for the VM's disks and queues the job. The credentials'
   * secrets are in the answer and nowhere else.
   */
  async submit(vm: string, opts: { to: string; mode: MigrationMode; protocol?: BindingProtocol | undefined; timeoutMs: number }): Promise<{ job: JobView; credentials: IssuedCredential[] }> {
    const { m, c } = this;
    const v = this.vmRow(vm);
    const a = m.hostById(v.host_id);
    const b = m.host(opts.to);
    if (a.id === b.id) throw conflict(`vm '${vm}' is already on host '${b.name}'`);
    if (this.active(vm)) throw conflict(`vm '${vm}' is already migrating`);
    const bindings = this.vmBindings(v.id);
    if (bindings.length === 0) throw conflict(`vm '${vm}' owns no bindings`);
    for (const x of bindings) {
      const vol = m.volumeById(x.volume_id);
      if (vol.farm_id !== null && vol.farm_id !== b.farm_id) throw conflict(`volume '${vol.name}' belongs to another farm than host '${b.name}'`, { volume: vol.name, host: b.name });
      if (c.db.prepare('SELECT 1 FROM bindings WHERE host_id = ? AND target = ? AND lun = ?').get(b.id, x.target, x.lun)) {
        throw conflict(`unit ${x.target}/${x.lun} of host '${b.name}' is already bound`, { host: b.name, target: x.target, lun: x.lun });
      }
      if (!x.mapped) throw conflict(`binding ${x.id} of vm '${vm}' is not mapped`);
    }
    const protocol = chooseProtocol(b, opts.protocol, c.dataPath.frontends.map((f) => f.protocol));
    const params: MigrateParams = { vm, from: a.name, to: b.name, mode: opts.mode, protocol, timeoutMs: opts.timeoutMs };
    // Issued before the job exists: a job that rolls back at once finds them to withdraw.
    const credentials = await this.credentials.issue(b, vm, protocol, null);
    let job;
    try {
      job = c.jobs.submit('vm-migrate', params as unknown as Record<string, unknown>, bindings.map((x) => x.volume_id));
    } catch (e) {
      await this.credentials.withdraw(b, vm);
      throw e;
    }
    c.events.emit('vm.migrate.queued', `vm/${vm}`, { job: job.id, ...params });
    return { job: c.jobs.describe(job), credentials };
  }

  /** Asks a running live migration to cut over now instead of waiting for B's sessions. */
  cutover(vm: string): void {
    this.vmRow(vm);
    if (!this.active(vm)) throw conflict(`vm '${vm}' has no migration in progress`);
    this.cutoverAsked.add(vm);
  }

  private active(vm: string): boolean {
    return this.c.jobs.list({ kind: 'vm-migrate' }).some((j) => (j.state === 'running' || j.state === 'queued') && (JSON.parse(j.params) as MigrateParams).vm === vm);
  }

  private step(p: MigrateParams, step: string, extra: Record<string, unknown> = {}): void {
    this.c.events.emit('vm.migrate.step', `vm/${p.vm}`, { vm: p.vm, from: p.from, to: p.to, step, ...extra });
    this.c.log.info({ op: 'vm.migrate', vm: p.vm, from: p.from, to: p.to, step, ...extra }, `migration of ${p.vm}: ${step}`);
  }

  private async run(ctx: JobContext<MigrateParams>): Promise<MigrationResult> {
    const p = ctx.params;
    const vm = this.vmRow(p.vm);
    const b = this.m.host(p.to);
    // Checkpoints are throttled: where a cut-off run got to is read from the database, which each step changes in one transaction.
    const leftovers = this.bindingsOfBAtVmUnits(p);
    const resumed = (ctx.resumeFrom !== null && ctx.resumeFrom !== undefined) || leftovers.length > 0 || vm.host_id === b.id;
    const base = { vm: p.vm, from: p.from, to: p.to, protocol: p.protocol, resumed };
    if (resumed) {
      if (vm.host_id === b.id) {
        await this.credentials.withdraw(this.m.host(p.from), p.vm);
        this.step(p, 'resumed: the cutover had committed, the migration is done');
        this.cutovers.outcome('migration', 'succeeded');
        return { outcome: 'migrated', ...base, pauseMs: null };
      }
      this.step(p, 'resumed: the cutover had not committed, rolling back');
      await this.rollback(p, leftovers);
      this.cutovers.outcome('migration', 'rolled-back');
      throw rolledBack(p, 'the appliance restarted before the cutover committed');
    }
    const aBindings = this.vmBindings(vm.id);
    const total = 4;
    let bIds: number[] = [];
    try {
      // 1. Bind B at A's unit addresses over B's protocol (shared during the handover) and publish.
      this.m.fault('migrate-bind');
      bIds = this.c.db.transaction(() => {
        const ins = this.c.db.prepare('INSERT INTO bindings (volume_id, host_id, target, lun, protocol, mode, mapped, created_at) VALUES (?, ?, ?, ?, ?, ?, 1, ?)');
        return aBindings.map((x) => Number(ins.run(x.volume_id, b.id, x.target, x.lun, p.protocol, x.mode, now()).lastInsertRowid));
      })();
      ctx.progress(1, total, { step: 'bound', bBindings: bIds } satisfies Checkpoint);
      await this.m.publishHost(b.id);
      this.step(p, 'bound', { bindings: bIds, protocol: p.protocol });
      // 2. Wait for B (live) until it reaches every unit over its protocol, an explicit cutover, or the timeout.
      if (p.mode === 'live') await this.waitForB(p, aBindings, ctx.signal);
      ctx.progress(2, total, { step: 'bound', bBindings: bIds } satisfies Checkpoint);
      // 3. Cutover: hold the VM's disks, sync, move everything to B in one transaction, revoke A, let go.
      const volumes = aBindings.map((x) => this.m.volumeHandle(this.m.volumeById(x.volume_id)));
      const { value: revoked, pauseMs } = await holdGroup(this.c.dataPath.store, volumes, () => {
        this.m.fault('migrate-cutover');
        this.c.db.transaction(() => {
          const del = this.c.db.prepare('DELETE FROM bindings WHERE id = ?');
          const moveVm = this.c.db.prepare('UPDATE vm_bindings SET binding_id = ? WHERE vm_id = ? AND binding_id = ?');
          aBindings.forEach((x, i) => {
            moveVm.run(bIds[i]!, vm.id, x.id);
            del.run(x.id);
            this.c.events.emit('binding.deleted', `binding/${x.id}`, { id: x.id, reason: `vm ${p.vm} migrated to ${p.to}` });
          });
          this.c.db.prepare('UPDATE vms SET host_id = ? WHERE id = ?').run(b.id, vm.id);
        })();
        this.m.fault('migrate-committed');
        return { done: this.m.publishHost(this.m.host(p.from).id) };
      });
      ctx.progress(3, total, { step: 'cut', bBindings: bIds } satisfies Checkpoint);
      await revoked.done;
      // A's credentials for these disks are refused from now on (B's own, issued at submit, stay).
      await this.credentials.withdraw(this.m.host(p.from), p.vm);
      this.cutovers.pause(pauseMs);
      this.step(p, 'cut over', { pauseMs });
      ctx.progress(4, total, { step: 'cut', bBindings: bIds } satisfies Checkpoint);
      this.c.events.emit('vm.migrated', `vm/${p.vm}`, { vm: p.vm, from: p.from, to: p.to, protocol: p.protocol, pauseMs });
      this.cutovers.outcome('migration', 'succeeded');
      return { outcome: 'migrated', ...base, pauseMs };
    } catch (e) {
      const reason = (e as Error).message;
      if (this.vmRow(p.vm).host_id === b.id) throw e;
      await this.rollback(p, bIds);
      this.cutovers.outcome('migration', 'rolled-back');
      this.step(p, 'rolled back', { reason });
      throw rolledBack(p, reason);
    } finally {
      this.cutoverAsked.delete(p.vm);
    }
  }

  /** B's bindings at the VM's unit addresses (a restart that lost the checkpoint finds them here). */
  private bindingsOfBAtVmUnits(p: MigrateParams): number[] {
    const vm = this.vmRow(p.vm);
    const b = this.m.host(p.to);
    return this.vmBindings(vm.id)
      .map((x) => this.c.db.prepare('SELECT id FROM bindings WHERE host_id = ? AND target = ? AND lun = ? AND volume_id = ?').get(b.id, x.target, x.lun, x.volume_id) as { id: number } | undefined)
      .filter((r) => r !== undefined)
      .map((r) => r.id);
  }

  /** B loses what it was given (its sessions on those units end); A keeps its bindings, untouched. */
  private async rollback(p: MigrateParams, bIds: number[]): Promise<void> {
    const del = this.c.db.prepare('DELETE FROM bindings WHERE id = ? AND host_id = ?');
    const b = this.m.host(p.to);
    this.c.db.transaction(() => {
      for (const id of bIds) del.run(id, b.id);
    })();
    await this.m.publishHost(b.id);
    await this.m.publishHost(this.m.host(p.from).id);
    await this.credentials.withdraw(b, p.vm);
  }

  /**
   * Live: waits until B reaches every unit of the VM (an NBD session on each
   * export, an iSCSI session on each unit's target), an explicit cutover, the
   * timeout or a cancel. A session of B on some other unit does not count.
   */
  private async waitForB(p: MigrateParams, units: readonly { target: number; lun: number }[], signal: AbortSignal): Promise<void> {
    const speaks = protocolsOf(p.protocol);
    const frontends = this.c.dataPath.frontends.filter((f) => speaks.includes(f.protocol));
    const reached = (x: { target: number; lun: number }): boolean =>
      frontends.some((f) => {
        const u = this.c.dataPath.namespaces.lookup(p.to, x.target, x.lun, f.protocol);
        return u !== undefined && f.reaches(p.to, u);
      });
    const deadline = Date.now() + p.timeoutMs;
    for (;;) {
      if (this.cutoverAsked.has(p.vm)) return this.step(p, 'cutover requested');
      if (units.every(reached)) return this.step(p, 'host connected to every unit', { host: p.to, units: units.map((x) => `${x.target}/${x.lun}`) });
      if (signal.aborted) throw new BlockgateError('ILLEGAL_STATE', 'migration cancelled');
      if (Date.now() > deadline) {
        const missing = units.filter((x) => !reached(x)).map((x) => `${x.target}/${x.lun}`);
        throw new BlockgateError('CONFLICT', `host '${p.to}' did not connect to every unit within ${p.timeoutMs} ms (not reached: ${missing.join(', ')})`);
      }
      await new Promise((r) => setTimeout(r, POLL_MS));
    }
  }
}
