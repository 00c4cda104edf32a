import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { CliError, EXIT } from '../client.js';
import { print, printJson } from '../output.js';
import { client, opts, verb, withGlobals } from '../context.js';

export { writeAtomically } from '../../../common/files.js';
import { writeAtomically } from '../../../common/files.js';

/** `blockgate config export|import`: the whole control state as one JSON document (LIO's saveconfig/restoreconfig). */
export function register(program: Command): void {
  const config = program.command('config').description('saved configuration: the whole control state as one JSON document');

  verb(config, 'export', 'write the control state (farms, arrays, volumes, hosts, bindings, images, VMs, snapshot links, webhooks, backup policies, settings) as JSON')
    .option('-o, --output <file>', 'write to FILE atomically (default: stdout)')
    .action(async (o: { output?: string }, cmd: Command) => {
      const doc = await client(cmd).call<Record<string, unknown>>('GET', '/v1/config');
      const text = JSON.stringify(doc, null, 2) + '\n';
      if (!o.output || o.output === '-') return print(text);
      await writeAtomically(o.output, text);
      const n = (k: string): number => (Array.isArray(doc[k]) ? (doc[k] as unknown[]).length : 0);
      if (opts(cmd).json) printJson({ file: path.resolve(o.output), bytes: Buffer.byteLength(text) });
      else process.stderr.write(`saved ${n('volumes')} volumes, ${n('hosts')} hosts, ${n('bindings')} bindings, ${n('arrays')} arrays to ${o.output}\n`);
    });

  withGlobals(config.command('import <file>').description('recreate a saved control state in an appliance that has none yet (array files are adopted where they are)'))
    .action(async (file: string, _o, cmd: Command) => {
      let doc: unknown;
      try {
        doc = JSON.parse(file === '-' ? fs.readFileSync(0, 'utf8') : await fs.promises.readFile(file, 'utf8'));
      } catch (e) {
        throw new CliError(`cannot read ${file}: ${(e as Error).message}`, EXIT.USAGE, 'BAD_REQUEST');
      }
      const r = await client(cmd).call<{ imported: Record<string, number>; webhookSecrets?: { webhook: string; secret: string }[] }>('POST', '/v1/config', doc);
      if (opts(cmd).json) return printJson(r);
      print(`imported ${Object.entries(r.imported).map(([k, v]) => `${v} ${k}`).join(', ')}\n`);
      // Shown once: the document holds no secrets, so each receiver must be given its new one.
      for (const w of r.webhookSecrets ?? []) print(`webhook ${w.webhook}: new secret ${w.secret}\n`);
    });
}
