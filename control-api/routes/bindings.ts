import { z } from 'zod';
import { BINDING_PROTOCOLS, views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { idParam, lun, mode, name, noQuery, target } from '../schemas.js';
import type { ResourcePlugin } from './context.js';
import { idPage, nextPage } from './paging.js';

const createBinding = z.strictObject({
  volume: name,
  host: name,
  target,
  lun,
  mode: mode.optional(),
  protocol: z.enum(BINDING_PROTOCOLS).optional().describe("served over nbd, iscsi or both (the host must speak it); default: the host's default protocol"),
  map: z.boolean().default(true).describe('map at once (bind then map, each its own transition)'),
});
const switchBody = z.strictObject({ protocol: z.enum(BINDING_PROTOCOLS).describe('nbd, iscsi or both: the host must speak it and the appliance offer it') });
const listQuery = z.strictObject({
  host: name.optional().describe('only bindings of this host (404 if there is no such host)'),
  volume: name.optional().describe('only bindings of this volume (404 if there is no such volume)'),
  ...idPage,
});

/** Bindings: bind, map, unmap, unbind (each its own FIG. 7 transition). */
export const bindings: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['bindings'];
  const one = replies({ 200: views.bindingView });
  app.get(
    '/v1/bindings',
    {
      schema: {
        summary: 'List bindings by id, optionally of one host and/or one volume; ?limit= and ?after= page it (x-next-after and Link name the next page)',
        tags,
        querystring: listQuery,
        response: replies({ 200: z.strictObject({ bindings: z.array(views.bindingView) }) }),
      },
    },
    (req, reply) => {
      const { host, volume, ...page } = req.query;
      const r = m.pageBindings({ host, volume }, page);
      nextPage(req, reply, r.next);
      return { bindings: r.items };
    },
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
  app.post(
    '/v1/bindings/:id/switch',
    {
      schema: {
        summary: "Switch the binding's protocol live: hold, drain, sync, withdraw from the old protocol (that unit only), publish on the new one; returns the connection descriptor",
        tags,
        params: idParam,
        body: switchBody,
        response: replies({ 200: views.switchView }),
      },
    },
    async (req) => m.switchProtocol(req.params.id, req.body.protocol),
  );
  app.get(
    '/v1/bindings/:id/descriptor',
    { schema: { summary: 'How the host reaches this mapped unit now (the connection descriptor)', tags, params: idParam, querystring: noQuery, response: replies({ 200: views.connectionDescriptor }) } },
    (req) => m.bindingDescriptor(req.params.id),
  );
  app.delete('/v1/bindings/:id', { schema: { summary: 'Unbind (unmapped → unbound)', tags, params: idParam, response: replies({ 204: z.undefined() }) } }, async (req, reply) => {
    m.unbind(req.params.id);
    return reply.code(204).send();
  });
};
