import { z } from 'zod';
import { name, nameParam } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const createVm = z.strictObject({
  name,
  host: name,
  bindings: z.array(z.number().int().positive()).min(1).max(256).describe('the bindings (on this host) the VM owns, each once'),
});

export const vms: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['vms'];
  app.get('/v1/vms', { schema: { summary: 'List VMs', tags } }, () => ({ vms: m.inventory.listVms() }));
  app.get('/v1/vms/:name', { schema: { summary: 'One VM', tags, params: nameParam } }, (req) => m.inventory.describeVm(m.inventory.vm(req.params.name)));
  app.post('/v1/vms', { schema: { summary: 'Create a VM on a host owning some of its bindings', tags, body: createVm } }, (req, reply) =>
    reply.code(201).send(m.inventory.createVm(req.body)),
  );
  app.delete('/v1/vms/:name', { schema: { summary: 'Delete a VM (its bindings stay)', tags, params: nameParam } }, (req, reply) => {
    m.inventory.deleteVm(req.params.name);
    return reply.code(204).send();
  });
};
