export { IscsiServer, DEFAULT_ISCSI_LIMITS } from './server.js';
export type { IscsiBackend, IscsiServerOptions, IscsiSessionEvent, InitiatorDirectory } from './server.js';
export type { InitiatorAccess } from './login.js';
export type { ChapSecret } from './chap.js';
export { targetIqn, parseTargetIqn, isValidIqn, IQN_PREFIX } from './naming.js';
