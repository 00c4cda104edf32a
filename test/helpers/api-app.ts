import type { FastifyInstance } from 'fastify';
import { buildApi } from '../../control-api/index.js';
import type { StorageManager } from '../../manager/index.js';
import { startManager } from './manager.js';

export const API_TOKEN = 'api-test-token';

export interface ApiReply {
  status: number;
  body: any;
  headers: Record<string, unknown>;
}

/**
 * The control API over a real manager (real SQLite, real array files in a
 * temp dir), driven with inject(): no socket, the same routing, validation
 * and serialization as `blockgate serve`.
 */
export async function startApi(t: { teardown: (fn: () => unknown) => void }, faults: string[] = []): Promise<{ app: FastifyInstance; m: StorageManager; dataDir: string; call: (method: string, url: string, body?: unknown, headers?: Record<string, string>) => Promise<ApiReply> }> {
  const { m, dataDir } = await startManager(t, faults);
  const app = buildApi(m, { token: API_TOKEN, logger: false, version: 'test' });
  t.teardown(() => app.close());
  await app.ready();
  const call = async (method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<ApiReply> => {
    const r = await app.inject({
      method: method as 'GET',
      url,
      headers: { authorization: `Bearer ${API_TOKEN}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
      ...(body !== undefined ? { payload: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
    });
    let parsed: unknown = r.body;
    if ((r.headers['content-type'] ?? '').toString().includes('json') && r.body !== '') parsed = JSON.parse(r.body);
    return { status: r.statusCode, body: parsed, headers: r.headers };
  };
  return { app, m, dataDir, call };
}

export const MiB = 1024 * 1024;

/** A farm, one 64 MiB array, and a host: what most route tests start from. */
export async function basicAppliance(call: (method: string, url: string, body?: unknown) => Promise<ApiReply>): Promise<void> {
  for (const [url, body] of [
    ['/v1/farms', { name: 'f' }],
    ['/v1/arrays', { name: 'a0', size: '64M' }],
    ['/v1/hosts', { name: 'h', farm: 'f' }],
  ] as const) {
    const r = await call('POST', url, body);
    if (r.status !== 201) throw new Error(`${url}: ${r.status} ${JSON.stringify(r.body)}`);
  }
}
