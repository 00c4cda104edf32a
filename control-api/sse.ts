import type { FastifyReply, FastifyRequest } from 'fastify';
import type { EventLog, EventRecord, services } from '../manager/index.js';

/** Keeps proxies and clients from timing an idle stream out. */
const HEARTBEAT_MS = 15_000;

/**
 * Opens a server-sent-events stream on the request; `subscribe` is called
 * with the writer and returns its unsubscribe, called when the stream ends.
 */
function openStream(req: FastifyRequest, reply: FastifyReply, banner: string, subscribe: (write: (id: number, event: string, data: unknown) => void) => () => void): void {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  res.write(`: ${banner}\n\n`);
  const unsubscribe = subscribe((id, event, data) => res.write(`id: ${id}\nevent: ${event}\ndata: ${JSON.stringify(data)}\n\n`));
  const beat = setInterval(() => res.write(': keep-alive\n\n'), HEARTBEAT_MS);
  const end = (): void => {
    clearInterval(beat);
    unsubscribe();
  };
  req.raw.on('close', end);
  res.on('close', end);
}

/**
 * `GET /v1/events` as server-sent events: first the backlog after `since`
 * (or the Last-Event-ID a reconnecting client sends), then live events.
 * Subscribing before reading the backlog and skipping ids already sent
 * means no event falls between the two.
 */
export function serveEvents(log: EventLog, req: FastifyRequest, reply: FastifyReply, since: number | undefined): void {
  openStream(req, reply, 'blockgate events', (write) => {
    let lastSent = 0;
    const send = (e: EventRecord): void => {
      if (e.id <= lastSent) return;
      lastSent = e.id;
      write(e.id, e.type, e);
    };
    const queued: EventRecord[] = [];
    let live = false;
    const unsubscribe = log.subscribe((e) => (live ? send(e) : queued.push(e)));
    if (since !== undefined) {
      let batch: EventRecord[];
      let from = since;
      do {
        batch = log.since(from, 1000);
        for (const e of batch) send(e);
        from = batch.at(-1)?.id ?? from;
      } while (batch.length === 1000);
    }
    for (const e of queued.splice(0)) send(e);
    live = true;
    return unsubscribe;
  });
}

/**
 * The merged stream (`?merged=1`): one `changed` event per merge window. A
 * reconnecting client gets the notices it missed that are still kept.
 */
export function serveNotices(notices: services.Services['notices'], req: FastifyRequest, reply: FastifyReply, since: number | undefined): void {
  openStream(req, reply, 'blockgate change notices', (write) => {
    if (since !== undefined) for (const n of notices.since(since)) write(n.id, n.type, n);
    return notices.subscribe((n) => write(n.id, n.type, n));
  });
}
