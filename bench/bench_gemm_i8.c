/* bench_gemm_i8.c - the int8 GEMM (with its activation quantisation) against the float GEMM the
 * engine uses now (ts_gemm_w, weights packed at load), on the TinyViT encoder's GEMM shapes,
 * at 1 and 2 threads: median ms, GOP/s (2*M*N*K per product) and the float/int8 time ratio.
 *   build/bench/bench_gemm_i8 [--threads T] [--reps N]
 *   TINYSAM_ISA=avx512|avx2|scalar forces a path (int8 path: avx512 -> AVX-512 VNNI). */
#include "nn/gemm_i8.h"
#include "nn/nn.h"
#include "tinysam.h"

#include "bench_util.h"
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long g_rng = 12345;
static float frand(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
}

typedef struct {
    int M, K, N;
    const float *X, *bias;
    const ts_wpack *wf;
    const ts_i8pack *wq;
    float *Y;
    uint8_t *A, *Q;
    int mode; /* 0 float, 1 int8 (quantise + GEMM, float out), 2 int8 GEMM only, 3 u8 out,
               * 4 int8 with the quantisation fused (ts_gemm_i8_f32) */
} bench_case;

static void run_once(const bench_case *c) {
    ts_i8_out o = {.bias = c->bias, .C = c->Y, .ldc = c->N};
    switch (c->mode) {
    case 0: ts_gemm_w(c->M, c->X, c->K, c->wf, c->Y, c->N, 0.0f, c->bias, TS_ACT_NONE); break;
    case 1:
        ts_quantize_u8(c->X, c->M, c->K, c->K, 0.01f, 128, c->A, c->K);
        ts_gemm_i8(c->M, c->A, c->K, 0.01f, 128, c->wq, &o);
        break;
    case 4: ts_gemm_i8_f32(c->M, c->X, c->K, 0.01f, 128, c->wq, &o); break;
    case 2: ts_gemm_i8(c->M, c->A, c->K, 0.01f, 128, c->wq, &o); break;
    default:
        o.C = NULL;
        o.Cq = c->Q;
        o.out_step = 0.02f;
        o.out_zp = 128;
        ts_gemm_i8(c->M, c->A, c->K, 0.01f, 128, c->wq, &o);
        break;
    }
}

/* median ms over reps runs (after one warm-up) */
static double time_ms(const bench_case *c, int reps) {
    double t[64];
    if (reps > 64) reps = 64;
    run_once(c);
    for (int r = 0; r < reps; r++) {
        double t0 = bench_now_s();
        run_once(c);
        t[r] = (bench_now_s() - t0) * 1e3;
    }
    qsort(t, (size_t)reps, sizeof(double), bench_cmp_double);
    return t[reps / 2];
}

int main(int argc, char **argv) {
    int only_t = 0, reps = 21;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) only_t = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    }
    static const int shapes[][3] = {{4096, 128, 512}, {1024, 160, 640}, {256, 320, 1280},
                                    {4096, 512, 128}, {4096, 64, 256},  {1024, 640, 160},
                                    {256, 1280, 320}};
    const int n_shapes = (int)(sizeof(shapes) / sizeof(shapes[0]));
    printf("float path %s, int8 path %s\n", ts_nn_isa_name(), ts_gemm_i8_isa_name());
    printf("%-18s %2s %8s %8s %8s %8s %8s %8s %8s %8s %7s %7s\n", "M x K x N", "T", "f32 ms",
           "i8 ms", "fused", "i8gemm", "i8->u8", "f32 GOP", "i8 GOP", "fus GOP", "ratio",
           "fused");
    double geo[3] = {1, 1, 1}, geo_f[3] = {1, 1, 1};
    int cnt[3] = {0};
    for (int s = 0; s < n_shapes; s++) {
        int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
        float *X = malloc(sizeof(float) * M * K), *W = malloc(sizeof(float) * N * K);
        float *Y = malloc(sizeof(float) * M * N), *bias = malloc(sizeof(float) * N);
        uint8_t *A = malloc((size_t)M * K), *Q = malloc((size_t)M * N);
        for (int i = 0; i < M * K; i++) X[i] = frand();
        for (int i = 0; i < N * K; i++) W[i] = frand() * 0.1f;
        for (int i = 0; i < N; i++) bias[i] = frand();
        ts_wpack *wf = ts_wpack_new(W, N, K, K);
        ts_i8pack *wq = ts_i8pack_new_f32(W, N, K, K);
        if (!wf || !wq) return 1;
        ts_quantize_u8(X, M, K, K, 0.01f, 128, A, K);
        bench_case c = {.M = M, .K = K, .N = N, .X = X, .bias = bias, .wf = wf, .wq = wq,
                        .Y = Y, .A = A, .Q = Q};
        double gop = 2.0 * M * N * K * 1e-9;
        for (int t = 1; t <= 2; t++) {
            if (only_t && t != only_t) continue;
            tinysam_set_num_threads(t);
            double ms[5];
            for (int m = 0; m < 5; m++) {
                c.mode = m;
                ms[m] = time_ms(&c, reps);
            }
            char name[32];
            snprintf(name, sizeof(name), "%d x %d x %d", M, K, N);
            printf("%-18s %2d %8.3f %8.3f %8.3f %8.3f %8.3f %8.1f %8.1f %8.1f %6.2fx %6.2fx\n",
                   name, t, ms[0], ms[1], ms[4], ms[2], ms[3], gop / ms[0] * 1e3,
                   gop / ms[1] * 1e3, gop / ms[4] * 1e3, ms[0] / ms[1], ms[0] / ms[4]);
            geo[t] *= ms[0] / ms[1];
            geo_f[t] *= ms[0] / ms[4];
            cnt[t]++;
        }
        ts_wpack_free(wf);
        ts_i8pack_free(wq);
        free(X);
        free(W);
        free(Y);
        free(bias);
        free(A);
        free(Q);
    }
    for (int t = 1; t <= 2; t++)
        if (cnt[t]) /* geometric mean of the float/int8 ratios */
            printf("geomean ratio f32/i8 at %d thread%s: %.2fx (quantise + GEMM), %.2fx (fused)\n",
                   t, t > 1 ? "s" : "", pow(geo[t], 1.0 / cnt[t]), pow(geo_f[t], 1.0 / cnt[t]));
    printf(
        "i8 = ts_quantize_u8 + ts_gemm_i8 (float out); fused = ts_gemm_i8_f32 (quantised per "
        "panel); i8gemm = GEMM only (u8 input); i8->u8 = GEMM with u8 output; ratio = f32 / i8\n");
    return 0;
}
