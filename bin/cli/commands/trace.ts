import type { Command } from 'commander';
import { table } from '../output.js';
import { client, humanSize, out, parseIntArg, parseUnit, usage, verb } from '../context.js';

interface Segment {
  volumeOffset: number;
  length: number;
  array: string | null;
  file: string | null;
  arrayOffset: number;
}
interface Trace {
  host?: string;
  target?: number;
  lun?: number;
  mapped?: boolean;
  volume?: { name: string; size: number; state: string; serial: string; naa: string; farm: string | null };
  units?: { host: string; export: string; mode: string; mapped: boolean; binding: number }[];
  vms?: string[];
  segments?: Segment[];
  [k: string]: unknown;
}

/** Host → unit → volume → extents → files, as lines an admin can read down. */
export function traceText(r: Trace): string {
  const lines: string[] = [];
  if (r.host !== undefined) lines.push(`host ${r.host}  unit ${r.target}/${r.lun}  ${r.mapped ? 'mapped' : 'not mapped'}`);
  if (r.array !== undefined && r.owner === 'free') return `array ${String(r.array)} offset ${String(r.arrayOffset)}: free space (no volume)\n`;
  if (r.volume) {
    const v = r.volume;
    lines.push(`volume ${v.name}  ${humanSize(v.size)}  ${v.state}  farm ${v.farm ?? '-'}  serial ${v.serial}  naa ${v.naa}`);
  }
  if (r.units?.length) lines.push(`units  ${r.units.map((u) => `${u.host}:${u.export}${u.mapped ? '' : ' (unmapped)'} #${u.binding}`).join('  ')}`);
  if (r.vms?.length) lines.push(`vms    ${r.vms.join(', ')}`);
  let text = lines.join('\n') + '\n';
  if (r.segments?.length) {
    text +=
      '\n' +
      table(r.segments, [
        ['VOLUME-OFFSET', (s) => s.volumeOffset],
        ['LENGTH', (s) => s.length],
        ['ARRAY', (s) => s.array],
        ['ARRAY-OFFSET', (s) => s.arrayOffset],
        ['FILE', (s) => s.file],
      ]);
  }
  return text;
}

/** `blockgate trace` and `blockgate resolve`: where a host's bytes really live, and back. */
export function register(program: Command): void {
  verb(program, 'trace <host> <unit>', "host → unit → volume → extents → array files, with byte offsets (unit as T/L)")
    .option('--offset <bytes>', 'start of the request', parseIntArg('offset'))
    .option('--length <bytes>', 'length of the request', parseIntArg('length'))
    .action(async (host: string, unit: string, o: { offset?: number; length?: number }, cmd: Command) => {
      const { target, lun } = parseUnit(unit);
      const q = new URLSearchParams();
      if (o.offset !== undefined) q.set('offset', String(o.offset));
      if (o.length !== undefined) q.set('length', String(o.length));
      const r = await client(cmd).call<Trace>('GET', `/v1/trace/hosts/${encodeURIComponent(host)}/units/${target}/${lun}${q.size ? `?${q}` : ''}`);
      out(cmd, r, () => traceText(r));
    });

  verb(program, 'resolve', 'reverse lookup: from a serial, NAA, export (+ host), VM, or an array byte to the volume')
    .option('--serial <serial>', 'device serial (BG…)')
    .option('--naa <naa>', 'NAA designator (3… or naa.3…)')
    .option('--export <T/L>', 'export name, with --host')
    .option('--host <host>', 'host of --export')
    .option('--vm <vm>', 'a VM: all its disks')
    .option('--array <array>', 'an array, with --offset')
    .option('--offset <bytes>', 'byte offset in --array', parseIntArg('offset'))
    .action(async (o: { serial?: string; naa?: string; export?: string; host?: string; vm?: string; array?: string; offset?: number }, cmd: Command) => {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(o)) if (v !== undefined && ['serial', 'naa', 'export', 'host', 'vm', 'array', 'offset'].includes(k)) q.set(k, String(v));
      if (![...q.keys()].some((k) => k !== 'host' && k !== 'offset')) throw usage('give one of --serial, --naa, --export (with --host), --vm, or --array (with --offset)');
      const r = await client(cmd).call<Trace & { disks?: Trace[] }>('GET', `/v1/resolve?${q}`);
      out(cmd, r, () => (r.disks ? `vm ${String(r.vm)} on host ${String(r.host)}\n\n` + r.disks.map((d) => `disk ${d.target}/${d.lun}\n${traceText(d)}`).join('\n') : traceText(r)));
    });
}
