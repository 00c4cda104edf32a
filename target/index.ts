export { Namespaces, unitKey, freshFences } from './namespace.js';
export type { Unit, UnitFence } from './namespace.js';
export { NbdServer, NbdTlsKeys, parseExportName } from './nbd/index.js';
export type { SessionEvent } from './nbd/index.js';
export { ChangeMap, changeMaps, openUnit, IoStats, StatsRegistry, OP, OP_NAMES, LATENCY_BUCKETS } from './core/index.js';
export type { Frontend, HostEndpoints, NamespaceChange, Protocol, UnitAddress, UnitIO } from './core/index.js';
