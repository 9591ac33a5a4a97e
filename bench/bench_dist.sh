#!/bin/sh
# make MPI=1 bench-dist (issue 16): `tinysam distill` with B = 2 images per step, one process
# with 2 threads against `mpirun -np 2` with 1 thread per rank, on the same 6-image set (the
# fixture images, rectangle ground truths, the teacher's embeddings made first). Prints the
# images per second of both (from the step times in the logs, the first step left out: it
# touches the trainer's memory for the first time), the bytes each rank sends per step and the
# time spent combining gradients, and the projection of docs in README "Distributed training".
#
# Environment: BUILD (default build-mpi), STEPS (default 5), PROMPTS (default 16), ROUNDS
# (default 2), TRAIN (default all), TINYSAM_MPIRUN (default mpirun).
set -eu
B=${BUILD:-build-mpi}
STEPS=${STEPS:-5}
PROMPTS=${PROMPTS:-16}
ROUNDS=${ROUNDS:-2}
TRAIN=${TRAIN:-all}
MPIRUN=${TINYSAM_MPIRUN:-mpirun}
F=${TINYSAM_FIXTURES:-../shared/fixtures}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1 OMPI_MCA_hwloc_base_binding_policy=none
BIN=$(cd "$B" && pwd)/tinysam
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir -p "$T/images" "$T/emb" "$T/masks"
cp "$F/images/shapes.png" "$T/images/a.png"; cp "$F/images/shapes_rgba.png" "$T/images/b.png"
cp "$F/images/shapes_grey.png" "$T/images/c.png"; cp "$F/images/shapes_palette.png" "$T/images/d.png"
cp "$F/images/picture1.jpg" "$T/images/e.jpg"; cp "$F/images/picture3.jpg" "$T/images/f.jpg"
# ground truth: 8 rectangles per image, uncompressed COCO RLE (column-major, zero run first)
gt() { # name W H
    awk -v W="$2" -v H="$3" 'BEGIN {
        printf "{\"image\": {\"width\": %d, \"height\": %d}, \"annotations\": [", W, H
        for (k = 0; k < 8; k++) {
            x0 = int((0.05 + 0.1 * k) * W); x1 = int((0.3 + 0.08 * k) * W)
            y0 = int((0.1 + 0.05 * k) * H); y1 = int((0.5 + 0.05 * k) * H)
            printf "%s{\"segmentation\": {\"size\": [%d, %d], \"counts\": [%d", k ? ", " : "", H, W, x0 * H + y0
            for (x = x0; x < x1; x++) {
                z = (x + 1 < x1) ? (H - y1) + y0 : (H - y1) + (W - x1) * H
                printf ", %d, %d", y1 - y0, z
            }
            printf "]}}"
        }
        print "]}" }' > "$T/masks/$1.json"
}
gt a 640 480; gt b 640 480; gt c 640 480; gt d 640 480; gt e 769 770; gt f 3000 2621
"$BIN" embed --model "$F/models/tinysam_vit_t_random.pth" --images "$T/images" --out-dir "$T/emb" \
    --threads 2 >/dev/null 2>&1
ARGS="distill --teacher $F/models/tinysam_vit_t_random.pth --student $F/distill/student_fp16.pth
      --images $T/images --embeddings $T/emb --masks $T/masks --prompts $PROMPTS --rounds $ROUNDS
      --train $TRAIN --warmup 0 --steps $STEPS --images-per-step 2"
echo "== bench-dist: B = 2, $STEPS steps, --prompts $PROMPTS --rounds $ROUNDS --train $TRAIN"
echo "   CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"
"$MPIRUN" -np 1 "$BIN" $ARGS --threads 2 --out "$T/one.safetensors" 2>"$T/one.txt" || { cat "$T/one.txt"; exit 1; }
"$MPIRUN" -np 2 "$BIN" $ARGS --threads 1 --out "$T/two.safetensors" 2>"$T/two.txt" || { cat "$T/two.txt"; exit 1; }
same=no; cmp -s "$T/one.safetensors" "$T/two.safetensors" && same=yes
# per log: images/s over steps 2.., mean bytes sent, mean combine ms, mean slowest/fastest rank
summ() {
    awk -v B=2 '{
        n++; if (n == 1) next
        match($0, /"ms": [0-9.]+/); ms = substr($0, RSTART + 6, RLENGTH - 6)
        match($0, /"ms_combine": [0-9.]+/); mc = substr($0, RSTART + 14, RLENGTH - 14)
        match($0, /"bytes_sent": [0-9]+/); by = substr($0, RSTART + 14, RLENGTH - 14)
        match($0, /"ms_rank_slowest": [0-9.]+/); sl = substr($0, RSTART + 19, RLENGTH - 19)
        match($0, /"ms_rank_fastest": [0-9.]+/); fa = substr($0, RSTART + 19, RLENGTH - 19)
        t += ms; c += mc; b += by; s += sl; f += fa; k++
    } END {
        if (k == 0) { print "no timed steps"; exit 1 }
        printf "%.4f images/s, step %.2f s (ranks: slowest %.2f s, fastest %.2f s), combine %.1f ms, %.2f MB sent per rank and step\n",
            B * k / (t / 1000), t / k / 1000, s / k / 1000, f / k / 1000, c / k, b / k / 1e6
    }' "$1"
}
echo "1 process, 2 threads:  $(summ "$T/one.safetensors.log.jsonl")"
echo "2 ranks, 1 thread each: $(summ "$T/two.safetensors.log.jsonl")"
awk '{ n++; if (n > 1) { match($0, /"ms": [0-9.]+/); t1 += substr($0, RSTART + 6, RLENGTH - 6) } }
     END { printf "%f\n", t1 }' "$T/one.safetensors.log.jsonl" > "$T/t1"
awk '{ n++; if (n > 1) { match($0, /"ms": [0-9.]+/); t2 += substr($0, RSTART + 6, RLENGTH - 6) } }
     END { printf "%f\n", t2 }' "$T/two.safetensors.log.jsonl" > "$T/t2"
echo "2 ranks / 1 process throughput: $(awk -v a="$(cat "$T/t1")" -v b="$(cat "$T/t2")" 'BEGIN { printf "%.3f", a / b }') (goal >= 0.90)"
echo "models byte-identical: $same"
