import { z } from 'zod';
import { views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { noQuery } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const pem = (what: string): z.ZodString => z.string().min(1).max(65536).describe(what);
const setCertificate = z.strictObject({
  cert: pem('PEM certificate the listener presents (intermediates may follow it)'),
  key: pem('its unencrypted PEM private key; written 0600, never shown again'),
});

/** The appliance's NBD TLS certificates (per-host PSKs are under /v1/hosts/:name/tls). */
export const tls: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['tls'];
  const one = replies({ 200: views.tlsCertificateView });
  app.get('/v1/tls/certificate', { schema: { summary: "The NBD listener's server certificate and the CA of hosts' client certificates (never a key)", tags, querystring: noQuery, response: one } }, () =>
    m.tlsCertificates(),
  );
  app.put(
    '/v1/tls/certificate',
    { schema: { summary: 'Replace the server certificate and key (checked as a pair; new TLS sessions present it)', tags, body: setCertificate, response: one } },
    (req) => m.setTlsCertificate(req.body.cert, req.body.key),
  );
};
