export { ArrayFile } from './array-file.js';
export { ALLOC_BLOCK, AllocState, AllocationMap } from './allocation.js';
