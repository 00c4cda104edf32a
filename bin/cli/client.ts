import fs from 'node:fs';
import path from 'node:path';

/** Exit codes scripts can rely on (documented in the README). */
export const EXIT = {
  OK: 0,
  ERROR: 1,
  USAGE: 2,
  NOT_FOUND: 3,
  CONFLICT: 4,
  UNAUTHORIZED: 5,
  UNREACHABLE: 6,
  JOB_FAILED: 7,
  NO_SPACE: 8,
} as const;

export class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number,
    readonly code?: string,
  ) {
    super(message);
  }
}

export interface Connection {
  api: string;
  token: string | null;
}

export interface GlobalOptions {
  api?: string;
  token?: string;
  dataDir?: string;
}

/**
 * Finds the API and its token the way an admin expects: flags first, then the
 * environment, then the data directory a local `blockgate serve` writes
 * (run.json for the address, api-token for the token).
 */
export function resolveConnection(o: GlobalOptions): Connection {
  const dataDir = path.resolve(o.dataDir ?? process.env.BLOCKGATE_DATA_DIR ?? './var');
  let api = o.api ?? process.env.BLOCKGATE_API;
  if (!api) {
    try {
      api = (JSON.parse(fs.readFileSync(path.join(dataDir, 'run.json'), 'utf8')) as { api: string }).api;
    } catch {
      api = 'http://127.0.0.1:8480';
    }
  }
  if (!/^https?:\/\//.test(api)) api = `http://${api}`;
  let token = o.token ?? process.env.BLOCKGATE_API_TOKEN ?? null;
  if (!token) {
    try {
      token = fs.readFileSync(path.join(dataDir, 'api-token'), 'utf8').trim();
    } catch {
      token = null;
    }
  }
  return { api: api.replace(/\/$/, ''), token };
}

const EXIT_BY_STATUS: Record<number, number> = { 400: EXIT.USAGE, 401: EXIT.UNAUTHORIZED, 403: EXIT.UNAUTHORIZED, 404: EXIT.NOT_FOUND, 409: EXIT.CONFLICT, 507: EXIT.NO_SPACE };

export class ApiClient {
  /** Where the next page of the last list starts (its x-next-after), or null on a last page. */
  nextAfter: string | null = null;

  constructor(readonly conn: Connection) {}

  async call<T = any>(method: string, url: string, body?: unknown): Promise<T> {
    const text = await this.send(method, url, body);
    return (text ? JSON.parse(text) : null) as T;
  }

  /** A reply that is not JSON (Graphviz DOT): its text as sent. */
  async callText(method: string, url: string, body?: unknown): Promise<string> {
    return this.send(method, url, body);
  }

  private async send(method: string, url: string, body?: unknown): Promise<string> {
    const headers: Record<string, string> = {};
    if (this.conn.token) headers.authorization = `Bearer ${this.conn.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    let res: Response;
    try {
      res = await fetch(this.conn.api + url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (e) {
      throw new CliError(`cannot reach the control API at ${this.conn.api}: ${(e as Error & { cause?: Error }).cause?.message ?? (e as Error).message}`, EXIT.UNREACHABLE);
    }
    const text = await res.text();
    this.nextAfter = res.headers.get('x-next-after');
    if (!res.ok) {
      let err: { code: string; message: string } | undefined;
      try {
        err = (JSON.parse(text) as { error?: { code: string; message: string } } | null)?.error;
      } catch {
        err = undefined;
      }
      throw new CliError(err?.message ?? `HTTP ${res.status}`, EXIT_BY_STATUS[res.status] ?? EXIT.ERROR, err?.code);
    }
    return text;
  }
}
