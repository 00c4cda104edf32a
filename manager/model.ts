import { BlockgateError, badRequest } from '../common/errors.js';
import type { CachePolicy } from '../cache/index.js';

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
