import { z } from 'zod';
import { badRequest } from '../../common/errors.js';
import { services } from '../../manager/index.js';
import { replies } from '../errors.js';
import type { ResourcePlugin } from './context.js';

const nodeKind = z.enum(services.NODE_KINDS);
const graphNode = z.strictObject({ id: z.string(), kind: nodeKind, name: z.string(), attrs: z.record(z.string(), z.union([z.string(), z.number(), z.boolean(), z.null()])) });
const graphEdge = z.strictObject({ from: z.string(), to: z.string(), rel: z.string() });
const graphView = z
  .strictObject({
    root: z.string().nullable(),
    query: z.string().nullable(),
    answer: z.array(z.string()).nullable().describe('for a query: the ids of the matching nodes'),
    nodes: z.array(graphNode),
    edges: z.array(graphEdge),
  })
  .meta({ id: 'Graph' });

const subjectKeys = Object.fromEntries(services.NODE_KINDS.map((k) => [k, z.string().min(1).max(512).optional()])) as Record<(typeof services.NODE_KINDS)[number], z.ZodOptional<z.ZodString>>;
const graphQuery = z.strictObject({
  root: z.string().min(3).max(512).optional().describe('kind/name to centre on, e.g. vm/web1: it, what it stands on and what stands on it'),
  q: z.string().max(64).optional().describe('<kind>s-of (what the subject stands on) or <kind>s-touching (what stands on it), e.g. arrays-of, vms-touching, snapshots-of, backups-of'),
  format: z.enum(['json', 'dot']).optional().describe('dot: Graphviz (as Accept: text/vnd.graphviz)'),
  ...subjectKeys,
});

export const graph: ResourcePlugin = async (app, { manager: m }) => {
  app.get(
    '/v1/graph',
    {
      schema: {
        summary: 'The resource graph (farm → host → VM → unit → binding → volume → extent → array → file, snapshots, backups), whole, around a root, or answering a query',
        tags: ['graph'],
        querystring: graphQuery,
        response: replies({ 200: graphView }),
      },
    },
    async (req, reply) => {
      const { root, q, format, ...rest } = req.query;
      const given = Object.entries(rest).filter(([, v]) => v !== undefined);
      if (given.length > 1) throw badRequest(`a query has one subject; got ${given.map(([k]) => k).join(', ')}`);
      const subject = given[0] ? `${given[0][0]}/${given[0][1]}` : undefined;
      if (subject && q === undefined) throw badRequest(`?${given[0]![0]}= names the subject of a query: add ?q=…`);
      const a = m.services.query({ root, q, subject });
      const dot = format === 'dot' || (format === undefined && (req.headers.accept ?? '').includes('text/vnd.graphviz'));
      if (dot) return reply.code(200).header('content-type', 'text/vnd.graphviz; charset=utf-8').serializer((p: string) => p).send(m.services.dot(a) as never);
      return a;
    },
  );
};
