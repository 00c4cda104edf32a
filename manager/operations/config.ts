import fs from 'node:fs';
import path from 'node:path';
import { BlockgateError, badRequest, conflict } from '../../common/errors.js';
import type { CachePolicy } from '../../cache/index.js';
import { isValidIqn } from '../../target/iscsi/index.js';
import { ArrayFile } from '../../disks/index.js';
import { bindingRecord, type AccessMode, type ArrayRow, type ShareMode, type StorageManager } from '../manager.js';
import { VOLUME_STATES, type VolumeState } from '../state.js';

export const CONFIG_KIND = 'blockgate-config';
export const CONFIG_VERSION = 1;

/**
 * The whole control state as one document (LIO's saveconfig): what an admin
 * built, not what happened (jobs and events are history and stay behind).
 * Ids are kept so serials, NAAs and binding ids mean the same after a restore.
 */
export interface ConfigDocument {
  kind: typeof CONFIG_KIND;
  version: number;
  exportedAt?: string | undefined;
  appliance: string;
  settings: Record<string, string>;
  farms: { id: number; name: string; createdAt: string }[];
  arrays: { id: number; name: string; path: string; size: number; qualityClass: string; createdAt: string }[];
  images: { id: number; name: string; path: string; size: number; createdAt: string }[];
  volumes: {
    id: number;
    name: string;
    farm: string | null;
    size: number;
    state: VolumeState;
    shareMode: ShareMode;
    cachePolicy: CachePolicy;
    serial: string;
    naa: string;
    qualityClass: string | null;
    image: string | null;
    snapshotOf: string | null;
    everMapped: boolean;
    dirty: boolean;
    scrubbedAt: string | null;
    extents: { array: string; offset: number; length: number }[];
    createdAt: string;
    updatedAt: string;
  }[];
  hosts: {
    id: number;
    name: string;
    farm: string;
    protocols: string[];
    defaultProtocol: string;
    nbdTcp: string | null;
    /** Initiator names and the CHAP mode; the secrets stay in DATA/iscsi/chap (rotate them after importing elsewhere). */
    iscsi?: { initiators: string[]; chap: 'one-way' | 'mutual' | null } | undefined;
    createdAt: string;
  }[];
  bindings: { id: number; volume: string; host: string; target: number; lun: number; protocol: string; mode: AccessMode; mapped: boolean; createdAt: string }[];
  vms: { id: number; name: string; host: string; bindings: number[]; createdAt: string }[];
}

/** Settings that describe this process, not the configuration an admin built. */
const LOCAL_SETTINGS = new Set(['seeded']);

/** Saved configuration: export the control state, and recreate it in an empty appliance. */
export class ConfigOperations {
  constructor(private readonly m: StorageManager) {}

  export(): ConfigDocument {
    const doc = this.snapshot();
    this.m.log.info({ op: 'config.export', volumes: doc.volumes.length, hosts: doc.hosts.length, bindings: doc.bindings.length }, 'configuration exported');
    return doc;
  }

  private snapshot(): ConfigDocument {
    const { m } = this;
    const db = m.db;
    // One read transaction: the document is a consistent point in time.
    return db.transaction((): ConfigDocument => {
      const farms = new Map((db.prepare('SELECT id, name FROM farms').all() as { id: number; name: string }[]).map((f) => [f.id, f.name]));
      const arrays = m.listArrays();
      const arrayName = new Map(arrays.map((a) => [a.id, a.name]));
      const images = db.prepare('SELECT * FROM images ORDER BY id').all() as { id: number; name: string; path: string; size: number; created_at: string }[];
      const imageName = new Map(images.map((i) => [i.id, i.name]));
      const volumes = m.listVolumes();
      const volumeName = new Map(volumes.map((v) => [v.id, v.name]));
      const hosts = m.listHosts();
      const hostName = new Map(hosts.map((h) => [h.id, h.name]));
      const settings = Object.fromEntries(
        (db.prepare('SELECT key, value FROM settings ORDER BY key').all() as { key: string; value: string }[]).filter((s) => !LOCAL_SETTINGS.has(s.key)).map((s) => [s.key, s.value]),
      );
      const vmRows = db.prepare('SELECT * FROM vms ORDER BY id').all() as { id: number; name: string; host_id: number; created_at: string }[];
      const vmBindings = db.prepare('SELECT binding_id FROM vm_bindings WHERE vm_id = ? ORDER BY binding_id');
      return {
        kind: CONFIG_KIND,
        version: CONFIG_VERSION,
        exportedAt: new Date().toISOString(),
        appliance: m.applianceId,
        settings,
        farms: (db.prepare('SELECT * FROM farms ORDER BY id').all() as { id: number; name: string; created_at: string }[]).map((f) => ({ id: f.id, name: f.name, createdAt: f.created_at })),
        arrays: arrays.map((a) => ({ id: a.id, name: a.name, path: a.path, size: a.size, qualityClass: a.quality_class, createdAt: a.created_at })),
        images: images.map((i) => ({ id: i.id, name: i.name, path: i.path, size: i.size, createdAt: i.created_at })),
        volumes: volumes.map((v) => ({
          id: v.id,
          name: v.name,
          farm: v.farm_id === null ? null : farms.get(v.farm_id)!,
          size: v.size,
          state: v.state as VolumeState,
          shareMode: v.share_mode,
          cachePolicy: v.cache_policy,
          serial: v.serial,
          naa: v.naa,
          qualityClass: v.quality_class,
          image: v.image_id === null ? null : (imageName.get(v.image_id) ?? null),
          snapshotOf: v.snapshot_of === null ? null : (volumeName.get(v.snapshot_of) ?? null),
          everMapped: v.ever_mapped === 1,
          dirty: v.dirty === 1,
          scrubbedAt: v.scrubbed_at,
          extents: m.extentsOf(v.id).map((e) => ({ array: arrayName.get(e.arrayId)!, offset: e.offset, length: e.length })),
          createdAt: v.created_at,
          updatedAt: v.updated_at,
        })),
        hosts: hosts.map((h) => ({
          id: h.id,
          name: h.name,
          farm: farms.get(h.farm_id)!,
          protocols: h.protocols.split(','),
          defaultProtocol: h.default_protocol,
          nbdTcp: h.nbd_tcp,
          iscsi: { initiators: m.iscsi.initiators(h.name), chap: (h.chap as 'one-way' | 'mutual' | null) ?? null },
          createdAt: h.created_at,
        })),
        bindings: m.listBindings().map((b) => bindingRecord(b, volumeName.get(b.volume_id)!, hostName.get(b.host_id)!)),
        vms: vmRows.map((vm) => ({
          id: vm.id,
          name: vm.name,
          host: hostName.get(vm.host_id)!,
          bindings: (vmBindings.all(vm.id) as { binding_id: number }[]).map((r) => r.binding_id),
          createdAt: vm.created_at,
        })),
      };
    })();
  }

  /**
   * Nothing an import could collide with: no farm, volume, host, image or VM
   * yet. Arrays may exist: discovery adopts the array files it finds at start,
   * so an appliance whose database was lost already knows its files. Those
   * the document names by path are taken over by the document's rows (they
   * hold no extents, as there are no volumes); any other must not clash.
   * Returns the rows to take over.
   */
  private assertEmpty(doc: ConfigDocument): ArrayRow[] {
    const n = (t: string): number => (this.m.db.prepare(`SELECT COUNT(*) AS n FROM ${t}`).get() as { n: number }).n;
    const held = ['farms', 'volumes', 'hosts', 'images', 'vms'].filter((t) => n(t) > 0);
    if (held.length > 0) {
      throw conflict(`a configuration is imported only into an empty appliance; this one already has ${held.join(', ')} (start it on a new data directory with --no-demo)`, { held });
    }
    const byPath = new Set(doc.arrays.map((a) => path.resolve(a.path)));
    const takeOver: ArrayRow[] = [];
    for (const a of this.m.listArrays()) {
      if (byPath.has(path.resolve(a.path))) takeOver.push(a);
      else if (doc.arrays.some((d) => d.name === a.name || d.id === a.id)) throw conflict(`array '${a.name}' (${a.path}) clashes with an array of the configuration`, { array: a.name });
    }
    return takeOver;
  }

  /** Cross-references and invariants zod cannot see; refused before anything is written. */
  private check(doc: ConfigDocument): void {
    const names = (what: string, rows: { name: string; id: number }[]): Set<string> => {
      const s = new Set<string>();
      const ids = new Set<number>();
      for (const r of rows) {
        if (s.has(r.name)) throw badRequest(`${what} '${r.name}' appears twice`);
        if (ids.has(r.id)) throw badRequest(`${what} id ${r.id} appears twice`);
        s.add(r.name);
        ids.add(r.id);
      }
      return s;
    };
    const farms = names('farm', doc.farms);
    const arrays = new Map(doc.arrays.map((a) => [a.name, a]));
    names('array', doc.arrays);
    const images = names('image', doc.images);
    const volumes = names('volume', doc.volumes);
    const hosts = names('host', doc.hosts);
    names('vm', doc.vms);
    const ref = (ok: boolean, msg: string): void => {
      if (!ok) throw badRequest(msg);
    };
    for (const v of doc.volumes) {
      ref(v.farm === null || farms.has(v.farm), `volume '${v.name}' names unknown farm '${v.farm}'`);
      ref(v.image === null || images.has(v.image), `volume '${v.name}' names unknown image '${v.image}'`);
      ref(v.snapshotOf === null || volumes.has(v.snapshotOf), `volume '${v.name}' is a snapshot of unknown volume '${v.snapshotOf}'`);
      ref(VOLUME_STATES.includes(v.state), `volume '${v.name}' has unknown state '${v.state}'`);
      let total = 0;
      for (const e of v.extents) {
        const a = arrays.get(e.array);
        ref(a !== undefined, `volume '${v.name}' has an extent on unknown array '${e.array}'`);
        ref(e.offset + e.length <= a!.size, `volume '${v.name}' has an extent past the end of array '${e.array}'`);
        total += e.length;
      }
      ref(v.state === 'free' ? v.extents.length === 0 : total === v.size, `volume '${v.name}': extents add up to ${total} bytes, not its size ${v.size}`);
    }
    for (const h of doc.hosts) ref(farms.has(h.farm), `host '${h.name}' names unknown farm '${h.farm}'`);
    const initiators = new Set<string>();
    for (const h of doc.hosts) {
      for (const iqn of h.iscsi?.initiators ?? []) {
        ref(isValidIqn(iqn) && !initiators.has(iqn), `host '${h.name}' names initiator '${iqn}' that is invalid or belongs to another host`);
        initiators.add(iqn);
      }
    }
    const bindingIds = new Set<number>();
    const units = new Set<string>();
    for (const b of doc.bindings) {
      ref(!bindingIds.has(b.id), `binding id ${b.id} appears twice`);
      bindingIds.add(b.id);
      ref(volumes.has(b.volume), `binding ${b.id} names unknown volume '${b.volume}'`);
      ref(hosts.has(b.host), `binding ${b.id} names unknown host '${b.host}'`);
      const u = `${b.host}/${b.target}/${b.lun}`;
      ref(!units.has(u), `unit ${b.target}/${b.lun} of host '${b.host}' is bound twice`);
      units.add(u);
    }
    for (const vm of doc.vms) {
      ref(hosts.has(vm.host), `vm '${vm.name}' names unknown host '${vm.host}'`);
      for (const id of vm.bindings) ref(bindingIds.has(id), `vm '${vm.name}' names unknown binding ${id}`);
    }
    // Overlapping extents would let two volumes (two tenants) share bytes.
    const byArray = new Map<string, { offset: number; length: number; volume: string }[]>();
    for (const v of doc.volumes) for (const e of v.extents) (byArray.get(e.array) ?? byArray.set(e.array, []).get(e.array)!).push({ ...e, volume: v.name });
    for (const [array, es] of byArray) {
      es.sort((a, b) => a.offset - b.offset);
      for (let i = 1; i < es.length; i++) {
        ref(es[i - 1]!.offset + es[i - 1]!.length <= es[i]!.offset, `volumes '${es[i - 1]!.volume}' and '${es[i]!.volume}' overlap on array '${array}'`);
      }
    }
  }

  /**
   * Recreates a saved state in an empty appliance: every row in one
   * transaction with its id, serial and NAA; array files adopted where the
   * document says they are (created sparse when missing); then listeners
   * opened and namespaces published.
   */
  async import(doc: ConfigDocument): Promise<{ imported: Record<string, number>; createdArrayFiles: string[] }> {
    const { m } = this;
    if (doc.kind !== CONFIG_KIND) throw badRequest(`not a blockgate configuration (kind '${String(doc.kind)}')`);
    if (doc.version > CONFIG_VERSION) throw badRequest(`configuration version ${doc.version} is newer than this blockgate understands (${CONFIG_VERSION})`);
    this.check(doc);
    this.assertEmpty(doc);

    // Files first, as createArray does: a row never names a file that could not be opened.
    const created: string[] = [];
    for (const a of doc.arrays) {
      const st = await fs.promises.stat(a.path).catch(() => null);
      if (st && !st.isFile()) throw badRequest(`array '${a.name}': ${a.path} is not a regular file`);
      if (!st) {
        await fs.promises.mkdir(path.dirname(a.path), { recursive: true });
        created.push(a.name);
      }
      const f = new ArrayFile(-1, a.name, a.path, a.size);
      await f.open(true);
      await f.close();
    }

    const db = m.db;
    const replaced: ArrayRow[] = [];
    db.transaction(() => {
      // Checked again inside the transaction: another import may have raced this one.
      const takeOver = this.assertEmpty(doc);
      for (const a of takeOver) db.prepare('DELETE FROM arrays WHERE id = ?').run(a.id);
      replaced.push(...takeOver);
      const farmId = new Map<string, number>();
      for (const f of doc.farms) {
        db.prepare('INSERT INTO farms (id, name, created_at) VALUES (?, ?, ?)').run(f.id, f.name, f.createdAt);
        farmId.set(f.name, f.id);
      }
      const arrayId = new Map<string, number>();
      for (const a of doc.arrays) {
        db.prepare('INSERT INTO arrays (id, name, path, size, quality_class, created_at) VALUES (?, ?, ?, ?, ?, ?)').run(a.id, a.name, a.path, a.size, a.qualityClass, a.createdAt);
        arrayId.set(a.name, a.id);
      }
      const imageId = new Map<string, number>();
      for (const i of doc.images) {
        db.prepare('INSERT INTO images (id, name, path, size, created_at) VALUES (?, ?, ?, ?, ?)').run(i.id, i.name, i.path, i.size, i.createdAt);
        imageId.set(i.name, i.id);
      }
      const volumeId = new Map<string, number>();
      const insExtent = db.prepare('INSERT INTO extents (volume_id, seq, array_id, offset, length) VALUES (?, ?, ?, ?, ?)');
      for (const v of doc.volumes) {
        db.prepare(
          `INSERT INTO volumes (id, name, farm_id, size, state, share_mode, serial, naa, ever_mapped, cache_policy, dirty, scrubbed_at, image_id, quality_class, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
        ).run(
          v.id,
          v.name,
          v.farm === null ? null : farmId.get(v.farm)!,
          v.size,
          v.state,
          v.shareMode,
          v.serial,
          v.naa,
          v.everMapped ? 1 : 0,
          v.cachePolicy,
          v.dirty ? 1 : 0,
          v.scrubbedAt,
          v.image === null ? null : imageId.get(v.image)!,
          v.qualityClass,
          v.createdAt,
          v.updatedAt,
        );
        volumeId.set(v.name, v.id);
        v.extents.forEach((e, i) => insExtent.run(v.id, i, arrayId.get(e.array)!, e.offset, e.length));
      }
      for (const v of doc.volumes) {
        if (v.snapshotOf !== null) db.prepare('UPDATE volumes SET snapshot_of = ? WHERE id = ?').run(volumeId.get(v.snapshotOf)!, v.id);
      }
      const hostId = new Map<string, number>();
      for (const h of doc.hosts) {
        db.prepare('INSERT INTO hosts (id, name, farm_id, protocols, default_protocol, nbd_tcp, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)').run(
          h.id,
          h.name,
          farmId.get(h.farm)!,
          h.protocols.join(','),
          h.defaultProtocol,
          h.nbdTcp,
          h.createdAt,
        );
        hostId.set(h.name, h.id);
        if (h.iscsi) {
          db.prepare('UPDATE hosts SET chap = ? WHERE id = ?').run(h.iscsi.chap, h.id);
          for (const iqn of h.iscsi.initiators) db.prepare('INSERT INTO host_initiators (iqn, host_id, created_at) VALUES (?, ?, ?)').run(iqn, h.id, h.createdAt);
        }
      }
      for (const b of doc.bindings) {
        db.prepare('INSERT INTO bindings (id, volume_id, host_id, target, lun, protocol, mode, mapped, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)').run(
          b.id,
          volumeId.get(b.volume)!,
          hostId.get(b.host)!,
          b.target,
          b.lun,
          b.protocol,
          b.mode,
          b.mapped ? 1 : 0,
          b.createdAt,
        );
      }
      for (const vm of doc.vms) {
        db.prepare('INSERT INTO vms (id, name, host_id, created_at) VALUES (?, ?, ?, ?)').run(vm.id, vm.name, hostId.get(vm.host)!, vm.createdAt);
        for (const id of new Set(vm.bindings)) db.prepare('INSERT INTO vm_bindings (vm_id, binding_id) VALUES (?, ?)').run(vm.id, id);
      }
      for (const [k, v] of Object.entries(doc.settings)) if (!LOCAL_SETTINGS.has(k)) m.setSetting(k, v);
      // The appliance id is the prefix of every serial and NAA: the restored appliance is the saved one.
      m.setSetting('appliance_id', doc.appliance);
      // An imported appliance is never seeded with the demo on a later start.
      m.setSetting('seeded', new Date().toISOString());
      m.events.emit('config.imported', null, { farms: doc.farms.length, arrays: doc.arrays.length, volumes: doc.volumes.length, hosts: doc.hosts.length, bindings: doc.bindings.length });
    })();
    m.applianceId = doc.appliance;
    // The data path still holds the taken-over files under their old ids.
    for (const a of replaced) {
      const f = m.dataPath.store.listArrays().find((x) => x.id === a.id);
      m.dataPath.store.removeArray(a.id);
      await f?.close();
    }

    try {
      await m.attachRestored(m.listArrays(), m.listHosts());
    } catch (e) {
      throw new BlockgateError('IO_ERROR', `configuration saved, but bringing it onto the data path failed: ${(e as Error).message}; restart the appliance to retry`);
    }
    const imported = {
      farms: doc.farms.length,
      arrays: doc.arrays.length,
      images: doc.images.length,
      volumes: doc.volumes.length,
      hosts: doc.hosts.length,
      bindings: doc.bindings.length,
      vms: doc.vms.length,
    };
    m.log.info({ op: 'config.import', ...imported, createdArrayFiles: created }, 'configuration imported');
    return { imported, createdArrayFiles: created };
  }
}
