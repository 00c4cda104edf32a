import type { BindingRecord } from '../config-document.js';
import { bindingRecordOf, volumeBasicsOf } from '../config-document.js';
import type { BindingRow, ExtentRow, HostRow, VolumeRow } from '../model.js';
import { allowedOperations, type VolumeState } from '../state.js';
import type { HostView, IscsiIdentity, VolumeView } from '../views.js';
import type { OperationContext } from './context.js';

/** One page of a list: at most `limit` rows (all when left out) whose key sorts after `after`. */
export interface Page<K> {
  limit?: number | undefined;
  after?: K | undefined;
}
/** The rows of a page and the key to ask for the next one (null on the last page). */
export interface Paged<T, K> {
  items: T[];
  next: K | null;
}

/** What the views need from the manager beyond the database (in-memory state). */
export interface ListingSource {
  /** A host's iSCSI identity, given the initiator names the list read for it. */
  iscsiIdentity(h: HostRow, initiators: string[]): IscsiIdentity;
  /** A snapshot's copy-on-write state, naming its origin through `nameOf`. */
  cowView(volumeId: number, nameOf: (id: number) => string): { origin: string; sharedBytes: number } | null;
}

type IdName = { id: number; name: string };

/**
 * The list and single-object views of volumes, hosts and bindings, built
 * from one query per table for the whole page, joined here by id. The cost
 * of a list is a fixed number of statements (prepared once) plus work in
 * memory per row, so GET /v1/volumes stays flat as the appliance grows;
 * describing one object is a page of one through the same code, so the two
 * cannot drift apart.
 */
export class Listing {
  private readonly sql: ReturnType<typeof statements>;

  constructor(
    private readonly c: OperationContext,
    private readonly src: ListingSource,
  ) {
    this.sql = statements(c.db);
  }

  // ---- volumes

  volumes(page: Page<string> = {}): Paged<VolumeView, string> {
    const rows = this.sql.volumePage.all(page.after ?? '', fetchCount(page)) as VolumeRow[];
    return paged(this.volumeViews(rows), page, (v) => v.name);
  }

  volumeViews(rows: readonly VolumeRow[]): VolumeView[] {
    if (rows.length === 0) return [];
    const { store } = this.c.dataPath;
    const ids = json(rows.map((v) => v.id));
    const extents = groupBy(this.sql.extents.all(ids) as ExtentRow[], (e) => e.volume_id);
    const arrayNames = idNames(this.sql.arrays.all() as IdName[]);
    const farmNames = idNames(this.sql.farms.all() as IdName[]);
    const imageNames = idNames(this.sql.images.all(json(rows.flatMap((v) => (v.image_id === null ? [] : [v.image_id])))) as IdName[]);
    const jobs = new Map((this.sql.activeJobs.all(ids) as { volume_id: number; id: number }[]).map((j) => [j.volume_id, j.id]));
    // Volumes named by the page's rows (snapshot origins) that may sit on another page.
    const related = rows.flatMap((v) => [...(v.snapshot_of === null ? [] : [v.snapshot_of]), ...(store.snapshotLink(v.id) ? [store.snapshotLink(v.id)!.origin.id] : [])]);
    const volumeNames = idNames(this.sql.volumeNames.all(json(related)) as IdName[]);
    const nameOf = (id: number): string => volumeNames.get(id) ?? String(id);
    const open = new Map(store.listArrays().map((a) => [a.id, a]));
    return rows.map((v): VolumeView => {
      const ext = extents.get(v.id) ?? [];
      const arraysUnder = [...new Set(ext.map((e) => e.array_id))];
      const failed = arraysUnder.filter((id) => this.c.lifecycle.health.fault(id));
      let allocated: number | null = 0;
      for (const e of ext) {
        const a = open.get(e.array_id);
        if (!a || a.fault || !a.isOpen) {
          allocated = null;
          break;
        }
        a.allocationRuns(e.offset, e.length, (_off, len, st) => {
          if (st !== 0) allocated! += len;
        });
      }
      return {
        ...volumeBasicsOf(v, v.farm_id === null ? null : (farmNames.get(v.farm_id) ?? null)),
        meta: arraysUnder.length > 1,
        qualityClass: v.quality_class,
        everMapped: v.ever_mapped === 1,
        dirty: v.dirty === 1,
        scrubbedAt: v.scrubbed_at,
        image: v.image_id === null ? null : (imageNames.get(v.image_id) ?? null),
        snapshotOf: v.snapshot_of === null ? null : nameOf(v.snapshot_of),
        copyOnWrite: this.src.cowView(v.id, nameOf),
        allocated,
        ...(failed.length === 0 ? { health: 'ok' as const } : { health: 'failed' as const, failedArrays: failed.map((id) => arrayNames.get(id) ?? String(id)) }),
        allowed: allowedOperations(v.state as VolumeState),
        job: jobs.get(v.id) ?? null,
        extents: ext.map((e) => ({ array: arrayNames.get(e.array_id)!, offset: e.offset, length: e.length })),
        createdAt: v.created_at,
        updatedAt: v.updated_at,
      };
    });
  }

  // ---- hosts

  hosts(page: Page<string> = {}): Paged<HostView, string> {
    const rows = this.sql.hostPage.all(page.after ?? '', fetchCount(page)) as HostRow[];
    return paged(this.hostViews(rows), page, (h) => h.name);
  }

  hostViews(rows: readonly HostRow[]): HostView[] {
    if (rows.length === 0) return [];
    const ids = json(rows.map((h) => h.id));
    const farmNames = idNames(this.sql.farms.all() as IdName[]);
    const settings = new Map((this.sql.hostSettings.all() as { key: string; value: string }[]).map((s) => [s.key, s.value]));
    const initiators = groupBy(this.sql.initiators.all(ids) as { host_id: number; iqn: string }[], (r) => r.host_id);
    const units = new Map((this.sql.mappedUnits.all(ids) as { host_id: number; n: number }[]).map((r) => [r.host_id, r.n]));
    const tls = this.c.dataPath.tls;
    return rows.map((h): HostView => {
      const raw = settings.get(`host.${h.name}.socket`);
      const access = raw ? (JSON.parse(raw) as { mode?: string; uid?: number; gid?: number }) : {};
      return {
        name: h.name,
        farm: farmNames.get(h.farm_id)!,
        protocols: h.protocols.split(','),
        defaultProtocol: h.default_protocol,
        nbd: {
          socket: this.c.lifecycle.hostSocketPath(h.name),
          tcp: h.nbd_tcp,
          sharedListenerDefault: settings.get('nbd.default_host') === h.name,
          requireTls: h.require_tls === 1,
          tlsPsk: tls?.hasPsk(h.name) ?? false,
          socketAccess: { mode: access.mode ?? null, uid: access.uid ?? null, gid: access.gid ?? null },
        },
        iscsi: this.src.iscsiIdentity(h, (initiators.get(h.id) ?? []).map((r) => r.iqn)),
        units: units.get(h.id) ?? 0,
        createdAt: h.created_at,
      };
    });
  }

  // ---- bindings

  /** Bindings in id order; the filters are ids the caller resolved (null: any). */
  bindings(filter: { hostId: number | null; volumeId: number | null }, page: Page<number> = {}): Paged<BindingRecord, number> {
    const { hostId, volumeId } = filter;
    const rows = this.sql.bindingPage.all(hostId, hostId, volumeId, volumeId, page.after ?? 0, fetchCount(page)) as BindingRow[];
    return paged(this.bindingViews(rows), page, (b) => b.id);
  }

  bindingViews(rows: readonly BindingRow[]): BindingRecord[] {
    if (rows.length === 0) return [];
    const volumes = idNames(this.sql.volumeNames.all(json(rows.map((b) => b.volume_id))) as IdName[]);
    const hosts = idNames(this.sql.hostNames.all(json(rows.map((b) => b.host_id))) as IdName[]);
    return rows.map((b) => bindingRecordOf(b, volumes.get(b.volume_id)!, hosts.get(b.host_id)!));
  }
}

/** One more row than the page holds tells whether another page follows; -1 is SQLite's "no limit". */
function fetchCount(page: Page<unknown>): number {
  return page.limit === undefined ? -1 : page.limit + 1;
}

function paged<T, K>(items: T[], page: Page<unknown>, key: (item: T) => K): Paged<T, K> {
  if (page.limit === undefined || items.length <= page.limit) return { items, next: null };
  items.length = page.limit;
  return { items, next: key(items[page.limit - 1]!) };
}

/** Id lists travel as one JSON parameter (json_each), so a statement serves any number of ids. */
const json = (ids: number[]): string => JSON.stringify(ids);

const idNames = (rows: IdName[]): Map<number, string> => new Map(rows.map((r) => [r.id, r.name]));

function groupBy<T>(rows: T[], key: (r: T) => number): Map<number, T[]> {
  const out = new Map<number, T[]>();
  for (const r of rows) {
    const k = key(r);
    let list = out.get(k);
    if (!list) out.set(k, (list = []));
    list.push(r);
  }
  return out;
}

function statements(db: OperationContext['db']) {
  const ids = '(SELECT value FROM json_each(?))';
  return {
    volumePage: db.prepare('SELECT * FROM volumes WHERE name > ? ORDER BY name LIMIT ?'),
    hostPage: db.prepare('SELECT * FROM hosts WHERE name > ? ORDER BY name LIMIT ?'),
    bindingPage: db.prepare('SELECT * FROM bindings WHERE (? IS NULL OR host_id = ?) AND (? IS NULL OR volume_id = ?) AND id > ? ORDER BY id LIMIT ?'),
    extents: db.prepare(`SELECT * FROM extents WHERE volume_id IN ${ids} ORDER BY volume_id, seq`),
    arrays: db.prepare('SELECT id, name FROM arrays'),
    farms: db.prepare('SELECT id, name FROM farms'),
    images: db.prepare(`SELECT id, name FROM images WHERE id IN ${ids}`),
    volumeNames: db.prepare(`SELECT id, name FROM volumes WHERE id IN ${ids}`),
    hostNames: db.prepare(`SELECT id, name FROM hosts WHERE id IN ${ids}`),
    activeJobs: db.prepare(
      `SELECT v.volume_id, MIN(j.id) AS id FROM jobs j JOIN job_volumes v ON v.job_id = j.id WHERE v.volume_id IN ${ids} AND j.state IN ('queued', 'running') GROUP BY v.volume_id`,
    ),
    hostSettings: db.prepare("SELECT key, value FROM settings WHERE key = 'nbd.default_host' OR (key LIKE 'host.%' AND key LIKE '%.socket')"),
    initiators: db.prepare(`SELECT host_id, iqn FROM host_initiators WHERE host_id IN ${ids} ORDER BY iqn`),
    mappedUnits: db.prepare(`SELECT host_id, COUNT(*) AS n FROM bindings WHERE mapped = 1 AND host_id IN ${ids} GROUP BY host_id`),
  };
}
