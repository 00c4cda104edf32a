// The NBD session is split by concern; this module keeps the names it has always exported.
export { NbdConnection } from './transmission.js';
export { DEFAULT_LIMITS } from './session.js';
export type { CloseReason, ListenerTraits, NbdBackend, NbdLimits, NbdTls } from './session.js';
export type { NegotiatedSession } from './handshake.js';
