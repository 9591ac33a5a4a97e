/* test_gemm_i8.c - every int8 GEMM path available here (AVX-512 VNNI, AVX2, portable C, forced
 * in turn through TINYSAM_ISA's names) against an exact int64 reference computed here, and its
 * epilogues (scale + bias, GELU, u8 requantisation) against float formulas written here. */
#include "core.h"
#include "nn/gemm_i8.h"
#include "nn/nn.h"
#include "quant/quant.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const ISAS[] = {"avx512", "avx2", "scalar"};
#define N_ISAS 3

static unsigned long long g_rng = 0x243F6A8885A308D3ull;
static unsigned rnd(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)(g_rng >> 33);
}
static float frand(void) { return (float)(rnd() & 0xffffff) / (float)(1 << 24) * 2.0f - 1.0f; }

/* fill: 0 random, 1 extremes (A in {0, 255}, W in {-128, 127}), 2 all A = 255, W = -128 */
static void fill(uint8_t *A, size_t na, int8_t *W, size_t nw, int mode) {
    for (size_t i = 0; i < na; i++)
        A[i] = (uint8_t)(mode == 0 ? rnd() & 255 : mode == 1 ? (rnd() & 1) * 255 : 255);
    for (size_t i = 0; i < nw; i++)
        W[i] = (int8_t)(mode == 0   ? (int)(rnd() & 255) - 128
                        : mode == 1 ? ((rnd() & 1) ? 127 : -128)
                                    : -128);
}

static long long ref_acc(const uint8_t *A, int lda, const int8_t *W, int ldw, int K, int zp,
                         int m, int n) {
    long long s = 0;
    for (int k = 0; k < K; k++)
        s += (long long)((int)A[(size_t)m * lda + k] - zp) * W[(size_t)n * ldw + k];
    return s;
}

static int8_t *g_pre_w; /* weights of the pack given to gemm_case (test_cross_isa_pack) */

static float gelu_ref1(float x) { return x * 0.5f * (1.0f + erff(x * 0.70710678118654752f)); }

/* One shape on the current ISA: raw int32, float (+bias, +GELU), u8 outputs. pre: a pack made
 * beforehand (from g_pre_w, perhaps under another ISA), else one is made here. */
static int gemm_case(int M, int N, int K, int zp, int mode, const ts_i8pack *pre) {
    int lda = K + 3, ldw = K + 1, ldc = N + 2;
    uint8_t *A = malloc((size_t)M * lda);
    int8_t *W = malloc((size_t)N * ldw);
    float *scale = malloc(sizeof(float) * N), *bias = malloc(sizeof(float) * N);
    int32_t *C32 = malloc(sizeof(int32_t) * (size_t)M * ldc);
    float *C = malloc(sizeof(float) * (size_t)M * ldc),
          *G = malloc(sizeof(float) * (size_t)M * ldc);
    uint8_t *Q = malloc((size_t)M * ldc), *QG = malloc((size_t)M * ldc);
    long long *R = malloc(sizeof(long long) * (size_t)M * N);
    fill(A, (size_t)M * lda, W, (size_t)N * ldw, mode);
    for (int n = 0; n < N; n++) {
        scale[n] = 0.001f + 0.01f * fabsf(frand());
        bias[n] = frand();
    }
    ts_i8pack *P = pre ? NULL : ts_i8pack_new(W, N, K, ldw, scale);
    const ts_i8pack *pk = pre ? pre : P;
    if (pre) { /* the pre-made pack holds its own weights: use them for the reference */
        ldw = K;
        free(W);
        W = NULL;
    }
    int bad = 0;
    if (!pk) {
        t_fail(__FILE__, __LINE__, "pack failed");
        bad = 1;
        goto out;
    }
    const int8_t *Wr = W;
    if (pre) { /* the weights the pre-made pack was built from */
        Wr = g_pre_w;
        memcpy(scale, ts_i8pack_scale(pre), sizeof(float) * N);
    }
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) R[(size_t)m * N + n] = ref_acc(A, lda, Wr, ldw, K, zp, m, n);
    const float a_step = 0.0173f;
    for (size_t i = 0; i < (size_t)M * ldc; i++) {
        C32[i] = 0x5a5a5a5a;
        C[i] = G[i] = NAN;
        Q[i] = QG[i] = 0xa5;
    }
    ts_gemm_i8_s32(M, A, lda, zp, pk, C32, ldc);
    ts_i8_out of = {.bias = bias, .act = TS_ACT_NONE, .C = C, .ldc = ldc};
    ts_gemm_i8(M, A, lda, a_step, zp, pk, &of);
    ts_i8_out og = {.bias = (mode & 1) ? NULL : bias, .act = TS_ACT_GELU, .C = G, .ldc = ldc};
    ts_gemm_i8(M, A, lda, a_step, zp, pk, &og);
    const float out_step = 0.05f;
    const int out_zp = 100;
    ts_i8_out oq = {.bias = bias, .act = TS_ACT_NONE, .Cq = Q, .ldc = ldc, .out_step = out_step,
                    .out_zp = out_zp};
    ts_gemm_i8(M, A, lda, a_step, zp, pk, &oq);
    ts_i8_out oqg = {.bias = bias, .act = TS_ACT_GELU, .Cq = QG, .ldc = ldc, .out_step = out_step,
                     .out_zp = 128};
    ts_gemm_i8_serial(M, A, lda, a_step, zp, pk, &oqg);
    int n_off1 = 0;
    for (int m = 0; m < M && !bad; m++) {
        for (int n = 0; n < N && !bad; n++) {
            size_t o = (size_t)m * ldc + n;
            long long r = R[(size_t)m * N + n];
            if ((long long)C32[o] != r) {
                t_fail(__FILE__, __LINE__,
                       "%s M=%d N=%d K=%d zp=%d mode=%d: acc[%d][%d]=%d want %lld",
                       ts_gemm_i8_isa_name(), M, N, K, zp, mode, m, n, C32[o], r);
                bad = 1;
                break;
            }
            /* the documented formula: (float)acc * (a_step * w_scale[n]) then + bias[n] */
            float comb = a_step * scale[n];
            float y0 = (float)r * comb;
            float y = y0 + bias[n];
            if (C[o] != y) {
                t_fail(__FILE__, __LINE__, "%s M=%d N=%d K=%d: C[%d][%d]=%.9g want %.9g",
                       ts_gemm_i8_isa_name(), M, N, K, m, n, C[o], y);
                bad = 1;
                break;
            }
            float yg = gelu_ref1((mode & 1) ? y0 : y);
            if (!(fabsf(G[o] - yg) <= 2e-6f * fmaxf(1.0f, fabsf(yg)))) {
                t_fail(__FILE__, __LINE__, "%s M=%d N=%d K=%d: GELU C[%d][%d]=%.9g want %.9g",
                       ts_gemm_i8_isa_name(), M, N, K, m, n, G[o], yg);
                bad = 1;
                break;
            }
            uint8_t q = ts_quant_u8_zp(y, out_step, out_zp);
            if (Q[o] != q) {
                t_fail(__FILE__, __LINE__, "%s M=%d N=%d K=%d: u8 C[%d][%d]=%d want %d (y %.9g)",
                       ts_gemm_i8_isa_name(), M, N, K, m, n, Q[o], q, y);
                bad = 1;
                break;
            }
            /* GELU's approximation (1e-6) may move a value across a rounding boundary */
            int qg = ts_quant_u8_zp(gelu_ref1(y), out_step, 128);
            if (abs((int)QG[o] - qg) > 1) {
                t_fail(__FILE__, __LINE__, "%s: u8 GELU C[%d][%d]=%d want %d",
                       ts_gemm_i8_isa_name(), m, n, QG[o], qg);
                bad = 1;
                break;
            }
            n_off1 += QG[o] != qg;
        }
        /* padding columns untouched */
        for (int n = N; n < ldc && !bad; n++) {
            size_t o = (size_t)m * ldc + n;
            if (C32[o] != 0x5a5a5a5a || !isnan(C[o]) || Q[o] != 0xa5 || QG[o] != 0xa5) {
                t_fail(__FILE__, __LINE__, "%s: padding column %d of row %d written",
                       ts_gemm_i8_isa_name(), n, m);
                bad = 1;
            }
        }
    }
    CHECK(n_off1 <= 1 + M * N / 1000, "%s: %d u8 GELU codes off by one of %d",
          ts_gemm_i8_isa_name(), n_off1, M * N);
out:
    ts_i8pack_free(P);
    free(A);
    free(W);
    free(scale);
    free(bias);
    free(C32);
    free(C);
    free(G);
    free(Q);
    free(QG);
    free(R);
    return !bad;
}

static const int SHAPES[][3] = {
    {1, 1, 1},      {1, 16, 4},      {3, 5, 1},      {12, 32, 4},    {13, 33, 7},
    {25, 47, 9},    {7, 100, 130},   {97, 64, 64},   {40, 70, 1030}, {30, 600, 260},
    {129, 96, 2051}, {300, 256, 256}, {64, 1280, 320}, {5, 3, 3},
};
#define N_SHAPES (int)(sizeof(SHAPES) / sizeof(SHAPES[0]))

static void test_random_shapes(void) {
    int ran = 0;
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        REQUIRE(ts_nn_set_isa(ISAS[i]) == 0, "set %s", ISAS[i]);
        printf("  isa %s -> int8 path %s\n", ISAS[i], ts_gemm_i8_isa_name());
        for (int s = 0; s < N_SHAPES; s++) {
            int zp = s % 3 == 0 ? 128 : s % 3 == 1 ? 0 : 77;
            if (!gemm_case(SHAPES[s][0], SHAPES[s][1], SHAPES[s][2], zp, 0, NULL)) break;
        }
        ran++;
    }
    ts_nn_set_isa(ISAS[0]);
    CHECK(ran >= 1, "no ISA ran");
}

/* -128 / 127 / 255 everywhere: the case that saturates 16-bit pairwise multiply-adds */
static void test_extremes(void) {
    static const int shapes[][3] = {{12, 32, 1024}, {7, 19, 4093}, {33, 48, 16384}, {2, 2, 65536}};
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        for (int s = 0; s < 4; s++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
            if (!gemm_case(M, N, K, 0, 2, NULL)) break;   /* 255 * -128, all same sign */
            if (!gemm_case(M, N, K, 255, 2, NULL)) break; /* A - zp = 0 */
            if (!gemm_case(M, N, K, 128, 1, NULL)) break; /* +-127/128 mixes */
            if (!gemm_case(M, N, K, 0, 1, NULL)) break;
        }
    }
    ts_nn_set_isa(ISAS[0]);
}

/* A pack made under one ISA, run under the others (layout converted per call). */
static void test_cross_isa_pack(void) {
    const int N = 40, K = 75;
    g_pre_w = malloc((size_t)N * K);
    float *scale = malloc(sizeof(float) * N);
    uint8_t dummy;
    fill(&dummy, 0, g_pre_w, (size_t)N * K, 0);
    for (int n = 0; n < N; n++) scale[n] = 0.01f * (1 + n % 5);
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        ts_i8pack *P = ts_i8pack_new(g_pre_w, N, K, K, scale);
        REQUIRE(P, "pack");
        for (int j = 0; j < N_ISAS; j++) {
            if (!ts_nn_isa_available(ISAS[j])) continue;
            ts_nn_set_isa(ISAS[j]);
            gemm_case(29, N, K, 128, 0, P);
        }
        ts_i8pack_free(P);
    }
    ts_nn_set_isa(ISAS[0]);
    free(g_pre_w);
    free(scale);
}

static void test_bad_args(void) {
    int8_t w[4] = {0};
    float s[1] = {1};
    CHECK(ts_i8pack_new(w, 0, 4, 4, s) == NULL, "N = 0 accepted");
    CHECK(ts_i8pack_new(w, 1, 4, 3, s) == NULL, "ldw < K accepted");
    CHECK(ts_i8pack_new(w, 1, 70000, 70000, s) == NULL, "K beyond int32 exactness accepted");
}

/* Vectorised activation quantiser == quant.h's scalar formula, ties and specials included. */
static void test_quantize_u8(void) {
    const int M = 70, K = 1037, ldx = K + 5, ldq = K + 3;
    float *x = malloc(sizeof(float) * (size_t)M * ldx);
    uint8_t *q = malloc((size_t)M * ldq);
    /* 0.03125: k + 0.5 steps are exact ties; 0.0371: values a few ulps from ties, where
     * x / step and x * (1 / step) round differently */
    for (int i = 0; i < 2 * N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i / 2])) continue;
        ts_nn_set_isa(ISAS[i / 2]);
        const float step = i % 2 ? 0.0371f : 0.03125f;
        for (int zp = 0; zp <= 255; zp += 85) {
            for (size_t j = 0; j < (size_t)M * ldx; j++) {
                unsigned r = rnd() % 8;
                if (r == 0) {
                    x[j] = ((float)(int)(rnd() % 600) - 300.0f + 0.5f) * step;
                    for (unsigned u = rnd() % 3; u > 0; u--)
                        x[j] = nextafterf(x[j], rnd() & 1 ? 1e9f : -1e9f);
                } else {
                    x[j] = r == 1   ? 1e30f * (frand() < 0 ? -1 : 1)
                           : r == 2 ? (rnd() & 1 ? NAN : (rnd() & 1 ? INFINITY : -INFINITY))
                                    : 10.0f * frand();
                }
            }
            /* full range, then a narrower one (twin-uniform codes) */
            int lo = -zp / 2, hi = (255 - zp) / 3;
            for (int narrow = 0; narrow < 2; narrow++) {
                memset(q, 0xee, (size_t)M * ldq);
                if (narrow)
                    ts_quantize_u8_range(x, M, K, ldx, step, zp, lo, hi, q, ldq);
                else
                    ts_quantize_u8(x, M, K, ldx, step, zp, q, ldq);
                int bad = 0;
                for (int m = 0; m < M && !bad; m++)
                    for (int k = 0; k < ldq && !bad; k++) {
                        uint8_t g = q[(size_t)m * ldq + k];
                        float xv = x[(size_t)m * ldx + k];
                        uint8_t w = k >= K   ? 0xee
                                    : narrow ? ts_quant_u8_range(xv, step, zp, lo, hi)
                                             : ts_quant_u8_zp(xv, step, zp);
                        if (g != w) {
                            t_fail(__FILE__, __LINE__, "%s zp=%d: q[%d][%d]=%d want %d (x=%.9g)",
                                   ts_gemm_i8_isa_name(), zp, m, k, g, w, x[(size_t)m * ldx + k]);
                            bad = 1;
                        }
                    }
            }
        }
    }
    ts_nn_set_isa(ISAS[0]);
    /* the scalar formula itself on hand values */
    CHECK(ts_quant_u8_zp(2.5f, 1.0f, 128) == 130, "2.5 -> %d", ts_quant_u8_zp(2.5f, 1.0f, 128));
    CHECK(ts_quant_u8_zp(-2.5f, 1.0f, 128) == 126, "-2.5");
    CHECK(ts_quant_u8_zp(3.5f, 1.0f, 0) == 4, "3.5");
    CHECK(ts_quant_u8_zp(NAN, 1.0f, 128) == 128, "NaN");
    CHECK(ts_quant_u8_zp(-1000.0f, 1.0f, 128) == 0 && ts_quant_u8_zp(1000.0f, 1.0f, 128) == 255,
          "clamp");
    free(x);
    free(q);
}

/* Float input quantised on the fly == ts_quantize_u8 then ts_gemm_i8, bit for bit. */
static void test_f32_input(void) {
    static const int shapes[][3] = {{1, 1, 1}, {13, 33, 7}, {40, 70, 1030}, {300, 256, 256},
                                    {25, 600, 2051}, {12, 32, 64}};
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        for (int s = 0; s < 6; s++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], ldx = K + 1;
            float *X = malloc(sizeof(float) * (size_t)M * ldx),
                  *W = malloc(sizeof(float) * (size_t)N * K);
            float *C1 = malloc(sizeof(float) * (size_t)M * N),
                  *C2 = malloc(sizeof(float) * (size_t)M * N);
            uint8_t *A = malloc((size_t)M * K), *Q1 = malloc((size_t)M * N),
                    *Q2 = malloc((size_t)M * N);
            for (size_t j = 0; j < (size_t)M * ldx; j++) X[j] = 3.0f * frand();
            for (size_t j = 0; j < (size_t)N * K; j++) W[j] = frand();
            ts_i8pack *P = ts_i8pack_new_f32(W, N, K, K);
            REQUIRE(P, "pack");
            const float step = 0.0371f;
            const int zp = s % 2 ? 128 : 90;
            ts_quantize_u8(X, M, K, ldx, step, zp, A, K);
            ts_i8_out o1 = {.act = TS_ACT_GELU, .C = C1, .ldc = N};
            ts_i8_out o2 = {.act = TS_ACT_GELU, .C = C2, .ldc = N};
            ts_gemm_i8(M, A, K, step, zp, P, &o1);
            ts_gemm_i8_f32(M, X, ldx, step, zp, P, &o2);
            ts_i8_out q1 = {.Cq = Q1, .ldc = N, .out_step = 0.1f, .out_zp = 128};
            ts_i8_out q2 = {.Cq = Q2, .ldc = N, .out_step = 0.1f, .out_zp = 128};
            ts_gemm_i8(M, A, K, step, zp, P, &q1);
            ts_gemm_i8_f32_serial(M, X, ldx, step, zp, P, &q2);
            CHECK(!memcmp(C1, C2, sizeof(float) * (size_t)M * N), "%s %dx%dx%d: float out differs",
                  ts_gemm_i8_isa_name(), M, N, K);
            CHECK(!memcmp(Q1, Q2, (size_t)M * N), "%s %dx%dx%d: u8 out differs",
                  ts_gemm_i8_isa_name(), M, N, K);
            ts_i8pack_free(P);
            free(X);
            free(W);
            free(C1);
            free(C2);
            free(A);
            free(Q1);
            free(Q2);
        }
    }
    ts_nn_set_isa(ISAS[0]);
}

/* Twin-uniform post-GELU input as two passes (qp codes, then qn + 128 codes accumulated),
 * against the same float formula (bit for bit) and against the §7 dequantised values in double. */
static void test_twin_gelu_gemm(void) {
    const int M = 37, K = 200, N = 45;
    const float a = 0.02f, neg = TS_TWIN_GELU_NEG_STEP;
    float *X = malloc(sizeof(float) * M * K), *W = malloc(sizeof(float) * N * K);
    float *C = malloc(sizeof(float) * M * N), *bias = malloc(sizeof(float) * N);
    uint8_t *qp = malloc((size_t)M * K), *qn = malloc((size_t)M * K);
    for (int i = 0; i < M * K; i++) X[i] = gelu_ref1(3.0f * frand());
    for (int i = 0; i < N * K; i++) W[i] = frand();
    for (int n = 0; n < N; n++) bias[n] = frand();
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        ts_i8pack *P = ts_i8pack_new_f32(W, N, K, K);
        REQUIRE(P, "pack");
        const float *s = ts_i8pack_scale(P);
        int8_t *Wq = malloc((size_t)N * K);
        float *sc = malloc(sizeof(float) * N);
        ts_quant_weights(W, N, K, K, Wq, sc);
        ts_quantize_u8_range(X, M, K, K, a, 0, 0, 127, qp, K);
        ts_quantize_u8_range(X, M, K, K, neg, 128, -128, 0, qn, K);
        ts_i8_out o = {.bias = bias, .C = C, .ldc = N};
        ts_gemm_i8(M, qp, K, a, 0, P, &o);
        o.bias = NULL;
        o.accumulate = 1;
        ts_gemm_i8(M, qn, K, neg, 128, P, &o);
        int bad = 0;
        for (int m = 0; m < M && !bad; m++)
            for (int n = 0; n < N && !bad; n++) {
                long long ap = 0, an = 0;
                double d = 0;
                for (int k = 0; k < K; k++) {
                    int cp, cn;
                    float x = X[m * K + k];
                    ts_twin_gelu_quant(x, a, &cp, &cn);
                    if (qp[m * K + k] != cp || qn[m * K + k] != cn + 128) bad = 1;
                    ap += (long long)cp * Wq[n * K + k];
                    an += (long long)cn * Wq[n * K + k];
                    d += (double)ts_twin_gelu_fq(x, a) * Wq[n * K + k] * sc[n];
                }
                float want = ((float)ap * (a * s[n]) + bias[n]) + (float)an * (neg * s[n]);
                float got = C[m * N + n];
                if (bad || got != want || fabs(got - (d + bias[n])) > 1e-5 * (1 + fabs(d))) {
                    t_fail(__FILE__, __LINE__, "%s [%d][%d]: %.9g want %.9g (double %.9g)%s",
                           ts_gemm_i8_isa_name(), m, n, got, want, d + bias[n],
                           bad ? " codes differ" : "");
                    bad = 1;
                }
            }
        ts_i8pack_free(P);
        free(Wq);
        free(sc);
    }
    ts_nn_set_isa(ISAS[0]);
    free(X);
    free(W);
    free(C);
    free(bias);
    free(qp);
    free(qn);
}

/* row_done: each row handed once, finished (the callback scales it: C's final values). */
typedef struct {
    int *calls;
    float *copy;
    int N;
} row_cb;

static void row_cb_fn(void *ctx, int m, float *row) {
    row_cb *c = ctx;
    c->calls[m]++;
    for (int n = 0; n < c->N; n++) {
        c->copy[(size_t)m * c->N + n] = row[n];
        row[n] *= 2.0f;
    }
}

/* The residual output (C = res + y) and the accumulating one (C += y) against the exact
 * accumulator and the documented formula, bit for bit, with tails (N not a multiple of 16). */
static void test_residual_output(void) {
    static const int shapes[][3] = {{13, 37, 7}, {40, 70, 64}, {300, 256, 56}, {5, 3, 130}};
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        for (int s = 0; s < 4; s++) {
            int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2], zp = s % 2 ? 128 : 3;
            float *W = malloc(sizeof(float) * (size_t)N * K), *bias = malloc(sizeof(float) * N);
            float *res = malloc(sizeof(float) * (size_t)M * N), *C1 = malloc(sizeof(float) * (size_t)M * N),
                  *C2 = malloc(sizeof(float) * (size_t)M * N);
            int32_t *C32 = malloc(sizeof(int32_t) * (size_t)M * N);
            uint8_t *A = malloc((size_t)M * K);
            for (size_t j = 0; j < (size_t)N * K; j++) W[j] = frand();
            for (int n = 0; n < N; n++) bias[n] = frand();
            for (size_t j = 0; j < (size_t)M * N; j++) res[j] = C2[j] = 4.0f * frand();
            for (size_t j = 0; j < (size_t)M * K; j++) A[j] = (uint8_t)(rand() & 255);
            ts_i8pack *P = ts_i8pack_new_f32(W, N, K, K);
            REQUIRE(P, "pack");
            int8_t *Wq = malloc((size_t)N * K);
            float *sc = malloc(sizeof(float) * N);
            ts_quant_weights(W, N, K, K, Wq, sc);
            const float step = 0.013f;
            ts_i8_out o1 = {.bias = bias, .res = res, .C = C1, .ldc = N};
            ts_i8_out o2 = {.bias = bias, .accumulate = 1, .C = C2, .ldc = N};
            ts_gemm_i8(M, A, K, step, zp, P, &o1);
            ts_gemm_i8_serial(M, A, K, step, zp, P, &o2);
            ts_gemm_i8_s32(M, A, K, zp, P, C32, N);
            /* the same with row_done (threaded): rows handed once, as written */
            float *C3 = malloc(sizeof(float) * (size_t)M * N), *cp = malloc(sizeof(float) * (size_t)M * N);
            int *calls = calloc((size_t)M, sizeof(int));
            row_cb cb = {calls, cp, N};
            ts_i8_out o3 = {.bias = bias, .res = res, .C = C3, .ldc = N, .row_done = row_cb_fn,
                            .row_ctx = &cb};
            ts_gemm_i8(M, A, K, step, zp, P, &o3);
            for (int m = 0; m < M; m++) {
                CHECK(calls[m] == 1, "%s: row %d handed %d times", ts_gemm_i8_isa_name(), m, calls[m]);
                for (int n = 0; n < N; n++)
                    if (cp[(size_t)m * N + n] != C1[(size_t)m * N + n] ||
                        C3[(size_t)m * N + n] != 2.0f * C1[(size_t)m * N + n]) {
                        t_fail(__FILE__, __LINE__, "%s: row_done row %d differs", ts_gemm_i8_isa_name(), m);
                        break;
                    }
            }
            free(C3);
            free(cp);
            free(calls);
            int bad = 0;
            for (int m = 0; m < M && !bad; m++)
                for (int n = 0; n < N && !bad; n++) {
                    size_t o = (size_t)m * N + n;
                    long long r = 0;
                    for (int k = 0; k < K; k++)
                        r += ((long long)A[(size_t)m * K + k] - zp) * Wq[(size_t)n * K + k];
                    float want = res[o] + ((float)r * (step * sc[n]) + bias[n]);
                    if (C32[o] != r || C1[o] != want || C2[o] != want) {
                        t_fail(__FILE__, __LINE__, "%s %dx%dx%d [%d][%d]: %.9g / %.9g want %.9g",
                               ts_gemm_i8_isa_name(), M, N, K, m, n, C1[o], C2[o], want);
                        bad = 1;
                    }
                }
            ts_i8pack_free(P);
            free(Wq);
            free(sc);
            free(W);
            free(bias);
            free(res);
            free(C1);
            free(C2);
            free(C32);
            free(A);
        }
    }
    ts_nn_set_isa(ISAS[0]);
}

/* ts_i8pack_new_f32's codes and scales == ts_quant_weights' (the ISA's quantiser on every
 * path): random rows, a zero row, NaN, infinities, ties at half a step. The codes are read
 * back as the exact products with unit rows (A = identity, zero point 0). */
static void test_pack_f32_codes(void) {
    const int N = 7, K = 37;
    float W[7 * 37];
    for (int i = 0; i < N * K; i++) W[i] = 3.0f * frand();
    for (int k = 0; k < K; k++) W[1 * K + k] = 0.0f;
    W[2 * K + 5] = NAN;
    W[3 * K + 1] = INFINITY;
    W[3 * K + 2] = -INFINITY;
    for (int k = 0; k < K; k++) W[4 * K + k] = ((float)k - 18.0f + 0.5f); /* max 18.5: ties */
    W[5 * K + 0] = -127.0f;
    uint8_t *A = calloc((size_t)K * K, 1);
    for (int k = 0; k < K; k++) A[(size_t)k * K + k] = 1;
    int8_t Wq[7 * 37];
    float sc[7];
    ts_quant_weights(W, N, K, K, Wq, sc);
    int32_t C[37 * 7];
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        ts_i8pack *P = ts_i8pack_new_f32(W, N, K, K);
        REQUIRE(P, "pack");
        ts_gemm_i8_s32(K, A, K, 0, P, C, N);
        for (int n = 0; n < N; n++) {
            CHECK(ts_i8pack_scale(P)[n] == sc[n], "%s: scale %d %g want %g", ts_gemm_i8_isa_name(),
                  n, ts_i8pack_scale(P)[n], sc[n]);
            for (int k = 0; k < K; k++)
                if (C[k * N + n] != Wq[n * K + k]) {
                    t_fail(__FILE__, __LINE__, "%s: code [%d][%d] %d want %d",
                           ts_gemm_i8_isa_name(), n, k, C[k * N + n], Wq[n * K + k]);
                    break;
                }
        }
        ts_i8pack_free(P);
    }
    ts_nn_set_isa(ISAS[0]);
    free(A);
}

/* Byte transpose against the naive loop: whole blocks, edges, leading dimensions. */
static void test_transpose_u8(void) {
    static const int shapes[][2] = {{4096, 256}, {16, 16}, {8, 8}, {37, 21}, {5, 3}, {24, 40}, {1, 1},
                                     {150, 101}};  /* last: bands of 64 rows, tails */
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        for (int s = 0; s < 8; s++) {
            int R = shapes[s][0], C = shapes[s][1];
            size_t lds = (size_t)C + 3, ldd = (size_t)R + 5;
            uint8_t *src = malloc(lds * R), *dst = malloc(ldd * C);
            for (size_t k = 0; k < lds * R; k++) src[k] = (uint8_t)(rand() & 255);
            memset(dst, 0xa5, ldd * C);
            ts_transpose_u8(src, lds, R, C, dst, ldd);
            int bad = 0;
            for (int c = 0; c < C && !bad; c++)
                for (size_t r = 0; r < ldd && !bad; r++) {
                    int want = r < (size_t)R ? src[r * lds + c] : 0xa5; /* padding untouched */
                    if (dst[(size_t)c * ldd + r] != want) {
                        t_fail(__FILE__, __LINE__, "%s %dx%d: [%d][%zu] = %d want %d",
                               ts_gemm_i8_isa_name(), R, C, c, r, dst[(size_t)c * ldd + r], want);
                        bad = 1;
                    }
                }
            free(src);
            free(dst);
        }
    }
    ts_nn_set_isa(ISAS[0]);
}

/* End to end on float data: quantised linear vs the float one, and the asymmetric fold. */
static void test_float_end_to_end(void) {
    const int M = 50, K = 96, N = 40;
    float *X = malloc(sizeof(float) * M * K), *W = malloc(sizeof(float) * N * K);
    float *Y = malloc(sizeof(float) * M * N), *Yq = malloc(sizeof(float) * M * N);
    float *bias = malloc(sizeof(float) * N), *fb = malloc(sizeof(float) * N);
    uint8_t *A = malloc((size_t)M * K);
    for (int i = 0; i < M * K; i++) X[i] = 0.5f + frand(); /* skewed: asymmetric helps */
    for (int i = 0; i < N * K; i++) W[i] = frand() * 0.2f;
    for (int n = 0; n < N; n++) bias[n] = frand();
    ts_linear(X, M, K, W, bias, N, Y);
    ts_i8pack *P = ts_i8pack_new_f32(W, N, K, K);
    REQUIRE(P, "pack");
    /* asymmetric §7 Conv2d style: x^ = q*step + a_bias with q signed, u8 = q + 128 */
    const float a_bias = 0.5f, step = 1.0f / 127.0f;
    for (int i = 0; i < M * K; i++) A[i] = ts_quant_u8_zp(X[i] - a_bias, step, 128);
    ts_i8pack_fold_abias(P, a_bias, bias, fb);
    ts_i8_out o = {.bias = fb, .C = Yq, .ldc = N};
    ts_gemm_i8(M, A, K, step, 128, P, &o);
    double e = 0, s = 0;
    for (int i = 0; i < M * N; i++) {
        e += (double)(Yq[i] - Y[i]) * (Yq[i] - Y[i]);
        s += (double)Y[i] * Y[i];
    }
    double rel = sqrt(e / s);
    printf("  W8A8 linear vs float: relative RMS error %.2e\n", rel);
    CHECK(rel < 0.01, "relative error %g", rel);
    ts_i8pack_free(P);
    free(X);
    free(W);
    free(Y);
    free(Yq);
    free(bias);
    free(fb);
    free(A);
}

int main(void) {
    RUN(test_random_shapes);
    RUN(test_extremes);
    RUN(test_cross_isa_pack);
    RUN(test_bad_args);
    RUN(test_quantize_u8);
    RUN(test_f32_input);
    RUN(test_twin_gelu_gemm);
    RUN(test_residual_output);
    RUN(test_transpose_u8);
    RUN(test_pack_f32_codes);
    RUN(test_float_end_to_end);
    return test_summary();
}
