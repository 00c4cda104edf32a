import fs from 'node:fs';

// Mutation testing of the core modules (issue 17 item 3): `npm run mutate [module…]`.
// Not in CI: a full run takes far longer than a CI slot on 2 cores. One module per
// Stryker run so a report says which module's tests are weak, and each run only
// executes the fast unit test files written for that module (the per-module test
// map below; the interop suites are far too slow to run once per mutant); perTest
// coverage then limits each mutant to the files that reach it.
const MODULES = {
  mapper: {
    mutate: ['mapper/**/*.ts', '!mapper/index.ts'],
    tests: ['mapper'],
  },
  cache: {
    mutate: ['cache/**/*.ts', '!cache/index.ts'],
    // Only the in-process tests of the store, the cache, the slab and the snapshot
    // links (each on real array files in a temp dir, a few seconds a file).
    tests: ['cache', 'cache-pages', 'cache-writeback', 'cache-change', 'slab', 'cow', 'change-map', 'unit-io'],
    // Loaded by piscina by file name, not imported: the sandbox build must be told.
    compile: ['disks/io-worker.ts'],
  },
  allocation: {
    mutate: ['disks/allocation.ts'],
    // allocation-sparse (sidecar formats, 64 TiB arrays, torn writes) is left out: its
    // torn-write subtest ran past tap's per-test timeout in the dry run at nice 15.
    tests: ['allocation-model', 'allocation'],
  },
  'bulk-worker': {
    // The engine runs it in a piscina worker thread, where Stryker's mutant
    // switch and coverage do not reach (every mutant survived the engine test
    // there); unit/bulk-worker calls the function in the test's own thread.
    mutate: ['disks/bulk-worker.ts'],
    tests: ['bulk-worker'],
  },
  state: {
    mutate: ['manager/state.ts'],
    tests: ['state-machine'],
  },
  jobs: {
    mutate: ['manager/jobs.ts'],
    tests: ['jobs'],
  },
};

const name = process.env.BLOCKGATE_MUTATE_MODULE ?? 'mapper';
const mod = MODULES[name];
if (!mod) throw new Error(`unknown module ${name}; one of ${Object.keys(MODULES).join(', ')}`);
// BLOCKGATE_MUTATE_TESTS=a,b narrows a run to some of the module's test files: a
// surviving mutant runs every file that reaches it, and every cache test reaches
// the write path, so a run over one part of a module runs the files written for it.
if (process.env.BLOCKGATE_MUTATE_TESTS) {
  const only = process.env.BLOCKGATE_MUTATE_TESTS.split(',');
  const unknown = only.filter((t) => !mod.tests.includes(t));
  if (unknown.length > 0) throw new Error(`not a test of module ${name}: ${unknown.join(', ')}`);
  mod.tests = only;
}

// The TypeScript checker re-checks its whole program for every group of
// mutants; over the project's tsconfig (260 files) that was ~45 s a mutant on
// the shared machine, the test run idle meanwhile. Its program (and the
// sandbox build's) here is the mutated files and the module's unit tests, with
// what they import: a mutant that only breaks a caller elsewhere is then not
// dropped as a compile error but tested, and counted, like any other.
const checkerTsconfig = `.stryker-tsconfig.${name}.json`;
fs.writeFileSync(
  checkerTsconfig,
  JSON.stringify({
    extends: './tsconfig.json',
    include: [...mod.mutate.filter((g) => !g.startsWith('!')), ...mod.tests.map((t) => `test/unit/${t}.test.ts`), ...(mod.compile ?? [])],
  }, null, 2) + '\n',
);

export default {
  packageManager: 'npm',
  testRunner: 'tap',
  checkers: ['typescript'],
  tsconfigFile: checkerTsconfig,
  typescriptChecker: { prioritizePerformanceOverAccuracy: true },
  // The sandbox copy gets the mutants instrumented into the .ts sources, then is
  // compiled once; the tests run from dist/ as they do under `npm test`.
  // The same small program as the checker's: only the module, its unit tests
  // and what they import are compiled into the sandbox's dist/ (the whole
  // project took 10 min at nice 15 on the shared machine; this takes seconds).
  buildCommand: `npx tsc -p ${checkerTsconfig}`,
  disableTypeChecks: '{mapper,cache,disks,manager}/**/*.ts',
  mutate: mod.mutate,
  tap: {
    testFiles: mod.tests.map((t) => `dist/test/unit/${t}.test.js`),
    nodeArgs: ['-r', '{{hookFile}}', '{{testFile}}'],
    forceBail: true,
  },
  coverageAnalysis: mod.coverageAnalysis ?? 'perTest',
  // 2 shared cores: one test process at a time.
  concurrency: 1,
  timeoutMS: 20000,
  timeoutFactor: 2.5,
  ignorePatterns: ['dist', 'bench/out', 'var', '.tap', 'coverage', 'reports', 'docs', '*.log'],
  tempDirName: '.stryker-tmp',
  cleanTempDir: true,
  // A stopped run resumes: mutants whose code and tests did not change since the
  // last run keep their result (the file is per module, beside the reports).
  incremental: true,
  incrementalFile: `reports/stryker-incremental-${name}.json`,
  reporters: ['clear-text', 'progress', 'json', 'html'],
  jsonReporter: { fileName: `reports/mutation/${name}.json` },
  htmlReporter: { fileName: `reports/mutation/${name}.html` },
  thresholds: { high: 90, low: 80, break: null },
};
