#!/usr/bin/env node
import fs from 'node:fs';
import { Command, CommanderError } from 'commander';
import { isBlockgateError, type ErrorCode } from '../common/errors.js';
import { parseSize } from '../common/units.js';
import { CliError, EXIT } from './cli/client.js';
import * as arrays from './cli/commands/arrays.js';
import * as backups from './cli/commands/backups.js';
import * as bindings from './cli/commands/bindings.js';
import * as config from './cli/commands/config.js';
import * as farms from './cli/commands/farms.js';
import * as graph from './cli/commands/graph.js';
import * as hosts from './cli/commands/hosts.js';
import * as images from './cli/commands/images.js';
import * as jobs from './cli/commands/jobs.js';
import * as status from './cli/commands/status.js';
import * as trace from './cli/commands/trace.js';
import * as vms from './cli/commands/vms.js';
import * as volumes from './cli/commands/volumes.js';
import * as tls from './cli/commands/tls.js';
import * as webhooks from './cli/commands/webhooks.js';
import { withGlobals } from './cli/context.js';

const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const program = new Command();
program
  .name('blockgate')
  .description('A virtual storage appliance: virtual disks over NBD, run through a control API.\nAdmin verbs are `blockgate <noun> <verb>`; every one talks to the control API.')
  .version(pkg.version)
  // Program options end at the noun, so `serve --api HOST:PORT` (listen) never collides with the client's `--api URL`.
  .enablePositionalOptions()
  .exitOverride()
  .showHelpAfterError('(run with --help for usage)')
  .addHelpText(
    'after',
    `
Connection: --api, --token and --data-dir may be given before the noun or after the verb;
otherwise $BLOCKGATE_API / $BLOCKGATE_API_TOKEN / $BLOCKGATE_DATA_DIR, else DATA/run.json and DATA/api-token.

Exit codes: 0 ok, 1 error, 2 usage or bad request, 3 not found, 4 conflict or illegal state,
            5 unauthorized, 6 control API unreachable, 7 job failed or cancelled, 8 no space.`,
  );
withGlobals(program);

program
  .command('serve')
  .description('run the appliance (creates the demo appliance on first start)')
  .option('--data-dir <dir>', 'data directory (control database, arrays, sockets)', process.env.BLOCKGATE_DATA_DIR ?? './var')
  .option('--api <host:port>', 'control API listen address', '127.0.0.1:8480')
  .option('--nbd <host:port>', 'shared NBD TCP listener address', '127.0.0.1:10809')
  .option('--iscsi <host:port>', 'iSCSI portal address (":0" picks a free port)', '127.0.0.1:3260')
  .option('--api-token <token>', 'bearer token for the control API (default: $BLOCKGATE_API_TOKEN, else DATA/api-token, generated)')
  .option('--log-level <level>', 'pino log level (fatal, error, warn, info, debug, trace, silent)', 'info')
  .option('--log-format <format>', 'auto (colored lines on a terminal, JSON otherwise), pretty or json', process.env.BLOCKGATE_LOG_FORMAT ?? 'auto')
  .option('--no-demo', 'do not create the demo appliance on first start')
  .option('--cache-size <size>', 'RAM block cache size, e.g. 512M or 2G (pinned and dirty data count against it)', process.env.BLOCKGATE_CACHE_SIZE ?? '512M')
  .option('--cache-block <size>', 'cache block size, a power of two from 4K to 1M', '64K')
  .option('--io-route <route>', 'threads for cache misses and write-back: batch (the default), libuv or piscina', process.env.BLOCKGATE_IO_ROUTE)
  .option('--check-interval <ms>', 'how often array files are re-checked (deleted, replaced, truncated) and file-system fill measured; 0: only at flush', '2000')
  .option('--overcommit <ratio>', 'thin-provisioning limit saved as setting arrays.overcommit: a new array may be at most RATIO times its file system\'s free space (default 4)')
  .option('--restore [file]', 'rebuild a lost control database from DATA/blockgate.config.json, or from FILE (a `config export`)')
  .option('--image-root <dir>', 'also register images from files under DIR (repeatable; DATA/images always)', (v: string, acc: string[]) => [...acc, v], imageRootsFromEnv())
  .option('--plaintext-default-host', 'serve the default host in plaintext on a shared NBD listener that is not on loopback (anyone who reaches it acts as that host)')
  .option('--handshake-timeout <ms>', 'close NBD connections that have not chosen an export, and iSCSI connections not logged in, after this long', '30000')
  .option('--idle-timeout <ms>', 'close NBD sessions with no traffic and nothing in flight for this long; 0 = never (iSCSI pings idle initiators instead)', '0')
  .option('--max-connections <n>', 'connections at once on each NBD listener, and iSCSI sessions on the portal', '256')
  .option('--max-connections-per-host <n>', 'connections at once for one host (NBD, over all its listeners; iSCSI sessions)', '64')
  .option('--io-budget <size>', 'request payloads buffered and replies queued, over all NBD and iSCSI sessions; a session over it stops reading until its replies drain', '64M')
  .option('--idle-poll <us>', 'after a reply, keep reading a lone host\'s socket this many microseconds for its next request before the loop sleeps (QD1 latency; 0: never)', process.env.BLOCKGATE_IDLE_POLL_US ?? '50')
  .option('--bulk-rate <size>', 'bytes per second each bulk job (scrub, copy, snapshot) may move, e.g. 64M (default: unlimited)', process.env.BLOCKGATE_BULK_RATE)
  .action(async (o: { dataDir: string; api: string; nbd: string; iscsi: string; apiToken?: string; logLevel: string; logFormat: string; demo: boolean; cacheSize: string; cacheBlock: string; ioRoute?: string; checkInterval: string; overcommit?: string; restore?: boolean | string; imageRoot: string[]; bulkRate?: string; plaintextDefaultHost?: boolean; handshakeTimeout: string; idleTimeout: string; maxConnections: string; maxConnectionsPerHost: string; ioBudget: string; idlePoll: string }) => {
    if (o.ioRoute !== undefined && o.ioRoute !== 'libuv' && o.ioRoute !== 'piscina' && o.ioRoute !== 'batch') throw new Error(`--io-route must be libuv, batch or piscina, not '${o.ioRoute}'`);
    const checkIntervalMs = Number(o.checkInterval);
    if (!Number.isInteger(checkIntervalMs) || checkIntervalMs < 0) throw new Error(`--check-interval must be a whole number of milliseconds, not '${o.checkInterval}'`);
    const overcommit = o.overcommit === undefined ? undefined : Number(o.overcommit);
    if (overcommit !== undefined && !(overcommit > 0 && Number.isFinite(overcommit))) throw new Error(`--overcommit must be a positive number, not '${o.overcommit}'`);
    const whole = (flag: string, v: string, min: number): number => {
      const n = Number(v);
      if (!/^\d+$/.test(v) || n < min) throw new CliError(`${flag} must be a whole number${min > 0 ? ` of at least ${min}` : ''}, not '${v}'`, EXIT.USAGE, 'BAD_REQUEST');
      return n;
    };
    const connections = {
      handshakeTimeoutMs: whole('--handshake-timeout', o.handshakeTimeout, 1),
      idleTimeoutMs: whole('--idle-timeout', o.idleTimeout, 0),
      maxConnections: whole('--max-connections', o.maxConnections, 1),
      maxConnectionsPerHost: whole('--max-connections-per-host', o.maxConnectionsPerHost, 1),
    };
    const { checkLogOptions } = await import('./log.js');
    checkLogOptions(o.logLevel, o.logFormat);
    // Loaded only here: admin verbs start in a fraction of the time without the server's modules.
    const { serve } = await import('./serve.js');
    const ioBudget = parseSize(o.ioBudget);
    // Below the largest request a client may send, hosts would be held to one request at a time.
    if (!(ioBudget >= 32 * 1024 * 1024)) throw new CliError(`--io-budget must be at least 32M (the largest NBD request), not '${o.ioBudget}'`, EXIT.USAGE, 'BAD_REQUEST');
    const idlePollUs = whole('--idle-poll', o.idlePoll, 0);
    if (idlePollUs > 10_000) throw new CliError(`--idle-poll is at most 10000 microseconds (the loop serves no one else while it polls), not '${o.idlePoll}'`, EXIT.USAGE, 'BAD_REQUEST');
    await serve({ ...o, ioBudget, idlePollUs, connections, logFormat: o.logFormat as 'auto' | 'pretty' | 'json', cacheSize: parseSize(o.cacheSize), cacheBlock: parseSize(o.cacheBlock), ioRoute: o.ioRoute, imageRoots: o.imageRoot, bulkRate: o.bulkRate ? parseSize(o.bulkRate) : undefined, version: pkg.version, checkIntervalMs, overcommit });
  });

function imageRootsFromEnv(): string[] {
  return (process.env.BLOCKGATE_IMAGE_ROOTS ?? '').split(':').filter(Boolean);
}

for (const m of [status, farms, arrays, hosts, volumes, bindings, images, vms, backups, jobs, trace, config, webhooks, tls, graph]) m.register(program);

const SERVE_EXIT: Partial<Record<ErrorCode, number>> = { BAD_REQUEST: EXIT.USAGE, CONFLICT: EXIT.CONFLICT, ILLEGAL_STATE: EXIT.CONFLICT, NOT_FOUND: EXIT.NOT_FOUND };

function fail(e: unknown): never {
  if (e instanceof CommanderError) {
    // Help and --version end through here too, with exit code 0.
    process.exit(e.exitCode === 0 ? EXIT.OK : EXIT.USAGE);
  }
  // serve's own refusals (data directory in use, lost database, bad --restore file) carry error codes.
  const code = e instanceof CliError ? e.exitCode : isBlockgateError(e) ? (SERVE_EXIT[e.code] ?? EXIT.ERROR) : EXIT.ERROR;
  process.stderr.write(`blockgate: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(code);
}

try {
  await program.parseAsync();
} catch (e) {
  fail(e);
}
