import { z } from 'zod';
import { views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { name, nameParam, noQuery } from '../schemas.js';
import type { ResourcePlugin } from './context.js';
import { accepted, acceptedView } from './jobs.js';

const createImage = z
  .strictObject({
    name,
    path: z.string().min(1).max(4096).optional().describe('register this file under the data directory (absolute, or relative to it)'),
    fromVolume: name.optional().describe('or make the image from this volume (configured or unmapped), as a job'),
  })
  .refine((b) => (b.path === undefined) !== (b.fromVolume === undefined), { message: 'give exactly one of path or fromVolume' });

export const images: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['images'];
  app.get('/v1/images', { schema: { summary: 'List images', tags, querystring: noQuery, response: replies({ 200: z.strictObject({ images: z.array(views.imageView) }) }) } }, () => ({
    images: m.bulk.listImages().map((i) => ({ name: i.name, path: i.path, size: i.size, createdAt: i.created_at })),
  }));
  app.post(
    '/v1/images',
    { schema: { summary: 'Register an image file under the data directory (201), or make one from a volume (202, a job)', tags, body: createImage, response: replies({ 201: views.imageView, 202: acceptedView }) } },
    async (req, reply) => {
      if (req.body.fromVolume !== undefined) return reply.code(202).send(accepted(m.bulk.captureImage(req.body.name, req.body.fromVolume)));
      const i = await m.bulk.registerImage(req.body.name, req.body.path!);
      return reply.code(201).send({ name: i.name, path: i.path, size: i.size, createdAt: i.created_at });
    },
  );
  app.delete(
    '/v1/images/:name',
    { schema: { summary: 'Unregister an image (its file is kept); 409 while a copy reads it', tags, params: nameParam, response: replies({ 204: z.undefined() }) } },
    async (req, reply) => {
      m.bulk.deleteImage(req.params.name);
      return reply.code(204).send();
    },
  );
};
