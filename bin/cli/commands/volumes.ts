import type { Command } from 'commander';
import { table } from '../output.js';
import { traceText } from './trace.js';
import { client, details, followJob, humanSize, jobOptions, list, listUrl, notePage, out, pageOptions, parseIntArg, usage, verb } from '../context.js';

export interface Volume {
  name: string;
  farm: string | null;
  size: number;
  state: string;
  shareMode: string;
  cachePolicy: string;
  provisioning: string;
  serial: string;
  naa: string;
  meta: boolean;
  qualityClass: string | null;
  dirty: boolean;
  allowed: string[];
  job: number | null;
  extents: { array: string; offset: number; length: number }[];
  [k: string]: unknown;
}

const volumeTable = (vs: Volume[]): string =>
  table(vs, [
    ['NAME', (v) => v.name],
    ['FARM', (v) => v.farm],
    ['STATE', (v) => v.state],
    ['SIZE', (v) => humanSize(v.size)],
    ['CLASS', (v) => v.qualityClass],
    ['META', (v) => v.meta],
    ['DIRTY', (v) => v.dirty],
    ['SERIAL', (v) => v.serial],
    ['JOB', (v) => v.job],
  ]);

export const volumeDetails = (v: Volume): string =>
  details({
    ...v,
    size: `${humanSize(v.size)} (${v.size} bytes)`,
    allowed: v.allowed.join(', '),
    extents: v.extents.map((e) => `${e.array}@${e.offset}+${humanSize(e.length)}`).join(' '),
  });

/** "a0:1G,a1:512M" → the API's layout list. */
function parseLayout(s: string): { array: string; size: string }[] {
  return list(s).map((part) => {
    const m = /^([^:]+):(.+)$/.exec(part);
    if (!m) throw usage(`layout part '${part}' is not ARRAY:SIZE`);
    return { array: m[1]!, size: m[2]! };
  });
}

/** `blockgate volume …`: the FIG. 7 lifecycle of a virtual disk. */
export function register(program: Command): void {
  const volume = program.command('volume').description('volumes (virtual disks) and their lifecycle: allocate, configure, scrub, copy, snap, resize, release');
  const enc = encodeURIComponent;

  pageOptions(verb(volume, 'list', 'list volumes, by name')).action(async (o: { limit?: string; after?: string }, cmd: Command) => {
    const api = client(cmd);
    const r = await api.call<{ volumes: Volume[] }>('GET', listUrl('/v1/volumes', { limit: o.limit, after: o.after }));
    out(cmd, r, () => volumeTable(r.volumes));
    notePage(api, o.limit);
  });

  jobOptions(
    verb(volume, 'clone <name>', 'provision a new volume as a copy of another (POST /v1/volumes {name, cloneOf}): a job, followed with a progress bar').requiredOption(
      '--of <volume>',
      'the source (a mapped one is snapshotted first, then materialised)',
    ),
  ).action(async (name: string, o: { of: string }, cmd: Command) => {
    await followJob(cmd, await client(cmd).call<Parameters<typeof followJob>[1]>('POST', '/v1/volumes', { name, cloneOf: o.of }));
  });
  verb(volume, 'reassign <name>', 'give the volume to another host, live (hold, drain, sync, unbind the old host, bind the new one)')
    .requiredOption('--host <host>', 'the host it goes to')
    .requiredOption('--unit <target/lun>', 'its unit address on that host, e.g. 0/1')
    .action(async (name: string, o: { host: string; unit: string }, cmd: Command) => {
      const r = await client(cmd).call<{ binding: { id: number; host: string; target: number; lun: number; protocol: string }; from: string; pauseMs: number }>(
        'POST',
        `/v1/volumes/${enc(name)}/reassign`,
        { host: o.host, unit: o.unit },
      );
      out(cmd, r, () => `volume ${name} moved from ${r.from} to ${r.binding.host} at ${r.binding.target}/${r.binding.lun} over ${r.binding.protocol} (binding ${r.binding.id}, I/O held ${r.pauseMs.toFixed(1)} ms)\n`);
    });
  verb(volume, 'show <name>', 'one volume: state, identity, extents and the operations allowed now').action(async (name: string, _o, cmd: Command) => {
    const v = await client(cmd).call<Volume>('GET', `/v1/volumes/${enc(name)}`);
    out(cmd, v, () => volumeDetails(v));
  });

  verb(volume, 'create <name>', 'allocate a volume (and configure it, unless --no-configure)')
    .requiredOption('--size <size>', 'size, e.g. 4G or 512M')
    .option('--farm <farm>', 'farm it belongs to (none: a predefined volume)')
    .option('--class <class>', 'quality class of the arrays to carve it from')
    .option('--layout <array:size,…>', 'explicit extents, in order (a meta volume across arrays), e.g. a0:1G,a1:1G')
    .option('--shared', 'may be bound to several hosts of its farm')
    .option('--no-configure', 'stop in allocated (configure later with `volume configure`)')
    .option('--thick', 'allocate all of its space now (as zeroes); it is never trimmed away')
    .action(async (name: string, o: { size: string; farm?: string; class?: string; layout?: string; shared?: boolean; configure: boolean; thick?: boolean }, cmd: Command) => {
      const v = await client(cmd).call<Volume>('POST', '/v1/volumes', {
        name,
        size: o.size,
        configure: o.configure,
        ...(o.farm ? { farm: o.farm } : {}),
        ...(o.class ? { qualityClass: o.class } : {}),
        ...(o.layout ? { layout: parseLayout(o.layout) } : {}),
        ...(o.shared ? { shareMode: 'shared' } : {}),
        ...(o.thick ? { provisioning: 'thick' } : {}),
      });
      out(cmd, v, () => volumeDetails(v));
    });

  verb(volume, 'set <name>', 'change a volume’s settings')
    .requiredOption('--provisioning <thin|thick>', 'thick allocates every hole now; thin lets later trims give space back')
    .action(async (name: string, o: { provisioning: string }, cmd: Command) => {
      const v = await client(cmd).call<Volume>('PATCH', `/v1/volumes/${enc(name)}`, { provisioning: o.provisioning });
      out(cmd, v, () => `volume ${v.name} is now ${v.provisioning}\n`);
    });

  verb(volume, 'claim', 'hand the smallest fitting predefined volume to a farm')
    .requiredOption('--farm <farm>', 'the farm')
    .requiredOption('--size <size>', 'at least this size')
    .option('--class <class>', 'quality class')
    .action(async (o: { farm: string; size: string; class?: string }, cmd: Command) => {
      const v = await client(cmd).call<Volume>('POST', '/v1/volumes/claim', { farm: o.farm, size: o.size, ...(o.class ? { qualityClass: o.class } : {}) });
      out(cmd, v, () => volumeDetails(v));
    });

  const step = (name: string, route: string, description: string): void => {
    verb(volume, `${name} <name>`, description).action(async (vol: string, _o, cmd: Command) => {
      const v = await client(cmd).call<Volume>('POST', `/v1/volumes/${enc(vol)}/${route}`);
      out(cmd, v, () => `volume ${v.name} is now ${v.state}\n`);
    });
  };
  step('configure', 'configure', 'configure / meta create (allocated → configured)');
  step('meta', 'meta', 'meta create: same as configure');
  step('break', 'break', 'break the (meta) volume (→ unconfigured)');
  step('deallocate', 'deallocate', 'give the space back (unconfigured → free); refused until scrubbed');

  verb(volume, 'resize <name>', 'grow a volume; hosts see the new size when they reconnect')
    .requiredOption('--size <size>', 'the new size, e.g. 8G')
    .action(async (name: string, o: { size: string }, cmd: Command) => {
      const v = await client(cmd).call<Volume>('POST', `/v1/volumes/${enc(name)}/resize`, { size: o.size });
      out(cmd, v, () => `volume ${v.name} is now ${humanSize(v.size)} (${v.size} bytes)\n`);
    });

  jobOptions(
    verb(volume, 'scrub <name>', 'overwrite with a byte pattern and read back to verify (a job)')
      .option('--pattern <byte>', 'byte value 0-255', parseIntArg('pattern'), 0)
      .option('--no-verify', 'skip the read-back'),
  ).action(async (name: string, o: { pattern: number; verify: boolean }, cmd: Command) => {
    const r = await client(cmd).call('POST', `/v1/volumes/${enc(name)}/scrub`, { pattern: o.pattern, verify: o.verify });
    await followJob(cmd, r);
  });

  jobOptions(
    verb(volume, 'copy <source>', 'copy a volume no host is writing (configured, unbound, a snapshot) onto configured or unbound targets, at least as large; only allocated runs move (a job)')
      .requiredOption('--to <volume,…>', 'target volumes')
      .option('--no-verify', 'skip the comparison'),
  ).action(async (source: string, o: { to: string; verify: boolean }, cmd: Command) => {
    const r = await client(cmd).call('POST', `/v1/volumes/${enc(source)}/copy`, { targets: list(o.to), verify: o.verify });
    await followJob(cmd, r);
  });

  jobOptions(
    verb(volume, 'copy-image <name>', 'copy an image onto a configured volume (a job)')
      .requiredOption('--image <image>', 'the image')
      .option('--no-verify', 'skip the comparison'),
  ).action(async (name: string, o: { image: string; verify: boolean }, cmd: Command) => {
    const r = await client(cmd).call('POST', `/v1/volumes/${enc(name)}/copy-image`, { image: o.image, verify: o.verify });
    await followJob(cmd, r);
  });

  jobOptions(verb(volume, 'snap <name> <snapshot>', 'copy-on-write snapshot of a mapped volume as a new volume (instant; its job has nothing to copy)')).action(
    async (name: string, snapshot: string, _o, cmd: Command) => {
      const r = await client(cmd).call('POST', `/v1/volumes/${enc(name)}/snap`, { snapshot });
      await followJob(cmd, r);
    },
  );

  jobOptions(verb(volume, 'materialise <snapshot>', 'copy what a snapshot still shares with its origin, so it no longer depends on it (a job)')).action(
    async (name: string, _o, cmd: Command) => {
      const r = await client(cmd).call('POST', `/v1/volumes/${enc(name)}/materialise`);
      await followJob(cmd, r);
    },
  );

  verb(volume, 'delete <name>', 'forget a free volume (its serial and NAA are never reused)').action(async (name: string, _o, cmd: Command) => {
    await client(cmd).call('DELETE', `/v1/volumes/${enc(name)}`);
    out(cmd, { deleted: name }, () => `volume ${name} deleted\n`);
  });

  verb(volume, 'trace <name>', 'volume → units, VMs, extents and array files')
    .option('--offset <bytes>', 'start of a request', parseIntArg('offset'))
    .option('--length <bytes>', 'length of a request', parseIntArg('length'))
    .action(async (name: string, o: { offset?: number; length?: number }, cmd: Command) => {
      const q = new URLSearchParams();
      if (o.offset !== undefined) q.set('offset', String(o.offset));
      if (o.length !== undefined) q.set('length', String(o.length));
      const r = await client(cmd).call('GET', `/v1/trace/volumes/${enc(name)}${q.size ? `?${q}` : ''}`);
      out(cmd, r, () => traceText(r));
    });
}
