import { z } from 'zod';
import { badRequest } from '../../common/errors.js';
import { JOB_STATES, views } from '../../manager/index.js';
import { replies } from '../errors.js';
import { idParam } from '../schemas.js';
import type { ResourcePlugin } from './context.js';

/** A 202 reply: the job resource and where to poll it. */
export const acceptedView = z.strictObject({ job: views.jobView, location: z.string().describe('poll here') });
export const accepted = (j: views.JobView): z.output<typeof acceptedView> => ({ job: j, location: `/v1/jobs/${j.id}` });

const listQuery = z.strictObject({
  state: z.enum(JOB_STATES).optional(),
  kind: z.string().min(1).max(32).optional().describe('scrub, copy, image-copy, image-capture, snap or activate'),
  limit: z.coerce.number().int().min(1).max(1000).default(200),
});

export const jobs: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['jobs'];
  const one = replies({ 200: views.jobView });
  app.get('/v1/jobs', { schema: { summary: 'List jobs, newest first; filter by state and kind', tags, querystring: listQuery, response: replies({ 200: z.strictObject({ jobs: z.array(views.jobView) }) }) } }, (req) => {
    if (req.query.kind !== undefined && !m.jobs.kindNames().includes(req.query.kind)) {
      throw badRequest(`kind: no job kind '${req.query.kind}' (one of ${m.jobs.kindNames().join(', ')})`);
    }
    return { jobs: m.jobs.list(req.query).map((j) => m.jobs.describe(j)) };
  });
  app.get('/v1/jobs/:id', { schema: { summary: 'One job with progress', tags, params: idParam, response: one } }, (req) => m.jobs.describe(m.jobs.get(req.params.id)));
  app.post('/v1/jobs/:id/cancel', { schema: { summary: 'Cancel a queued or running job', tags, params: idParam, response: one } }, async (req) =>
    m.jobs.describe(await m.jobs.cancel(req.params.id)),
  );
};
