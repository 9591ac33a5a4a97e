/* bench_util.h - what every benchmark measures with: the monotonic clock (the library's
 * ts_now_ms), sorting timings for medians, and the process's peak RSS. Header-only, so that
 * the Makefile's one-source-per-benchmark rule stays as it is. */
#ifndef TS_BENCH_UTIL_H
#define TS_BENCH_UTIL_H

#include "core.h"

#include <stdlib.h>
#include <sys/resource.h>

static inline double bench_now_s(void) { return ts_now_ms() / 1e3; }

static inline int bench_cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Sorts v[0..n) and returns its median (the upper one for even n). */
static inline double bench_median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, bench_cmp_double);
    return v[n / 2];
}

/* Peak resident set of this process in MB (-1 when unknown). */
static inline double bench_peak_rss_mb(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru)) return -1;
    return (double)ru.ru_maxrss / 1024.0; /* KiB on Linux */
}

#endif
