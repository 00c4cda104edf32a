import { z } from 'zod';
import { views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { intQuery, lun, name, nameParam, target } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const unitParams = z.strictObject({ host: name, target: z.coerce.number().pipe(target), lun: z.coerce.number().pipe(lun) });
const traceQuery = z.strictObject({ offset: intQuery.optional(), length: intQuery.optional() });
const resolveQuery = z.strictObject({
  serial: z.string().min(1).max(64).optional(),
  naa: z.string().min(1).max(64).optional(),
  export: z.string().min(1).max(32).optional().describe('TARGET/LUN, with host'),
  host: name.optional(),
  vm: name.optional(),
  array: name.optional(),
  offset: intQuery.optional().describe('a byte of the array'),
});

/** Trace and resolve: where a host's bytes live, and back. */
export const trace: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['trace'];
  app.get(
    '/v1/trace/hosts/:host/units/:target/:lun',
    { schema: { summary: 'Host → unit → volume → extents → array files with byte offsets', tags, params: unitParams, querystring: traceQuery, response: replies({ 200: views.unitTrace }) } },
    (req) => m.tracer.unit(req.params.host, req.params.target, req.params.lun, req.query.offset, req.query.length),
  );
  app.get(
    '/v1/trace/volumes/:name',
    { schema: { summary: 'Volume → units, VMs, extents and array files', tags, params: nameParam, querystring: traceQuery, response: replies({ 200: views.volumeTrace }) } },
    (req) => m.tracer.volumeTrace(m.volume(req.params.name), req.query.offset, req.query.length),
  );
  app.get('/v1/resolve', { schema: { summary: 'Reverse lookup from serial, NAA, export (+host), VM, or array + offset', tags, querystring: resolveQuery, response: replies({ 200: views.resolveView }) } }, (req) =>
    m.tracer.resolve(req.query),
  );
};
