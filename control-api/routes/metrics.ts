import { z } from 'zod';
import { OP_NAMES } from '../../target/index.js';
import { replies, sendError } from '../errors.js';
import { buildMetrics } from '../metrics.js';
import { noQuery } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const perOp = z.strictObject(Object.fromEntries(OP_NAMES.map((op) => [op, z.number()])) as Record<(typeof OP_NAMES)[number], z.ZodNumber>);
const ioCounters = z.strictObject({ ops: perOp, bytes: perOp, errors: perOp, latencySeconds: perOp.describe('summed request latency: divided by ops, the mean') });
const ioView = z.strictObject({
  at: z.number().describe('milliseconds since the epoch when the counters were read'),
  total: ioCounters,
  volumes: z.array(z.strictObject({ host: z.string(), volume: z.string(), ...ioCounters.shape })),
  sessions: z.array(z.strictObject({ host: z.string(), protocol: z.string(), sessions: z.number().int() })),
});
type Counters = z.output<typeof ioCounters>;

const zeroes = (): Record<string, number> => Object.fromEntries(OP_NAMES.map((op) => [op, 0]));
const empty = (): Counters => ({ ops: zeroes(), bytes: zeroes(), errors: zeroes(), latencySeconds: zeroes() }) as Counters;

/** Prometheus exposition, behind the same token as the API (Prometheus sends it with authorization.credentials_file). */
export const metrics: ResourcePlugin = async (app, { metrics: sources }) => {
  const registry = sources ? buildMetrics(sources) : null;
  app.get('/metrics', { schema: { summary: 'Prometheus text exposition: I/O by host and volume, latency histograms, cache, sessions, jobs', tags: ['system'] } }, async (_req, reply) => {
    if (!registry) return sendError(reply, 'NOT_FOUND', 'metrics are not enabled');
    const text = await registry.metrics();
    return reply.code(200).header('content-type', registry.contentType).send(text);
  });
  // The same counters as JSON for the console, which turns two readings into rates.
  app.get(
    '/v1/metrics/io',
    { schema: { summary: 'I/O counters (ops, bytes, errors, summed latency by operation) in total and by host and volume, and open sessions', tags: ['system'], querystring: noQuery, response: replies({ 200: ioView }) } },
    async (_req, reply) => {
      if (!sources) return sendError(reply, 'NOT_FOUND', 'metrics are not enabled');
      const total = empty();
      const volumes = sources.io.entries().map(({ host, volume, stats }) => {
        const c = empty();
        OP_NAMES.forEach((op, i) => {
          c.ops[op] = stats.ops[i]!;
          c.bytes[op] = stats.bytes[i]!;
          c.errors[op] = stats.errors[i]!;
          c.latencySeconds[op] = stats.latencySum[i]!;
          total.ops[op] += stats.ops[i]!;
          total.bytes[op] += stats.bytes[i]!;
          total.errors[op] += stats.errors[i]!;
          total.latencySeconds[op] += stats.latencySum[i]!;
        });
        return { host, volume, ...c };
      });
      const sessions = sources.io.sessionsByProtocol().map(([protocol, host, n]) => ({ host, protocol, sessions: n }));
      return { at: Date.now(), total, volumes, sessions };
    },
  );
};
