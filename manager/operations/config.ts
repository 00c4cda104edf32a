import fs from 'node:fs';
import path from 'node:path';
import { BlockgateError, badRequest, conflict } from '../../common/errors.js';
import { writeAtomically } from '../../common/files.js';
import { OwnershipMap } from '../../cache/index.js';
import { ArrayFile } from '../../disks/index.js';
import { bindingRecordOf, bindingRowOf, volumeBasicsOf, CONFIG_KIND, CONFIG_VERSION, hostRecordOf, hostRowOf, type ConfigDocument } from '../config-document.js';
import type { ArrayRow, BindingRow, HostRow } from '../model.js';
import { SAVED_CONFIG } from '../data-dir.js';
import { isValidIqn } from '../../target/iscsi/index.js';
import type { Lifecycle, OperationContext } from './context.js';
import { VOLUME_STATES, type VolumeState } from '../state.js';
import type { ImportResult } from '../views.js';
import { cowMapPath } from './snapshots.js';
import type { WebhookRow } from '../services/webhooks.js';

export { CONFIG_KIND, CONFIG_VERSION, type ConfigDocument };

/** Settings that describe this process, not the configuration an admin built. */
const LOCAL_SETTINGS = new Set(['seeded', 'seeding']);

/** How often the saved copy checks for changes no API request made (jobs finishing, state edges). */
const SAVE_POLL_MS = 1000;

/** Saved configuration: export the control state, and recreate it in an empty appliance. */
export class ConfigOperations {
  /** The last document written to DATA/blockgate.config.json, without its time stamp. */
  private saved = '';
  /** SQLite's total_changes() when that document was taken: unchanged means nothing to look at. */
  private savedAtChanges = -1;
  private saving: Promise<void> = Promise.resolve();
  /** The save queued behind the running one, not started yet (callers join it). */
  private next: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  private readonly m: Lifecycle;

  constructor(private readonly c: OperationContext) {
    this.m = c.lifecycle;
  }

  get savedFile(): string {
    return path.join(this.c.dataDir, SAVED_CONFIG);
  }

  /**
   * Keeps DATA/blockgate.config.json equal to the database, so a lost
   * database can be rebuilt from it (`serve --restore`). Called after every
   * control request that may have changed something, before its reply, and
   * polled for changes made by jobs. Writes are serialized and atomic, and
   * only when the document changed.
   */
  save(): Promise<void> {
    // Group commit: a save queued but not started yet will see this caller's change too, so it
    // shares it. Without that, N concurrent requests wrote the whole document N times, each
    // O(volumes): seeding 10,000 volumes was quadratic (measured by bench/scale.ts).
    if (this.next) return this.next;
    const run = this.saving.then(() => {
      this.next = null;
      return this.saveNow();
    });
    this.saving = run.catch((e: Error) => {
      this.c.log.error({ op: 'config.save', err: e.message }, 'could not write the saved configuration');
    });
    this.next = this.saving;
    return this.saving;
  }

  private async saveNow(): Promise<void> {
    if (!this.c.db.open) return;
    const changes = (this.c.db.prepare('SELECT total_changes() AS n').get() as { n: number }).n;
    if (changes === this.savedAtChanges) return;
    const doc = this.snapshot();
    const key = JSON.stringify({ ...doc, exportedAt: undefined });
    if (key !== this.saved) {
      await writeAtomically(this.savedFile, JSON.stringify(doc, null, 2) + '\n');
      this.saved = key;
    }
    this.savedAtChanges = changes;
  }

  startSaving(): void {
    if (this.timer) return;
    void this.save();
    this.timer = setInterval(() => void this.save(), SAVE_POLL_MS);
    this.timer.unref();
  }

  async stopSaving(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
    await this.save();
  }

  export(): ConfigDocument {
    const doc = this.snapshot();
    this.c.log.info({ op: 'config.export', volumes: doc.volumes.length, hosts: doc.hosts.length, bindings: doc.bindings.length }, 'configuration exported');
    return doc;
  }

  private snapshot(): ConfigDocument {
    const { m, c } = this;
    const db = c.db;
    // One read transaction: the document is a consistent point in time.
    return db.transaction((): ConfigDocument => {
      const farms = new Map((db.prepare('SELECT id, name FROM farms').all() as { id: number; name: string }[]).map((f) => [f.id, f.name]));
      const arrays = m.listArrays();
      const arrayName = new Map(arrays.map((a) => [a.id, a.name]));
      const images = db.prepare('SELECT * FROM images ORDER BY id').all() as { id: number; name: string; path: string; size: number; created_at: string }[];
      const imageName = new Map(images.map((i) => [i.id, i.name]));
      const volumes = m.listVolumes();
      // One query for every extent: the saved copy is taken after each change, so it must stay cheap.
      const extents = new Map<number, { array: string; offset: number; length: number }[]>();
      for (const e of db.prepare('SELECT volume_id, array_id, offset, length FROM extents ORDER BY volume_id, seq').all() as { volume_id: number; array_id: number; offset: number; length: number }[]) {
        const list = extents.get(e.volume_id) ?? extents.set(e.volume_id, []).get(e.volume_id)!;
        list.push({ array: arrayName.get(e.array_id)!, offset: e.offset, length: e.length });
      }
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
          ...volumeBasicsOf(v, v.farm_id === null ? null : farms.get(v.farm_id)!),
          qualityClass: v.quality_class,
          image: v.image_id === null ? null : (imageName.get(v.image_id) ?? null),
          snapshotOf: v.snapshot_of === null ? null : (volumeName.get(v.snapshot_of) ?? null),
          everMapped: v.ever_mapped === 1,
          dirty: v.dirty === 1,
          scrubbedAt: v.scrubbed_at,
          extents: extents.get(v.id) ?? [],
          createdAt: v.created_at,
          updatedAt: v.updated_at,
        })),
        hosts: hosts.map((h) =>
          hostRecordOf(
            h,
            farms.get(h.farm_id)!,
            (c.db.prepare('SELECT iqn FROM host_initiators WHERE host_id = ? ORDER BY iqn').all(h.id) as { iqn: string }[]).map((r) => r.iqn),
          ),
        ),
        bindings: (db.prepare('SELECT * FROM bindings ORDER BY id').all() as BindingRow[]).map((b) => bindingRecordOf(b, volumeName.get(b.volume_id)!, hostName.get(b.host_id)!)),
        vms: vmRows.map((vm) => ({
          id: vm.id,
          name: vm.name,
          host: hostName.get(vm.host_id)!,
          bindings: (vmBindings.all(vm.id) as { binding_id: number }[]).map((r) => r.binding_id),
          createdAt: vm.created_at,
        })),
        cowLinks: (db.prepare('SELECT * FROM cow_links ORDER BY snapshot_id').all() as { snapshot_id: number; origin_id: number; region: number; created_at: string }[]).map((l) => ({
          snapshot: volumeName.get(l.snapshot_id)!,
          origin: volumeName.get(l.origin_id)!,
          region: l.region,
          createdAt: l.created_at,
        })),
        webhooks: (db.prepare('SELECT * FROM webhooks ORDER BY id').all() as WebhookRow[]).map((w) => ({
          id: w.id,
          name: w.name,
          url: w.url,
          classes: JSON.parse(w.classes) as ConfigDocument['webhooks'][number]['classes'],
          maxAttempts: w.max_attempts,
          backoffMs: w.backoff_ms,
          createdAt: w.created_at,
        })),
        backupPolicies: (db.prepare('SELECT * FROM backup_policies ORDER BY scope, name').all() as PolicyRowDb[]).map((p) => ({
          scope: p.scope,
          name: p.name,
          schedule: p.schedule,
          keepLast: p.keep_last,
          keepDailyDays: p.keep_daily_days,
          store: p.store,
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
    const n = (t: string): number => (this.c.db.prepare(`SELECT COUNT(*) AS n FROM ${t}`).get() as { n: number }).n;
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
      for (const iqn of h.initiators) {
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
      ref(new Set(vm.bindings).size === vm.bindings.length, `vm '${vm.name}' lists a binding twice`);
    }
    const vmNames = new Set(doc.vms.map((v) => v.name));
    const snapshots = new Set<string>();
    const volumeRow = new Map(doc.volumes.map((v) => [v.name, v]));
    for (const l of doc.cowLinks) {
      ref(volumes.has(l.snapshot) && volumes.has(l.origin), `copy-on-write link '${l.snapshot}' → '${l.origin}' names an unknown volume`);
      ref(!snapshots.has(l.snapshot), `volume '${l.snapshot}' is linked to two origins`);
      snapshots.add(l.snapshot);
      const snap = volumeRow.get(l.snapshot)!;
      ref(snap.snapshotOf === l.origin && snap.size === volumeRow.get(l.origin)!.size, `copy-on-write link '${l.snapshot}' → '${l.origin}' does not match the volumes (snapshotOf, size)`);
    }
    names('webhook', doc.webhooks);
    const policies = new Set<string>();
    for (const p of doc.backupPolicies) {
      ref(p.scope === 'vm' ? vmNames.has(p.name) : farms.has(p.name), `backup policy of ${p.scope} '${p.name}' names an unknown ${p.scope}`);
      ref(!policies.has(`${p.scope}/${p.name}`), `backup policy of ${p.scope} '${p.name}' appears twice`);
      policies.add(`${p.scope}/${p.name}`);
      ref(p.store === null || (p.scope === 'farm' && path.isAbsolute(p.store)), `backup policy of ${p.scope} '${p.name}': a store is an absolute path, set per farm`);
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
  async import(doc: ConfigDocument, opts: { attach?: boolean } = {}): Promise<ImportResult> {
    const { m, c } = this;
    if (doc.kind !== CONFIG_KIND) throw badRequest(`not a blockgate configuration (kind '${String(doc.kind)}')`);
    if (doc.version > CONFIG_VERSION) throw badRequest(`configuration version ${doc.version} is newer than this blockgate understands (${CONFIG_VERSION})`);
    this.check(doc);
    const takeOver = this.assertEmpty(doc);

    // No array file another appliance owns is adopted; checked for all before anything is written.
    for (const a of doc.arrays) {
      const mine = takeOver.find((t) => path.resolve(t.path) === path.resolve(a.path));
      try {
        await m.ownership.check({ id: a.id, name: a.name, path: a.path, size: a.size }, doc.appliance);
      } catch (e) {
        // Discovery adopted this very file at start under a new id: the document's row takes it over.
        const adoptedHere = mine && (await m.ownership.check(mine, m.applianceId).then(() => true, () => false));
        if (!adoptedHere) throw e;
      }
    }

    await this.checkCowMaps(doc);

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

    const db = c.db;
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
          `INSERT INTO volumes (id, name, farm_id, size, state, share_mode, serial, naa, ever_mapped, cache_policy, provisioning, dirty, scrubbed_at, image_id, quality_class, created_at, updated_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
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
          v.provisioning,
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
        insertRow(db, 'hosts', hostRowOf(h, farmId.get(h.farm)!));
        for (const iqn of h.initiators) db.prepare('INSERT INTO host_initiators (iqn, host_id, created_at) VALUES (?, ?, ?)').run(iqn, h.id, h.createdAt);
        hostId.set(h.name, h.id);
      }
      for (const b of doc.bindings) insertRow(db, 'bindings', bindingRowOf(b, volumeId.get(b.volume)!, hostId.get(b.host)!));
      for (const vm of doc.vms) {
        db.prepare('INSERT INTO vms (id, name, host_id, created_at) VALUES (?, ?, ?, ?)').run(vm.id, vm.name, hostId.get(vm.host)!, vm.createdAt);
        for (const id of new Set(vm.bindings)) db.prepare('INSERT INTO vm_bindings (vm_id, binding_id) VALUES (?, ?)').run(vm.id, id);
      }
      for (const l of doc.cowLinks) {
        db.prepare('INSERT INTO cow_links (snapshot_id, origin_id, region, created_at) VALUES (?, ?, ?, ?)').run(volumeId.get(l.snapshot)!, volumeId.get(l.origin)!, l.region, l.createdAt);
      }
      for (const w of doc.webhooks) {
        db.prepare('INSERT INTO webhooks (id, name, url, classes, max_attempts, backoff_ms, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)').run(
          w.id,
          w.name,
          w.url,
          JSON.stringify(w.classes),
          w.maxAttempts,
          w.backoffMs,
          w.createdAt,
        );
      }
      for (const p of doc.backupPolicies) {
        db.prepare('INSERT INTO backup_policies (scope, name, schedule, keep_last, keep_daily_days, store) VALUES (?, ?, ?, ?, ?, ?)').run(p.scope, p.name, p.schedule, p.keepLast, p.keepDailyDays, p.store);
      }
      for (const [k, v] of Object.entries(doc.settings)) if (!LOCAL_SETTINGS.has(k)) m.setSetting(k, v);
      // The appliance id is the prefix of every serial and NAA: the restored appliance is the saved one.
      m.setSetting('appliance_id', doc.appliance);
      // An imported appliance is never seeded with the demo on a later start.
      m.setSetting('seeded', new Date().toISOString());
      c.events.emit('config.imported', null, { farms: doc.farms.length, arrays: doc.arrays.length, volumes: doc.volumes.length, hosts: doc.hosts.length, bindings: doc.bindings.length });
    })();
    m.applianceId = doc.appliance;
    // The data path still holds the taken-over files under their old ids.
    for (const a of replaced) {
      const f = c.dataPath.store.listArrays().find((x) => x.id === a.id);
      c.dataPath.store.removeArray(a.id);
      await f?.close();
    }
    await m.noteApplianceId();

    let webhookSecrets: { webhook: string; secret: string }[] = [];
    try {
      // The files are this appliance's now, under the document's ids.
      for (const a of m.listArrays()) await m.ownership.stamp(a, m.applianceId);
      if (opts.attach !== false) webhookSecrets = (await m.attachRestored(m.listArrays(), m.listHosts())).webhookSecrets;
    } catch (e) {
      throw new BlockgateError('IO_ERROR', `configuration saved, but bringing it onto the data path failed: ${(e as Error).message}; restart the appliance to retry`);
    }
    if (opts.attach !== false) await this.save();
    const imported = {
      farms: doc.farms.length,
      arrays: doc.arrays.length,
      images: doc.images.length,
      volumes: doc.volumes.length,
      hosts: doc.hosts.length,
      bindings: doc.bindings.length,
      vms: doc.vms.length,
      cowLinks: doc.cowLinks.length,
      webhooks: doc.webhooks.length,
      backupPolicies: doc.backupPolicies.length,
    };
    c.log.info({ op: 'config.import', ...imported, createdArrayFiles: created, freshWebhookSecrets: webhookSecrets.map((w) => w.webhook) }, 'configuration imported');
    return { imported, createdArrayFiles: created, webhookSecrets };
  }

  /**
   * A snapshot's shared regions are read from its origin as its ownership map
   * says: without the map (DATA/snapshots/<id>.cow, copied with the array
   * files) the link cannot be recreated truthfully, so the import is refused
   * before anything is written.
   */
  private async checkCowMaps(doc: ConfigDocument): Promise<void> {
    const byName = new Map(doc.volumes.map((v) => [v.name, v]));
    for (const l of doc.cowLinks) {
      const snap = byName.get(l.snapshot)!;
      const file = cowMapPath(this.c.dataDir, snap.id);
      try {
        const map = await OwnershipMap.open(file, l.region, Math.ceil(snap.size / l.region));
        await map.close();
      } catch (e) {
        throw conflict(
          `volume '${l.snapshot}' is a copy-on-write snapshot of '${l.origin}' and its ownership map ${file} is missing or does not match (${(e as Error).message}); copy DATA/snapshots/${snap.id}.cow from the saved appliance's data directory, or materialise the snapshot there before exporting`,
          { volume: l.snapshot, origin: l.origin, map: file },
        );
      }
    }
  }
}

interface PolicyRowDb {
  scope: 'vm' | 'farm';
  name: string;
  schedule: string | null;
  keep_last: number | null;
  keep_daily_days: number | null;
  store: string | null;
}

/** Inserts a whole row: every column of the row type is written, so none can be left out by hand. */
function insertRow(db: OperationContext['db'], table: 'hosts' | 'bindings', row: HostRow | BindingRow): void {
  const cols = Object.keys(row);
  db.prepare(`INSERT INTO ${table} (${cols.join(', ')}) VALUES (${cols.map(() => '?').join(', ')})`).run(...Object.values(row));
}
