import crypto from 'node:crypto';
import { fastifyCookie } from '@fastify/cookie';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { replies, sendError } from './errors.js';
import type { ResourcePlugin } from './routes/context.js';

/** The session cookie: httpOnly, so page scripts never see it. */
export const SESSION_COOKIE = 'blockgate_session';
/** The CSRF cookie: readable by the page, which echoes it in the X-CSRF-Token header of every change. */
export const CSRF_COOKIE = 'blockgate_csrf';
export const CSRF_HEADER = 'x-csrf-token';
/** An admin's console session lasts a working day; logging in again is cheap. */
export const SESSION_TTL_MS = 8 * 3600_000;
/** Only a token holder can open sessions, but a script looping on login must not grow the map without bound. */
const MAX_SESSIONS = 1000;

interface Session {
  csrf: string;
  expires: number;
}

/** Constant-time comparison, so timing reveals nothing about the secret compared with. */
export function secretMatches(given: string, want: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(want);
  return a.length === b.length && crypto.timingSafeEqual(a, b);
}

/**
 * Console sessions: the API token is posted once and exchanged for a random
 * session id kept here (in memory: a restart logs the console out, which is
 * the safe direction). The browser holds the id only in an httpOnly,
 * SameSite=Strict cookie, so neither a URL nor page storage ever holds a
 * credential; state-changing requests also carry the session's CSRF token.
 */
export class SessionStore {
  private readonly sessions = new Map<string, Session>();

  constructor(private readonly now: () => number = Date.now) {}

  open(): { id: string; csrf: string; expires: number } {
    this.sweep();
    if (this.sessions.size >= MAX_SESSIONS) this.sessions.delete(this.sessions.keys().next().value!);
    const id = crypto.randomBytes(32).toString('base64url');
    const s = { csrf: crypto.randomBytes(32).toString('base64url'), expires: this.now() + SESSION_TTL_MS };
    this.sessions.set(id, s);
    return { id, ...s };
  }

  get(id: string | undefined): Session | undefined {
    if (!id) return undefined;
    const s = this.sessions.get(id);
    if (s && s.expires <= this.now()) {
      this.sessions.delete(id);
      return undefined;
    }
    return s;
  }

  close(id: string | undefined): void {
    if (id) this.sessions.delete(id);
  }

  get size(): number {
    return this.sessions.size;
  }

  private sweep(): void {
    const t = this.now();
    for (const [id, s] of this.sessions) if (s.expires <= t) this.sessions.delete(id);
  }
}

function cookiesOf(req: FastifyRequest): Record<string, string | undefined> {
  return req.headers.cookie ? fastifyCookie.parse(req.headers.cookie) : {};
}

/**
 * Checks a request that came without a valid bearer token against the
 * console's session cookie. Answers (and returns true) when it refuses.
 */
export function refuseWithoutSession(store: SessionStore, req: FastifyRequest, reply: FastifyReply): boolean {
  const s = store.get(cookiesOf(req)[SESSION_COOKIE]);
  if (!s) {
    sendError(reply, 'UNAUTHORIZED', 'a valid bearer token is required (Authorization: Bearer <token>)');
    return true;
  }
  if (req.method === 'GET' || req.method === 'HEAD') return false;
  const header = req.headers[CSRF_HEADER];
  if (typeof header !== 'string' || !secretMatches(header, s.csrf)) {
    sendError(reply, 'UNAUTHORIZED', `a console session's changes need its CSRF token in the ${CSRF_HEADER} header`);
    return true;
  }
  return false;
}

const cookieBase = { path: '/', sameSite: 'strict', secure: false } as const;
const login = z.strictObject({ token: z.string().min(1).max(4096) });
const sessionView = z.strictObject({ csrf: z.string(), expiresAt: z.string() });

/** POST/GET/DELETE /v1/session: the console's log-in, who-am-I and log-out. */
export function sessionRoutes(store: SessionStore, token: string): ResourcePlugin {
  return async (app) => {
    const tags = ['session'];
    app.post(
      '/v1/session',
      {
        schema: {
          summary: 'Log the console in: exchange the API token for an httpOnly SameSite=Strict session cookie and a CSRF token (no bearer token needed)',
          tags,
          security: [],
          body: login,
          response: replies({ 201: sessionView }),
        },
      },
      async (req, reply) => {
        if (!secretMatches(req.body.token, token)) return sendError(reply, 'UNAUTHORIZED', 'wrong API token');
        const s = store.open();
        const maxAge = Math.floor(SESSION_TTL_MS / 1000);
        void reply.header('set-cookie', [
          fastifyCookie.serialize(SESSION_COOKIE, s.id, { ...cookieBase, httpOnly: true, maxAge }),
          fastifyCookie.serialize(CSRF_COOKIE, s.csrf, { ...cookieBase, httpOnly: false, maxAge }),
        ]);
        return reply.code(201).send({ csrf: s.csrf, expiresAt: new Date(s.expires).toISOString() });
      },
    );
    app.get('/v1/session', { schema: { summary: 'The console session this request carries', tags, response: replies({ 200: sessionView }) } }, async (req, reply) => {
      const s = store.get(cookiesOf(req)[SESSION_COOKIE]);
      if (!s) return sendError(reply, 'NOT_FOUND', 'this request carries no console session (a bearer token is not one)');
      return reply.send({ csrf: s.csrf, expiresAt: new Date(s.expires).toISOString() });
    });
    app.delete('/v1/session', { schema: { summary: 'Log the console out: the session is forgotten and its cookies cleared', tags, response: replies({ 204: z.undefined() }) } }, async (req, reply) => {
      store.close(cookiesOf(req)[SESSION_COOKIE]);
      void reply.header('set-cookie', [
        fastifyCookie.serialize(SESSION_COOKIE, '', { ...cookieBase, httpOnly: true, maxAge: 0 }),
        fastifyCookie.serialize(CSRF_COOKIE, '', { ...cookieBase, httpOnly: false, maxAge: 0 }),
      ]);
      return reply.code(204).send();
    });
  };
}
