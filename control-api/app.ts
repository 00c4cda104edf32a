import crypto from 'node:crypto';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import { z } from 'zod';
import { parseSize } from '../common/units.js';
import type { StorageManager } from '../manager/index.js';
import { errorHandler, sendError } from './errors.js';

export interface ApiOptions {
  token: string;
  logger: Logger | false;
  version: string;
}

const size = z.union([z.number().int().positive(), z.string().min(1)]).transform((v, ctx) => {
  try {
    return parseSize(v);
  } catch (e) {
    ctx.addIssue({ code: 'custom', message: (e as Error).message });
    return z.NEVER;
  }
});
const name = z.string().min(1).max(63);

const schemas = {
  farm: z.strictObject({ name }),
  array: z.strictObject({ name, size, qualityClass: z.string().min(1).max(32).optional() }),
  host: z.strictObject({ name, farm: name.default('default'), nbdTcp: z.string().optional() }),
  volume: z.strictObject({
    name,
    size,
    farm: name.optional(),
    qualityClass: z.string().min(1).max(32).optional(),
    shareMode: z.enum(['exclusive', 'shared']).optional(),
    layout: z.array(z.strictObject({ array: name, size })).min(1).max(64).optional(),
  }),
  binding: z.strictObject({
    volume: name,
    host: name,
    target: z.number().int().min(0).max(255),
    lun: z.number().int().min(0).max(16383),
    mode: z.enum(['exclusive', 'shared', 'read-only']).optional(),
    map: z.boolean().default(true),
  }),
  hostTls: z.strictObject({ requireTls: z.boolean() }),
  hostPsk: z.strictObject({ key: z.string().regex(/^[0-9a-fA-F]+$/).optional() }),
  nameParam: z.strictObject({ name }),
  idParam: z.strictObject({ id: z.coerce.number().int().positive() }),
};

/** Constant-time token check, so timing reveals nothing about the token. */
function tokenMatches(header: string | undefined, token: string): boolean {
  if (!header?.startsWith('Bearer ')) return false;
  const given = Buffer.from(header.slice(7));
  const want = Buffer.from(token);
  return given.length === want.length && crypto.timingSafeEqual(given, want);
}

/** Builds the control API (not listening): tests drive it with inject() or a real port. */
export function buildApi(m: StorageManager, opts: ApiOptions): FastifyInstance {
  const app = Fastify({
    ...(opts.logger ? { loggerInstance: opts.logger as FastifyBaseLogger } : { logger: false }),
    // Control operations log their own line (manager); per-request lines would double them.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
  }) as unknown as FastifyInstance;
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler((req, reply) => sendError(reply, 404, 'NOT_FOUND', `no route ${req.method} ${req.url}`));

  app.addHook('onRequest', async (req, reply) => {
    if (req.url === '/v1/health') return;
    if (!tokenMatches(req.headers.authorization, opts.token)) {
      sendError(reply, 401, 'UNAUTHORIZED', 'a valid bearer token is required (Authorization: Bearer <token>)');
      return reply;
    }
  });

  app.get('/v1/health', async () => ({ status: 'ok', version: opts.version, appliance: m.applianceId }));

  app.get('/v1/farms', async () => ({ farms: m.listFarms().map((f) => ({ name: f.name, createdAt: f.created_at })) }));
  app.post('/v1/farms', async (req, reply) => {
    const b = schemas.farm.parse(req.body);
    m.createFarm(b.name);
    return reply.code(201).send({ name: b.name });
  });

  app.get('/v1/arrays', async () => ({
    arrays: m.listArrays().map((a) => {
      const u = m.arrayUsage(a);
      return { name: a.name, path: a.path, size: a.size, qualityClass: a.quality_class, used: u.used, free: u.free };
    }),
  }));
  app.post('/v1/arrays', async (req, reply) => {
    const b = schemas.array.parse(req.body);
    const a = await m.createArray(b.name, b.size, b.qualityClass);
    return reply.code(201).send({ name: a.name, path: a.path, size: a.size, qualityClass: a.quality_class });
  });

  app.get('/v1/volumes', async () => ({ volumes: m.listVolumes().map((v) => m.describeVolume(v)) }));
  app.get('/v1/volumes/:name', async (req) => m.describeVolume(m.volume(schemas.nameParam.parse(req.params).name)));
  app.post('/v1/volumes', async (req, reply) => {
    const b = schemas.volume.parse(req.body);
    const v = m.createVolume(b);
    return reply.code(201).send(m.describeVolume(v));
  });

  app.get('/v1/hosts', async () => ({ hosts: m.listHosts().map((h) => m.describeHost(h)) }));
  app.get('/v1/hosts/:name', async (req) => m.describeHost(m.host(schemas.nameParam.parse(req.params).name)));
  app.get('/v1/hosts/:name/namespace', async (req) => m.namespaceView(schemas.nameParam.parse(req.params).name));
  app.post('/v1/hosts', async (req, reply) => {
    const b = schemas.host.parse(req.body);
    const h = await m.createHost(b);
    return reply.code(201).send(m.describeHost(h));
  });

  // Host TLS identity for NBD (PSK key, require-TLS).
  app.put('/v1/hosts/:name/tls', async (req) => {
    const b = schemas.hostTls.parse(req.body);
    return m.describeHost(m.setHostRequireTls(schemas.nameParam.parse(req.params).name, b.requireTls));
  });
  app.post('/v1/hosts/:name/tls/psk', async (req, reply) => {
    const b = schemas.hostPsk.parse(req.body ?? {});
    const r = await m.setHostPsk(schemas.nameParam.parse(req.params).name, b.key);
    // The key is shown this once, in the GnuTLS psk-file form libnbd and qemu read.
    return reply.code(201).send({ ...r, pskFile: `${r.identity}:${r.key}\n` });
  });

  app.get('/v1/bindings', async () => ({ bindings: m.listBindings().map((b) => m.describeBinding(b)) }));
  app.post('/v1/bindings', async (req, reply) => {
    const b = schemas.binding.parse(req.body);
    return reply.code(201).send(m.describeBinding(m.bind(b)));
  });
  app.post('/v1/bindings/:id/map', async (req) => m.describeBinding(m.setMapped(schemas.idParam.parse(req.params).id, true)));
  app.post('/v1/bindings/:id/unmap', async (req) => m.describeBinding(m.setMapped(schemas.idParam.parse(req.params).id, false)));
  app.delete('/v1/bindings/:id', async (req, reply) => {
    m.unbind(schemas.idParam.parse(req.params).id);
    return reply.code(204).send();
  });

  return app;
}
