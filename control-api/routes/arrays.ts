import { z } from 'zod';
import { replies } from '../errors.js';
import { name, noQuery, qualityClass, size } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const createArray = z.strictObject({ name, size, qualityClass: qualityClass.optional() });
const arrayView = z.strictObject({ name, path: z.string(), size: z.number().int(), qualityClass }).meta({ id: 'Array' });
const arrayUsageView = arrayView.extend({ used: z.number().int().min(0), free: z.number().int().min(0) });

export const arrays: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['arrays'];
  app.get('/v1/arrays', { schema: { summary: 'List arrays with capacity and free space', tags, querystring: noQuery, response: replies({ 200: z.strictObject({ arrays: z.array(arrayUsageView) }) }) } }, () => ({
    arrays: m.listArrays().map((a) => {
      const u = m.arrayUsage(a);
      return { name: a.name, path: a.path, size: a.size, qualityClass: a.quality_class, used: u.used, free: u.free };
    }),
  }));
  app.post('/v1/arrays', { schema: { summary: 'Create an array file', tags, body: createArray, response: replies({ 201: arrayView }) } }, async (req, reply) => {
    const a = await m.createArray(req.body.name, req.body.size, req.body.qualityClass);
    return reply.code(201).send({ name: a.name, path: a.path, size: a.size, qualityClass: a.quality_class });
  });
};
