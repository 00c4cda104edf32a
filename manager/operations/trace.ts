import { BlockgateError, badRequest, notFound } from '../../common/errors.js';
import type { VolumeRow } from '../model.js';
import type { VolumeState } from '../state.js';
import type { ResolveView, UnitTrace, VolumeTrace } from '../views.js';
import type { Lifecycle, OperationContext } from './context.js';

/**
 * Trace and resolve (seed 002): host → unit → volume → extents → array files
 * with byte offsets, and back. Offsets come from the volume's VolumeLayout,
 * the same object the data path translates every request with.
 */
export class Tracer {
  private readonly m: Lifecycle;

  constructor(private readonly c: OperationContext) {
    this.m = c.lifecycle;
  }

  private arrays(): Map<number, { name: string; path: string }> {
    return new Map(this.m.listArrays().map((a) => [a.id, { name: a.name, path: a.path }]));
  }

  private segments(v: VolumeRow, offset: number, length: number): VolumeTrace['segments'] {
    const arrays = this.arrays();
    return this.m.layoutOf(v.id).translate(offset, length).map((s) => ({
      volumeOffset: offset + s.requestOffset,
      length: s.length,
      array: arrays.get(s.arrayId)?.name ?? null,
      file: arrays.get(s.arrayId)?.path ?? null,
      arrayOffset: s.arrayOffset,
    }));
  }

  private units(v: VolumeRow): VolumeTrace['units'] {
    return this.m.bindingsOfVolume(v.id).map((b) => {
      const h = this.m.hostById(b.host_id);
      return { host: h.name, target: b.target, lun: b.lun, export: `${b.target}/${b.lun}`, mode: b.mode, mapped: b.mapped === 1, binding: b.id };
    });
  }

  private vms(v: VolumeRow): string[] {
    return (
      this.c.db
        .prepare('SELECT DISTINCT vms.name FROM vms JOIN vm_bindings vb ON vb.vm_id = vms.id JOIN bindings b ON b.id = vb.binding_id WHERE b.volume_id = ? ORDER BY vms.name')
        .all(v.id) as { name: string }[]
    ).map((r) => r.name);
  }

  /** Describes a volume end to end; `offset`/`length` narrow the segments to one request. */
  volumeTrace(v: VolumeRow, offset = 0, length?: number): VolumeTrace {
    const size = this.m.layoutOf(v.id).size;
    const len = length ?? size - offset;
    return {
      volume: { name: v.name, size: v.size, state: v.state as VolumeState, serial: v.serial, naa: v.naa, farm: this.m.findFarmName(v.farm_id) },
      units: this.units(v),
      vms: this.vms(v),
      request: { offset, length: len },
      segments: size === 0 ? [] : this.segments(v, offset, len),
    };
  }

  /** What host `host` reaches at unit t/l, and where each byte of the request lives. */
  unit(hostName: string, target: number, lun: number, offset = 0, length?: number): UnitTrace {
    const h = this.m.host(hostName);
    const b = this.m.bindingsOfHost(h.id).find((x) => x.target === target && x.lun === lun);
    if (!b) throw notFound('unit', `${hostName}:${target}/${lun}`);
    const v = this.m.volumeById(b.volume_id);
    const layout = this.m.layoutOf(v.id);
    const len = length ?? layout.size - offset;
    if (!layout.inRange(offset, len)) throw new BlockgateError('OUT_OF_RANGE', `range ${offset}+${len} is outside the volume (size ${layout.size})`);
    return { host: h.name, target, lun, mapped: b.mapped === 1, mode: b.mode, ...this.volumeTrace(v, offset, len) };
  }

  /** Reverse lookups from what a host or an admin holds: serial, NAA, export, VM, or an array byte. */
  resolve(q: { serial?: string | undefined; naa?: string | undefined; export?: string | undefined; host?: string | undefined; vm?: string | undefined; array?: string | undefined; offset?: number | undefined }): ResolveView {
    const { m, c } = this;
    if (q.serial || q.naa) {
      const v = (q.serial
        ? c.db.prepare('SELECT * FROM volumes WHERE serial = ?').get(q.serial.toUpperCase())
        : c.db.prepare('SELECT * FROM volumes WHERE naa = ?').get(q.naa!.toLowerCase().replace(/^naa\./, ''))) as VolumeRow | undefined;
      if (!v) throw notFound(q.serial ? 'serial' : 'naa', (q.serial ?? q.naa)!);
      return this.volumeTrace(v);
    }
    if (q.export) {
      const mm = /^(\d{1,3})\/(\d{1,5})$/.exec(q.export);
      if (!mm) throw badRequest(`export '${q.export}' is not TARGET/LUN`);
      if (!q.host) throw badRequest('an export name is per host: give host as well');
      return this.unit(q.host, Number(mm[1]), Number(mm[2]));
    }
    if (q.vm) {
      const vm = c.db.prepare('SELECT * FROM vms WHERE name = ?').get(q.vm) as { id: number; name: string; host_id: number } | undefined;
      if (!vm) throw notFound('vm', q.vm);
      const bs = c.db.prepare('SELECT b.* FROM bindings b JOIN vm_bindings vb ON vb.binding_id = b.id WHERE vb.vm_id = ? ORDER BY b.target, b.lun').all(vm.id) as { volume_id: number; target: number; lun: number }[];
      return {
        vm: vm.name,
        host: m.hostById(vm.host_id).name,
        disks: bs.map((b) => ({ target: b.target, lun: b.lun, ...this.volumeTrace(m.volumeById(b.volume_id)) })),
      };
    }
    if (q.array) {
      const a = m.array(q.array);
      const offset = q.offset ?? 0;
      if (offset < 0 || offset >= a.size) throw new BlockgateError('OUT_OF_RANGE', `offset ${offset} is outside array '${a.name}' (size ${a.size})`);
      for (const v of m.listVolumes()) {
        const vo = m.layoutOf(v.id).volumeOffsetOf(a.id, offset);
        if (vo !== null) return { array: a.name, file: a.path, arrayOffset: offset, owner: 'volume', volumeOffset: vo, ...this.volumeTrace(v, vo, 1) };
      }
      return { array: a.name, file: a.path, arrayOffset: offset, owner: 'free' };
    }
    throw badRequest('give one of serial, naa, export (with host), vm, or array (with offset)');
  }
}
