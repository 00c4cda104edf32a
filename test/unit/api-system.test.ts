import t from 'tap';
import { API_ERRORS } from '../../control-api/errors.js';
import { API_TOKEN, startApi } from '../helpers/api-app.js';

t.test('health needs no token; everything else does', async (t) => {
  const { app, call } = await startApi(t);
  const h = await app.inject({ method: 'GET', url: '/v1/health' });
  t.equal(h.statusCode, 200);
  t.match(JSON.parse(h.body), { status: 'ok', version: 'test', appliance: /^[0-9a-f]{7}$/ });
  for (const auth of [undefined, 'Bearer wrong', `Basic ${API_TOKEN}`, `Bearer ${API_TOKEN}x`]) {
    const r = await app.inject({ method: 'GET', url: '/v1/volumes', headers: auth ? { authorization: auth } : {} });
    t.equal(r.statusCode, 401, `${auth}`);
    t.equal(JSON.parse(r.body).error.code, 'UNAUTHORIZED');
  }
  t.equal((await call('GET', '/v1/volumes')).status, 200);
});

t.test('transport errors carry their own stable codes', async (t) => {
  const { call } = await startApi(t);
  let r = await call('GET', '/v1/nope');
  t.equal(r.status, 404);
  t.equal(r.body.error.code, 'NOT_FOUND');

  // Over the 1 MiB body limit: 413 with its own code, not BAD_REQUEST.
  r = await call('POST', '/v1/farms', JSON.stringify({ name: 'x'.repeat(2 * 1024 * 1024) }));
  t.equal(r.status, 413);
  t.equal(r.body.error.code, 'PAYLOAD_TOO_LARGE');

  r = await call('POST', '/v1/farms', 'name=f', { 'content-type': 'application/x-www-form-urlencoded' });
  t.equal(r.status, 415);
  t.equal(r.body.error.code, 'UNSUPPORTED_MEDIA_TYPE');

  r = await call('POST', '/v1/farms', '{"name":');
  t.equal(r.status, 400);
  t.equal(r.body.error.code, 'BAD_REQUEST');
  t.match(r.body.error.message, /not valid JSON/);

  // Validation names the field; unknown fields and unknown query parameters are refused, never ignored.
  r = await call('POST', '/v1/farms', { name: 'f', colour: 'red' });
  t.equal(r.status, 400);
  t.match(r.body.error.message, /colour/);
  r = await call('POST', '/v1/farms', { name: '' });
  t.equal(r.status, 400);
  t.match(r.body.error.message, /^name: /);
  r = await call('GET', '/v1/volumes?farm=f');
  t.equal(r.status, 400);
  t.match(r.body.error.message, /farm/);

  // Every error reply uses a documented code with its documented status.
  for (const [code, { status }] of Object.entries(API_ERRORS)) t.ok(status >= 400 && status < 600, code);
});

t.test('the OpenAPI document is generated from the route schemas, requests and replies', async (t) => {
  const { call } = await startApi(t);
  const r = await call('GET', '/v1/openapi.json');
  t.equal(r.status, 200);
  const doc = r.body;
  t.equal(doc.openapi, '3.1.0');
  const expected: Record<string, string[]> = {
    '/v1/health': ['get'],
    '/v1/discovery': ['get', 'post'],
    '/v1/arrays': ['get', 'post'],
    '/v1/farms': ['get', 'post'],
    '/v1/volumes': ['get', 'post'],
    '/v1/volumes/claim': ['post'],
    '/v1/volumes/{name}': ['get', 'delete'],
    '/v1/volumes/{name}/scrub': ['post'],
    '/v1/volumes/{name}/snap': ['post'],
    '/v1/hosts': ['get', 'post'],
    '/v1/hosts/{name}/namespace': ['get'],
    '/v1/hosts/{name}/tls': ['put'],
    '/v1/bindings': ['get', 'post'],
    '/v1/bindings/{id}': ['get', 'delete'],
    '/v1/bindings/{id}/map': ['post'],
    '/v1/images': ['get', 'post'],
    '/v1/vms': ['get', 'post'],
    '/v1/jobs': ['get'],
    '/v1/jobs/{id}/cancel': ['post'],
    '/v1/events': ['get'],
    '/v1/trace/hosts/{host}/units/{target}/{lun}': ['get'],
    '/v1/resolve': ['get'],
    '/v1/config': ['get', 'post'],
    '/metrics': ['get'],
  };
  for (const [p, methods] of Object.entries(expected)) for (const mth of methods) t.ok(doc.paths[p]?.[mth], `${mth.toUpperCase()} ${p}`);
  // Request schemas …
  const bind = doc.paths['/v1/bindings'].post;
  t.ok(bind.requestBody.content['application/json'].schema.properties.target, 'request body schema');
  const q = doc.paths['/v1/bindings'].get.parameters.map((p: { name: string; in: string }) => `${p.in}:${p.name}`);
  t.same(q.sort(), ['query:after', 'query:host', 'query:limit', 'query:volume'], 'the bindings filters and page parameters are documented');
  const jobStates = doc.paths['/v1/jobs'].get.parameters.find((p: { name: string }) => p.name === 'state');
  t.same(jobStates.schema.enum, ['queued', 'running', 'succeeded', 'failed', 'cancelled']);
  // … reply schemas, the error body with every code, and the health route's opt-out of the token.
  const ok = bind.responses['201'].content['application/json'].schema;
  const body = ok.$ref ? doc.components.schemas[ok.$ref.split('/').pop()] : ok;
  t.ok(body.properties.mapped, 'reply schema of POST /v1/bindings');
  const err = bind.responses['4XX'] ?? bind.responses['4xx'];
  t.ok(err, 'error replies documented');
  const errSchema = doc.components.schemas.Error;
  t.same(errSchema.properties.error.properties.code.enum.sort(), Object.keys(API_ERRORS).sort());
  t.same(doc.paths['/v1/health'].get.security, []);
  t.ok(doc.components.schemas.ConfigDocument ?? doc.components.schemas.ConfigDocumentInput, 'the saved configuration schema is a component');

  // Every route declares its success reply (a schema, or 204 with no body) and its errors; only the
  // document itself and the Prometheus text are sent as they are.
  const raw = new Set(['GET /v1/openapi.json', 'GET /metrics']);
  for (const [p, ops] of Object.entries(doc.paths as Record<string, Record<string, { responses: Record<string, any> }>>)) {
    for (const [mth, op] of Object.entries(ops)) {
      const id = `${mth.toUpperCase()} ${p}`;
      if (raw.has(id)) continue;
      const codes = Object.keys(op.responses);
      const ok = codes.filter((c) => /^2\d\d$/.test(c));
      t.ok(ok.length > 0 && ok.every((c) => c === '204' || op.responses[c].content?.['application/json']?.schema), `${id} declares its reply schema`);
      t.ok(codes.includes('4XX') || codes.includes('4xx'), `${id} declares its error reply`);
    }
  }
});

t.test('/metrics answers 404 when the process gave no sources', async (t) => {
  const { call } = await startApi(t);
  const r = await call('GET', '/metrics');
  t.equal(r.status, 404);
  t.equal(r.body.error.code, 'NOT_FOUND');
});
