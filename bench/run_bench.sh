#!/bin/sh
# make bench: our timings and ONNX Runtime's on the same weights and cores, side by side.
# Builds nothing itself (make does); fetches nothing: bench/onnx/node_modules must have been
# installed with `npm ci --ignore-scripts` (make bench does this when npm is available).
set -u
B=${BUILD:-build}
echo "== machine"
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //') ($(nproc) cores)"
flags=$(grep -m1 '^flags' /proc/cpuinfo)
for f in avx2 fma avx512f avx512bw avx512vl avx512_vnni avx_vnni avx512_bf16; do
    case " $flags " in *" $f "*) printf '%s ' "$f" ;; esac
done
echo
echo
echo "== encoder (TinyViT, 77.5 GFLOP per image)"
enc=$($B/bench/bench_encoder 7) || exit 1
echo "$enc"
e1=$(echo "$enc" | awk '/threads 1:/ {print $4}')
e2=$(echo "$enc" | awk '/threads 2:/ {print $4}')
echo
echo "== decoder"
dec=$($B/bench/bench_decoder --runs 9) || exit 1
echo "$dec"
d1=$(echo "$dec" | sed -n 's/.*one prompt.*: \([0-9.]*\) ms (1 thread), \([0-9.]*\) ms (2 threads).*/\1/p')
d2=$(echo "$dec" | sed -n 's/.*one prompt.*: \([0-9.]*\) ms (1 thread), \([0-9.]*\) ms (2 threads).*/\2/p')
echo
ort1=""; ort2=""
if [ -d bench/onnx/node_modules/onnxruntime-node ] && command -v node >/dev/null; then
    echo "== ONNX Runtime (same weights, fixtures/onnx)"
    ort1=$(node bench/onnx/bench_onnx.js --threads 1 --runs 7) && echo "$ort1"
    ort2=$(node bench/onnx/bench_onnx.js --threads 2 --runs 7) && echo "$ort2"
    oe1=$(echo "$ort1" | sed 's/.*encoder \([0-9.]*\) ms.*/\1/')
    oe2=$(echo "$ort2" | sed 's/.*encoder \([0-9.]*\) ms.*/\1/')
    od1=$(echo "$ort1" | sed 's/.*770x769) \([0-9.]*\) ms.*/\1/')
    od2=$(echo "$ort2" | sed 's/.*770x769) \([0-9.]*\) ms.*/\1/')
    echo
    echo "== ratios (ONNX Runtime time / ours; > 1 means we are faster)"
    awk -v a="$oe1" -v b="$e1" -v c="$oe2" -v d="$e2" 'BEGIN {printf "encoder:  1 thread %.2fx   2 threads %.2fx\n", a/b, c/d}'
    awk -v a="$od1" -v b="$d1" -v c="$od2" -v d="$d2" 'BEGIN {printf "decoder:  1 thread %.2fx   2 threads %.2fx   (one prompt, prompt encoding + decoder + masks at 770x769)\n", a/b, c/d}'
    awk -v b="$e1" -v d="$e2" 'BEGIN {printf "scaling:  our encoder 2 threads vs 1: %.2fx\n", b/d}'
else
    echo "(ONNX Runtime not installed: cd bench/onnx && npm ci --ignore-scripts)"
fi
echo
echo "== everything mode"
$B/bench/bench_everything ${BENCH_QUICK:+--quick} || exit 1
echo
echo "== SAM ViT-B encoder (random weights of the real shapes, generated here)"
$B/bench/bench_sam_vit 3 B || exit 1
