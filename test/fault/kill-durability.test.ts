import t from 'tap';
import { killRounds } from '../helpers/kill-model.js';
import { startServer } from '../helpers/server.js';

t.test('flushed writes survive SIGKILL at random points', async (t) => {
  const s = await startServer(t, { args: ['--cache-size', '32M'] });
  // A second volume on the same array, bound to the same host: misplacement across volumes is detectable.
  await s.call('POST', '/v1/volumes', { name: 'kill-v2', size: '8M' });
  await s.call('POST', '/v1/bindings', { volume: 'kill-v2', host: 'demo', target: 0, lun: 1 });
  // 4 MiB written per volume.
  await killRounds(t, s, { host: 'demo', exports: ['0/0', '0/1'], rounds: 24, blocks: 1024 });
});
