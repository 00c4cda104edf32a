import { configDocument, views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { noQuery } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

/** The saved configuration: export and import the whole control state as one document (the same schema both ways). */
export const config: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['config'];
  app.get('/v1/config', { schema: { summary: 'Export the whole control state as one JSON document (saveconfig)', tags, querystring: noQuery, response: replies({ 200: configDocument }) } }, () =>
    m.config.export(),
  );
  app.post(
    '/v1/config',
    { schema: { summary: 'Import a saved control state into an empty appliance (restoreconfig)', tags, body: configDocument, response: replies({ 201: views.importResult }) } },
    async (req, reply) => reply.code(201).send(await m.config.import(req.body)),
  );
};
