import Database from 'better-sqlite3';
import fs from 'node:fs';
import path from 'node:path';
import { freePort, sleep, waitListening, type Endpoint, type Proc, type ProcessRegistry } from './procs.js';

/**
 * blockgate serves a write-back volume as `blockgate`, the same with
 * write-through and `none` volumes as `blockgate-wt` / `blockgate-none`, and
 * `blockgate-base` is another build (--base-build) for A/B runs. Protocol
 * rows (iSCSI) add their own names here.
 */
export type ServerName = 'blockgate' | 'blockgate-wt' | 'blockgate-none' | 'blockgate-base' | 'nbdkit-file' | 'nbdkit-memory' | 'qemu-nbd' | 'blockgate-iscsi' | 'tgt';
/** NBD over a unix socket or TCP loopback, or iSCSI over TCP loopback (its own servers and driver). */
export type Transport = 'unix' | 'tcp' | 'iscsi';
export type CachePolicy = 'write-back' | 'write-through' | 'none';

export const SERVERS: readonly ServerName[] = ['blockgate', 'blockgate-wt', 'blockgate-none', 'blockgate-base', 'nbdkit-file', 'nbdkit-memory', 'qemu-nbd'];
/** The iSCSI lane's servers: blockgate's portal (write-back volume) and tgt, its baseline. */
export const ISCSI_SERVERS: readonly ServerName[] = ['blockgate-iscsi', 'tgt'];
/** Servers a default run starts (blockgate-base needs --base-build). */
export const DEFAULT_SERVERS: readonly ServerName[] = ['blockgate', 'blockgate-wt', 'blockgate-none', 'nbdkit-file', 'nbdkit-memory', 'qemu-nbd'];
/** The baseline every ratio is taken against. */
export const BASELINE: ServerName = 'nbdkit-file';

/**
 * Environment every peer server (nbdkit, qemu-nbd, tgtd) runs with: glibc
 * keeps request buffers of up to 32 MiB in its heap instead of a fresh mmap
 * each. A fresh page costs ~14 µs to back on this VM, and qemu-nbd allocates a
 * bounce buffer per request: with glibc's defaults its 1 MiB reads ran at
 * 184 MiB/s and writes at 229 MiB/s, with this 2,856 and 3,346 (64 KiB reads,
 * under the default 128 KiB threshold, 1–2 GiB/s either way). The peers get
 * their best setup here; blockgate runs with the defaults a user gets.
 */
export const PEER_ENV: Readonly<Record<string, string>> = {
  GLIBC_TUNABLES: 'glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=268435456',
};

/** blockgate's rows: which volume policy each serves. */
export const BLOCKGATE_POLICY: Partial<Record<ServerName, CachePolicy>> = {
  blockgate: 'write-back',
  'blockgate-base': 'write-back',
  'blockgate-wt': 'write-through',
  'blockgate-none': 'none',
};

export interface Target {
  server: ServerName;
  transport: Transport;
  uri: string;
  proc: Proc;
  /** Where the profile lands when blockgate runs under --cpu-prof. */
  profileDir?: string;
  /** How long SIGTERM gets before SIGKILL (absent: the registry's default). */
  stopGraceMs?: number;
}

export interface StartContext {
  reg: ProcessRegistry;
  /** Scratch directory for backing files and sockets (one filesystem for all servers). */
  workDir: string;
  /** Repository root (for dist/bin/blockgate.js). */
  root: string;
  size: number;
  /** Set to profile blockgate: node writes a .cpuprofile here on exit. */
  cpuProfDir?: string;
  /** Reuse an existing blockgate data directory (already set up) instead of creating one. */
  dataDir?: string;
  /** Extra environment for blockgate only (e.g. UV_THREADPOOL_SIZE, a tuning knob worth measuring). */
  blockgateEnv?: Record<string, string>;
  /** Environment blockgate-base gets on top of blockgateEnv. */
  baseEnv?: Record<string, string>;
  /** Extra `blockgate serve` arguments (the beyond-cache scenario's --cache-size). */
  blockgateArgs?: string[];
  /** Repository root of the build `blockgate-base` runs (A/B against another commit). */
  baseBuild?: string;
  /** The volume policy blockgate-base serves (default write-back): an A/B of a write-through or `none` row. */
  basePolicy?: CachePolicy;
}

export const TOKEN = 'bench-token-0123456789abcdef';
/** The initiator name the iSCSI driver logs in with; blockgate's bench host owns it, tgt accepts any. */
export const BENCH_INITIATOR = 'iqn.2026-11.io.blockgate:bench-initiator';

let starts = 0;

/**
 * A new socket path per start: a peer restarted for the next round (fresh
 * scenario) must not meet the socket file its predecessor left behind.
 */
async function endpoint(transport: Transport, dir: string, tag: string): Promise<Endpoint> {
  return transport === 'unix' ? { kind: 'unix', path: path.join(dir, `${tag}-${++starts}.sock`) } : { kind: 'tcp', host: '127.0.0.1', port: await freePort() };
}

function uriOf(ep: Endpoint, exportName: string): string {
  return ep.kind === 'unix' ? `nbd+unix:///${exportName}?socket=${ep.path}` : `nbd://127.0.0.1:${ep.port}/${exportName}`;
}

/** A sparse backing file of the benchmark size, like blockgate's own arrays. */
async function backingFile(file: string, size: number): Promise<void> {
  const h = await fs.promises.open(file, 'w', 0o600);
  try {
    await h.truncate(size);
  } finally {
    await h.close();
  }
}

async function startNbdkit(ctx: StartContext, transport: Transport, plugin: 'file' | 'memory'): Promise<Target> {
  const tag = `nbdkit-${plugin}-${transport}`;
  const ep = await endpoint(transport, ctx.workDir, tag);
  const listen = ep.kind === 'unix' ? ['-U', ep.path] : ['-i', ep.host, '-p', String(ep.port)];
  const pluginArgs: string[] = [];
  if (plugin === 'file') {
    const file = path.join(ctx.workDir, `${tag}.img`);
    await backingFile(file, ctx.size);
    // Its best setup here: parallel thread model with 16 threads (its default, stated), page cache on
    // (cache=default; cache=none would drop pages after each request), no fadvise hint.
    pluginArgs.push('--threads', '16', 'file', file, 'cache=default', 'fadvise=normal');
  } else {
    pluginArgs.push('memory', String(ctx.size));
  }
  // -f keeps nbdkit in the foreground so the PID we hold is the server's own.
  const proc = ctx.reg.start(tag, 'nbdkit', ['-f', '--exit-with-parent', ...listen, ...pluginArgs], { env: { ...process.env, ...PEER_ENV } });
  await waitListening(ep, proc, ctx.reg);
  return { server: `nbdkit-${plugin}`, transport, uri: uriOf(ep, ''), proc };
}

async function startQemuNbd(ctx: StartContext, transport: Transport): Promise<Target> {
  const tag = `qemu-nbd-${transport}`;
  const ep = await endpoint(transport, ctx.workDir, tag);
  const file = path.join(ctx.workDir, `${tag}.img`);
  await backingFile(file, ctx.size);
  const listen = ep.kind === 'unix' ? ['-k', ep.path] : ['-b', ep.host, '-p', String(ep.port)];
  // -t: keep serving after a client leaves (every fio run reconnects); -e 8 allows the 4-connection job.
  // Its best setup: page cache on (writeback), io_uring submission (4k QD32 reads 35k vs 30k IOPS with
  // --aio=threads, 1 MiB streams the same), discards passed through, request buffers kept (PEER_ENV).
  const proc = ctx.reg.start(tag, 'qemu-nbd', ['-f', 'raw', '--cache=writeback', '--aio=io_uring', '--discard=unmap', '-e', '8', '-t', ...listen, file], { env: { ...process.env, ...PEER_ENV } });
  await waitListening(ep, proc, ctx.reg);
  return { server: 'qemu-nbd', transport, uri: uriOf(ep, ''), proc };
}

export async function api(base: string, method: string, url: string, body?: unknown): Promise<unknown> {
  const res = await fetch(base + url, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`blockgate API ${method} ${url} -> ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

export async function waitRunFile(dataDir: string, proc: Proc, reg: ProcessRegistry): Promise<{ api: string; iscsi: string }> {
  const runFile = path.join(dataDir, 'run.json');
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    if (!reg.isRunning(proc)) throw new Error(`blockgate exited early:\n${proc.output()}`);
    try {
      const info = JSON.parse(await fs.promises.readFile(runFile, 'utf8')) as { pid: number; api: string; iscsi: string };
      if (info.pid === proc.pid) return info;
    } catch {
      /* not written yet */
    }
    await sleep(50);
  }
  throw new Error(`blockgate did not become ready:\n${proc.output()}`);
}

/** The one host, farm, array and volume the benchmark uses; TCP gets the host's own port. */
async function provisionBlockgate(base: string, size: number, tcp: Endpoint | null): Promise<void> {
  await api(base, 'POST', '/v1/farms', { name: 'bench' });
  await api(base, 'POST', '/v1/arrays', { name: 'bench', size });
  const host: Record<string, unknown> = { name: 'bench', farm: 'bench' };
  if (tcp?.kind === 'tcp') host.nbdTcp = `${tcp.host}:${tcp.port}`;
  await api(base, 'POST', '/v1/hosts', host);
  await api(base, 'POST', '/v1/hosts/bench/initiators', { iqn: BENCH_INITIATOR });
  await api(base, 'POST', '/v1/volumes', { name: 'bench', size, farm: 'bench' });
  await api(base, 'POST', '/v1/bindings', { volume: 'bench', host: 'bench', target: 0, lun: 0, map: true });
}

/**
 * blockgate in its own data directory under workDir (so its array file sits on
 * the same filesystem as the peers' backing files). With ctx.dataDir it
 * restarts on an already provisioned directory: the profile runs use that so
 * set-up and fill stay out of the profile.
 */
async function startBlockgate(
  ctx: StartContext,
  transport: Transport,
  tcpPort?: number,
  opts: { server?: ServerName; policy?: CachePolicy; root?: string } = {},
): Promise<Target & { dataDir: string; tcpPort?: number }> {
  const fresh = ctx.dataDir === undefined;
  const server = opts.server ?? 'blockgate';
  const dataDir = ctx.dataDir ?? (await fs.promises.mkdtemp(path.join(ctx.workDir, `${server}-${transport}-`)));
  const nodeArgs: string[] = [];
  if (ctx.cpuProfDir) nodeArgs.push('--cpu-prof', `--cpu-prof-dir=${ctx.cpuProfDir}`);
  const args = [
    ...nodeArgs,
    path.join(opts.root ?? ctx.root, 'dist/bin/blockgate.js'),
    'serve',
    '--data-dir',
    dataDir,
    '--api',
    '127.0.0.1:0',
    '--nbd',
    '127.0.0.1:0',
    '--iscsi',
    '127.0.0.1:0',
    '--api-token',
    TOKEN,
    '--log-level',
    'warn',
    '--no-demo',
    ...(ctx.blockgateArgs ?? []),
  ];
  const run = async (): Promise<{ proc: Proc; info: { api: string; iscsi: string } }> => {
    await fs.promises.rm(path.join(dataDir, 'run.json'), { force: true });
    const proc = ctx.reg.start(`${server}-${transport}`, process.execPath, args, { env: { ...process.env, ...ctx.blockgateEnv, ...(server === 'blockgate-base' ? ctx.baseEnv : {}) } });
    return { proc, info: await waitRunFile(dataDir, proc, ctx.reg) };
  };
  let { proc, info } = await run();
  let ep: Endpoint;
  if (transport === 'unix') ep = { kind: 'unix', path: path.join(dataDir, 'sockets', 'bench.sock') };
  else if (transport === 'iscsi') ep = portalOf(info.iscsi);
  else ep = { kind: 'tcp', host: '127.0.0.1', port: tcpPort ?? (await freePort()) };
  if (fresh) {
    await provisionBlockgate(info.api, ctx.size, transport === 'tcp' ? ep : null);
    const policy = opts.policy ?? 'write-back';
    if (policy !== 'write-back') {
      // The API sets policies through iSCSI MODE SELECT only: set it in the stopped appliance's database.
      await ctx.reg.stop(proc);
      setPolicy(dataDir, policy);
      ({ proc, info } = await run());
      if (transport === 'iscsi') ep = portalOf(info.iscsi);
    }
  }
  await waitListening(ep, proc, ctx.reg);
  return {
    server,
    transport,
    uri: transport === 'iscsi' ? iscsiImage(ep, 'iqn.2026-11.io.blockgate:bench.t0', 0) : uriOf(ep, '0/0'),
    proc,
    dataDir,
    ...(ep.kind === 'tcp' ? { tcpPort: ep.port } : {}),
    ...(ctx.cpuProfDir ? { profileDir: ctx.cpuProfDir } : {}),
  };
}

/** run.json's `iscsi` is "host:port" (the port the portal really bound when started on :0). */
function portalOf(addr: string): Endpoint {
  const i = addr.lastIndexOf(':');
  const port = Number(addr.slice(i + 1));
  if (!(port > 0)) throw new Error(`blockgate's run.json has no iSCSI port: '${addr}'`);
  return { kind: 'tcp', host: addr.slice(0, i).replace(/^\[|\]$/g, ''), port };
}

/** qemu's --image-opts for one LUN: the only way to give qemu-img an initiator name. */
function iscsiImage(ep: Endpoint, target: string, lun: number): string {
  if (ep.kind !== 'tcp') throw new Error('iSCSI needs a TCP portal');
  return `driver=iscsi,transport=tcp,portal=${ep.host}:${ep.port},target=${target},lun=${lun},initiator-name=${BENCH_INITIATOR}`;
}

let tgtStarts = 0;

/**
 * tgt (tgtd 1.0.85) in the foreground with its control socket, lock and pid
 * file in a directory of its own (TGT_IPC_SOCKET moves the socket prefix off
 * /var/run), one target with LUN 1 on a sparse file of the benchmark size.
 * Its defaults otherwise: rdwr backing store through the page cache (like
 * nbdkit-file's cache=default), its own I/O thread pool.
 */
async function startTgt(ctx: StartContext): Promise<Target> {
  const dir = await fs.promises.mkdtemp(path.join(ctx.workDir, `tgt-${++tgtStarts}-`));
  const file = path.join(dir, 'lun1.img');
  await backingFile(file, ctx.size);
  const ep: Endpoint = { kind: 'tcp', host: '127.0.0.1', port: await freePort() };
  const env = { ...process.env, ...PEER_ENV, TGT_IPC_SOCKET: path.join(dir, 'ctl') };
  const ctl = '1';
  const proc = ctx.reg.start('tgtd', 'tgtd', ['-f', '-C', ctl, '-p', path.join(dir, 'tgtd.pid'), '--iscsi', `portal=${ep.host}:${ep.port}`], { env });
  // The portal opens after the control socket, so a listening portal means tgtadm can talk to it.
  await waitListening(ep, proc, ctx.reg);
  const target = 'iqn.2026-11.io.blockgate:bench-tgt';
  const adm = async (...args: string[]): Promise<void> => {
    const p = ctx.reg.start('tgtadm', 'tgtadm', ['-C', ctl, '--lld', 'iscsi', ...args], { env });
    const { code, signal } = await p.exited;
    if (code !== 0) throw new Error(`tgtadm ${args.join(' ')} failed (${code ?? signal}):\n${p.output()}`);
  };
  await adm('--op', 'new', '--mode', 'target', '--tid', '1', '-T', target);
  await adm('--op', 'new', '--mode', 'logicalunit', '--tid', '1', '--lun', '1', '-b', file);
  await adm('--op', 'bind', '--mode', 'target', '--tid', '1', '-I', 'ALL');
  // tgtd -f was still running 15 s after SIGTERM here; its LUN is scratch, so it gets SIGKILL soon after.
  return { server: 'tgt', transport: 'iscsi', uri: iscsiImage(ep, target, 1), proc, stopGraceMs: 1_000 };
}

function setPolicy(dataDir: string, policy: CachePolicy): void {
  const db = new Database(path.join(dataDir, 'blockgate.db'));
  try {
    db.prepare("UPDATE volumes SET cache_policy = ? WHERE name = 'bench'").run(policy);
  } finally {
    db.close();
  }
}

export async function startServer(name: ServerName, transport: Transport, ctx: StartContext): Promise<Target> {
  if ((transport === 'iscsi') !== ISCSI_SERVERS.includes(name)) throw new Error(`${name} does not serve the ${transport} lane`);
  switch (name) {
    case 'blockgate-iscsi':
      return startBlockgate(ctx, transport, undefined, { server: name, policy: 'write-back' });
    case 'tgt':
      return startTgt(ctx);
    case 'blockgate':
    case 'blockgate-wt':
    case 'blockgate-none':
      return startBlockgate(ctx, transport, undefined, { server: name, policy: BLOCKGATE_POLICY[name]! });
    case 'blockgate-base':
      if (!ctx.baseBuild) throw new Error('blockgate-base needs --base-build DIR (a checkout with its own dist/)');
      return startBlockgate(ctx, transport, undefined, { server: name, policy: ctx.basePolicy ?? 'write-back', root: ctx.baseBuild });
    case 'nbdkit-file':
      return startNbdkit(ctx, transport, 'file');
    case 'nbdkit-memory':
      return startNbdkit(ctx, transport, 'memory');
    case 'qemu-nbd':
      return startQemuNbd(ctx, transport);
  }
}

export { startBlockgate };
