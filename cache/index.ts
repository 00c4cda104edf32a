export { BlockStore, STATE_HOLE, STATE_ZERO } from './store.js';
export type { VolumeHandle, CachePolicy, StatusExtent, ZeroOptions } from './store.js';
