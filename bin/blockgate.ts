#!/usr/bin/env node
import fs from 'node:fs';
import { Command } from 'commander';
import { parseSize } from '../common/units.js';
import { serve } from './serve.js';

const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const program = new Command();
program.name('blockgate').description('A virtual storage appliance: virtual disks over NBD, run through a control API.').version(pkg.version);

program
  .command('serve')
  .description('run the appliance (creates the demo appliance on first start)')
  .option('--data-dir <dir>', 'data directory (control database, arrays, sockets)', process.env.BLOCKGATE_DATA_DIR ?? './var')
  .option('--api <host:port>', 'control API listen address', '127.0.0.1:8480')
  .option('--nbd <host:port>', 'shared NBD TCP listener address', '127.0.0.1:10809')
  .option('--api-token <token>', 'bearer token for the control API (default: $BLOCKGATE_API_TOKEN, else DATA/api-token, generated)')
  .option('--log-level <level>', 'pino log level', 'info')
  .option('--no-demo', 'do not create the demo appliance on first start')
  .option('--cache-size <size>', 'RAM block cache size, e.g. 512M or 2G (pinned and dirty data count against it)', process.env.BLOCKGATE_CACHE_SIZE ?? '512M')
  .option('--cache-block <size>', 'cache block size, a power of two from 4K to 1M', '64K')
  .option('--io-route <route>', 'threads for cache misses and write-back: libuv or piscina', 'libuv')
  .action(async (o: { dataDir: string; api: string; nbd: string; apiToken?: string; logLevel: string; demo: boolean; cacheSize: string; cacheBlock: string; ioRoute: string }) => {
    if (o.ioRoute !== 'libuv' && o.ioRoute !== 'piscina') throw new Error(`--io-route must be libuv or piscina, not '${o.ioRoute}'`);
    await serve({ ...o, cacheSize: parseSize(o.cacheSize), cacheBlock: parseSize(o.cacheBlock), ioRoute: o.ioRoute, version: pkg.version });
  });

program.parseAsync().catch((e: unknown) => {
  process.stderr.write(`blockgate: ${e instanceof Error ? e.message : String(e)}\n`);
  process.exit(1);
});
