import { configDocument } from '../../manager/index.js';
import type { ResourcePlugin } from './context.js';

/** The saved configuration: export and import the whole control state as one document. */
export const config: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['config'];
  app.get('/v1/config', { schema: { summary: 'Export the whole control state as one JSON document (saveconfig)', tags } }, () => m.config.export());
  app.post('/v1/config', { schema: { summary: 'Import a saved control state into an empty appliance (restoreconfig)', tags, body: configDocument } }, async (req, reply) =>
    reply.code(201).send(await m.config.import(req.body)),
  );
};
