import { z } from 'zod';
import type { BindingRow, HostRow, VolumeRow } from './model.js';
import type { VolumeState } from './state.js';
import { CHANGE_CLASSES } from './services/notices.js';
import { accessMode, cachePolicy, filePath, lun, name, protocol, provisioning, qualityClass, shareMode, target, volumeState, when } from './words.js';

export const CONFIG_KIND = 'blockgate-config';
export const CONFIG_VERSION = 1;

const id = z.number().int().positive();
const count = z.number().int().min(0);
const bytes = z.number().int().positive();

/**
 * A host as the API shows its identity and a saved configuration keeps it:
 * the one definition of a host's saved fields. `hostRecord`/`hostRow` below
 * are the only translations to and from the table, and both are typed by
 * this schema and by HostRow, so a column added to one side cannot be
 * forgotten on the other.
 */
export const hostRecord = z.strictObject({
  id,
  name,
  farm: name,
  protocols: z.array(protocol).min(1),
  defaultProtocol: protocol,
  nbdTcp: z.string().max(300).nullable(),
  // Documents saved before TLS existed have no such field: their hosts accepted plaintext.
  requireTls: z.boolean().default(false),
  // Documents saved before iSCSI existed have neither: such hosts had no initiator names and no CHAP.
  initiators: z.array(z.string().min(4).max(223)).default([]),
  chap: z.enum(['one-way', 'mutual']).nullable().default(null),
  createdAt: when,
});
export type HostRecord = z.output<typeof hostRecord>;

export function hostRecordOf(h: HostRow, farm: string, initiators: string[]): HostRecord {
  return {
    id: h.id,
    name: h.name,
    farm,
    protocols: h.protocols.split(','),
    defaultProtocol: h.default_protocol,
    nbdTcp: h.nbd_tcp,
    requireTls: h.require_tls === 1,
    initiators,
    chap: h.chap === 'one-way' || h.chap === 'mutual' ? h.chap : null,
    createdAt: h.created_at,
  };
}

export function hostRowOf(h: HostRecord, farmId: number): HostRow {
  return {
    id: h.id,
    name: h.name,
    farm_id: farmId,
    protocols: h.protocols.join(','),
    default_protocol: h.defaultProtocol,
    nbd_tcp: h.nbdTcp,
    require_tls: h.requireTls ? 1 : 0,
    chap: h.chap,
    created_at: h.createdAt,
  };
}

/** A binding as the API and a saved configuration show it, with its volume and host by name. */
export const bindingRecord = z.strictObject({ id, volume: name, host: name, target, lun, protocol, mode: accessMode, mapped: z.boolean(), createdAt: when });
export type BindingRecord = z.output<typeof bindingRecord>;

/** The fields a volume shows alike in the API's view and in a saved configuration, in that order. */
export function volumeBasicsOf(v: VolumeRow, farm: string | null) {
  return { name: v.name, farm, size: v.size, state: v.state as VolumeState, shareMode: v.share_mode, cachePolicy: v.cache_policy, provisioning: v.provisioning, serial: v.serial, naa: v.naa };
}

export function bindingRecordOf(b: BindingRow, volume: string, host: string): BindingRecord {
  return { id: b.id, volume, host, target: b.target, lun: b.lun, protocol: b.protocol, mode: b.mode, mapped: b.mapped === 1, createdAt: b.created_at };
}

export function bindingRowOf(b: BindingRecord, volumeId: number, hostId: number): BindingRow {
  return { id: b.id, volume_id: volumeId, host_id: hostId, target: b.target, lun: b.lun, protocol: b.protocol, mode: b.mode, mapped: b.mapped ? 1 : 0, created_at: b.createdAt };
}

/**
 * The saved configuration (`GET`/`POST /v1/config`): the whole control state
 * as one document, with ids, serials and NAAs, so a restore is the same
 * appliance to its hosts (LIO's saveconfig). Jobs and events are history and
 * stay behind. Rows are strict: a typo is an error, not a default.
 */
export const configDocument = z
  .strictObject({
    kind: z.literal(CONFIG_KIND),
    version: z.number().int().min(1),
    exportedAt: when.optional(),
    appliance: z.string().regex(/^[0-9a-f]{7}$/, 'appliance id is 7 hex digits'),
    settings: z.record(z.string().max(128), z.string().max(4096)),
    farms: z.array(z.strictObject({ id, name, createdAt: when })),
    arrays: z.array(z.strictObject({ id, name, path: filePath, size: bytes, qualityClass, createdAt: when })),
    images: z.array(z.strictObject({ id, name, path: filePath, size: bytes, createdAt: when })),
    volumes: z.array(
      z.strictObject({
        id,
        name,
        farm: name.nullable(),
        size: bytes,
        state: volumeState,
        shareMode,
        cachePolicy,
        // Documents exported before thick volumes existed hold only thin ones.
        provisioning: provisioning.default('thin'),
        serial: z.string().min(1).max(64),
        naa: z.string().min(1).max(64),
        qualityClass: qualityClass.nullable(),
        image: name.nullable(),
        snapshotOf: name.nullable(),
        everMapped: z.boolean(),
        dirty: z.boolean(),
        scrubbedAt: when.nullable(),
        extents: z.array(z.strictObject({ array: name, offset: count, length: bytes })).max(4096),
        createdAt: when,
        updatedAt: when,
      }),
    ),
    hosts: z.array(hostRecord),
    bindings: z.array(bindingRecord),
    vms: z.array(z.strictObject({ id, name, host: name, bindings: z.array(id).max(256), createdAt: when })),
    // The three below came after version 1 documents were written: those documents hold none.
    /**
     * Which volume is a copy-on-write snapshot of which. The regions it still
     * shares are data, not configuration: they are in DATA/snapshots/<snapshot id>.cow,
     * which an import needs in its own data directory (or it refuses).
     */
    cowLinks: z.array(z.strictObject({ snapshot: name, origin: name, region: bytes, createdAt: when })).default([]),
    /** Webhooks without their secrets: an import keeps DATA/webhooks/<id>.secret if present, else makes a fresh one and shows it once. */
    webhooks: z
      .array(
        z.strictObject({
          id,
          name,
          url: z.string().min(1).max(2048),
          classes: z.array(z.enum(CHANGE_CLASSES)).max(CHANGE_CLASSES.length),
          maxAttempts: z.number().int().positive(),
          backoffMs: count,
          createdAt: when,
        }),
      )
      .default([]),
    backupPolicies: z
      .array(
        z.strictObject({
          scope: z.enum(['vm', 'farm']),
          name,
          schedule: z.string().min(1).max(200).nullable(),
          keepLast: z.number().int().positive().nullable(),
          keepDailyDays: z.number().int().positive().nullable(),
          store: z.string().min(1).max(4096).nullable(),
        }),
      )
      .default([]),
  })
  .meta({ id: 'ConfigDocument' });
export type ConfigDocument = z.output<typeof configDocument>;
