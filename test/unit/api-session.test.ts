import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { buildApi } from '../../control-api/index.js';
import { SESSION_TTL_MS, SessionStore } from '../../control-api/session.js';
import { API_TOKEN, basicAppliance } from '../helpers/api-app.js';
import { startManager } from '../helpers/manager.js';

/** The console's log-in over the real control API (inject): cookies, CSRF, log-out, and the bearer API unchanged. */

const setCookies = (h: Record<string, unknown>): string[] => {
  const v = h['set-cookie'];
  return Array.isArray(v) ? (v as string[]) : v ? [String(v)] : [];
};
const cookieValue = (cookies: string[], name: string): string => cookies.find((c) => c.startsWith(`${name}=`))!.split(';')[0]!.slice(name.length + 1);

t.test('console files are public, its API calls need a session with a CSRF token', async (t) => {
  const { m, dataDir } = await startManager(t);
  const consoleDir = path.join(dataDir, 'console-files');
  fs.mkdirSync(path.join(consoleDir, 'sub'), { recursive: true });
  fs.writeFileSync(path.join(consoleDir, 'index.html'), '<!doctype html><title>c</title>');
  fs.writeFileSync(path.join(consoleDir, 'sub', 'app.js'), 'export {}');
  const app = buildApi(m, { token: API_TOKEN, logger: false, version: 'test', consoleDir });
  t.teardown(() => app.close());
  await app.ready();
  const bearer = { authorization: `Bearer ${API_TOKEN}` };
  await basicAppliance(async (method, url, body) => {
    const r = await app.inject({ method: method as 'POST', url, headers: { ...bearer, 'content-type': 'application/json' }, payload: JSON.stringify(body) });
    return { status: r.statusCode, body: r.json(), headers: r.headers };
  });

  const page = await app.inject({ method: 'GET', url: '/' });
  t.equal(page.statusCode, 200, 'the page needs no credential');
  t.match(String(page.headers['content-type']), /text\/html/);
  t.match(String(page.headers['content-security-policy']), /default-src 'self'/, 'served under a CSP');
  t.equal((await app.inject({ method: 'GET', url: '/sub/app.js' })).statusCode, 200, 'nor do its assets');
  t.equal((await app.inject({ method: 'GET', url: '/not-a-file' })).statusCode, 401, 'any other path still needs one');
  t.equal((await app.inject({ method: 'GET', url: '/v1/volumes' })).statusCode, 401, 'the API needs one');

  const wrong = await app.inject({ method: 'POST', url: '/v1/session', payload: { token: 'nope' } });
  t.equal(wrong.statusCode, 401, 'a wrong token is refused');
  t.equal(wrong.json().error.message, 'wrong API token');
  t.same(setCookies(wrong.headers), [], 'and no cookie given');

  const ok = await app.inject({ method: 'POST', url: '/v1/session', payload: { token: API_TOKEN } });
  t.equal(ok.statusCode, 201);
  const cookies = setCookies(ok.headers);
  const sessionCookie = cookies.find((c) => c.startsWith('blockgate_session='))!;
  t.match(sessionCookie, /HttpOnly/, 'session cookie is httpOnly');
  t.match(sessionCookie, /SameSite=Strict/, 'and SameSite=Strict');
  t.match(sessionCookie, /Path=\//);
  t.notMatch(cookies.find((c) => c.startsWith('blockgate_csrf='))!, /HttpOnly/, 'the CSRF cookie is readable by the page');
  t.notOk(cookies.join(';').includes(API_TOKEN), 'the token is in no cookie');
  const sid = cookieValue(cookies, 'blockgate_session');
  const csrf = cookieValue(cookies, 'blockgate_csrf');
  t.equal(ok.json().csrf, csrf);
  const cookie = `blockgate_session=${sid}; blockgate_csrf=${csrf}`;

  t.equal((await app.inject({ method: 'GET', url: '/v1/volumes', headers: { cookie } })).statusCode, 200, 'the session reads');
  const body = { name: 'v1', size: '1M', farm: 'f' };
  const noCsrf = await app.inject({ method: 'POST', url: '/v1/volumes', headers: { cookie }, payload: body });
  t.equal(noCsrf.statusCode, 401, 'a change without the CSRF header is refused');
  t.match(noCsrf.json().error.message, /CSRF/);
  t.equal((await app.inject({ method: 'POST', url: '/v1/volumes', headers: { cookie, 'x-csrf-token': csrf.slice(0, -1) + (csrf.endsWith('A') ? 'B' : 'A') }, payload: body })).statusCode, 401, 'a wrong CSRF token is refused');
  t.equal((await app.inject({ method: 'GET', url: '/v1/volumes/v1', headers: bearer })).statusCode, 404, 'nothing was created');
  t.equal((await app.inject({ method: 'POST', url: '/v1/volumes', headers: { cookie, 'x-csrf-token': csrf }, payload: body })).statusCode, 201, 'with it the change is made');
  t.equal((await app.inject({ method: 'GET', url: '/v1/volumes', headers: { cookie, authorization: 'Bearer wrong' } })).statusCode, 401, 'a wrong bearer token is not rescued by a cookie');
  t.equal((await app.inject({ method: 'GET', url: '/v1/volumes', headers: { cookie: `blockgate_session=${sid}x` } })).statusCode, 401, 'an unknown session id is refused');
  t.equal((await app.inject({ method: 'GET', url: '/v1/session', headers: { cookie } })).json().csrf, csrf, 'who-am-I answers the CSRF token');

  const out = await app.inject({ method: 'DELETE', url: '/v1/session', headers: { cookie, 'x-csrf-token': csrf } });
  t.equal(out.statusCode, 204);
  t.ok(
    setCookies(out.headers).every((c) => /Max-Age=0/.test(c)),
    'log-out clears both cookies',
  );
  t.equal((await app.inject({ method: 'GET', url: '/v1/volumes', headers: { cookie } })).statusCode, 401, 'the session is gone');
  t.equal((await app.inject({ method: 'GET', url: '/v1/volumes', headers: bearer })).statusCode, 200, 'the bearer API is unchanged');
});

t.test('sessions expire', async (t) => {
  let now = 1_000_000;
  const store = new SessionStore(() => now);
  const s = store.open();
  t.ok(store.get(s.id), 'valid at once');
  now += SESSION_TTL_MS - 1;
  t.ok(store.get(s.id), 'valid until its expiry');
  now += 1;
  t.equal(store.get(s.id), undefined, 'gone at its expiry');
  t.equal(store.size, 0, 'and forgotten');
  t.equal(store.get(undefined), undefined);
});

t.test('cache policy through PATCH /v1/volumes/:name', async (t) => {
  const { m } = await startManager(t);
  const app = buildApi(m, { token: API_TOKEN, logger: false, version: 'test' });
  t.teardown(() => app.close());
  const headers = { authorization: `Bearer ${API_TOKEN}`, 'content-type': 'application/json' };
  const post = (url: string, body: unknown) => app.inject({ method: 'POST', url, headers, payload: JSON.stringify(body) });
  await post('/v1/farms', { name: 'f' });
  await post('/v1/arrays', { name: 'a0', size: '64M' });
  t.equal((await post('/v1/volumes', { name: 'v', size: '1M', farm: 'f' })).statusCode, 201);
  const r = await app.inject({ method: 'PATCH', url: '/v1/volumes/v', headers, payload: JSON.stringify({ cachePolicy: 'write-through' }) });
  t.equal(r.statusCode, 200);
  t.equal(r.json().cachePolicy, 'write-through');
  const bad = await app.inject({ method: 'PATCH', url: '/v1/volumes/v', headers, payload: JSON.stringify({ cachePolicy: 'fast' }) });
  t.equal(bad.statusCode, 400, 'an unknown policy is refused');
  t.equal(m.describeVolume(m.volume('v')).cachePolicy, 'write-through', 'and changes nothing');
});

t.test('GET /v1/metrics/io without metric sources answers 404', async (t) => {
  const { m } = await startManager(t);
  const app = buildApi(m, { token: API_TOKEN, logger: false, version: 'test' });
  t.teardown(() => app.close());
  const r = await app.inject({ method: 'GET', url: '/v1/metrics/io', headers: { authorization: `Bearer ${API_TOKEN}` } });
  t.equal(r.statusCode, 404);
});
