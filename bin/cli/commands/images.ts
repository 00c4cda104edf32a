import type { Command } from 'commander';
import { table } from '../output.js';
import { client, followJob, humanSize, jobOptions, out, usage, verb } from '../context.js';

interface Image {
  name: string;
  path: string;
  size: number;
  createdAt: string;
}

const imageTable = (is: Image[]): string =>
  table(is, [
    ['NAME', (i) => i.name],
    ['SIZE', (i) => humanSize(i.size)],
    ['FILE', (i) => i.path],
  ]);

/** `blockgate image …`: OS images copied onto volumes. */
export function register(program: Command): void {
  const image = program.command('image').description('images: files whose contents can be copied onto a volume');
  verb(image, 'list', 'list images').action(async (_o, cmd: Command) => {
    const r = await client(cmd).call<{ images: Image[] }>('GET', '/v1/images');
    out(cmd, r, () => imageTable(r.images));
  });
  jobOptions(
    verb(image, 'create <name>', 'register an image file under the data directory, or make one from a volume (a job)')
      .option('--path <file>', 'the file (absolute, or relative to the data directory)')
      .option('--from-volume <volume>', 'copy this configured or unmapped volume into a new image'),
  ).action(async (name: string, o: { path?: string; fromVolume?: string }, cmd: Command) => {
    if ((o.path === undefined) === (o.fromVolume === undefined)) throw usage('give exactly one of --path or --from-volume');
    const r = await client(cmd).call<Image | { job: never }>('POST', '/v1/images', { name, ...(o.path ? { path: o.path } : { fromVolume: o.fromVolume }) });
    if ('job' in r) await followJob(cmd, r);
    else out(cmd, r, () => imageTable([r]));
  });
  verb(image, 'delete <name>', 'unregister an image (its file is kept)').action(async (name: string, _o, cmd: Command) => {
    await client(cmd).call('DELETE', `/v1/images/${encodeURIComponent(name)}`);
    out(cmd, { image: name, deleted: true }, () => `image ${name} unregistered (file kept)\n`);
  });
}
