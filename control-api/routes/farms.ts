import { z } from 'zod';
import { replies } from '../errors.js';
import { name, nameParam, noQuery } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const createFarm = z.strictObject({ name });
const farmView = z.strictObject({ name, createdAt: z.string() });

export const farms: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['farms'];
  app.get('/v1/farms', { schema: { summary: 'List farms', tags, querystring: noQuery, response: replies({ 200: z.strictObject({ farms: z.array(farmView) }) }) } }, () => ({
    farms: m.listFarms().map((f) => ({ name: f.name, createdAt: f.created_at })),
  }));
  app.post('/v1/farms', { schema: { summary: 'Create a farm', tags, body: createFarm, response: replies({ 201: z.strictObject({ name }) }) } }, async (req, reply) => {
    m.createFarm(req.body.name);
    return reply.code(201).send({ name: req.body.name });
  });
  app.delete('/v1/farms/:name', { schema: { summary: 'Delete a farm no host or volume belongs to (409 while in use)', tags, params: nameParam, response: replies({ 204: z.undefined() }) } }, async (req, reply) => {
    m.deleteFarm(req.params.name);
    return reply.code(204).send();
  });
};
