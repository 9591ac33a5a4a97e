#!/bin/sh
# campaign_table.sh - the README's reliability table from build-fuzz/campaign_summary.txt
# (the last campaign line of each harness): executions, CPU seconds, coverage, corpus.
cd "$(dirname "$0")/../.."
S=${FUZZ_BUILD:-build-fuzz}/campaign_summary.txt
echo "| harness | CPU time | executions | edges covered (cov) | features (ft) | corpus | crashes, hangs, leaks |"
echo "|---|---|---|---|---|---|---|"
for t in pth safetensors npy image json scene args http; do
    l=$(grep " fuzz_$t " "$S" | tail -n 1)
    [ -n "$l" ] || continue
    cpu=$(echo "$l" | sed -n 's/.*cpu_s=\([0-9]*\).*/\1/p')
    ex=$(echo "$l" | sed -n 's/.*execs=\([0-9]*\).*/\1/p')
    art=$(echo "$l" | sed -n 's/.*artifacts=\([0-9]*\).*/\1/p')
    cov=$(echo "$l" | sed -n 's/.*cov: \([0-9]*\).*/\1/p')
    ft=$(echo "$l" | sed -n 's/.*ft: \([0-9]*\).*/\1/p')
    corp=$(echo "$l" | sed -n 's/.*corp: \([0-9]*\/[0-9]*[a-zA-Z]*\).*/\1/p')
    echo "| fuzz_$t | $cpu s | $ex | $cov | $ft | $corp | $art |"
done
