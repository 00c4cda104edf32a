import { z } from 'zod';
import { views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { lun, mode, name, nameParam, noQuery, qualityClass, size, target } from '../schemas.js';
import type { ResourcePlugin } from './context.js';
import { accepted, acceptedView } from './jobs.js';

const createHost = z.strictObject({ name, farm: name.default('default'), nbdTcp: z.string().max(300).optional().describe('HOST:PORT of a TCP listener of its own') });
const activate = z.strictObject({ volume: name, size, qualityClass: qualityClass.optional(), image: name.optional(), target: target.default(0), lun: lun.default(0), mode: mode.optional() });
const hostTls = z.strictObject({ requireTls: z.boolean() });
const hostPsk = z.strictObject({ key: z.string().regex(/^[0-9a-fA-F]+$/).optional().describe('16 to 64 bytes of hex; generated when left out') });
const pskView = z.strictObject({ identity: name, key: z.string(), pskFile: z.string().describe('the line for the host\'s psk file') });

/** Hosts: listeners, namespace, activate, and the NBD TLS identity. */
export const hosts: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['hosts'];
  const one = replies({ 200: views.hostView });
  app.get('/v1/hosts', { schema: { summary: 'List hosts', tags, querystring: noQuery, response: replies({ 200: z.strictObject({ hosts: z.array(views.hostView) }) }) } }, () => ({
    hosts: m.listHosts().map((h) => m.describeHost(h)),
  }));
  app.get('/v1/hosts/:name', { schema: { summary: 'One host', tags, params: nameParam, querystring: noQuery, response: one } }, (req) => m.describeHost(m.host(req.params.name)));
  app.get('/v1/hosts/:name/namespace', { schema: { summary: "The host's live namespace", tags, params: nameParam, querystring: noQuery, response: replies({ 200: views.namespaceView }) } }, (req) =>
    m.namespaceView(req.params.name),
  );
  app.post('/v1/hosts', { schema: { summary: 'Create a host (its listener opens at once)', tags, body: createHost, response: replies({ 201: views.hostView }) } }, async (req, reply) =>
    reply.code(201).send(m.describeHost(await m.createHost(req.body))),
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
    { schema: { summary: "Set or generate the host's TLS pre-shared key (shown once, as a psk file line)", tags, params: nameParam, body: hostPsk, response: replies({ 201: pskView }) } },
    async (req, reply) => {
      const k = await m.setHostPsk(req.params.name, req.body.key);
      return reply.code(201).send({ ...k, pskFile: `${k.identity}:${k.key}\n` });
    },
  );
};
