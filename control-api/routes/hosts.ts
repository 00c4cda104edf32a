import { z } from 'zod';
import { views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { lun, mode, name, nameParam, noQuery, qualityClass, size, target } from '../schemas.js';
import type { ResourcePlugin } from './context.js';
import { accepted, acceptedView } from './jobs.js';
import { namePage, nextPage } from './paging.js';

const allowWildcard = z.boolean().optional().describe('allow a wildcard listener address (0.0.0.0, [::]): every network of the machine');
const createHost = z.strictObject({ name, farm: name.default('default'), nbdTcp: z.string().max(300).optional().describe('HOST:PORT of a TCP listener of its own'), allowWildcard });
const socketAccess = z
  .strictObject({
    mode: z.string().regex(/^0?[0-7]{3}$/, 'an octal mode such as "0660"').optional(),
    uid: z.number().int().min(0).max(4294967294).optional(),
    gid: z.number().int().min(0).max(4294967294).optional(),
  })
  .describe("owner, group and mode of the host's unix socket; kept across restarts");
const updateHost = z.strictObject({ nbdTcp: z.string().max(300).nullable().optional().describe('move its own TCP listener (null: none); its NBD sessions end'), allowWildcard, socket: socketAccess.optional() });
const activate = z.strictObject({ volume: name, size, qualityClass: qualityClass.optional(), image: name.optional(), target: target.default(0), lun: lun.default(0), mode: mode.optional() });
const hostTls = z.strictObject({ requireTls: z.boolean() });
const hostPsk = z.strictObject({ key: z.string().regex(/^[0-9a-fA-F]+$/).optional().describe('16 to 64 bytes of hex; generated when left out') });
const initiator = z.string().min(4).max(223);
const hostInitiator = z.strictObject({ iqn: initiator });
const hostInitiatorParams = z.strictObject({ name, iqn: initiator });
const hostChap = z
  .strictObject({
    mode: z.enum(['one-way', 'mutual']).default('one-way'),
    username: z.string().min(1).max(255).optional(),
    mutualUsername: z.string().min(1).max(255).optional(),
  })
  .default({ mode: 'one-way' });
const hostProtocols = z.strictObject({
  protocols: z.array(z.enum(['nbd', 'iscsi'])).min(1).max(2),
  defaultProtocol: z.enum(['nbd', 'iscsi', 'both']).optional().describe("what new bindings are served over; 'both' only for a host speaking both"),
});
const initiatorsView = z.strictObject({ initiators: z.array(z.string()) });
const chapView = z.strictObject({
  host: name,
  mode: z.enum(['one-way', 'mutual']),
  username: z.string(),
  secret: z.string(),
  mutualUsername: z.string().optional(),
  mutualSecret: z.string().optional(),
});
const pskView = z.strictObject({ identity: name, key: z.string(), pskFile: z.string().describe('the line for the host\'s psk file') });
const pskState = z.strictObject({ identity: name, present: z.boolean(), setAt: z.string().nullable() });
const pskReply = (k: { identity: string; key: string }): z.output<typeof pskView> => ({ ...k, pskFile: `${k.identity}:${k.key}\n` });

/** Hosts: listeners, namespace, activate, and the NBD TLS identity. */
export const hosts: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['hosts'];
  const one = replies({ 200: views.hostView });
  app.get(
    '/v1/hosts',
    { schema: { summary: 'List hosts by name; ?limit= and ?after= page it (x-next-after and Link name the next page)', tags, querystring: z.strictObject(namePage), response: replies({ 200: z.strictObject({ hosts: z.array(views.hostView) }) }) } },
    (req, reply) => {
      const page = m.listing.hosts(req.query);
      nextPage(req, reply, page.next);
      return { hosts: page.items };
    },
  );
  app.get('/v1/hosts/:name', { schema: { summary: 'One host', tags, params: nameParam, querystring: noQuery, response: one } }, (req) => m.describeHost(m.host(req.params.name)));
  app.get('/v1/hosts/:name/namespace', { schema: { summary: "The host's live namespace", tags, params: nameParam, querystring: noQuery, response: replies({ 200: views.namespaceView }) } }, (req) =>
    m.namespaceView(req.params.name),
  );
  app.post('/v1/hosts', { schema: { summary: 'Create a host (its listener opens at once)', tags, body: createHost, response: replies({ 201: views.hostView }) } }, async (req, reply) =>
    reply.code(201).send(m.describeHost(await m.createHost(req.body))),
  );
  app.patch('/v1/hosts/:name', { schema: { summary: "Change a host's own TCP listener, or its unix socket's owner, group and mode", tags, params: nameParam, body: updateHost, response: one } }, async (req) =>
    m.describeHost(await m.updateHost(req.params.name, req.body)),
  );
  app.post(
    '/v1/hosts/:name/activate',
    { schema: { summary: 'Activate: allocate → configure → copy image → bind → map, rolled back on failure', tags, params: nameParam, body: activate, response: replies({ 202: acceptedView }) } },
    async (req, reply) => reply.code(202).send(accepted(m.bulk.activate({ ...req.body, host: req.params.name }))),
  );
  app.put('/v1/hosts/:name/tls', { schema: { summary: 'Require (or stop requiring) TLS for the host on TCP NBD listeners', tags, params: nameParam, body: hostTls, response: one } }, (req) =>
    m.describeHost(m.setHostRequireTls(req.params.name, req.body.requireTls)),
  );
  app.post(
    '/v1/hosts/:name/tls/psk',
    { schema: { summary: "Create the host's TLS pre-shared key (given or generated; shown once, as a psk file line); 409 if it has one", tags, params: nameParam, body: hostPsk, response: replies({ 201: pskView }) } },
    async (req, reply) => reply.code(201).send(pskReply(await m.setHostPsk(req.params.name, req.body.key, 'create'))),
  );
  app.post(
    '/v1/hosts/:name/tls/psk/rotate',
    { schema: { summary: "Replace the host's TLS pre-shared key (shown once); 404 if it has none", tags, params: nameParam, body: hostPsk, response: replies({ 201: pskView }) } },
    async (req, reply) => reply.code(201).send(pskReply(await m.setHostPsk(req.params.name, req.body.key, 'rotate'))),
  );
  app.get('/v1/hosts/:name/tls/psk', { schema: { summary: 'Whether the host has a TLS key, and since when (never the key)', tags, params: nameParam, querystring: noQuery, response: replies({ 200: pskState }) } }, (req) =>
    m.hostPsk(req.params.name),
  );
  app.delete('/v1/hosts/:name/tls/psk', { schema: { summary: "Remove the host's TLS key", tags, params: nameParam, response: replies({ 204: z.undefined() }) } }, async (req, reply) => {
    await m.deleteHostPsk(req.params.name);
    return reply.code(204).send();
  });
  app.delete(
    '/v1/hosts/:name',
    { schema: { summary: 'Delete a host with no bindings or VMs: listeners close, sessions end, keys go (409 while in use)', tags, params: nameParam, response: replies({ 204: z.undefined() }) } },
    async (req, reply) => {
      await m.deleteHost(req.params.name);
      return reply.code(204).send();
    },
  );

  // iSCSI identity: initiator names, CHAP (secrets shown once, on creation), allowed protocols.
  app.post(
    '/v1/hosts/:name/initiators',
    { schema: { summary: 'Add an iSCSI initiator name that is this host', tags, params: nameParam, body: hostInitiator, response: replies({ 201: initiatorsView }) } },
    async (req, reply) => reply.code(201).send({ initiators: m.iscsi.addInitiator(req.params.name, req.body.iqn) }),
  );
  app.delete(
    '/v1/hosts/:name/initiators/:iqn',
    { schema: { summary: 'Remove an initiator name (its sessions are asked to log out)', tags, params: hostInitiatorParams, response: replies({ 200: initiatorsView }) } },
    async (req) => ({ initiators: await m.iscsi.removeInitiator(req.params.name, req.params.iqn) }),
  );
  app.post(
    '/v1/hosts/:name/chap',
    { schema: { summary: "Create or rotate the host's CHAP secrets (one-way or mutual); the only time they are shown", tags, params: nameParam, body: hostChap, response: replies({ 201: chapView }) } },
    async (req, reply) => reply.code(201).send(await m.iscsi.setChap(req.params.name, req.body)),
  );
  app.delete('/v1/hosts/:name/chap', { schema: { summary: 'Stop requiring CHAP for the host', tags, params: nameParam, response: replies({ 204: z.undefined() }) } }, async (req, reply) => {
    await m.iscsi.clearChap(req.params.name);
    return reply.code(204).send();
  });
  app.put('/v1/hosts/:name/protocols', { schema: { summary: 'Which protocols the host speaks (nbd, iscsi) and its default', tags, params: nameParam, body: hostProtocols, response: one } }, async (req) => {
    await m.iscsi.setProtocols(req.params.name, req.body.protocols, req.body.defaultProtocol);
    return m.describeHost(m.host(req.params.name));
  });
};
