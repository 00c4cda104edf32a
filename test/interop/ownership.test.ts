import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ioOk, qemuIo } from '../helpers/api.js';
import { serveRefused, startServer } from '../helpers/server.js';
import { requireTools, runOk } from '../helpers/tools.js';

requireTools('qemu-io', 'nbdinfo');

const tmp = (t: { teardown: (fn: () => unknown) => void }, prefix: string): string => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  t.teardown(() => fs.rmSync(d, { recursive: true, force: true }));
  return d;
};

t.test('a second appliance on the same data directory is refused and leaves the first untouched', async (t) => {
  const dir = tmp(t, 'blockgate-own-');
  const a = await startServer(t, { dataDir: dir });
  const appliance = (await a.call('GET', '/v1/discovery')).appliance as string;
  t.ok(ioOk(await qemuIo(a, 'demo', '0/0', 'write -P 0x5a 0 64k', 'flush')));
  const runBefore = fs.readFileSync(path.join(dir, 'run.json'), 'utf8');

  const second = await serveRefused(dir);
  t.notOk(second.started, 'the second serve did not start');
  t.equal(second.code, 4, 'exit code 4: conflict');
  t.match(second.output, `pid ${a.pid}`, 'names the holder pid');
  t.match(second.output, dir, 'names the data directory');
  t.match(second.output, appliance, 'names the appliance id');

  t.equal(fs.readFileSync(path.join(dir, 'run.json'), 'utf8'), runBefore, 'run.json untouched');
  t.ok(fs.existsSync(a.socket('demo')), 'the host socket is still there');
  await runOk('nbdinfo', [a.unixUri('demo', '0/0')]);
  t.ok(ioOk(await qemuIo(a, 'demo', '0/0', 'read -P 0x5a 0 64k')), 'the first appliance still serves its data');
  t.equal((await a.call('GET', '/v1/health')).status, 'ok');
});

t.test('the lock dies with the process: a restart after kill -9 is allowed', async (t) => {
  const dir = tmp(t, 'blockgate-own-');
  const a = await startServer(t, { dataDir: dir });
  t.ok(ioOk(await qemuIo(a, 'demo', '0/0', 'write -P 0x77 4096 4096', 'flush')));
  await a.kill();
  const b = await startServer(t, { dataDir: dir });
  t.ok(ioOk(await qemuIo(b, 'demo', '0/0', 'read -P 0x77 4096 4096')), 'flushed data is back after the restart');
});

t.test('an import that would adopt another appliance\'s array files is refused, running or not', async (t) => {
  const dirA = tmp(t, 'blockgate-own-a-');
  const dirB = tmp(t, 'blockgate-own-b-');
  const a = await startServer(t, { dataDir: dirA });
  t.ok(ioOk(await qemuIo(a, 'demo', '0/0', 'write -P 0x3c 0 1M', 'flush')));
  const doc = await a.call('GET', '/v1/config');
  const appliance = doc.appliance as string;
  const arrayFile = path.join(dirA, 'arrays', 'array0.img');
  t.ok(fs.existsSync(`${arrayFile}.id`), 'the array carries an identity beside it');
  const idBefore = fs.readFileSync(`${arrayFile}.id`, 'utf8');

  const b = await startServer(t, { dataDir: dirB, demo: false });
  const live = await b.request('POST', '/v1/config', doc);
  t.equal(live.status, 409, JSON.stringify(live.body));
  t.equal(live.body.error.code, 'CONFLICT');
  t.match(live.body.error.message, `pid ${a.pid}`, 'names the holder pid');
  t.match(live.body.error.message, dirA, 'names the owner data directory');
  t.match(live.body.error.message, appliance, 'names the owner appliance id');
  t.same((await b.call('GET', '/v1/farms')).farms, [], 'nothing was imported');
  t.same((await b.call('GET', '/v1/arrays')).arrays, [], 'no array adopted');

  await a.stop();
  const stopped = await b.request('POST', '/v1/config', doc);
  t.equal(stopped.status, 409, 'still refused while the owner is stopped');
  t.match(stopped.body.error.message, dirA);
  t.match(stopped.body.error.message, /not running/);
  t.equal(fs.readFileSync(`${arrayFile}.id`, 'utf8'), idBefore, 'the identity file is untouched');

  // The owner comes back and its data is its own.
  const a2 = await startServer(t, { dataDir: dirA });
  t.ok(ioOk(await qemuIo(a2, 'demo', '0/0', 'read -P 0x3c 0 1M')));
});
