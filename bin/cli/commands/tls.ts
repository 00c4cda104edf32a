import fs from 'node:fs';
import type { Command } from 'commander';
import { CliError, EXIT } from '../client.js';
import { client, out, verb } from '../context.js';

interface CertInfo {
  subject: string;
  issuer: string;
  subjectAltName: string | null;
  validFrom: string;
  validTo: string;
  fingerprint256: string;
}
interface Certificates {
  server: CertInfo | null;
  clientCa: CertInfo | null;
}

const show = (c: Certificates): string => {
  const one = (title: string, x: CertInfo | null, none: string): string =>
    x
      ? `${title}\n  subject      ${x.subject}\n  issuer       ${x.issuer}\n  alt names    ${x.subjectAltName ?? '-'}\n  valid        ${x.validFrom} .. ${x.validTo}\n  sha256       ${x.fingerprint256}\n`
      : `${title}\n  ${none}\n`;
  return one('server certificate', c.server, '(none: PSK only)') + one('client CA', c.clientCa, '(none: no certificate hosts)');
};

async function readPem(file: string, what: string): Promise<string> {
  try {
    return await fs.promises.readFile(file, 'utf8');
  } catch (e) {
    throw new CliError(`cannot read the ${what} ${file}: ${(e as Error).message}`, EXIT.USAGE, 'BAD_REQUEST');
  }
}

/** `blockgate tls …`: the NBD listener's certificates (per-host keys are `blockgate host psk-…`). */
export function register(program: Command): void {
  const tls = program.command('tls').description("the NBD listener's TLS certificates (hosts' PSKs: blockgate host psk-create)");
  verb(tls, 'cert-show', "the server certificate and the client CA: subject, issuer, validity, fingerprint (never a key)").action(async (_o, cmd: Command) => {
    const r = await client(cmd).call<Certificates>('GET', '/v1/tls/certificate');
    out(cmd, r, () => show(r));
  });
  verb(tls, 'cert-set', 'replace the server certificate and its key (checked as a pair; the key is stored 0600)')
    .requiredOption('--cert <file>', 'PEM certificate')
    .requiredOption('--key <file>', 'its unencrypted PEM private key')
    .action(async (o: { cert: string; key: string }, cmd: Command) => {
      const body = { cert: await readPem(o.cert, 'certificate'), key: await readPem(o.key, 'key') };
      const r = await client(cmd).call<Certificates>('PUT', '/v1/tls/certificate', body);
      out(cmd, r, () => show(r));
    });
}
