import { isBlockgateError } from '../../common/errors.js';

/** NBD error values (the spec's errno subset); the only place they are spelled. */
export const ERRNO = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/**
 * The one place blockgate errors become NBD error values. `forWrite` picks
 * ENOSPC for out-of-range writes, as the spec asks; reads get EINVAL.
 */
export function nbdErrno(err: unknown, forWrite = false): number {
  if (!isBlockgateError(err)) return ERRNO.EIO;
  switch (err.code) {
    case 'OUT_OF_RANGE':
      return forWrite ? ERRNO.ENOSPC : ERRNO.EINVAL;
    case 'NO_SPACE':
      return ERRNO.ENOSPC;
    case 'READ_ONLY':
    case 'UNAUTHORIZED':
    case 'REVOKED':
      return ERRNO.EPERM;
    case 'BAD_REQUEST':
      return ERRNO.EINVAL;
    case 'SHUTTING_DOWN':
      return ERRNO.ESHUTDOWN;
    case 'NOT_SUPPORTED':
      return ERRNO.ENOTSUP;
    default:
      return ERRNO.EIO;
  }
}
