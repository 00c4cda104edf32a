import { z } from 'zod';
import { views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { intQuery } from '../schemas.js';
import { serveEvents } from '../sse.js';
import type { ResourcePlugin } from './context.js';

const eventsQuery = z.strictObject({
  since: intQuery.optional().describe('events after this id'),
  limit: z.coerce.number().int().min(1).max(1000).default(1000),
  stream: z.stringbool().optional().describe('server-sent events (as Accept: text/event-stream)'),
});

export const events: ResourcePlugin = async (app, { manager: m }) => {
  app.get(
    '/v1/events',
    {
      schema: {
        summary: 'Event log: JSON with ?since=ID, or a server-sent-events stream (Accept: text/event-stream)',
        tags: ['events'],
        querystring: eventsQuery,
        response: replies({ 200: z.strictObject({ events: z.array(views.eventView) }) }),
      },
    },
    async (req, reply) => {
      if (req.query.stream || (req.headers.accept ?? '').includes('text/event-stream')) {
        const last = Number(req.headers['last-event-id']);
        serveEvents(m.events, req, reply, req.query.since ?? (Number.isFinite(last) ? last : undefined));
        return reply;
      }
      return reply.send({ events: m.events.since(req.query.since ?? 0, req.query.limit) });
    },
  );
};
