import type { FastifyPluginAsyncZod } from 'fastify-type-provider-zod';
import type { StorageManager } from '../../manager/index.js';
import type { MetricsSources } from '../metrics.js';

/** What every resource plugin is given: the manager (the only way down) and process facts. */
export interface RouteContext {
  manager: StorageManager;
  version: string;
  metrics?: MetricsSources | undefined;
}

/** A resource plugin: one file under routes/, registered once by app.ts. */
export type ResourcePlugin = FastifyPluginAsyncZod<RouteContext>;
