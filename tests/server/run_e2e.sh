#!/bin/sh
# run_e2e.sh - the browser end-to-end test of `tinysam serve` (called by .ci/run after the
# build). Needs Debian's chromium and Node >= 18; installs playwright-core from the lock
# file (no browser download: --ignore-scripts) the first time.
#   sh tests/server/run_e2e.sh [--screenshot docs/serve.png]
set -eu
cd "$(dirname "$0")"
if ! command -v node >/dev/null || [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
    echo "SKIP e2e: node or chromium missing (apt-get install nodejs npm chromium)"
    exit 0
fi
[ -d node_modules/playwright-core ] || npm ci --ignore-scripts --no-audit --no-fund >/dev/null
case "${1:-}" in
--screenshot) exec node e2e.mjs --screenshot "$(cd ../.. && pwd)/${2:?path}" ;;
*) exec node e2e.mjs ;;
esac
