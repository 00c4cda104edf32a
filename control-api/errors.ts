import type { FastifyReply, FastifyRequest } from 'fastify';
import { hasZodFastifySchemaValidationErrors, isResponseSerializationError } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { isBlockgateError, type ErrorCode } from '../common/errors.js';

/**
 * Every code the control API answers with, its HTTP status and what it means:
 * the one place they are defined (README's API section lists the same table).
 * The domain codes come from BlockgateError; the last two belong to HTTP itself.
 */
export const API_ERRORS = {
  BAD_REQUEST: { status: 400, meaning: 'the request does not validate (body, query or path), or names something impossible' },
  OUT_OF_RANGE: { status: 400, meaning: 'an offset or length lies outside the volume or array' },
  UNAUTHORIZED: { status: 401, meaning: 'no valid bearer token' },
  NOT_FOUND: { status: 404, meaning: 'no such resource (or route)' },
  CONFLICT: { status: 409, meaning: 'clashes with what exists (name taken, unit bound, farm mismatch, appliance not empty)' },
  ILLEGAL_STATE: { status: 409, meaning: 'the volume (or job) is in a state that does not allow this; details.allowed lists what does' },
  READ_ONLY: { status: 409, meaning: 'the unit is read-only' },
  REVOKED: { status: 409, meaning: 'the unit was withdrawn from the host (protocol switch, migration)' },
  PAYLOAD_TOO_LARGE: { status: 413, meaning: 'the body is larger than the 1 MiB limit' },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, meaning: 'the body is not application/json' },
  OPERATION_FAILED: { status: 500, meaning: "a step failed and its failure edge was applied; the message says the volume's state now" },
  IO_ERROR: { status: 500, meaning: 'the array or the namespace side failed' },
  INTERNAL: { status: 500, meaning: 'a bug: see the log' },
  NOT_SUPPORTED: { status: 501, meaning: 'this appliance is not set up for it (e.g. TLS)' },
  SHUTTING_DOWN: { status: 503, meaning: 'the appliance is stopping' },
  NO_SPACE: { status: 507, meaning: 'no array (of the class) has room, or the backing file system is full' },
} as const satisfies Record<ErrorCode | 'PAYLOAD_TOO_LARGE' | 'UNSUPPORTED_MEDIA_TYPE', { status: number; meaning: string }>;

export type ApiErrorCode = keyof typeof API_ERRORS;
const CODES = Object.keys(API_ERRORS) as [ApiErrorCode, ...ApiErrorCode[]];

/** The body of every error reply. */
export const errorBody = z
  .object({
    error: z.object({
      code: z.enum(CODES),
      message: z.string(),
      details: z.record(z.string(), z.unknown()).optional(),
    }),
  })
  .meta({ id: 'Error' });

/** Adds the error replies to a route's success replies, so the document lists both. */
export function replies<R extends Record<number, z.ZodType>>(ok: R): R & { '4xx': typeof errorBody; '5xx': typeof errorBody } {
  return { ...ok, '4xx': errorBody, '5xx': errorBody };
}

/** The error each refused request was answered with, for its audit line (control-api/app.ts). */
export const refusals = new WeakMap<FastifyReply, { code: ApiErrorCode; message: string }>();

export function sendError(reply: FastifyReply, code: ApiErrorCode, message: string, details?: Record<string, unknown>): FastifyReply {
  refusals.set(reply, { code, message });
  return reply.code(API_ERRORS[code].status).send({ error: { code, message, ...(details ? { details } : {}) } });
}

/** fastify's own 4xx (body limit, content type, bad JSON) by status. */
const HTTP_CODES: Partial<Record<number, ApiErrorCode>> = { 413: 'PAYLOAD_TOO_LARGE', 415: 'UNSUPPORTED_MEDIA_TYPE' };

export function errorHandler(err: unknown, req: FastifyRequest, reply: FastifyReply): void {
  if (isBlockgateError(err)) {
    void sendError(reply, err.code, err.message, err.details);
    return;
  }
  if (hasZodFastifySchemaValidationErrors(err)) {
    const where = (err as { validationContext?: string }).validationContext ?? 'body';
    const msg = err.validation.map((i) => `${i.instancePath.length > 1 ? i.instancePath.slice(1).replaceAll('/', '.') : where}: ${i.message}`).join('; ');
    void sendError(reply, 'BAD_REQUEST', msg);
    return;
  }
  if (err instanceof z.ZodError) {
    const msg = err.issues.map((i) => `${i.path.length ? i.path.join('.') : 'body'}: ${i.message}`).join('; ');
    void sendError(reply, 'BAD_REQUEST', msg);
    return;
  }
  if (isResponseSerializationError(err as never) && (err as { cause?: unknown }).cause instanceof z.ZodError) {
    // A view that does not match its own schema is a bug here, never the caller's fault.
    req.log.error({ err, issues: (err as { cause: z.ZodError }).cause.issues }, 'reply does not match its schema');
    void sendError(reply, 'INTERNAL', 'internal error');
    return;
  }
  const fe = err as { statusCode?: number; code?: string; message?: string };
  // A full file system is the storage's condition, not a server bug, wherever it surfaced from.
  if (fe.code === 'ENOSPC' || fe.code === 'EDQUOT') {
    req.log.error({ err }, 'backing file system full');
    void sendError(reply, 'NO_SPACE', `the backing file system is full (${fe.code})`);
    return;
  }
  if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
    const code = HTTP_CODES[fe.statusCode] ?? 'BAD_REQUEST';
    refusals.set(reply, { code, message: fe.message ?? 'bad request' });
    void reply.code(fe.statusCode).send({ error: { code, message: fe.message ?? 'bad request' } });
    return;
  }
  req.log.error({ err }, 'unhandled error');
  void sendError(reply, 'INTERNAL', 'internal error');
}
