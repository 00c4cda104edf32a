import type { Command } from 'commander';
import type { ApiClient } from '../client.js';
import { CliError, EXIT } from '../client.js';
import { table } from '../output.js';
import { client, details, listUrl, notePage, out, pageOptions, parseIntArg, parseUnit, usage, verb } from '../context.js';

interface Binding {
  id: number;
  volume: string;
  host: string;
  target: number;
  lun: number;
  protocol: string;
  mode: string;
  mapped: boolean;
  createdAt: string;
}

const bindingTable = (bs: Binding[]): string =>
  table(bs, [
    ['ID', (b) => b.id],
    ['VOLUME', (b) => b.volume],
    ['HOST', (b) => b.host],
    ['UNIT', (b) => `${b.target}/${b.lun}`],
    ['MODE', (b) => b.mode],
    ['PROTOCOL', (b) => b.protocol],
    ['MAPPED', (b) => b.mapped],
  ]);

/** A binding named by id, or found by host and unit (what an admin usually knows). */
async function findBinding(api: ApiClient, id: string | undefined, o: { host?: string; unit?: string }): Promise<number> {
  if (id !== undefined) {
    if (o.host || o.unit) throw usage('give a binding id or --host and --unit, not both');
    return parseIntArg('binding id')(id);
  }
  if (!o.host || !o.unit) throw usage('give a binding id, or --host HOST --unit T/L');
  const { target, lun } = parseUnit(o.unit);
  const { bindings } = await api.call<{ bindings: Binding[] }>('GET', listUrl('/v1/bindings', { host: o.host }));
  const b = bindings.find((x) => x.host === o.host && x.target === target && x.lun === lun);
  if (!b) throw new CliError(`host '${o.host}' has no binding at unit ${o.unit}`, EXIT.NOT_FOUND, 'NOT_FOUND');
  return b.id;
}

/** `blockgate bind|map|unmap|unbind` and `blockgate binding list|show`. */
export function register(program: Command): void {
  const binding = program.command('binding').description('bindings: volume ↔ host at a unit address');
  pageOptions(verb(binding, 'list', 'list bindings, by id'))
    .option('--host <host>', 'only this host')
    .option('--volume <volume>', 'only this volume')
    .action(async (o: { host?: string; volume?: string; limit?: string; after?: string }, cmd: Command) => {
      const api = client(cmd);
      const r = await api.call<{ bindings: Binding[] }>('GET', listUrl('/v1/bindings', { host: o.host, volume: o.volume, limit: o.limit, after: o.after }));
      out(cmd, r, () => bindingTable(r.bindings));
      notePage(api, o.limit);
    });
  verb(binding, 'show <id>', 'one binding').action(async (id: string, _o, cmd: Command) => {
    const b = await client(cmd).call<Binding>('GET', `/v1/bindings/${parseIntArg('binding id')(id)}`);
    out(cmd, b, () => details(b as unknown as Record<string, unknown>));
  });

  verb(program, 'bind <volume> <host>', 'bind a volume to a host at a unit (and map it, unless --no-map)')
    .requiredOption('--unit <T/L>', 'unit address in the host namespace, e.g. 0/0 (boot unit) or 1/0')
    .option('--mode <mode>', 'exclusive, shared or read-only')
    .option('--no-map', 'stop in bound; map later with `blockgate map`')
    .action(async (volume: string, host: string, o: { unit: string; mode?: string; map: boolean }, cmd: Command) => {
      const { target, lun } = parseUnit(o.unit);
      const b = await client(cmd).call<Binding>('POST', '/v1/bindings', { volume, host, target, lun, map: o.map, ...(o.mode ? { mode: o.mode } : {}) });
      out(cmd, b, () => bindingTable([b]));
    });

  const byBinding = (name: string, description: string, run: (api: ApiClient, id: number) => Promise<Binding | null>): void => {
    verb(program, `${name} [binding-id]`, description)
      .option('--host <host>', 'find the binding by host …')
      .option('--unit <T/L>', '… and unit')
      .action(async (id: string | undefined, o: { host?: string; unit?: string }, cmd: Command) => {
        const api = client(cmd);
        const bid = await findBinding(api, id, o);
        const b = await run(api, bid);
        out(cmd, b ?? { id: bid, unbound: true }, () => (b ? bindingTable([b]) : `binding ${bid} removed\n`));
      });
  };
  byBinding('map', 'map a bound volume: the unit appears in the host namespace at once', (api, id) => api.call<Binding>('POST', `/v1/bindings/${id}/map`));
  byBinding('unmap', 'unmap: hold new I/O, drain, flush, close the sessions on that unit', (api, id) => api.call<Binding>('POST', `/v1/bindings/${id}/unmap`));
  verb(program, 'switch [binding-id]', "switch a binding's protocol live (hold, drain, sync, withdraw, publish); prints the connection descriptor")
    .requiredOption('--protocol <protocol>', 'nbd, iscsi or both')
    .option('--host <host>', 'find the binding by host …')
    .option('--unit <T/L>', '… and unit')
    .action(async (id: string | undefined, o: { protocol: string; host?: string; unit?: string }, cmd: Command) => {
      const api = client(cmd);
      const bid = await findBinding(api, id, o);
      const r = await api.call<{ binding: Binding; from: string; pauseMs: number; descriptor: { addresses: { protocol: string; uris: string[] }[] } | null }>('POST', `/v1/bindings/${bid}/switch`, { protocol: o.protocol });
      out(cmd, r, () =>
        `binding ${bid}: ${r.from} → ${r.binding.protocol} (I/O held ${r.pauseMs.toFixed(1)} ms)\n` + (r.descriptor?.addresses ?? []).map((a) => `  ${a.protocol}  ${a.uris.join('  ')}\n`).join(''),
      );
    });
  byBinding('unbind', 'remove an unmapped binding', async (api, id) => {
    await api.call('DELETE', `/v1/bindings/${id}`);
    return null;
  });
}
