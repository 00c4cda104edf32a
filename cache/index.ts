export { BlockStore } from './store.js';
export type { VolumeHandle, CachePolicy } from './store.js';
