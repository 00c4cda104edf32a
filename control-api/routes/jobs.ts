import type { ResourcePlugin } from './context.js';
import { idParam } from '../schemas.js';

/** A 202 reply: the job resource and where to poll it. */
export const accepted = <J extends Record<string, unknown>>(j: J): { job: J; location: string } => ({ job: j, location: `/v1/jobs/${String(j.id)}` });

export const jobs: ResourcePlugin = async (app, { manager: m }) => {
  app.get('/v1/jobs', { schema: { summary: 'List jobs, newest first', tags: ['jobs'] } }, () => ({ jobs: m.jobs.list().map((j) => m.jobs.describe(j)) }));
  app.get('/v1/jobs/:id', { schema: { summary: 'One job with progress', tags: ['jobs'], params: idParam } }, (req) => m.jobs.describe(m.jobs.get(req.params.id)));
  app.post('/v1/jobs/:id/cancel', { schema: { summary: 'Cancel a queued or running job', tags: ['jobs'], params: idParam } }, async (req) =>
    m.jobs.describe(await m.jobs.cancel(req.params.id)),
  );
};
