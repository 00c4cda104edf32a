export { BlockStore, revokedError } from './store.js';
export type { VolumeHandle, CachePolicy, WriteHook, ZeroOptions, AllocationState, AllocationRun, ExclusiveAccess } from './store.js';
export { BlockCache, DEFAULT_CACHE_SIZE, DEFAULT_BLOCK_SIZE } from './block-cache.js';
export type { CacheOptions, CacheStats, WriteMode } from './block-cache.js';
export { SnapshotLink, OwnershipMap } from './cow.js';
export type { CowIo } from './cow.js';
