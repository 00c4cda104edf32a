import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import { badRequest } from '../../common/errors.js';
import { writeAtomically } from '../../common/files.js';
import type { NbdTls } from './connection.js';

const SERVER_CERT = 'server-cert.pem';
const SERVER_KEY = 'server-key.pem';
const CLIENT_CA = 'ca-cert.pem';
/** A new pair is staged under these names first (see setServerCertificate). */
const NEXT = '.new';

/**
 * TLS identities for the shared NBD listener, kept in DATA/tls:
 *
 *   psk/<host>.key        the host's pre-shared key, hex (PSK identity = host name)
 *   server-cert.pem       server certificate and key (optional; PSK needs none)
 *   server-key.pem
 *   ca-cert.pem           CA that signs client certificates (CN = host name)
 *
 * The same names libnbd and qemu use for their certificate directories, so
 * an admin can reuse one layout. Keys are held in memory because Node asks
 * for a PSK synchronously during the handshake; the control API updates both.
 *
 * TLS 1.2 only: Node's pskCallback serves TLS 1.2 PSK suites, and a GnuTLS
 * client holding only a PSK (libnbd, qemu) that is offered TLS 1.3 by a
 * server with a certificate fails with "insufficient credentials". In 1.2
 * the client's cipher list (PSK or certificate suites) picks the method. The
 * NBD spec asks for TLS >= 1.2.
 *
 * Client certificates are checked here, not by OpenSSL's verify (a bare
 * TLSSocket does not report it): issued and signed by our CA, in date.
 */
const PSK_AND_CERT_CIPHERS = `${tls.DEFAULT_CIPHERS.split(':').filter((c) => c !== '!PSK').join(':')}:ECDHE-PSK:DHE-PSK:PSK`;

export class NbdTlsKeys implements NbdTls {
  private readonly dir: string;
  private readonly psk = new Map<string, Buffer>();
  private readonly pskIdentity = new WeakMap<tls.TLSSocket, string>();
  /** Identities issued to a host besides its own name (a migration's fresh key): identity → host. */
  private readonly issued = new Map<string, string>();
  private context: tls.SecureContext | null = null;
  private ca: crypto.X509Certificate | null = null;
  private caPem: Buffer | undefined;
  private server: crypto.X509Certificate | null = null;

  constructor(dir: string) {
    this.dir = dir;
  }

  get pskDir(): string {
    return path.join(this.dir, 'psk');
  }

  /** Reads every key and certificate (start-up). */
  async load(): Promise<void> {
    await fs.promises.mkdir(this.pskDir, { recursive: true, mode: 0o700 });
    for (const f of await fs.promises.readdir(this.pskDir)) {
      if (!f.endsWith('.key')) continue;
      const hex = (await fs.promises.readFile(path.join(this.pskDir, f), 'utf8')).trim();
      if (/^[0-9a-fA-F]{2,}$/.test(hex) && hex.length % 2 === 0) this.psk.set(f.slice(0, -4), Buffer.from(hex, 'hex'));
    }
    await this.finishSwap();
    const read = (name: string): Promise<Buffer | undefined> => fs.promises.readFile(path.join(this.dir, name)).catch(() => undefined);
    const [cert, key, ca] = await Promise.all([read(SERVER_CERT), read(SERVER_KEY), read(CLIENT_CA)]);
    try {
      this.ca = ca ? new crypto.X509Certificate(ca) : null;
      this.caPem = ca;
      this.server = cert && key ? new crypto.X509Certificate(cert) : null;
      this.context = this.buildContext(cert, key, ca);
    } catch (e) {
      throw new Error(`cannot load the NBD TLS certificates in ${this.dir}: ${(e as Error).message}`);
    }
  }

  /** The server certificate the listener presents, and the CA client certificates must be signed by. */
  certificates(): { server: crypto.X509Certificate | null; clientCa: crypto.X509Certificate | null } {
    return { server: this.server, clientCa: this.ca };
  }

  get serverKeyFile(): string {
    return path.join(this.dir, SERVER_KEY);
  }

  /**
   * Replaces the server certificate and key: checked as a pair first, then
   * written so that a crash leaves either the old pair or the new one, never
   * a certificate with another's key (which would stop the next start):
   * both staged as *.new (cert first), then renamed cert first, key last.
   * finishSwap() at start rolls a half-done swap forward or back. Sessions
   * already up keep the old one; new handshakes present the new one.
   */
  async setServerCertificate(certPem: string, keyPem: string, fault: (point: string) => void = () => undefined): Promise<crypto.X509Certificate> {
    const cert = checkCertificate(certPem, 'cert');
    let key: crypto.KeyObject;
    try {
      key = crypto.createPrivateKey(keyPem);
    } catch (e) {
      throw badRequest(`key is not an unencrypted PEM private key: ${(e as Error).message}`);
    }
    if (key.type !== 'private') throw badRequest('key is not a private key');
    if (!cert.checkPrivateKey(key)) throw badRequest(`key does not belong to the certificate (subject ${cert.subject.replace(/\n/g, ', ')}): their public keys differ`);
    let context: tls.SecureContext;
    try {
      context = this.buildContext(Buffer.from(certPem), Buffer.from(keyPem), this.caPem);
    } catch (e) {
      throw badRequest(`the certificate and key cannot serve TLS: ${(e as Error).message}`);
    }
    const file = (name: string): string => path.join(this.dir, name);
    await fs.promises.mkdir(this.dir, { recursive: true, mode: 0o700 });
    await writeAtomically(file(SERVER_CERT + NEXT), certPem, 0o644);
    await writeAtomically(file(SERVER_KEY + NEXT), keyPem, 0o600);
    fault('tls-cert-staged');
    await fs.promises.rename(file(SERVER_CERT + NEXT), file(SERVER_CERT));
    fault('tls-cert-swap');
    await fs.promises.rename(file(SERVER_KEY + NEXT), file(SERVER_KEY));
    await syncDir(this.dir);
    this.context = context;
    this.server = cert;
    return cert;
  }

  /** After a crash in setServerCertificate: a staged key means the pair was complete (forward), a staged cert alone that it was not (back). */
  private async finishSwap(): Promise<void> {
    const file = (name: string): string => path.join(this.dir, name);
    const staged = async (name: string): Promise<boolean> => fs.promises.access(file(name + NEXT)).then(() => true, () => false);
    const [cert, key] = [await staged(SERVER_CERT), await staged(SERVER_KEY)];
    if (key) {
      if (cert) await fs.promises.rename(file(SERVER_CERT + NEXT), file(SERVER_CERT));
      await fs.promises.rename(file(SERVER_KEY + NEXT), file(SERVER_KEY));
      await syncDir(this.dir);
    } else if (cert) {
      await fs.promises.rm(file(SERVER_CERT + NEXT), { force: true });
    }
  }

  private buildContext(cert: Buffer | undefined, key: Buffer | undefined, ca: Buffer | undefined): tls.SecureContext {
    return tls.createSecureContext({
      ...(cert && key ? { cert, key } : {}),
      ...(ca ? { ca } : {}),
      minVersion: 'TLSv1.2',
      maxVersion: 'TLSv1.2',
      // Node's default list ends in "!PSK", which no later "+PSK" can undo.
      ciphers: PSK_AND_CERT_CIPHERS,
    });
  }

  /**
   * Installs (or replaces) a key in memory; the caller has written the file.
   * `host` set: the identity is one issued to that host (it acts as the host).
   */
  setPsk(identity: string, key: Buffer, host?: string): void {
    this.psk.set(identity, key);
    if (host !== undefined) this.issued.set(identity, host);
  }

  deletePsk(identity: string): void {
    this.psk.delete(identity);
    this.issued.delete(identity);
  }

  hasPsk(host: string): boolean {
    return this.psk.has(host);
  }

  options(): tls.TLSSocketOptions {
    return {
      secureContext: this.context ?? tls.createSecureContext({ minVersion: 'TLSv1.2', maxVersion: 'TLSv1.2' }),
      // Ask for a client certificate, but decide ourselves: a PSK client has none.
      requestCert: this.ca !== null,
      rejectUnauthorized: false,
      pskCallback: (socket: tls.TLSSocket, identity: string) => {
        const key = this.psk.get(identity);
        if (!key) return null;
        this.pskIdentity.set(socket, identity);
        return key;
      },
    } as tls.TLSSocketOptions;
  }

  identify(sock: tls.TLSSocket): string | null {
    const viaPsk = this.pskIdentity.get(sock);
    if (viaPsk) return this.issued.get(viaPsk) ?? viaPsk;
    // A certificate counts only when our CA issued and signed it and it is in date.
    const peer = sock.getPeerX509Certificate();
    if (!peer || !this.ca) return null;
    const now = Date.now();
    if (!peer.checkIssued(this.ca) || !peer.verify(this.ca.publicKey)) return null;
    if (now < Date.parse(peer.validFrom) || now > Date.parse(peer.validTo)) return null;
    const cn = /(?:^|\n)CN=([^\n]+)/.exec(peer.subject)?.[1];
    return cn && cn.length > 0 ? cn : null;
  }
}

/** A PEM X.509 certificate in date, or a 400 saying what is wrong with it. */
function checkCertificate(pem: string, field: string): crypto.X509Certificate {
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw badRequest(`${field} is not a PEM certificate (no -----BEGIN CERTIFICATE----- line)`);
  let cert: crypto.X509Certificate;
  try {
    cert = new crypto.X509Certificate(pem);
  } catch (e) {
    throw badRequest(`${field} is not a valid X.509 certificate: ${(e as Error).message}`);
  }
  if (Date.parse(cert.validTo) < Date.now()) throw badRequest(`${field} expired on ${new Date(cert.validTo).toISOString()}`);
  return cert;
}

async function syncDir(dir: string): Promise<void> {
  const d = await fs.promises.open(dir, 'r');
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}
