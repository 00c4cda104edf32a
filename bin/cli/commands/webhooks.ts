import type { Command } from 'commander';
import { table } from '../output.js';
import { client, list, out, parseIntArg, verb } from '../context.js';

interface Webhook {
  name: string;
  url: string;
  classes: string[];
  maxAttempts: number;
  backoffMs: number;
  deliveries: { pending: number; delivered: number; dead: number };
  lastDelivery: { state: string; attempts: number; status: number | null; error: string | null; at: string } | null;
  secret?: string;
}

interface Delivery {
  id: number;
  notice: number;
  state: string;
  attempts: number;
  nextAttemptAt: string | null;
  lastStatus: number | null;
  lastError: string | null;
}

const hookTable = (ws: Webhook[]): string =>
  table(ws, [
    ['NAME', (w) => w.name],
    ['URL', (w) => w.url],
    ['CLASSES', (w) => (w.classes.length ? w.classes.join(',') : '(all)')],
    ['PENDING', (w) => String(w.deliveries.pending)],
    ['DELIVERED', (w) => String(w.deliveries.delivered)],
    ['DEAD', (w) => String(w.deliveries.dead)],
    ['LAST', (w) => (w.lastDelivery ? `${w.lastDelivery.state} ${w.lastDelivery.status ?? ''} ${w.lastDelivery.error ?? ''}`.trim() : '-')],
  ]);

const deliveryTable = (ds: Delivery[]): string =>
  table(ds, [
    ['ID', (d) => String(d.id)],
    ['NOTICE', (d) => String(d.notice)],
    ['STATE', (d) => d.state],
    ['ATTEMPTS', (d) => String(d.attempts)],
    ['NEXT', (d) => d.nextAttemptAt ?? '-'],
    ['LAST ERROR', (d) => d.lastError ?? '-'],
  ]);

const path = (name: string): string => `/v1/webhooks/${encodeURIComponent(name)}`;

/** `blockgate webhook …`: URLs that get merged change notices, HMAC-signed. */
export function register(program: Command): void {
  const wh = program.command('webhook').description('webhooks: merged change notices POSTed to a URL, signed with a secret');
  verb(wh, 'list', 'list webhooks and their delivery status').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call<{ webhooks: Webhook[] }>('GET', '/v1/webhooks');
    out(cmd, r, () => hookTable(r.webhooks));
  });
  verb(wh, 'show <name>', 'one webhook').action(async (name: string, _o, cmd: Command) => {
    const w = await client(cmd).call<Webhook>('GET', path(name));
    out(cmd, w, () => hookTable([w]));
  });
  verb(wh, 'create <name>', 'subscribe a URL (prints the secret: the only time it is shown)')
    .requiredOption('--url <url>', 'http(s) address the notices are POSTed to')
    .option('--secret <secret>', 'HMAC key (default: one made by the appliance)')
    .option('--classes <class,…>', 'only these change classes (vm.added, host.online, …)')
    .option('--max-attempts <n>', 'attempts before the dead-letter list', parseIntArg('attempts'))
    .option('--backoff-ms <ms>', 'first retry wait, doubled each time', parseIntArg('backoff'))
    .action(async (name: string, o: { url: string; secret?: string; classes?: string; maxAttempts?: number; backoffMs?: number }, cmd: Command) => {
      const w = await client(cmd).call<Webhook>('POST', '/v1/webhooks', {
        name,
        url: o.url,
        secret: o.secret,
        classes: o.classes ? list(o.classes) : undefined,
        maxAttempts: o.maxAttempts,
        backoffMs: o.backoffMs,
      });
      out(cmd, w, () => `${hookTable([w])}secret: ${w.secret}\n(keep it now: it is never shown again)\n`);
    });
  verb(wh, 'delete <name>', 'delete a webhook and its queue').action(async (name: string, _o, cmd: Command) => {
    await client(cmd).call('DELETE', path(name));
    out(cmd, { deleted: name }, () => `webhook ${name} deleted\n`);
  });
  verb(wh, 'deliveries <name>', "a webhook's deliveries, newest first")
    .option('--dead', 'only the dead-letter list')
    .option('--state <state>', 'pending, delivered or dead')
    .action(async (name: string, o: { dead?: boolean; state?: string }, cmd: Command) => {
      const state = o.dead ? 'dead' : o.state;
      const r = await client(cmd).call<{ deliveries: Delivery[] }>('GET', `${path(name)}/deliveries${state ? `?state=${encodeURIComponent(state)}` : ''}`);
      out(cmd, r, () => deliveryTable(r.deliveries));
    });
  verb(wh, 'retry <name> <delivery>', 'queue a dead delivery again').action(async (name: string, id: string, _o, cmd: Command) => {
    const d = await client(cmd).call<Delivery>('POST', `${path(name)}/deliveries/${parseIntArg('delivery id')(id)}/retry`);
    out(cmd, d, () => deliveryTable([d]));
  });
}
