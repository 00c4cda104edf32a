import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { cli, cliOk } from '../helpers/cli.js';
import { serveRefused, startServer, type TestServer } from '../helpers/server.js';

// The admin surface against a real `blockgate serve`: the verbs every noun has, key files
// written 0600, audit lines, and start-up failures that are one line and leave nothing behind.

let s: TestServer;
t.before(async () => {
  s = await startServer(t);
});

t.test('CLI: TLS key verbs write 0600 files; create never rotates', async (t) => {
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'bg-admin-'));
  t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
  await cliOk(s, ['farm', 'create', 'acme']);
  await cliOk(s, ['host', 'create', 'web1', '--farm', 'acme']);
  const keyFile = path.join(work, 'web1.psk');
  // An existing world-readable file is made private too.
  fs.writeFileSync(keyFile, 'old\n', { mode: 0o644 });
  let r = await cliOk(s, ['host', 'psk-create', 'web1', '--out', keyFile]);
  t.match(r.stdout, /written to .*web1\.psk \(mode 0600\)/);
  t.equal(fs.statSync(keyFile).mode & 0o777, 0o600, 'the key file is 0600');
  const first = fs.readFileSync(keyFile, 'utf8');
  t.match(first, /^web1:[0-9a-f]{64}\n$/);
  r = await cli(s, ['host', 'psk-create', 'web1', '--out', keyFile]);
  t.equal(r.code, 4, 'a second create is a conflict');
  t.match(r.stderr, /already has a TLS key; rotate it/);
  t.equal(fs.readFileSync(keyFile, 'utf8'), first, 'and the key is unchanged');
  r = await cliOk(s, ['host', 'psk-show', 'web1', '--json']);
  t.match(r.json, { identity: 'web1', present: true });
  t.notOk(JSON.stringify(r.json).includes(first.slice(5, 69)), 'show never shows the key');
  await cliOk(s, ['host', 'psk-rotate', 'web1', '--out', keyFile]);
  t.not(fs.readFileSync(keyFile, 'utf8'), first, 'rotate replaces it');
  t.equal(fs.statSync(keyFile).mode & 0o777, 0o600);
  const keyOnDisk = path.join(s.dataDir, 'tls', 'psk', 'web1.key');
  t.equal(fs.statSync(keyOnDisk).mode & 0o777, 0o600, "the appliance's copy is 0600");
  r = await cliOk(s, ['host', 'require-tls', 'web1', 'on']);
  t.equal((await s.call('GET', '/v1/hosts/web1')).nbd.requireTls, true);
  t.equal((await cli(s, ['host', 'require-tls', 'web1', 'maybe'])).code, 2);
  await cliOk(s, ['host', 'require-tls', 'web1', 'off']);
  t.equal((await s.call('GET', '/v1/hosts/web1')).nbd.requireTls, false);
  await cliOk(s, ['host', 'psk-delete', 'web1']);
  t.equal((await cliOk(s, ['host', 'psk-show', 'web1', '--json'])).json.present, false);
  t.notOk(fs.existsSync(keyOnDisk));
});

t.test('CLI: delete verbs; 409 while in use, exit 4', async (t) => {
  let r = await cli(s, ['farm', 'delete', 'acme']);
  t.equal(r.code, 4);
  t.match(r.stderr, /farm 'acme' is in use by hosts web1/);
  await cliOk(s, ['host', 'delete', 'web1']);
  t.notOk(fs.existsSync(s.socket('web1')), "the host's socket is gone");
  t.equal((await cli(s, ['host', 'show', 'web1'])).code, 3);
  await cliOk(s, ['farm', 'delete', 'acme']);
  await cliOk(s, ['array', 'create', 'spare', '--size', '16M']);
  const file = path.join(s.dataDir, 'arrays', 'spare.img');
  t.ok(fs.existsSync(file));
  await cliOk(s, ['array', 'delete', 'spare']);
  t.notOk(fs.existsSync(file));
  r = await cli(s, ['array', 'delete', 'array0']);
  t.equal(r.code, 4, 'the demo array holds demo-boot');
  t.match(r.stderr, /demo-boot/);
  fs.writeFileSync(path.join(s.dataDir, 'images', 'tiny.img'), Buffer.alloc(65536, 1));
  await cliOk(s, ['image', 'create', 'tiny', '--path', 'images/tiny.img']);
  await cliOk(s, ['image', 'delete', 'tiny']);
  t.ok(fs.existsSync(path.join(s.dataDir, 'images', 'tiny.img')), 'the image file stays');
  r = await cli(s, ['host', 'create', 'web2', '--nbd-tcp', '0.0.0.0:10999']);
  t.equal(r.code, 2);
  t.match(r.stderr, /every network/);
});

t.test('audit: refused and unauthorized control requests leave a JSON line', async (t) => {
  t.equal((await s.request('GET', '/v1/hosts', undefined, 'wrong-token')).status, 401);
  t.equal((await s.request('GET', '/v1/hosts/nobody')).status, 404);
  t.equal((await s.request('GET', '/v1/jobs?state=bogus')).status, 400);
  const lines = (): Record<string, unknown>[] =>
    s.log
      .split('\n')
      .filter((l) => l.includes('"audit"'))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  // The server writes its log line after the reply is sent: wait for it to be read, bounded.
  const deadline = Date.now() + 30_000;
  while (!lines().some((l) => l.url === '/v1/jobs?state=bogus') && Date.now() < deadline) await new Promise((r) => setImmediate(r));
  const got = lines();
  t.match(got.find((l) => l.status === 401 && l.url === '/v1/hosts'), { audit: 'unauthorized', method: 'GET', url: '/v1/hosts', code: 'UNAUTHORIZED', remote: '127.0.0.1' });
  t.match(got.find((l) => l.url === '/v1/hosts/nobody'), { audit: 'refused', url: '/v1/hosts/nobody', code: 'NOT_FOUND', reason: /nobody/ });
  t.match(got.find((l) => l.url === '/v1/jobs?state=bogus'), { audit: 'refused', url: '/v1/jobs?state=bogus', code: 'BAD_REQUEST' });
  t.notOk(s.log.includes('wrong-token'), 'the token given is never logged');
});

t.test('start-up failures: one line, an exit code, nothing left behind', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'bg-refused-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  // Busy port: the running server's shared listener. Pretty logs (forced) mix no JSON into what is printed.
  let r = await serveRefused(dir, ['--nbd', s.nbd, '--iscsi', '127.0.0.1:0', '--log-format', 'pretty', '--log-level', 'info']);
  t.equal(r.started, false);
  t.equal(r.code, 4, r.output);
  t.match(r.output, new RegExp(`blockgate: cannot listen for the shared NBD listener on ${s.nbd.replace(/[.[\]]/g, '\\$&')}: the address is in use`));
  t.notOk(r.output.split('\n').some((l) => l.startsWith('{')), 'no raw JSON lines');
  t.match(r.output, /INFO.*demo appliance created/, 'log lines are pretty');
  t.notOk(/\n\s+at /.test(r.output), 'no stack trace');
  t.notOk(fs.existsSync(path.join(dir, 'run.json')), 'no run.json');
  t.same(fs.readdirSync(path.join(dir, 'sockets')), [], 'no stale host socket');
  // The data directory is free again: the next start works (and is stopped by its pid by serveRefused).
  r = await serveRefused(dir, ['--iscsi', '127.0.0.1:0']);
  t.equal(r.started, true, r.output);

  r = await serveRefused(dir, ['--log-level', 'loud']);
  t.equal(r.code, 2);
  t.equal(r.output.trim(), "blockgate: --log-level 'loud' is not one of fatal, error, warn, info, debug, trace, silent");
  const file = path.join(dir, 'not-a-dir');
  fs.writeFileSync(file, 'x');
  r = await serveRefused(file, ['--iscsi', '127.0.0.1:0']);
  t.equal(r.code, 2);
  t.match(r.output.trim(), /^blockgate: --data-dir .*not-a-dir cannot be used: it \(or a parent\) is not a directory$/);
});

t.test('host view and `host list` carry the socket settings, and they survive a restart', async (t) => {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'bg-admin-sock-'));
  t.teardown(() => fs.rmSync(dataDir, { recursive: true, force: true }));
  let r = await startServer(t, { dataDir, demo: false });
  await r.call('POST', '/v1/farms', { name: 'acme' });
  await r.call('POST', '/v1/hosts', { name: 'sock1', farm: 'acme' });
  t.same((await r.call('GET', '/v1/hosts/sock1')).nbd.socketAccess, { mode: null, uid: null, gid: null }, 'nothing set');
  await cliOk(r, ['host', 'update', 'sock1', '--socket-mode', '0640']);
  t.same((await r.call('GET', '/v1/hosts/sock1')).nbd.socketAccess, { mode: '0640', uid: null, gid: null });
  t.match((await cliOk(r, ['host', 'list'])).stdout, /SOCKET ACCESS[\s\S]*0640/, 'host list shows it');
  await r.stop();
  r = await startServer(t, { dataDir, demo: false });
  t.same((await r.call('GET', '/v1/hosts/sock1')).nbd.socketAccess, { mode: '0640', uid: null, gid: null }, 'after a restart');
  t.equal(fs.statSync(r.socket('sock1')).mode & 0o777, 0o640, 'and applied to the socket made at start');
});
