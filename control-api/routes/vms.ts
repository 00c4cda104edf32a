import { z } from 'zod';
import { views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { name, nameParam, noQuery } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const createVm = z.strictObject({
  name,
  host: name,
  bindings: z
    .array(z.number().int().positive())
    .min(1)
    .max(256)
    .refine((b) => new Set(b).size === b.length, 'a binding is listed twice')
    .describe('the bindings (on this host) the VM owns, each once'),
});

export const vms: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['vms'];
  app.get('/v1/vms', { schema: { summary: 'List VMs', tags, querystring: noQuery, response: replies({ 200: z.strictObject({ vms: z.array(views.vmView) }) }) } }, () => ({ vms: m.inventory.listVms() }));
  app.get('/v1/vms/:name', { schema: { summary: 'One VM', tags, params: nameParam, querystring: noQuery, response: replies({ 200: views.vmView }) } }, (req) =>
    m.inventory.describeVm(m.inventory.vm(req.params.name)),
  );
  app.post('/v1/vms', { schema: { summary: 'Create a VM on a host owning some of its bindings', tags, body: createVm, response: replies({ 201: views.vmView }) } }, async (req, reply) =>
    reply.code(201).send(m.inventory.createVm(req.body)),
  );
  app.delete('/v1/vms/:name', { schema: { summary: 'Delete a VM (its bindings stay)', tags, params: nameParam, response: replies({ 204: z.undefined() }) } }, async (req, reply) => {
    m.inventory.deleteVm(req.params.name);
    return reply.code(204).send();
  });
};
