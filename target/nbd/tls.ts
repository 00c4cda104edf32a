import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import tls from 'node:tls';
import type { NbdTls } from './connection.js';

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
    const read = (name: string): Promise<Buffer | undefined> => fs.promises.readFile(path.join(this.dir, name)).catch(() => undefined);
    const [cert, key, ca] = await Promise.all([read('server-cert.pem'), read('server-key.pem'), read('ca-cert.pem')]);
    try {
      this.ca = ca ? new crypto.X509Certificate(ca) : null;
      this.context = this.buildContext(cert, key, ca);
    } catch (e) {
      throw new Error(`cannot load the NBD TLS certificates in ${this.dir}: ${(e as Error).message}`);
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
