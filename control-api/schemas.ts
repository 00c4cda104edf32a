import { z } from 'zod';
import { parseSize } from '../common/units.js';

/** Sizes as bytes or strings like "256M" / "4G". */
const size = z
  .union([z.number().int().positive(), z.string().min(1)])
  .transform((v, ctx) => {
    try {
      return parseSize(v);
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
      return z.NEVER;
    }
  })
  .describe('bytes, or a string such as "256M" or "4G"');
const name = z.string().min(1).max(63);
const target = z.number().int().min(0).max(255);
const lun = z.number().int().min(0).max(16383);
const mode = z.enum(['exclusive', 'shared', 'read-only']);
const qualityClass = z.string().min(1).max(32);
const intQuery = z.coerce.number().int().min(0);

const when = z.string().min(1).max(64);
const count = z.number().int().min(0);
const id = z.number().int().positive();

/**
 * The saved configuration (`GET`/`POST /v1/config`): the whole control state
 * as one document, with ids, serials and NAAs, so a restore is the same
 * appliance to its hosts. Rows are strict: a typo is an error, not a default.
 */
const configDocument = z.strictObject({
  kind: z.literal('blockgate-config'),
  version: z.number().int().min(1),
  exportedAt: when.optional(),
  appliance: z.string().regex(/^[0-9a-f]{7}$/, 'appliance id is 7 hex digits'),
  settings: z.record(z.string().max(128), z.string().max(4096)),
  farms: z.array(z.strictObject({ id, name, createdAt: when })),
  arrays: z.array(z.strictObject({ id, name, path: z.string().min(1).max(4096), size: z.number().int().positive(), qualityClass, createdAt: when })),
  images: z.array(z.strictObject({ id, name, path: z.string().min(1).max(4096), size: z.number().int().positive(), createdAt: when })),
  volumes: z.array(
    z.strictObject({
      id,
      name,
      farm: name.nullable(),
      size: z.number().int().positive(),
      state: z.enum(['free', 'allocated', 'configured', 'bound', 'mapped', 'unmapped', 'unbound', 'unconfigured']),
      shareMode: z.enum(['exclusive', 'shared']),
      cachePolicy: z.enum(['none', 'write-through', 'write-back']),
      serial: z.string().min(1).max(64),
      naa: z.string().min(1).max(64),
      qualityClass: qualityClass.nullable(),
      image: name.nullable(),
      snapshotOf: name.nullable(),
      everMapped: z.boolean(),
      dirty: z.boolean(),
      scrubbedAt: when.nullable(),
      extents: z.array(z.strictObject({ array: name, offset: count, length: z.number().int().positive() })).max(4096),
      createdAt: when,
      updatedAt: when,
    }),
  ),
  hosts: z.array(
    z.strictObject({ id, name, farm: name, protocols: z.array(z.string().min(1).max(16)).min(1), defaultProtocol: z.string().min(1).max(16), nbdTcp: z.string().max(300).nullable(),
      iscsi: z.strictObject({ initiators: z.array(z.string().min(4).max(223)).max(64), chap: z.enum(['one-way', 'mutual']).nullable() }).optional(),
      createdAt: when,
    }),
  ),
  bindings: z.array(z.strictObject({ id, volume: name, host: name, target, lun, protocol: z.string().min(1).max(16), mode, mapped: z.boolean(), createdAt: when })),
  vms: z.array(z.strictObject({ id, name, host: name, bindings: z.array(id).max(256), createdAt: when })),
});

/** Every request schema of the control API; the OpenAPI document is built from these. */
export const schemas = {
  farm: z.strictObject({ name }),
  array: z.strictObject({ name, size, qualityClass: qualityClass.optional() }),
  host: z.strictObject({ name, farm: name.default('default'), nbdTcp: z.string().optional() }),
  volume: z.strictObject({
    name,
    size,
    farm: name.optional(),
    qualityClass: qualityClass.optional(),
    shareMode: z.enum(['exclusive', 'shared']).optional(),
    layout: z.array(z.strictObject({ array: name, size })).min(1).max(64).optional(),
    configure: z.boolean().default(true).describe('go on to configured (a predefined volume needs no meta build); false stops at allocated'),
  }),
  claim: z.strictObject({ farm: name, size, qualityClass: qualityClass.optional() }),
  hostTls: z.strictObject({ requireTls: z.boolean() }),
  hostInitiator: z.strictObject({ iqn: z.string().min(4).max(223) }),
  hostInitiatorParams: z.strictObject({ name, iqn: z.string().min(4).max(223) }),
  hostChap: z.strictObject({
    mode: z.enum(['one-way', 'mutual']).default('one-way'),
    username: z.string().min(1).max(255).optional(),
    mutualUsername: z.string().min(1).max(255).optional(),
  }).default({ mode: 'one-way' }),
  hostProtocols: z.strictObject({ protocols: z.array(z.enum(['nbd', 'iscsi'])).min(1).max(2) }),
  hostPsk: z.strictObject({ key: z.string().regex(/^[0-9a-fA-F]+$/).optional() }).default({}),
  resize: z.strictObject({ size }),
  scrub: z.strictObject({ pattern: z.number().int().min(0).max(255).default(0), verify: z.boolean().default(true) }),
  copy: z.strictObject({ targets: z.array(name).min(1).max(16), verify: z.boolean().default(true) }),
  copyImage: z.strictObject({ image: name, verify: z.boolean().default(true) }),
  snap: z.strictObject({ snapshot: name }),
  binding: z.strictObject({
    volume: name,
    host: name,
    target,
    lun,
    mode: mode.optional(),
    map: z.boolean().default(true).describe('map at once (bind then map, each its own transition)'),
  }),
  activate: z.strictObject({ volume: name, size, qualityClass: qualityClass.optional(), image: name.optional(), target: target.default(0), lun: lun.default(0), mode: mode.optional() }),
  image: z
    .strictObject({
      name,
      path: z.string().min(1).max(4096).optional().describe('register this file under the data directory (absolute, or relative to it)'),
      fromVolume: name.optional().describe('or make the image from this volume (configured or unmapped), as a job'),
    })
    .refine((b) => (b.path === undefined) !== (b.fromVolume === undefined), { message: 'give exactly one of path or fromVolume' }),
  vm: z.strictObject({ name, host: name, bindings: z.array(z.number().int().positive()).min(1).max(256).describe('the bindings (on this host) the VM owns') }),
  events: z.strictObject({ since: intQuery.optional(), limit: z.coerce.number().int().min(1).max(1000).default(1000), stream: z.stringbool().optional() }),
  traceQuery: z.strictObject({ offset: intQuery.optional(), length: intQuery.optional() }),
  resolve: z.strictObject({
    serial: z.string().min(1).max(64).optional(),
    naa: z.string().min(1).max(64).optional(),
    export: z.string().min(1).max(32).optional(),
    host: name.optional(),
    vm: name.optional(),
    array: name.optional(),
    offset: intQuery.optional(),
  }),
  config: configDocument,
  nameParam: z.strictObject({ name }),
  idParam: z.strictObject({ id: z.coerce.number().int().positive() }),
  unitParams: z.strictObject({ host: name, target: z.coerce.number().int().min(0).max(255), lun: z.coerce.number().int().min(0).max(16383) }),
};
