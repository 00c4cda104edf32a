import { z } from 'zod';
import { views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { name, nameParam, noQuery, qualityClass, size } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

const createArray = z.strictObject({ name, size, qualityClass: qualityClass.optional() });

/** Arrays: honest capacity (virtual, allocated on the file system, the file system's room), failure and re-attach. */
export const arrays: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['arrays'];
  const one = replies({ 200: views.arrayView });
  app.get(
    '/v1/arrays',
    { schema: { summary: 'List arrays: state, virtual size and free space, bytes allocated on the file system, its free space', tags, querystring: noQuery, response: replies({ 200: z.strictObject({ arrays: z.array(views.arrayView) }) }) } },
    async () => ({ arrays: await Promise.all(m.listArrays().map((a) => m.describeArray(a))) }),
  );
  app.get('/v1/arrays/:name', { schema: { summary: 'One array, with its state and capacity', tags, params: nameParam, querystring: noQuery, response: one } }, (req) => m.describeArray(m.array(req.params.name)));
  app.post(
    '/v1/arrays/:name/attach',
    { schema: { summary: 'Attach a failed array again after its file was repaired (409 while it still fails the checks)', tags, params: nameParam, response: one } },
    (req) => m.reattachArray(req.params.name),
  );
  app.post('/v1/arrays', { schema: { summary: 'Create an array file (the file system\'s limits and room are checked first)', tags, body: createArray, response: replies({ 201: views.arrayView }) } }, async (req, reply) => {
    const a = await m.createArray(req.body.name, req.body.size, req.body.qualityClass);
    return reply.code(201).send(await m.describeArray(a));
  });
  app.delete(
    '/v1/arrays/:name',
    { schema: { summary: 'Delete an array no volume has space on; its files are removed (409 while in use)', tags, params: nameParam, response: replies({ 204: z.undefined() }) } },
    async (req, reply) => {
      await m.deleteArray(req.params.name);
      return reply.code(204).send();
    },
  );
};
