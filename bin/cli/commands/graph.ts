import type { Command } from 'commander';
import { table } from '../output.js';
import { client, opts, usage, withGlobals } from '../context.js';

interface GraphAnswer {
  root: string | null;
  query: string | null;
  answer: string[] | null;
  nodes: { id: string; kind: string; name: string }[];
  edges: { from: string; to: string; rel: string }[];
}

const SUBJECTS = ['farm', 'host', 'vm', 'unit', 'binding', 'volume', 'snapshot', 'extent', 'array', 'file'] as const;

/** `blockgate graph …`: the resource graph, a part of it, or a question about it. */
export function register(program: Command): void {
  const g = withGlobals(program.command('graph').description('the resource graph: farm → host → VM → unit → binding → volume → extent → array → file'))
    .option('--root <kind/name>', 'centre on one object (e.g. vm/web1): it, what it stands on, what stands on it')
    .option('--query <q>', '<kind>s-of or <kind>s-touching (arrays-of, vms-touching, snapshots-of, …) about the one subject given')
    .option('--format <format>', 'json (default with --json), dot (Graphviz), or a table of nodes')
    .addHelpText('after', '\nExamples:\n  blockgate graph --query arrays-of --vm web1\n  blockgate graph --query vms-touching --array a0\n  blockgate graph --root vm/web1 --format dot | dot -Tsvg > web1.svg\n');
  for (const k of SUBJECTS) g.option(`--${k} <name>`, `the query's subject is ${k} NAME`);
  g.action(async (o: Record<string, string | undefined>, cmd: Command) => {
    const params = new URLSearchParams();
    if (o.root) params.set('root', o.root);
    if (o.query) params.set('q', o.query);
    for (const k of SUBJECTS) if (o[k] !== undefined) params.set(k, o[k]);
    const format = o.format ?? (opts(cmd).json ? 'json' : 'table');
    if (!['json', 'dot', 'table'].includes(format)) throw usage(`--format '${format}' is not json, dot or table`);
    if (format === 'dot') {
      params.set('format', 'dot');
      process.stdout.write(await client(cmd).callText('GET', `/v1/graph?${params}`));
      return;
    }
    const a = await client(cmd).call<GraphAnswer>('GET', `/v1/graph?${params}`);
    if (format === 'json') {
      process.stdout.write(JSON.stringify(a, null, 2) + '\n');
      return;
    }
    const rows = a.answer ? a.nodes.filter((n) => a.answer!.includes(n.id)) : a.nodes;
    process.stdout.write(
      table(rows, [
        ['KIND', (n) => n.kind],
        ['NAME', (n) => n.name],
      ]),
    );
  });
}
