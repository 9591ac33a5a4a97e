#!/usr/bin/python3
"""Prints the coefficient tables of the piecewise-polynomial GELU in src/nn/x86/kernels_impl.h.

GELU(x) = relu(x) - f(|x|), f(a) = a * 0.5 * erfc(a / sqrt 2). On [0, 16/3] cut into n equal
intervals, f is fitted per interval by a polynomial in t in [0, 1) (least squares on Chebyshev
nodes, in double), rounded to float. Rows: highest degree first; columns: intervals.
Needs numpy (Debian: python3-numpy). Usage: /usr/bin/python3 tools/fit_gelu.py
"""
from math import erfc, sqrt

import numpy as np


def f(a):
    return a * 0.5 * erfc(a / sqrt(2))


def fit(nint, deg):
    width = 16 / 3 / nint
    rows = [[] for _ in range(deg + 1)]
    worst = 0.0
    for i in range(nint):
        k = np.arange(400)
        t = 0.5 - 0.5 * np.cos((2 * k + 1) * np.pi / 800)
        y = np.array([f((i + v) * width) for v in t])
        c = np.polyfit(t, y, deg).astype(np.float32)
        for d in range(deg + 1):
            rows[d].append(c[d])
        tt = np.linspace(0, 1, 2001, dtype=np.float32)
        p = np.full_like(tt, c[0])
        for cc in c[1:]:  # float Horner, as the kernel does it (modulo FMA rounding)
            p = (p * tt + cc).astype(np.float32)
        ref = np.array([f((i + float(v)) * width) for v in tt])
        worst = max(worst, float(np.max(np.abs(p - ref))))
    return rows, worst


for name, nint, deg in [("32", 32, 4), ("8", 8, 6)]:
    rows, worst = fit(nint, deg)
    print("/* %d intervals, degree %d: max |error| %.2g */" % (nint, deg, worst))
    print("static const float TS_GELU_TAB%s[%d][%d] = {" % (name, deg + 1, nint))
    for r in rows:
        vals = ["%.9gf" % v for v in r]
        print("    {")
        for j in range(0, len(vals), 4):
            print("        " + ", ".join(vals[j:j + 4]) + ",")
        print("    },")
    print("};")
