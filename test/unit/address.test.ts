import t from 'tap';
import { checkListenerAddress, isLoopback } from '../../common/address.js';

t.test('isLoopback: only addresses no other machine can reach', async (t) => {
  for (const h of ['127.0.0.1', '127.1.2.3', '::1', 'localhost', '::ffff:127.0.0.1']) t.ok(isLoopback(h), h);
  for (const h of ['0.0.0.0', '::', '10.0.0.1', '192.168.1.10', '128.0.0.1', 'example.com', '1270.0.0.1']) t.notOk(isLoopback(h), h);
});

t.test('checkListenerAddress: wildcard only when allowed', async (t) => {
  t.throws(() => checkListenerAddress('0.0.0.0:10809'), /every network/);
  t.same(checkListenerAddress('0.0.0.0:10809', { allowWildcard: true }), { host: '0.0.0.0', port: 10809 });
  t.same(checkListenerAddress('[::1]:10809'), { host: '::1', port: 10809 });
  t.same(checkListenerAddress('nbd.example.com:10809'), { host: 'nbd.example.com', port: 10809 });
  t.throws(() => checkListenerAddress('1.2.3:10809'), /not an IPv4/);
});
