#!/bin/sh
# npm run mutate [module…]: Stryker over the core modules, one module per run,
# niced (15) and on one core (see stryker.config.mjs for the module → tests map).
set -e
modules="${*:-state mapper allocation jobs bulk-worker cache}"
status=0
for m in $modules; do
  echo "== mutate $m"
  BLOCKGATE_MUTATE_MODULE="$m" nice -n 15 npx stryker run stryker.config.mjs || status=1
done
exit $status
