import type { ResourcePlugin } from './context.js';

/** Liveness and the API's own description. */
export const health: ResourcePlugin = async (app, { manager: m, version }) => {
  app.get('/v1/health', { schema: { summary: 'Liveness (no token needed)', tags: ['system'], security: [] } }, () => ({
    status: 'ok',
    version,
    appliance: m.applianceId,
  }));
  app.get('/v1/openapi.json', { schema: { summary: 'This document, generated from the schemas the routes validate with', tags: ['system'] } }, () => app.swagger());
};
