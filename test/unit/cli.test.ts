import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { EXIT, resolveConnection } from '../../bin/cli/client.js';
import { writeAtomically } from '../../bin/cli/commands/config.js';
import { parseUnit } from '../../bin/cli/context.js';

t.test('unit addresses', async (t) => {
  t.same(parseUnit('0/0'), { target: 0, lun: 0 });
  t.same(parseUnit('255/16383'), { target: 255, lun: 16383 });
  for (const bad of ['', '0', '1/', '/1', '256/0', '0/16384', 'a/b', '0/0/0']) {
    let code: number | undefined;
    try {
      parseUnit(bad);
    } catch (e) {
      code = (e as { exitCode?: number }).exitCode;
    }
    t.equal(code, EXIT.USAGE, `'${bad}' is a usage error`);
  }
});

t.test('connection: flags, then environment, then the data directory', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-cli-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  fs.writeFileSync(path.join(dir, 'run.json'), JSON.stringify({ api: 'http://127.0.0.1:1234' }));
  fs.writeFileSync(path.join(dir, 'api-token'), 'from-file\n');
  const saved = { api: process.env.BLOCKGATE_API, token: process.env.BLOCKGATE_API_TOKEN };
  t.teardown(() => {
    if (saved.api === undefined) delete process.env.BLOCKGATE_API;
    else process.env.BLOCKGATE_API = saved.api;
    if (saved.token === undefined) delete process.env.BLOCKGATE_API_TOKEN;
    else process.env.BLOCKGATE_API_TOKEN = saved.token;
  });
  delete process.env.BLOCKGATE_API;
  delete process.env.BLOCKGATE_API_TOKEN;
  t.same(resolveConnection({ dataDir: dir }), { api: 'http://127.0.0.1:1234', token: 'from-file' });
  process.env.BLOCKGATE_API = '127.0.0.1:9/';
  process.env.BLOCKGATE_API_TOKEN = 'from-env';
  t.same(resolveConnection({ dataDir: dir }), { api: 'http://127.0.0.1:9', token: 'from-env' });
  t.same(resolveConnection({ dataDir: dir, api: 'https://a:1', token: 'flag' }), { api: 'https://a:1', token: 'flag' });
});

t.test('writeAtomically replaces the file whole and leaves no temporary behind', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockgate-cli-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const f = path.join(dir, 'saved.json');
  fs.writeFileSync(f, 'old');
  await writeAtomically(f, '{"new":true}\n');
  t.equal(fs.readFileSync(f, 'utf8'), '{"new":true}\n');
  t.same(fs.readdirSync(dir), ['saved.json']);
  await t.rejects(writeAtomically(path.join(dir, 'missing', 'x.json'), 'x'));
});
