import { views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { noQuery } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

/** Liveness and the API's own description. */
export const health: ResourcePlugin = async (app, { manager: m, version }) => {
  const tags = ['system'];
  app.get(
    '/v1/health',
    { schema: { summary: 'Liveness and health (no token needed): degraded, with the reasons, while an array has failed', tags, security: [], querystring: noQuery, response: replies({ 200: views.healthView }) } },
    () => {
      const h = m.health.report();
      return { status: h.status, version, appliance: m.applianceId, reasons: h.reasons, warnings: h.warnings };
    },
  );
  // The document is JSON Schema generated from every route's zod schemas; it is sent as it is.
  app.get('/v1/openapi.json', { schema: { summary: 'This document, generated from the schemas the routes validate and reply with', tags, querystring: noQuery } }, (_req, reply) =>
    reply.type('application/json').send(JSON.stringify(app.swagger())),
  );
};
