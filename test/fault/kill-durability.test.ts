import t from 'tap';
import { killRounds } from '../helpers/kill-model.js';
import { startServer } from '../helpers/server.js';

// The kill -9 durability contract (test/helpers/kill-model.ts) with writers
// on both protocols: volume 0/0 over NBD, 0/2 over iSCSI, 0/1 over both at
// once, three volumes of one array bound to one host so misplacement across
// volumes is detectable.

t.test('flushed writes survive SIGKILL at random points', async (t) => {
  const s = await startServer(t, { args: ['--cache-size', '32M'] });
  await s.call('POST', '/v1/volumes', { name: 'kill-v2', size: '8M' });
  await s.call('POST', '/v1/bindings', { volume: 'kill-v2', host: 'demo', target: 0, lun: 1 });
  await s.call('POST', '/v1/volumes', { name: 'kill-v3', size: '8M' });
  await s.call('POST', '/v1/bindings', { volume: 'kill-v3', host: 'demo', target: 0, lun: 2 });
  // 4 MiB written per volume.
  await killRounds(t, s, {
    host: 'demo',
    exports: ['0/0', '0/1', '0/2'],
    luns: [0, 1, 2],
    writers: [['nbd'], ['nbd', 'iscsi'], ['iscsi']],
    rounds: 24,
    blocks: 1024,
  });
});
