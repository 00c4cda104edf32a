import { z } from 'zod';
import { views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { idParam, lun, mode, name, noQuery, target } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const createBinding = z.strictObject({
  volume: name,
  host: name,
  target,
  lun,
  mode: mode.optional(),
  map: z.boolean().default(true).describe('map at once (bind then map, each its own transition)'),
});
const listQuery = z.strictObject({
  host: name.optional().describe('only bindings of this host (404 if there is no such host)'),
  volume: name.optional().describe('only bindings of this volume (404 if there is no such volume)'),
});

/** Bindings: bind, map, unmap, unbind (each its own FIG. 7 transition). */
export const bindings: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['bindings'];
  const one = replies({ 200: views.bindingView });
  app.get(
    '/v1/bindings',
    { schema: { summary: 'List bindings, optionally of one host and/or one volume', tags, querystring: listQuery, response: replies({ 200: z.strictObject({ bindings: z.array(views.bindingView) }) }) } },
    (req) => ({ bindings: m.listBindings(req.query).map((b) => m.describeBinding(b)) }),
  );
  app.get('/v1/bindings/:id', { schema: { summary: 'One binding', tags, params: idParam, querystring: noQuery, response: one } }, (req) => m.describeBinding(m.binding(req.params.id)));
  app.post('/v1/bindings', { schema: { summary: 'Bind a volume to a host at target/lun (with map, also map it)', tags, body: createBinding, response: replies({ 201: views.bindingView }) } }, async (req, reply) =>
    reply.code(201).send(m.describeBinding(m.bind(req.body))),
  );
  app.post('/v1/bindings/:id/map', { schema: { summary: 'Map (bound → mapped): the unit appears in the host namespace', tags, params: idParam, response: one } }, (req) =>
    m.describeBinding(m.map(req.params.id)),
  );
  app.post('/v1/bindings/:id/unmap', { schema: { summary: 'Unmap (mapped → unmapped): drain, flush, close sessions', tags, params: idParam, response: one } }, async (req) =>
    m.describeBinding(await m.unmap(req.params.id)),
  );
  app.delete('/v1/bindings/:id', { schema: { summary: 'Unbind (unmapped → unbound)', tags, params: idParam, response: replies({ 204: z.undefined() }) } }, async (req, reply) => {
    m.unbind(req.params.id);
    return reply.code(204).send();
  });
};
