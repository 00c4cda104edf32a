import type { ResourcePlugin } from './context.js';

/** The wiring map, and the scan that adopts array files dropped into the data directory. */
export const discovery: ResourcePlugin = async (app, { manager: m }) => {
  app.get('/v1/discovery', { schema: { summary: 'The wiring map: arrays, capacity, free extents, volumes, listeners', tags: ['arrays'] } }, () => m.inventory.wiringMap());
  app.post('/v1/discovery', { schema: { summary: 'Scan the arrays directory for new array files, then report the wiring map', tags: ['arrays'] } }, () => m.inventory.discover());
};
