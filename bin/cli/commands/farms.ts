import type { Command } from 'commander';
import { table } from '../output.js';
import { client, out, verb } from '../context.js';

/** `blockgate farm …`: tenants. */
export function register(program: Command): void {
  const farm = program.command('farm').description('farms (tenants): hosts and volumes of one farm never see another farm\'s');
  verb(farm, 'list', 'list farms').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call<{ farms: { name: string; createdAt: string }[] }>('GET', '/v1/farms');
    out(cmd, r, () => table(r.farms, [['NAME', (f) => f.name], ['CREATED', (f) => f.createdAt]]));
  });
  verb(farm, 'create <name>', 'create a farm').action(async (name: string, _o, cmd: Command) => {
    const r = await client(cmd).call('POST', '/v1/farms', { name });
    out(cmd, r, () => `farm ${name} created\n`);
  });
  verb(farm, 'delete <name>', 'delete a farm no host or volume belongs to').action(async (name: string, _o, cmd: Command) => {
    await client(cmd).call('DELETE', `/v1/farms/${encodeURIComponent(name)}`);
    out(cmd, { farm: name, deleted: true }, () => `farm ${name} deleted\n`);
  });
}
