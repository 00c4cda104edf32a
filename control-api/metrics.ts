import { Counter, Gauge, Registry, collectDefaultMetrics, type Metric } from 'prom-client';
import { PAUSE_BUCKETS_MS, type CutoverStats } from '../manager/index.js';
import { LATENCY_BUCKETS, OP_NAMES, type StatsRegistry } from '../target/index.js';

export interface MetricsSources {
  io: StatsRegistry;
  /** Cache counters (hits, misses, dirtyBytes, …), read at scrape time; non-numeric fields are left out. */
  cache?: () => Record<string, number | string> | undefined;
  /** Job counts by state. */
  jobs?: () => Record<string, number>;
  /** Protocol switches and migrations: outcomes and cutover pauses. */
  cutovers?: CutoverStats;
  /** Resource graph requests answered from the cached graph (hits) or after building it (misses). */
  graph?: () => { hits: number; misses: number };
}

/**
 * Prometheus exposition. Everything is read from the data path's own counters
 * when scraped, so serving I/O never touches prom-client. Labels are host,
 * volume, op, state: never an offset.
 */
export function buildMetrics(src: MetricsSources): Registry {
  const reg = new Registry();
  collectDefaultMetrics({ register: reg, prefix: 'blockgate_process_' });

  const ioCounter = (name: string, help: string, pick: (s: ReturnType<StatsRegistry['entries']>[number]['stats'], op: number) => number): void => {
    new Counter({
      name,
      help,
      labelNames: ['host', 'volume', 'op'],
      registers: [reg],
      collect() {
        this.reset();
        for (const { host, volume, stats } of src.io.entries()) {
          OP_NAMES.forEach((op, i) => {
            const v = pick(stats, i);
            if (v > 0) this.inc({ host, volume, op }, v);
          });
        }
      },
    });
  };
  ioCounter('blockgate_io_ops_total', 'Requests served, by host, volume and operation', (s, i) => s.ops[i]!);
  ioCounter('blockgate_io_bytes_total', 'Bytes moved by successful requests', (s, i) => s.bytes[i]!);
  ioCounter('blockgate_io_errors_total', 'Requests that ended in an error reply', (s, i) => s.errors[i]!);
  reg.registerMetric(latencyHistogram(src.io) as unknown as Metric);

  new Gauge({
    name: 'blockgate_sessions',
    help: 'Open sessions by host and protocol (nbd, iscsi)',
    labelNames: ['host', 'protocol'],
    registers: [reg],
    collect() {
      this.reset();
      for (const [protocol, host, n] of src.io.sessionsByProtocol()) this.set({ host, protocol }, n);
    },
  });

  const budget = src.io.budget;
  if (budget) {
    new Gauge({
      name: 'blockgate_io_budget_bytes',
      help: 'The appliance-wide bound on buffered requests and queued replies (all NBD and iSCSI sessions): limit and used',
      labelNames: ['kind'],
      registers: [reg],
      collect() {
        this.set({ kind: 'limit' }, budget.limit);
        this.set({ kind: 'used' }, budget.used);
      },
    });
    new Gauge({
      name: 'blockgate_io_budget_waiting_sessions',
      help: 'Sessions that stopped reading until the I/O budget has room',
      registers: [reg],
      collect() {
        this.set(budget.waiting);
      },
    });
    new Counter({
      name: 'blockgate_io_budget_refusals_total',
      help: 'Requests held back (NBD) or answered TASK SET FULL (iSCSI) because the I/O budget was spent',
      registers: [reg],
      collect() {
        this.reset();
        this.inc(budget.refusals);
      },
    });
  }

  const poll = src.io.poll;
  if (poll) {
    new Counter({
      name: 'blockgate_idle_polls_total',
      help: 'Polls of a lone host\'s socket after a reply (serve --idle-poll): found its next request, or ran out (the session stops polling until its requests come quickly again)',
      labelNames: ['result'],
      registers: [reg],
      collect() {
        this.reset();
        this.inc({ result: 'found' }, poll.found);
        this.inc({ result: 'empty' }, poll.empty);
      },
    });
  }

  new Counter({
    name: 'blockgate_session_ends_total',
    help: 'Sessions ended, by protocol and reason (client-disconnect, protocol-error, socket-error, revoked, server-shutdown, logout, nop-timeout, …)',
    labelNames: ['reason', 'protocol'],
    registers: [reg],
    collect() {
      this.reset();
      for (const [protocol, reason, n] of src.io.sessionEndsByProtocol()) this.inc({ reason, protocol }, n);
    },
  });

  if (src.cache) {
    const read = src.cache;
    new Gauge({
      name: 'blockgate_cache',
      help: 'RAM cache state and counters (hits, misses, dirtyBytes, evictions, writebacks, …)',
      labelNames: ['stat'],
      registers: [reg],
      collect() {
        this.reset();
        // Only numbers become samples: a string (a policy name, a path) must never become a label value.
        for (const [stat, v] of Object.entries(read() ?? {})) if (typeof v === 'number' && Number.isFinite(v)) this.set({ stat }, v);
      },
    });
  }
  if (src.jobs) {
    const read = src.jobs;
    new Gauge({
      name: 'blockgate_jobs',
      help: 'Jobs by state',
      labelNames: ['state'],
      registers: [reg],
      collect() {
        this.reset();
        for (const [state, v] of Object.entries(read())) this.set({ state }, v);
      },
    });
  }
  if (src.cutovers) {
    const cut = src.cutovers;
    new Counter({
      name: 'blockgate_cutovers_total',
      help: 'Protocol switches and VM migrations, by kind (switch, migration) and outcome (succeeded, failed, rolled-back)',
      labelNames: ['kind', 'outcome'],
      registers: [reg],
      collect() {
        this.reset();
        for (const [kind, outcome, n] of cut.outcomeCounts()) this.inc({ kind, outcome }, n);
      },
    });
    reg.registerMetric(pauseHistogram(cut) as unknown as Metric);
  }
  if (src.graph) {
    const read = src.graph;
    new Counter({
      name: 'blockgate_graph_cache_total',
      help: 'Resource graph requests by result: hit (served from the cached graph) or miss (graph rebuilt after a change)',
      labelNames: ['result'],
      registers: [reg],
      collect() {
        this.reset();
        const g = read();
        this.inc({ result: 'hit' }, g.hits);
        this.inc({ result: 'miss' }, g.misses);
      },
    });
  }
  return reg;
}

/** The cutover pause histogram: buckets live in CutoverStats (milliseconds), exposed in seconds. */
function pauseHistogram(cut: CutoverStats) {
  const name = 'blockgate_cutover_pause_seconds';
  const help = 'How long a protocol switch or migration cutover held its units\' I/O (hold → release)';
  return {
    name,
    help,
    type: 'histogram',
    aggregator: 'sum',
    collect: () => undefined,
    reset: () => undefined,
    get: async () => {
      const values: { value: number; labels: Record<string, string | number>; metricName: string }[] = [];
      let acc = 0;
      PAUSE_BUCKETS_MS.forEach((le, i) => {
        acc += cut.buckets[i]!;
        values.push({ metricName: `${name}_bucket`, labels: { le: le / 1000 }, value: acc });
      });
      values.push({ metricName: `${name}_bucket`, labels: { le: '+Inf' }, value: cut.pauseCount });
      values.push({ metricName: `${name}_sum`, labels: {}, value: cut.pauseSumMs / 1000 });
      values.push({ metricName: `${name}_count`, labels: {}, value: cut.pauseCount });
      return { name, help, type: 'histogram', aggregator: 'sum', values };
    },
  };
}

/** A histogram whose buckets live in IoStats; prom-client only formats it. */
function latencyHistogram(io: StatsRegistry) {
  const name = 'blockgate_io_latency_seconds';
  return {
    name,
    help: 'Request latency from parse to reply, by host, volume and operation',
    type: 'histogram',
    aggregator: 'sum',
    collect: () => undefined,
    reset: () => undefined,
    get: async () => {
      const values: { value: number; labels: Record<string, string | number>; metricName: string }[] = [];
      for (const { host, volume, stats } of io.entries()) {
        OP_NAMES.forEach((op, i) => {
          if (stats.ops[i] === 0) return;
          LATENCY_BUCKETS.forEach((le, b) => values.push({ metricName: `${name}_bucket`, labels: { host, volume, op, le }, value: stats.cumulative(i, b) }));
          values.push({ metricName: `${name}_bucket`, labels: { host, volume, op, le: '+Inf' }, value: stats.cumulative(i, LATENCY_BUCKETS.length) });
          values.push({ metricName: `${name}_sum`, labels: { host, volume, op }, value: stats.latencySum[i]! });
          values.push({ metricName: `${name}_count`, labels: { host, volume, op }, value: stats.ops[i]! });
        });
      }
      return { name, help: 'Request latency from parse to reply, by host, volume and operation', type: 'histogram', aggregator: 'sum', values };
    },
  };
}
