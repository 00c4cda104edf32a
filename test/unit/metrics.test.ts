import t from 'tap';
import { buildMetrics } from '../../control-api/metrics.js';
import { IoStats, OP, StatsRegistry } from '../../target/stats.js';

t.test('IoStats records without allocating and keeps cumulative buckets', async (t) => {
  const s = new IoStats();
  s.record(OP.read, 4096, 0.00004, true);
  s.record(OP.read, 4096, 0.003, true);
  s.record(OP.read, 4096, 20, false);
  t.equal(s.ops[OP.read], 3);
  t.equal(s.bytes[OP.read], 8192, 'failed requests move no bytes');
  t.equal(s.errors[OP.read], 1);
  t.equal(s.cumulative(OP.read, 0), 1, 'le=0.00005');
  t.equal(s.cumulative(OP.read, 16), 3, '+Inf holds everything');
});

t.test('exposition: per host/volume series, histogram, sessions, jobs, numeric cache stats only', async (t) => {
  const io = new StatsRegistry();
  io.for('h1', 'v1').record(OP.write, 512, 0.001, true);
  io.for('h1', 'v1').record(OP.flush, 0, 0.002, true);
  io.for('h2', 'v2').record(OP.read, 1024, 0.0001, true);
  t.equal(io.for('h1', 'v1'), io.for('h1', 'v1'), 'one IoStats per (host, volume), kept across lookups');
  io.sessionOpened('h1');
  io.sessionOpened('h1');
  io.sessionClosed('h1', 'protocol-error');
  const reg = buildMetrics({ io, jobs: () => ({ running: 2, failed: 0 }), cache: () => ({ hits: 10, misses: 3, policy: 'write-back' }) });
  const text = await reg.metrics();
  t.match(text, /blockgate_io_ops_total\{host="h1",volume="v1",op="write"\} 1/);
  t.match(text, /blockgate_io_bytes_total\{host="h2",volume="v2",op="read"\} 1024/);
  t.match(text, /blockgate_io_latency_seconds_bucket\{host="h1",volume="v1",op="flush",le="\+Inf"\} 1/);
  t.match(text, /blockgate_io_latency_seconds_count\{host="h2",volume="v2",op="read"\} 1/);
  t.match(text, /blockgate_sessions\{host="h1",protocol="nbd"\} 1/);
  t.match(text, /blockgate_jobs\{state="running"\} 2/);
  t.match(text, /blockgate_session_ends_total\{reason="protocol-error",protocol="nbd"\} 1/);
  t.match(text, /blockgate_cache\{stat="hits"\} 10/);
  t.notMatch(text, /write-back|policy/, 'string cache fields are not exported');
  t.notMatch(text, /offset/i);
  // Counters are read at scrape time: a second scrape sees new requests.
  io.for('h1', 'v1').record(OP.write, 512, 0.001, true);
  t.match(await reg.metrics(), /blockgate_io_ops_total\{host="h1",volume="v1",op="write"\} 2/);
});
