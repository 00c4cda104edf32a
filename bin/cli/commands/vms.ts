import type { Command } from 'commander';
import { table } from '../output.js';
import { client, followJob, jobOptions, out, parseIntArg, list, verb } from '../context.js';

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
  jobOptions(
    verb(vm, 'migrate <name>', "move a VM's disks to another host, live: a job, followed with a progress bar (exit 7 if it rolled back)")
      .requiredOption('--to <host>', 'the host the VM moves to')
      .option('--mode <mode>', 'live (cut over once the new host connects) or stop-and-copy (at once)', 'live')
      .option('--protocol <protocol>', "nbd, iscsi or both (default: the new host's default)")
      .option('--timeout <ms>', 'how long a live migration waits for the new host before rolling back', parseIntArg('timeout')),
  ).action(async (name: string, o: { to: string; mode: string; protocol?: string; timeout?: number }, cmd: Command) => {
    const body = { to: o.to, mode: o.mode, ...(o.protocol ? { protocol: o.protocol } : {}), ...(o.timeout !== undefined ? { timeoutMs: o.timeout } : {}) };
    await followJob(cmd, await client(cmd).call<Parameters<typeof followJob>[1]>('POST', `/v1/vms/${encodeURIComponent(name)}/migrate`, body));
  });
  verb(vm, 'cutover <name>', 'cut a live migration over now, without waiting for the new host').action(async (name: string, _o, cmd: Command) => {
    await client(cmd).call('POST', `/v1/vms/${encodeURIComponent(name)}/migrate/cutover`);
    out(cmd, { cutover: name }, () => `cutover of ${name} requested\n`);
  });
  verb(vm, 'delete <name>', 'delete a VM (its bindings stay)').action(async (name: string, _o, cmd: Command) => {
    await client(cmd).call('DELETE', `/v1/vms/${encodeURIComponent(name)}`);
    out(cmd, { deleted: name }, () => `vm ${name} deleted\n`);
  });
}
