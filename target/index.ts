export { Namespaces, unitKey } from './namespace.js';
export type { Unit } from './namespace.js';
export { NbdServer, NbdTlsKeys, parseExportName } from './nbd/index.js';
export type { SessionEvent } from './nbd/index.js';
