export { ArrayFile } from './array-file.js';
export { SimpleEngine, BULK_CHUNK } from './engine.js';
export type { Engine, ArrayRange, BulkOptions, ScrubResult } from './engine.js';
