/* test_kernels.c - every ISA path of the nn kernels (src/nn) against the plain-C references
 * (ts_gemm_ref, *_ref) and double-precision formulas. */
#include "core.h"
#include "nn/nn.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const ISAS[] = {"avx512", "avx2", "scalar"};
#define N_ISAS 3

static unsigned long long g_rng = 0x9E3779B97F4A7C15ull;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
}
static float *rand_buf(size_t n) {
    float *p = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = frand();
    return p;
}

/* |got - want| <= 1e-5 * sum|a b| + 1e-6, per element; the bound of float accumulation. */
static int gemm_case(int M, int N, int K, int b_trans, float beta, int pad, const float *bias,
                     int act) {
    int lda = K + pad, ldb = (b_trans ? K : N) + pad, ldc = N + pad;
    int brows = b_trans ? N : K;
    float *A = rand_buf((size_t)M * lda), *B = rand_buf((size_t)brows * ldb);
    float *C = rand_buf((size_t)M * ldc), *R = malloc(sizeof(float) * (size_t)M * ldc);
    float *absA = malloc(sizeof(float) * (size_t)M * lda), *absB = malloc(sizeof(float) * (size_t)brows * ldb);
    float *S = malloc(sizeof(float) * (size_t)M * ldc);
    for (size_t i = 0; i < (size_t)M * lda; i++) absA[i] = fabsf(A[i]);
    for (size_t i = 0; i < (size_t)brows * ldb; i++) absB[i] = fabsf(B[i]);
    memcpy(R, C, sizeof(float) * (size_t)M * ldc);
    if (beta == 0.0f) /* old content must be ignored, NaN included */
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) C[(size_t)m * ldc + n] = NAN;
    ts_gemm_ex(M, N, K, A, lda, B, ldb, b_trans, C, ldc, beta, bias, act);
    ts_gemm_ref(M, N, K, A, lda, B, ldb, b_trans, R, ldc, beta);
    ts_gemm_ref(M, N, K, absA, lda, absB, ldb, b_trans, S, ldc, 0.0f);
    int bad = 0;
    for (int m = 0; m < M && !bad; m++) {
        float *rr = R + (size_t)m * ldc;
        if (bias)
            for (int n = 0; n < N; n++) rr[n] += bias[n];
        if (act == TS_ACT_GELU) ts_gelu_ref(rr, (size_t)N);
        for (int n = 0; n < N; n++) {
            float g = C[(size_t)m * ldc + n], w = rr[n];
            float tol = 1e-5f * (S[(size_t)m * ldc + n] + 1.0f) + 1e-6f;
            if (!(fabsf(g - w) <= tol)) {
                t_fail(__FILE__, __LINE__, "%s M=%d N=%d K=%d bt=%d beta=%g pad=%d: C[%d][%d]=%g "
                       "want %g", ts_nn_isa_name(), M, N, K, b_trans, beta, pad, m, n, g, w);
                bad = 1;
                break;
            }
        }
        /* padding columns untouched */
        for (int n = N; n < ldc && !bad && m < M; n++)
            if (C[(size_t)m * ldc + n] != R[(size_t)m * ldc + n] && beta != 0.0f) bad = 1;
    }
    free(A); free(B); free(C); free(R); free(absA); free(absB); free(S);
    return !bad;
}

static void test_gemm_shapes(void) {
    static const int dims[] = {1, 2, 5, 7, 12, 13, 16, 31, 33, 47, 64, 100, 129, 257, 300};
    int nd = (int)(sizeof dims / sizeof dims[0]);
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        REQUIRE(ts_nn_set_isa(ISAS[i]) == 0, "set %s", ISAS[i]);
        int n_cases = 0, ok = 0;
        for (int a = 0; a < nd; a++)
            for (int b = 0; b < nd; b++) {
                /* a sparse but deterministic subset of (M, N, K) triples, all flags */
                int c = (a * 7 + b * 3) % nd;
                for (int f = 0; f < 8; f++) {
                    int bt = f & 1, pad = (f >> 2) & 1 ? 3 : 0;
                    float beta = (f >> 1) & 1 ? 1.0f : 0.0f;
                    n_cases++;
                    ok += gemm_case(dims[a], dims[b], dims[c], bt, beta, pad, NULL, 0);
                }
            }
        CHECK(ok == n_cases, "%s: %d of %d gemm cases wrong", ISAS[i], n_cases - ok, n_cases);
        /* big enough to be threaded and to need several K blocks */
        CHECK(gemm_case(300, 290, 700, 1, 0.0f, 1, NULL, 0), "%s threaded bt", ISAS[i]);
        CHECK(gemm_case(299, 301, 600, 0, 1.0f, 2, NULL, 0), "%s threaded", ISAS[i]);
        CHECK(gemm_case(1, 300, 300, 1, 0.0f, 0, NULL, 0), "%s M=1", ISAS[i]);
        /* few rows of A, whole slivers of a plain B: B read in place (strided, unaligned) */
        CHECK(gemm_case(56, 256, 4096, 0, 0.0f, 0, NULL, 0), "%s B in place", ISAS[i]);
        CHECK(gemm_case(49, 32, 49, 0, 1.0f, 3, NULL, 0), "%s B in place, acc", ISAS[i]);
        CHECK(gemm_case(7, 64, 16, 0, 0.0f, 5, NULL, 0), "%s B in place, 7 rows", ISAS[i]);
        CHECK(gemm_case(96, 128, 600, 0, 1.0f, 2, NULL, 0), "%s B in place, K blocks", ISAS[i]);
    }
    ts_nn_set_isa(ts_nn_isa_available("avx512") ? "avx512" : "avx2");
}

static void test_gemm_epilogue(void) {
    float *bias = rand_buf(300);
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        CHECK(gemm_case(97, 75, 130, 1, 0.0f, 0, bias, TS_ACT_GELU), "%s bias+gelu", ISAS[i]);
        CHECK(gemm_case(200, 160, 300, 1, 1.0f, 1, bias, TS_ACT_NONE), "%s bias acc", ISAS[i]);
        CHECK(gemm_case(5, 3, 0, 0, 1.0f, 0, bias, TS_ACT_GELU), "%s K=0", ISAS[i]);
        /* ts_linear = x W^T + b */
        int M = 37, K = 45, N = 29;
        float *x = rand_buf((size_t)M * K), *W = rand_buf((size_t)N * K);
        float *y = malloc(sizeof(float) * M * N);
        ts_linear(x, M, K, W, bias, N, y);
        double err = 0;
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                double s = bias[n];
                for (int k = 0; k < K; k++) s += (double)x[m * K + k] * W[n * K + k];
                err = fmax(err, fabs(s - y[m * N + n]));
            }
        CHECK(err < 1e-5, "%s linear err %g", ISAS[i], err);
        free(x); free(W); free(y);
    }
    free(bias);
}

static void test_conv3x3(void) {
    static const int cfg[][5] = {{1, 1, 3, 32, 1},  {17, 13, 3, 32, 2}, {16, 16, 32, 64, 2},
                                 {9, 11, 20, 24, 1}, {8, 8, 64, 40, 1}};
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
            int H = cfg[c][0], W = cfg[c][1], Ci = cfg[c][2], Co = cfg[c][3], s = cfg[c][4];
            int Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1;
            float *x = rand_buf((size_t)H * W * Ci), *w = rand_buf((size_t)Co * 9 * Ci);
            float *b = rand_buf(Co);
            float *y = malloc(sizeof(float) * Ho * Wo * Co), *r = malloc(sizeof(float) * Ho * Wo * Co);
            for (int act = 0; act < 2; act++) {
                ts_conv3x3_nhwc(x, H, W, Ci, s, w, b, Co, act, y);
                ts_conv3x3_nhwc_ref(x, H, W, Ci, s, w, b, Co, act, r);
                double err = 0;
                for (int k = 0; k < Ho * Wo * Co; k++) err = fmax(err, fabs(y[k] - r[k]));
                CHECK(err < 2e-5, "%s conv %dx%dx%d->%d s%d act%d err %g", ISAS[i], H, W, Ci, Co,
                      s, act, err);
            }
            free(x); free(w); free(b); free(y); free(r);
        }
    }
    ts_nn_set_isa(ts_nn_isa_available("avx512") ? "avx512" : "avx2");
}

static void test_dwconv(void) {
    static const int cfg[][4] = {{1, 1, 16, 1}, {7, 9, 48, 1}, {7, 9, 48, 2}, {16, 16, 20, 2},
                                 {13, 12, 37, 1}, {64, 64, 160, 1}};
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
            int H = cfg[c][0], W = cfg[c][1], C = cfg[c][2], s = cfg[c][3];
            int Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1;
            float *x = rand_buf((size_t)H * W * C), *w = rand_buf((size_t)9 * C);
            float *b = rand_buf(C);
            float *y = malloc(sizeof(float) * Ho * Wo * C), *r = malloc(sizeof(float) * Ho * Wo * C);
            for (int act = 0; act < 2; act++) {
                ts_dwconv3x3_nhwc(x, H, W, C, s, w, act ? b : NULL, act, y);
                ts_dwconv3x3_nhwc_ref(x, H, W, C, s, w, act ? b : NULL, act, r);
                double err = 0;
                for (int k = 0; k < Ho * Wo * C; k++) err = fmax(err, fabs(y[k] - r[k]));
                CHECK(err < 2e-6, "%s dwconv %dx%dx%d s%d act%d err %g", ISAS[i], H, W, C, s, act,
                      err);
            }
            free(x); free(w); free(b); free(y); free(r);
        }
    }
    ts_nn_set_isa(ts_nn_isa_available("avx512") ? "avx512" : "avx2");
}

/* every ISA's transpose against the definition, with edges on both sides and strides */
static void test_transpose(void) {
    static const int shapes[][2] = {{1, 1}, {8, 8}, {7, 9}, {33, 17}, {64, 56}, {4096, 56}};
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        int bad = 0;
        for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
            int R = shapes[k][0], C = shapes[k][1], lds = C + 3, ldd = R + 5;
            float *src = rand_buf((size_t)R * lds), *dst = malloc(sizeof(float) * C * ldd);
            for (size_t q = 0; q < (size_t)C * ldd; q++) dst[q] = -7.0f;
            ts_transpose_serial(src, lds, R, C, dst, ldd);
            for (int c = 0; c < C; c++)
                for (int r = 0; r < ldd; r++) {
                    float want = r < R ? src[(size_t)r * lds + c] : -7.0f; /* padding kept */
                    bad += dst[(size_t)c * ldd + r] != want;
                }
            free(src);
            free(dst);
        }
        CHECK(bad == 0, "%s transpose: %d values wrong", ISAS[i], bad);
    }
    ts_nn_set_isa(ts_nn_isa_available("avx512") ? "avx512" : "avx2");
}

static void test_gelu(void) {
    size_t n = 400037;
    float *x = malloc(sizeof(float) * n), *y = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) x[i] = -12.0f + 24.0f * (float)i / (float)n;
    x[0] = 0.0f; x[1] = -0.0f; x[2] = 100.0f; x[3] = -100.0f; x[4] = 1e-30f; x[5] = -3e4f;
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        memcpy(y, x, sizeof(float) * n);
        ts_gelu(y, n);
        double err = 0;
        for (size_t k = 0; k < n; k++) {
            float w = x[k] * 0.5f * (1.0f + erff(x[k] * 0.70710678118654752f));
            err = fmax(err, fabs((double)y[k] - w));
        }
        CHECK(err < 1e-6, "%s gelu max abs err %g", ISAS[i], err);
        printf("  %s gelu: max abs error %.3g against the erff formula\n", ISAS[i], err);
    }
    free(x); free(y);
    ts_nn_set_isa(ts_nn_isa_available("avx512") ? "avx512" : "avx2");
}

/* x*s + b must round as two float32 operations (PyTorch's attn * scale + bias). */
static void test_scale_add(void) {
    int n = 203;
    float x[203], b[203], y[203];
    for (int i = 0; i < n; i++) {
        x[i] = sinf(0.37f * i) * 3.1f;
        b[i] = cosf(0.11f * i) - 0.5f;
    }
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        memcpy(y, x, sizeof y);
        ts_scale_add(y, 0.17677669f, b, n);
        int bad = 0;
        for (int k = 0; k < n; k++) {
            volatile float p = x[k] * 0.17677669f; /* rounded product, then the add */
            float want = p + b[k];
            bad += y[k] != want;
        }
        CHECK(bad == 0, "%s scale_add: %d of %d values differ from mul-then-add", ISAS[i], bad, n);
    }
    ts_nn_set_isa(ts_nn_isa_available("avx512") ? "avx512" : "avx2");
}

static void test_layernorm_softmax(void) {
    static const int cfg[][2] = {{1, 1}, {3, 7}, {50, 49}, {300, 160}, {1000, 320}, {9, 196},
                                 {4096, 9}, {33, 15}};
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
            int M = cfg[c][0], C = cfg[c][1];
            float *x = rand_buf((size_t)M * C), *y = malloc(sizeof(float) * M * C);
            float *w = rand_buf(C), *b = rand_buf(C);
            for (int k = 0; k < M * C; k++) x[k] = x[k] * 3.0f + 0.5f;
            ts_layernorm_to(x, y, M, C, w, b, 1e-5f);
            double eln = 0, esm = 0;
            for (int m = 0; m < M; m++) {
                const float *xr = x + (size_t)m * C;
                double mu = 0, var = 0;
                for (int k = 0; k < C; k++) mu += xr[k];
                mu /= C;
                for (int k = 0; k < C; k++) var += (xr[k] - mu) * (xr[k] - mu);
                var /= C;
                for (int k = 0; k < C; k++) {
                    double want = (xr[k] - mu) / sqrt(var + 1e-5) * w[k] + b[k];
                    eln = fmax(eln, fabs(want - y[(size_t)m * C + k]));
                }
            }
            memcpy(y, x, sizeof(float) * M * C);
            ts_softmax_rows(y, M, C);
            for (int m = 0; m < M; m++) {
                const float *xr = x + (size_t)m * C;
                double mx = xr[0], s = 0;
                for (int k = 1; k < C; k++) mx = fmax(mx, xr[k]);
                for (int k = 0; k < C; k++) s += exp(xr[k] - mx);
                for (int k = 0; k < C; k++)
                    esm = fmax(esm, fabs(exp(xr[k] - mx) / s - y[(size_t)m * C + k]));
            }
            CHECK(eln < 5e-6, "%s layernorm %dx%d err %g", ISAS[i], M, C, eln);
            CHECK(esm < 1e-6, "%s softmax %dx%d err %g", ISAS[i], M, C, esm);
            free(x); free(y); free(w); free(b);
        }
    }
    ts_nn_set_isa(ts_nn_isa_available("avx512") ? "avx512" : "avx2");
}

/* Pre-packed weights (ts_wpack) and the single-thread entry points against ts_gemm_ref, under
 * every ISA, both with a pack made for that ISA and with one made for another (the fallback
 * that packs per call). Shapes cover row tails (M % 12 = 1, 4, 8) and column tails. */
static double wgemm_err(int M, int N, int K, int serial, float beta, const float *bias, int act,
                        const ts_wpack *pk, const float *W) {
    float *A = rand_buf((size_t)M * (K + 2)), *C = rand_buf((size_t)M * N);
    float *R = malloc(sizeof(float) * (size_t)M * N);
    memcpy(R, C, sizeof(float) * (size_t)M * N);
    if (beta == 0.0f)
        for (int i = 0; i < M * N; i++) C[i] = NAN;
    if (serial)
        ts_gemm_w_serial(M, A, K + 2, pk, C, N, beta, bias, act);
    else
        ts_gemm_w(M, A, K + 2, pk, C, N, beta, bias, act);
    ts_gemm_ref(M, N, K, A, K + 2, W, K, 1, R, N, beta);
    double err = 0;
    for (int m = 0; m < M; m++) {
        float *rr = R + (size_t)m * N;
        if (bias)
            for (int n = 0; n < N; n++) rr[n] += bias[n];
        if (act == TS_ACT_GELU) ts_gelu_ref(rr, (size_t)N);
        for (int n = 0; n < N; n++) {
            double d = fabs((double)C[(size_t)m * N + n] - rr[n]);
            if (!(d <= err)) err = d; /* NaN sticks */
        }
    }
    free(A); free(C); free(R);
    return err;
}

static void test_wpack(void) {
    static const int shapes[][3] = {{49, 384, 128}, {64, 1280, 320}, {64, 320, 1280},
                                    {13, 33, 7},    {100, 64, 300},  {1, 17, 5},
                                    {25, 96, 64},   {200, 50, 513}};
    float *bias = rand_buf(1280);
    for (int pi = 0; pi < N_ISAS; pi++) {
        if (!ts_nn_isa_available(ISAS[pi])) continue;
        for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
            int M = shapes[c][0], N = shapes[c][1], K = shapes[c][2];
            float *W = rand_buf((size_t)N * K);
            ts_nn_set_isa(ISAS[pi]);
            ts_wpack *pk = ts_wpack_new(W, N, K, K);
            REQUIRE(pk, "pack");
            for (int ri = 0; ri < N_ISAS; ri++) { /* run under every ISA */
                if (!ts_nn_isa_available(ISAS[ri])) continue;
                ts_nn_set_isa(ISAS[ri]);
                int f = (int)c + ri;
                double err = wgemm_err(M, N, K, f & 1, (f >> 1) & 1 ? 1.0f : 0.0f,
                                       f % 3 ? bias : NULL, f % 3 == 2 ? TS_ACT_GELU : 0, pk, W);
                double tol = 2e-5 * sqrt((double)K);
                CHECK(err <= tol, "packed %s run %s M=%d N=%d K=%d err %g", ISAS[pi], ISAS[ri],
                      M, N, K, err);
            }
            ts_wpack_free(pk);
            free(W);
        }
    }
    free(bias);
    ts_nn_set_isa(ts_nn_isa_available("avx512") ? "avx512" : "avx2");
    CHECK(ts_wpack_new(NULL, 3, 3, 3) == NULL, "NULL weight packed");
}

static void test_conv3x3_packed(void) {
    /* H, W, Ci, Co, stride: K blocks per kernel row (Ci 32, 64), per tap (Ci 256), neither */
    static const int cfg[][5] = {{17, 13, 3, 32, 2}, {16, 18, 32, 64, 2}, {9, 30, 64, 40, 1},
                                 {6, 7, 256, 48, 1}, {1, 1, 32, 16, 1},  {5, 40, 24, 33, 1}};
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        for (size_t c = 0; c < sizeof cfg / sizeof cfg[0]; c++) {
            int H = cfg[c][0], W = cfg[c][1], Ci = cfg[c][2], Co = cfg[c][3], s = cfg[c][4];
            int Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1;
            float *x = rand_buf((size_t)H * W * Ci), *w = rand_buf((size_t)Co * 9 * Ci);
            float *b = rand_buf(Co);
            float *y = malloc(sizeof(float) * Ho * Wo * Co), *r = malloc(sizeof(float) * Ho * Wo * Co);
            ts_wpack *pk = ts_wpack_new_conv3x3(w, Co, Ci), *pg = ts_wpack_new(w, Co, 9 * Ci, 9 * Ci);
            REQUIRE(pk && pg, "pack");
            for (int act = 0; act < 2; act++) {
                ts_conv3x3_nhwc_ref(x, H, W, Ci, s, w, b, Co, act, r);
                for (int which = 0; which < 2; which++) {
                    ts_conv3x3_nhwc_w(x, H, W, Ci, s, which ? pg : pk, b, act, y);
                    double err = 0;
                    for (int k = 0; k < Ho * Wo * Co; k++) err = fmax(err, fabs(y[k] - r[k]));
                    CHECK(err < 2e-5 * sqrt(Ci / 3.0 + 1), "%s packed%s conv %dx%dx%d->%d s%d "
                          "act%d err %g", ISAS[i], which ? " (generic)" : "", H, W, Ci, Co, s,
                          act, err);
                }
            }
            ts_wpack_free(pk); ts_wpack_free(pg);
            free(x); free(w); free(b); free(y); free(r);
        }
    }
    ts_nn_set_isa(ts_nn_isa_available("avx512") ? "avx512" : "avx2");
}

/* ts_gemm_serial and the row-wise depthwise entry point (ts_dwconv3x3_nhwc_rows3). */
static void test_serial_and_rows(void) {
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        int M = 49, N = 49, K = 32;
        float *A = rand_buf((size_t)M * 96), *B = rand_buf((size_t)N * 96);
        float *C = malloc(sizeof(float) * M * N), *R = malloc(sizeof(float) * M * N);
        ts_gemm_serial(M, N, K, A, 96, B, 96, 1, C, N, 0.0f, NULL, TS_ACT_NONE);
        ts_gemm_ref(M, N, K, A, 96, B, 96, 1, R, N, 0.0f);
        double err = 0;
        for (int k = 0; k < M * N; k++) err = fmax(err, fabs(C[k] - R[k]));
        CHECK(err < 1e-5, "%s gemm_serial err %g", ISAS[i], err);
        free(A); free(B); free(C); free(R);

        int H = 9, W = 11, Cc = 40;
        for (int s = 1; s <= 2; s++) {
            int Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1;
            float *x = rand_buf((size_t)H * W * Cc), *w = rand_buf(9 * Cc), *b = rand_buf(Cc);
            float *y = malloc(sizeof(float) * Wo * Cc), *r = malloc(sizeof(float) * Ho * Wo * Cc);
            ts_dwconv3x3_nhwc_ref(x, H, W, Cc, s, w, b, TS_ACT_GELU, r);
            double e = 0;
            for (int oy = 0; oy < Ho; oy++) {
                const float *rows[3];
                for (int ky = 0; ky < 3; ky++) {
                    int iy = oy * s - 1 + ky;
                    rows[ky] = iy >= 0 && iy < H ? x + (size_t)iy * W * Cc : NULL;
                }
                ts_dwconv3x3_nhwc_rows3(rows, W, Cc, s, w, b, TS_ACT_GELU, y);
                for (int k = 0; k < Wo * Cc; k++)
                    e = fmax(e, fabs(y[k] - r[(size_t)oy * Wo * Cc + k]));
            }
            CHECK(e < 2e-6, "%s dwconv rows3 s%d err %g", ISAS[i], s, e);
            free(x); free(w); free(b); free(y); free(r);
        }
    }
    ts_nn_set_isa(ts_nn_isa_available("avx512") ? "avx512" : "avx2");
}

static void test_isa_select(void) {
    CHECK(ts_nn_set_isa("bogus") == TINYSAM_E_ARG, "bogus ISA accepted");
    CHECK(ts_nn_set_isa("scalar") == 0 && !strcmp(ts_nn_isa_name(), "scalar"), "scalar");
    ts_nn_set_isa(ts_nn_isa_available("avx512") ? "avx512" : "avx2");
}

int main(void) {
    RUN(test_isa_select);
    RUN(test_gemm_shapes);
    RUN(test_gemm_epilogue);
    RUN(test_conv3x3);
    RUN(test_dwconv);
    RUN(test_gelu);
    RUN(test_transpose);
    RUN(test_scale_add);
    RUN(test_layernorm_softmax);
    RUN(test_wpack);
    RUN(test_conv3x3_packed);
    RUN(test_serial_and_rows);
    return test_summary();
}
