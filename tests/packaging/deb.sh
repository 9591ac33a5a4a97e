#!/bin/sh
# make test-deb: the Debian packages (issue 23), as root on a Debian machine. Builds them with
# `dpkg-buildpackage -b -us -uc` from a copy of the tree (the build's `make clean` must not
# touch this checkout), checks lintian reports no errors, installs them with dpkg -i, runs
# /usr/bin/tinysam info on the fixture checkpoint, links a program with `pkg-config --libs
# tinysam` against the installed library and runs it, then removes the packages again.
# Ends with "N passed, N failed".
set -u
FIX=${TINYSAM_FIXTURES:-$PWD/../shared/fixtures}
pass=0
fail=0
ok() { echo "ok   $1"; pass=$((pass + 1)); }
bad() { echo "FAIL $1"; fail=$((fail + 1)); }
check() { name=$1; shift; if "$@"; then ok "$name"; else bad "$name"; fi; }
finish() { echo "$pass passed, $fail failed"; [ "$fail" = 0 ]; exit $?; }

for t in dpkg-buildpackage dh lintian pkg-config; do
    command -v $t >/dev/null || { bad "$t is missing (apt-get install dpkg-dev debhelper lintian pkg-config)"; finish; }
done
[ "$(id -u)" = 0 ] || { bad "dpkg -i needs root"; finish; }
if dpkg -s tinysam libtinysam0 libtinysam-dev >/dev/null 2>&1; then
    bad "tinysam packages already installed: not touching them"; finish
fi

tmp=$(mktemp -d)
pkgs="tinysam libtinysam-dev libtinysam0"
cleanup() { dpkg --purge $pkgs >/dev/null 2>&1; rm -rf "$tmp"; }
trap cleanup EXIT

ver=$(dpkg-parsechangelog -S Version)
src=$tmp/tinysam-$ver
mkdir -p "$src"
# The tree as committed plus files not ignored: what a fresh clone with local edits has.
git ls-files -co --exclude-standard -z | xargs -0 cp --parents -t "$src" 2>/dev/null ||
    tar --exclude=./build* --exclude=./.git -cf - . | tar -C "$src" -xf -

start=$(date +%s)
if (cd "$src" && dpkg-buildpackage -b -us -uc) >"$tmp/build.log" 2>&1; then
    ok "dpkg-buildpackage -b -us -uc ($(($(date +%s) - start)) s)"
else
    tail -n 30 "$tmp/build.log"; bad "dpkg-buildpackage -b -us -uc"; finish
fi
debs=""
for p in tinysam libtinysam0 libtinysam-dev; do
    f=$(ls "$tmp/${p}_${ver}_"*.deb 2>/dev/null | head -n 1)
    if [ -n "$f" ]; then debs="$debs $f"; else echo "  no package $p"; fi
done
check "three packages: tinysam, libtinysam0, libtinysam-dev" [ "$(echo $debs | wc -w)" = 3 ]

lintian --fail-on error --no-tag-display-limit "$tmp"/*.changes >"$tmp/lintian.log" 2>&1
rc=$?
grep -E '^[EW]:' "$tmp/lintian.log" | sed 's/^/  /' | head -n 20
check "lintian: no errors ($(grep -c '^W:' "$tmp/lintian.log") warnings)" [ $rc = 0 ]

# shellcheck disable=SC2086
if dpkg -i $debs >"$tmp/dpkg.log" 2>&1; then ok "dpkg -i"; else cat "$tmp/dpkg.log"; bad "dpkg -i"; finish; fi

out=$(/usr/bin/tinysam info "$FIX/models/tinysam_vit_t_random.pth" 2>&1)
echo "$out" | grep -q '"family": *"vit_t"'
check "/usr/bin/tinysam info on the fixture checkpoint" [ $? = 0 ]
check "man tinysam finds the installed page" sh -c 'man -w tinysam | grep -q /usr/share/man/man1/tinysam.1'

# A program built the way the README says, against the installed packages.
# shellcheck disable=SC2046
if cc -std=c11 -Wall -Werror examples/segment_point.c $(pkg-config --cflags --libs tinysam) \
        -o "$tmp/segment_point"; then
    ok "cc examples/segment_point.c \$(pkg-config --cflags --libs tinysam)"
    lib=$(ldd "$tmp/segment_point" | sed -n 's/.*libtinysam.so.0 => \([^ ]*\).*/\1/p')
    case $(readlink -f "$lib") in
    /usr/lib/*|/lib/*) ok "it runs on the packaged library ($lib)" ;;
    *) bad "it runs on the packaged library (ldd: '$lib')" ;;
    esac
    out=$("$tmp/segment_point" "$FIX/models/tinysam_vit_t_random.pth" "$FIX/images/picture1.jpg" 380 300)
    echo "  $out"
    check "and finds the official best mask (best 0, IoU 0.8987)" \
        sh -c "echo '$out' | grep -q 'best mask 0, predicted IoU 0.898'"
else
    bad "cc examples/segment_point.c \$(pkg-config --cflags --libs tinysam)"
fi

# The Python module, away from the source tree, finds the packaged library.
mkdir -p "$tmp/py" && cp -r python/tinysam_c "$tmp/py/"
found=$(cd "$tmp" && PYTHONPATH="$tmp/py" /usr/bin/python3 -c '
import tinysam_c._lib as l
l.lib.tinysam_get_num_threads()
maps = open("/proc/self/maps").read()
print([m.split()[-1] for m in maps.splitlines() if "libtinysam" in m][0])' 2>&1)
case $found in
/usr/lib/*/libtinysam.so.0*) ok "the Python module loads the packaged library ($found)" ;;
*) bad "the Python module loads the packaged library ($found)" ;;
esac

dpkg --purge $pkgs >/dev/null 2>&1
left=$(dpkg -l $pkgs 2>/dev/null | grep -c '^ii')
check "packages removed again" [ "$left" = 0 ] && [ ! -e /usr/bin/tinysam ]
finish
