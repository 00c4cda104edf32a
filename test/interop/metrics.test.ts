import t from 'tap';
import { M, ioOk, qemuIo, waitJob } from '../helpers/api.js';
import { startServer, type TestServer } from '../helpers/server.js';
import { fioStateArgs } from '../helpers/fio.js';
import { waitFor } from '../helpers/wait.js';
import { requireTools, runOk } from '../helpers/tools.js';

requireTools('fio', 'qemu-io');

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses Prometheus text exposition (the subset prom-client writes). */
function parse(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) throw new Error(`unparsable metrics line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

async function scrape(s: TestServer): Promise<Sample[]> {
  const r = await fetch(`${s.api}/metrics`, { headers: { authorization: 'Bearer test-token-0123456789' } });
  if (r.status !== 200) throw new Error(`/metrics answered ${r.status}`);
  if (!/^text\/plain; version=0\.0\.4/.test(r.headers.get('content-type') ?? '')) throw new Error(`content-type ${r.headers.get('content-type')}`);
  return parse(await r.text());
}

const value = (ss: Sample[], name: string, labels: Record<string, string>): number =>
  ss.filter((x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v)).reduce((a, x) => a + x.value, 0);

t.test('/metrics moves under fio load, per host and volume, with no offset-valued label', async (t) => {
  const s = await startServer(t);
  await s.call('POST', '/v1/hosts', { name: 'h2', farm: 'default' });
  await s.call('POST', '/v1/volumes', { name: 'v2', size: '32M', farm: 'default' });
  await s.call('POST', '/v1/bindings', { volume: 'v2', host: 'h2', target: 1, lun: 0 });

  t.equal((await fetch(`${s.api}/metrics`)).status, 401, 'metrics need the API token like every route but /v1/health');

  const before = await scrape(s);
  const io = { host: 'demo', volume: 'demo-boot' };
  const fio = await runOk('fio', [
    '--name=m',
    '--ioengine=nbd',
    `--uri=${s.unixUri('demo', '0/0')}`,
    '--rw=randrw',
    '--bs=4k',
    '--iodepth=16',
    '--size=16M',
    '--io_size=24M',
    '--fsync=64',
    ...fioStateArgs(s.dataDir),
    '--output-format=json',
  ]);
  const job = (JSON.parse(fio.stdout.slice(fio.stdout.indexOf('{'))) as { jobs: { read: { io_bytes: number; total_ios: number }; write: { io_bytes: number; total_ios: number } }[] }).jobs[0]!;
  t.ok(ioOk(await qemuIo(s, 'h2', '1/0', 'write -P 0x42 0 1M', 'read -P 0x42 0 1M')));

  // qemu-io has exited, but the server may not have seen its socket close yet when the scrape arrives.
  const after = await waitFor('the clients\' sessions to end', async () => {
    const x = await scrape(s);
    return value(x, 'blockgate_sessions', {}) === 0 ? x : undefined;
  });
  const grew = (name: string, labels: Record<string, string>): number => value(after, name, labels) - value(before, name, labels);
  // fio's own counts are what the appliance served: every request is counted once.
  t.equal(grew('blockgate_io_ops_total', { ...io, op: 'read' }), job.read.total_ios, 'read ops match fio');
  t.equal(grew('blockgate_io_ops_total', { ...io, op: 'write' }), job.write.total_ios, 'write ops match fio');
  t.equal(grew('blockgate_io_bytes_total', { ...io, op: 'read' }), job.read.io_bytes, 'read bytes match fio');
  t.equal(grew('blockgate_io_bytes_total', { ...io, op: 'write' }), job.write.io_bytes, 'write bytes match fio');
  t.ok(grew('blockgate_io_ops_total', { ...io, op: 'flush' }) > 0, 'fio --fsync sends flushes');
  t.equal(value(after, 'blockgate_io_errors_total', io), 0, 'no errors');
  for (const op of ['read', 'write']) {
    const count = value(after, 'blockgate_io_latency_seconds_count', { ...io, op });
    t.equal(value(after, 'blockgate_io_latency_seconds_bucket', { ...io, op, le: '+Inf' }), count, `${op}: +Inf bucket = count`);
    t.equal(count, value(after, 'blockgate_io_ops_total', { ...io, op }), `${op}: histogram counts every request`);
    t.ok(value(after, 'blockgate_io_latency_seconds_sum', { ...io, op }) > 0);
    // Buckets are cumulative.
    const buckets = after.filter((x) => x.name === 'blockgate_io_latency_seconds_bucket' && x.labels.host === 'demo' && x.labels.op === op);
    for (let i = 1; i < buckets.length; i++) t.ok(buckets[i]!.value >= buckets[i - 1]!.value);
  }
  // The other host's I/O is its own series.
  t.equal(value(after, 'blockgate_io_bytes_total', { host: 'h2', volume: 'v2', op: 'write' }), M);
  t.equal(value(after, 'blockgate_io_bytes_total', { host: 'h2', volume: 'demo-boot' }), 0);
  t.ok(after.some((x) => x.name === 'blockgate_sessions' && x.labels.host === 'demo'), 'sessions gauge per host');
  t.ok(value(after, 'blockgate_session_ends_total', { reason: 'client-disconnect' }) >= 2, 'session ends by reason');

  // Jobs by state.
  const scrubbed = await s.call('POST', '/v1/volumes', { name: 'tmp', size: '8M', farm: 'default', configure: false });
  t.ok(scrubbed);
  await s.call('POST', '/v1/volumes/tmp/break');
  const j = await s.call('POST', '/v1/volumes/tmp/scrub', {});
  t.equal((await waitJob(s, j.job.id)).state, 'succeeded', 'the scrub succeeded');
  const withJob = await scrape(s);
  t.equal(value(withJob, 'blockgate_jobs', { state: 'succeeded' }), 1);
  t.equal(value(withJob, 'blockgate_jobs', { state: 'running' }), 0);

  // No label anywhere carries an offset, and blockgate's own labels are from a closed set.
  const ours = new Set(['host', 'volume', 'op', 'le', 'state', 'stat', 'reason', 'protocol', 'kind', 'outcome', 'result']);
  for (const x of withJob) {
    for (const [k, v] of Object.entries(x.labels)) {
      t.notMatch(k, /offset|lba|block|sector/i, `${x.name}: label ${k}`);
      if (x.name.startsWith('blockgate_') && !x.name.startsWith('blockgate_process_')) {
        if (!ours.has(k)) t.fail(`${x.name} has unexpected label ${k}`);
        if (k !== 'le' && /^\d+$/.test(v)) t.fail(`${x.name} label ${k}=${v} looks like a number`);
      }
    }
  }
});
