import { BlockgateError, badRequest } from '../common/errors.js';
import type { CachePolicy } from '../cache/index.js';
import type { Protocol } from '../target/index.js';

/**
 * The control database's rows and the small rules every operation shares.
 * The manager and its operations both import this module; it imports neither.
 */

export type ShareMode = 'exclusive' | 'shared';
/** thin: space is allocated on write and trim gives it back; thick: all of it is allocated up front and stays so. */
export type Provisioning = 'thin' | 'thick';
export type AccessMode = 'exclusive' | 'shared' | 'read-only';

export interface ArrayRow {
  id: number;
  name: string;
  path: string;
  size: number;
  quality_class: string;
  created_at: string;
}
export interface VolumeRow {
  id: number;
  name: string;
  farm_id: number | null;
  size: number;
  state: string;
  share_mode: ShareMode;
  serial: string;
  naa: string;
  ever_mapped: number;
  cache_policy: CachePolicy;
  provisioning: Provisioning;
  dirty: number;
  scrubbed_at: string | null;
  image_id: number | null;
  quality_class: string | null;
  snapshot_of: number | null;
  created_at: string;
  updated_at: string;
}
export interface HostRow {
  id: number;
  name: string;
  farm_id: number;
  protocols: string;
  /** iSCSI CHAP mode ('one-way' | 'mutual'); the secrets are in DATA/iscsi/chap/<host>.json. */
  chap: string | null;
  default_protocol: string;
  nbd_tcp: string | null;
  require_tls: number;
  created_at: string;
}
export interface BindingRow {
  id: number;
  volume_id: number;
  host_id: number;
  target: number;
  lun: number;
  protocol: string;
  mode: AccessMode;
  mapped: number;
  created_at: string;
}
export interface ExtentRow {
  volume_id: number;
  seq: number;
  array_id: number;
  offset: number;
  length: number;
}

/** What a binding is served over: one protocol, or both where its host speaks both. */
export type BindingProtocol = Protocol | 'both';
export const PROTOCOLS: readonly Protocol[] = ['nbd', 'iscsi'];
export const BINDING_PROTOCOLS = ['nbd', 'iscsi', 'both'] as const;

/** The protocols a binding's (or a host's default) protocol word stands for. */
export function protocolsOf(p: string): Protocol[] {
  return p === 'both' ? ['nbd', 'iscsi'] : p === 'iscsi' ? ['iscsi'] : ['nbd'];
}

/**
 * The protocol a binding of host `h` is served over. Asked for: every
 * protocol it names must be spoken by the host and offered by the appliance,
 * else CONFLICT and nothing changes. Not asked: the host's default, narrowed
 * to what both sides speak (a host defaulting to both on an appliance without
 * iSCSI gets nbd); nothing in common is a CONFLICT.
 */
export function chooseProtocol(h: HostRow, asked: string | undefined, offered: readonly Protocol[]): BindingProtocol {
  const speaks = h.protocols.split(',');
  if (asked !== undefined) {
    if (!(BINDING_PROTOCOLS as readonly string[]).includes(asked)) throw badRequest(`protocol must be one of ${BINDING_PROTOCOLS.join(', ')}`);
    for (const p of protocolsOf(asked)) {
      if (!speaks.includes(p)) throw new BlockgateError('CONFLICT', `host '${h.name}' does not speak ${p} (it speaks ${speaks.join(', ')})`, { host: h.name, protocol: p });
      if (!offered.includes(p)) throw new BlockgateError('CONFLICT', `this appliance does not offer ${p} (it offers ${offered.join(', ')})`, { protocol: p });
    }
    return asked as BindingProtocol;
  }
  const common = (ps: readonly Protocol[]): Protocol[] => ps.filter((p) => speaks.includes(p) && offered.includes(p));
  let use = common(protocolsOf(h.default_protocol));
  if (use.length === 0) use = common(PROTOCOLS);
  if (use.length === 0) {
    throw new BlockgateError('CONFLICT', `host '${h.name}' speaks ${speaks.join(', ')} and this appliance offers ${offered.join(', ')}: no protocol in common`, { host: h.name });
  }
  return use.length === 2 ? 'both' : use[0]!;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/;

export function checkName(kind: string, name: string): string {
  if (!NAME_RE.test(name)) {
    throw badRequest(`${kind} name '${name}' is invalid: use 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
  return name;
}

/** An operation that failed part-way: its failure edge has been applied; the message says where the volume now is. */
export function failed(op: string, volume: string, cause: Error, state: string): BlockgateError {
  return new BlockgateError('OPERATION_FAILED', `${op} of volume '${volume}' failed (${cause.message}); volume is now '${state}'`, {
    operation: op,
    volume,
    state,
  });
}

export { parseAddress, formatAddress } from '../common/address.js';
