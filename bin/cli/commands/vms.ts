import type { Command } from 'commander';
import { table } from '../output.js';
import { client, out, parseIntArg, list, verb } from '../context.js';

interface Vm {
  name: string;
  host: string;
  bindings: { id: number; volume: string; target: number; lun: number }[];
  createdAt: string;
}

const vmTable = (vs: Vm[]): string =>
  table(vs, [
    ['NAME', (v) => v.name],
    ['HOST', (v) => v.host],
    ['DISKS', (v) => v.bindings.map((b) => `${b.target}/${b.lun}:${b.volume}`).join(' ')],
  ]);

/** `blockgate vm …`: consumers on a host owning bindings. */
export function register(program: Command): void {
  const vm = program.command('vm').description('VMs: named consumers on a host, owning one or more bindings');
  verb(vm, 'list', 'list VMs').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call<{ vms: Vm[] }>('GET', '/v1/vms');
    out(cmd, r, () => vmTable(r.vms));
  });
  verb(vm, 'show <name>', 'one VM').action(async (name: string, _o, cmd: Command) => {
    const v = await client(cmd).call<Vm>('GET', `/v1/vms/${encodeURIComponent(name)}`);
    out(cmd, v, () => vmTable([v]));
  });
  verb(vm, 'create <name>', 'create a VM on a host owning some of its bindings')
    .requiredOption('--host <host>', 'the host')
    .requiredOption('--bindings <id,…>', 'binding ids on that host')
    .action(async (name: string, o: { host: string; bindings: string }, cmd: Command) => {
      const v = await client(cmd).call<Vm>('POST', '/v1/vms', { name, host: o.host, bindings: list(o.bindings).map(parseIntArg('binding id')) });
      out(cmd, v, () => vmTable([v]));
    });
  verb(vm, 'delete <name>', 'delete a VM (its bindings stay)').action(async (name: string, _o, cmd: Command) => {
    await client(cmd).call('DELETE', `/v1/vms/${encodeURIComponent(name)}`);
    out(cmd, { deleted: name }, () => `vm ${name} deleted\n`);
  });
}
