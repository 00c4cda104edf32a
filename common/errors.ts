/**
 * Every error blockgate raises on purpose carries a stable code. Protocol
 * front-ends and the control API translate these codes in exactly one place
 * each (target/nbd/errno.ts, control-api/errors.ts), so the same failure means
 * the same thing on every interface.
 */
export type ErrorCode =
  | 'BAD_REQUEST'
  | 'NOT_FOUND'
  | 'CONFLICT'
  | 'ILLEGAL_STATE'
  | 'OPERATION_FAILED'
  | 'NO_SPACE'
  | 'OUT_OF_RANGE'
  | 'READ_ONLY'
  | 'IO_ERROR'
  | 'UNAUTHORIZED'
  | 'SHUTTING_DOWN'
  /** The unit was withdrawn from the host over this protocol (switch, migration): the request never reached the volume. */
  | 'REVOKED'
  | 'NOT_SUPPORTED'
  | 'INTERNAL';

export class BlockgateError extends Error {
  readonly code: ErrorCode;
  readonly details?: Record<string, unknown>;

  constructor(code: ErrorCode, message: string, details?: Record<string, unknown>) {
    super(message);
    this.name = 'BlockgateError';
    this.code = code;
    if (details) this.details = details;
  }
}

export const badRequest = (msg: string, details?: Record<string, unknown>): BlockgateError =>
  new BlockgateError('BAD_REQUEST', msg, details);
export const notFound = (what: string, name: string | number): BlockgateError =>
  new BlockgateError('NOT_FOUND', `${what} '${name}' does not exist`, { what, name });
export const conflict = (msg: string, details?: Record<string, unknown>): BlockgateError =>
  new BlockgateError('CONFLICT', msg, details);

export function isBlockgateError(e: unknown): e is BlockgateError {
  return e instanceof BlockgateError;
}
