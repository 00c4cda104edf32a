import { z } from 'zod';
import { services, views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { intQuery, noQuery } from '../schemas.js';
import { serveEvents, serveNotices } from '../sse.js';
import type { ResourcePlugin } from './context.js';

const eventsQuery = z.strictObject({
  since: intQuery.optional().describe('events after this id'),
  limit: z.coerce.number().int().min(1).max(1000).default(1000),
  stream: z.stringbool().optional().describe('server-sent events (as Accept: text/event-stream)'),
  merged: z.stringbool().optional().describe('the stream carries merged change notices (one per window) instead of raw events'),
});

const changedObject = z.strictObject({ kind: z.enum(['vm', 'host', 'volume', 'array']), name: z.string(), classes: z.array(z.enum(services.CHANGE_CLASSES)), href: z.string() });
export const noticeView = z
  .strictObject({
    type: z.literal('changed'),
    id: z.number().int().describe('the last event merged into it'),
    at: z.string(),
    windowMs: z.number().int(),
    events: z.strictObject({ first: z.number().int(), last: z.number().int(), count: z.number().int() }),
    objects: z.array(changedObject),
  })
  .meta({ id: 'ChangeNotice' });
const mergeWindow = z.strictObject({ windowMs: z.number().int().min(0).max(600_000).describe('how long changes are gathered into one notice') });

export const events: ResourcePlugin = async (app, { manager: m }) => {
  app.get(
    '/v1/events',
    {
      schema: {
        summary: 'Event log: JSON with ?since=ID, or a server-sent-events stream (Accept: text/event-stream; ?merged=1 for merged change notices)',
        tags: ['events'],
        querystring: eventsQuery,
        response: replies({ 200: z.strictObject({ events: z.array(views.eventView) }) }),
      },
    },
    async (req, reply) => {
      const stream = req.query.stream || (req.headers.accept ?? '').includes('text/event-stream');
      const last = Number(req.headers['last-event-id']);
      const since = req.query.since ?? (Number.isFinite(last) ? last : undefined);
      if (stream && req.query.merged) {
        serveNotices(m.services.notices, req, reply, since);
        return reply;
      }
      if (stream) {
        serveEvents(m.events, req, reply, since);
        return reply;
      }
      return reply.send({ events: m.events.since(req.query.since ?? 0, req.query.limit) });
    },
  );
  app.get(
    '/v1/events/notices',
    {
      schema: {
        summary: 'The latest merged change notices (the last 100 kept in memory), after ?since=ID',
        tags: ['events'],
        querystring: z.strictObject({ since: intQuery.optional() }),
        response: replies({ 200: z.strictObject({ notices: z.array(noticeView) }) }),
      },
    },
    (req) => ({ notices: m.services.notices.since(req.query.since ?? 0) }),
  );
  app.get('/v1/events/merge-window', { schema: { summary: 'The merge window of change notices', tags: ['events'], querystring: noQuery, response: replies({ 200: mergeWindow }) } }, () => ({
    windowMs: m.services.mergeWindowMs(),
  }));
  app.put('/v1/events/merge-window', { schema: { summary: 'Set the merge window of change notices (setting events.merge_window_ms)', tags: ['events'], body: mergeWindow, response: replies({ 200: mergeWindow }) } }, (req) => {
    m.setSetting('events.merge_window_ms', String(req.body.windowMs));
    return { windowMs: m.services.mergeWindowMs() };
  });
};
