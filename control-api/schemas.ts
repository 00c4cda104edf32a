import { z } from 'zod';
import { parseSize } from '../common/units.js';
import { words } from '../manager/index.js';

/**
 * Request words shared by several resources. Each route file declares the
 * rest of its own schemas next to its handlers; fastify validates with them,
 * and the OpenAPI document is generated from the same objects.
 */

/** Sizes as bytes or strings like "256M" / "4G"; never zero. */
export const size = z
  .union([z.number().int().positive(), z.string().min(1)])
  .transform((v, ctx) => {
    try {
      const n = parseSize(v);
      if (n > 0) return n;
      ctx.addIssue({ code: 'custom', message: `size must be more than 0 bytes (got '${v}')` });
    } catch (e) {
      ctx.addIssue({ code: 'custom', message: (e as Error).message });
    }
    return z.NEVER;
  })
  .describe('bytes, or a string such as "256M" or "4G" (more than 0)');
export const { name, target, lun, qualityClass } = words;
export const mode = words.accessMode;
export const intQuery = z.coerce.number().int().min(0);

export const nameParam = z.strictObject({ name });
export const idParam = z.strictObject({ id: z.coerce.number().int().positive() });

/** A route with no query parameters refuses any: a filter it does not know is an error, never ignored. */
export const noQuery = z.strictObject({});
