import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { waitJob } from '../helpers/api.js';
import { cliOk } from '../helpers/cli.js';
import { TOKEN, TestServer, startServer } from '../helpers/server.js';
import { SseCollector } from '../helpers/sse.js';
import { requireTools, run, runOk } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

requireTools('nbdinfo', 'dot');

/** farm f; arrays a0, a1; host h1 with v0 (a0) at 0/0 and v1 (a0 + a1) at 0/1, both owned by vm1; v2 (a1) unbound. */
async function buildFarm(s: TestServer): Promise<{ b0: number; b1: number }> {
  await s.call('POST', '/v1/farms', { name: 'f' });
  await s.call('POST', '/v1/arrays', { name: 'a0', size: '64M' });
  await s.call('POST', '/v1/arrays', { name: 'a1', size: '64M' });
  await s.call('POST', '/v1/hosts', { name: 'h1', farm: 'f' });
  await s.call('POST', '/v1/volumes', { name: 'v0', size: '8M', farm: 'f', layout: [{ array: 'a0', size: '8M' }] });
  await s.call('POST', '/v1/volumes', { name: 'v1', size: '16M', farm: 'f', layout: [{ array: 'a0', size: '8M' }, { array: 'a1', size: '8M' }] });
  await s.call('POST', '/v1/volumes', { name: 'v2', size: '8M', farm: 'f', layout: [{ array: 'a1', size: '8M' }] });
  const b0 = (await s.call('POST', '/v1/bindings', { volume: 'v0', host: 'h1', target: 0, lun: 0 })).id as number;
  const b1 = (await s.call('POST', '/v1/bindings', { volume: 'v1', host: 'h1', target: 0, lun: 1 })).id as number;
  await s.call('POST', '/v1/vms', { name: 'vm1', host: 'h1', bindings: [b0, b1] });
  return { b0, b1 };
}

/** The classes a stream of notices gave one object, in order. */
function classesOf(notices: any[], kind: string, name: string): string[] {
  return notices.flatMap((n) => n.objects.filter((o: any) => o.kind === kind && o.name === name).flatMap((o: any) => o.classes));
}

const hostEvents = async (s: TestServer, host: string): Promise<string[]> =>
  ((await s.call('GET', '/v1/events?since=0')).events as any[]).filter((e) => e.subject === `host/${host}` && /^host\.(online|offline)$/.test(e.type)).map((e) => e.type);

/** Opens a raw connection to a host's own NBD socket (a session as soon as it is accepted). */
function openSession(socket: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const c = net.connect(socket, () => resolve(c));
    c.once('error', reject);
    c.setTimeout(60_000, () => c.destroy());
  });
}

t.test('merged change notices: classified, one per window, host online/offline, SSE raw and merged', async (t) => {
  const s = await startServer(t, { demo: false });
  t.same(await s.call('GET', '/v1/events/merge-window'), { windowMs: 2000 }, 'default window is 2 s');
  t.equal((await s.request('PUT', '/v1/events/merge-window', { windowMs: -1 })).status, 400);
  const merged = await SseCollector.open(`${s.api}/v1/events?stream=1&merged=1`, TOKEN);
  const raw = await SseCollector.open(`${s.api}/v1/events?stream=1`, TOKEN);
  t.teardown(() => Promise.all([merged.close(), raw.close()]));

  await buildFarm(s);
  const notices = (): any[] => merged.seen.map((e) => e.data);
  await waitFor('vm1 added', async () => (classesOf(notices(), 'vm', 'vm1').includes('vm.added') ? true : undefined), 120_000);
  for (const e of merged.seen) t.equal(e.event, 'changed', 'merged stream carries changed notices only');
  const all = notices();
  const merges = all.reduce((n, x) => n + x.events.count, 0);
  t.ok(all.length < merges, `${merges} classified events arrived as ${all.length} notices`);
  for (const n of all) {
    const keys = n.objects.map((o: any) => `${o.kind}/${o.name}`);
    t.equal(new Set(keys).size, keys.length, `notice ${n.id} names each object once`);
    t.equal(n.id, n.events.last, 'a notice is named by its last event');
  }
  t.ok(classesOf(all, 'host', 'h1').includes('host.added'));
  t.same(classesOf(all, 'array', 'a0').slice(0, 1), ['array.added']);
  t.ok(classesOf(all, 'volume', 'v0').includes('volume.added'));
  t.ok(classesOf(all, 'volume', 'v0').includes('volume.modified'), 'binding v0 changed its state');
  const withVm = all.find((n) => n.objects.some((o: any) => o.kind === 'vm'));
  t.same(withVm.objects.find((o: any) => o.kind === 'vm'), { kind: 'vm', name: 'vm1', classes: ['vm.added'], href: '/v1/vms/vm1' });
  // Details on request: the href and the raw events of the window.
  t.equal((await s.call('GET', withVm.objects.find((o: any) => o.kind === 'vm').href)).name, 'vm1');
  const replay = (await s.call('GET', `/v1/events?since=${withVm.events.first - 1}&limit=${withVm.events.last - withVm.events.first + 1}`)).events;
  t.ok(replay.some((e: any) => e.type === 'vm.created'), 'the window replays from the event log');
  t.ok(raw.seen.some((e) => e.event === 'vm.created'), 'the raw stream still carries every event');
  t.same((await s.call('GET', '/v1/events/notices?since=0')).notices.map((n: any) => n.id), all.map((n) => n.id), 'recent notices are listed');

  // Host online on its first session, offline when its last one ends, not on the sessions between.
  const c1 = await openSession(s.socket('h1'));
  await waitFor('h1 online', async () => ((await hostEvents(s, 'h1')).length === 1 ? true : undefined));
  const c2 = await openSession(s.socket('h1'));
  await runOk('nbdinfo', [s.unixUri('h1', '0/0')]);
  c1.destroy();
  await waitFor('one h1 session left', async () => (/blockgate_sessions\{host="h1",protocol="nbd"\} 1\n/.test((await s.call('GET', '/metrics')) as string) ? true : undefined));
  t.same(await hostEvents(s, 'h1'), ['host.online'], 'no offline while a session is open');
  c2.destroy();
  await waitFor('h1 offline', async () => ((await hostEvents(s, 'h1')).length === 2 ? true : undefined));
  t.same(await hostEvents(s, 'h1'), ['host.online', 'host.offline']);
  await waitFor('h1 online/offline notice', async () => {
    const cls = classesOf(notices(), 'host', 'h1');
    return cls.includes('host.online') && cls.includes('host.offline') ? true : undefined;
  });
  const cls = classesOf(notices(), 'host', 'h1');
  t.ok(cls.indexOf('host.online') < cls.indexOf('host.offline'), 'online before offline');

  // A VM's disk changing is the VM modified; a binding gone still names the VM that owned it.
  const before = merged.seen.length;
  const v0binding = (await s.call('GET', '/v1/vms/vm1')).bindings[0].id;
  await s.call('POST', `/v1/bindings/${v0binding}/unmap`);
  await s.call('DELETE', '/v1/vms/vm1');
  await waitFor('vm1 removed', async () => (classesOf(notices().slice(before), 'vm', 'vm1').includes('vm.removed') ? true : undefined), 60_000);
  const later = classesOf(notices().slice(before), 'vm', 'vm1');
  t.ok(later.includes('vm.modified'), 'unmapping a VM disk modifies the VM');
  t.equal(later.at(-1), 'vm.removed');
});

/** An HTTP receiver that fails while `failing` > 0 (counting down), and keeps every request. */
function receiver(): Promise<{ url: string; got: { headers: http.IncomingHttpHeaders; body: string; status: number }[]; failing: { n: number }; close: () => Promise<void> }> {
  const got: { headers: http.IncomingHttpHeaders; body: string; status: number }[] = [];
  const failing = { n: 0 };
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      const never = req.url === '/never';
      const fail = never || failing.n > 0;
      if (!never && failing.n > 0) failing.n--;
      const status = fail ? 503 : 204;
      got.push({ headers: req.headers, body, status });
      res.writeHead(status).end();
    });
  });
  return new Promise((resolve) => {
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as net.AddressInfo;
      resolve({ url: `http://127.0.0.1:${port}`, got, failing, close: () => new Promise((r) => srv.close(() => r())) });
    });
  });
}

/** The receiver's side of the contract (docs/services.md): recompute the HMAC over "<t>.<body>" and compare in constant time. */
function verify(secret: string, header: string | undefined, body: string): boolean {
  const m = /^t=(\d+),v1=([0-9a-f]{64})$/.exec(header ?? '');
  if (!m) return false;
  const want = crypto.createHmac('sha256', secret).update(`${m[1]}.${body}`).digest();
  return crypto.timingSafeEqual(want, Buffer.from(m[2]!, 'hex'));
}

t.test('webhooks: signed merged notices, retries with backoff, dead letters, the queue survives a restart', async (t) => {
  const rx = await receiver();
  t.teardown(rx.close);
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-services-'));
  t.teardown(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  let s = await startServer(t, { demo: false, dataDir });

  // Hostile input gets a 4xx and creates nothing.
  for (const [body, code] of [
    [{ name: 'x', url: 'ftp://127.0.0.1/' }, 400],
    [{ name: 'x', url: 'not a url' }, 400],
    [{ name: 'x', url: 'http://u:p@127.0.0.1/' }, 400],
    [{ name: 'x', url: rx.url, secret: 'short' }, 400],
    [{ name: 'x', url: rx.url, classes: ['vm.exploded'] }, 400],
    [{ name: 'bad name!', url: rx.url }, 400],
  ] as const) {
    t.equal((await s.request('POST', '/v1/webhooks', body)).status, code, JSON.stringify(body));
  }
  t.same((await s.call('GET', '/v1/webhooks')).webhooks, []);

  const hook = await s.call('POST', '/v1/webhooks', { name: 'hook', url: `${rx.url}/in`, backoffMs: 100, maxAttempts: 10 });
  t.type(hook.secret, 'string');
  t.ok(hook.secret.length >= 32, 'the appliance made a strong secret');
  t.equal((await s.request('POST', '/v1/webhooks', { name: 'hook', url: rx.url })).status, 409);
  t.notOk('secret' in (await s.call('GET', '/v1/webhooks/hook')), 'the secret is never shown again');
  t.notOk(JSON.stringify(await s.call('GET', '/v1/webhooks')).includes(hook.secret));
  const secretFiles = fs.readdirSync(path.join(dataDir, 'webhooks'));
  t.equal(secretFiles.length, 1);
  t.equal(fs.statSync(path.join(dataDir, 'webhooks', secretFiles[0]!)).mode & 0o777, 0o600, 'secret file is 0600');
  t.equal(fs.statSync(path.join(dataDir, 'webhooks')).mode & 0o777, 0o700);
  await s.call('POST', '/v1/webhooks', { name: 'dead', url: `${rx.url}/never`, secret: 'another-secret-0123456789', classes: ['vm.added'], backoffMs: 10, maxAttempts: 2 });

  // The first two deliveries fail; the third lands, signed, with the merged contents.
  rx.failing.n = 2;
  await buildFarm(s);
  const good = async (): Promise<any[]> => rx.got.filter((g) => g.status === 204 && g.headers['blockgate-delivery'] !== undefined);
  const vmAdded = await waitFor(
    'a delivered notice with vm1',
    async () => (await good()).map((g) => ({ ...g, notice: JSON.parse(g.body) })).find((g) => g.notice.objects.some((o: any) => o.name === 'vm1')),
    120_000,
  );
  t.ok(rx.got.filter((g) => g.status === 503 && g.body.includes('"webhook":"hook"')).length >= 2, 'the first attempts failed');
  for (const g of await good()) t.ok(verify(hook.secret, g.headers['blockgate-signature'] as string, g.body), `delivery ${String(g.headers['blockgate-delivery'])} verifies`);
  t.notOk(verify('the-wrong-secret-0000000000', vmAdded.headers['blockgate-signature'] as string, vmAdded.body), 'a wrong secret does not verify');
  t.notOk(verify(hook.secret, vmAdded.headers['blockgate-signature'] as string, vmAdded.body.replace('vm1', 'vm2')), 'a changed body does not verify');
  t.equal(vmAdded.notice.type, 'changed');
  t.equal(vmAdded.notice.webhook, 'hook');
  t.same(vmAdded.notice.objects.find((o: any) => o.name === 'vm1').classes, ['vm.added']);
  const firstDelivered = (await s.call('GET', '/v1/webhooks/hook/deliveries?state=delivered')).deliveries.at(-1);
  t.equal(firstDelivered.attempts, 3, 'delivered on the third attempt');
  t.equal(firstDelivered.lastStatus, 204);
  const status = await s.call('GET', '/v1/webhooks/hook');
  t.ok(status.deliveries.delivered >= 1);
  t.equal(status.lastDelivery.state, 'delivered');

  // The filtered subscription got only vm.added, failed twice and is on the dead-letter list.
  const deadList = await waitFor('a dead delivery', async () => {
    const d = (await s.call('GET', '/v1/webhooks/dead/deliveries?state=dead')).deliveries;
    return d.length > 0 ? d : undefined;
  });
  t.equal(deadList.length, 1, 'one notice matched the filter');
  t.equal(deadList[0].attempts, 2);
  t.match(deadList[0].lastError, /503/);
  t.same(deadList[0].body.objects, [{ kind: 'vm', name: 'vm1', classes: ['vm.added'], href: '/v1/vms/vm1' }], 'only the classes asked for');
  t.equal((await s.call('GET', '/v1/webhooks/dead')).deliveries.dead, 1);
  const again = await s.call('POST', `/v1/webhooks/dead/deliveries/${deadList[0].id}/retry`);
  t.equal(again.state, 'pending');
  t.equal((await s.request('POST', `/v1/webhooks/dead/deliveries/${firstDelivered.id}/retry`)).status, 404, "another webhook's delivery is not found");
  await waitFor('dead again', async () => ((await s.call('GET', '/v1/webhooks/dead')).deliveries.dead === 1 && (await s.call('GET', '/v1/webhooks/dead')).deliveries.pending === 0 ? true : undefined));
  await s.call('DELETE', '/v1/webhooks/dead');
  t.equal(fs.readdirSync(path.join(dataDir, 'webhooks')).length, 1, 'the deleted webhook took its secret file along');

  // Restart mid-queue: the receiver is down, a notice waits in the queue, the appliance stops and starts again.
  rx.failing.n = 1_000_000;
  await s.call('POST', '/v1/hosts', { name: 'h2', farm: 'f' });
  const waiting = await waitFor('a pending delivery that failed', async () => {
    const d = (await s.call('GET', '/v1/webhooks/hook/deliveries?state=pending')).deliveries.find((x: any) => x.body.objects.some((o: any) => o.name === 'h2'));
    return d && d.attempts >= 1 ? d : undefined;
  });
  await s.stop();
  rx.failing.n = 0;
  s = new TestServer({ demo: false, dataDir });
  t.teardown(() => s.stop());
  await s.start();
  const landed = await waitFor('the queued notice after the restart', async () => (await good()).find((g) => g.headers['blockgate-delivery'] === String(waiting.id)), 120_000);
  t.ok(verify(hook.secret, landed.headers['blockgate-signature'] as string, landed.body), 'the secret survived the restart');
  t.equal(JSON.parse(landed.body).id, waiting.notice, 'the same notice');
  const after = (await s.call('GET', '/v1/webhooks/hook/deliveries?state=delivered')).deliveries.find((d: any) => d.id === waiting.id);
  t.ok(after.attempts >= 2, 'attempted before and after the restart');

  // CLI verbs.
  const list = await cliOk(s, ['webhook', 'list', '--json']);
  t.same(list.json.webhooks.map((w: any) => w.name), ['hook']);
  const human = await cliOk(s, ['webhook', 'deliveries', 'hook']);
  t.match(human.stdout, /delivered/);
  const made = await cliOk(s, ['webhook', 'create', 'cli-hook', '--url', rx.url, '--classes', 'host.online,host.offline', '--json']);
  t.same(made.json.classes, ['host.online', 'host.offline']);
  t.type(made.json.secret, 'string');
});

t.test('resource graph: whole, rooted, queried, DOT, cached until a change', async (t) => {
  const s = await startServer(t, { demo: false });
  await buildFarm(s);
  // v0 is written, then snapped: the snapshot hangs off v0.
  const snap = await s.call('POST', '/v1/volumes/v0/snap', { snapshot: 'v0-s1' });
  t.equal((await waitJob(s, snap.job.id)).state, 'succeeded');

  const ids = (a: any): string[] => [...a.answer].sort();
  t.same(ids(await s.call('GET', '/v1/graph?q=arrays-of&vm=vm1')), ['array/a0', 'array/a1'], 'arrays of vm1');
  t.same(ids(await s.call('GET', '/v1/graph?q=vms-touching&array=a1')), ['vm/vm1'], 'vms touching a1 (v2 is on it too, in no VM)');
  t.same(ids(await s.call('GET', '/v1/graph?q=volumes-touching&array=a1')), ['volume/v1', 'volume/v2']);
  t.same(ids(await s.call('GET', '/v1/graph?q=snapshots-of&volume=v0')), ['snapshot/v0-s1'], 'snapshots of v0');
  t.same(ids(await s.call('GET', '/v1/graph?q=files-of&volume=v0')), [`file/${path.join(s.dataDir, 'arrays', 'a0.img')}`, `file/${path.join(s.dataDir, 'arrays', 'a0.img')}.alloc`].sort());
  const vmsOfA1 = await s.call('GET', '/v1/graph?q=vms-touching&array=a1');
  const vmPath = vmsOfA1.nodes.map((n: any) => n.id);
  t.ok(vmPath.includes('volume/v1') && !vmPath.includes('volume/v2'), 'the answer comes with the paths that connect it, no more');

  const rooted = await s.call('GET', '/v1/graph?root=vm/vm1');
  const rootedIds = rooted.nodes.map((n: any) => n.id);
  for (const id of ['vm/vm1', 'host/h1', 'farm/f', 'unit/h1/0/0', 'volume/v0', 'volume/v1', 'extent/v1/1', 'array/a1']) t.ok(rootedIds.includes(id), `root vm1 shows ${id}`);
  t.notOk(rootedIds.includes('volume/v2'), 'a volume vm1 does not use is not shown');
  for (const e of rooted.edges) t.ok(rootedIds.includes(e.from) && rootedIds.includes(e.to), 'edges stay inside the answer');
  const whole = await s.call('GET', '/v1/graph');
  t.ok(whole.nodes.some((n: any) => n.id === 'volume/v2'));
  t.ok(whole.edges.some((e: any) => e.from === 'volume/v0' && e.to === 'snapshot/v0-s1' && e.rel === 'has-snapshot'));

  // Bad requests: a 4xx with a message, never a crash.
  for (const [url, code] of [
    ['/v1/graph?root=vm/nope', 404],
    ['/v1/graph?q=arrays-of&vm=nope', 404],
    ['/v1/graph?q=bogus&vm=vm1', 400],
    ['/v1/graph?q=gizmos-of&vm=vm1', 400],
    ['/v1/graph?q=arrays-of', 400],
    ['/v1/graph?q=arrays-of&vm=vm1&host=h1', 400],
    ['/v1/graph?vm=vm1', 400],
    ['/v1/graph?format=svg', 400],
    ['/v1/graph?color=red', 400],
  ] as const) {
    const r = await s.request('GET', url);
    t.equal(r.status, code, url);
    t.type(r.body?.error?.message, 'string');
  }

  // DOT, by query parameter and by Accept; graphviz parses it.
  const dotRes = await fetch(`${s.api}/v1/graph?root=vm/vm1`, { headers: { authorization: `Bearer ${TOKEN}`, accept: 'text/vnd.graphviz' } });
  t.match(dotRes.headers.get('content-type'), /text\/vnd\.graphviz/);
  const dotText = await dotRes.text();
  t.match(dotText, /^digraph blockgate \{/);
  const svg = await run('dot', ['-Tsvg'], { input: dotText });
  t.equal(svg.code, 0, `dot parses it: ${svg.stderr}`);
  t.match(svg.stdout, /<svg/);
  const whole_dot = await cliOk(s, ['graph', '--format', 'dot']);
  t.equal((await run('dot', ['-Tsvg'], { input: whole_dot.stdout })).code, 0, 'the whole graph parses too');
  const odd = await run('dot', ['-Tsvg'], { input: 'digraph { "a" -> }' });
  t.not(odd.code, 0, 'dot does reject a broken graph (the check can fail)');

  // Cached: a second request is a hit; a change is seen at once, by a miss.
  const counts = async (): Promise<{ hit: number; miss: number }> => {
    const m = (await s.call('GET', '/metrics')) as string;
    const v = (r: string): number => Number(new RegExp(`blockgate_graph_cache_total\\{result="${r}"\\} (\\d+)`).exec(m)?.[1] ?? NaN);
    return { hit: v('hit'), miss: v('miss') };
  };
  await s.call('GET', '/v1/graph');
  const c0 = await counts();
  await s.call('GET', '/v1/graph?q=arrays-of&vm=vm1');
  const c1 = await counts();
  t.same(c1, { hit: c0.hit + 1, miss: c0.miss }, 'served from the cache');
  await s.call('POST', '/v1/volumes', { name: 'v3', size: '8M', farm: 'f', layout: [{ array: 'a1', size: '8M' }] });
  await waitFor('v3 in the graph', async () => ((await s.call('GET', '/v1/graph?q=volumes-touching&array=a1')).answer.includes('volume/v3') ? true : undefined));
  const c2 = await counts();
  t.ok(c2.miss > c1.miss, 'the change rebuilt the graph');

  // CLI.
  const q = await cliOk(s, ['graph', '--query', 'arrays-of', '--vm', 'vm1']);
  t.match(q.stdout, /a0/);
  t.match(q.stdout, /a1/);
  const j = await cliOk(s, ['graph', '--root', 'vm/vm1', '--json']);
  t.equal(j.json.root, 'vm/vm1');
});
