import net from 'node:net';
import fs from 'node:fs';
import t from 'tap';
import { readFileRegion } from '../helpers/api.js';
import { RawNbd } from '../helpers/nbd-client.js';
import { clientFlags, infoRequest, option, request } from '../helpers/nbd-frames.js';
import { TOKEN, startServer } from '../helpers/server.js';
import { fioStateArgs } from '../helpers/fio.js';
import { waitFor } from '../helpers/wait.js';
import { requireTools, run } from '../helpers/tools.js';
import { CMD, OPT, REP, SIMPLE_REPLY_MAGIC } from '../../target/nbd/constants.js';

requireTools('fio');

const BS = 4096;
const pattern = (i: number): number => (i % 255) + 1;

/**
 * A raw NBD writer that records which writes the server acknowledged: block
 * i gets byte pattern(i), with up to `depth` requests in flight, until the
 * server ends the session.
 */
function writer(socket: string, blocks: number, depth: number, onAck: (n: number) => void): { acked: Set<number>; done: Promise<string> } {
  const acked = new Set<number>();
  const done = new Promise<string>((resolve) => {
    const sock = net.connect(socket);
    let buf = Buffer.alloc(0);
    let phase: 'greeting' | 'options' | 'transmission' = 'greeting';
    let next = 0;
    let inflight = 0;
    let ended = false;
    const pump = (): void => {
      while (!ended && inflight < depth && next < blocks) {
        const i = next++;
        inflight++;
        sock.write(request(CMD.WRITE, i, i * BS, BS, 0, Buffer.alloc(BS, pattern(i))));
      }
    };
    // Every read has a deadline: 60 s without any answer ends the writer as 'no answer'.
    let silent: NodeJS.Timeout | undefined;
    const quiet = (): void => {
      clearTimeout(silent);
      silent = setTimeout(() => {
        ended = true;
        sock.destroy();
        resolve('no answer within 60 s');
      }, 60_000);
    };
    quiet();
    sock.on('data', (d: Buffer) => {
      quiet();
      buf = Buffer.concat([buf, d]);
      for (;;) {
        if (phase === 'greeting') {
          if (buf.length < 18) return;
          buf = buf.subarray(18);
          sock.write(clientFlags(3));
          sock.write(option(OPT.GO, infoRequest('0/0')));
          phase = 'options';
        } else if (phase === 'options') {
          if (buf.length < 20) return;
          const len = buf.readUInt32BE(16);
          if (buf.length < 20 + len) return;
          const type = buf.readUInt32BE(12);
          buf = buf.subarray(20 + len);
          if (type === REP.ACK) {
            phase = 'transmission';
            pump();
          } else if (type >= 0x80000000) {
            sock.destroy();
            return resolve('option refused');
          }
        } else {
          if (buf.length < 16) return;
          if (buf.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) {
            sock.destroy();
            return resolve('bad reply magic');
          }
          const err = buf.readUInt32BE(4);
          const i = Number(buf.readBigUInt64BE(8));
          buf = buf.subarray(16);
          inflight--;
          if (err === 0) {
            acked.add(i);
            onAck(acked.size);
          }
          pump();
        }
      }
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      clearTimeout(silent);
      ended = true;
      resolve(next >= blocks ? 'all written' : 'closed by server');
    });
  });
  return { acked, done };
}

t.test('SIGTERM under load: in-flight writes are answered, every acknowledged write is on disk, exit 0', async (t) => {
  // info: the session lines are part of what is checked (and that nothing is logged per request).
  const s = await startServer(t, { args: ['--log-level', 'info'] });
  await s.call('POST', '/v1/volumes', { name: 'load', size: '64M', farm: 'default' });
  await s.call('POST', '/v1/bindings', { volume: 'load', host: 'demo', target: 1, lun: 0 });
  const tr = await s.call('GET', '/v1/trace/hosts/demo/units/0/0');
  t.equal(tr.segments.length, 1, 'demo-boot is one extent');
  const { file, arrayOffset } = tr.segments[0];
  const blocks = tr.volume.size / BS;

  // Background load on another unit, with no fsync: only the shutdown flush makes it durable.
  const fio = run('fio', ['--name=load', '--ioengine=nbd', `--uri=${s.unixUri('demo', '1/0')}`, '--rw=randwrite', '--bs=4k', '--iodepth=16', '--size=64M', '--time_based', '--runtime=60', ...fioStateArgs(s.dataDir)], { timeoutMs: 90_000 });
  await waitFor('the background load\'s writes in /metrics', async () => {
    const m = await (await fetch(`${s.api}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
    const w = /blockgate_io_ops_total\{host="demo",volume="load",op="write"\} (\d+)/.exec(m);
    return w && Number(w[1]) > 200 ? true : undefined;
  }, 60_000);

  let stopping: Promise<void> | null = null;
  const w = writer(s.socket('demo'), blocks, 32, (n) => {
    // Mid-stream: plenty acknowledged, plenty still to send, some in flight.
    if (n === 3000 && !stopping) stopping = s.stop();
  });
  const how = await w.done;
  t.equal(how, 'closed by server', 'the server ended the session');
  t.ok(stopping, 'SIGTERM was sent mid-stream');
  await stopping;
  t.equal(s.exitCode, 0, 'graceful exit');
  const lines = s.log.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  t.ok(lines.some((l) => l.session === 'negotiate' && l.export === '0/0' && l.volume === 'demo-boot' && l.option === 'GO'), 'negotiate line: export, volume, option');
  t.ok(lines.some((l) => l.session === 'disconnect' && l.reason === 'server-shutdown'), 'disconnect line with its reason');
  t.ok(lines.some((l) => l.op === 'shutdown' && l.msg === 'stopped'), 'shutdown completed');
  t.ok(lines.length < 100, `one line per operation and session, none per request (${lines.length} lines for ${w.acked.size}+ writes)`);
  await fio;
  t.ok(w.acked.size >= 3000, `${w.acked.size} writes acknowledged`);

  // Below the appliance: every acknowledged block holds its pattern.
  let bad = 0;
  for (const i of w.acked) {
    const b = readFileRegion(file, arrayOffset + i * BS, BS);
    if (b.some((x) => x !== pattern(i))) bad++;
  }
  t.equal(bad, 0, 'no acknowledged write lost');

  // And after a restart, through the appliance too.
  await s.start();
  const sample = [...w.acked].slice(-8);
  for (const i of sample) {
    const r = await run('qemu-io', ['-r', '-f', 'raw', '-c', `read -P ${pattern(i)} ${i * BS} ${BS}`, s.unixUri('demo', '0/0')]);
    t.equal(r.code, 0);
    t.notMatch(r.stdout, /verification failed/);
  }
  t.ok(w.acked.size < blocks, 'the writer was cut off before it finished');
});

t.test('SIGTERM when the final flush fails: exit 1 and the reason logged', async (t) => {
  // --check-interval 0: nothing notices the deleted array file before the
  // shutdown's own flush does (a runtime check would fail the array first and
  // drop its dirty blocks, so the shutdown would have nothing left to fail on).
  const s = await startServer(t, { args: ['--check-interval', '0'] });
  const tr = await s.call('GET', '/v1/trace/hosts/demo/units/0/0');
  const { file } = tr.segments[0];
  const c = await RawNbd.connect(s.socket('demo'), '0/0');
  t.teardown(() => c.close());
  // Acknowledged but never flushed: only the shutdown's flush can make it durable.
  await c.write(0, Buffer.alloc(64 * 1024, 0x5a));
  // The backing file disappears under the appliance (docs/faults.md: `missing`).
  fs.rmSync(file);
  await s.stop();
  t.equal(s.exitCode, 1, 'exit 1: data written since the last flush may not be on disk');
  const lines = s.log.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  t.ok(
    lines.some((l) => l.op === 'shutdown' && /shutdown failed/.test(String(l.msg))),
    'the shutdown-failed line says why',
  );
  t.notOk(lines.some((l) => l.op === 'shutdown' && l.msg === 'stopped'), 'no "stopped" line for a failed shutdown');
});
