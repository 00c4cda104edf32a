import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools, run, runOk } from '../helpers/tools.js';
import { OPT, REP, WireClient } from '../helpers/nbd-wire.js';

// TLS identity on the shared TCP listener: after STARTTLS the PSK identity or
// the client certificate's CN names the host, and so the namespace. Checked
// with nbdinfo (nbds:// URIs) and qemu-img (tls-creds objects). A wrong key
// fails; a host can require TLS.

requireTools('nbdinfo', 'qemu-img', 'openssl');

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-tls-'));
t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
const dataDir = path.join(work, 'data');
const pki = path.join(work, 'pki');
fs.mkdirSync(path.join(dataDir, 'tls'), { recursive: true });
fs.mkdirSync(pki);

const ossl = (...args: string[]): Promise<unknown> => runOk('openssl', args, { timeoutMs: 60_000 });
const p = (f: string): string => path.join(pki, f);

async function makeCa(name: string): Promise<void> {
  await ossl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', p(`${name}-key.pem`), '-out', p(`${name}-cert.pem`), '-days', '2', '-subj', `/CN=${name}`);
}

async function makeCert(ca: string, cn: string, file: string, ext: string): Promise<void> {
  fs.writeFileSync(p(`${file}.ext`), ext);
  await ossl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', p(`${file}-key.pem`), '-out', p(`${file}.csr`), '-subj', `/CN=${cn}`);
  await ossl('x509', '-req', '-in', p(`${file}.csr`), '-CA', p(`${ca}-cert.pem`), '-CAkey', p(`${ca}-key.pem`), '-CAcreateserial', '-out', p(`${file}-cert.pem`), '-days', '2', '-extfile', p(`${file}.ext`));
}

/** A libnbd/qemu client certificate directory. */
function clientDir(name: string, ca: string, cert: string): string {
  const d = path.join(work, name);
  fs.mkdirSync(d);
  fs.copyFileSync(p(`${ca}-cert.pem`), path.join(d, 'ca-cert.pem'));
  fs.copyFileSync(p(`${cert}-cert.pem`), path.join(d, 'client-cert.pem'));
  fs.copyFileSync(p(`${cert}-key.pem`), path.join(d, 'client-key.pem'));
  return d;
}

let s: TestServer;
let h2Certs = '';
let rogueCerts = '';
let demoPsk = '';
let h2Psk = '';

const pskFile = async (host: string): Promise<string> => {
  const r = await s.call('POST', `/v1/hosts/${host}/tls/psk`, {});
  if (r.identity !== host || !/^[0-9a-f]{64}$/.test(r.key)) throw new Error(`unexpected PSK answer ${JSON.stringify(r)}`);
  const f = path.join(work, `${host}.psk`);
  fs.writeFileSync(f, r.pskFile, { mode: 0o600 });
  return f;
};

t.before(async () => {
  await makeCa('ca');
  await makeCa('rogue');
  await makeCert('ca', 'localhost', 'server', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  await makeCert('ca', 'h2', 'h2', 'extendedKeyUsage=clientAuth\n');
  await makeCert('rogue', 'demo', 'fake-demo', 'extendedKeyUsage=clientAuth\n');
  for (const f of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']) fs.copyFileSync(p(f), path.join(dataDir, 'tls', f));
  h2Certs = clientDir('h2-certs', 'ca', 'h2');
  rogueCerts = clientDir('rogue-certs', 'ca', 'fake-demo');
  s = await startServer(t, { dataDir });
  await s.call('POST', '/v1/hosts', { name: 'h2', farm: 'default' });
  await s.call('POST', '/v1/volumes', { name: 'h2-disk', size: '32M' });
  await s.call('POST', '/v1/bindings', { volume: 'h2-disk', host: 'h2', target: 0, lun: 0 });
  demoPsk = await pskFile('demo');
  h2Psk = await pskFile('h2');
});

const port = (): string => s.nbd.slice(s.nbd.lastIndexOf(':') + 1);
const info = async (uri: string): Promise<{ size: number; tls: boolean }> => {
  const j = JSON.parse((await runOk('nbdinfo', ['--json', uri], { timeoutMs: 30_000 })).stdout);
  return { size: j.exports[0]['export-size'], tls: j.TLS };
};

t.test('PSK: the identity selects the namespace', async (t) => {
  t.same(await info(`nbds://demo@localhost:${port()}/0/0?tls-psk-file=${demoPsk}`), { size: 256 * 1024 * 1024, tls: true }, 'demo sees its boot disk');
  t.same(await info(`nbds://h2@localhost:${port()}/0/0?tls-psk-file=${h2Psk}`), { size: 32 * 1024 * 1024, tls: true }, 'h2 sees its own disk on the same listener');
  const wrong = path.join(work, 'wrong.psk');
  fs.writeFileSync(wrong, `h2:${'ab'.repeat(32)}\n`);
  t.not((await run('nbdinfo', ['--size', `nbds://h2@localhost:${port()}/0/0?tls-psk-file=${wrong}`], { timeoutMs: 30_000 })).code, 0, 'a wrong key fails');
  const nobody = path.join(work, 'nobody.psk');
  fs.writeFileSync(nobody, `nobody:${'ab'.repeat(32)}\n`);
  t.not((await run('nbdinfo', ['--size', `nbds://nobody@localhost:${port()}/0/0?tls-psk-file=${nobody}`], { timeoutMs: 30_000 })).code, 0, 'an unknown identity fails');
  const qdir = path.join(work, 'qemu-psk');
  fs.mkdirSync(qdir);
  fs.copyFileSync(h2Psk, path.join(qdir, 'keys.psk'));
  const q = await runOk('qemu-img', ['info', '--output=json', '--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${qdir},username=h2`, '--image-opts', `driver=nbd,host=localhost,port=${port()},export=0/0,tls-creds=tls0`], { timeoutMs: 30_000 });
  t.equal(JSON.parse(q.stdout)['virtual-size'], 32 * 1024 * 1024, 'qemu-img with a PSK');
});

t.test('X.509: the client certificate CN selects the namespace', async (t) => {
  t.same(await info(`nbds://localhost:${port()}/0/0?tls-certificates=${h2Certs}`), { size: 32 * 1024 * 1024, tls: true }, 'CN=h2 sees h2');
  t.not((await run('nbdinfo', ['--size', `nbds://localhost:${port()}/0/0?tls-certificates=${rogueCerts}`], { timeoutMs: 30_000 })).code, 0, 'a certificate from another CA is refused');
  const q = await runOk('qemu-img', ['info', '--output=json', '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${h2Certs}`, '--image-opts', `driver=nbd,host=localhost,port=${port()},export=0/0,tls-creds=tls0`], { timeoutMs: 30_000 });
  t.equal(JSON.parse(q.stdout)['virtual-size'], 32 * 1024 * 1024, 'qemu-img with a certificate');
});

t.test('a host that requires TLS: plaintext INFO/GO get ERR_TLS_REQD; its own unix socket stays open', async (t) => {
  t.not((await run('nbdinfo', ['--size', `nbds://demo@localhost:${port()}/0/0`], { timeoutMs: 30_000 })).code, 0, 'nbds without credentials fails');
  const h = await s.call('PUT', '/v1/hosts/demo/tls', { requireTls: true });
  t.equal(h.nbd.requireTls, true);
  const c = await WireClient.connect({ host: '127.0.0.1', port: Number(port()) });
  await c.greet();
  t.equal((await c.option(OPT.GO, WireClient.infoRequest('0/0', [])))[0]!.type, REP.ERR_TLS_REQD, 'GO');
  t.equal((await c.option(OPT.INFO, WireClient.infoRequest('0/0', [])))[0]!.type, REP.ERR_TLS_REQD, 'INFO');
  t.equal((await c.option(OPT.LIST))[0]!.type, REP.ERR_TLS_REQD, 'LIST');
  c.destroy();
  t.not((await run('nbdinfo', ['--size', s.tcpUri('0/0')], { timeoutMs: 30_000 })).code, 0, 'plain nbd:// refused');
  t.equal((await info(s.unixUri('demo', '0/0'))).tls, false, 'the host socket serves plaintext');
  const u = await WireClient.connect({ path: s.socket('demo') });
  await u.greet();
  t.equal((await u.option(OPT.STARTTLS))[0]!.type, REP.ERR_POLICY, 'no STARTTLS on a host socket');
  u.destroy();
  t.equal((await info(`nbds://demo@localhost:${port()}/0/0?tls-psk-file=${demoPsk}`)).tls, true, 'TLS works');
});

t.test('keys and the TLS requirement survive a restart', async (t) => {
  await s.stop();
  s = await startServer(t, { dataDir });
  t.equal((await s.call('GET', '/v1/hosts/demo')).nbd.requireTls, true);
  t.equal((await info(`nbds://demo@localhost:${port()}/0/0?tls-psk-file=${demoPsk}`)).size, 256 * 1024 * 1024);
  t.not((await run('nbdinfo', ['--size', s.tcpUri('0/0')], { timeoutMs: 30_000 })).code, 0, 'plaintext still refused');
});
