import { z } from 'zod';
import { name, qualityClass, size } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const createArray = z.strictObject({ name, size, qualityClass: qualityClass.optional() });

export const arrays: ResourcePlugin = async (app, { manager: m }) => {
  app.get('/v1/arrays', { schema: { summary: 'List arrays with capacity and free space', tags: ['arrays'] } }, () => ({
    arrays: m.listArrays().map((a) => {
      const u = m.arrayUsage(a);
      return { name: a.name, path: a.path, size: a.size, qualityClass: a.quality_class, used: u.used, free: u.free };
    }),
  }));
  app.post('/v1/arrays', { schema: { summary: 'Create an array file', tags: ['arrays'], body: createArray } }, async (req, reply) => {
    const a = await m.createArray(req.body.name, req.body.size, req.body.qualityClass);
    return reply.code(201).send({ name: a.name, path: a.path, size: a.size, qualityClass: a.quality_class });
  });
};
