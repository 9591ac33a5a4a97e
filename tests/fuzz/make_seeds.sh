#!/bin/sh
# make_seeds.sh - regenerates tests/fuzz/corpus/ (the committed fuzz seeds) from
# ../shared/fixtures: small generated files and short cuts of fixtures, never copies of
# large ones. Run from the repository root: sh tests/fuzz/make_seeds.sh
set -eu
cd "$(dirname "$0")/../.."
FIX=${TINYSAM_FIXTURES:-../shared/fixtures}
OUT=tests/fuzz/corpus
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
for t in npy json image pth safetensors args scene; do
    rm -rf "$OUT/$t"
    mkdir -p "$OUT/$t" "tests/fuzz/regress/$t"
done
python3 tests/fuzz/make_seeds.py "$FIX" "$OUT"
${CC:-cc} -O1 -o "$TMP/seed_jpeg" tests/fuzz/seed_jpeg.c -ljpeg
"$TMP/seed_jpeg" "$OUT/image"
# A cut of the progressive fixture: its headers and first scans (a truncated file).
if [ -f "$FIX/images/picture3.jpg" ]; then
    head -c 4096 "$FIX/images/picture3.jpg" > "$OUT/image/fixture_picture3_cut"
fi
echo "seeds: $(find "$OUT" -type f | wc -l) files, $(du -sk "$OUT" | cut -f1) KiB"
