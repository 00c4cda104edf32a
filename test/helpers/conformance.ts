/**
 * libiscsi's conformance tool (Debian libiscsi-bin's iscsi-test-cu) against
 * a real `blockgate serve`, one suite per process (the 1.19 tool leaks a
 * PDU-rewriting hook across tests of one process), beside tgt's results on
 * the same tool (test/interop/data/tgt-iscsi-test-cu-{thin,thick}.tsv,
 * measured with tgt 1.0.85). Each kind of unit (thin, thick) runs in its own
 * test file (each within the runner's time limit); a run fails on any test
 * tgt passes on its LUN of the same kind that we do not. With
 * BLOCKGATE_CONFORMANCE_DOC=1 a full run saves its column as
 * test/interop/data/blockgate-iscsi-test-cu-<kind>.tsv and rewrites
 * docs/iscsi-conformance.md from the four tables.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Test } from 'tap';
import { startServer } from './server.js';

type Tap = Test;
import { ROOT, requireTools, run, runOk } from './tools.js';

/** The tool's two initiator names (multi-initiator suites log in as both): both are the demo host. */
const INITIATORS = ['iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test', 'iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2'];
const TARGET = 'iqn.2026-11.io.blockgate:demo.t0';
const DATA = path.join(ROOT, 'test/interop/data');
export type Kind = 'thin' | 'thick';
const KINDS: Kind[] = ['thin', 'thick'];

export interface SuiteResult {
  suite: string;
  total: number;
  passed: number;
  failed: number;
  skipped: number;
  failures: string[];
}

function readTsv(file: string): SuiteResult[] {
  const out: SuiteResult[] = [];
  if (!fs.existsSync(path.join(DATA, file))) return out;
  for (const line of fs.readFileSync(path.join(DATA, file), 'utf8').split('\n')) {
    const [suite, total, passed, failed, skipped, failures] = line.split('\t');
    if (!suite || total === undefined) continue;
    out.push({ suite, total: Number(total), passed: Number(passed), failed: Number(failed), skipped: Number(skipped), failures: (failures ?? '').split(',').filter(Boolean) });
  }
  return out;
}

const writeTsv = (file: string, rows: SuiteResult[]): void =>
  fs.writeFileSync(path.join(DATA, file), rows.map((r) => [r.suite, r.total, r.passed, r.failed, r.skipped, r.failures.join(',')].join('\t')).join('\n') + '\n');

/** One suite's outcome from the tool's output: the CUnit summary, failed test names, "[SKIPPED]" lines. */
export function parseSuite(suite: string, out: string): SuiteResult {
  const m = /^\s+tests\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)/m.exec(out);
  const failures: string[] = [];
  for (const chunk of out.split(/^ {2}Test: /m).slice(1)) {
    const name = chunk.split(/\s/)[0]!;
    if (/(^|\.\.\.)FAILED\s*$/m.test(chunk)) failures.push(name);
  }
  const total = m ? Number(m[1]) : failures.length;
  const failed = m ? Number(m[4]) : Math.max(1, failures.length);
  return {
    suite,
    total,
    passed: m ? Number(m[3]) : 0,
    failed,
    skipped: (out.match(/SKIPPED/g) ?? []).length,
    failures: m ? failures : [...failures, '(tool did not finish)'],
  };
}

/** Runs every ALL suite (or BLOCKGATE_CONFORMANCE_SUITES) against a 128 MiB unit of `kind`. */
export async function conformance(t: Tap, kind: Kind): Promise<void> {
  requireTools('iscsi-test-cu');
  const s = await startServer(t);
  for (const iqn of INITIATORS) await s.call('POST', '/v1/hosts/demo/initiators', { iqn });
  // libiscsi's own tgt regression setup uses 100 MiB LUNs with 512-byte blocks; the tests touch both ends.
  await s.call('POST', '/v1/volumes', { name: 'conformance', size: '128M', provisioning: kind });
  await s.call('POST', '/v1/bindings', { volume: 'conformance', host: 'demo', target: 0, lun: 1, map: true });
  const url = `iscsi://${s.iscsi}/${TARGET}/1`;
  const list = await runOk('iscsi-test-cu', ['--list'], { timeoutMs: 30_000 });
  // BLOCKGATE_CONFORMANCE_SUITES=Read10,Unmap runs only those (while working on one area).
  const only = process.env.BLOCKGATE_CONFORMANCE_SUITES?.split(',').filter(Boolean);
  const suites = list.stdout
    .split('\n')
    .filter((l) => /^ALL\.[A-Za-z0-9]+$/.test(l))
    .map((l) => l.slice(4))
    .filter((x) => !only || only.includes(x));
  const tgt = new Map(readTsv(`tgt-iscsi-test-cu-${kind}.tsv`).map((r) => [r.suite, r]));
  t.ok(only ? suites.length === only.length : suites.length >= 50, `${suites.length} suites`);
  const ours: SuiteResult[] = [];
  for (const suite of suites) {
    const r = await run('iscsi-test-cu', ['-d', '-t', `ALL.${suite}`, url], { timeoutMs: 180_000 });
    const res = parseSuite(suite, r.stdout + r.stderr);
    ours.push(res);
    const ref = tgt.get(suite);
    const tgtFails = new Set(ref?.failures ?? []);
    const regressions = res.failures.filter((f) => !tgtFails.has(f));
    t.same(regressions, [], `${kind} ${suite}: ${res.passed}/${res.total} passed (tgt ${ref ? `${ref.passed}/${ref.total}` : 'n/a'})`, { output: regressions.length ? r.stdout.slice(-4000) : '' });
  }
  t.comment(`\n${renderTable([{ kind, ours, tgt }])}`);
  if (process.env.BLOCKGATE_CONFORMANCE_DOC === '1' && !only) {
    writeTsv(`blockgate-iscsi-test-cu-${kind}.tsv`, ours);
    const cols = KINDS.map((k) => ({ kind: k, ours: readTsv(`blockgate-iscsi-test-cu-${k}.tsv`), tgt: new Map(readTsv(`tgt-iscsi-test-cu-${k}.tsv`).map((r) => [r.suite, r])) }));
    if (cols.every((c) => c.ours.length > 0)) fs.writeFileSync(path.join(ROOT, 'docs/iscsi-conformance.md'), renderDoc(renderTable(cols), cols));
  }
}

interface Column {
  kind: string;
  ours: SuiteResult[];
  tgt: Map<string, SuiteResult>;
}

/** One row per suite; per column (thin, thick): tests passed and failed here and on tgt's LUN of the same kind. */
function renderTable(cols: Column[]): string {
  const head = ['suite', 'tests', ...cols.flatMap((c) => [`${c.kind} passed`, `${c.kind} failed`, `${c.kind} skipped`, `tgt ${c.kind} passed`, `tgt ${c.kind} failed`, `${c.kind}: failed here`])];
  const rows = [`| ${head.join(' | ')} |`, `|---|---:|${cols.map(() => '---:|---:|---:|---:|---:|---|').join('')}`];
  const sums = cols.map(() => ({ passed: 0, failed: 0, skipped: 0, tp: 0, tf: 0 }));
  let total = 0;
  for (const [i, r0] of cols[0]!.ours.entries()) {
    total += r0.total;
    const cells = [r0.suite, String(r0.total)];
    cols.forEach((c, k) => {
      const r = c.ours[i]!;
      const ref = c.tgt.get(r.suite);
      cells.push(String(r.passed), String(r.failed), String(r.skipped), String(ref?.passed ?? '–'), String(ref?.failed ?? '–'), r.failures.join(', '));
      const sum = sums[k]!;
      sum.passed += r.passed;
      sum.failed += r.failed;
      sum.skipped += r.skipped;
      sum.tp += ref?.passed ?? 0;
      sum.tf += ref?.failed ?? 0;
    });
    rows.push(`| ${cells.join(' | ')} |`);
  }
  const foot = ['**all**', `**${total}**`, ...sums.flatMap((x) => [`**${x.passed}**`, `**${x.failed}**`, String(x.skipped), `**${x.tp}**`, `**${x.tf}**`, ''])];
  rows.push(`| ${foot.join(' | ')} |`);
  return rows.join('\n');
}

function renderDoc(table: string, cols: Column[]): string {
  const total = cols[0]!.ours.reduce((n, r) => n + r.total, 0);
  const summary = cols
    .map((c) => `- ${c.kind}: **${c.ours.reduce((n, r) => n + r.passed, 0)} of ${total} passed here; tgt (${c.kind} LUN): ${[...c.tgt.values()].reduce((n, r) => n + r.passed, 0)} of ${total}.**`)
    .join('\n');
  return `# iSCSI conformance (libiscsi iscsi-test-cu)

Generated by \`test/interop/iscsi-conformance{,-thick}.test.ts\` (run both with \`BLOCKGATE_CONFORMANCE_DOC=1\`):
Debian's libiscsi-bin \`iscsi-test-cu -d -t ALL.<Suite>\`, one suite per process, against two
128 MiB units (512-byte blocks) of a real \`blockgate serve\`, logged in as both of the tool's
initiator names (the demo host): a thin one (LBPME/LBPRZ, UNMAP) and a thick one (\`provisioning:
thick\`: LBPME=0, no UNMAP, WRITE SAME with UNMAP refused). tgt's columns are tgt 1.0.85 on the same
tool and machine, thin and thick LUN (\`test/interop/data/tgt-iscsi-test-cu-{thin,thick}.tsv\`).
"skipped" counts the tool's \`[SKIPPED]\` log lines (a command answered INVALID COMMAND OPERATION
CODE, or a feature the unit does not have): the tool counts those tests as passed.

${summary}

The test fails on any test tgt passes (on its LUN of the same kind) that blockgate fails.

${table}

What is answered "not implemented" (INVALID COMMAND OPERATION CODE), as on tgt: EXTENDED COPY and
RECEIVE COPY RESULTS, ORWRITE, WRITE ATOMIC(16), SANITIZE, READ DEFECT DATA; on the thick unit also
UNMAP. The unit is not removable (PreventAllow, StartStopUnit and NoMedia skip their
removable-medium parts); MultipathIO needs a second portal URL, which the test does not give, so
its tests skip.
`;
}
