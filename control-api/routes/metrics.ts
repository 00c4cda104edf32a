import { sendError } from '../errors.js';
import { buildMetrics } from '../metrics.js';
import type { ResourcePlugin } from './context.js';

/** Prometheus exposition, behind the same token as the API (Prometheus sends it with authorization.credentials_file). */
export const metrics: ResourcePlugin = async (app, { metrics: sources }) => {
  const registry = sources ? buildMetrics(sources) : null;
  app.get('/metrics', { schema: { summary: 'Prometheus text exposition: I/O by host and volume, latency histograms, cache, sessions, jobs', tags: ['system'] } }, async (_req, reply) => {
    if (!registry) return sendError(reply, 'NOT_FOUND', 'metrics are not enabled');
    const text = await registry.metrics();
    return reply.code(200).header('content-type', registry.contentType).send(text);
  });
};
