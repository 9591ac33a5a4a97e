#!/bin/sh
# make bench: our timings and ONNX Runtime's on the same weights and the same cores, side by
# side, with the ratios. Builds nothing (make does) and fetches nothing: ONNX Runtime is used
# when bench/onnx/node_modules holds it (`cd bench/onnx && npm ci --ignore-scripts`).
#
# Environment: BUILD (default build), RUNS (timed runs per setting, default 7), COLD_RUNS
# (fresh processes per cold-start figure, default 5), BENCH_QUICK
# (set: skip the 12-megapixel everything run and the training step), PEAK_GHZ and
# PEAK_FLOP_PER_CYCLE (override the machine's nominal FP32 peak used for the encoder's share
# of it).
#
# Contract with the benchmark binaries: with --json each prints, as the last line of its
# stdout, one flat JSON object (no nesting; numbers, strings, booleans), times in ms as
# medians, sizes in MB; a key ending in _1t / _2t is for 1 / 2 threads. Keys read here:
#   bench_encoder --json --runs N      encoder_ms_1t encoder_ms_2t isa peak_rss_mb
#                                      encoder_int8_ms_1t encoder_int8_ms_2t
#   bench_decoder --json --runs N      decoder_ms_1t decoder_ms_2t (one prompt end to end,
#                                      masks at 769x770) decoder_batch64_ms_per_prompt_1t/_2t
#                                      decoder_int8_ms_1t/_2t
#                                      decoder_int8_batch64_ms_per_prompt_1t/_2t
#   bench_everything --json --threads T [--quick]
#                                      threads net_hier_ms net_grid_ms oracle_hier_ms
#                                      oracle_grid_ms net_hier_points net_grid_points
#                                      net_12mp_hier_ms peak_rss_photo_mb peak_rss_12mp_mb
#                                      net_grid_int8_ms
#   bench_dataset --json [--quick]     separate_s folder_s folder_speedup separate_images_per_s
#                                      folder_images_per_s peak_rss_1mp_mb folder_12mp_s
#                                      peak_rss_12mp_mb
#   bench_boxes [--runs N] [--threads T] [--json] [--no-int8]  one_box_ms batch100_best_ms_per_box
#                                      ratio_best (prepare excluded), prepare_ms one_box_full_ms
#                                      batch100_full_ms_per_box ratio_full (decoder side counted
#                                      fully: the goal's), int8_*; shown as its own table
#   bench_coldstart [--runs N] [--threads T] [--json]   cold start (issue 20), its own table
#   bench_peak --json                  peak_gflops_1t peak_gflops_2t clock_ghz flop_per_cycle
#   bench/onnx/bench_onnx.js --json --threads T --runs N --image-size 769x770
#                                      encoder_ms decoder_ms decoder_seq64_ms_per_prompt
#                                      ort_version peak_rss_mb decoder_masks
# A binary without --json support (no JSON last line) has its own output shown instead.
set -u
B=${BUILD:-build}
RUNS=${RUNS:-7}
GFLOP=77.5 # TinyViT vit_t encoder, one 1024x1024 image
status=0

# jget KEY JSON: the value of KEY in a flat JSON object, "" when absent
jget() {
    printf '%s\n' "$2" | sed -n "s/.*\"$1\": *\"\{0,1\}\([^,\"}]*\).*/\1/p" | head -n 1
}
# jlast OUTPUT: the last line of OUTPUT when it is a JSON object, else ""
jlast() {
    l=$(printf '%s\n' "$1" | tail -n 1)
    case "$l" in "{"*"}") printf '%s' "$l" ;; *) printf '' ;; esac
}
# ratio A B: A/B with 2 decimals, "-" when either is missing or zero
ratio() {
    awk -v a="${1:-}" -v b="${2:-}" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2fx", a / b;
                                             else printf "-" }'
}
# num X [DECIMALS]: X formatted, "-" when missing
num() {
    awk -v x="${1:-}" -v d="${2:-1}" 'BEGIN { if (x == "") printf "-"; else printf "%.*f", d, x }'
}
secs() { awk -v ms="${1:-}" 'BEGIN { if (ms == "") printf "-"; else printf "%.2f s", ms / 1000 }'; }
row() { printf '  %-44s %18s %18s %s\n' "$1" "$2" "$3" "${4:-}" | sed 's/ *$//'; }

# ---------------------------------------------------------------- machine
echo "== machine"
model=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')
family=$(grep -m1 '^cpu family' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
cpumodel=$(grep -m1 '^model[[:space:]]*:' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
vendor=$(grep -m1 '^vendor_id' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
mhz=$(grep -m1 '^cpu MHz' /proc/cpuinfo | cut -d: -f2 | tr -d ' ')
ncpu=$(nproc)
flags=$(grep -m1 '^flags' /proc/cpuinfo)
have() { case " $flags " in *" $1 "*) return 0 ;; esac; return 1; }
fl=""
for f in avx2 fma avx512f avx512bw avx512vl avx512_vnni avx_vnni avx512_bf16; do
    if have "$f"; then fl="$fl $f"; else fl="$fl -$f"; fi
done
echo "cpu:   $model ($vendor family $family model $cpumodel), $ncpu cores online, ${mhz:-?} MHz"
echo "flags:$fl"
# FP32 peak: measured by bench_peak when built (FMA chains on 1 and 2 cores; a VM shows only
# the base clock, and Zen 4 runs 512-bit FMAs on 256-bit pipes), else nominal: FMA lanes x 2
# x 2 pipes x the clock /proc/cpuinfo shows (PEAK_GHZ / PEAK_FLOP_PER_CYCLE override it).
peak=""
[ -x "$B/bench/bench_peak" ] && peak=$(jlast "$("$B/bench/bench_peak" --json)")
if [ -n "$(jget peak_gflops_1t "$peak")" ] && [ -z "${PEAK_GHZ:-}${PEAK_FLOP_PER_CYCLE:-}" ]; then
    # 2 cores: twice one core's figure (the measured one drops with any other load)
    peak1=$(jget peak_gflops_1t "$peak"); peak2=$(awk -v p="$peak1" 'BEGIN { print 2 * p }')
    echo "peak:  measured $(jget peak_isa "$peak") FMA: $peak1 GFLOP/s on 1 core" \
         "($(jget peak_gflops_2t "$peak") on 2 now), $(jget flop_per_cycle "$peak")" \
         "FLOP/cycle at $(jget clock_ghz "$peak") GHz"
else
    if [ -n "${PEAK_FLOP_PER_CYCLE:-}" ]; then fpc=$PEAK_FLOP_PER_CYCLE
    elif have avx512f && { [ "$vendor" = GenuineIntel ] || [ "${family:-0}" -ge 26 ]; }; then
        fpc=64
    elif have avx2 && have fma; then fpc=32
    else fpc=8; fi
    ghz=${PEAK_GHZ:-$(awk -v m="${mhz:-0}" 'BEGIN { printf "%.2f", m / 1000 }')}
    peak1=$(awk -v f="$fpc" -v g="$ghz" 'BEGIN { printf "%.1f", f * g }')
    peak2=$(awk -v p="$peak1" 'BEGIN { printf "%.1f", 2 * p }')
    echo "peak:  nominal $fpc FLOP/cycle/core x $ghz GHz = $peak1 GFLOP/s per core"
fi
echo "load:  $(cut -d' ' -f1-3 /proc/loadavg) (other work on the machine disturbs the timings)"
echo

# ---------------------------------------------------------------- run everything first
ours_enc=""; ours_dec=""; o1=""; o2=""
if [ -x "$B/bench/bench_encoder" ]; then
    out=$("$B/bench/bench_encoder" --runs "$RUNS" --json) || status=1
    ours_enc=$(jlast "$out")
    [ -z "$ours_enc" ] && printf '%s\n' "$out"
else
    echo "($B/bench/bench_encoder not built)"
fi
if [ -x "$B/bench/bench_decoder" ]; then
    out=$("$B/bench/bench_decoder" --runs "$RUNS" --json) || status=1
    ours_dec=$(jlast "$out")
    [ -z "$ours_dec" ] && printf '%s\n' "$out"
else
    echo "($B/bench/bench_decoder not built)"
fi
ort_ok=0
if [ -d bench/onnx/node_modules/onnxruntime-node ] && command -v node >/dev/null 2>&1; then
    ort_ok=1
    for t in 1 2; do
        out=$(node bench/onnx/bench_onnx.js --json --threads "$t" --runs "$RUNS" \
                   --image-size 769x770) || status=1
        if [ "$t" = 1 ]; then o1=$(jlast "$out"); else o2=$(jlast "$out"); fi
    done
fi
ortv=$(jget ort_version "$o1$o2")

# ---------------------------------------------------------------- encoder
e1=$(jget encoder_ms_1t "$ours_enc"); e2=$(jget encoder_ms_2t "$ours_enc")
oe1=$(jget encoder_ms "$o1"); oe2=$(jget encoder_ms "$o2")
gf() { awk -v ms="${1:-}" -v g="$GFLOP" 'BEGIN { if (ms + 0 > 0) printf "%.1f", g * 1000 / ms }'; }
share() {
    awk -v x="${1:-}" -v p="${2:-}" 'BEGIN { if (x != "" && p + 0 > 0)
        printf "%.0f%%", 100 * x / p; else printf "-" }'
}
g1=$(gf "$e1"); g2=$(gf "$e2")
echo "== encoder (TinyViT vit_t, $GFLOP GFLOP per 1024x1024 image), median of $RUNS runs"
row "" "1 thread" "2 threads"
row "ours ($(jget isa "$ours_enc"))" "$(num "$e1") ms" "$(num "$e2") ms"
row "  achieved GFLOP/s (share of the FP32 peak)" "$(num "$g1") ($(share "$g1" "$peak1"))" \
    "$(num "$g2") ($(share "$g2" "$peak2"))"
row "  2 threads vs 1" "" "$(ratio "$e1" "$e2")"
if [ "$ort_ok" = 1 ]; then
    row "ONNX Runtime $ortv (CPU EP, same weights)" "$(num "$oe1") ms" "$(num "$oe2") ms"
    row "ratio ONNX Runtime / ours (target >= 1.3)" "$(ratio "$oe1" "$e1")" "$(ratio "$oe2" "$e2")"
fi
q1=$(jget encoder_int8_ms_1t "$ours_enc"); q2=$(jget encoder_int8_ms_2t "$ours_enc")
if [ -n "$q1$q2" ]; then
    row "ours, int8 (W8A8 whole encoder, quantised in memory)" "$(num "$q1") ms" "$(num "$q2") ms"
    row "ratio float / int8 (target >= 2.0)" "$(ratio "$e1" "$q1")" "$(ratio "$e2" "$q2")"
    g1=$(jget encoder_int8_gemm_ms_1t "$ours_enc"); g2=$(jget encoder_int8_gemm_ms_2t "$ours_enc")
    row "ours, int8 gemm scope (1x1 convs, linears)" "$(num "$g1") ms" "$(num "$g2") ms"
    row "ratio float / int8 gemm scope" "$(ratio "$e1" "$g1")" "$(ratio "$e2" "$g2")"
fi
echo

# ---------------------------------------------------------------- decoder
d1=$(jget decoder_ms_1t "$ours_dec"); d2=$(jget decoder_ms_2t "$ours_dec")
od1=$(jget decoder_ms "$o1"); od2=$(jget decoder_ms "$o2")
echo "== decoder, one prompt end to end (prompt encoding, decoder, masks at 769x770)"
row "" "1 thread" "2 threads"
row "ours (3 masks)" "$(num "$d1") ms" "$(num "$d2") ms"
if [ "$ort_ok" = 1 ]; then
    row "ONNX Runtime $ortv ($(jget decoder_masks "$o1") masks)" "$(num "$od1") ms" \
        "$(num "$od2") ms"
    row "ratio ONNX Runtime / ours (target >= 2)" "$(ratio "$od1" "$d1")" "$(ratio "$od2" "$d2")"
fi
qd1=$(jget decoder_int8_ms_1t "$ours_dec"); qd2=$(jget decoder_int8_ms_2t "$ours_dec")
if [ -n "$qd1" ]; then
    row "ours, int8 decoder (W8A8)" "$(num "$qd1") ms" "$(num "$qd2") ms"
    row "ratio float / int8 (target >= 1.5)" "$(ratio "$d1" "$qd1")" "$(ratio "$d2" "$qd2")"
fi
echo "== decoder, 64 prompts, per prompt"
b1=$(jget decoder_batch64_ms_per_prompt_1t "$ours_dec"); b2=$(jget decoder_batch64_ms_per_prompt_2t "$ours_dec")
row "ours, one batch of 64 (low-res masks)" "$(num "$b1") ms" "$(num "$b2") ms"
qb1=$(jget decoder_int8_batch64_ms_per_prompt_1t "$ours_dec")
qb2=$(jget decoder_int8_batch64_ms_per_prompt_2t "$ours_dec")
if [ -n "$qb1" ]; then
    row "ours, int8 decoder, one batch of 64" "$(num "$qb1") ms" "$(num "$qb2") ms"
    row "ratio float / int8 (target >= 2.0)" "$(ratio "$b1" "$qb1")" "$(ratio "$b2" "$qb2")"
fi
if [ "$ort_ok" = 1 ]; then
    row "ONNX Runtime, 64 calls (export has batch 1)" \
        "$(num "$(jget decoder_seq64_ms_per_prompt "$o1")") ms" \
        "$(num "$(jget decoder_seq64_ms_per_prompt "$o2")") ms"
fi
echo

# ---------------------------------------------------------------- memory
echo "== peak RSS"
row "ours, encoder benchmark" "$(num "$(jget peak_rss_mb "$ours_enc")" 0) MB" ""
if [ "$ort_ok" = 1 ]; then
    row "ONNX Runtime, encoder + decoder sessions" "$(num "$(jget peak_rss_mb "$o1")" 0) MB" \
        "$(num "$(jget peak_rss_mb "$o2")" 0) MB"
else
    echo "  (ONNX Runtime not installed: cd bench/onnx && npm ci --ignore-scripts)"
fi
echo

# ---------------------------------------------------------------- everything mode
if [ -x "$B/bench/bench_everything" ]; then
    echo "== everything mode"
    evs=""
    for t in 1 2; do
        out=$("$B/bench/bench_everything" --json --threads "$t" ${BENCH_QUICK:+--quick}) ||
            status=1
        j=$(jlast "$out")
        if [ -z "$j" ]; then printf '%s\n' "$out"; break; fi
        evs="$evs$j
"
        # a binary that ignores --threads runs at its default once
        [ "$(jget threads "$j")" = "$t" ] || break
    done
    printf '%s' "$evs" | while IFS= read -r j; do
        [ -n "$j" ] || continue
        t=$(jget threads "$j")
        row "$t thread(s): network, picture1, hierarchical" "$(secs "$(jget net_hier_ms "$j")")" \
            "$(jget net_hier_points "$j") points"
        row "             network, picture1, grid" "$(secs "$(jget net_grid_ms "$j")")" \
            "$(jget net_grid_points "$j") points"
        if [ -n "$(jget net_grid_int8_ms "$j")" ]; then
            row "             the same, int8 model" "$(secs "$(jget net_grid_int8_ms "$j")")" \
                "float / int8 $(ratio "$(jget net_grid_ms "$j")" "$(jget net_grid_int8_ms "$j")") (target >= 1.7)"
        fi
        row "             oracle scene, hierarchical" "$(secs "$(jget oracle_hier_ms "$j")")" \
            "$(jget oracle_hier_points "$j") points"
        row "             oracle scene, grid" "$(secs "$(jget oracle_grid_ms "$j")")" \
            "$(jget oracle_grid_points "$j") points"
        row "             peak RSS, picture1" "$(num "$(jget peak_rss_photo_mb "$j")" 0) MB" ""
        if [ -z "${BENCH_QUICK:-}" ]; then
            row "             12 MP photo, hierarchical" "$(secs "$(jget net_12mp_hier_ms "$j")")" \
                "peak RSS $(num "$(jget peak_rss_12mp_mb "$j")" 0) MB"
            row "             12 MP, dense post-processing" \
                "$(secs "$(jget net_12mp_hier_dense_ms "$j")")" "(before issue 19)"
        fi
    done
    echo
fi

# ---------------------------------------------------------------- prompted byte masks by spans
# issue 19: ts_mask_fill (spans) vs ts_postprocess_mask + threshold, one low-res mask, 1 thread
if [ -x "$B/bench/bench_mask_fill" ]; then
    echo "== prompted byte mask: spans vs dense up-sampling (1 thread, best of 15)"
    "$B/bench/bench_mask_fill" || status=1
    echo
fi

# ---------------------------------------------------------------- everything at photo size
# issue 19: scene_a x 10/3 (12 MP), spans post-processing vs the dense reference, same run;
# then the network at 12 MP (random weights), spans and dense runs alternating
if [ -x "$B/bench/bench_everything_photo" ] && [ -z "${BENCH_QUICK:-}" ]; then
    echo "== everything mode at photo size (oracle scene_a x 10/3, 4000x3000)"
    out=$("$B/bench/bench_everything_photo" --json --runs 3 2>/dev/null) || status=1
    j=$(jlast "$out")
    if [ -z "$j" ]; then printf '%s\n' "$out"; else
        row "grid, spans / dense" "$(secs "$(jget photo_grid_ms "$j")")" \
            "$(secs "$(jget photo_grid_dense_ms "$j")")" "$(jget grid_speedup "$j")x (goal >= 6x)"
        row "hierarchical, spans / dense" "$(secs "$(jget photo_hier_ms "$j")")" \
            "$(secs "$(jget photo_hier_dense_ms "$j")")" "$(jget hier_speedup "$j")x (goal >= 4x)"
        row "oracle (decoder) share, grid / hierarchical" \
            "$(secs "$(jget photo_grid_decode_ms "$j")")" "$(secs "$(jget photo_hier_decode_ms "$j")")"
        row "12 MP / 1200x900, grid / hierarchical" "$(jget photo_vs_scene_grid "$j")x" \
            "$(jget photo_vs_scene_hier "$j")x"
        row "peak RSS (spans runs)" "$(num "$(jget peak_rss_photo_mb "$j")" 0) MB" "(bound 250)" \
            "records identical: $(jget identical "$j")"
        if [ -n "$(jget net_12mp_spans_ms "$j")" ]; then
            row "network 12 MP (random weights: lattices), spans / dense" \
                "$(secs "$(jget net_12mp_spans_ms "$j")")" "$(secs "$(jget net_12mp_dense_ms "$j")")" \
                "$(jget net_12mp_spans_vs_dense "$j")x (goal <= 1.05)"
            row "  its post-processing, spans / dense" \
                "$(secs "$(jget net_12mp_spans_post_ms "$j")")" \
                "$(secs "$(jget net_12mp_dense_post_ms "$j")")" \
                "records identical: $(jget net_identical "$j")"
        fi
    fi
    echo
fi

# ---------------------------------------------------------------- dataset jobs
# `everything --images` (one process) against one `everything --image` process per photo
if [ -x "$B/bench/bench_dataset" ]; then
    echo "== dataset jobs (8 photos of 1200x860, --points-per-side 8, default threads)"
    out=$(BUILD="$B" "$B/bench/bench_dataset" --json ${BENCH_QUICK:+--quick}) || status=1
    j=$(jlast "$out")
    if [ -z "$j" ]; then printf '%s\n' "$out"; else
        row "8 separate tinysam everything processes" "$(num "$(jget separate_s "$j")" 2) s" \
            "$(num "$(jget separate_images_per_s "$j")" 3) images/s"
        row "one everything --images process" "$(num "$(jget folder_s "$j")" 2) s" \
            "$(num "$(jget folder_images_per_s "$j")" 3) images/s: $(num "$(jget folder_speedup "$j")" 2)x"
        row "peak RSS, folder run, 1 MP photos" "$(num "$(jget peak_rss_1mp_mb "$j")" 0) MB" ""
        if [ -z "${BENCH_QUICK:-}" ]; then
            row "folder run, 3 photos of 12 MP" "$(num "$(jget folder_12mp_s "$j")" 2) s" \
                "peak RSS $(num "$(jget peak_rss_12mp_mb "$j")" 0) MB (bound 600)"
        fi
    fi
    echo
fi

# ---------------------------------------------------------------- cold start (issue 20)
# fresh processes: load, first vs warm encode/decode, one-shot embed and segment, the
# outputs (PNGs, .npy); its own table, each figure against the issue's goal
if [ -x "$B/bench/bench_coldstart" ]; then
    echo "== cold start: fresh processes, picture1, 2 threads (bench_coldstart)"
    BUILD="$B" "$B/bench/bench_coldstart" --runs "${COLD_RUNS:-5}" --threads 2 || status=1
    echo
fi

# ---------------------------------------------------------------- many boxes per call
# tinysam segment --boxes / predict_torch: 100 boxes decoded together against one-box calls
if [ -x "$B/bench/bench_boxes" ]; then
    echo "== many boxes per call (100 boxes on picture1, embedding cached, masks at 769x770; (a) decoder preparation excluded, (b) counted fully: the goal, <= 0.6x)"
    for t in 1 2; do
        echo "-- $t thread(s)"
        "$B/bench/bench_boxes" --runs 3 --threads "$t" || status=1
    done
    echo
fi

# ---------------------------------------------------------------- mask downscaling (issue 17)
# the prompt encoder's mask path: float against an int8 form of its 16->256 1x1 conv
if [ -x "$B/bench/bench_mask_downscale" ]; then
    echo "== mask downscaling (mask input only): float vs int8 1x1 conv (bench_mask_downscale)"
    "$B/bench/bench_mask_downscale" --runs 15 || status=1
    echo
fi

# ---------------------------------------------------------------- SAM ViT-B
if [ -x "$B/bench/bench_sam_vit" ]; then
    echo "== SAM ViT-B encoder (random weights of the real shapes, generated here)"
    "$B/bench/bench_sam_vit" 3 B || status=1
fi
if [ -x "$B/bench/bench_sam_vit_i8" ]; then
    echo "== SAM ViT-B encoder, int8 (W8A8 linears) against float in one run (random weights)"
    "$B/bench/bench_sam_vit_i8" 3 B || status=1
fi

# ---------------------------------------------------------------- Q-TinySAM accuracy
# method x scope on the fixtures (random weights), about 1.5 minutes of CPU
if [ -x "$B/bench/bench_quant_accuracy" ] && [ -z "${BENCH_QUICK:-}" ]; then
    echo
    echo "== Q-TinySAM accuracy (bench_quant_accuracy; BENCH_QUICK=1 skips it)"
    "$B/bench/bench_quant_accuracy" || status=1
fi

# ---------------------------------------------------------------- Q-TinySAM module tree
if [ -x "$B/bench/bench_qsim" ]; then
    echo "== Q-TinySAM module-tree path (simulated quantisation) vs the float encoder"
    "$B/bench/bench_qsim" --runs "$RUNS" || status=1
fi

# ---------------------------------------------------------------- training step
# one distillation step, 64 prompt sets, t = 0 and 9, 1 and 2 threads (about 3.5 minutes)
if [ -x "$B/bench/bench_train" ] && [ -z "${BENCH_QUICK:-}" ]; then
    echo
    echo "== training step (tinysam distill; BENCH_QUICK=1 skips it)"
    "$B/bench/bench_train" --runs 1 || status=1
fi
exit $status
