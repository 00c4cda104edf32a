export { BlockStore } from './store.js';
export type { VolumeHandle } from './store.js';
