import type { FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { isBlockgateError, type ErrorCode } from '../common/errors.js';

/** The one place error codes become HTTP statuses. */
const STATUS: Record<ErrorCode, number> = {
  BAD_REQUEST: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  CONFLICT: 409,
  ILLEGAL_STATE: 409,
  // A step failed and its failure edge was applied: the server could not do it, the request was fine.
  OPERATION_FAILED: 500,
  NO_SPACE: 507,
  OUT_OF_RANGE: 400,
  READ_ONLY: 409,
  NOT_SUPPORTED: 501,
  IO_ERROR: 500,
  SHUTTING_DOWN: 503,
  INTERNAL: 500,
};

export function sendError(reply: FastifyReply, status: number, code: string, message: string, details?: unknown): void {
  void reply.code(status).send({ error: { code, message, ...(details ? { details } : {}) } });
}

export function errorHandler(err: unknown, req: FastifyRequest, reply: FastifyReply): void {
  if (isBlockgateError(err)) {
    return sendError(reply, STATUS[err.code], err.code, err.message, err.details);
  }
  if (err instanceof z.ZodError) {
    const msg = err.issues.map((i) => `${i.path.length ? i.path.join('.') : 'body'}: ${i.message}`).join('; ');
    return sendError(reply, 400, 'BAD_REQUEST', msg);
  }
  const fe = err as { statusCode?: number; code?: string; message?: string };
  // A full file system is the storage's condition, not a server bug, wherever it surfaced from.
  if (fe.code === 'ENOSPC' || fe.code === 'EDQUOT') {
    req.log.error({ err }, 'backing file system full');
    return sendError(reply, 507, 'NO_SPACE', `the backing file system is full (${fe.code})`);
  }
  if (fe.statusCode && fe.statusCode >= 400 && fe.statusCode < 500) {
    return sendError(reply, fe.statusCode, 'BAD_REQUEST', fe.message ?? 'bad request');
  }
  req.log.error({ err }, 'unhandled error');
  sendError(reply, 500, 'INTERNAL', 'internal error');
}
