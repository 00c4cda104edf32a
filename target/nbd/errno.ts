import { isBlockgateError } from '../../common/errors.js';
import { ERRNO } from './constants.js';

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
