import type { Command } from 'commander';
import { table } from '../output.js';
import { client, details, humanSize, out, verb } from '../context.js';

interface ArrayInfo {
  name: string;
  path: string;
  size: number;
  qualityClass: string;
  used?: number;
  free?: number;
  state?: 'online' | 'failed';
  fault?: { reason: string; message: string; since: string };
  allocated?: number | null;
  fileSystem?: { size: number; available: number; usedPercent: number } | null;
}

const arrayTable = (arrays: ArrayInfo[]): string =>
  table(arrays, [
    ['NAME', (a) => a.name],
    ['CLASS', (a) => a.qualityClass],
    ['STATE', (a) => (a.state === 'failed' ? `FAILED (${a.fault?.reason ?? '?'})` : a.state)],
    ['SIZE', (a) => humanSize(a.size)],
    ['USED', (a) => (a.used === undefined ? undefined : humanSize(a.used))],
    ['FREE', (a) => (a.free === undefined ? undefined : humanSize(a.free))],
    // What the sparse file really occupies, and what its file system has left: thin arrays can outgrow it.
    ['ALLOCATED', (a) => (a.allocated === undefined || a.allocated === null ? undefined : humanSize(a.allocated))],
    ['FS FREE', (a) => (a.fileSystem ? `${humanSize(a.fileSystem.available)} (${a.fileSystem.usedPercent}% used)` : undefined)],
    ['FILE', (a) => a.path],
  ]);

/** `blockgate array …` and `blockgate discovery …`: the backing files and the wiring map. */
export function register(program: Command): void {
  const array = program.command('array').description('disk arrays: the sparse backing files volumes are carved from');

  verb(array, 'list', 'list arrays with capacity and free space').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call<{ arrays: ArrayInfo[] }>('GET', '/v1/arrays');
    out(cmd, r, () => arrayTable(r.arrays));
  });

  const showArray = (a: ArrayInfo): string =>
    details({
      name: a.name,
      path: a.path,
      qualityClass: a.qualityClass,
      state: a.state,
      ...(a.fault ? { fault: `${a.fault.reason}: ${a.fault.message} (since ${a.fault.since})` } : {}),
      size: humanSize(a.size),
      used: humanSize(a.used ?? 0),
      free: humanSize(a.free ?? 0),
      allocated: a.allocated === null || a.allocated === undefined ? '-' : humanSize(a.allocated),
      fsSize: a.fileSystem ? humanSize(a.fileSystem.size) : '-',
      fsAvailable: a.fileSystem ? `${humanSize(a.fileSystem.available)} (${a.fileSystem.usedPercent}% used)` : '-',
    });

  verb(array, 'show <name>', 'one array: state, capacity, its file system').action(async (name: string, _o, cmd: Command) => {
    const a = await client(cmd).call<ArrayInfo>('GET', `/v1/arrays/${encodeURIComponent(name)}`);
    out(cmd, a, () => showArray(a));
  });

  verb(array, 'attach <name>', 'attach a failed array again once its file is restored (refused while it still fails the checks)').action(
    async (name: string, _o, cmd: Command) => {
      const a = await client(cmd).call<ArrayInfo>('POST', `/v1/arrays/${encodeURIComponent(name)}/attach`);
      out(cmd, a, () => showArray(a));
    },
  );

  verb(array, 'create <name>', 'create a sparse array file under DATA/arrays')
    .requiredOption('--size <size>', 'size, e.g. 1G or 512M')
    .option('--class <class>', 'quality class (std, performance, raid1, …)')
    .action(async (name: string, o: { size: string; class?: string }, cmd: Command) => {
      const a = await client(cmd).call<ArrayInfo>('POST', '/v1/arrays', { name, size: o.size, ...(o.class ? { qualityClass: o.class } : {}) });
      // A new array is all free space.
      out(cmd, a, () => arrayTable([{ used: 0, free: a.size, ...a }]));
    });

  verb(array, 'delete <name>', 'delete an array no volume has space on (its files are removed)').action(async (name: string, _o, cmd: Command) => {
    await client(cmd).call('DELETE', `/v1/arrays/${encodeURIComponent(name)}`);
    out(cmd, { array: name, deleted: true }, () => `array ${name} deleted\n`);
  });

  const discovery = program.command('discovery').description('the wiring map: arrays, capacity, free extents, volumes, listeners');
  const wiring = (r: { added?: string[]; arrays: (ArrayInfo & { file: string; freeExtents: { offset: number; length: number }[] })[]; volumes: { name: string; state: string; size: number; extents: { array: string; offset: number; length: number }[] }[]; listeners: { host: string; socket: string; tcp: string | null }[] }): string =>
    (r.added?.length ? `adopted arrays: ${r.added.join(', ')}\n\n` : '') +
    arrayTable(r.arrays.map((a) => ({ ...a, path: a.file }))) +
    '\n' +
    table(r.volumes, [
      ['VOLUME', (v) => v.name],
      ['STATE', (v) => v.state],
      ['SIZE', (v) => humanSize(v.size)],
      ['EXTENTS', (v) => v.extents.map((e) => `${e.array}@${humanSize(e.offset)}+${humanSize(e.length)}`).join(' ')],
    ]) +
    '\n' +
    table(r.listeners, [
      ['HOST', (l) => l.host],
      ['SOCKET', (l) => l.socket],
      ['TCP', (l) => l.tcp],
    ]);
  verb(discovery, 'show', 'report the wiring map').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call('GET', '/v1/discovery');
    out(cmd, r, () => wiring(r));
  });
  verb(discovery, 'scan', 'adopt array files copied into DATA/arrays, then report the wiring map').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call('POST', '/v1/discovery');
    out(cmd, r, () => wiring(r));
  });
}
