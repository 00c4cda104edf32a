import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type net from 'node:net';
import tls from 'node:tls';
import t from 'tap';
import { cli, cliOk } from '../helpers/cli.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { requireTools, runOk } from '../helpers/tools.js';
import { OPT, REP, WireClient } from '../helpers/nbd-wire.js';

// The appliance's NBD server certificate, set and shown through the API and the CLI of a real
// `blockgate serve`: checked as a pair, key stored 0600 and never shown, presented by the next
// STARTTLS handshake, and never left as a certificate with another's key after a crash.

requireTools('openssl');

const work = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-tlscert-'));
t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
const f = (name: string): string => path.join(work, name);

async function selfSigned(name: string, cn: string): Promise<void> {
  await runOk('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', f(`${name}-key.pem`), '-out', f(`${name}-cert.pem`), '-days', '2', '-subj', `/CN=${cn}`, '-addext', 'subjectAltName=IP:127.0.0.1'], { timeoutMs: 60_000 });
}

/** A client CA in the data directory and host demo's client certificate (CN=demo), so a handshake identifies a host and is kept. */
function withClientCa(dataDir: string): string {
  fs.mkdirSync(path.join(dataDir, 'tls'), { recursive: true });
  fs.copyFileSync(f('ca-cert.pem'), path.join(dataDir, 'tls', 'ca-cert.pem'));
  return dataDir;
}

/** STARTTLS on the shared listener as host demo (client certificate), then the certificate the server presents. */
async function presented(s: TestServer): Promise<tls.PeerCertificate> {
  const [host, port] = [s.nbd.slice(0, s.nbd.lastIndexOf(':')), Number(s.nbd.slice(s.nbd.lastIndexOf(':') + 1))];
  const c = await WireClient.connect({ host, port });
  await c.greet();
  const r = await c.option(OPT.STARTTLS);
  if (r[0]!.type !== REP.ACK) throw new Error(`STARTTLS answered ${r[0]!.type.toString(16)}`);
  const sock = c.release() as net.Socket;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('TLS handshake: no answer within 30 s')), 30_000);
    const ts = tls.connect({ socket: sock, rejectUnauthorized: false, checkServerIdentity: () => undefined, cert: fs.readFileSync(f('demo-cert.pem')), key: fs.readFileSync(f('demo-key.pem')) }, () => {
      clearTimeout(timer);
      const cert = ts.getPeerCertificate();
      ts.destroy();
      resolve(cert);
    });
    ts.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
  });
}

t.before(async () => {
  await selfSigned('one', 'blockgate-one');
  await selfSigned('two', 'blockgate-two');
  await selfSigned('three', 'blockgate-three');
  await selfSigned('ca', 'blockgate-test-ca');
  fs.writeFileSync(f('demo.ext'), 'extendedKeyUsage=clientAuth\n');
  await runOk('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', f('demo-key.pem'), '-out', f('demo.csr'), '-subj', '/CN=demo'], { timeoutMs: 60_000 });
  await runOk('openssl', ['x509', '-req', '-in', f('demo.csr'), '-CA', f('ca-cert.pem'), '-CAkey', f('ca-key.pem'), '-CAcreateserial', '-out', f('demo-cert.pem'), '-days', '2', '-extfile', f('demo.ext')], { timeoutMs: 60_000 });
});

t.test('certificate verbs: show, set (API and CLI), bad input refused, the listener presents it', async (t) => {
  const s = await startServer(t, { dataDir: withClientCa(fs.mkdtempSync(path.join(work, 'verbs-'))) });
  const none = await s.call('GET', '/v1/tls/certificate');
  t.equal(none.server, null, 'a new appliance has no server certificate: PSK only');
  t.equal(none.clientCa.subject, 'CN=blockgate-test-ca', 'the client CA is shown');

  const pem = (name: string): string => fs.readFileSync(f(name), 'utf8');
  const bad: [string, unknown, RegExp][] = [
    ['not PEM', { cert: 'hello', key: pem('one-key.pem') }, /cert is not a PEM certificate/],
    ['a mangled certificate', { cert: pem('one-cert.pem').replace(/\n[A-Za-z0-9+/]{20}/, '\nAAAAAAAAAAAAAAAAAAAA'), key: pem('one-key.pem') }, /cert is not a valid X\.509 certificate/],
    ['no key', { cert: pem('one-cert.pem'), key: 'nope' }, /key is not an unencrypted PEM private key/],
    ["another certificate's key", { cert: pem('one-cert.pem'), key: pem('two-key.pem') }, /key does not belong to the certificate/],
    ['a field too many', { cert: pem('one-cert.pem'), key: pem('one-key.pem'), ca: 'x' }, /ca/],
  ];
  for (const [what, body, msg] of bad) {
    const r = await s.request('PUT', '/v1/tls/certificate', body);
    t.equal(r.status, 400, what);
    t.equal(r.body.error.code, 'BAD_REQUEST', what);
    t.match(r.body.error.message, msg, what);
  }
  t.notOk(fs.existsSync(path.join(s.dataDir, 'tls', 'server-cert.pem')), 'nothing written by refused requests');

  const set = await s.call('PUT', '/v1/tls/certificate', { cert: pem('one-cert.pem'), key: pem('one-key.pem') });
  t.equal(set.server.subject, 'CN=blockgate-one');
  t.equal(set.server.issuer, 'CN=blockgate-one');
  t.match(set.server.subjectAltName, /127\.0\.0\.1/);
  t.ok(Date.parse(set.server.validTo) > Date.now());
  t.notOk(JSON.stringify(set).includes('PRIVATE KEY'), 'the key is never shown');
  const keyFile = path.join(s.dataDir, 'tls', 'server-key.pem');
  t.equal(fs.statSync(keyFile).mode & 0o777, 0o600, 'the key file is 0600');
  t.equal(fs.readFileSync(keyFile, 'utf8'), pem('one-key.pem'));
  t.same(await s.call('GET', '/v1/tls/certificate'), set, 'GET shows what PUT set');
  t.equal((await presented(s)).fingerprint256, set.server.fingerprint256, 'the next handshake presents the new certificate');

  // The CLI: cert-set reads the files, cert-show prints the fingerprint; a missing file is a usage error.
  const c = await cliOk(s, ['tls', 'cert-set', '--cert', f('two-cert.pem'), '--key', f('two-key.pem'), '--json']);
  t.equal(c.json.server.subject, 'CN=blockgate-two');
  const shown = await cliOk(s, ['tls', 'cert-show']);
  t.match(shown.stdout, /subject +CN=blockgate-two/);
  t.match(shown.stdout, new RegExp(c.json.server.fingerprint256));
  t.notMatch(shown.stdout, /PRIVATE KEY/);
  t.equal((await presented(s)).fingerprint256, c.json.server.fingerprint256);
  const mismatch = await cli(s, ['tls', 'cert-set', '--cert', f('one-cert.pem'), '--key', f('two-key.pem')]);
  t.equal(mismatch.code, 2, 'a mismatched pair is exit 2 (bad request)');
  t.match(mismatch.stderr, /key does not belong to the certificate/);
  const missing = await cli(s, ['tls', 'cert-set', '--cert', f('nope.pem'), '--key', f('two-key.pem')]);
  t.not(missing.code, 0);
  t.match(missing.stderr, /cannot read the certificate/);
  t.equal((await presented(s)).fingerprint256, c.json.server.fingerprint256, 'a refused change leaves the certificate as it was');
});

t.test('certificate swap: a crash between the two renames comes back as the new pair', async (t) => {
  const dataDir = withClientCa(fs.mkdtempSync(path.join(work, 'crash-')));
  const pem = (name: string): string => fs.readFileSync(f(name), 'utf8');
  const a = await startServer(t, { dataDir });
  await a.call('PUT', '/v1/tls/certificate', { cert: pem('one-cert.pem'), key: pem('one-key.pem') });
  await a.stop();
  // kill -9 after the certificate is renamed into place and before its key is.
  const b = await startServer(t, { dataDir, env: { BLOCKGATE_FAULTS: 'crash:tls-cert-swap' } });
  await b.request('PUT', '/v1/tls/certificate', { cert: pem('three-cert.pem'), key: pem('three-key.pem') }).then(
    () => t.fail('the appliance answered instead of crashing'),
    () => t.pass('the appliance died mid-swap'),
  );
  await b.kill();
  t.equal(fs.readFileSync(path.join(dataDir, 'tls', 'server-cert.pem'), 'utf8'), pem('three-cert.pem'), 'the crash left the new certificate beside the old key');
  const c = await startServer(t, { dataDir });
  const after = await c.call('GET', '/v1/tls/certificate');
  t.equal(after.server.subject, 'CN=blockgate-three', 'the swap was finished at start');
  t.equal(fs.readFileSync(path.join(dataDir, 'tls', 'server-key.pem'), 'utf8'), pem('three-key.pem'));
  t.equal(fs.statSync(path.join(dataDir, 'tls', 'server-key.pem')).mode & 0o777, 0o600);
  t.equal((await presented(c)).fingerprint256, after.server.fingerprint256);
});
