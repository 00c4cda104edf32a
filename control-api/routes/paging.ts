import type { FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { name } from '../schemas.js';

/**
 * Keyset pages for the big lists. The body stays what it always was (an
 * object holding the array); where the next page starts travels in headers:
 * `x-next-after` (the cursor) and an RFC 8288 `Link: <…>; rel="next"`.
 * Without `limit` a list answers every row, as it did before pages existed.
 */
const limit = z.coerce.number().int().min(1).max(1000).optional().describe('at most this many rows (1..1000); all when left out');
export const namePage = { limit, after: name.optional().describe('only rows whose name sorts after this one (the x-next-after of the previous page)') };
export const idPage = { limit, after: z.coerce.number().int().min(0).optional().describe('only rows whose id is above this one (the x-next-after of the previous page)') };

/** Sets the next-page headers when there is a next page. */
export function nextPage(req: FastifyRequest, reply: FastifyReply, next: string | number | null): void {
  if (next === null) return;
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(req.query as Record<string, unknown>)) if (v !== undefined && k !== 'after') q.set(k, String(v));
  q.set('after', String(next));
  reply.header('x-next-after', String(next));
  reply.header('link', `<${req.url.split('?')[0]}?${q.toString()}>; rel="next"`);
}
