import { z } from 'zod';
import { BINDING_PROTOCOLS, views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { name, nameParam, noQuery } from '../schemas.js';
import type { ResourcePlugin } from './context.js';
import { accepted, acceptedView } from './jobs.js';

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

const migrate = z.strictObject({
  to: name.describe('the host the VM moves to'),
  mode: z.enum(['live', 'stop-and-copy']).default('live').describe('live: cut over once the new host has connected (or on /cutover); stop-and-copy: the VM is stopped, cut over at once'),
  protocol: z.enum(BINDING_PROTOCOLS).optional().describe("what the new host uses (default: its default protocol, narrowed to what both sides speak)"),
  timeoutMs: z.number().int().min(100).max(3_600_000).default(60_000).describe('how long a live migration waits for the new host before rolling back'),
});

const issuedCredential = z.discriminatedUnion('kind', [
  z.strictObject({ kind: z.literal('tls-psk'), identity: z.string(), key: z.string(), pskFile: z.string().describe("the line for the new host's psk file") }),
  z.strictObject({ kind: z.literal('chap'), username: z.string(), secret: z.string() }),
]);
const migrateAccepted = acceptedView.extend({
  credentials: z.array(issuedCredential).describe("fresh credentials for the new host, scoped to it and this VM's disks; shown only here. Withdrawn if the migration rolls back"),
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
  app.post(
    '/v1/vms/:name/migrate',
    {
      schema: {
        summary: "Migrate a VM's disks to another host (a job): bind it, wait for it, hold-sync-revoke the old host, move the VM; rolled back on failure or timeout",
        tags,
        params: nameParam,
        body: migrate,
        response: replies({ 202: migrateAccepted }),
      },
    },
    async (req, reply) => {
      const r = await m.migrations.submit(req.params.name, req.body);
      return reply.code(202).send({ ...accepted(r.job), credentials: r.credentials });
    },
  );
  app.post(
    '/v1/vms/:name/migrate/cutover',
    { schema: { summary: 'Cut a live migration over now, without waiting for the new host to connect', tags, params: nameParam, response: replies({ 204: z.undefined() }) } },
    async (req, reply) => {
      m.migrations.cutover(req.params.name);
      return reply.code(204).send();
    },
  );
  app.delete('/v1/vms/:name', { schema: { summary: 'Delete a VM (its bindings stay)', tags, params: nameParam, response: replies({ 204: z.undefined() }) } }, async (req, reply) => {
    m.inventory.deleteVm(req.params.name);
    return reply.code(204).send();
  });
};
