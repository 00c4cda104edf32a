export { VolumeLayout } from './layout.js';
export type { Extent, Segment, SegmentVisitor } from './layout.js';
export { allocateExtents, freeExtents, EXTENT_ALIGN } from './allocate.js';
export type { ArraySpace } from './allocate.js';
