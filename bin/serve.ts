import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import type { Logger } from 'pino';
import { BlockStore } from '../cache/index.js';
import { BlockgateError, badRequest } from '../common/errors.js';
import { buildApi } from '../control-api/index.js';
import { DEFAULT_IO_ROUTE, PiscinaEngine, makeRoute, type IoRouteName } from '../disks/index.js';
import { DEMO, DataDirLock, configDocument, SAVED_CONFIG, StorageManager, formatAddress, parseAddress, seedDemo, type ConfigDocument } from '../manager/index.js';
import { isLoopback } from '../common/address.js';
import { Namespaces, NbdServer, NbdTlsKeys, StatsRegistry } from '../target/index.js';
import { DEFAULT_IDLE_POLL_US, DEFAULT_IO_BUDGET, IdlePoll, IoBudget, openUnit } from '../target/core/index.js';
import { IscsiServer } from '../target/iscsi/index.js';
import { ScsiCommandSet } from '../target/iscsi/scsi/index.js';
import { makeLogger, type LogFormat } from './log.js';

export interface ServeOptions {
  dataDir: string;
  api: string;
  nbd: string;
  /** iSCSI portal "host:port". */
  iscsi: string;
  apiToken?: string | undefined;
  logLevel: string;
  /** pretty (colored lines), json, or auto: pretty when stderr is a terminal. */
  logFormat?: LogFormat | undefined;
  demo: boolean;
  version: string;
  /** RAM cache size in bytes (pinned and dirty blocks count against it). */
  cacheSize: number;
  /** Cache block size in bytes (requests are split on block boundaries). */
  cacheBlock?: number | undefined;
  /** Which threads move cache slots to and from the arrays (see docs/engine.md). */
  ioRoute?: IoRouteName | undefined;
  /** Array file re-check and capacity measure interval (0: only at flush). */
  checkIntervalMs?: number | undefined;
  /** Saved as setting arrays.overcommit when given. */
  overcommit?: number | undefined;
  /** Rebuild a lost control database: true for DATA/blockgate.config.json, or a saved configuration file. */
  restore?: boolean | string | undefined;
  /** Directories besides DATA/images that images may be registered from. */
  imageRoots?: string[] | undefined;
  /** Serve the default host in plaintext on a shared listener that is not on loopback (off by default). */
  plaintextDefaultHost?: boolean | undefined;
  /** Bytes of request payloads buffered and replies queued, over all sessions (blockgate serve --io-budget). */
  ioBudget?: number | undefined;
  /** How long a lone host's socket is polled for its next request after a reply, in µs; 0 = never (blockgate serve --idle-poll). */
  idlePollUs?: number | undefined;
  /** Safe-by-default connection bounds (blockgate serve --handshake-timeout, --idle-timeout, --max-connections[-per-host]). */
  connections?: { handshakeTimeoutMs: number; idleTimeoutMs: number; maxConnections: number; maxConnectionsPerHost: number } | undefined;
  /** Bytes per second each bulk job (scrub, copy, verify, snapshot materialise) may move; undefined = unlimited. */
  bulkRate?: number | undefined;
}

/** Written once everything listens, so scripts and tests learn the real ports (":0" picks free ones). */
export interface RunInfo {
  pid: number;
  api: string;
  nbd: string;
  iscsi: string;
  dataDir: string;
  tokenFile: string | null;
}

async function loadToken(dataDir: string, given: string | undefined): Promise<{ token: string; file: string | null }> {
  if (given) return { token: given, file: null };
  if (process.env.BLOCKGATE_API_TOKEN) return { token: process.env.BLOCKGATE_API_TOKEN, file: null };
  const file = path.join(dataDir, 'api-token');
  try {
    return { token: (await fs.promises.readFile(file, 'utf8')).trim(), file };
  } catch {
    const token = crypto.randomBytes(24).toString('base64url');
    await fs.promises.writeFile(file, `${token}\n`, { mode: 0o600 });
    return { token, file };
  }
}

/** Reads and validates the configuration `--restore` names, before anything in the data directory changes. */
async function readRestore(dataDir: string, restore: boolean | string): Promise<ConfigDocument> {
  const file = restore === true ? path.join(dataDir, SAVED_CONFIG) : path.resolve(String(restore));
  let text: string;
  try {
    text = await fs.promises.readFile(file, 'utf8');
  } catch (e) {
    throw badRequest(`--restore: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
  try {
    return configDocument.parse(JSON.parse(text));
  } catch (e) {
    const issues = (e as { issues?: { path: PropertyKey[]; message: string }[] }).issues;
    const msg = issues ? issues.map((i) => `${i.path.map(String).join('.') || 'document'}: ${i.message}`).join('; ') : (e as Error).message;
    throw badRequest(`--restore: ${file} is not a blockgate configuration: ${msg}`);
  }
}

/** A start-up error as one line an admin can act on (busy port, missing address, no permission). */
function listenFailure(what: string, addr: string, flag: string, e: unknown): unknown {
  const code = (e as NodeJS.ErrnoException).code;
  const why: Record<string, string> = {
    EADDRINUSE: 'the address is in use (another blockgate, or another server on that port?)',
    EADDRNOTAVAIL: 'this machine has no such address',
    EACCES: 'permission denied (ports below 1024 need privileges)',
    ENOTFOUND: 'the host name does not resolve',
  };
  if (!code || !why[code]) return e;
  return new BlockgateError('CONFLICT', `cannot listen for ${what} on ${addr}: ${why[code]}; choose another address with ${flag}`, { errno: code, address: addr });
}

async function listening<T>(what: string, addr: string, flag: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw listenFailure(what, addr, flag, e);
  }
}

/** The data directory exists (or is made) and is a writable directory; otherwise one clear line. */
async function prepareDataDir(dataDir: string): Promise<void> {
  try {
    await fs.promises.mkdir(dataDir, { recursive: true });
    const st = await fs.promises.stat(dataDir);
    if (!st.isDirectory()) throw Object.assign(new Error('not a directory'), { code: 'ENOTDIR' });
    await fs.promises.access(dataDir, fs.constants.W_OK | fs.constants.X_OK);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
    const why: Record<string, string> = { ENOTDIR: 'it (or a parent) is not a directory', EEXIST: 'it (or a parent) is not a directory', EACCES: 'permission denied', EROFS: 'the file system is read-only' };
    throw badRequest(`--data-dir ${dataDir} cannot be used: ${why[code] ?? code}`, { errno: code });
  }
}

export async function serve(opts: ServeOptions): Promise<void> {
  const dataDir = path.resolve(opts.dataDir);
  await prepareDataDir(dataDir);
  // Before anything else here: a refused second start must not touch the first one's files.
  const lock = DataDirLock.acquire(dataDir);
  // What start-up opened, closed in reverse if a later step fails: no socket, lock or run.json outlives a refused start.
  const opened: (() => Promise<unknown> | unknown)[] = [() => lock.release()];
  const undo = async (): Promise<void> => {
    for (const f of opened.reverse()) await Promise.resolve().then(f).catch(() => undefined);
  };
  try {
    await start(opts, dataDir, lock, opened);
  } catch (e) {
    await undo();
    throw e;
  }
}

async function start(opts: ServeOptions, dataDir: string, lock: DataDirLock, opened: (() => Promise<unknown> | unknown)[]): Promise<void> {
  const restore = opts.restore ? await readRestore(dataDir, opts.restore) : undefined;
  // Logs go to stderr (pretty on a terminal, JSON otherwise); stdout carries the human banner.
  const log: Logger = makeLogger(opts.logLevel, opts.logFormat ?? 'auto');
  const { token, file: tokenFile } = await loadToken(dataDir, opts.apiToken);

  const nbdAddr = parseAddress(opts.nbd);
  const apiAddr = parseAddress(opts.api);
  const namespaces = new Namespaces();
  // Test hook: BLOCKGATE_WRITEBACK_DELAY_MS holds off background write-back so a
  // test can tell what an explicit flush (unmap, FLUSH) wrote from what the schedule did.
  const writebackDelayMs = process.env.BLOCKGATE_WRITEBACK_DELAY_MS ? Number(process.env.BLOCKGATE_WRITEBACK_DELAY_MS) : undefined;
  // Test-only fault injection (docs/faults.md): the manager's failure edges, and the cache's writeback-hold.
  const faults = process.env.BLOCKGATE_FAULTS ? process.env.BLOCKGATE_FAULTS.split(',').filter(Boolean) : undefined;
  const writebackHold = faults?.includes('writeback-hold');
  const store = new BlockStore({ size: opts.cacheSize, blockSize: opts.cacheBlock, route: makeRoute(opts.ioRoute ?? DEFAULT_IO_ROUTE), writebackDelayMs, writebackHold });
  const tls = new NbdTlsKeys(path.join(dataDir, 'tls'));
  await tls.load();
  // The data path's I/O counters: units record into them, /metrics reads them when scraped.
  const stats = new StatsRegistry();
  // One bound on buffered requests and queued replies for every session of both protocols.
  const budget = new IoBudget(opts.ioBudget ?? DEFAULT_IO_BUDGET);
  stats.budget = budget;
  // One poller too: only the session that alone is active polls, whichever protocol it speaks.
  const poll = new IdlePoll(opts.idlePollUs ?? DEFAULT_IDLE_POLL_US, () => store.atDirtyLimit);
  stats.poll = poll;
  const nbd = new NbdServer(
    { namespaces, store, tls, budget, poll },
    {
      stats,
      limits: opts.connections
        ? {
            handshakeTimeoutMs: opts.connections.handshakeTimeoutMs,
            idleTimeoutMs: opts.connections.idleTimeoutMs,
            maxConnectionsPerListener: opts.connections.maxConnections,
            maxConnectionsPerHost: opts.connections.maxConnectionsPerHost,
          }
        : undefined,
      // One line per session event (connect, negotiate, disconnect with its reason); never per request.
      onSession: (e) =>
        log.info(
          { session: e.kind, host: e.host, listener: e.listener, remote: e.remote, reason: e.reason, export: e.export, volume: e.volume, option: e.option, structuredReplies: e.structuredReplies, tls: e.tls },
          `nbd session ${e.kind}`,
        ),
    },
  );
  const iscsiAddr = parseAddress(opts.iscsi);
  // The manager answers who an initiator is and keeps SCSI state; it exists only after the frontend, hence the indirection.
  let mgr: StorageManager | null = null;
  const need = (): StorageManager => {
    if (!mgr) throw new Error('manager not open');
    return mgr;
  };
  const iscsi = new IscsiServer(
    {
      namespaces,
      unitIO: (u) => openUnit(store, u, 'iscsi'),
      device: (ctx) => new ScsiCommandSet(ctx),
      reservations: { load: (id) => need().iscsi.reservations.load(id), save: (id, s) => need().iscsi.reservations.save(id, s) },
      setCachePolicy: (id, p) => need().iscsi.setCachePolicy(id, p),
      initiators: { initiator: (name) => mgr?.iscsi.initiator(name) ?? null },
    },
    {
      stats,
      // Idle-initiator pings: BLOCKGATE_ISCSI_NOP_MS shortens them (tests of the dead-initiator drop).
      limits: {
        ...(opts.connections ? { loginTimeoutMs: opts.connections.handshakeTimeoutMs } : {}),
        ...(process.env.BLOCKGATE_ISCSI_NOP_MS ? { nopIntervalMs: Number(process.env.BLOCKGATE_ISCSI_NOP_MS), nopTimeoutMs: Number(process.env.BLOCKGATE_ISCSI_NOP_MS), logoutGraceMs: Number(process.env.BLOCKGATE_ISCSI_NOP_MS) * 2 } : {}),
      },
      budget,
      poll,
      ...(opts.connections ? { maxSessions: opts.connections.maxConnections, maxSessionsPerHost: opts.connections.maxConnectionsPerHost } : {}),
      // One line per session login and logout; never per command.
      onSession: (e) =>
        log.info({ session: e.kind, protocol: 'iscsi', host: e.host, remote: e.remote, initiator: e.initiator, target: e.target, type: e.sessionType, reason: e.reason }, `iscsi session ${e.kind}`),
    },
  );
  // Bulk work gets one worker thread of its own: its bounded share.
  const engine = new PiscinaEngine((id) => store.getArray(id), { threads: 1, cache: store, rate: opts.bulkRate });
  opened.push(
    () => nbd.close(),
    () => iscsi.close(),
    async () => {
      await store.close();
      await engine.close();
      for (const a of store.listArrays()) await a.close();
    },
  );
  const manager = await StorageManager.open({ namespaces, store, frontends: [nbd, iscsi], engine, tls, stats }, {
    dataDir,
    log,
    // Test-only fault injection for the failure edges (see ManagerOptions.faults).
    faults,
    checkIntervalMs: opts.checkIntervalMs,
    lock,
    restore,
    imageRoots: opts.imageRoots?.map((r) => path.resolve(r)),
  });
  opened.push(async () => {
    await manager.stop();
    manager.close();
  });
  if (opts.overcommit !== undefined) manager.setSetting('arrays.overcommit', String(opts.overcommit));
  if (restore) log.info({ op: 'config.restore', volumes: restore.volumes.length, hosts: restore.hosts.length }, 'configuration restored into a new control database');
  mgr = manager;
  try {
    await manager.start();
  } catch (e) {
    const a = e as { address?: string; port?: number };
    throw listenFailure("a host's own listener", a.address ? formatAddress(a.address, a.port ?? 0) : '?', 'blockgate host update NAME --nbd-tcp', e);
  }
  if (opts.demo && (await seedDemo(manager))) log.info({ op: 'seed' }, 'demo appliance created');

  // Off loopback, anyone who can reach the port would act as the default host: only when the admin says so.
  const plaintextDefault = isLoopback(nbdAddr.host) || opts.plaintextDefaultHost === true;
  if (!plaintextDefault && manager.setting('nbd.default_host')) {
    log.warn(
      { op: 'nbd.shared', listener: opts.nbd, defaultHost: manager.setting('nbd.default_host') },
      `the shared NBD listener ${opts.nbd} is not on loopback: plaintext connections act for no host (TLS identities still work); --plaintext-default-host serves the default host there`,
    );
  }
  const nbdPort = await listening('the shared NBD listener', opts.nbd, '--nbd', () =>
    nbd.listenTcp('tcp:shared', nbdAddr.host, nbdAddr.port, () => (plaintextDefault ? (manager.setting('nbd.default_host') ?? null) : null), true),
  );
  iscsiAddr.port = await listening('the iSCSI portal', opts.iscsi, '--iscsi', () => iscsi.listen(iscsiAddr.host, iscsiAddr.port));
  const api = buildApi(manager, {
    token,
    logger: log,
    version: opts.version,
    metrics: {
      io: stats,
      jobs: () => manager.jobs.countByState(),
      cache: () => ({ ...store.stats() }),
      cutovers: manager.cutovers,
      graph: () => manager.services.graphStats(),
    },
  });
  opened.push(() => api.close());
  await listening('the control API', opts.api, '--api', () => api.listen({ host: apiAddr.host, port: apiAddr.port }));
  const apiPort = (api.server.address() as { port: number }).port;

  const info: RunInfo = {
    pid: process.pid,
    api: `http://${formatAddress(apiAddr.host, apiPort)}`,
    nbd: formatAddress(nbdAddr.host, nbdPort),
    iscsi: formatAddress(iscsiAddr.host, iscsiAddr.port),
    dataDir,
    tokenFile,
  };
  const runFile = path.join(dataDir, 'run.json');
  await fs.promises.writeFile(`${runFile}.tmp`, JSON.stringify(info, null, 2));
  await fs.promises.rename(`${runFile}.tmp`, runFile);

  printBanner(manager, info);
  log.info({ api: info.api, nbd: info.nbd, iscsi: info.iscsi, dataDir }, 'blockgate ready');

  let stopping = false;
  /**
   * Graceful shutdown (SIGTERM from systemd, Ctrl-C): no new control calls or
   * sessions; every NBD request already read is served and answered; jobs
   * stop at a checkpoint; the cache is written back and every array
   * fdatasync'ed; only then exit 0. A second signal does not cut this short
   * (systemd's TimeoutStopSec is the backstop).
   */
  const stop = async (signal: string): Promise<void> => {
    if (stopping) return;
    stopping = true;
    log.info({ op: 'shutdown', signal }, 'shutting down: draining sessions and flushing arrays');
    let code = 0;
    try {
      await api.close();
      await nbd.close();
      await iscsi.close();
      await manager.stop();
      // Writes back every dirty block and syncs every array before the files close.
      await store.close();
      await engine.close();
      for (const a of store.listArrays()) await a.close();
      manager.close();
      await fs.promises.rm(runFile, { force: true });
      lock.release();
      log.info({ op: 'shutdown' }, 'stopped');
    } catch (e) {
      code = 1;
      log.error({ op: 'shutdown', err: e }, 'shutdown failed: data written since the last flush may not be on disk');
    }
    log.flush();
    process.exit(code);
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

function printBanner(m: StorageManager, info: RunInfo): void {
  const lines = [
    `blockgate ${m.applianceId} serving from ${info.dataDir}`,
    `  control API   ${info.api}  (token: ${info.tokenFile ?? 'from --api-token / BLOCKGATE_API_TOKEN'})`,
    `  NBD listener  nbd://${info.nbd}`,
    `  iSCSI portal  iscsi://${info.iscsi}`,
  ];
  for (const h of m.listHosts()) {
    const ns = m.namespaceView(h.name) as { units: { exportName: string; volume: string; size: number; uris: string[] }[] };
    lines.push(`  host ${h.name}:`);
    const initiators = m.iscsi.initiators(h.name);
    if (initiators.length > 0) lines.push(`    iSCSI initiator ${initiators.join(', ')}${h.chap ? ` (CHAP ${h.chap})` : ''}`);
    if (ns.units.length === 0) lines.push('    (no units mapped)');
    for (const u of ns.units) {
      lines.push(`    unit ${u.exportName}  ${u.volume}  ${u.size} bytes`);
      for (const uri of u.uris) lines.push(`      ${uri}`);
    }
  }
  lines.push('', 'Try:  nbdinfo nbd://' + info.nbd + '    or    qemu-img info nbd://' + info.nbd);
  const demoIqn = m.findHost(DEMO.host) ? m.iscsi.initiators(DEMO.host)[0] : undefined;
  if (demoIqn) lines.push(`      iscsi-ls -i ${demoIqn} iscsi://${info.iscsi}`);
  process.stdout.write(lines.join('\n') + '\n');
}
