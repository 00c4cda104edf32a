import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { badRequest, conflict, notFound } from '../../common/errors.js';
import type { Db } from '../db.js';
import { checkName } from '../model.js';
import { CHANGE_CLASSES, type ChangeClass, type ChangeNotice } from './notices.js';

/**
 * Webhooks: each subscription gets the merged change notices it asked for,
 * as an HMAC-signed POST. Every notice is first written to a delivery queue
 * in the control database, so a restart or a receiver that is down loses
 * nothing: a failed delivery is retried with exponential backoff until it
 * lands or runs out of attempts and moves to the dead-letter list.
 */

export const SIGNATURE_HEADER = 'blockgate-signature';
export const DELIVERY_HEADER = 'blockgate-delivery';

/** The longest wait between two attempts, whatever the backoff has grown to. */
const MAX_BACKOFF_MS = 10 * 60_000;
/** How long a receiver may take to answer one delivery. */
const DELIVERY_TIMEOUT_MS = 10_000;

/** A webhooks table row (the configuration document exports these, without secrets). */
export interface WebhookRow {
  id: number;
  name: string;
  url: string;
  classes: string;
  max_attempts: number;
  backoff_ms: number;
  created_at: string;
}

export interface DeliveryRow {
  id: number;
  webhook_id: number;
  notice: number;
  body: string;
  state: 'pending' | 'delivered' | 'dead';
  attempts: number;
  next_at: number;
  last_status: number | null;
  last_error: string | null;
  created_at: string;
  finished_at: string | null;
}

export interface WebhookInfo {
  name: string;
  url: string;
  classes: ChangeClass[];
  maxAttempts: number;
  backoffMs: number;
  createdAt: string;
  deliveries: { pending: number; delivered: number; dead: number };
  lastDelivery: { id: number; state: string; attempts: number; status: number | null; error: string | null; at: string } | null;
}

export interface DeliveryInfo {
  id: number;
  notice: number;
  state: 'pending' | 'delivered' | 'dead';
  attempts: number;
  nextAttemptAt: string | null;
  lastStatus: number | null;
  lastError: string | null;
  createdAt: string;
  finishedAt: string | null;
  body: unknown;
}

export interface WebhookCreate {
  name: string;
  url: string;
  secret?: string | undefined;
  classes?: ChangeClass[] | undefined;
  maxAttempts?: number | undefined;
  backoffMs?: number | undefined;
}

/** `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: what a receiver recomputes with its secret. */
export function signature(secret: string, t: number, body: string): string {
  return `t=${t},v1=${crypto.createHmac('sha256', secret).update(`${t}.${body}`).digest('hex')}`;
}

export class Webhooks {
  private readonly secrets = new Map<number, string>();
  private readonly inFlight = new Map<number, AbortController>();
  private timer: NodeJS.Timeout | null = null;
  private stopped = true;

  constructor(
    private readonly db: Db,
    private readonly dataDir: string,
    private readonly log: Logger,
  ) {}

  private get dir(): string {
    return path.join(this.dataDir, 'webhooks');
  }

  private secretFile(id: number): string {
    return path.join(this.dir, `${id}.secret`);
  }

  /** Loads every secret (they live in DATA/webhooks/<id>.secret, mode 0600) and starts delivering. */
  async start(): Promise<void> {
    for (const w of this.rows()) {
      try {
        this.secrets.set(w.id, (await fs.promises.readFile(this.secretFile(w.id), 'utf8')).trim());
      } catch (e) {
        this.log.error({ op: 'webhook.secret', webhook: w.name, err: e }, 'webhook secret is missing: its deliveries wait until it is recreated');
      }
    }
    this.stopped = false;
    this.pump();
  }

  stop(): void {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    // An attempt cut short stays pending, uncounted: it is sent again after the restart.
    for (const a of this.inFlight.values()) a.abort();
  }

  private rows(): WebhookRow[] {
    return this.db.prepare('SELECT * FROM webhooks ORDER BY id').all() as WebhookRow[];
  }

  private row(name: string): WebhookRow {
    const w = this.db.prepare('SELECT * FROM webhooks WHERE name = ?').get(name) as WebhookRow | undefined;
    if (!w) throw notFound('webhook', name);
    return w;
  }

  // ---- subscriptions --------------------------------------------------------

  /** Creates a subscription; the reply carries the secret, the only time it is ever shown. */
  async create(opts: WebhookCreate): Promise<WebhookInfo & { secret: string }> {
    checkName('webhook', opts.name);
    const url = checkUrl(opts.url);
    if (this.db.prepare('SELECT 1 FROM webhooks WHERE name = ?').get(opts.name)) throw conflict(`webhook '${opts.name}' already exists`);
    const secret = opts.secret ?? crypto.randomBytes(32).toString('base64url');
    if (secret.length < 16 || secret.length > 256 || /\s/.test(secret)) throw badRequest('a webhook secret is 16-256 characters without spaces');
    const id = Number(
      this.db
        .prepare('INSERT INTO webhooks (name, url, classes, max_attempts, backoff_ms, created_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(opts.name, url, JSON.stringify(opts.classes ?? []), opts.maxAttempts ?? 8, opts.backoffMs ?? 1000, new Date().toISOString()).lastInsertRowid,
    );
    try {
      await this.writeSecret(id, secret);
    } catch (e) {
      this.db.prepare('DELETE FROM webhooks WHERE id = ?').run(id);
      throw e;
    }
    this.secrets.set(id, secret);
    this.log.info({ op: 'webhook.create', webhook: opts.name, url }, 'webhook created');
    return { ...this.describe(this.row(opts.name)), secret };
  }

  private async writeSecret(id: number, secret: string): Promise<void> {
    await fs.promises.mkdir(this.dir, { recursive: true, mode: 0o700 });
    const file = this.secretFile(id);
    await fs.promises.writeFile(`${file}.tmp`, `${secret}\n`, { mode: 0o600 });
    await fs.promises.rename(`${file}.tmp`, file);
  }

  /**
   * Webhooks an imported configuration wrote into the table (it holds no
   * secrets): each keeps the secret this data directory already has for its
   * id, or gets a fresh one, returned here, the only time it is shown.
   */
  async adoptImported(): Promise<{ webhook: string; secret: string }[]> {
    const fresh: { webhook: string; secret: string }[] = [];
    for (const w of this.rows()) {
      if (this.secrets.has(w.id)) continue;
      let secret = await fs.promises.readFile(this.secretFile(w.id), 'utf8').then((t) => t.trim(), () => '');
      if (secret === '') {
        secret = crypto.randomBytes(32).toString('base64url');
        await this.writeSecret(w.id, secret);
        fresh.push({ webhook: w.name, secret });
        this.log.warn({ op: 'webhook.import', webhook: w.name }, 'imported webhook has a fresh secret: give it to its receiver');
      }
      this.secrets.set(w.id, secret);
    }
    return fresh;
  }

  async remove(name: string): Promise<void> {
    const w = this.row(name);
    this.inFlight.get(w.id)?.abort();
    this.db.prepare('DELETE FROM webhooks WHERE id = ?').run(w.id);
    this.secrets.delete(w.id);
    await fs.promises.rm(this.secretFile(w.id), { force: true });
    this.log.info({ op: 'webhook.delete', webhook: name }, 'webhook deleted');
  }

  list(): WebhookInfo[] {
    return this.rows().map((w) => this.describe(w));
  }

  show(name: string): WebhookInfo {
    return this.describe(this.row(name));
  }

  private describe(w: WebhookRow): WebhookInfo {
    const counts = { pending: 0, delivered: 0, dead: 0 };
    for (const r of this.db.prepare('SELECT state, COUNT(*) AS n FROM webhook_deliveries WHERE webhook_id = ? GROUP BY state').all(w.id) as { state: keyof typeof counts; n: number }[]) {
      counts[r.state] = r.n;
    }
    const last = this.db.prepare('SELECT * FROM webhook_deliveries WHERE webhook_id = ? AND attempts > 0 ORDER BY id DESC LIMIT 1').get(w.id) as DeliveryRow | undefined;
    return {
      name: w.name,
      url: w.url,
      classes: JSON.parse(w.classes) as ChangeClass[],
      maxAttempts: w.max_attempts,
      backoffMs: w.backoff_ms,
      createdAt: w.created_at,
      deliveries: counts,
      lastDelivery: last
        ? { id: last.id, state: last.state, attempts: last.attempts, status: last.last_status, error: last.last_error, at: last.finished_at ?? new Date(last.next_at).toISOString() }
        : null,
    };
  }

  /** The subscription's deliveries, newest first; `state: 'dead'` is the dead-letter list. */
  deliveries(name: string, state?: DeliveryRow['state'], limit = 100): DeliveryInfo[] {
    const w = this.row(name);
    const rows = (
      state
        ? this.db.prepare('SELECT * FROM webhook_deliveries WHERE webhook_id = ? AND state = ? ORDER BY id DESC LIMIT ?').all(w.id, state, limit)
        : this.db.prepare('SELECT * FROM webhook_deliveries WHERE webhook_id = ? ORDER BY id DESC LIMIT ?').all(w.id, limit)
    ) as DeliveryRow[];
    return rows.map(deliveryInfo);
  }

  /** Puts a dead delivery back in the queue with a fresh set of attempts. */
  retry(name: string, id: number): DeliveryInfo {
    const w = this.row(name);
    const d = this.db.prepare('SELECT * FROM webhook_deliveries WHERE id = ? AND webhook_id = ?').get(id, w.id) as DeliveryRow | undefined;
    if (!d) throw notFound('delivery', id);
    if (d.state !== 'dead') throw conflict(`delivery ${id} is ${d.state}: only a dead delivery is retried`, { state: d.state });
    this.db.prepare("UPDATE webhook_deliveries SET state = 'pending', attempts = 0, next_at = ?, finished_at = NULL WHERE id = ?").run(Date.now(), id);
    this.pump();
    return deliveryInfo(this.db.prepare('SELECT * FROM webhook_deliveries WHERE id = ?').get(id) as DeliveryRow);
  }

  // ---- the queue ------------------------------------------------------------

  /** Queues the notice for every subscription whose classes it touches (only those objects and classes). */
  enqueue(n: ChangeNotice): void {
    const ins = this.db.prepare("INSERT INTO webhook_deliveries (webhook_id, notice, body, state, next_at, created_at) VALUES (?, ?, ?, 'pending', ?, ?)");
    const at = new Date().toISOString();
    const nowMs = Date.now();
    this.db.transaction(() => {
      for (const w of this.rows()) {
        const want = new Set(JSON.parse(w.classes) as ChangeClass[]);
        const objects = want.size === 0 ? n.objects : n.objects.map((o) => ({ ...o, classes: o.classes.filter((c) => want.has(c)) })).filter((o) => o.classes.length > 0);
        if (objects.length === 0) continue;
        ins.run(w.id, n.id, JSON.stringify({ ...n, webhook: w.name, objects }), nowMs, at);
      }
    })();
    this.pump();
  }

  /** Sends the head of every subscription's queue that is due, one at a time per subscription (so order holds), and arms the timer for the next. */
  private pump(): void {
    if (this.stopped) return;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const heads = this.db
      .prepare("SELECT d.* FROM webhook_deliveries d WHERE d.state = 'pending' AND d.id = (SELECT MIN(id) FROM webhook_deliveries WHERE webhook_id = d.webhook_id AND state = 'pending')")
      .all() as DeliveryRow[];
    const nowMs = Date.now();
    let next = Infinity;
    for (const d of heads) {
      if (this.inFlight.has(d.webhook_id)) continue;
      if (d.next_at <= nowMs) void this.send(d);
      else next = Math.min(next, d.next_at);
    }
    if (next !== Infinity) {
      this.timer = setTimeout(() => this.pump(), Math.max(10, next - nowMs));
      this.timer.unref();
    }
  }

  private async send(d: DeliveryRow): Promise<void> {
    const w = this.db.prepare('SELECT * FROM webhooks WHERE id = ?').get(d.webhook_id) as WebhookRow | undefined;
    const secret = this.secrets.get(d.webhook_id);
    if (!w || secret === undefined) return;
    const abort = new AbortController();
    this.inFlight.set(d.webhook_id, abort);
    let status: number | null = null;
    let error: string | null = null;
    try {
      const t = Math.floor(Date.now() / 1000);
      const res = await fetch(w.url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', [SIGNATURE_HEADER]: signature(secret, t, d.body), [DELIVERY_HEADER]: String(d.id), 'user-agent': 'blockgate-webhook' },
        body: d.body,
        redirect: 'manual',
        signal: AbortSignal.any([abort.signal, AbortSignal.timeout(DELIVERY_TIMEOUT_MS)]),
      });
      status = res.status;
      await res.body?.cancel().catch(() => undefined);
      if (status < 200 || status > 299) error = `receiver answered ${status}`;
    } catch (e) {
      error = (e as Error).cause instanceof Error ? `${(e as Error).message}: ${((e as Error).cause as Error).message}` : (e as Error).message;
    } finally {
      this.inFlight.delete(d.webhook_id);
    }
    // Stopping (or the webhook deleted) mid-attempt: nothing is recorded, the delivery is sent again.
    if (abort.signal.aborted) return;
    const attempts = d.attempts + 1;
    const at = new Date().toISOString();
    if (error === null) {
      this.db.prepare("UPDATE webhook_deliveries SET state = 'delivered', attempts = ?, last_status = ?, last_error = NULL, finished_at = ? WHERE id = ?").run(attempts, status, at, d.id);
    } else if (attempts >= w.max_attempts) {
      this.db.prepare("UPDATE webhook_deliveries SET state = 'dead', attempts = ?, last_status = ?, last_error = ?, finished_at = ? WHERE id = ?").run(attempts, status, error, at, d.id);
      this.log.warn({ op: 'webhook.dead', webhook: w.name, delivery: d.id, attempts, error }, 'webhook delivery gave up: moved to the dead-letter list');
    } else {
      const wait = Math.min(MAX_BACKOFF_MS, w.backoff_ms * 2 ** (attempts - 1));
      this.db.prepare('UPDATE webhook_deliveries SET attempts = ?, last_status = ?, last_error = ?, next_at = ? WHERE id = ?').run(attempts, status, error, Date.now() + wait, d.id);
    }
    this.pump();
  }
}

function deliveryInfo(d: DeliveryRow): DeliveryInfo {
  return {
    id: d.id,
    notice: d.notice,
    state: d.state,
    attempts: d.attempts,
    nextAttemptAt: d.state === 'pending' ? new Date(d.next_at).toISOString() : null,
    lastStatus: d.last_status,
    lastError: d.last_error,
    createdAt: d.created_at,
    finishedAt: d.finished_at,
    body: JSON.parse(d.body) as unknown,
  };
}

function checkUrl(s: string): string {
  let u: URL;
  try {
    u = new URL(s);
  } catch {
    throw badRequest(`webhook url '${s}' is not a URL`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw badRequest(`webhook url '${s}' must be http:// or https://`);
  if (u.username || u.password) throw badRequest('a webhook url carries no credentials: the signature proves the sender');
  return u.toString();
}

export { CHANGE_CLASSES };
