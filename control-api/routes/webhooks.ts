import { z } from 'zod';
import { services } from '../../manager/index.js';
import { replies } from '../errors.js';
import { name, nameParam, noQuery } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const changeClass = z.enum(services.CHANGE_CLASSES);
const when = z.string();

const webhookView = z
  .strictObject({
    name,
    url: z.string(),
    classes: z.array(changeClass).describe('change classes delivered; empty: every class'),
    maxAttempts: z.number().int(),
    backoffMs: z.number().int(),
    createdAt: when,
    deliveries: z.strictObject({ pending: z.number().int(), delivered: z.number().int(), dead: z.number().int() }),
    lastDelivery: z
      .strictObject({ id: z.number().int(), state: z.string(), attempts: z.number().int(), status: z.number().int().nullable(), error: z.string().nullable(), at: when })
      .nullable()
      .describe('the last delivery attempted'),
  })
  .meta({ id: 'Webhook' });

const deliveryView = z
  .strictObject({
    id: z.number().int(),
    notice: z.number().int(),
    state: z.enum(['pending', 'delivered', 'dead']),
    attempts: z.number().int(),
    nextAttemptAt: when.nullable(),
    lastStatus: z.number().int().nullable(),
    lastError: z.string().nullable(),
    createdAt: when,
    finishedAt: when.nullable(),
    body: z.unknown().describe('the signed body, as sent'),
  })
  .meta({ id: 'WebhookDelivery' });

const createWebhook = z.strictObject({
  name,
  url: z.string().min(1).max(2048).describe('http:// or https:// address the notices are POSTed to'),
  secret: z.string().min(16).max(256).optional().describe('HMAC key; the appliance makes one when left out (shown once, in this reply)'),
  classes: z.array(changeClass).max(services.CHANGE_CLASSES.length).optional(),
  maxAttempts: z.number().int().min(1).max(100).optional().describe('attempts before a delivery moves to the dead-letter list (default 8)'),
  backoffMs: z.number().int().min(0).max(3_600_000).optional().describe('wait after the first failure, doubled after each next one (default 1000)'),
});

const deliveriesQuery = z.strictObject({
  state: z.enum(['pending', 'delivered', 'dead']).optional().describe('dead: the dead-letter list'),
  limit: z.coerce.number().int().min(1).max(1000).default(100),
});

export const webhooks: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['webhooks'];
  const w = m.services.webhooks;
  app.get('/v1/webhooks', { schema: { summary: 'List webhooks with their delivery status', tags, querystring: noQuery, response: replies({ 200: z.strictObject({ webhooks: z.array(webhookView) }) }) } }, () => ({
    webhooks: w.list(),
  }));
  app.get('/v1/webhooks/:name', { schema: { summary: 'One webhook', tags, params: nameParam, querystring: noQuery, response: replies({ 200: webhookView }) } }, (req) => w.show(req.params.name));
  app.post(
    '/v1/webhooks',
    { schema: { summary: 'Subscribe a URL to merged change notices (the secret is returned here only)', tags, body: createWebhook, response: replies({ 201: webhookView.extend({ secret: z.string() }) }) } },
    async (req, reply) => reply.code(201).send(await w.create(req.body)),
  );
  app.delete('/v1/webhooks/:name', { schema: { summary: 'Delete a webhook and its queue', tags, params: nameParam, response: replies({ 204: z.undefined() }) } }, async (req, reply) => {
    await w.remove(req.params.name);
    return reply.code(204).send();
  });
  app.get(
    '/v1/webhooks/:name/deliveries',
    { schema: { summary: "A webhook's deliveries, newest first (?state=dead: the dead-letter list)", tags, params: nameParam, querystring: deliveriesQuery, response: replies({ 200: z.strictObject({ deliveries: z.array(deliveryView) }) }) } },
    (req) => ({ deliveries: w.deliveries(req.params.name, req.query.state, req.query.limit) }),
  );
  app.post(
    '/v1/webhooks/:name/deliveries/:id/retry',
    {
      schema: {
        summary: 'Queue a dead delivery again with fresh attempts',
        tags,
        params: z.strictObject({ name, id: z.coerce.number().int().positive() }),
        response: replies({ 200: deliveryView }),
      },
    },
    (req) => w.retry(req.params.name, req.params.id),
  );
};
