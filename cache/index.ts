export { BlockStore } from './store.js';
export type { VolumeHandle, CachePolicy, WriteHook } from './store.js';
