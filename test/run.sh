#!/usr/bin/env bash
# `npm test`: starts what the tests need, runs vitest, stops it again, and ends with the line
# `N passed, N failed` read from vitest's JSON report.
set -uo pipefail
cd "$(dirname "$0")/.."

# The transparent-interception test needs iptables (Debian's package); it skips, saying why,
# where it cannot be installed.
if ! command -v iptables >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing iptables for the transparent-interception test"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iptables) >/dev/null 2>&1 \
    || echo "could not install iptables; that test will skip"
fi

# The L2 tests run real redis-server processes (Debian's redis-server package, which brings
# redis-cli) on private ports, so a system service that apt may start on 6379 does not matter.
if ! command -v redis-server >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing redis-server for the L2 tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null 2>&1 \
    || echo "could not install redis-server; the L2 tests will fail saying so"
fi

rm -f test-results.json
npx vitest run "$@"
status=$?

if [ -f test-results.json ]; then
  node -e '
    const r = require("./test-results.json");
    const skipped = r.numPendingTests + (r.numTodoTests || 0);
    // An error outside any test (an unhandled rejection, a failed suite) fails the run without
    // failing a test; it counts here, so the line never says 0 failed for a red run.
    const failed = r.numFailedTests + (!r.success && r.numFailedTests === 0 ? 1 : 0);
    console.log(`${r.numPassedTests} passed, ${failed} failed` + (skipped ? `, ${skipped} skipped` : ""));
  '
else
  echo "0 passed, 1 failed"
  status=1
fi
exit $status
