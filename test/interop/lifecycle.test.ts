import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { M, ioOk, listExports, qemuIo, readFileRegion, regionIs, waitJob } from '../helpers/api.js';
import { startServer } from '../helpers/server.js';
import { SseCollector } from '../helpers/sse.js';
import { requireTools, run } from '../helpers/tools.js';
import { waitFor } from '../helpers/wait.js';

requireTools('qemu-io', 'nbdinfo');

/** Collects server-sent events until `until` says stop. */
async function readEvents(url: string, token: string, until: (e: any) => boolean): Promise<any[]> {
  const c = await SseCollector.open(url, token);
  try {
    const at = await waitFor('the event looked for', async () => {
      const i = c.seen.findIndex((e) => until(e.data));
      return i >= 0 ? i : undefined;
    }, 60_000);
    return c.seen.slice(0, at + 1).map((e) => e.data);
  } finally {
    await c.close();
  }
}

/** Every volume operation route, with a body that would be valid if the state allowed it. */
const VOLUME_OPS: Record<string, (v: string) => [string, string, unknown]> = {
  configure: (v) => ['POST', `/v1/volumes/${v}/configure`, undefined],
  break: (v) => ['POST', `/v1/volumes/${v}/break`, undefined],
  deallocate: (v) => ['POST', `/v1/volumes/${v}/deallocate`, undefined],
  scrub: (v) => ['POST', `/v1/volumes/${v}/scrub`, {}],
  'copy-image': (v) => ['POST', `/v1/volumes/${v}/copy-image`, { image: 'os' }],
  snap: (v) => ['POST', `/v1/volumes/${v}/snap`, { snapshot: `${v}-never` }],
  copy: (v) => ['POST', `/v1/volumes/${v}/copy`, { targets: ['spare'] }],
  bind: (v) => ['POST', '/v1/bindings', { volume: v, host: 'h1', target: 200, lun: 0, map: false }],
  resize: (v) => ['POST', `/v1/volumes/${v}/resize`, { size: '200M' }],
};

/** Tries every operation the volume's state does not allow: each is 409 ILLEGAL_STATE and changes nothing. */
async function sweepIllegal(t: { equal: (...a: any[]) => void; same: (...a: any[]) => void }, s: Awaited<ReturnType<typeof startServer>>, name: string): Promise<void> {
  const before = await s.call('GET', `/v1/volumes/${name}`);
  for (const [op, req] of Object.entries(VOLUME_OPS)) {
    if (before.allowed.includes(op)) continue;
    const [method, url, body] = req(name);
    const r = await s.request(method, url, body);
    t.equal(r.status, 409, `${op} refused in ${before.state}`);
    t.equal(r.body?.error?.code, 'ILLEGAL_STATE');
  }
  const after = await s.call('GET', `/v1/volumes/${name}`);
  t.same({ ...after, updatedAt: 0 }, { ...before, updatedAt: 0 }, `nothing changed in ${before.state}`);
  t.equal(after.updatedAt, before.updatedAt);
}

t.test('the storage lifecycle of seed 003 through the API, with real NBD clients', async (t) => {
  // Background write-back held off: what reaches the array file before a flush
  // is only what an explicit flush (here: the unmap's) wrote.
  const s = await startServer(t, { demo: false, env: { BLOCKGATE_WRITEBACK_DELAY_MS: '600000' } });
  const api = s.call.bind(s);
  const sweep = (): Promise<void> => sweepIllegal(t, s, 'boot');

  await api('POST', '/v1/farms', { name: 'acme' });
  // Two 64 MiB arrays: a 96 MiB volume must be summed across both (a meta volume).
  await api('POST', '/v1/arrays', { name: 'a0', size: '64M' });
  await api('POST', '/v1/arrays', { name: 'a1', size: '64M' });
  await api('POST', '/v1/hosts', { name: 'h1', farm: 'acme' });
  await api('POST', '/v1/arrays', { name: 'a2', size: '160M' });
  await api('POST', '/v1/volumes', { name: 'spare', size: '160M', farm: 'acme', layout: [{ array: 'a2', size: '160M' }] });

  // free → allocated
  let v = await api('POST', '/v1/volumes', { name: 'boot', size: '96M', farm: 'acme', configure: false });
  t.equal(v.state, 'allocated');
  t.equal(v.meta, true, 'free extents summed across arrays');
  t.equal(v.extents.length, 2);
  await sweep();
  // Binding an allocated volume is illegal.
  let r = await s.request('POST', '/v1/bindings', { volume: 'boot', host: 'h1', target: 0, lun: 0 });
  t.equal(r.status, 409);
  t.equal(r.body.error.code, 'ILLEGAL_STATE');
  t.match(r.body.error.message, /state 'allocated'.*configure/);

  // allocated → configured (meta create)
  v = await api('POST', '/v1/volumes/boot/meta');
  t.equal(v.state, 'configured');
  await sweep();

  // copy image (configured → configured)
  fs.mkdirSync(path.join(s.dataDir, 'images'), { recursive: true });
  fs.writeFileSync(path.join(s.dataDir, 'images', 'os.img'), Buffer.alloc(2 * M, 0x07));
  await api('POST', '/v1/images', { name: 'os', path: 'images/os.img' });
  r = await s.request('POST', '/v1/volumes/boot/copy-image', { image: 'os' });
  t.equal(r.status, 202, 'long operations answer 202 with a job');
  t.equal((await waitJob(s, r.body.job.id)).state, 'succeeded');
  t.equal((await api('GET', '/v1/volumes/boot')).image, 'os');

  // configured → bound: nothing visible yet
  const b = await api('POST', '/v1/bindings', { volume: 'boot', host: 'h1', target: 0, lun: 0, map: false });
  t.equal((await api('GET', '/v1/volumes/boot')).state, 'bound');
  t.same(await listExports(s, 'h1'), [], 'a bound but unmapped unit is not listed');
  await sweep();

  // bound → mapped: the unit appears at once
  await api('POST', `/v1/bindings/${b.id}/map`);
  t.equal((await api('GET', '/v1/volumes/boot')).state, 'mapped');
  t.same(await listExports(s, 'h1'), ['0/0']);
  await sweep();
  t.ok(ioOk(await qemuIo(s, 'h1', '0/0', 'read -P 0x07 0 2M', 'read -P 0 2M 1M')), 'the host boots the image');

  // A write crossing the extent boundary, then trace it to the files.
  const boundary = v.extents[0].length;
  t.ok(ioOk(await qemuIo(s, 'h1', '0/0', `write -P 0x5a ${boundary - M} ${2 * M}`, 'flush')));
  const tr = await api('GET', `/v1/trace/hosts/h1/units/0/0?offset=${boundary - M}&length=${2 * M}`);
  t.equal(tr.volume.name, 'boot');
  t.equal(tr.segments.length, 2, 'the request splits at the extent boundary');
  for (const seg of tr.segments) t.ok(readFileRegion(seg.file, seg.arrayOffset, seg.length).every((x: number) => x === 0x5a), `bytes are in ${seg.array} at ${seg.arrayOffset}`);

  // Resolve back from what a host or admin holds.
  t.equal((await api('GET', `/v1/resolve?serial=${tr.volume.serial}`)).volume.name, 'boot');
  t.equal((await api('GET', `/v1/resolve?naa=naa.${tr.volume.naa}`)).volume.name, 'boot');
  t.equal((await api('GET', '/v1/resolve?export=0/0&host=h1')).volume.name, 'boot');
  const back = await api('GET', `/v1/resolve?array=${tr.segments[1].array}&offset=${tr.segments[1].arrayOffset}`);
  t.equal(back.owner, 'volume');
  t.equal(back.volumeOffset, boundary);
  await api('POST', '/v1/vms', { name: 'vm1', host: 'h1', bindings: [b.id] });
  const vmr = await api('GET', '/v1/resolve?vm=vm1');
  t.equal(vmr.disks[0].volume.name, 'boot');

  // Illegal while mapped: scrub, de-allocate, unbind.
  for (const [method, url] of [
    ['POST', '/v1/volumes/boot/scrub'],
    ['POST', '/v1/volumes/boot/deallocate'],
    ['POST', '/v1/volumes/boot/break'],
    ['DELETE', `/v1/bindings/${b.id}`],
  ] as const) {
    const x = await s.request(method, url, method === 'POST' ? {} : undefined);
    t.equal(x.status, 409, `${method} ${url} refused while mapped`);
    t.equal(x.body.error.code, 'ILLEGAL_STATE');
  }

  // Live namespace: a session open across the unmap is closed; its data was flushed.
  const events = readEvents(`${s.api}/v1/events?since=0`, 'test-token-0123456789', (e) => e.type === 'namespace.changed' && e.data.host === 'h1' && e.data.units.length === 0);
  // The session writes (no flush), then holds the unit open; the unmap comes once the write is acknowledged.
  const writes = async (): Promise<number> => {
    const text = await (await fetch(`${s.api}/metrics`, { headers: { authorization: 'Bearer test-token-0123456789' } })).text();
    return Number(/^blockgate_io_ops_total\{host="h1",volume="boot",op="write"\} (\d+)/m.exec(text)?.[1] ?? 0);
  };
  const w0 = await writes();
  // -t writeback: qemu-io's default (writethrough) flushes after every write, which would do the unmap's job for it.
  const session = run('qemu-io', ['-f', 'raw', '-t', 'writeback', '-c', 'write -P 0x33 8M 64k', '-c', 'sleep 10000', '-c', 'read -P 0x33 8M 64k', s.unixUri('h1', '0/0')]);
  const deadline = Date.now() + 60_000;
  while ((await writes()) === w0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 50));
  t.ok((await writes()) > w0, 'the session wrote before the unmap');
  const seg = await api('GET', `/v1/trace/volumes/boot?offset=${8 * M}&length=${64 * 1024}`);
  // Still only in the cache (write-back is held off), so the check below can only pass by the unmap's flush.
  for (const x of seg.segments) t.notOk(regionIs(x.file, x.arrayOffset, x.length, 0x33), `the write is not on ${x.array} before the unmap`);
  await api('POST', `/v1/bindings/${b.id}/unmap`);
  // Unmap drained and flushed: the unflushed write is on the array file once the unmap returns.
  for (const x of seg.segments) t.ok(regionIs(x.file, x.arrayOffset, x.length, 0x33), `unmap flushed the session's write to ${x.array}`);
  const after = await session;
  t.not(after.code, 0, 'the open session lost the unit');
  t.match(after.stdout + after.stderr, /read failed|Input\/output error|Connection|error/i, 'its read after the unmap failed');
  t.same(await listExports(s, 'h1'), [], 'unit gone from the list');
  const seen = await events;
  t.ok(seen.some((e) => e.type === 'volume.state' && e.data.operation === 'map'), 'event stream replayed the map');
  t.ok(seen.some((e) => e.type === 'job.succeeded'), 'and the job state');
  const ev = await api('GET', '/v1/events?since=0');
  t.ok(ev.events.some((e: any) => e.type === 'vm.created'), 'VM changes are logged');
  t.equal((await api('GET', '/v1/volumes/boot')).state, 'unmapped');
  await sweep();

  // unmapped → unbound
  await api('DELETE', `/v1/bindings/${b.id}`);
  t.equal((await api('GET', '/v1/volumes/boot')).state, 'unbound');
  await sweep();
  // Unbound but written: going to free needs a scrub.
  await api('POST', '/v1/volumes/boot/break');
  await sweep();
  r = await s.request('POST', '/v1/volumes/boot/deallocate');
  t.equal(r.status, 409);
  t.match(r.body.error.message, /scrub/);

  // scrub with a pattern, verify, then read the backing files.
  r = await s.request('POST', '/v1/volumes/boot/scrub', { pattern: 0xa5 });
  t.equal(r.status, 202);
  const sj = await waitJob(s, r.body.job.id);
  t.equal(sj.state, 'succeeded');
  t.equal(sj.result.verified, true);
  t.equal(sj.progress.fraction, 1);
  const trace = await api('GET', '/v1/trace/volumes/boot');
  for (const seg of trace.segments) t.ok(regionIs(seg.file, seg.arrayOffset, seg.length, 0xa5), `${seg.array} region scrubbed to the pattern`);

  // unconfigured → free; the space is back.
  v = await api('POST', '/v1/volumes/boot/deallocate');
  t.equal(v.state, 'free');
  await sweep();
  const arrays = (await api('GET', '/v1/arrays')).arrays;
  t.same(arrays.map((a: any) => a.free), [64 * M, 64 * M, 0]);
  // An illegal operation on a free volume.
  r = await s.request('POST', '/v1/volumes/boot/configure');
  t.equal(r.status, 409);
  t.match(r.body.error.message, /allowed in 'free': allocate/);

  // Activate: one call runs allocate → configure → copy image → bind → map.
  r = await s.request('POST', '/v1/hosts/h1/activate', { volume: 'data', size: '8M', image: 'os', target: 1, lun: 0 });
  t.equal(r.status, 202);
  const aj = await waitJob(s, r.body.job.id);
  t.equal(aj.state, 'succeeded', JSON.stringify(aj));
  t.same(await listExports(s, 'h1'), ['1/0']);
  t.ok(ioOk(await qemuIo(s, 'h1', '1/0', 'read -P 0x07 0 2M')));

  // OpenAPI from the same schemas.
  const doc = await api('GET', '/v1/openapi.json');
  for (const p of ['/v1/volumes', '/v1/bindings/{id}/map', '/v1/volumes/{name}/scrub', '/v1/jobs/{id}', '/v1/resolve', '/v1/events']) t.ok(doc.paths[p], `openapi has ${p}`);
  t.ok(doc.paths['/v1/bindings'].post.requestBody.content['application/json'].schema.properties.target, 'request schema is in the document');
});

t.test('copy: one unbound source onto many unbound targets, smaller refused', async (t) => {
  const s = await startServer(t, { demo: false });
  const api = s.call.bind(s);
  await api('POST', '/v1/farms', { name: 'f' });
  await api('POST', '/v1/arrays', { name: 'a0', size: '64M' });
  await api('POST', '/v1/hosts', { name: 'h', farm: 'f' });
  for (const [n, sz] of [['src', '8M'], ['t1', '8M'], ['t2', '16M'], ['small', '4M']]) {
    await api('POST', '/v1/volumes', { name: n, size: sz, farm: 'f' });
  }
  const b = await api('POST', '/v1/bindings', { volume: 'src', host: 'h', target: 0, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'h', '0/0', 'write -P 0x42 0 8M', 'flush')));
  await api('POST', `/v1/bindings/${b.id}/unmap`);
  await api('DELETE', `/v1/bindings/${b.id}`);
  // Targets must be unbound too: park them there through bind/unbind.
  for (const n of ['t1', 't2', 'small']) {
    const x = await api('POST', '/v1/bindings', { volume: n, host: 'h', target: 1, lun: 0, map: false });
    await api('DELETE', `/v1/bindings/${x.id}`);
  }
  let r = await s.request('POST', '/v1/volumes/src/copy', { targets: ['t1', 'small'] });
  t.equal(r.status, 409);
  t.match(r.body.error.message, /smaller/);
  r = await s.request('POST', '/v1/volumes/src/copy', { targets: ['t1', 't2'] });
  t.equal(r.status, 202);
  t.equal((await waitJob(s, r.body.job.id)).state, 'succeeded');
  for (const n of ['t1', 't2']) {
    const tr = await api('GET', `/v1/trace/volumes/${n}?offset=0&length=${8 * M}`);
    for (const seg of tr.segments) t.ok(regionIs(seg.file, seg.arrayOffset, seg.length, 0x42), `${n} has the source's bytes`);
    t.equal((await api('GET', `/v1/volumes/${n}`)).dirty, true, 'a copy target must be scrubbed before reuse');
  }
  // An image made from a volume, then copied onto a fresh configured one.
  r = await s.request('POST', '/v1/images', { name: 'golden', fromVolume: 't1' });
  t.equal(r.status, 202);
  t.equal((await waitJob(s, r.body.job.id)).state, 'succeeded');
  const img = (await api('GET', '/v1/images')).images.find((i: any) => i.name === 'golden');
  t.equal(img.size, 8 * M);
  t.ok(regionIs(img.path, 0, 8 * M, 0x42), 'the image file holds the volume bytes');
  await api('POST', '/v1/volumes', { name: 'fresh', size: '8M', farm: 'f' });
  r = await s.request('POST', '/v1/volumes/fresh/copy-image', { image: 'golden' });
  t.equal((await waitJob(s, r.body.job.id)).state, 'succeeded');
  const fr = await api('GET', '/v1/trace/volumes/fresh');
  for (const seg of fr.segments) t.ok(regionIs(seg.file, seg.arrayOffset, seg.length, 0x42), 'image copied onto the configured volume');
  const mapped = await api('POST', '/v1/bindings', { volume: 'fresh', host: 'h', target: 2, lun: 0 });
  const nope = await s.request('POST', '/v1/images', { name: 'nope', fromVolume: 'fresh' });
  t.equal(nope.status, 409, 'no image from a mapped volume');
  t.equal(nope.body.error.code, 'ILLEGAL_STATE');
  t.match(nope.body.error.message, /is mapped: a host may be writing it.*take a snapshot/);
  t.ok(mapped.mapped);
});

t.test('bad request bodies get 400 with a clear message', async (t) => {
  const s = await startServer(t, { demo: true });
  const cases: [string, string, unknown, RegExp][] = [
    ['POST', '/v1/volumes', { name: 'x', size: 'lots' }, /size/],
    ['POST', '/v1/volumes', { name: 'x', size: '8M', colour: 'red' }, /Unrecognized key.*colour/],
    ['POST', '/v1/volumes', { size: '8M' }, /name/],
    ['POST', '/v1/bindings', { volume: 'demo-boot', host: 'demo', target: 300, lun: 0 }, /target/],
    ['POST', '/v1/bindings', { volume: 'demo-boot', host: 'demo', target: 0, lun: -1 }, /lun/],
    ['POST', '/v1/bindings', { volume: 'demo-boot', host: 'demo', target: 0, lun: 0, mode: 'sometimes' }, /mode/],
    ['POST', '/v1/volumes/demo-boot/scrub', { pattern: 999 }, /pattern/],
    ['POST', '/v1/volumes', '{"name": ', /not valid JSON/],
    ['POST', '/v1/volumes', [1, 2], /expected object/],
    ['GET', '/v1/jobs/abc', undefined, /id/],
    ['POST', '/v1/images', { name: 'i' }, /exactly one of path or fromVolume/],
    ['GET', '/v1/resolve?offset=-3', undefined, /offset/],
  ];
  for (const [method, url, body, msg] of cases) {
    const r = await s.request(method, url, body);
    t.equal(r.status, 400, `${method} ${url} ${JSON.stringify(body)} → 400`);
    t.equal(r.body?.error?.code, 'BAD_REQUEST');
    t.match(r.body?.error?.message, msg);
  }
  const noToken = await s.request('GET', '/v1/volumes', undefined, null);
  t.equal(noToken.status, 401);
  const health = await s.request('GET', '/v1/health', undefined, null);
  t.equal(health.status, 200, 'health needs no token');
  t.equal(health.body.status, 'ok');
});
