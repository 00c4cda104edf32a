import { z } from 'zod';

import { replies } from '../errors.js';
import { idParam, name, nameParam, noQuery } from '../schemas.js';
import type { ResourcePlugin } from './context.js';
import { accepted, acceptedView } from './jobs.js';

const hex = z.string();
const backupView = z
  .strictObject({
    id: z.number().int().positive(),
    name: z.string(),
    vm: z.string(),
    host: z.string(),
    farm: z.string().nullable(),
    label: z.string(),
    kind: z.enum(['full', 'incr']),
    parent: z.number().int().nullable().describe('the backup an incremental counts from'),
    state: z.enum(['running', 'complete', 'failed']),
    pauseMs: z.number().nullable().describe("how long the VM's I/O was held for the consistency-group snapshot"),
    error: z.string().nullable(),
    createdAt: z.string(),
    finishedAt: z.string().nullable(),
    volumes: z.array(
      z.strictObject({
        volume: z.string(),
        size: z.number().int(),
        full: z.boolean().describe('false: the file holds only the chunks changed since the parent'),
        allocated: z.number().int().describe("bytes of data in the volume when it was backed up"),
        stored: z.number().int().describe('bytes written into the backup file'),
        checksum: hex.describe("SHA-256 of the volume's bytes as backed up"),
        file: z.string(),
      }),
    ),
  })
  .meta({ id: 'Backup' });

const policyView = z
  .strictObject({
    schedule: z.string().nullable().describe('cron expression (5 or 6 fields, seconds first when 6)'),
    keepLast: z.number().int().nullable(),
    keepDailyDays: z.number().int().nullable(),
    store: z.string().nullable().describe("the farm's backup store directory (default DATA/backups/<farm>)"),
  })
  .meta({ id: 'BackupPolicy' });

const policyBody = z.strictObject({
  schedule: z.string().min(1).max(128).nullable().optional(),
  keepLast: z.number().int().min(1).max(10_000).nullable().optional(),
  keepDailyDays: z.number().int().min(1).max(36_500).nullable().optional(),
  store: z.string().min(1).max(4096).nullable().optional(),
});

const backupBody = z.strictObject({ label: z.string().min(1).max(32).optional().describe("part of the backup's name <vm>-<label>-<UTC timestamp> (default 'manual')") });
const listQuery = z.strictObject({
  vm: name.optional(),
  label: z.string().min(1).max(32).optional(),
  volume: name.optional().describe('backups holding this volume'),
  since: z.iso.datetime({ offset: true }).optional().describe('taken at or after this time (ISO 8601)'),
  state: z.enum(['running', 'complete', 'failed']).optional(),
});
const restoreBody = z.strictObject({
  volumes: z.array(name).min(1).max(256).optional().describe('the volumes to restore (default: all of the backup)'),
  inPlace: z.boolean().default(false).describe("rewrite the volumes themselves (their units are unmapped meanwhile)"),
  host: name.optional().describe('for a restore into new volumes: the host they are bound and mapped on'),
  target: z.number().int().min(0).max(255).optional().describe('target of the new bindings (default 0; LUNs are the lowest free)'),
  suffix: z.string().regex(/^[A-Za-z0-9_.-]{1,16}$/).optional().describe("new volumes are named <volume><suffix> (default -r<backup id>)"),
});
const accepted202 = acceptedView.extend({ backup: backupView });

export const backups: ResourcePlugin = async (app, { manager: m }) => {
  const tags = ['backups'];
  const b = m.backups;
  app.post(
    '/v1/vms/:name/backups',
    {
      schema: {
        summary: "Back a VM up (a job): its volumes are snapped at one instant, copied sparsely into the farm's backup store, checksummed, the snapshots dropped",
        tags,
        params: nameParam,
        body: backupBody,
        response: replies({ 202: accepted202 }),
      },
    },
    async (req, reply) => {
      const r = b.submit(req.params.name, req.body);
      return reply.code(202).send({ ...accepted(r.job), backup: r.backup });
    },
  );
  app.get('/v1/backups', { schema: { summary: 'The backup catalog, oldest first; filter by vm, label, volume, since, state', tags, querystring: listQuery, response: replies({ 200: z.strictObject({ backups: z.array(backupView) }) }) } }, (req) => ({
    backups: b.list(req.query),
  }));
  app.get('/v1/backups/:id', { schema: { summary: 'One backup', tags, params: idParam, querystring: noQuery, response: replies({ 200: backupView }) } }, (req) => b.show(req.params.id));
  app.delete('/v1/backups/:id', { schema: { summary: 'Delete a backup and its files (refused while an incremental counts from it)', tags, params: idParam, response: replies({ 204: z.undefined() }) } }, async (req, reply) => {
    await b.delete(req.params.id);
    return reply.code(204).send();
  });
  app.post(
    '/v1/backups/:id/restore',
    {
      schema: {
        summary: 'Restore a backup (a job): every chain is checked against the catalog checksums first; into new volumes mapped on a host, or in place',
        tags,
        params: idParam,
        body: restoreBody,
        response: replies({ 202: acceptedView }),
      },
    },
    async (req, reply) => reply.code(202).send(accepted(b.restore(req.params.id, req.body))),
  );
  for (const scope of ['vm', 'farm'] as const) {
    const url = `/v1/${scope}s/:name/backup-policy`;
    app.get(url, { schema: { summary: `A ${scope}'s backup schedule and retention`, tags, params: nameParam, querystring: noQuery, response: replies({ 200: policyView }) } }, (req) => b.policy(scope, req.params.name));
    app.put(url, { schema: { summary: `Set a ${scope}'s backup schedule (cron), retention (keep last N, keep daily for D days)${scope === 'farm' ? ' and backup store' : ''}; null clears`, tags, params: nameParam, body: policyBody, response: replies({ 200: policyView }) } }, (req) =>
      b.setPolicy(scope, req.params.name, req.body),
    );
  }
};
