import { arrays } from './arrays.js';
import { backups } from './backups.js';
import { bindings } from './bindings.js';
import { config } from './config.js';
import type { ResourcePlugin } from './context.js';
import { discovery } from './discovery.js';
import { events } from './events.js';
import { farms } from './farms.js';
import { graph } from './graph.js';
import { health } from './health.js';
import { hosts } from './hosts.js';
import { images } from './images.js';
import { jobs } from './jobs.js';
import { metrics } from './metrics.js';
import { tls } from './tls.js';
import { trace } from './trace.js';
import { vms } from './vms.js';
import { volumes } from './volumes.js';
import { webhooks } from './webhooks.js';

/** Every resource of the control API, one plugin each; a new route goes into its resource's file. */
export const RESOURCES: readonly ResourcePlugin[] = [health, discovery, arrays, farms, volumes, hosts, tls, bindings, images, vms, backups, jobs, events, webhooks, graph, trace, config, metrics];
export type { ResourcePlugin, RouteContext } from './context.js';
