import fastifySwagger from '@fastify/swagger';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import { jsonSchemaTransform, jsonSchemaTransformObject, serializerCompiler, validatorCompiler, type ZodTypeProvider } from 'fastify-type-provider-zod';
import type { Logger } from 'pino';
import type { StorageManager } from '../manager/index.js';
import { errorHandler, refusals, sendError } from './errors.js';
import type { MetricsSources } from './metrics.js';
import { RESOURCES } from './routes/index.js';
import { serveConsole } from './console.js';
import { refuseWithoutSession, secretMatches, SessionStore, sessionRoutes } from './session.js';

export interface ApiOptions {
  token: string;
  logger: Logger | false;
  version: string;
  /** Where /metrics reads from; without it /metrics answers 404. */
  metrics?: MetricsSources | undefined;
  /** Where the bundled web console is (default dist/console); without its index.html, no console. */
  consoleDir?: string | undefined;
}

/** Body limit of every route: a saved configuration is the largest document and stays far below it. */
export const BODY_LIMIT = 1024 * 1024;

/** Constant-time token check, so timing reveals nothing about the token. */
function tokenMatches(header: string, token: string): boolean {
  return header.startsWith('Bearer ') && secretMatches(header.slice(7), token);
}

/**
 * Builds the control API (not listening): tests drive it with inject() or a
 * real port. Each resource is one plugin under routes/ declaring its request
 * and response schemas in zod; fastify validates and serializes with them and
 * the OpenAPI document (GET /v1/openapi.json) is generated from them.
 */
export function buildApi(m: StorageManager, opts: ApiOptions): FastifyInstance {
  const app = Fastify({
    ...(opts.logger ? { loggerInstance: opts.logger as FastifyBaseLogger } : { logger: false }),
    // Control operations log their own line (manager); per-request lines would double them.
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: BODY_LIMIT,
    // Event streams never go idle: without this a shutdown would wait on every open one.
    forceCloseConnections: true,
  }).withTypeProvider<ZodTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
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
  app.setNotFoundHandler((req, reply) => sendError(reply, 'NOT_FOUND', `no route ${req.method} ${req.url}`));

  // The console's own files are public (they hold no data); its API calls carry the session cookie instead of the token.
  const consoleFiles = serveConsole(app as unknown as FastifyInstance, opts.consoleDir);
  const sessions = new SessionStore();
  app.addHook('onRequest', async (req, reply) => {
    if (req.url === '/v1/health') return;
    if ((req.method === 'GET' || req.method === 'HEAD') && consoleFiles.has(req.url)) return;
    if (req.method === 'POST' && req.url === '/v1/session') return;
    // A request that names a token is judged by it alone; only one that names none may use a console session.
    const auth = req.headers.authorization;
    if (auth !== undefined) {
      if (tokenMatches(auth, opts.token)) return;
      sendError(reply, 'UNAUTHORIZED', 'a valid bearer token is required (Authorization: Bearer <token>)');
      return reply;
    }
    if (refuseWithoutSession(sessions, req, reply)) return reply;
  });
  // Audit: every refused or unauthorized control request leaves one line (who, what, why); never the token.
  const audit = opts.logger;
  if (audit) {
    app.addHook('onResponse', async (req, reply) => {
      if (reply.statusCode < 400 || reply.statusCode >= 500) return;
      const r = refusals.get(reply);
      audit.warn(
        { audit: reply.statusCode === 401 ? 'unauthorized' : 'refused', method: req.method, url: req.url, status: reply.statusCode, code: r?.code, remote: req.ip, reason: r?.message },
        reply.statusCode === 401 ? `control request unauthorized: ${req.method} ${req.url}` : `control request refused: ${req.method} ${req.url} ${reply.statusCode} ${r?.code ?? ''}`,
      );
    });
  }
  // A change the API acknowledged is in the saved configuration (DATA/blockgate.config.json) before the reply.
  app.addHook('onSend', async (req, _reply, payload) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') await m.config.save();
    return payload;
  });
  // A route whose body has only optional fields takes no body as an empty one (POST …/scrub with no body).
  app.addHook('preValidation', async (req) => {
    if (req.body === undefined && req.routeOptions.schema?.body) req.body = {};
  });

  void app.register(fastifySwagger, {
    openapi: {
      openapi: '3.1.0',
      info: { title: 'blockgate control API', version: opts.version },
      security: [{ bearer: [] }],
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    },
    transform: jsonSchemaTransform,
    transformObject: jsonSchemaTransformObject,
  });
  for (const plugin of [...RESOURCES, sessionRoutes(sessions, opts.token)]) void app.register(plugin, { manager: m, version: opts.version, metrics: opts.metrics });
  return app as unknown as FastifyInstance;
}
