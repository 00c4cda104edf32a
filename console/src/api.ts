/** The control API as the console sees it: same origin, the session cookie, and the CSRF token on every change. */

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** The CSRF token is in a readable cookie set at login; the session id beside it is httpOnly and never seen here. */
function csrf(): string {
  for (const part of document.cookie.split(';')) {
    const [k, v] = part.trim().split('=');
    if (k === 'blockgate_csrf' && v) return decodeURIComponent(v);
  }
  return '';
}

/** Called when the API says the session is gone (expired, logged out elsewhere, server restarted). */
let onUnauthorized: () => void = () => undefined;
export function whenLoggedOut(fn: () => void): void {
  onUnauthorized = fn;
}

export async function api<T = unknown>(method: string, url: string, body?: unknown): Promise<T> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (method !== 'GET') headers['x-csrf-token'] = csrf();
  const res = await fetch(url, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  let parsed: unknown = undefined;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    parsed = text;
  }
  if (!res.ok) {
    const e = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
    if (res.status === 401 && url !== '/v1/session') onUnauthorized();
    throw new ApiError(res.status, e?.code ?? String(res.status), e?.message ?? `${method} ${url} answered ${res.status}`);
  }
  return parsed as T;
}

export const get = <T>(url: string): Promise<T> => api<T>('GET', url);

export async function login(token: string): Promise<void> {
  await api('POST', '/v1/session', { token });
}

export async function logout(): Promise<void> {
  await api('DELETE', '/v1/session');
}

export async function loggedIn(): Promise<boolean> {
  try {
    await get('/v1/session');
    return true;
  } catch {
    return false;
  }
}

// Shapes of the replies the console reads (the API's OpenAPI document has them in full).
export interface Volume {
  name: string;
  farm: string | null;
  size: number;
  state: string;
  shareMode: string;
  cachePolicy: 'none' | 'write-through' | 'write-back';
  provisioning: string;
  serial: string;
  naa: string;
  allocated: number | null;
  health: string;
  allowed: string[];
  job: number | null;
  snapshotOf: string | null;
}
export interface Host {
  name: string;
  farm: string;
  protocols: string[];
  defaultProtocol: string;
  nbd: { socket: string; tcp: string | null };
  units: number;
}
export interface Binding {
  id: number;
  volume: string;
  host: string;
  target: number;
  lun: number;
  mapped: boolean;
  protocol?: string;
  [k: string]: unknown;
}
export interface Namespace {
  host: string;
  units: { target: number; lun: number; volume: string; size: number; protocol: string; exportName: string; uris: string[]; readOnly: boolean }[];
}
export interface Job {
  id: number;
  kind: string;
  state: string;
  params: unknown;
  progress: { done: number; total: number; fraction: number };
  error: string | null;
  createdAt: string;
  finishedAt: string | null;
}
export interface ArrayInfo {
  name: string;
  state: string;
  size: number;
  used: number;
  free: number;
  allocated: number | null;
  fileSystem: { size: number; available: number; usedPercent: number } | null;
  volumes: string[];
  qualityClass: string;
}
export interface Health {
  status: 'ok' | 'degraded';
  version: string;
  appliance: string;
  reasons: Record<string, unknown>[];
  warnings: Record<string, unknown>[];
}
type PerOp = Record<'read' | 'write' | 'flush' | 'trim' | 'zero' | 'other', number>;
export interface IoCounters {
  ops: PerOp;
  bytes: PerOp;
  errors: PerOp;
  latencySeconds: PerOp;
}
export interface IoReading {
  at: number;
  total: IoCounters;
  volumes: (IoCounters & { host: string; volume: string })[];
  sessions: { host: string; protocol: string; sessions: number }[];
}
export interface Graph {
  nodes: { id: string; kind: string; name: string }[];
  edges: { from: string; to: string; rel: string }[];
}
export interface EventRecord {
  id: number;
  at: string;
  type: string;
  subject: string | null;
  data: Record<string, unknown>;
}
