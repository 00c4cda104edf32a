import type { FastifyReply, FastifyRequest } from 'fastify';
import type { EventLog, EventRecord } from '../manager/index.js';

/** Keeps proxies and clients from timing an idle stream out. */
const HEARTBEAT_MS = 15_000;

/**
 * `GET /v1/events` as server-sent events: first the backlog after `since`
 * (or the Last-Event-ID a reconnecting client sends), then live events.
 * Subscribing before reading the backlog and skipping ids already sent
 * means no event falls between the two.
 */
export function serveEvents(log: EventLog, req: FastifyRequest, reply: FastifyReply, since: number | undefined): void {
  reply.hijack();
  const res = reply.raw;
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
  let lastSent = 0;
  const send = (e: EventRecord): void => {
    if (e.id <= lastSent) return;
    lastSent = e.id;
    res.write(`id: ${e.id}\nevent: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`);
  };
  const queued: EventRecord[] = [];
  let live = false;
  const unsubscribe = log.subscribe((e) => (live ? send(e) : queued.push(e)));
  res.write(': blockgate events\n\n');
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
  const beat = setInterval(() => res.write(': keep-alive\n\n'), HEARTBEAT_MS);
  const end = (): void => {
    clearInterval(beat);
    unsubscribe();
  };
  req.raw.on('close', end);
  res.on('close', end);
}
