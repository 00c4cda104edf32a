import { BlockgateError, conflict, notFound } from '../../common/errors.js';
import type { Db } from '../db.js';
import { chooseProtocol, failed, type AccessMode, type BindingProtocol, type BindingRow } from '../model.js';
import { holdGroup } from './consistency.js';
import type { Lifecycle, OperationContext } from './context.js';
import type { VolumeState } from '../state.js';

const now = (): string => new Date().toISOString();

/**
 * Bind, map, unmap, unbind: the array-side grant and the namespace entry,
 * each its own FIG. 7 transition, with the seed's compensation when one side
 * fails (claims 12/13: undo the other side, so both agree).
 */
export class BindingOperations {
  private readonly m: Lifecycle;
  private readonly sql: ReturnType<typeof statements>;

  constructor(private readonly c: OperationContext) {
    this.m = c.lifecycle;
    this.sql = statements(c.db);
  }

  binding(id: number): BindingRow {
    const b = this.sql.byId.get(id) as BindingRow | undefined;
    if (!b) throw notFound('binding', id);
    return b;
  }

  /** All bindings, or those of one host and/or one volume (each must exist). */
  list(filter: { host?: string | undefined; volume?: string | undefined } = {}): BindingRow[] {
    const hostId = filter.host === undefined ? null : this.m.host(filter.host).id;
    const volumeId = filter.volume === undefined ? null : this.m.volume(filter.volume).id;
    return this.sql.list.all(hostId, hostId, volumeId, volumeId) as BindingRow[];
  }

  ofHost(hostId: number): BindingRow[] {
    return this.sql.ofHost.all(hostId) as BindingRow[];
  }

  ofVolume(volumeId: number): BindingRow[] {
    return this.sql.ofVolume.all(volumeId) as BindingRow[];
  }


  /**
   * Bind (Configured/Unbound → Bound, T6/T10): the array-side grant of a
   * volume to a host at (target, lun). With `map`, Map follows through its own
   * transition, and a map failure takes its own failure edge.
   */
  bind(opts: { volume: string; host: string; target: number; lun: number; mode?: AccessMode | undefined; map?: boolean | undefined; protocol?: BindingProtocol | undefined }): BindingRow {
    const { m, c } = this;
    const v0 = m.volume(opts.volume);
    const h = m.host(opts.host);
    m.check(v0, 'bind');
    const protocol = chooseProtocol(h, opts.protocol, this.offered());
    const mode = opts.mode ?? (v0.share_mode === 'shared' ? 'shared' : 'exclusive');
    if (v0.farm_id !== null && v0.farm_id !== h.farm_id) {
      throw conflict(`volume '${v0.name}' belongs to another farm than host '${h.name}'`, { volume: v0.name, host: h.name });
    }
    const tx = c.db.transaction(() => {
      const v = m.volumeById(v0.id);
      const taken = c.db.prepare('SELECT id FROM bindings WHERE host_id = ? AND target = ? AND lun = ?').get(h.id, opts.target, opts.lun);
      if (taken) throw conflict(`unit ${opts.target}/${opts.lun} of host '${h.name}' is already bound`);
      const others = this.ofVolume(v.id);
      if (others.length > 0 && (v.share_mode !== 'shared' || mode === 'exclusive' || others.some((b) => b.mode === 'exclusive'))) {
        throw conflict(`volume '${v.name}' is exclusive and already bound`, { volume: v.name });
      }
      if (others.some((b) => b.host_id === h.id)) throw conflict(`volume '${v.name}' is already bound to host '${h.name}'`);
      if (v.farm_id === null) c.db.prepare('UPDATE volumes SET farm_id = ? WHERE id = ?').run(h.farm_id, v.id);
      const id = Number(
        c.db
          .prepare('INSERT INTO bindings (volume_id, host_id, target, lun, protocol, mode, mapped, created_at) VALUES (?, ?, ?, ?, ?, ?, 0, ?)')
          .run(v.id, h.id, opts.target, opts.lun, protocol, mode, now()).lastInsertRowid,
      );
      m.apply(v, 'bind', { host: h.name, target: opts.target, lun: opts.lun, mode, protocol });
      c.events.emit('binding.created', `binding/${id}`, { id, volume: v.name, host: h.name, target: opts.target, lun: opts.lun, mode, protocol });
      return id;
    });
    let id: number;
    try {
      m.fault('bind');
      id = tx();
    } catch (e) {
      if (e instanceof BlockgateError && e.code !== 'IO_ERROR') throw e;
      // The array side refused: Bind Fails (712) for a volume with no other binding.
      const v = m.volume(opts.volume);
      if (this.ofVolume(v.id).length === 0) m.apply(v, 'bind-failed', { error: (e as Error).message });
      throw failed('bind', v.name, e as Error, m.volume(opts.volume).state);
    }
    if (opts.map) return this.map(id);
    return this.binding(id);
  }

  /**
   * Map (Bound → Mapped, T8): the unit appears in the host's live namespace at
   * once. If the namespace side fails, the array side is undone: Map Fails
   * (718) removes the bindings and leaves the volume Unbound.
   */
  map(bindingId: number): BindingRow {
    const { m, c } = this;
    const b = this.binding(bindingId);
    if (b.mapped) return b;
    const v = m.volumeById(b.volume_id);
    m.check(v, 'map');
    c.db.transaction(() => {
      c.db.prepare('UPDATE bindings SET mapped = 1 WHERE id = ?').run(b.id);
      // Whatever a host can reach it may write (or has read): scrub before reuse.
      c.db.prepare('UPDATE volumes SET ever_mapped = 1, dirty = 1 WHERE id = ?').run(v.id);
      m.apply(v, 'map', { binding: b.id });
    })();
    try {
      m.fault('map');
      m.publishHost(b.host_id);
    } catch (e) {
      this.mapFailed(b, e as Error);
      throw failed('map', v.name, e as Error, m.volumeById(v.id).state);
    }
    return this.binding(b.id);
  }

  private mapFailed(b: BindingRow, err: Error): void {
    const { m, c } = this;
    const othersMapped = this.ofVolume(b.volume_id).filter((x) => x.id !== b.id && x.mapped);
    const removed = othersMapped.length > 0 ? [b] : this.ofVolume(b.volume_id);
    c.db.transaction(() => {
      const del = c.db.prepare('DELETE FROM bindings WHERE id = ?');
      for (const x of removed) {
        del.run(x.id);
        c.events.emit('binding.deleted', `binding/${x.id}`, { id: x.id, reason: 'map failed' });
      }
      const v = m.volumeById(b.volume_id);
      m.apply(v, 'map-failed', { error: err.message, removedBindings: removed.map((x) => x.id) }, othersMapped.length > 0 ? 'mapped' : 'unbound');
    })();
    for (const hostId of new Set(removed.map((x) => x.host_id))) {
      try {
        m.publishHost(hostId);
      } catch {
        // The namespace side is what failed; the database no longer grants the unit either way.
      }
    }
  }

  /**
   * Unmap (Mapped → Unmapped, T12): new I/O to the volume is held, what is in
   * flight drains, the volume is flushed, then the unit leaves the namespace
   * (sessions on it close) and held requests are let go to fail on their
   * closed sessions. Nothing a host saw acknowledged is lost.
   */
  async unmap(bindingId: number): Promise<BindingRow> {
    const { m, c } = this;
    const b = this.binding(bindingId);
    const v = m.volumeById(b.volume_id);
    if (!b.mapped) {
      throw new BlockgateError('ILLEGAL_STATE', `binding ${b.id} is not mapped`, { state: v.state, operation: 'unmap', allowed: ['map', 'unbind'] });
    }
    m.check(v, 'unmap');
    const release = await c.dataPath.store.quiesce(v.id);
    try {
      await c.dataPath.store.flush({ id: v.id, layout: m.layoutOf(v.id), cachePolicy: v.cache_policy });
      c.db.transaction(() => {
        c.db.prepare('UPDATE bindings SET mapped = 0 WHERE id = ?').run(b.id);
        const stillMapped = this.ofVolume(v.id).some((x) => x.mapped);
        m.apply(m.volumeById(v.id), 'unmap', { binding: b.id }, stillMapped ? 'mapped' : 'unmapped');
      })();
      try {
        m.publishHost(b.host_id);
      } catch (e) {
        // The namespace side did not change: put the database back so both still agree the unit is mapped.
        c.db.transaction(() => {
          c.db.prepare('UPDATE bindings SET mapped = 1 WHERE id = ?').run(b.id);
          c.db.prepare('UPDATE volumes SET state = ?, updated_at = ? WHERE id = ?').run(v.state, now(), v.id);
          c.events.emit('volume.state', `volume/${v.name}`, { volume: v.name, operation: 'unmap', from: m.volumeById(v.id).state, to: v.state, error: (e as Error).message });
        })();
        throw failed('unmap', v.name, e as Error, v.state);
      }
    } finally {
      release();
    }
    return this.binding(b.id);
  }

  /** The protocols this appliance serves (one per frontend). */
  offered(): ('nbd' | 'iscsi')[] {
    return this.c.dataPath.frontends.map((f) => f.protocol);
  }

  /**
   * Switches a binding to another protocol (nbd, iscsi or both). The host must
   * speak it and the appliance offer it. A mapped unit is switched live: new
   * I/O to the volume is held, what is in flight drains, its cache is written
   * back and synced, the namespace changes (sessions of a protocol the unit
   * leaves are fenced and closed, for that unit only; iSCSI sessions see the
   * LUN go with REPORTED LUNS DATA HAS CHANGED), then I/O is let go. Requests
   * the hold caught from a closed session are refused, never written.
   */
  async switchProtocol(bindingId: number, asked: BindingProtocol): Promise<{ binding: BindingRow; from: BindingProtocol; pauseMs: number }> {
    const { m, c } = this;
    const b = this.binding(bindingId);
    const h = m.hostById(b.host_id);
    const from = b.protocol as BindingProtocol;
    const to = chooseProtocol(h, asked, this.offered());
    const v = m.volumeById(b.volume_id);
    if (from === to) return { binding: b, from, pauseMs: 0 };
    const record = (): void =>
      c.db.transaction(() => {
        c.db.prepare('UPDATE bindings SET protocol = ? WHERE id = ?').run(to, b.id);
        c.events.emit('binding.switched', `binding/${b.id}`, { id: b.id, volume: v.name, host: h.name, target: b.target, lun: b.lun, from, to });
      })();
    if (!b.mapped) {
      record();
      return { binding: this.binding(b.id), from, pauseMs: 0 };
    }
    const undo = (): void => {
      c.db.prepare('UPDATE bindings SET protocol = ? WHERE id = ?').run(from, b.id);
    };
    const { value: revoked, pauseMs } = await holdGroup(c.dataPath.store, [m.volumeHandle(v)], () => {
      m.fault('switch');
      record();
      try {
        // Not awaited under the hold: an iSCSI session finishing its commands on the LUN waits for the release.
        return { done: m.publishHost(h.id) };
      } catch (e) {
        undo();
        c.events.emit('binding.switch-failed', `binding/${b.id}`, { id: b.id, from, to, error: (e as Error).message });
        throw failed('protocol switch', v.name, e as Error, v.state);
      }
    });
    await revoked.done;
    c.log.info({ op: 'binding.switch', binding: b.id, host: h.name, volume: v.name, from, to, pauseMs }, 'binding switched protocol');
    return { binding: this.binding(b.id), from, pauseMs };
  }

  /**
   * Re-assign (issue 11 item 4): gives a volume bound to one host to another
   * host at `target`/`lun`, in one consistency group: hold, drain, write back,
   * sync, then in one transaction the old binding goes and the new one comes
   * (mapped if the old one was), both hosts are republished (the old host's
   * sessions on it are fenced and closed), and I/O is let go. A volume a VM
   * owns moves with its VM (migrate); a shared volume bound several times is
   * refused: which binding to move would be a guess.
   */
  async reassign(volume: string, host: string, target: number, lun: number): Promise<{ binding: BindingRow; from: string; pauseMs: number }> {
    const { m, c } = this;
    const v = m.volume(volume);
    const to = m.host(host);
    const bs = this.ofVolume(v.id);
    if (bs.length !== 1) throw conflict(`volume '${v.name}' has ${bs.length} bindings; re-assign moves a volume bound to exactly one host`, { volume: v.name });
    const old = bs[0]!;
    const from = m.hostById(old.host_id);
    if (from.id === to.id) throw conflict(`volume '${v.name}' is already bound to host '${to.name}'`);
    const vm = c.db.prepare('SELECT v.name FROM vms v JOIN vm_bindings vb ON vb.vm_id = v.id WHERE vb.binding_id = ?').get(old.id) as { name: string } | undefined;
    if (vm) throw conflict(`volume '${v.name}' belongs to vm '${vm.name}': migrate the VM instead`, { vm: vm.name });
    if (v.farm_id !== null && v.farm_id !== to.farm_id) throw conflict(`volume '${v.name}' belongs to another farm than host '${to.name}'`, { volume: v.name, host: to.name });
    if (c.db.prepare('SELECT 1 FROM bindings WHERE host_id = ? AND target = ? AND lun = ?').get(to.id, target, lun)) {
      throw conflict(`unit ${target}/${lun} of host '${to.name}' is already bound`, { host: to.name, target, lun });
    }
    const protocol = chooseProtocol(to, undefined, this.offered());
    const move = (): number =>
      c.db.transaction(() => {
        c.db.prepare('DELETE FROM bindings WHERE id = ?').run(old.id);
        const id = Number(
          c.db
            .prepare('INSERT INTO bindings (volume_id, host_id, target, lun, protocol, mode, mapped, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)')
            .run(v.id, to.id, target, lun, protocol, old.mode, old.mapped, now()).lastInsertRowid,
        );
        c.events.emit('binding.deleted', `binding/${old.id}`, { id: old.id, volume: v.name, reason: `re-assigned to ${to.name}` });
        c.events.emit('binding.created', `binding/${id}`, { id, volume: v.name, host: to.name, target, lun, mode: old.mode, protocol });
        c.events.emit('volume.reassigned', `volume/${v.name}`, { volume: v.name, from: from.name, to: to.name, target, lun });
        return id;
      })();
    if (!old.mapped) {
      const id = move();
      return { binding: this.binding(id), from: from.name, pauseMs: 0 };
    }
    const { value, pauseMs } = await holdGroup(c.dataPath.store, [m.volumeHandle(v)], () => {
      m.fault('reassign');
      const id = move();
      // Not awaited under the hold, as for a switch: sessions finishing on the withdrawn unit wait for the release.
      return { id, done: Promise.all([m.publishHost(from.id), m.publishHost(to.id)]) };
    });
    await value.done;
    c.log.info({ op: 'volume.reassign', volume: v.name, from: from.name, to: to.name, target, lun, pauseMs }, 'volume re-assigned');
    return { binding: this.binding(value.id), from: from.name, pauseMs };
  }

  /** Kept for callers of the first API: map or unmap one binding. */
  async setMapped(bindingId: number, mapped: boolean): Promise<BindingRow> {
    const { m, c } = this;
    return mapped ? this.map(bindingId) : this.unmap(bindingId);
  }

  /** Unbind (Unmapped → Unbound, T13): the array-side grant goes; a mapped binding must be unmapped first. */
  unbind(bindingId: number): void {
    const { m, c } = this;
    const b = this.binding(bindingId);
    const v = m.volumeById(b.volume_id);
    if (b.mapped) {
      throw new BlockgateError('ILLEGAL_STATE', `binding ${b.id} of volume '${v.name}' is mapped; unmap it first`, {
        state: v.state,
        operation: 'unbind',
        allowed: ['unmap'],
      });
    }
    m.check(v, 'unbind');
    c.db.transaction(() => {
      c.db.prepare('DELETE FROM bindings WHERE id = ?').run(b.id);
      const left = this.ofVolume(v.id);
      const to: VolumeState = left.length === 0 ? 'unbound' : left.some((x) => x.mapped) ? 'mapped' : (v.state as VolumeState);
      m.apply(v, 'unbind', { binding: b.id }, to);
      c.events.emit('binding.deleted', `binding/${b.id}`, { id: b.id, volume: v.name });
    })();
    m.publishHost(b.host_id);
  }
}

function statements(db: Db) {
  return {
    byId: db.prepare('SELECT * FROM bindings WHERE id = ?'),
    list: db.prepare('SELECT * FROM bindings WHERE (? IS NULL OR host_id = ?) AND (? IS NULL OR volume_id = ?) ORDER BY id'),
    ofHost: db.prepare('SELECT * FROM bindings WHERE host_id = ? ORDER BY target, lun'),
    ofVolume: db.prepare('SELECT * FROM bindings WHERE volume_id = ? ORDER BY id'),
  };
}
