#!/bin/sh
# campaign.sh CPU_SECONDS NAME... - the reliability campaign: runs build-fuzz/fuzz_NAME (build
# them first: make fuzz-build) one after the other, single job, with the limits of
# `make fuzz`, each until it has used CPU_SECONDS of CPU time (not wall time: the machine is
# shared), then interrupts it so that libFuzzer prints its final stats. Appends one line per
# harness to build-fuzz/campaign_summary.txt; logs are build-fuzz/campaign_NAME.log.
# Example (two queues on two cores):
#   sh tests/fuzz/campaign.sh 600 pth safetensors npy args & sh tests/fuzz/campaign.sh 600 image json scene
set -u
cpu_limit=$1; shift
cd "$(dirname "$0")/../.."
B=${FUZZ_BUILD:-build-fuzz}
HZ=$(getconf CLK_TCK 2>/dev/null || true); [ -n "$HZ" ] && [ "$HZ" -gt 0 ] 2>/dev/null || HZ=100
for t in "$@"; do
    mkdir -p "$B/corpus/$t" "$B/artifacts/$t" "tests/fuzz/regress/$t"
    LOG=$B/campaign_$t.log
    dict=; [ -f "tests/fuzz/dict/$t.dict" ] && dict="-dict=tests/fuzz/dict/$t.dict"
    start=$(date +%s)
    "$B/fuzz_$t" -timeout=1 -rss_limit_mb=2048 -detect_leaks=1 -print_final_stats=1 \
        -max_total_time=36000 $dict -artifact_prefix="$B/artifacts/$t/" \
        "$B/corpus/$t" "tests/fuzz/corpus/$t" "tests/fuzz/regress/$t" > "$LOG" 2>&1 &
    pid=$!
    cpu=0
    while kill -0 "$pid" 2>/dev/null; do
        # utime + stime (fields 14, 15 of /proc/PID/stat; the name field has no spaces here)
        ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
        cpu=$((ticks / HZ))
        if [ "$cpu" -ge "$cpu_limit" ]; then kill -INT "$pid"; break; fi
        sleep 5
    done
    wait "$pid"; rc=$?
    wall=$(( $(date +%s) - start ))
    # 72 is libFuzzer's exit status when interrupted (our stop); 0 when max_total_time ran out
    last=$(grep -E '^#[0-9]+' "$LOG" | tail -n 1)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$LOG")
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$LOG")
    n_art=$(ls "$B/artifacts/$t" | wc -l)
    line="$(date -u +%FT%TZ) fuzz_$t exit=$rc cpu_s=$cpu wall_s=$wall execs=$execs peak_rss_mb=$rss artifacts=$n_art last: $last"
    echo "$line" | tee -a "$B/campaign_summary.txt"
done
