import type { Command } from 'commander';
import { table } from '../output.js';
import { client, followJob, humanSize, jobOptions, list, out, parseIntArg, verb } from '../context.js';

interface Backup {
  id: number;
  name: string;
  vm: string;
  kind: string;
  parent: number | null;
  state: string;
  pauseMs: number | null;
  createdAt: string;
  volumes: { volume: string; size: number; full: boolean; allocated: number; stored: number; checksum: string; file: string }[];
}

const backupTable = (bs: Backup[]): string =>
  table(bs, [
    ['ID', (b) => b.id],
    ['NAME', (b) => b.name],
    ['VM', (b) => b.vm],
    ['KIND', (b) => (b.parent ? `${b.kind}<${b.parent}` : b.kind)],
    ['STATE', (b) => b.state],
    ['STORED', (b) => humanSize(b.volumes.reduce((s, v) => s + v.stored, 0))],
    ['PAUSE', (b) => (b.pauseMs === null ? '-' : `${b.pauseMs.toFixed(1)}ms`)],
    ['VOLUMES', (b) => b.volumes.map((v) => v.volume).join(' ')],
  ]);

type PolicyOpts = { schedule?: string; keepLast?: number; keepDailyDays?: number; store?: string; clearSchedule?: boolean };
const policyBody = (o: PolicyOpts): Record<string, unknown> => ({
  ...(o.schedule !== undefined ? { schedule: o.schedule } : {}),
  ...(o.clearSchedule ? { schedule: null } : {}),
  ...(o.keepLast !== undefined ? { keepLast: o.keepLast } : {}),
  ...(o.keepDailyDays !== undefined ? { keepDailyDays: o.keepDailyDays } : {}),
  ...(o.store !== undefined ? { store: o.store } : {}),
});

/** `blockgate vm backup …` and `blockgate backup …`: VM-consistent backups, the catalog, policies and restore. */
export function register(program: Command): void {
  const vm = program.commands.find((c) => c.name() === 'vm') ?? program.command('vm');
  jobOptions(verb(vm, 'backup <name>', "back a VM up at one instant into its farm's backup store (a job)").option('--label <label>', "name part: <vm>-<label>-<UTC timestamp> (default 'manual')")).action(
    async (name: string, o: { label?: string }, cmd: Command) => {
      await followJob(cmd, await client(cmd).call<Parameters<typeof followJob>[1]>('POST', `/v1/vms/${encodeURIComponent(name)}/backups`, o.label ? { label: o.label } : {}));
    },
  );
  const bk = program.command('backup').description('the backup catalog: list, show, delete, restore, schedules and retention');
  verb(bk, 'list', 'list backups, oldest first')
    .option('--vm <vm>')
    .option('--label <label>')
    .option('--volume <volume>')
    .option('--since <iso-time>')
    .option('--state <state>', 'running, complete or failed')
    .action(async (o: Record<string, string | undefined>, cmd: Command) => {
      const q = new URLSearchParams(Object.entries(o).filter((e): e is [string, string] => typeof e[1] === 'string'));
      const r = await client(cmd).call<{ backups: Backup[] }>('GET', `/v1/backups${q.size ? `?${q}` : ''}`);
      out(cmd, r, () => backupTable(r.backups));
    });
  verb(bk, 'show <id>', 'one backup with its volumes').action(async (id: string, _o, cmd: Command) => {
    const b = await client(cmd).call<Backup>('GET', `/v1/backups/${parseIntArg('backup id')(id)}`);
    out(cmd, b, () =>
      backupTable([b]) + table(b.volumes, [['VOLUME', (v) => v.volume], ['SIZE', (v) => humanSize(v.size)], ['FULL', (v) => v.full], ['STORED', (v) => humanSize(v.stored)], ['SHA256', (v) => v.checksum.slice(0, 16)], ['FILE', (v) => v.file]]),
    );
  });
  verb(bk, 'delete <id>', 'delete a backup and its files').action(async (id: string, _o, cmd: Command) => {
    await client(cmd).call('DELETE', `/v1/backups/${parseIntArg('backup id')(id)}`);
    out(cmd, { deleted: Number(id) }, () => `backup ${id} deleted\n`);
  });
  jobOptions(
    verb(bk, 'restore <id>', 'restore a backup (checked against its checksums first): into new volumes mapped on --host, or --in-place')
      .option('--host <host>', 'the host the new volumes are bound and mapped on')
      .option('--in-place', "rewrite the VM's volumes themselves (their units are unmapped meanwhile)")
      .option('--volumes <v,…>', 'only these volumes of the backup')
      .option('--target <n>', 'target of the new bindings (default 0)', parseIntArg('target'))
      .option('--suffix <s>', 'new volumes are named <volume><suffix> (default -r<id>)'),
  ).action(async (id: string, o: { host?: string; inPlace?: boolean; volumes?: string; target?: number; suffix?: string }, cmd: Command) => {
    const body = {
      ...(o.host ? { host: o.host } : {}),
      ...(o.inPlace ? { inPlace: true } : {}),
      ...(o.volumes ? { volumes: list(o.volumes) } : {}),
      ...(o.target !== undefined ? { target: o.target } : {}),
      ...(o.suffix ? { suffix: o.suffix } : {}),
    };
    await followJob(cmd, await client(cmd).call<Parameters<typeof followJob>[1]>('POST', `/v1/backups/${parseIntArg('backup id')(id)}/restore`, body));
  });
  for (const scope of ['vm', 'farm'] as const) {
    verb(bk, `policy-${scope} <name>`, `show or set a ${scope}'s backup schedule and retention`)
      .option('--schedule <cron>', 'cron expression (6 fields: seconds first)')
      .option('--clear-schedule', 'no scheduled backups')
      .option('--keep-last <n>', 'keep the newest N backups', parseIntArg('keep-last'))
      .option('--keep-daily-days <d>', 'keep the newest backup of each day for D days', parseIntArg('keep-daily-days'))
      .option('--store <dir>', "the farm's backup store (farm only)")
      .action(async (name: string, o: PolicyOpts, cmd: Command) => {
        const body = policyBody(o);
        const url = `/v1/${scope}s/${encodeURIComponent(name)}/backup-policy`;
        const p = Object.keys(body).length ? await client(cmd).call<Record<string, unknown>>('PUT', url, body) : await client(cmd).call<Record<string, unknown>>('GET', url);
        out(cmd, p, () => Object.entries(p).map(([k, v]) => `${k}: ${v ?? '-'}\n`).join(''));
      });
  }
}
