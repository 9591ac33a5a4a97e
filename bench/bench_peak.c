/* bench_peak.c - the machine's measured FP32 peak, the yardstick for the encoder's share of it
 * in `make bench`: independent FMA chains on every vector register, on 1 and on 2 cores at
 * once, and the clock from a chain of dependent integer adds (1 cycle each). In a VM
 * /proc/cpuinfo shows the base clock only, and the FMA width per cycle differs between cores
 * that support the same instructions (Zen 4 runs 512-bit FMAs on 256-bit pipes), so the peak
 * is measured rather than computed from flags.
 *   build/bench/bench_peak [--json] */
#include "bench_util.h"
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define ITERS 40000000L /* x 12 FMAs: about 0.15 s at AVX-512 speed */

/* returns FLOPs done; 12 accumulators hide the 4-cycle FMA latency on 2 pipes */
/* 12 FMAs per step on 12 separate registers, as named variables: an array would live on
 * the stack at -O2 and chain through store forwarding */
#define STEP12(F)                                                                      \
    a0 = F(a0, b, c), a1 = F(a1, b, c), a2 = F(a2, b, c), a3 = F(a3, b, c);           \
    a4 = F(a4, b, c), a5 = F(a5, b, c), a6 = F(a6, b, c), a7 = F(a7, b, c);           \
    a8 = F(a8, b, c), a9 = F(a9, b, c), a10 = F(a10, b, c), a11 = F(a11, b, c)
#define SUM12(ADD)                                                                     \
    ADD(ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7))),             \
        ADD(ADD(a8, a9), ADD(a10, a11)))

/* returns FLOPs done; 12 chains hide the 4-cycle FMA latency on 2 pipes */
__attribute__((target("avx512f,fma"))) static double fma_avx512(void) {
    __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
    /* distinct starting values, or the compiler merges the identical chains */
#define I(k) _mm512_set1_ps(1.0f + 1e-3f * (k))
    __m512 a0 = I(0), a1 = I(1), a2 = I(2), a3 = I(3), a4 = I(4), a5 = I(5), a6 = I(6),
           a7 = I(7), a8 = I(8), a9 = I(9), a10 = I(10), a11 = I(11);
#undef I
    for (long i = 0; i < ITERS; i++) {
        STEP12(_mm512_fmadd_ps);
    }
    volatile float sink = _mm512_reduce_add_ps(SUM12(_mm512_add_ps)); /* keeps them alive */
    (void)sink;
    return (double)ITERS * 12 * 16 * 2;
}

__attribute__((target("avx2,fma"))) static double fma_avx2(void) {
    __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    /* distinct starting values, or the compiler merges the identical chains */
#define I(k) _mm256_set1_ps(1.0f + 1e-3f * (k))
    __m256 a0 = I(0), a1 = I(1), a2 = I(2), a3 = I(3), a4 = I(4), a5 = I(5), a6 = I(6),
           a7 = I(7), a8 = I(8), a9 = I(9), a10 = I(10), a11 = I(11);
#undef I
    for (long i = 0; i < ITERS; i++) {
        STEP12(_mm256_fmadd_ps);
    }
    float v[8];
    _mm256_storeu_ps(v, SUM12(_mm256_add_ps));
    volatile float sink = v[0];
    (void)sink;
    return (double)ITERS * 12 * 8 * 2;
}

static int use512;

typedef struct {
    double gflops;
} job;

static void *run_fma(void *arg) {
    job *j = arg;
    double t0 = bench_now_s();
    double flop = use512 ? fma_avx512() : fma_avx2();
    j->gflops = flop / (bench_now_s() - t0) / 1e9;
    return NULL;
}

/* best of 3: other work on the machine only ever lowers the figure */
static double peak_threads(int n) {
    double best = 0;
    for (int r = 0; r < 3; r++) {
        job j[2] = {{0}, {0}};
        pthread_t th[2];
        for (int i = 1; i < n; i++) pthread_create(&th[i], NULL, run_fma, &j[i]);
        run_fma(&j[0]);
        double sum = j[0].gflops;
        for (int i = 1; i < n; i++) {
            pthread_join(th[i], NULL);
            sum += j[i].gflops;
        }
        if (sum > best) best = sum;
    }
    return best;
}

static double clock_ghz(void) {
    double best = 0;
    for (int r = 0; r < 3; r++) {
        long n = 50000000L, x = 0;
        double t0 = bench_now_s();
        for (long i = 0; i < n; i++)
            __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\t"
                             "add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0"
                             : "+r"(x));
        double g = 8.0 * (double)n / (bench_now_s() - t0) / 1e9;
        if (g > best) best = g;
    }
    return best;
}

int main(int argc, char **argv) {
    int json = argc > 1 && !strcmp(argv[1], "--json");
    __builtin_cpu_init();
    use512 = __builtin_cpu_supports("avx512f");
    if (!use512 && !(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) {
        if (json)
            printf("{\"peak_isa\": \"none\"}\n");
        else
            printf("peak: no AVX2/FMA, not measured\n");
        return 0;
    }
    double ghz = clock_ghz(), p1 = peak_threads(1), p2 = peak_threads(2);
    const char *isa = use512 ? "avx512" : "avx2";
    if (json)
        printf("{\"peak_isa\": \"%s\", \"clock_ghz\": %.2f, \"flop_per_cycle\": %.1f, "
               "\"peak_gflops_1t\": %.1f, \"peak_gflops_2t\": %.1f}\n",
               isa, ghz, p1 / ghz, p1, p2);
    else
        printf("peak: %s FMA %.1f GFLOP/s on 1 core, %.1f on 2; clock %.2f GHz, %.1f FLOP/cycle\n",
               isa, p1, p2, ghz, p1 / ghz);
    return 0;
}
