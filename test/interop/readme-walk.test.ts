import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { TOKEN, startServer } from '../helpers/server.js';
import { ROOT, requireTools, run } from '../helpers/tools.js';

requireTools('nbdinfo', 'qemu-io', 'qemu-img', 'nbdcopy', 'fio', 'curl');

// Issue 14 item 6: the README is executed. Every ```sh block preceded by a
// `<!-- walk -->` line runs, in README order, in one bash session (exports and
// shell functions carry over) in a fresh directory, against a real
// `blockgate serve` whose data directory is ./var there, as after
// `npm start`. The first failing command fails the test and names its README
// line. The only rewriting: the README's default addresses become the free
// ports this server got, and `blockgate` is the built bin (what `npx blockgate`
// runs).

export interface WalkBlock {
  line: number;
  text: string;
}

export function walkBlocks(readme: string): WalkBlock[] {
  const lines = readme.split('\n');
  const blocks: WalkBlock[] = [];
  for (let i = 0; i < lines.length; i++) {
    if (lines[i]!.trim() !== '<!-- walk -->') continue;
    let j = i + 1;
    while (j < lines.length && lines[j]!.trim() === '') j++;
    if (!/^```(sh|bash)\s*$/.test(lines[j] ?? '')) throw new Error(`README line ${i + 1}: <!-- walk --> is not followed by a sh block`);
    const start = j + 1;
    let end = start;
    while (end < lines.length && lines[end] !== '```') end++;
    blocks.push({ line: start + 1, text: lines.slice(start, end).join('\n') });
    i = end;
  }
  return blocks;
}

t.test('the README walk runs', async (t) => {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const blocks = walkBlocks(readme);
  t.ok(blocks.length >= 5, `${blocks.length} walk blocks`);

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-walk-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const dataDir = path.join(dir, 'var');
  fs.mkdirSync(dataDir);
  // The token a started appliance would have written; this server is given the same one.
  fs.writeFileSync(path.join(dataDir, 'api-token'), `${TOKEN}\n`, { mode: 0o600 });
  const s = await startServer(t, { dataDir });

  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  fs.writeFileSync(path.join(bin, 'blockgate'), `#!/bin/sh\nexec "${process.execPath}" "${path.join(ROOT, 'dist/bin/blockgate.js')}" "$@"\n`, { mode: 0o755 });

  const port = (a: string): string => a.slice(a.lastIndexOf(':') + 1);
  const local = (text: string): string =>
    text
      .replaceAll('127.0.0.1:8480', `127.0.0.1:${port(s.api)}`)
      .replaceAll('127.0.0.1:10809', `127.0.0.1:${port(s.nbd)}`)
      .replaceAll('127.0.0.1:3260', `127.0.0.1:${port(s.iscsi)}`);
  const script = [
    'set -eE -o pipefail',
    `cd '${dir}'`,
    `trap 'echo "walk: README line $((WALK_LINE + LINENO - WALK_AT)) failed: $BASH_COMMAND" >&2' ERR`,
    ...blocks.flatMap((b, i) => [`WALK_LINE=${b.line}; WALK_AT=$((LINENO + 1)); echo "walk: block ${i + 1} (README line ${b.line})" >&2`, local(b.text)]),
    'echo "walk: done" >&2',
  ].join('\n');
  fs.writeFileSync(path.join(dir, 'walk.sh'), script);
  const r = await run('bash', [path.join(dir, 'walk.sh')], {
    timeoutMs: 900_000,
    env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, HOME: dir, PWD: dir },
  });
  t.equal(r.code, 0, `walk ${r.code === 0 ? 'passed' : 'failed'}:\n${r.stderr.split('\n').slice(-25).join('\n')}\nstdout:\n${r.stdout.split('\n').slice(-12).join('\n')}`);
  t.match(r.stderr, /walk: done/);
  t.equal(s.exitCode, null, 'server alive');
});
