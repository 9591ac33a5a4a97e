#!/bin/sh
# Runs every test binary given, prints each one's output, and ends with the totals line
# "N passed, N failed" (plus skipped). Exit status is non-zero if anything failed.
pass=0; fail=0; skip=0
for t in "$@"; do
    echo "== $t"
    out=$("$t" 2>&1); rc=$?
    printf '%s\n' "$out" | grep -v '^# '
    line=$(printf '%s\n' "$out" | grep '^# ' | tail -n 1)
    if [ -z "$line" ]; then
        echo "FAIL $t: crashed or exited without a summary (exit $rc)"
        fail=$((fail + 1)); continue
    fi
    p=$(echo "$line" | cut -d' ' -f2); f=$(echo "$line" | cut -d' ' -f3); s=$(echo "$line" | cut -d' ' -f4)
    pass=$((pass + p)); fail=$((fail + f)); skip=$((skip + s))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        echo "FAIL $t: exit status $rc"; fail=$((fail + 1))
    fi
done
# The Python module's tests (pytest), in the same totals; not under the sanitizers (an
# instrumented shared library cannot load into an uninstrumented interpreter).
if [ -n "${PYTHON_TESTS:-}" ]; then
    py=/usr/bin/python3; [ -x "$py" ] || py=python3
    if "$py" -c "import numpy, pytest, PIL" 2>/dev/null; then
        echo "== pytest tests/python"
        out=$(TINYSAM_LIBRARY="$PWD/$BUILD/libtinysam.so" "$py" -m pytest -q -p no:cacheprovider tests/python 2>&1)
        printf '%s\n' "$out" | tail -n 25
        last=$(printf '%s\n' "$out" | grep -E '(passed|failed|error)' | tail -n 1)
        p=$(echo "$last" | grep -oE '[0-9]+ passed' | cut -d' ' -f1)
        f1=$(echo "$last" | grep -oE '[0-9]+ failed' | cut -d' ' -f1)
        e1=$(echo "$last" | grep -oE '[0-9]+ errors?' | cut -d' ' -f1)
        f=$(( ${f1:-0} + ${e1:-0} ))
        s=$(echo "$last" | grep -oE '[0-9]+ skipped' | cut -d' ' -f1)
        pass=$((pass + ${p:-0})); fail=$((fail + f)); skip=$((skip + ${s:-0}))
        [ -z "$p" ] && [ "$f" -eq 0 ] && { echo "FAIL pytest: no result"; fail=$((fail + 1)); }
    else
        echo "SKIP python tests: numpy, pytest or PIL missing for $py"; skip=$((skip + 1))
    fi
fi
if [ "$skip" -gt 0 ]; then echo "$pass passed, $fail failed, $skip skipped"; else echo "$pass passed, $fail failed"; fi
[ "$fail" -eq 0 ]
