export { StorageManager, checkName } from './manager.js';
export { parseAddress, formatAddress } from '../common/address.js';
export type { DataPath, ManagerOptions, ArrayRow, VolumeRow, HostRow, BindingRow, AccessMode, ShareMode } from './manager.js';
export { seedDemo, DEMO } from './defaults.js';
export { openDb, SCHEMA_VERSION } from './db.js';
export { TRANSITIONS, VOLUME_STATES, OPERATIONS, transition, allowedOperations, type VolumeState, type Operation } from './state.js';
export type { EventLog, EventRecord } from './events.js';
export type { JobRow, JobState } from './jobs.js';
