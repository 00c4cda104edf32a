import { z } from 'zod';
import { replies } from '../errors.js';
import { noQuery } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const healthView = z.strictObject({ status: z.literal('ok'), version: z.string(), appliance: z.string() });

/** Liveness and the API's own description. */
export const health: ResourcePlugin = async (app, { manager: m, version }) => {
  const tags = ['system'];
  app.get('/v1/health', { schema: { summary: 'Liveness (no token needed)', tags, security: [], querystring: noQuery, response: replies({ 200: healthView }) } }, () => ({
    status: 'ok' as const,
    version,
    appliance: m.applianceId,
  }));
  // The document is JSON Schema generated from every route's zod schemas; it is sent as it is.
  app.get('/v1/openapi.json', { schema: { summary: 'This document, generated from the schemas the routes validate and reply with', tags, querystring: noQuery } }, (_req, reply) =>
    reply.type('application/json').send(JSON.stringify(app.swagger())),
  );
};
