import fs from 'node:fs';
import type { Command } from 'commander';
import { table } from '../output.js';
import { client, details, followJob, humanSize, jobOptions, listUrl, notePage, out, pageOptions, parseIntArg, parseUnit, usage, verb } from '../context.js';

interface Host {
  name: string;
  farm: string;
  protocols: string[];
  defaultProtocol: string;
  nbd: { socket: string; tcp: string | null; sharedListenerDefault: boolean; socketAccess?: { mode: string | null; uid: number | null; gid: number | null } };
  units: number;
  createdAt: string;
}

interface Namespace {
  host: string;
  farm: string;
  units: { target: number; lun: number; volume: string; size: number; serial: string; naa: string; readOnly: boolean; exportName: string; uris: string[] }[];
}

/** "0640 1:2", "0660" or null when nothing was set. */
const socketAccessText = (a: Host['nbd']['socketAccess']): string | null =>
  a ? [a.mode, a.uid !== null || a.gid !== null ? `${a.uid ?? '-'}:${a.gid ?? '-'}` : null].filter(Boolean).join(' ') || null : null;

const hostTable = (hosts: Host[]): string =>
  table(hosts, [
    ['NAME', (h) => h.name],
    ['FARM', (h) => h.farm],
    ['UNITS', (h) => h.units],
    ['SOCKET', (h) => h.nbd.socket],
    ['SOCKET ACCESS', (h) => socketAccessText(h.nbd.socketAccess)],
    ['TCP', (h) => [h.nbd.tcp, h.nbd.sharedListenerDefault ? 'shared listener' : null].filter(Boolean).join(', ') || null],
  ]);

export const namespaceTable = (ns: Namespace): string =>
  ns.units.length === 0
    ? `host ${ns.host}: no units mapped\n`
    : table(ns.units, [
        ['UNIT', (u) => u.exportName],
        ['VOLUME', (u) => u.volume],
        ['SIZE', (u) => humanSize(u.size)],
        ['SERIAL', (u) => u.serial],
        ['NAA', (u) => u.naa],
        ['RO', (u) => u.readOnly],
        ['URI', (u) => u.uris.filter((x) => !x.startsWith('nbd+unix')).join(' ') || u.uris[0]],
      ]);

/** `blockgate host …`: clients with an identity and a namespace of units. */
export function register(program: Command): void {
  const host = program.command('host').description('hosts: clients, each with its own listener and namespace of units');

  pageOptions(verb(host, 'list', 'list hosts, by name')).action(async (o: { limit?: string; after?: string }, cmd: Command) => {
    const api = client(cmd);
    const r = await api.call<{ hosts: Host[] }>('GET', listUrl('/v1/hosts', { limit: o.limit, after: o.after }));
    out(cmd, r, () => hostTable(r.hosts));
    notePage(api, o.limit);
  });

  verb(host, 'show <name>', 'one host').action(async (name: string, _o, cmd: Command) => {
    const h = await client(cmd).call<Host>('GET', `/v1/hosts/${encodeURIComponent(name)}`);
    out(cmd, h, () => details({ ...h, protocols: h.protocols.join(',') }));
  });

  verb(host, 'create <name>', 'create a host; its unix socket listener opens at once')
    .option('--farm <farm>', 'the farm it belongs to', 'default')
    .option('--nbd-tcp <host:port>', 'a TCP listener dedicated to this host')
    .action(async (name: string, o: { farm: string; nbdTcp?: string }, cmd: Command) => {
      const h = await client(cmd).call<Host>('POST', '/v1/hosts', { name, farm: o.farm, ...(o.nbdTcp ? { nbdTcp: o.nbdTcp } : {}) });
      out(cmd, h, () => hostTable([h]));
    });

  verb(host, 'update <name>', "move the host's own TCP listener (its NBD sessions end)")
    .option('--nbd-tcp <host:port>', 'new address of its TCP listener')
    .option('--no-nbd-tcp', 'no TCP listener of its own')
    .option('--allow-wildcard', 'allow 0.0.0.0 / [::] (every network of the machine)')
    .option('--socket-mode <octal>', "mode of the host's unix socket, e.g. 0660 (kept across restarts)")
    .option('--socket-uid <uid>', "owner (numeric uid) of the host's unix socket", parseIntArg('--socket-uid'))
    .option('--socket-gid <gid>', "group (numeric gid) of the host's unix socket", parseIntArg('--socket-gid'))
    .action(async (name: string, o: { nbdTcp?: string | false; allowWildcard?: boolean; socketMode?: string; socketUid?: number; socketGid?: number }, cmd: Command) => {
      const socket = { ...(o.socketMode !== undefined ? { mode: o.socketMode } : {}), ...(o.socketUid !== undefined ? { uid: o.socketUid } : {}), ...(o.socketGid !== undefined ? { gid: o.socketGid } : {}) };
      if (o.nbdTcp === undefined && Object.keys(socket).length === 0) throw usage('give --nbd-tcp HOST:PORT, --no-nbd-tcp or --socket-mode/--socket-uid/--socket-gid');
      const h = await client(cmd).call<Host>('PATCH', `/v1/hosts/${encodeURIComponent(name)}`, {
        ...(o.nbdTcp !== undefined ? { nbdTcp: o.nbdTcp === false ? null : o.nbdTcp } : {}),
        ...(o.allowWildcard ? { allowWildcard: true } : {}),
        ...(Object.keys(socket).length ? { socket } : {}),
      });
      out(cmd, h, () => hostTable([h]));
    });

  verb(host, 'delete <name>', 'delete a host with no bindings: its listeners close, its sessions end, its keys are removed').action(async (name: string, _o, cmd: Command) => {
    await client(cmd).call('DELETE', `/v1/hosts/${encodeURIComponent(name)}`);
    out(cmd, { host: name, deleted: true }, () => `host ${name} deleted\n`);
  });

  // NBD TLS identity: a pre-shared key (identity = host name) and whether plaintext is refused on TCP.
  const psk = (path: string): string => `/v1/hosts/${encodeURIComponent(path)}/tls/psk`;
  const keyOut = async (cmd: Command, r: { identity: string; key: string; pskFile: string }, file: string | undefined): Promise<void> => {
    if (file === undefined) {
      out(cmd, r, () => r.pskFile + 'Store this now: the key is not shown again (or use --out FILE).\n');
      return;
    }
    // The key file is a secret: created 0600 (an existing file is truncated and set to 0600 too).
    const fh = await fs.promises.open(file, 'w', 0o600);
    try {
      await fh.chmod(0o600);
      await fh.writeFile(r.pskFile);
    } finally {
      await fh.close();
    }
    out(cmd, { identity: r.identity, file }, () => `TLS key of host ${r.identity} written to ${file} (mode 0600)\n`);
  };
  verb(host, 'psk-create <name>', "create the host's TLS pre-shared key (refused if it has one: use psk-rotate)")
    .option('--out <file>', 'write the psk file (identity:hex) here, mode 0600, instead of printing it')
    .option('--key <hex>', 'use this key (16-64 bytes of hex) instead of a generated one')
    .action(async (name: string, o: { out?: string; key?: string }, cmd: Command) => {
      const r = await client(cmd).call<{ identity: string; key: string; pskFile: string }>('POST', psk(name), o.key ? { key: o.key } : {});
      await keyOut(cmd, r, o.out);
    });
  verb(host, 'psk-rotate <name>', "replace the host's TLS pre-shared key")
    .option('--out <file>', 'write the psk file (identity:hex) here, mode 0600, instead of printing it')
    .option('--key <hex>', 'use this key (16-64 bytes of hex) instead of a generated one')
    .action(async (name: string, o: { out?: string; key?: string }, cmd: Command) => {
      const r = await client(cmd).call<{ identity: string; key: string; pskFile: string }>('POST', `${psk(name)}/rotate`, o.key ? { key: o.key } : {});
      await keyOut(cmd, r, o.out);
    });
  verb(host, 'psk-show <name>', 'whether the host has a TLS key, and since when (never the key)').action(async (name: string, _o, cmd: Command) => {
    const r = await client(cmd).call<{ identity: string; present: boolean; setAt: string | null }>('GET', psk(name));
    out(cmd, r, () => details(r));
  });
  verb(host, 'psk-delete <name>', "remove the host's TLS key").action(async (name: string, _o, cmd: Command) => {
    await client(cmd).call('DELETE', psk(name));
    out(cmd, { identity: name, present: false }, () => `TLS key of host ${name} removed\n`);
  });
  verb(host, 'require-tls <name> <on|off>', 'on: TCP listeners refuse the host in plaintext (its unix socket stays plaintext)').action(
    async (name: string, onOff: string, _o, cmd: Command) => {
      if (onOff !== 'on' && onOff !== 'off') throw usage(`require-tls takes on or off, not '${onOff}'`);
      const h = await client(cmd).call<Host>('PUT', `/v1/hosts/${encodeURIComponent(name)}/tls`, { requireTls: onOff === 'on' });
      out(cmd, h, () => `host ${name}: TLS ${onOff === 'on' ? 'required' : 'not required'} on TCP listeners\n`);
    },
  );

  verb(host, 'namespace <name>', "the host's live namespace: units, volumes, serials, NBD URIs").action(async (name: string, _o, cmd: Command) => {
    const ns = await client(cmd).call<Namespace>('GET', `/v1/hosts/${encodeURIComponent(name)}/namespace`);
    out(cmd, ns, () => namespaceTable(ns));
  });

  // iSCSI identity: initiator names, CHAP secrets (printed once, when created), allowed protocols.
  verb(host, 'initiator-add <name> <iqn>', 'an iSCSI initiator name that is this host').action(async (name: string, iqn: string, _o, cmd: Command) => {
    const r = await client(cmd).call<{ initiators: string[] }>('POST', `/v1/hosts/${encodeURIComponent(name)}/initiators`, { iqn });
    out(cmd, r, () => r.initiators.join('\n') + '\n');
  });
  verb(host, 'initiator-remove <name> <iqn>', 'remove an initiator name; its sessions are asked to log out').action(async (name: string, iqn: string, _o, cmd: Command) => {
    const r = await client(cmd).call<{ initiators: string[] }>('DELETE', `/v1/hosts/${encodeURIComponent(name)}/initiators/${encodeURIComponent(iqn)}`);
    out(cmd, r, () => (r.initiators.length ? r.initiators.join('\n') + '\n' : '(no initiators)\n'));
  });
  verb(host, 'chap <name>', 'create or rotate CHAP secrets for iSCSI logins (shown only now)')
    .option('--mutual', 'the target proves a secret too')
    .option('--username <user>', 'CHAP name the initiator gives (default: the host name)')
    .option('--mutual-username <user>', 'CHAP name the target gives (default: blockgate)')
    .action(async (name: string, o: { mutual?: boolean; username?: string; mutualUsername?: string }, cmd: Command) => {
      const r = await client(cmd).call<Record<string, string>>('POST', `/v1/hosts/${encodeURIComponent(name)}/chap`, {
        mode: o.mutual ? 'mutual' : 'one-way',
        ...(o.username ? { username: o.username } : {}),
        ...(o.mutualUsername ? { mutualUsername: o.mutualUsername } : {}),
      });
      out(cmd, r, () => details(r) + 'Store these now: the secrets are not shown again.\n');
    });
  verb(host, 'chap-clear <name>', 'stop requiring CHAP for the host').action(async (name: string, _o, cmd: Command) => {
    await client(cmd).call('DELETE', `/v1/hosts/${encodeURIComponent(name)}/chap`);
    out(cmd, { host: name, chap: null }, () => `host ${name}: CHAP no longer required\n`);
  });
  verb(host, 'protocols <name> <list>', 'protocols the host may use, e.g. nbd,iscsi').action(async (name: string, list: string, _o, cmd: Command) => {
    const h = await client(cmd).call<Host>('PUT', `/v1/hosts/${encodeURIComponent(name)}/protocols`, { protocols: list.split(',').filter(Boolean) });
    out(cmd, h, () => details({ ...h, protocols: h.protocols.join(',') }));
  });

  jobOptions(
    verb(host, 'activate <name>', 'allocate → configure → copy image → bind → map in one job, rolled back on failure')
      .requiredOption('--volume <volume>', 'name of the new volume')
      .requiredOption('--size <size>', 'size, e.g. 4G')
      .option('--class <class>', 'quality class')
      .option('--image <image>', 'image to copy onto it')
      .option('--unit <T/L>', 'unit address in the host namespace', '0/0')
      .option('--mode <mode>', 'exclusive, shared or read-only'),
  ).action(async (name: string, o: { volume: string; size: string; class?: string; image?: string; unit: string; mode?: string }, cmd: Command) => {
    const { target, lun } = parseUnit(o.unit);
    const r = await client(cmd).call('POST', `/v1/hosts/${encodeURIComponent(name)}/activate`, {
      volume: o.volume,
      size: o.size,
      target,
      lun,
      ...(o.class ? { qualityClass: o.class } : {}),
      ...(o.image ? { image: o.image } : {}),
      ...(o.mode ? { mode: o.mode } : {}),
    });
    await followJob(cmd, r);
  });
}
