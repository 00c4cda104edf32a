import Database from 'better-sqlite3';
import t, { type Test } from 'tap';
import { EXIT } from '../../bin/cli/client.js';
import { API_TOKEN, basicAppliance, startApi, type ApiReply } from '../helpers/api-app.js';
import { cli } from '../helpers/cli.js';

type Call = (method: string, url: string, body?: unknown) => Promise<ApiReply>;

/** Follows x-next-after from the first page to the last; every page is checked against its Link. */
async function allPages(t: Test, call: Call, url: string, key: string, limit: number): Promise<{ rows: any[]; pages: number }> {
  const rows: any[] = [];
  let pages = 0;
  let next: string | undefined = `${url}${url.includes('?') ? '&' : '?'}limit=${limit}`;
  while (next !== undefined) {
    const r = await call('GET', next);
    t.equal(r.status, 200, next);
    pages++;
    const page = r.body[key] as any[];
    t.ok(page.length <= limit, `a page holds at most ${limit}`);
    rows.push(...page);
    const after = r.headers['x-next-after'] as string | undefined;
    if (after === undefined) {
      t.notOk(r.headers.link, 'the last page has no Link');
      break;
    }
    t.equal(page.length, limit, 'a page before the last is full');
    const link = /^<([^>]+)>; rel="next"$/.exec(String(r.headers.link));
    t.ok(link, 'Link names the next page');
    next = link![1]!;
    t.equal(new URL(next, 'http://x').searchParams.get('after'), after, 'Link and x-next-after agree');
    if (pages > 100) throw new Error('pages never end');
  }
  return { rows, pages };
}

t.test('pages of volumes, hosts and bindings cover every row exactly once, in key order', async (t) => {
  const { call } = await startApi(t);
  await basicAppliance(call);
  t.equal((await call('POST', '/v1/arrays', { name: 'a1', size: '64M' })).status, 201);
  // Created out of name order: the list is by name, not by creation.
  const names = Array.from({ length: 23 }, (_, i) => `v${String((i * 7) % 23).padStart(2, '0')}`);
  for (const n of names) t.equal((await call('POST', '/v1/volumes', { name: n, size: '1M', farm: 'f' })).status, 201);
  for (const h of ['h3', 'h1', 'h2']) t.equal((await call('POST', '/v1/hosts', { name: h, farm: 'f' })).status, 201);
  for (let i = 0; i < 9; i++) t.equal((await call('POST', '/v1/bindings', { volume: names[i], host: i % 2 ? 'h1' : 'h', target: 0, lun: i, map: i % 3 === 0 })).status, 201);

  const whole = (await call('GET', '/v1/volumes')).body.volumes as { name: string }[];
  t.same(
    whole.map((v) => v.name),
    [...names].sort(),
    'without limit: every volume, by name',
  );
  for (const limit of [1, 5, 23, 1000]) {
    const { rows, pages } = await allPages(t, call, '/v1/volumes', 'volumes', limit);
    t.same(rows, whole, `limit ${limit}: the pages joined are the whole list`);
    t.equal(pages, Math.max(1, Math.ceil(23 / limit)), `limit ${limit}: no empty last page`);
  }
  for (const v of whole.slice(0, 3)) t.same((await call('GET', `/v1/volumes/${v.name}`)).body, v, 'a volume alone is what the list shows');

  const hosts = (await call('GET', '/v1/hosts')).body.hosts as { name: string; units: number }[];
  t.same(hosts.map((h) => h.name), ['h', 'h1', 'h2', 'h3']);
  t.same(hosts.map((h) => h.units), [2, 1, 0, 0], 'mapped units counted per host');
  t.same((await allPages(t, call, '/v1/hosts', 'hosts', 3)).rows, hosts);

  const bindings = (await call('GET', '/v1/bindings')).body.bindings as { id: number; host: string }[];
  t.equal(bindings.length, 9);
  t.same((await allPages(t, call, '/v1/bindings', 'bindings', 2)).rows, bindings);
  const ofH1 = await allPages(t, call, '/v1/bindings?host=h1', 'bindings', 2);
  t.same(ofH1.rows, bindings.filter((b) => b.host === 'h1'), 'the host filter holds on every page');
  t.equal(ofH1.pages, 2);
  t.same((await call('GET', `/v1/bindings?after=${bindings[8]!.id}`)).body.bindings, [], 'after the last id: nothing');
  t.same((await call('GET', '/v1/volumes?after=zzz')).body.volumes, [], 'after the last name: nothing');
});

t.test('a snapshot on a page of its own still names its origin', async (t) => {
  const { call } = await startApi(t);
  await basicAppliance(call);
  t.equal((await call('POST', '/v1/volumes', { name: 'o', size: '4M', farm: 'f' })).status, 201);
  t.equal((await call('POST', '/v1/bindings', { volume: 'o', host: 'h', target: 0, lun: 0 })).status, 201);
  t.equal((await call('POST', '/v1/volumes/o/snap', { snapshot: 's' })).status, 202);
  const r = await call('GET', '/v1/volumes?after=o&limit=1');
  t.match(r.body.volumes, [{ name: 's', snapshotOf: 'o', copyOnWrite: { origin: 'o' } }]);
  t.same(r.body.volumes[0], (await call('GET', '/v1/volumes/s')).body);
});

t.test('bad page parameters are 400 with a clear message', async (t) => {
  const { call } = await startApi(t);
  await basicAppliance(call);
  for (const url of [
    '/v1/volumes?limit=0',
    '/v1/volumes?limit=1001',
    '/v1/volumes?limit=abc',
    '/v1/volumes?limit=2.5',
    '/v1/volumes?limit=-1',
    '/v1/volumes?after=',
    `/v1/volumes?after=${'x'.repeat(64)}`,
    '/v1/volumes?page=2',
    '/v1/hosts?limit=0',
    '/v1/hosts?after=',
    '/v1/bindings?limit=1001',
    '/v1/bindings?after=x',
    '/v1/bindings?after=-1',
  ]) {
    const r = await call('GET', url);
    t.equal(r.status, 400, url);
    t.equal(r.body.error?.code, 'BAD_REQUEST', url);
  }
  t.equal((await call('GET', '/v1/volumes?limit=1000')).status, 200);
  t.equal((await call('GET', '/v1/volumes?limit=1')).status, 200);
});

/**
 * The regression guard for lists that cost a query per row: counts every
 * SQL statement run (and prepared) while a list is answered.
 */
t.test('a list runs the same number of SQL statements for 10 volumes as for 200', async (t) => {
  const { call, m } = await startApi(t);
  await basicAppliance(call);
  t.equal((await call('POST', '/v1/arrays', { name: 'big', size: '512M' })).status, 201);
  let counting = false;
  let runs = 0;
  let prepares = 0;
  const proto = Object.getPrototypeOf(m.db.prepare('SELECT 1')) as Record<string, (...a: unknown[]) => unknown>;
  const dbProto = Database.prototype as unknown as Record<string, (...a: unknown[]) => unknown>;
  const originals: [Record<string, (...a: unknown[]) => unknown>, string, (...a: unknown[]) => unknown][] = [];
  const wrap = (target: Record<string, (...a: unknown[]) => unknown>, k: string, count: () => void): void => {
    const orig = target[k]!;
    originals.push([target, k, orig]);
    target[k] = function (this: unknown, ...a: unknown[]) {
      if (counting) count();
      return orig.apply(this, a);
    };
  };
  for (const k of ['run', 'get', 'all', 'iterate']) wrap(proto, k, () => runs++);
  for (const k of ['exec', 'pragma']) wrap(dbProto, k, () => runs++);
  wrap(dbProto, 'prepare', () => prepares++);
  t.teardown(() => {
    for (const [target, k, orig] of originals) target[k] = orig;
  });
  const measure = async (url: string): Promise<{ runs: number; prepares: number; rows: number }> => {
    await call('GET', url); // warm: anything prepared once is prepared
    runs = prepares = 0;
    counting = true;
    const r = await call('GET', url);
    counting = false;
    t.equal(r.status, 200);
    return { runs, prepares, rows: (Object.values(r.body)[0] as unknown[]).length };
  };
  const grow = async (to: number): Promise<void> => {
    for (let i = m.listVolumes().length; i < to; i++) {
      const name = `v${String(i).padStart(3, '0')}`;
      m.createVolume({ name, size: 1024 * 1024, farm: 'f', configure: true });
      // Every tenth volume bound (mapped every other time): bindings and host units grow too.
      if (i % 10 === 0) m.bind({ volume: name, host: 'h', target: 0, lun: i, map: i % 20 === 0 });
      if (i % 20 === 0) await m.createHost({ name: `g${i}`, farm: 'f' });
    }
  };
  await grow(10);
  const small = { volumes: await measure('/v1/volumes'), hosts: await measure('/v1/hosts'), bindings: await measure('/v1/bindings') };
  await grow(200);
  const large = { volumes: await measure('/v1/volumes'), hosts: await measure('/v1/hosts'), bindings: await measure('/v1/bindings') };
  t.equal(small.volumes.rows, 10);
  t.equal(large.volumes.rows, 200);
  t.equal(large.bindings.rows, 20);
  t.equal(large.hosts.rows, 11);
  for (const k of ['volumes', 'hosts', 'bindings'] as const) {
    t.ok(small[k].runs > 0, `${k}: the counter sees the list's statements (${small[k].runs})`);
    t.equal(large[k].runs, small[k].runs, `${k}: statements run do not grow with the rows`);
    t.equal(large[k].prepares, 0, `${k}: nothing prepared per request`);
  }
  t.ok(small.volumes.runs <= 10, `GET /v1/volumes runs a handful of statements (${small.volumes.runs})`);
});

t.test('the CLI pages with --limit/--after and says where the next page starts', async (t) => {
  const { app, call } = await startApi(t);
  await basicAppliance(call);
  for (const n of ['c', 'a', 'e', 'b', 'd']) t.equal((await call('POST', '/v1/volumes', { name: n, size: '1M', farm: 'f' })).status, 201);
  const api = await app.listen({ host: '127.0.0.1', port: 0 });
  const env = { BLOCKGATE_API: api, BLOCKGATE_API_TOKEN: API_TOKEN };
  const seen: string[] = [];
  let after: string | undefined;
  for (let i = 0; i < 10; i++) {
    const r = await cli(null, ['volume', 'list', '--json', '--limit', '2', ...(after ? ['--after', after] : [])], env);
    t.equal(r.code, 0, r.stderr);
    seen.push(...(r.json.volumes as { name: string }[]).map((v) => v.name));
    after = /more: --limit 2 --after (\S+)/.exec(r.stderr)?.[1];
    if (after === undefined) break;
  }
  t.same(seen, ['a', 'b', 'c', 'd', 'e'], 'three pages, every volume once');
  const bad = await cli(null, ['volume', 'list', '--limit', '0'], env);
  t.equal(bad.code, EXIT.USAGE, 'a bad limit is a usage error');
  t.match(bad.stderr, /limit/);
  const none = await cli(null, ['binding', 'list', '--host', 'ghost'], env);
  t.equal(none.code, EXIT.NOT_FOUND, 'the host filter is checked by the server');
});
