import { z } from 'zod';
import { views, words } from '../../manager/index.js';
import { replies } from '../errors.js';
import { badRequest } from '../../common/errors.js';
import { name, nameParam, noQuery, qualityClass, size } from '../schemas.js';
import type { ResourcePlugin } from './context.js';
import { accepted, acceptedView } from './jobs.js';
import { namePage, nextPage } from './paging.js';

const createVolume = z.strictObject({
  name,
  size: size.optional().describe('bytes, or a string such as "256M"; required unless cloneOf'),
  cloneOf: name.optional().describe('provision as a copy of this volume (a job; a mapped source is snapshotted first, then materialised): 202'),
  farm: name.optional(),
  qualityClass: qualityClass.optional(),
  shareMode: words.shareMode.optional(),
  layout: z.array(z.strictObject({ array: name, size })).min(1).max(64).optional(),
  configure: z.boolean().default(true).describe('go on to configured (a predefined volume needs no meta build); false stops at allocated'),
  provisioning: words.provisioning.default('thin').describe('thick: all the space is allocated (as zeroes) now and never trimmed away'),
});
const change = z.strictObject({
  provisioning: words.provisioning.optional().describe('thin → thick allocates every hole now; thick → thin lets later trims give space back'),
  cachePolicy: words.cachePolicy.optional().describe('write-back, write-through or none; leaving write-back writes the cached blocks to the array first'),
});
const claim = z.strictObject({ farm: name, size, qualityClass: qualityClass.optional() });
const resize = z.strictObject({ size });
const scrub = z.strictObject({ pattern: z.number().int().min(0).max(255).default(0), verify: z.boolean().default(true) });
const copy = z.strictObject({
  targets: z
    .array(name)
    .min(1)
    .max(16)
    .refine((t) => new Set(t).size === t.length, 'targets must be distinct'),
  verify: z.boolean().default(true),
});
const copyImage = z.strictObject({ image: name, verify: z.boolean().default(true) });
const snap = z.strictObject({ snapshot: name });

/** Volumes and their FIG. 7 lifecycle; the long steps answer 202 with a job. */
const reassign = z.strictObject({
  host: name.describe('the host the volume goes to'),
  unit: z
    .string()
    .regex(/^\d{1,5}\/\d{1,5}$/, 'unit is TARGET/LUN, e.g. "0/1"')
    .refine((u) => {
      const [t, l] = u.split('/').map(Number) as [number, number];
      return words.target.safeParse(t).success && words.lun.safeParse(l).success;
    }, 'target or LUN out of range')
    .describe('TARGET/LUN on the new host'),
});
const reassignView = z.strictObject({
  binding: views.bindingView,
  from: name.describe('the host that had it'),
  descriptor: views.connectionDescriptor.nullable().describe('how the new host reaches it (null when the binding is not mapped)'),
  pauseMs: z.number().describe('how long the volume held I/O'),
});

export const volumes: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['volumes'];
  const one = replies({ 200: views.volumeView });
  const job = replies({ 202: acceptedView });
  app.get(
    '/v1/volumes',
    { schema: { summary: 'List volumes by name; ?limit= and ?after= page it (x-next-after and Link name the next page)', tags, querystring: z.strictObject(namePage), response: replies({ 200: z.strictObject({ volumes: z.array(views.volumeView) }) }) } },
    (req, reply) => {
      const page = m.listing.volumes(req.query);
      nextPage(req, reply, page.next);
      return { volumes: page.items };
    },
  );
  app.get('/v1/volumes/:name', { schema: { summary: 'One volume, with its state and the operations allowed in it', tags, params: nameParam, querystring: noQuery, response: one } }, (req) =>
    m.describeVolume(m.volume(req.params.name)),
  );
  app.post(
    '/v1/volumes',
    {
      schema: {
        summary: 'Allocate a volume (free → allocated; with configure, → configured); with cloneOf, provision it as a copy of another volume (a job)',
        tags,
        body: createVolume,
        response: replies({ 201: views.volumeView, 202: acceptedView.extend({ volume: views.volumeView }) }),
      },
    },
    async (req, reply) => {
      const { cloneOf, size, ...rest } = req.body;
      if (cloneOf !== undefined) {
        if (size !== undefined || rest.layout !== undefined) throw badRequest('a clone takes its size and placement from its source: leave size and layout out');
        const r = await m.cloneVolume(rest.name, cloneOf);
        return reply.code(202).send({ ...accepted(r.job), volume: m.describeVolume(r.volume) });
      }
      if (size === undefined) throw badRequest('size is required (unless cloneOf)');
      return reply.code(201).send(m.describeVolume(m.createVolume({ ...rest, size })));
    },
  );
  app.post(
    '/v1/volumes/:name/reassign',
    {
      schema: {
        summary: 'Give the volume to another host at a unit address, live: hold, drain, sync, unbind the old host (its sessions end), bind the new one',
        tags,
        params: nameParam,
        body: reassign,
        response: replies({ 200: reassignView }),
      },
    },
    async (req) => {
      const [t, l] = req.body.unit.split('/').map(Number) as [number, number];
      return m.reassignVolume(req.params.name, req.body.host, t, l);
    },
  );
  app.patch('/v1/volumes/:name', { schema: { summary: 'Change a volume’s settings (provisioning, cache policy)', tags, params: nameParam, body: change, response: one } }, async (req) => {
    if (req.body.provisioning) m.setProvisioning(req.params.name, req.body.provisioning);
    if (req.body.cachePolicy) await m.iscsi.setCachePolicy(m.volume(req.params.name).id, req.body.cachePolicy);
    return m.describeVolume(m.volume(req.params.name));
  });
  app.post(
    '/v1/volumes/claim',
    { schema: { summary: 'Allocate from the predefined volumes (configured, no farm yet) by size and quality class', tags, body: claim, response: replies({ 201: views.volumeView }) } },
    async (req, reply) => reply.code(201).send(m.describeVolume(m.claimVolume(req.body))),
  );
  app.delete('/v1/volumes/:name', { schema: { summary: 'Forget a free volume', tags, params: nameParam, response: replies({ 204: z.undefined() }) } }, async (req, reply) => {
    m.deleteVolume(req.params.name);
    return reply.code(204).send();
  });
  const step = (url: string, summary: string, fn: (name: string) => unknown): void => {
    app.post(`/v1/volumes/:name/${url}`, { schema: { summary, tags, params: nameParam, response: one } }, (req) => {
      fn(req.params.name);
      return m.describeVolume(m.volume(req.params.name));
    });
  };
  step('configure', 'Configure / meta create (allocated → configured)', (n) => m.configure(n));
  step('meta', 'Meta create: same as configure (allocated → configured)', (n) => m.configure(n));
  step('break', 'Break the meta volume (→ unconfigured)', (n) => m.breakVolume(n));
  step('deallocate', 'De-allocate (unconfigured → free); refused until scrubbed', (n) => m.deallocate(n));
  app.post('/v1/volumes/:name/resize', { schema: { summary: 'Grow a volume', tags, params: nameParam, body: resize, response: one } }, (req) =>
    m.describeVolume(m.resize(req.params.name, req.body.size)),
  );
  app.post('/v1/volumes/:name/scrub', { schema: { summary: 'Scrub (overwrite and verify) as a job', tags, params: nameParam, body: scrub, response: job } }, async (req, reply) =>
    reply.code(202).send(accepted(m.bulk.scrub(req.params.name, req.body))),
  );
  app.post('/v1/volumes/:name/copy', { schema: { summary: 'Copy a volume no host is writing (configured, unmapped, unbound, a snapshot) onto configured or unbound targets, moving only allocated runs, as a job', tags, params: nameParam, body: copy, response: job } }, async (req, reply) =>
    reply.code(202).send(accepted(m.bulk.copy(req.params.name, req.body.targets, req.body))),
  );
  app.post('/v1/volumes/:name/copy-image', { schema: { summary: 'Copy an image onto a configured volume, as a job', tags, params: nameParam, body: copyImage, response: job } }, async (req, reply) =>
    reply.code(202).send(accepted(m.bulk.copyImage(req.params.name, req.body.image, req.body))),
  );
  app.post(
    '/v1/volumes/:name/snap',
    {
      schema: {
        summary: 'Point-in-time copy-on-write snapshot of a mapped volume; complete when answered (its job has nothing left to copy)',
        tags,
        params: nameParam,
        body: snap,
        response: replies({ 202: acceptedView.extend({ snapshot: views.volumeView }) }),
      },
    },
    async (req, reply) => {
      const { job: j, snapshot } = await m.snapshots.snap(req.params.name, req.body.snapshot);
      return reply.code(202).send({ ...accepted(j), snapshot: m.describeVolume(snapshot) });
    },
  );
  app.post(
    '/v1/volumes/:name/materialise',
    { schema: { summary: 'Copy every region a copy-on-write snapshot still shares with its origin, then unlink it, as a job', tags, params: nameParam, response: job } },
    async (req, reply) => reply.code(202).send(accepted(m.snapshots.materialise(req.params.name))),
  );
};
