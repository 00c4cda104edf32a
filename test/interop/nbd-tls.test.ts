import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import t from 'tap';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools, run, runOk } from '../helpers/tools.js';
import { CMD, OPT, REP, WireClient } from '../helpers/nbd-wire.js';

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

/** A client certificate of our CA that expired years ago (openssl ca takes explicit dates). */
async function makeExpiredCert(ca: string, cn: string, file: string): Promise<void> {
  const db = path.join(pki, 'ca-db');
  fs.mkdirSync(db, { recursive: true });
  fs.writeFileSync(path.join(db, 'index.txt'), '');
  fs.writeFileSync(path.join(db, 'serial'), '1000\n');
  fs.writeFileSync(p('ca.cnf'), `[ca]\ndefault_ca=d\n[d]\ndatabase=${db}/index.txt\nnew_certs_dir=${db}\nserial=${db}/serial\ndefault_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n`);
  fs.writeFileSync(p(`${file}.ext`), 'extendedKeyUsage=clientAuth\n');
  await ossl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', p(`${file}-key.pem`), '-out', p(`${file}.csr`), '-subj', `/CN=${cn}`);
  await ossl('ca', '-batch', '-config', p('ca.cnf'), '-cert', p(`${ca}-cert.pem`), '-keyfile', p(`${ca}-key.pem`), '-in', p(`${file}.csr`), '-out', p(`${file}-cert.pem`), '-startdate', '20200101000000Z', '-enddate', '20200102000000Z', '-extfile', p(`${file}.ext`), '-notext');
}

/** Session refusals the server logged (reason tls-refused) since a point in its log. */
const refusalsSince = (mark: number): number =>
  s.log
    .slice(mark)
    .split('\n')
    .filter((l) => l.startsWith('{') && /"session":"disconnect"/.test(l) && /"reason":"tls-refused"/.test(l)).length;

/** Greets on the shared listener, sends STARTTLS and returns the plain socket, ready for tls.connect. */
async function startTls(before: (c: WireClient) => Promise<void> = async () => undefined): Promise<net.Socket> {
  const c = await WireClient.connect({ host: '127.0.0.1', port: Number(port()) });
  await c.greet();
  await before(c);
  const r = await c.option(OPT.STARTTLS);
  if (r[0]!.type !== REP.ACK) throw new Error(`STARTTLS answered ${r[0]!.type.toString(16)}`);
  return c.release() as net.Socket;
}

function tlsUpgrade(sock: net.Socket, opts: tls.ConnectionOptions): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('TLS handshake: no answer within 30 s')), 30_000);
    const ts = tls.connect({ socket: sock, rejectUnauthorized: false, checkServerIdentity: () => undefined, ...opts }, () => {
      clearTimeout(timer);
      resolve(ts);
    });
    ts.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
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
let expiredCerts = '';
let h2Key = '';
let rogueCerts = '';
let demoPsk = '';
let h2Psk = '';

const pskFile = async (host: string): Promise<string> => {
  const r = await s.call('POST', `/v1/hosts/${host}/tls/psk`, {});
  if (r.identity !== host || !/^[0-9a-f]{64}$/.test(r.key)) throw new Error(`unexpected PSK answer ${JSON.stringify(r)}`);
  const f = path.join(work, `${host}.psk`);
  fs.writeFileSync(f, r.pskFile, { mode: 0o600 });
  if (host === 'h2') h2Key = r.key;
  return f;
};

t.before(async () => {
  await makeCa('ca');
  await makeCa('rogue');
  await makeCert('ca', 'localhost', 'server', 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n');
  await makeCert('ca', 'h2', 'h2', 'extendedKeyUsage=clientAuth\n');
  await makeCert('rogue', 'demo', 'fake-demo', 'extendedKeyUsage=clientAuth\n');
  await makeExpiredCert('ca', 'h2', 'h2-expired');
  for (const f of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']) fs.copyFileSync(p(f), path.join(dataDir, 'tls', f));
  h2Certs = clientDir('h2-certs', 'ca', 'h2');
  rogueCerts = clientDir('rogue-certs', 'ca', 'fake-demo');
  expiredCerts = clientDir('expired-certs', 'ca', 'h2-expired');
  // info: the session lines say why a session was refused.
  s = await startServer(t, { dataDir, args: ['--log-level', 'info'] });
  await s.call('POST', '/v1/hosts', { name: 'h2', farm: 'default' });
  await s.call('POST', '/v1/volumes', { name: 'h2-disk', size: '32M' });
  await s.call('POST', '/v1/bindings', { volume: 'h2-disk', host: 'h2', target: 0, lun: 0 });
  demoPsk = await pskFile('demo');
  h2Psk = await pskFile('h2');
});

/** Session lines are written when the server gets to them: poll the log, bounded. */
async function untilLogged(cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 30_000;
  while (!cond() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
}

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
  let mark = s.log.length;
  const w = await run('nbdinfo', ['--size', `nbds://h2@localhost:${port()}/0/0?tls-psk-file=${wrong}`], { timeoutMs: 30_000 });
  t.not(w.code, 0, 'a wrong key fails');
  t.match(w.stderr, /handshake|TLS|decrypt|MAC/i, `in the TLS handshake: ${w.stderr.trim()}`);
  const nobody = path.join(work, 'nobody.psk');
  fs.writeFileSync(nobody, `nobody:${'ab'.repeat(32)}\n`);
  const n = await run('nbdinfo', ['--size', `nbds://nobody@localhost:${port()}/0/0?tls-psk-file=${nobody}`], { timeoutMs: 30_000 });
  t.not(n.code, 0, 'an unknown identity fails');
  t.match(n.stderr, /handshake|TLS|decrypt|identity/i, `in the TLS handshake: ${n.stderr.trim()}`);
  await untilLogged(() => refusalsSince(mark) >= 2);
  t.equal(refusalsSince(mark), 2, 'the server refused both sessions for TLS reasons');
  mark = s.log.length;
  const qdir = path.join(work, 'qemu-psk');
  fs.mkdirSync(qdir);
  fs.copyFileSync(h2Psk, path.join(qdir, 'keys.psk'));
  const q = await runOk('qemu-img', ['info', '--output=json', '--object', `tls-creds-psk,id=tls0,endpoint=client,dir=${qdir},username=h2`, '--image-opts', `driver=nbd,host=localhost,port=${port()},export=0/0,tls-creds=tls0`], { timeoutMs: 30_000 });
  t.equal(JSON.parse(q.stdout)['virtual-size'], 32 * 1024 * 1024, 'qemu-img with a PSK');
});

t.test('X.509: the client certificate CN selects the namespace', async (t) => {
  t.same(await info(`nbds://localhost:${port()}/0/0?tls-certificates=${h2Certs}`), { size: 32 * 1024 * 1024, tls: true }, 'CN=h2 sees h2');
  const mark = s.log.length;
  const rogue = await run('nbdinfo', ['--size', `nbds://localhost:${port()}/0/0?tls-certificates=${rogueCerts}`], { timeoutMs: 30_000 });
  t.not(rogue.code, 0, 'a certificate from another CA is refused');
  const expired = await run('nbdinfo', ['--size', `nbds://localhost:${port()}/0/0?tls-certificates=${expiredCerts}`], { timeoutMs: 30_000 });
  t.not(expired.code, 0, 'an expired certificate of our own CA is refused');
  await untilLogged(() => refusalsSince(mark) >= 2);
  t.equal(refusalsSince(mark), 2, 'both refused by the server after the handshake (tls-refused), not by the client');
  const q = await runOk('qemu-img', ['info', '--output=json', '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${h2Certs}`, '--image-opts', `driver=nbd,host=localhost,port=${port()},export=0/0,tls-creds=tls0`], { timeoutMs: 30_000 });
  t.equal(JSON.parse(q.stdout)['virtual-size'], 32 * 1024 * 1024, 'qemu-img with a certificate');
});

t.test('a host that requires TLS: plaintext options get ERR_TLS_REQD, EXPORT_NAME disconnects; its own unix socket stays open', async (t) => {
  const creds = await run('nbdinfo', ['--size', `nbds://demo@localhost:${port()}/0/0`], { timeoutMs: 30_000 });
  t.not(creds.code, 0, 'nbds without credentials fails');
  t.match(creds.stderr, /psk|credential|certificate|TLS/i, `for want of credentials: ${creds.stderr.trim()}`);
  const h = await s.call('PUT', '/v1/hosts/demo/tls', { requireTls: true });
  t.equal(h.nbd.requireTls, true);
  const c = await WireClient.connect({ host: '127.0.0.1', port: Number(port()) });
  await c.greet();
  t.equal((await c.option(OPT.STRUCTURED_REPLY))[0]!.type, REP.ACK, 'structured replies may be negotiated before TLS');
  for (const [name, opt, data] of [
    ['GO', OPT.GO, WireClient.infoRequest('0/0', [])],
    ['INFO', OPT.INFO, WireClient.infoRequest('0/0', [])],
    ['LIST', OPT.LIST, undefined],
    ['LIST_META_CONTEXT', OPT.LIST_META_CONTEXT, WireClient.metaRequest('0/0', ['base:allocation'])],
    ['SET_META_CONTEXT', OPT.SET_META_CONTEXT, WireClient.metaRequest('0/0', ['base:allocation'])],
  ] as const) {
    const r = await c.option(opt, data);
    t.equal(r.length, 1, `${name}: one reply`);
    t.equal(r[0]!.type, REP.ERR_TLS_REQD, `${name}: ERR_TLS_REQD`);
    t.match(r[0]!.data.toString(), /requires TLS/, `${name}: says why`);
  }
  c.destroy();
  const mark = s.log.length;
  const e = await WireClient.connect({ host: '127.0.0.1', port: Number(port()) });
  await e.greet();
  e.sendOption(OPT.EXPORT_NAME, Buffer.from('0/0'));
  t.ok(await e.closed(30_000), 'EXPORT_NAME (which has no error reply) disconnects');
  await untilLogged(() => refusalsSince(mark) >= 1);
  t.equal(refusalsSince(mark), 1, 'logged as tls-refused');
  const plain = await run('nbdinfo', ['--size', s.tcpUri('0/0')], { timeoutMs: 30_000 });
  t.not(plain.code, 0, 'plain nbd:// refused');
  t.match(plain.stderr, /TLS/, `because TLS is required: ${plain.stderr.trim()}`);
  t.equal((await info(s.unixUri('demo', '0/0'))).tls, false, 'the host socket serves plaintext');
  const u = await WireClient.connect({ path: s.socket('demo') });
  await u.greet();
  const st = (await u.option(OPT.STARTTLS))[0]!;
  t.equal(st.type, REP.ERR_POLICY, 'no STARTTLS on a host socket');
  t.match(st.data.toString(), /shared NBD listener only/);
  u.destroy();
  t.equal((await info(`nbds://demo@localhost:${port()}/0/0?tls-psk-file=${demoPsk}`)).tls, true, 'TLS works');
});

t.test('STARTTLS: TLS 1.2 whatever the client offers; the identity picks the host; earlier negotiation is forgotten', async (t) => {
  // PSK: structured replies negotiated in plaintext must not survive the upgrade.
  const sock = await startTls(async (c) => {
    t.equal((await c.option(OPT.STRUCTURED_REPLY))[0]!.type, REP.ACK);
  });
  const ts = await tlsUpgrade(sock, { pskCallback: () => ({ identity: 'h2', psk: Buffer.from(h2Key, 'hex') }), ciphers: 'PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384' });
  t.equal(ts.getProtocol(), 'TLSv1.2', 'PSK session on TLS 1.2');
  const c = WireClient.over(ts);
  const go = await c.go('0/0');
  t.equal(go[go.length - 1]!.type, REP.ACK);
  t.equal(c.size, 32n * 1024n * 1024n, 'the PSK identity h2 selects h2\'s namespace');
  const magic = await new Promise<number>((resolve, reject) => {
    c.send(CMD.READ, 0, 512);
    c.reader.read(4).then((b) => resolve(b.readUInt32BE(0)), reject);
  });
  t.equal(magic, 0x67446698, 'a simple reply: structured replies were reset by STARTTLS');
  c.destroy();

  // X.509: a client that offers TLS 1.3 still gets 1.2 (PSK-only GnuTLS clients need it).
  const sock2 = await startTls();
  const ts2 = await tlsUpgrade(sock2, {
    cert: fs.readFileSync(path.join(h2Certs, 'client-cert.pem')),
    key: fs.readFileSync(path.join(h2Certs, 'client-key.pem')),
    maxVersion: 'TLSv1.3',
  });
  t.equal(ts2.getProtocol(), 'TLSv1.2', 'certificate session capped at TLS 1.2');
  const c2 = WireClient.over(ts2);
  await c2.go('0/0');
  t.equal(c2.size, 32n * 1024n * 1024n, 'CN=h2 selects h2');
  c2.destroy();

  // An expired certificate from our own CA completes the handshake and is then refused by blockgate.
  const mark = s.log.length;
  const sock3 = await startTls();
  const closed = await tlsUpgrade(sock3, {
    cert: fs.readFileSync(path.join(expiredCerts, 'client-cert.pem')),
    key: fs.readFileSync(path.join(expiredCerts, 'client-key.pem')),
  }).then(
    async (ts3) => {
      const c3 = WireClient.over(ts3);
      const gone = await c3.closed(30_000);
      c3.destroy();
      return gone;
    },
    (e: Error) => /disconnected|ECONNRESET|socket hang up/.test(e.message),
  );
  t.ok(closed, 'the server closes the session');
  await untilLogged(() => refusalsSince(mark) >= 1);
  t.equal(refusalsSince(mark), 1, 'refused as tls-refused (certificate not in date)');
});

t.test('keys and the TLS requirement survive a restart', async (t) => {
  await s.call('PUT', '/v1/hosts/demo/tls', { requireTls: true });
  await s.stop();
  s = await startServer(t, { dataDir, args: ['--log-level', 'info'] });
  t.equal((await s.call('GET', '/v1/hosts/demo')).nbd.requireTls, true);
  t.equal((await info(`nbds://demo@localhost:${port()}/0/0?tls-psk-file=${demoPsk}`)).size, 256 * 1024 * 1024);
  const plain = await run('nbdinfo', ['--size', s.tcpUri('0/0')], { timeoutMs: 30_000 });
  t.not(plain.code, 0, 'plaintext still refused');
  t.match(plain.stderr, /TLS/, plain.stderr.trim());
});
