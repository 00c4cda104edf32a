export { NbdServer } from './server.js';
export type { SessionEvent, NbdServerOptions, ListenerIdentity } from './server.js';
export type { NbdLimits, CloseReason } from './connection.js';
export { parseExportName } from './export-name.js';
export { NbdTlsKeys } from './tls.js';
