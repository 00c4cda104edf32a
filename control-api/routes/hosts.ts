import { z } from 'zod';
import { lun, mode, name, nameParam, qualityClass, size, target } from '../schemas.js';
import type { ResourcePlugin } from './context.js';
import { accepted } from './jobs.js';

const createHost = z.strictObject({ name, farm: name.default('default'), nbdTcp: z.string().max(300).optional() });
const activate = z.strictObject({ volume: name, size, qualityClass: qualityClass.optional(), image: name.optional(), target: target.default(0), lun: lun.default(0), mode: mode.optional() });
const hostTls = z.strictObject({ requireTls: z.boolean() });
const hostPsk = z.strictObject({ key: z.string().regex(/^[0-9a-fA-F]+$/).optional() });

/** Hosts: listeners, namespace, activate, and the NBD TLS identity. */
export const hosts: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['hosts'];
  app.get('/v1/hosts', { schema: { summary: 'List hosts', tags } }, () => ({ hosts: m.listHosts().map((h) => m.describeHost(h)) }));
  app.get('/v1/hosts/:name', { schema: { summary: 'One host', tags, params: nameParam } }, (req) => m.describeHost(m.host(req.params.name)));
  app.get('/v1/hosts/:name/namespace', { schema: { summary: "The host's live namespace", tags, params: nameParam } }, (req) => m.namespaceView(req.params.name));
  app.post('/v1/hosts', { schema: { summary: 'Create a host (its listener opens at once)', tags, body: createHost } }, async (req, reply) =>
    reply.code(201).send(m.describeHost(await m.createHost(req.body))),
  );
  app.post('/v1/hosts/:name/activate', { schema: { summary: 'Activate: allocate → configure → copy image → bind → map, rolled back on failure', tags, params: nameParam, body: activate } }, (req, reply) =>
    reply.code(202).send(accepted(m.bulk.activate({ ...req.body, host: req.params.name }))),
  );
  app.put('/v1/hosts/:name/tls', { schema: { summary: 'Require (or stop requiring) TLS for the host on TCP NBD listeners', tags, params: nameParam, body: hostTls } }, (req) =>
    m.describeHost(m.setHostRequireTls(req.params.name, req.body.requireTls)),
  );
  app.post('/v1/hosts/:name/tls/psk', { schema: { summary: "Set or generate the host's TLS pre-shared key (shown once, as a psk file line)", tags, params: nameParam, body: hostPsk } }, async (req, reply) => {
    const k = await m.setHostPsk(req.params.name, req.body.key);
    return reply.code(201).send({ ...k, pskFile: `${k.identity}:${k.key}\n` });
  });
};
