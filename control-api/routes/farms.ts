import { z } from 'zod';
import { name } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const createFarm = z.strictObject({ name });

export const farms: ResourcePlugin = async (app, { manager: m }) => {
  app.get('/v1/farms', { schema: { summary: 'List farms', tags: ['farms'] } }, () => ({ farms: m.listFarms().map((f) => ({ name: f.name, createdAt: f.created_at })) }));
  app.post('/v1/farms', { schema: { summary: 'Create a farm', tags: ['farms'], body: createFarm } }, (req, reply) => {
    m.createFarm(req.body.name);
    return reply.code(201).send({ name: req.body.name });
  });
};
