import fs from 'node:fs';
import path from 'node:path';
import { badRequest, conflict, notFound } from '../../common/errors.js';
import { EXTENT_ALIGN } from '../../mapper/index.js';
import { bindingRecordOf } from '../config-document.js';
import { checkName } from '../model.js';
import type { VolumeState } from '../state.js';
import type { DiscoveryView, VmView, WiringMap } from '../views.js';
import type { Lifecycle, OperationContext } from './context.js';

interface VmRow {
  id: number;
  name: string;
  host_id: number;
  created_at: string;
}

/** Discovery (the wiring map) and VMs: who is where, and what a VM owns. */
export class Inventory {
  private readonly m: Lifecycle;

  constructor(private readonly c: OperationContext) {
    this.m = c.lifecycle;
  }

  /**
   * Discovery: array files dropped into `arrays/` become arrays (size rounded
   * down to the extent alignment), then the wiring map is reported.
   */
  async discover(): Promise<DiscoveryView> {
    const { m, c } = this;
    const dir = path.join(c.dataDir, 'arrays');
    const known = new Set(m.listArrays().map((a) => path.resolve(a.path)));
    const added: string[] = [];
    const skipped: { file: string; error: string }[] = [];
    for (const f of (await fs.promises.readdir(dir)).sort()) {
      const abs = path.resolve(dir, f);
      if (!f.endsWith('.img') || known.has(abs)) continue;
      try {
        const st = await fs.promises.stat(abs);
        const name = f.slice(0, -4);
        const size = Math.floor(st.size / EXTENT_ALIGN) * EXTENT_ALIGN;
        if (!st.isFile() || size === 0 || m.findArray(name)) continue;
        checkName('array', name);
        await m.adoptArray(name, abs, size);
        added.push(name);
      } catch (e) {
        // One unusable file (too large, unreadable map) is reported, never a reason not to start.
        skipped.push({ file: abs, error: (e as Error).message });
        c.log.warn({ op: 'array.adopt', file: abs, err: (e as Error).message }, `array file ${abs} not adopted: ${(e as Error).message}`);
      }
    }
    if (added.length) c.events.emit('arrays.discovered', null, { added });
    return { added, ...(skipped.length ? { skipped } : {}), ...this.wiringMap() };
  }

  wiringMap(): WiringMap {
    const { m, c } = this;
    const names = new Map(m.listArrays().map((a) => [a.id, a.name]));
    return {
      appliance: m.applianceId,
      arrays: m.listArrays().map((a) => {
        const u = m.arrayUsage(a);
        return {
          name: a.name,
          file: a.path,
          size: a.size,
          qualityClass: a.quality_class,
          state: m.health.fault(a.id) ? 'failed' : 'online',
          used: u.used,
          free: u.free,
          freeExtents: u.freeExtents.map((e) => ({ offset: e.offset, length: e.length })),
        };
      }),
      volumes: m.listVolumes().map((v) => ({
        name: v.name,
        state: v.state as VolumeState,
        size: v.size,
        extents: m.extentsOf(v.id).map((e) => ({ array: names.get(e.arrayId)!, offset: e.offset, length: e.length })),
      })),
      listeners: m.listHosts().map((h) => ({ host: h.name, socket: m.hostSocketPath(h.name), tcp: h.nbd_tcp })),
    };
  }

  createVm(opts: { name: string; host: string; bindings: number[] }): VmView {
    const { m, c } = this;
    checkName('vm', opts.name);
    const h = m.host(opts.host);
    if (opts.bindings.length === 0) throw badRequest('a VM owns at least one binding');
    if (new Set(opts.bindings).size !== opts.bindings.length) throw badRequest('a VM lists each of its bindings once');
    c.db.transaction(() => {
      if (c.db.prepare('SELECT 1 FROM vms WHERE name = ?').get(opts.name)) throw conflict(`vm '${opts.name}' already exists`);
      for (const id of opts.bindings) {
        if (m.binding(id).host_id !== h.id) throw conflict(`binding ${id} is not on host '${h.name}'`);
      }
      const vmId = Number(c.db.prepare('INSERT INTO vms (name, host_id, created_at) VALUES (?, ?, ?)').run(opts.name, h.id, new Date().toISOString()).lastInsertRowid);
      const ins = c.db.prepare('INSERT INTO vm_bindings (vm_id, binding_id) VALUES (?, ?)');
      for (const id of new Set(opts.bindings)) ins.run(vmId, id);
      c.events.emit('vm.created', `vm/${opts.name}`, { vm: opts.name, host: h.name, bindings: opts.bindings });
    })();
    c.log.info({ op: 'vm.create', vm: opts.name, host: h.name, bindings: opts.bindings }, 'vm created');
    return this.describeVm(this.vm(opts.name));
  }

  vm(name: string): VmRow {
    const v = this.c.db.prepare('SELECT * FROM vms WHERE name = ?').get(name) as VmRow | undefined;
    if (!v) throw notFound('vm', name);
    return v;
  }

  listVms(): VmView[] {
    return (this.c.db.prepare('SELECT * FROM vms ORDER BY id').all() as VmRow[]).map((v) => this.describeVm(v));
  }

  describeVm(v: VmRow): VmView {
    const bindings = (this.c.db.prepare('SELECT binding_id FROM vm_bindings WHERE vm_id = ? ORDER BY binding_id').all(v.id) as { binding_id: number }[]).map((r) =>
      {
        const b = this.m.binding(r.binding_id);
        return bindingRecordOf(b, this.m.volumeById(b.volume_id).name, this.m.hostById(b.host_id).name);
      },
    );
    return { name: v.name, host: this.m.hostById(v.host_id).name, bindings, createdAt: v.created_at };
  }

  deleteVm(name: string): void {
    const v = this.vm(name);
    this.c.db.transaction(() => {
      this.c.db.prepare('DELETE FROM vms WHERE id = ?').run(v.id);
      this.c.events.emit('vm.deleted', `vm/${name}`, { vm: name });
    })();
    this.c.log.info({ op: 'vm.delete', vm: name }, 'vm deleted');
  }
}
