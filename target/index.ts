export { Namespaces, unitKey } from './namespace.js';
export type { Unit } from './namespace.js';
export { NbdServer, NbdTlsKeys, parseExportName } from './nbd/index.js';
export type { SessionEvent } from './nbd/index.js';
export { openUnit, IoStats, StatsRegistry, OP, OP_NAMES, LATENCY_BUCKETS } from './core/index.js';
export type { Frontend, HostEndpoints, NamespaceChange, UnitAddress, UnitIO } from './core/index.js';
