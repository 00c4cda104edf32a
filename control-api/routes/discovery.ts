import { views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { noQuery } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

/** The wiring map, and the scan that adopts array files dropped into the data directory. */
export const discovery: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['arrays'];
  app.get('/v1/discovery', { schema: { summary: 'The wiring map: arrays, capacity, free extents, volumes, listeners', tags, querystring: noQuery, response: replies({ 200: views.wiringMap }) } }, () =>
    m.inventory.wiringMap(),
  );
  app.post('/v1/discovery', { schema: { summary: 'Scan the arrays directory for new array files, then report the wiring map', tags, response: replies({ 200: views.discoveryView }) } }, () =>
    m.inventory.discover(),
  );
};
