import crypto from 'node:crypto';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { StorageManager } from '../manager/index.js';
import { errorHandler, sendError } from './errors.js';
import { buildMetrics, type MetricsSources } from './metrics.js';
import { schemas } from './schemas.js';
import { serveEvents } from './sse.js';

export interface ApiOptions {
  token: string;
  logger: Logger | false;
  version: string;
  /** Where /metrics reads from; without it /metrics answers 404. */
  metrics?: MetricsSources | undefined;
}

/** Constant-time token check, so timing reveals nothing about the token. */
function tokenMatches(header: string | undefined, token: string): boolean {
  if (!header?.startsWith('Bearer ')) return false;
  const given = Buffer.from(header.slice(7));
  const want = Buffer.from(token);
  return given.length === want.length && crypto.timingSafeEqual(given, want);
}

type Method = 'GET' | 'POST' | 'PUT' | 'DELETE';

interface RouteSpec<B extends z.ZodType, P extends z.ZodType, Q extends z.ZodType> {
  summary: string;
  tag: string;
  body?: B;
  params?: P;
  query?: Q;
  /** Success status; 202 routes answer with a job resource. */
  status?: number;
  /** The handler writes the reply itself (server-sent events). */
  raw?: boolean;
}

interface RouteRecord {
  method: Method;
  url: string;
  spec: RouteSpec<z.ZodType, z.ZodType, z.ZodType>;
}

type Parsed<B extends z.ZodType, P extends z.ZodType, Q extends z.ZodType> = {
  body: z.output<B>;
  params: z.output<P>;
  query: z.output<Q>;
  req: FastifyRequest;
  reply: FastifyReply;
};

/**
 * One registry of routes → zod schemas: every route is declared once, its
 * input parsed with its schemas, and the OpenAPI document is built from the
 * same list, so the document cannot drift from what the server accepts.
 */
class Routes {
  readonly list: RouteRecord[] = [];
  constructor(private readonly app: FastifyInstance) {}

  add<B extends z.ZodType = z.ZodUndefined, P extends z.ZodType = z.ZodUndefined, Q extends z.ZodType = z.ZodUndefined>(
    method: Method,
    url: string,
    spec: RouteSpec<B, P, Q>,
    handler: (x: Parsed<B, P, Q>) => unknown,
  ): void {
    this.list.push({ method, url, spec: spec as unknown as RouteSpec<z.ZodType, z.ZodType, z.ZodType> });
    this.app.route({
      method,
      url,
      handler: async (req, reply) => {
        const parsed = {
          body: spec.body ? spec.body.parse(req.body ?? {}) : undefined,
          params: spec.params ? spec.params.parse(req.params) : undefined,
          query: spec.query ? spec.query.parse(req.query) : undefined,
          req,
          reply,
        } as Parsed<B, P, Q>;
        const out = await handler(parsed);
        if (spec.raw) return reply;
        if (spec.status === 204) return reply.code(204).send();
        // A handler may have chosen the status itself (a route with two outcomes).
        return reply.code(reply.statusCode !== 200 ? reply.statusCode : (spec.status ?? 200)).send(out);
      },
    });
  }

  openapi(version: string): Record<string, unknown> {
    const paths: Record<string, Record<string, unknown>> = {};
    const schema = (s: z.ZodType): unknown => z.toJSONSchema(s, { io: 'input', unrepresentable: 'any' });
    for (const r of this.list) {
      const oaPath = r.url.replace(/:([A-Za-z]+)/g, '{$1}');
      const params: unknown[] = [];
      const addParams = (s: z.ZodType | undefined, where: 'path' | 'query'): void => {
        const js = s ? (schema(s) as { properties?: Record<string, unknown>; required?: string[] }) : undefined;
        for (const [name, p] of Object.entries(js?.properties ?? {})) {
          params.push({ name, in: where, required: where === 'path' || (js?.required ?? []).includes(name), schema: p });
        }
      };
      addParams(r.spec.params, 'path');
      addParams(r.spec.query, 'query');
      const status = String(r.spec.status ?? 200);
      (paths[oaPath] ??= {})[r.method.toLowerCase()] = {
        summary: r.spec.summary,
        tags: [r.spec.tag],
        ...(params.length ? { parameters: params } : {}),
        ...(r.spec.body ? { requestBody: { required: true, content: { 'application/json': { schema: schema(r.spec.body) } } } } : {}),
        responses: {
          [status]: { description: status === '202' ? 'accepted: the job resource' : 'success' },
          default: { description: 'error', content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } } },
        },
        ...(r.url === '/v1/health' ? { security: [] } : {}),
      };
    }
    return {
      openapi: '3.1.0',
      info: { title: 'blockgate control API', version },
      security: [{ bearer: [] }],
      components: {
        securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
        schemas: {
          Error: {
            type: 'object',
            required: ['error'],
            properties: { error: { type: 'object', required: ['code', 'message'], properties: { code: { type: 'string' }, message: { type: 'string' }, details: {} } } },
          },
        },
      },
      paths,
    };
  }
}

/** Builds the control API (not listening): tests drive it with inject() or a real port. */
export function buildApi(m: StorageManager, opts: ApiOptions): FastifyInstance {
  const app = Fastify({
    ...(opts.logger ? { loggerInstance: opts.logger as FastifyBaseLogger } : { logger: false }),
    // Control operations log their own line (manager); per-request lines would double them.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 1024 * 1024,
    // Event streams never go idle: without this a shutdown would wait on every open one.
    forceCloseConnections: true,
  }) as unknown as FastifyInstance;
  app.setErrorHandler(errorHandler);
  // An empty body with a JSON content type is no body (curl -X DELETE -H 'content-type: …' is common).
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, text, done) => {
    if (text === '') return done(null, undefined);
    try {
      done(null, JSON.parse(text as string));
    } catch (e) {
      done(Object.assign(new Error(`body is not valid JSON: ${(e as Error).message}`), { statusCode: 400 }), undefined);
    }
  });
  app.setNotFoundHandler((req, reply) => sendError(reply, 404, 'NOT_FOUND', `no route ${req.method} ${req.url}`));

  app.addHook('onRequest', async (req, reply) => {
    if (req.url === '/v1/health') return;
    if (!tokenMatches(req.headers.authorization, opts.token)) {
      sendError(reply, 401, 'UNAUTHORIZED', 'a valid bearer token is required (Authorization: Bearer <token>)');
      return reply;
    }
  });

  const r = new Routes(app);
  const S = schemas;
  const job = (j: Record<string, unknown>): Record<string, unknown> => ({ job: j, location: `/v1/jobs/${String(j.id)}` });

  r.add('GET', '/v1/health', { summary: 'Liveness and health (no token needed): degraded, with the reasons, while an array has failed', tag: 'system' }, () => {
    const h = m.health.report();
    return { status: h.status, version: opts.version, appliance: m.applianceId, reasons: h.reasons, warnings: h.warnings };
  });
  r.add('GET', '/v1/openapi.json', { summary: 'This document', tag: 'system' }, () => r.openapi(opts.version));

  // ---- discovery and arrays
  r.add('GET', '/v1/discovery', { summary: 'The wiring map: arrays, capacity, free extents, volumes, listeners', tag: 'arrays' }, () => m.inventory.wiringMap());
  r.add('POST', '/v1/discovery', { summary: 'Scan the arrays directory for new array files, then report the wiring map', tag: 'arrays' }, () => m.inventory.discover());
  r.add('GET', '/v1/arrays', { summary: 'List arrays: state, virtual size and free space, bytes allocated on the file system, its free space', tag: 'arrays' }, async () => ({
    arrays: await Promise.all(m.listArrays().map((a) => m.describeArray(a))),
  }));
  r.add('GET', '/v1/arrays/:name', { summary: 'One array, with its state and capacity', tag: 'arrays', params: S.nameParam }, ({ params }) => m.describeArray(m.array(params.name)));
  r.add('POST', '/v1/arrays/:name/attach', { summary: 'Attach a failed array again after its file was repaired (409 while it still fails the checks)', tag: 'arrays', params: S.nameParam }, ({ params }) =>
    m.reattachArray(params.name),
  );
  r.add('POST', '/v1/arrays', { summary: 'Create an array file', tag: 'arrays', body: S.array, status: 201 }, async ({ body }) => {
    return m.describeArray(await m.createArray(body.name, body.size, body.qualityClass));
  });

  // ---- farms
  r.add('GET', '/v1/farms', { summary: 'List farms', tag: 'farms' }, () => ({ farms: m.listFarms().map((f) => ({ name: f.name, createdAt: f.created_at })) }));
  r.add('POST', '/v1/farms', { summary: 'Create a farm', tag: 'farms', body: S.farm, status: 201 }, ({ body }) => {
    m.createFarm(body.name);
    return { name: body.name };
  });

  // ---- volumes and the FIG. 7 lifecycle
  r.add('GET', '/v1/volumes', { summary: 'List volumes', tag: 'volumes' }, () => ({ volumes: m.listVolumes().map((v) => m.describeVolume(v)) }));
  r.add('GET', '/v1/volumes/:name', { summary: 'One volume, with its state and the operations allowed in it', tag: 'volumes', params: S.nameParam }, ({ params }) =>
    m.describeVolume(m.volume(params.name)),
  );
  r.add('POST', '/v1/volumes', { summary: 'Allocate a volume (free → allocated; with configure, → configured)', tag: 'volumes', body: S.volume, status: 201 }, ({ body }) =>
    m.describeVolume(m.createVolume(body)),
  );
  r.add('POST', '/v1/volumes/claim', { summary: 'Allocate from the predefined volumes (configured, no farm yet) by size and quality class', tag: 'volumes', body: S.claim, status: 201 }, ({ body }) =>
    m.describeVolume(m.claimVolume(body)),
  );
  r.add('DELETE', '/v1/volumes/:name', { summary: 'Forget a free volume', tag: 'volumes', params: S.nameParam, status: 204 }, ({ params }) => m.deleteVolume(params.name));
  const step = (url: string, summary: string, fn: (name: string) => unknown): void =>
    r.add('POST', `/v1/volumes/:name/${url}`, { summary, tag: 'volumes', params: S.nameParam }, ({ params }) => {
      fn(params.name);
      return m.describeVolume(m.volume(params.name));
    });
  step('configure', 'Configure / meta create (allocated → configured)', (n) => m.configure(n));
  step('meta', 'Meta create: same as configure (allocated → configured)', (n) => m.configure(n));
  step('break', 'Break the meta volume (→ unconfigured)', (n) => m.breakVolume(n));
  step('deallocate', 'De-allocate (unconfigured → free); refused until scrubbed', (n) => m.deallocate(n));
  r.add('POST', '/v1/volumes/:name/resize', { summary: 'Grow a volume', tag: 'volumes', params: S.nameParam, body: S.resize }, ({ params, body }) =>
    m.describeVolume(m.resize(params.name, body.size)),
  );
  r.add('POST', '/v1/volumes/:name/scrub', { summary: 'Scrub (overwrite and verify) as a job', tag: 'volumes', params: S.nameParam, body: S.scrub, status: 202 }, ({ params, body }) =>
    job(m.bulk.scrub(params.name, body)),
  );
  r.add('POST', '/v1/volumes/:name/copy', { summary: 'Copy one unbound volume onto unbound targets, as a job', tag: 'volumes', params: S.nameParam, body: S.copy, status: 202 }, ({ params, body }) =>
    job(m.bulk.copy(params.name, body.targets, body)),
  );
  r.add('POST', '/v1/volumes/:name/copy-image', { summary: 'Copy an image onto a configured volume, as a job', tag: 'volumes', params: S.nameParam, body: S.copyImage, status: 202 }, ({ params, body }) =>
    job(m.bulk.copyImage(params.name, body.image, body)),
  );
  r.add('POST', '/v1/volumes/:name/snap', { summary: 'Point-in-time copy of a mapped volume (copy-on-write), as a job', tag: 'volumes', params: S.nameParam, body: S.snap, status: 202 }, async ({ params, body }) => {
    const { job: j, snapshot } = await m.bulk.snap(params.name, body.snapshot);
    return { ...job(j), snapshot: m.describeVolume(snapshot) };
  });

  // ---- hosts
  r.add('GET', '/v1/hosts', { summary: 'List hosts', tag: 'hosts' }, () => ({ hosts: m.listHosts().map((h) => m.describeHost(h)) }));
  r.add('GET', '/v1/hosts/:name', { summary: 'One host', tag: 'hosts', params: S.nameParam }, ({ params }) => m.describeHost(m.host(params.name)));
  r.add('GET', '/v1/hosts/:name/namespace', { summary: "The host's live namespace", tag: 'hosts', params: S.nameParam }, ({ params }) => m.namespaceView(params.name));
  r.add('POST', '/v1/hosts', { summary: 'Create a host (its listener opens at once)', tag: 'hosts', body: S.host, status: 201 }, async ({ body }) => m.describeHost(await m.createHost(body)));
  r.add('POST', '/v1/hosts/:name/activate', { summary: 'Activate: allocate → configure → copy image → bind → map, rolled back on failure', tag: 'hosts', params: S.nameParam, body: S.activate, status: 202 }, ({ params, body }) =>
    job(m.bulk.activate({ ...body, host: params.name })),
  );

  // Host TLS identity for NBD (PSK key, require-TLS).
  r.add('PUT', '/v1/hosts/:name/tls', { summary: 'Require (or stop requiring) TLS for the host on TCP NBD listeners', tag: 'hosts', params: S.nameParam, body: S.hostTls }, ({ params, body }) =>
    m.describeHost(m.setHostRequireTls(params.name, body.requireTls)),
  );
  r.add('POST', '/v1/hosts/:name/tls/psk', { summary: "Set or generate the host's TLS pre-shared key (shown once, as a psk file line)", tag: 'hosts', params: S.nameParam, body: S.hostPsk, status: 201 }, async ({ params, body }) => {
    const k = await m.setHostPsk(params.name, body.key);
    return { ...k, pskFile: `${k.identity}:${k.key}\n` };
  });

  // ---- bindings
  r.add('GET', '/v1/bindings', { summary: 'List bindings', tag: 'bindings' }, () => ({ bindings: m.listBindings().map((b) => m.describeBinding(b)) }));
  r.add('GET', '/v1/bindings/:id', { summary: 'One binding', tag: 'bindings', params: S.idParam }, ({ params }) => m.describeBinding(m.binding(params.id)));
  r.add('POST', '/v1/bindings', { summary: 'Bind a volume to a host at target/lun (with map, also map it)', tag: 'bindings', body: S.binding, status: 201 }, ({ body }) =>
    m.describeBinding(m.bind(body)),
  );
  r.add('POST', '/v1/bindings/:id/map', { summary: 'Map (bound → mapped): the unit appears in the host namespace', tag: 'bindings', params: S.idParam }, ({ params }) =>
    m.describeBinding(m.map(params.id)),
  );
  r.add('POST', '/v1/bindings/:id/unmap', { summary: 'Unmap (mapped → unmapped): drain, flush, close sessions', tag: 'bindings', params: S.idParam }, async ({ params }) =>
    m.describeBinding(await m.unmap(params.id)),
  );
  r.add('DELETE', '/v1/bindings/:id', { summary: 'Unbind (unmapped → unbound)', tag: 'bindings', params: S.idParam, status: 204 }, ({ params }) => m.unbind(params.id));

  // ---- images
  r.add('GET', '/v1/images', { summary: 'List images', tag: 'images' }, () => ({
    images: m.bulk.listImages().map((i) => ({ name: i.name, path: i.path, size: i.size, createdAt: i.created_at })),
  }));
  r.add('POST', '/v1/images', { summary: 'Register an image file under the data directory (201), or make one from a volume (202, a job)', tag: 'images', body: S.image, status: 201 }, async ({ body, reply }) => {
    if (body.fromVolume !== undefined) {
      reply.code(202);
      return job(m.bulk.captureImage(body.name, body.fromVolume));
    }
    const i = await m.bulk.registerImage(body.name, body.path!);
    return { name: i.name, path: i.path, size: i.size, createdAt: i.created_at };
  });

  // ---- VMs
  r.add('GET', '/v1/vms', { summary: 'List VMs', tag: 'vms' }, () => ({ vms: m.inventory.listVms() }));
  r.add('GET', '/v1/vms/:name', { summary: 'One VM', tag: 'vms', params: S.nameParam }, ({ params }) => m.inventory.describeVm(m.inventory.vm(params.name)));
  r.add('POST', '/v1/vms', { summary: 'Create a VM on a host owning some of its bindings', tag: 'vms', body: S.vm, status: 201 }, ({ body }) => m.inventory.createVm(body));
  r.add('DELETE', '/v1/vms/:name', { summary: 'Delete a VM (its bindings stay)', tag: 'vms', params: S.nameParam, status: 204 }, ({ params }) => m.inventory.deleteVm(params.name));

  // ---- jobs
  r.add('GET', '/v1/jobs', { summary: 'List jobs, newest first', tag: 'jobs' }, () => ({ jobs: m.jobs.list().map((j) => m.jobs.describe(j)) }));
  r.add('GET', '/v1/jobs/:id', { summary: 'One job with progress', tag: 'jobs', params: S.idParam }, ({ params }) => m.jobs.describe(m.jobs.get(params.id)));
  r.add('POST', '/v1/jobs/:id/cancel', { summary: 'Cancel a queued or running job', tag: 'jobs', params: S.idParam }, async ({ params }) => m.jobs.describe(await m.jobs.cancel(params.id)));

  // ---- events
  r.add('GET', '/v1/events', { summary: 'Event log: JSON with ?since=ID, or a server-sent-events stream (Accept: text/event-stream)', tag: 'events', query: S.events, raw: true }, ({ query, req, reply }) => {
    if (query.stream || (req.headers.accept ?? '').includes('text/event-stream')) {
      const last = Number(req.headers['last-event-id']);
      serveEvents(m.events, req, reply, query.since ?? (Number.isFinite(last) ? last : undefined));
      return;
    }
    void reply.send({ events: m.events.since(query.since ?? 0, query.limit) });
  });

  // ---- saved configuration
  r.add('GET', '/v1/config', { summary: 'Export the whole control state as one JSON document (saveconfig)', tag: 'config' }, () => m.config.export());
  r.add('POST', '/v1/config', { summary: 'Import a saved control state into an empty appliance (restoreconfig)', tag: 'config', body: S.config, status: 201 }, ({ body }) =>
    m.config.import(body),
  );

  // ---- metrics: the same token as the API (Prometheus sends it with authorization.credentials_file)
  const registry = opts.metrics ? buildMetrics(opts.metrics) : null;
  r.add('GET', '/metrics', { summary: 'Prometheus text exposition: I/O by host and volume, latency histograms, cache, sessions, jobs', tag: 'system', raw: true }, async ({ reply }) => {
    if (!registry) return sendError(reply, 404, 'NOT_FOUND', 'metrics are not enabled');
    const text = await registry.metrics();
    void reply.code(200).header('content-type', registry.contentType).send(text);
  });

  // ---- trace and resolve
  r.add('GET', '/v1/trace/hosts/:host/units/:target/:lun', { summary: 'Host → unit → volume → extents → array files with byte offsets', tag: 'trace', params: S.unitParams, query: S.traceQuery }, ({ params, query }) =>
    m.tracer.unit(params.host, params.target, params.lun, query.offset, query.length),
  );
  r.add('GET', '/v1/trace/volumes/:name', { summary: 'Volume → units, VMs, extents and array files', tag: 'trace', params: S.nameParam, query: S.traceQuery }, ({ params, query }) =>
    m.tracer.volumeTrace(m.volume(params.name), query.offset, query.length),
  );
  r.add('GET', '/v1/resolve', { summary: 'Reverse lookup from serial, NAA, export (+host), VM, or array + offset', tag: 'trace', query: S.resolve }, ({ query }) => m.tracer.resolve(query));

  return app;
}
