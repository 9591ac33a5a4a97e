#!/bin/sh
# first_call_probe.sh - medians over N fresh processes of tools/first_call_probe.c (load, first
# and second encode and decode, peak RSS) and of one-shot `tinysam embed` wall times, for the
# float and int8 safetensors and the .pth (issue 20). Ratios are taken per process.
#   sh tools/first_call_probe.sh PROBE TINYSAM F.safetensors I8.safetensors M.pth IMAGE [N]
set -eu
probe=$1 cli=$2 f=$3 q=$4 pth=$5 img=$6 n=${7:-7}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ms() { date +%s%N; }
i=0
while [ "$i" -lt "$n" ]; do
    for m in f q pth; do
        eval "path=\$$m"
        "$probe" "$path" "$img" 2 >>"$tmp/probe_$m"
    done
    for m in f q; do
        eval "path=\$$m"
        t0=$(ms)
        "$cli" embed --model "$path" --image "$img" --out "$tmp/e.npy" --threads 2 >/dev/null
        t1=$(ms)
        echo $(((t1 - t0) / 1000)) >>"$tmp/embed_$m"
    done
    i=$((i + 1))
done
med() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for m in f q pth; do
    p="$tmp/probe_$m"
    echo "$m: load $(cut -d' ' -f1 "$p" | med) ms, encode first $(cut -d' ' -f2 "$p" | med)" \
        "warm $(cut -d' ' -f3 "$p" | med) ms (first/warm $(awk '{print $2/$3}' "$p" | med))," \
        "decode first $(cut -d' ' -f4 "$p" | med) warm $(cut -d' ' -f5 "$p" | med) ms" \
        "(first/warm $(awk '{print $4/$5}' "$p" | med)), peak RSS $(cut -d' ' -f6 "$p" | med) MB"
done
for m in f q; do
    echo "$m: one-shot embed $(awk '{print $1/1000}' "$tmp/embed_$m" | med) ms wall," \
        "/ warm encode of the probe: $(paste "$tmp/embed_$m" "$tmp/probe_$m" | awk '{print $1/1000/$4}' | med)"
done
echo "one-shot embed float / int8: $(paste "$tmp/embed_f" "$tmp/embed_q" | awk '{print $1/$2}' | med)"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
