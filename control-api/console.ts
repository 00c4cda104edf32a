import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance } from 'fastify';

/** Where `npm run build` bundles the console (dist/console, next to dist/control-api). */
export const CONSOLE_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../console');

/**
 * Nothing on the page may come from elsewhere or run inline; uPlot and
 * cytoscape size their elements through style attributes, hence
 * 'unsafe-inline' for styles only.
 */
const CSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/**
 * Serves the console's bundled files at `/` (read at start-up: no wildcard
 * route, so an unknown path still gets the API's 404). Returns the URL paths
 * that are the page itself, which need no credential; every API call the page
 * makes does.
 */
export function serveConsole(app: FastifyInstance, dir = CONSOLE_DIR): Set<string> {
  const open = new Set<string>();
  // Start-up only: the file list is fixed for the life of the process.
  if (!fs.existsSync(path.join(dir, 'index.html'))) return open;
  for (const f of fs.readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (f.isFile()) open.add('/' + path.relative(dir, path.join(f.parentPath, f.name)).split(path.sep).join('/'));
  }
  open.add('/');
  void app.register(fastifyStatic, {
    root: dir,
    prefix: '/',
    wildcard: false,
    index: 'index.html',
    cacheControl: false,
    setHeaders: (res) => {
      res.setHeader('content-security-policy', CSP);
      res.setHeader('x-content-type-options', 'nosniff');
      res.setHeader('referrer-policy', 'no-referrer');
      res.setHeader('cache-control', 'no-cache');
    },
  });
  return open;
}
