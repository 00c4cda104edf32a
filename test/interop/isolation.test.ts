import t from 'tap';
import { M, ioOk, listExports, qemuIo, waitJob } from '../helpers/api.js';
import { startServer } from '../helpers/server.js';
import { requireTools, run } from '../helpers/tools.js';

requireTools('qemu-io', 'nbdinfo');

t.test('farm isolation and no reading of freed space, after a sequence of operations', async (t) => {
  const s = await startServer(t, { demo: false });
  const api = s.call.bind(s);
  await api('POST', '/v1/farms', { name: 'A' });
  await api('POST', '/v1/farms', { name: 'B' });
  // One small array, so new volumes land on the space old ones gave back.
  await api('POST', '/v1/arrays', { name: 'a0', size: '32M' });
  await api('POST', '/v1/hosts', { name: 'ha', farm: 'A' });
  await api('POST', '/v1/hosts', { name: 'hb', farm: 'B' });

  const vb = await api('POST', '/v1/volumes', { name: 'vb', size: '16M', farm: 'B' });
  const bb = await api('POST', '/v1/bindings', { volume: 'vb', host: 'hb', target: 0, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'hb', '0/0', 'write -P 0x5a 0 16M', 'flush')), 'farm B writes its secret');

  // A shared volume of farm A on ha at a different address; hb must still see nothing of it.
  await api('POST', '/v1/volumes', { name: 'ga', size: '8M', farm: 'A', shareMode: 'shared' });
  const bg = await api('POST', '/v1/bindings', { volume: 'ga', host: 'ha', target: 3, lun: 1 });

  const checkIsolated = async (label: string): Promise<void> => {
    t.notOk((await listExports(s, 'ha')).includes('0/0'), `${label}: ha does not list farm B's unit`);
    t.notOk((await listExports(s, 'hb')).includes('3/1'), `${label}: hb does not list farm A's unit`);
    const open = await run('nbdinfo', [s.unixUri('ha', '0/0')]);
    t.not(open.code, 0, `${label}: ha cannot open 0/0`);
    t.match(open.stderr, /unknown|not found|No such file/i, `${label}: as an unknown export (${open.stderr.trim()})`);
    const r = await s.request('POST', '/v1/bindings', { volume: 'vb', host: 'ha', target: 7, lun: 0 });
    t.equal(r.status, 409, `${label}: farm B's volume does not bind to a farm A host`);
    t.equal(r.body.error.code, 'CONFLICT');
    t.match(r.body.error.message, /farm/, `${label}: because of the farm (${r.body.error.message})`);
    const shared = await run('nbdinfo', ['--list', '--json', s.tcpUri()]);
    t.notMatch(shared.stdout, /"export-name"/, `${label}: the shared listener offers no host's units`);
  };
  await checkIsolated('mapped');

  // Release farm B's volume: unmap, unbind, break; freeing is refused until scrubbed.
  await api('POST', `/v1/bindings/${bb.id}/unmap`);
  await checkIsolated('unmapped');
  await api('DELETE', `/v1/bindings/${bb.id}`);
  await api('POST', '/v1/volumes/vb/break');
  const refused = await s.request('POST', '/v1/volumes/vb/deallocate');
  t.equal(refused.status, 409, 'unscrubbed space is never freed');
  t.match(refused.body?.error?.message, /scrub it before de-allocating/);
  const job = await api('POST', '/v1/volumes/vb/scrub', {});
  t.equal((await waitJob(s, job.job.id)).state, 'succeeded');
  await api('POST', '/v1/volumes/vb/deallocate');
  t.same(await listExports(s, 'hb'), []);

  // Farm A gets the same bytes of the array and reads only zeroes.
  const va = await api('POST', '/v1/volumes', { name: 'va', size: '16M', farm: 'A' });
  t.same(va.extents, vb.extents, 'the new volume sits exactly where the old one was');
  await api('POST', '/v1/bindings', { volume: 'va', host: 'ha', target: 0, lun: 0 });
  t.ok(ioOk(await qemuIo(s, 'ha', '0/0', `read -P 0 0 ${16 * M}`)), 'farm A reads zeroes, never farm B data');
  t.same(await listExports(s, 'ha'), ['0/0', '3/1']);
  t.same(await listExports(s, 'hb'), [], 'hb sees nothing of farm A');
  await api('POST', `/v1/bindings/${bg.id}/unmap`);
  t.same(await listExports(s, 'ha'), ['0/0']);
});
