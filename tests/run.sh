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
if [ "$skip" -gt 0 ]; then echo "$pass passed, $fail failed, $skip skipped"; else echo "$pass passed, $fail failed"; fi
[ "$fail" -eq 0 ]
