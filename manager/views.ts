import { z } from 'zod';
import { bindingRecord } from './config-document.js';
import { JOB_STATES } from './jobs.js';
import { BINDING_PROTOCOLS } from './model.js';
import { OPERATIONS } from './state.js';
import { accessMode, cachePolicy, filePath, lun, name, protocol, provisioning, qualityClass, shareMode, target, volumeState, when } from './words.js';

/**
 * What the manager shows of its objects, as zod schemas: the manager's
 * describe*() functions return these types, and the control API serializes
 * (and documents) its replies with the same schemas. A field added on one
 * side and not the other is a compile error, not a silently dropped value.
 */

const bytes = z.number().int().min(0);
const extentView = z.strictObject({ array: name, offset: bytes, length: bytes });

/** A host's iSCSI identity: the initiator names that are it, and its CHAP mode (secrets are never shown here). */
export const iscsiIdentity = z.strictObject({
  initiators: z.array(z.string()),
  chap: z.strictObject({ mode: z.enum(['one-way', 'mutual']), username: z.string().nullable(), mutualUsername: z.string().nullable() }).nullable(),
});
export type IscsiIdentity = z.output<typeof iscsiIdentity>;

export const volumeView = z
  .strictObject({
    name,
    farm: name.nullable(),
    size: bytes,
    state: volumeState,
    shareMode,
    cachePolicy,
    provisioning: provisioning.describe('thin: space allocated on write, trim gives it back; thick: all of it allocated up front, never a hole'),
    serial: z.string(),
    naa: z.string(),
    meta: z.boolean().describe('extents on more than one array'),
    qualityClass: qualityClass.nullable(),
    everMapped: z.boolean(),
    dirty: z.boolean().describe('holds data written since its last scrub'),
    scrubbedAt: when.nullable(),
    image: name.nullable(),
    snapshotOf: name.nullable(),
    copyOnWrite: z
      .strictObject({ origin: name, sharedBytes: bytes.describe('bytes still read from the origin (not yet copied up)') })
      .nullable()
      .describe('set while the volume is a copy-on-write snapshot that reads unchanged regions from its origin'),
    allocated: bytes.nullable().describe('bytes holding data or explicit zeroes (null while an array under it has failed)'),
    health: z.enum(['ok', 'failed']).describe('failed while an array under the volume has failed: its I/O gets EIO'),
    failedArrays: z.array(name).optional(),
    allowed: z.array(z.enum(OPERATIONS)).describe('operations the state machine allows now'),
    job: z.number().int().nullable().describe('the queued or running job holding the volume'),
    extents: z.array(extentView),
    createdAt: when,
    updatedAt: when,
  })
  .meta({ id: 'Volume' });
export type VolumeView = z.output<typeof volumeView>;

export const hostView = z
  .strictObject({
    name,
    farm: name,
    protocols: z.array(protocol),
    defaultProtocol: protocol,
    nbd: z.strictObject({
      socket: filePath,
      tcp: z.string().nullable(),
      sharedListenerDefault: z.boolean(),
      requireTls: z.boolean(),
      tlsPsk: z.boolean(),
      socketAccess: z
        .strictObject({ mode: z.string().nullable(), uid: z.number().int().nullable(), gid: z.number().int().nullable() })
        .describe("the unix socket's mode (octal), owner and group as set by PATCH {socket}; null: left as made (0660, the server's user)"),
    }),
    iscsi: iscsiIdentity,
    units: z.number().int().min(0).describe('mapped units'),
    createdAt: when,
  })
  .meta({ id: 'Host' });
export type HostView = z.output<typeof hostView>;


export const bindingView = bindingRecord.meta({ id: 'Binding' });

/**
 * Everything a host needs to reach one unit, over the protocol(s) its binding
 * is served on: returned by a protocol switch and a migration, listed in the
 * namespace. Secrets are never in it: `credential.ref` names the one to use.
 */
export const connectionDescriptor = z
  .strictObject({
    appliance: z.string(),
    host: name,
    target,
    lun,
    protocol: z.enum(BINDING_PROTOCOLS),
    readOnly: z.boolean(),
    volume: z.strictObject({ name, size: bytes, serial: z.string(), naa: z.string() }),
    addresses: z.array(
      z.strictObject({
        protocol: z.enum(['nbd', 'iscsi']),
        uris: z.array(z.string()),
        exportName: z.string().optional(),
        portal: z.string().optional(),
        targetName: z.string().optional(),
        lun: lun.optional(),
        credential: z.strictObject({
          kind: z.enum(['unix-socket', 'tls-psk', 'chap', 'initiator-name']),
          ref: z.string().describe('socket path, PSK identity, CHAP user name or the registered initiator names'),
        }),
      }),
    ),
  })
  .meta({ id: 'ConnectionDescriptor' });
export type ConnectionDescriptor = z.output<typeof connectionDescriptor>;

export const switchView = z.strictObject({
  binding: bindingRecord,
  from: z.enum(BINDING_PROTOCOLS),
  descriptor: connectionDescriptor.nullable().describe('null while the binding is not mapped'),
  pauseMs: z.number().min(0).describe('how long I/O to the unit was held (hold → release)'),
});
export type SwitchView = z.output<typeof switchView>;

export const namespaceView = z.strictObject({
  host: name,
  farm: name,
  socket: filePath,
  tcp: z.array(z.string()),
  iscsi: iscsiIdentity,
  units: z.array(
    z.strictObject({
      target,
      lun,
      volume: name,
      size: bytes,
      serial: z.string(),
      naa: z.string(),
      readOnly: z.boolean(),
      protocol: z.enum(BINDING_PROTOCOLS),
      exportName: z.string(),
      uris: z.array(z.string()),
      descriptor: connectionDescriptor,
    }),
  ),
});
export type NamespaceView = z.output<typeof namespaceView>;

export const jobView = z
  .strictObject({
    id: z.number().int().positive(),
    kind: z.string(),
    state: z.enum(JOB_STATES),
    params: z.json(),
    progress: z.strictObject({ done: bytes, total: bytes, fraction: z.number().min(0).max(1) }),
    result: z.json().nullable(),
    error: z.string().nullable(),
    attempts: z.number().int().min(0),
    createdAt: when,
    startedAt: when.nullable(),
    finishedAt: when.nullable(),
  })
  .meta({ id: 'Job' });
export type JobView = z.output<typeof jobView>;

export const vmView = z.strictObject({ name, host: name, bindings: z.array(bindingView), createdAt: when }).meta({ id: 'Vm' });
export type VmView = z.output<typeof vmView>;

export const imageView = z.strictObject({ name, path: filePath, size: bytes, createdAt: when });
export type ImageView = z.output<typeof imageView>;

export const wiringMap = z.strictObject({
  appliance: z.string(),
  arrays: z.array(
    z.strictObject({
      name,
      file: filePath,
      size: bytes,
      qualityClass,
      state: z.enum(['online', 'failed']),
      used: bytes,
      free: bytes,
      freeExtents: z.array(z.strictObject({ offset: bytes, length: bytes })),
    }),
  ),
  volumes: z.array(z.strictObject({ name, state: volumeState, size: bytes, extents: z.array(extentView) })),
  listeners: z.array(z.strictObject({ host: name, socket: filePath, tcp: z.string().nullable() })),
});
export type WiringMap = z.output<typeof wiringMap>;
export const discoveryView = wiringMap.extend({
  added: z.array(name).describe('arrays adopted by this scan'),
  skipped: z.array(z.strictObject({ file: filePath, error: z.string() })).optional().describe('array files not adopted, and why'),
});

/** An array with its state and honest capacity: virtual size and free space, bytes the file really holds, its file system's room. */
export const arrayView = z
  .strictObject({
    name,
    path: filePath,
    size: bytes,
    qualityClass,
    state: z.enum(['online', 'failed']),
    fault: z.strictObject({ reason: z.string(), message: z.string(), since: when }).optional(),
    used: bytes.describe('virtual bytes given to volumes'),
    free: bytes.describe('virtual bytes not given to any volume'),
    allocated: bytes.nullable().describe('bytes the array file holds on its file system'),
    fileSystem: z.strictObject({ size: bytes, available: bytes, usedPercent: z.number() }).nullable(),
    volumes: z.array(name),
  })
  .meta({ id: 'Array' });
export type ArrayView = z.output<typeof arrayView>;

export const healthView = z.strictObject({
  status: z.enum(['ok', 'degraded']),
  version: z.string(),
  appliance: z.string(),
  reasons: z.array(z.record(z.string(), z.unknown())),
  warnings: z.array(z.record(z.string(), z.unknown())),
});
export type DiscoveryView = z.output<typeof discoveryView>;

// ---- trace and resolve

const segment = z.strictObject({ volumeOffset: bytes, length: bytes, array: name.nullable(), file: filePath.nullable(), arrayOffset: bytes });
const volumeTraceShape = {
  volume: z.strictObject({ name, size: bytes, state: volumeState, serial: z.string(), naa: z.string(), farm: name.nullable() }),
  units: z.array(z.strictObject({ host: name, target, lun, export: z.string(), mode: accessMode, mapped: z.boolean(), binding: z.number().int() })),
  vms: z.array(name),
  request: z.strictObject({ offset: bytes, length: bytes }),
  segments: z.array(segment),
};
export const volumeTrace = z.strictObject(volumeTraceShape);
export type VolumeTrace = z.output<typeof volumeTrace>;
export const unitTrace = z.strictObject({ host: name, target, lun, mapped: z.boolean(), mode: accessMode, ...volumeTraceShape });
export type UnitTrace = z.output<typeof unitTrace>;
const vmTrace = z.strictObject({ vm: name, host: name, disks: z.array(z.strictObject({ target, lun, ...volumeTraceShape })) });
const arrayByteInVolume = z.strictObject({ array: name, file: filePath, arrayOffset: bytes, owner: z.literal('volume'), volumeOffset: bytes, ...volumeTraceShape });
const arrayByteFree = z.strictObject({ array: name, file: filePath, arrayOffset: bytes, owner: z.literal('free') });
/** Strict members, most specific first: a reply matches exactly one. */
export const resolveView = z.union([unitTrace, arrayByteInVolume, arrayByteFree, vmTrace, volumeTrace]);
export type ResolveView = z.output<typeof resolveView>;

export const eventView = z.strictObject({ id: z.number().int(), at: when, type: z.string(), subject: z.string().nullable(), data: z.record(z.string(), z.unknown()) });

const certificateInfo = z.strictObject({
  subject: z.string(),
  issuer: z.string(),
  subjectAltName: z.string().nullable(),
  serialNumber: z.string(),
  validFrom: when,
  validTo: when,
  fingerprint256: z.string().describe('SHA-256 of the DER certificate, colon-separated hex: what a client pins'),
});
/** The NBD listener's certificates: never a key. Hosts present client certificates whose CN is the host name, signed by clientCa. */
export const tlsCertificateView = z
  .strictObject({
    server: certificateInfo.nullable().describe('what the shared NBD listener presents (null: PSK only)'),
    clientCa: certificateInfo.nullable().describe('DATA/tls/ca-cert.pem: the CA that signs hosts\' client certificates (null: no certificate hosts)'),
  })
  .meta({ id: 'TlsCertificates' });
export type TlsCertificateView = z.output<typeof tlsCertificateView>;

export const importResult = z.strictObject({
  imported: z.strictObject({ farms: bytes, arrays: bytes, images: bytes, volumes: bytes, hosts: bytes, bindings: bytes, vms: bytes, cowLinks: bytes, webhooks: bytes, backupPolicies: bytes }),
  createdArrayFiles: z.array(name),
  webhookSecrets: z.array(z.strictObject({ webhook: name, secret: z.string() })).describe('fresh secrets of imported webhooks that had none in this data directory: the only time they are shown'),
});
export type ImportResult = z.output<typeof importResult>;
