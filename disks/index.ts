export { ArrayFile } from './array-file.js';
export type { ArrayFault, ArrayIoError } from './array-file.js';
export { SimpleEngine, PiscinaEngine, BULK_CHUNK } from './engine.js';
export type { Engine, ArrayRange, BulkOptions, ScrubResult, CacheHooks, PiscinaEngineOptions } from './engine.js';
export { LibuvRoute, PiscinaRoute, BatchRoute, makeRoute, DEFAULT_IO_ROUTE } from './io-route.js';
export type { IoRoute, IoRouteName } from './io-route.js';
export { ALLOC_BLOCK, AllocState, AllocationMap, MAX_ARRAY_SIZE } from './allocation.js';
export { checkArrayIdentity, readArrayIdentity, writeArrayIdentity, identityFile } from './array-identity.js';
export type { ArrayIdentity, ArrayClaim, IdentityVerdict } from './array-identity.js';
