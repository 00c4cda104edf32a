import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { print, printJson, table } from '../output.js';
import { client, followJob, jobOptions, opts, out, parseIntArg, list, verb } from '../context.js';

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

type Issued = { kind: 'tls-psk'; identity: string; key: string; pskFile: string } | { kind: 'chap'; username: string; secret: string };

/**
 * The new host's fresh credentials are in the migrate answer only: written to
 * 0600 files (a psk file line; "username secret" for CHAP), or printed once.
 * With --json they are in the job document printed at the end (--no-wait) or here.
 */
async function showCredentials(cmd: Command, host: string, cs: Issued[], dir: string | undefined): Promise<void> {
  for (const c of cs) {
    const id = c.kind === 'tls-psk' ? c.identity : c.username;
    if (dir === undefined) {
      if (!opts(cmd).json) print(c.kind === 'tls-psk' ? `fresh TLS-PSK for ${host}: ${c.pskFile}` : `fresh CHAP for ${host}: username ${c.username} secret ${c.secret}\n`);
      else if (opts(cmd).wait !== false) printJson({ credential: c });
      continue;
    }
    const file = path.join(dir, `${id}.${c.kind === 'tls-psk' ? 'psk' : 'chap'}`);
    const fh = await fs.promises.open(file, 'w', 0o600);
    try {
      await fh.chmod(0o600);
      await fh.writeFile(c.kind === 'tls-psk' ? c.pskFile : `${c.username} ${c.secret}\n`);
    } finally {
      await fh.close();
    }
    if (!opts(cmd).json) print(`fresh ${c.kind === 'tls-psk' ? 'TLS-PSK' : 'CHAP secret'} for ${host} (${id}) written to ${file} (mode 0600)\n`);
  }
  if (cs.length > 0 && dir === undefined && !opts(cmd).json) print('Store these now: they are not shown again.\n');
}

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
      .option('--timeout <ms>', 'how long a live migration waits for the new host before rolling back', parseIntArg('timeout'))
      .option('--credentials-dir <dir>', "write the new host's fresh credentials here (one file each, mode 0600) instead of printing them"),
  ).action(async (name: string, o: { to: string; mode: string; protocol?: string; timeout?: number; credentialsDir?: string }, cmd: Command) => {
    const body = { to: o.to, mode: o.mode, ...(o.protocol ? { protocol: o.protocol } : {}), ...(o.timeout !== undefined ? { timeoutMs: o.timeout } : {}) };
    const r = await client(cmd).call<Parameters<typeof followJob>[1] & { credentials: Issued[] }>('POST', `/v1/vms/${encodeURIComponent(name)}/migrate`, body);
    await showCredentials(cmd, o.to, r.credentials, o.credentialsDir);
    await followJob(cmd, r);
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
