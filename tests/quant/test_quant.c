/* test_quant.c - the quantisers of src/quant/quant.h on hand-computed values (round half to
 * even, clamps, the §7 twin-uniform formulas taken literally) and the scale searches on
 * constructed cases whose optimum is known. */
#include "quant/quant.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>

static unsigned long long g_rng = 0x13198A2E03707344ull;
static float frand(void) { /* [-1, 1) */
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((g_rng >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
}

static int close_to(float a, float b, float tol) { return fabsf(a - b) <= tol; }

static void test_round_half_even(void) {
    static const float x[] = {0.5f, 1.5f, 2.5f, 3.5f, -0.5f, -1.5f, -2.5f, 126.5f, -127.5f};
    static const int want[] = {0, 2, 2, 4, 0, -2, -2, 126, -128};
    for (int i = 0; i < 9; i++) {
        int q = ts_quant_sym(x[i], 1.0f, -128, 127);
        CHECK(q == want[i], "round(%g) = %d, want %d", x[i], q, want[i]);
    }
    /* on a step: 2.5 and 3.5 steps of 0.25 */
    CHECK(ts_quant_sym(0.625f, 0.25f, -128, 127) == 2, "0.625/0.25");
    CHECK(ts_quant_sym(0.875f, 0.25f, -128, 127) == 4, "0.875/0.25");
    CHECK(ts_quant_u8(2.5f, 1.0f) == 2 && ts_quant_u8(3.5f, 1.0f) == 4, "u8 ties");
    CHECK(ts_quant_asym(2.5f + 0.75f, 1.0f, 0.75f) == 2, "asym tie");
    /* a true division, not a reciprocal product: 0x1.1ced9p-2 / 0.0371 = 7.49999952 -> 7, while
     * x * (1 / 0.0371) = 7.5 -> 8; 0x1.42eb1cp-2 / 0.0371 = 8.5 -> 8 (product 8.50000095) */
    CHECK(ts_quant_sym(0x1.1ced9p-2f, 0.0371f, -128, 127) == 7, "division 7.49999952");
    CHECK(ts_quant_sym(0x1.42eb1cp-2f, 0.0371f, -128, 127) == 8, "division 8.5");
    CHECK(ts_quant_u8_zp(0x1.1ced9p-2f, 0.0371f, 128) == 135, "u8 division");
}

static void test_round_trip(void) {
    const float step = 0.0371f, bias = -0.42f;
    int bad = 0;
    for (int i = 0; i < 20000 && !bad; i++) {
        float x = frand() * 127.0f * step; /* in range of every quantiser below */
        float s = (float)ts_quant_sym(x, step, -128, 127) * step;
        if (!(fabsf(s - x) <= step * 0.5f * (1 + 1e-6f))) bad = 1;
        float xa = bias + (frand() * 127.5f) * step;
        float a = ts_dequant_asym(ts_quant_asym(xa, step, bias), step, bias);
        if (!(fabsf(a - xa) <= step * 0.5f * (1 + 1e-5f))) bad = 2;
        float xu = (frand() + 1.0f) * 127.0f * step;
        float u = (float)ts_quant_u8(xu, step) * step;
        if (!(fabsf(u - xu) <= step * 0.5f * (1 + 1e-6f))) bad = 3;
        uint8_t z = ts_quant_u8_zp(x, step, 128);
        if (!(fabsf((float)((int)z - 128) * step - x) <= step * 0.5f * (1 + 1e-6f))) bad = 4;
        if (bad) t_fail(__FILE__, __LINE__, "round trip %d failed at x=%g", bad, x);
    }
    float v[4] = {0.1f, -0.2f, 10.0f, -10.0f};
    ts_fq_sym(v, 4, 0.05f, -128, 127);
    CHECK(close_to(v[0], 0.1f, 1e-7f) && close_to(v[1], -0.2f, 1e-7f), "fq %g %g", v[0], v[1]);
    CHECK(v[2] == 127 * 0.05f && v[3] == -128 * 0.05f, "fq clamps %g %g", v[2], v[3]);
}

static void test_clamping(void) {
    CHECK(ts_quant_sym(1e9f, 1.0f, -128, 127) == 127, "sym hi");
    CHECK(ts_quant_sym(-1e9f, 1.0f, -128, 127) == -128, "sym lo");
    CHECK(ts_quant_sym(-1e9f, 1.0f, -127, 127) == -127, "sym lo -127");
    CHECK(ts_quant_sym(INFINITY, 1.0f, -128, 127) == 127, "inf");
    CHECK(ts_quant_sym(NAN, 1.0f, -128, 127) == 0, "NaN -> 0");
    CHECK(ts_quant_asym(-100.0f, 0.1f, 1.0f) == -128 && ts_quant_asym(100.0f, 0.1f, 1.0f) == 127,
          "asym clamps");
    CHECK(ts_quant_u8(-3.0f, 0.1f) == 0 && ts_quant_u8(300.0f, 1.0f) == 255, "u8 clamps");
    CHECK(ts_quant_u8_zp(-200.0f, 1.0f, 77) == 0 && ts_quant_u8_zp(200.0f, 1.0f, 77) == 255,
          "u8 zp clamps");
    /* twin post-GELU codes as GEMM inputs: qp in [0, 127] (zp 0), qn + 128 in [0, 128] */
    CHECK(ts_quant_u8_range(5.0f, 0.01f, 0, 0, 127) == 127, "qp clamps at 127");
    CHECK(ts_quant_u8_range(-0.05f, 0.01f, 0, 0, 127) == 0, "qp of a negative");
    CHECK(ts_quant_u8_range(0.3f, TS_TWIN_GELU_NEG_STEP, 128, -128, 0) == 128, "qn of a positive");
    CHECK(ts_quant_u8_range(-0.1f, TS_TWIN_GELU_NEG_STEP, 128, -128, 0) == 128 - 75, "qn -0.1");
    CHECK(ts_quant_u8_range(-1.0f, TS_TWIN_GELU_NEG_STEP, 128, -128, 0) == 0, "qn clamps");
    CHECK(ts_quant_u8_range(NAN, 1.0f, 128, -128, 0) == 128, "NaN -> zp");
}

static void test_weights(void) {
    /* row 0: max 2.54 -> scale 0.02; row 1: all zero; row 2: negative max */
    const float W[3][5] = {{2.54f, -1.27f, 0.01f, 0.03f, -2.54f},
                           {0, 0, 0, 0, 0},
                           {-1.0f, 0.5f, 0.25f, 0.0f, 0.1f}};
    int8_t q[15];
    float s[3];
    ts_quant_weights(&W[0][0], 3, 5, 5, q, s);
    CHECK(close_to(s[0], 0.02f, 1e-8f) && s[1] == 1.0f && close_to(s[2], 1.0f / 127, 1e-9f),
          "scales %g %g %g", s[0], s[1], s[2]);
    CHECK(q[0] == 127 && q[1] == -64 && q[2] == 0 && q[3] == 2 && q[4] == -127,
          "row 0 codes %d %d %d %d %d", q[0], q[1], q[2], q[3], q[4]); /* -63.5 -> -64, 1.5 -> 2 */
    for (int k = 0; k < 5; k++) CHECK(q[5 + k] == 0, "zero row");
    CHECK(q[10] == -127 && q[11] == 64 && q[12] == 32 && q[13] == 0 && q[14] == 13,
          "row 2 codes %d %d %d %d %d", q[10], q[11], q[12], q[13], q[14]);
    /* given scale: clamp at -127 (not -128), zero scale -> zero codes */
    const float W2[2][3] = {{-10.0f, 10.0f, 0.05f}, {1.0f, 2.0f, 3.0f}};
    const float s2[2] = {0.05f, 0.0f};
    int8_t q2[6];
    ts_quant_weights_scaled(&W2[0][0], 2, 3, 3, s2, q2);
    CHECK(q2[0] == -127 && q2[1] == 127 && q2[2] == 1, "scaled codes %d %d %d", q2[0], q2[1],
          q2[2]);
    CHECK(q2[3] == 0 && q2[4] == 0 && q2[5] == 0, "zero scale");
    /* ldw > K */
    const float W3[2][4] = {{1, -2, 9, 9}, {4, 8, 9, 9}};
    int8_t q3[4];
    float s3[2];
    ts_quant_weights(&W3[0][0], 2, 2, 4, q3, s3);
    CHECK(q3[0] == 64 && q3[1] == -127 && q3[2] == 64 && q3[3] == 127, "ldw: %d %d %d %d", q3[0],
          q3[1], q3[2], q3[3]); /* 63.5 -> 64 */
}

static void test_twin_gelu(void) {
    const float a = 0.01f, neg = 0.16997124254703522f / 128.0f;
    int qp, qn;
    /* positive: 1.5 steps -> 2 (half even), the negative term rounds to 11 and clamps to 0 */
    ts_twin_gelu_quant(0.015f, a, &qp, &qn);
    CHECK(qp == 2 && qn == 0, "0.015: %d %d", qp, qn);
    CHECK(close_to(ts_twin_gelu_fq(0.015f, a), 0.02f, 1e-8f), "0.015 fq");
    /* negative: -0.1 / neg = -75.307 -> -75; x^ = -75 * 0.16997124254703522 / 128 */
    ts_twin_gelu_quant(-0.1f, a, &qp, &qn);
    CHECK(qp == 0 && qn == -75, "-0.1: %d %d", qp, qn);
    CHECK(close_to(ts_twin_gelu_fq(-0.1f, a), -0.0995925249f, 1e-8f), "-0.1 fq %.9g",
          ts_twin_gelu_fq(-0.1f, a));
    /* below GELU's minimum: clamps at -128 -> -0.16997124 */
    CHECK(close_to(ts_twin_gelu_fq(-0.3f, a), -0.16997124254703522f, 1e-8f), "-0.3 fq");
    CHECK(close_to(ts_twin_gelu_fq(2.0f, a), 1.27f, 1e-6f), "2.0 clamps at 127 steps");
    /* §7 literal: pos + neg parts always added; equals the two-code value everywhere */
    int bad = 0;
    for (int i = 0; i < 2000 && !bad; i++) {
        float x = frand() * 1.5f - 0.2f;
        float lit = fminf(fmaxf(nearbyintf(x / a), 0.0f), 127.0f) * a +
                    fminf(fmaxf(nearbyintf(x / neg), -128.0f), 0.0f) * neg;
        if (ts_twin_gelu_fq(x, a) != lit) {
            t_fail(__FILE__, __LINE__, "x=%g: %g, literal %g", x, ts_twin_gelu_fq(x, a), lit);
            bad = 1;
        }
    }
    float v[2] = {0.015f, -0.1f};
    ts_fq_twin_gelu(v, 2, a);
    CHECK(v[0] == ts_twin_gelu_fq(0.015f, a) && v[1] == ts_twin_gelu_fq(-0.1f, a), "array");
}

static void test_twin_softmax(void) {
    const float split = 0.1f, lo = 1.0f / 1024.0f;
    int qh, ql;
    /* x = 0.5: q_hi = round(63.5) = 64 (half even); literally q_lo = round(0.1 * 1024) = 102 */
    ts_twin_softmax_quant(0.5f, split, lo, &qh, &ql);
    CHECK(qh == 64 && ql == 102, "0.5 literal: %d %d", qh, ql);
    CHECK(close_to(ts_twin_softmax_fq(0.5f, split, lo), 64.0f / 127 + 102.0f / 1024, 1e-7f),
          "0.5 literal value %.9g", ts_twin_softmax_fq(0.5f, split, lo));
    ts_twin_softmax_quant_region(0.5f, split, lo, &qh, &ql);
    CHECK(qh == 64 && ql == 0, "0.5 region: %d %d", qh, ql);
    /* x = 0.05: literally q_hi = round(0.1 * 127 = 12.7) = 13, q_lo = round(51.2) = 51 */
    ts_twin_softmax_quant(0.05f, split, lo, &qh, &ql);
    CHECK(qh == 13 && ql == 51, "0.05 literal: %d %d", qh, ql);
    CHECK(close_to(ts_twin_softmax_dequant(qh, ql, lo), 13.0f / 127 + 51.0f / 1024, 1e-7f),
          "0.05 value");
    ts_twin_softmax_quant_region(0.05f, split, lo, &qh, &ql);
    CHECK(qh == 0 && ql == 51, "0.05 region: %d %d", qh, ql);
    CHECK(close_to(ts_twin_softmax_dequant(qh, ql, lo), 0.0498046875f, 1e-9f), "0.05 region value");
    /* x = 1 and x = 0; small-region clamp at 127 steps */
    ts_twin_softmax_quant(1.0f, split, lo, &qh, &ql);
    CHECK(qh == 127 && ql == 102, "1.0: %d %d", qh, ql);
    ts_twin_softmax_quant_region(0.0f, split, lo, &qh, &ql);
    CHECK(qh == 0 && ql == 0, "0.0");
    ts_twin_softmax_quant_region(0.099f, split, lo, &qh, &ql);
    CHECK(qh == 0 && ql == 101, "0.099 region: %d", ql); /* 101.38 */
    ts_twin_softmax_quant_region(0.099f, split, 1.0f / 2048, &qh, &ql);
    CHECK(ql == 127, "small region clamps at 127: %d", ql);
    /* when split rounds to zero in both codes, the literal value is the intended one */
    const float s2 = 0.003f, lo2 = 1.0f / 128.0f; /* 0.381 and 0.384 round to 0 */
    int bad = 0;
    for (int i = 0; i < 2000 && !bad; i++) {
        float x = (frand() + 1.0f) * 0.5f;
        int a, b, c, d;
        ts_twin_softmax_quant(x, s2, lo2, &a, &b);
        ts_twin_softmax_quant_region(x, s2, lo2, &c, &d);
        if (ts_twin_softmax_dequant(a, b, lo2) != ts_twin_softmax_dequant(c, d, lo2)) {
            t_fail(__FILE__, __LINE__, "x=%g: literal %d %d, region %d %d", x, a, b, c, d);
            bad = 1;
        }
    }
    float v[1] = {0.5f};
    ts_fq_twin_softmax(v, 1, split, lo);
    CHECK(v[0] == ts_twin_softmax_fq(0.5f, split, lo), "array");
}

/* MSE search: one outlier at 1.0 and many values on the grid of step 0.5/127. Clipping at 0.5
 * (ratio 0.5) costs 0.25 (the outlier) and nothing else; every larger clip pays rounding on
 * the many values: with enough of them the optimum is ratio 0.5 exactly. */
static void test_search_mse(void) {
    const size_t n = 100001;
    float *x = malloc(sizeof(float) * n);
    x[0] = 1.0f;
    for (size_t i = 1; i < n; i++) x[i] = (float)((int)(i % 41) - 20) * (0.5f / 127.0f);
    double mse;
    float s = ts_quant_search_step_mse(x, n, -128, 127, 2, 0.5f, &mse);
    CHECK(close_to(s, 0.5f / 127.0f, 1e-9f), "2-point grid: step %g", s);
    CHECK(fabs(mse * n - 0.25) < 1e-6, "mse %g", mse * n);
    s = ts_quant_search_step_mse(x, n, -128, 127, 101, 0.5f, &mse);
    CHECK(close_to(s, 0.5f / 127.0f, 1e-9f), "101-point grid: step %g (ratio %g)", s,
          s * 127.0f);
    /* data exactly on the grid of the full range: ratio 1 and zero error */
    for (size_t i = 0; i < 1000; i++) x[i] = (float)((int)(i % 255) - 127) * 0.01f;
    s = ts_quant_search_step_mse(x, 1000, -127, 127, 101, 0.5f, &mse);
    CHECK(close_to(s, 0.01f, 1e-8f) && mse < 1e-12, "on-grid: step %g mse %g", s, mse);
    /* unsigned: range is max(x) */
    for (size_t i = 0; i < 1000; i++) x[i] = (float)(i % 256) * 0.02f;
    s = ts_quant_search_step_mse(x, 1000, 0, 255, 101, 0.5f, &mse);
    CHECK(close_to(s, 0.02f, 1e-8f), "u8 on-grid: step %g", s);
    CHECK(ts_quant_search_step_mse(x, 0, -128, 127, 10, 0.5f, NULL) == 1.0f, "empty");
    free(x);
}

/* Layer-output search: X on the grid of step 0.02 (codes up to 127), W exactly representable
 * per column; the candidate 0.02 reproduces X*W up to float rounding, the others do not. */
static void test_search_layer(void) {
    const int n = 64, k = 48, m = 24;
    float *X = malloc(sizeof(float) * n * k), *W = malloc(sizeof(float) * k * m);
    for (int i = 0; i < n * k; i++) X[i] = (float)((int)(frand() * 127.99f)) * 0.02f;
    X[0] = 127 * 0.02f;
    for (int j = 0; j < m; j++) {
        float ws = 0.001f * (float)(j + 1);
        for (int i = 0; i < k; i++) W[i * m + j] = (float)((int)(frand() * 127.99f)) * ws;
        W[j] = 127 * ws; /* column max = 127 steps: the absmax scale is ws */
    }
    const float cand[] = {0.01f, 0.018f, 0.02f, 0.025f, 0.04f};
    double err;
    int best = ts_quant_search_step_layer(X, n, k, W, m, NULL, cand, 5, -128, 127, &err);
    CHECK(best == 2, "best candidate %d", best);
    CHECK(err < 1e-6, "error at the exact step %g", err);
    /* with given weight scales that are too coarse, still the X-exact step wins */
    float *ws = malloc(sizeof(float) * m);
    for (int j = 0; j < m; j++) ws[j] = 0.003f * (float)(j + 1);
    best = ts_quant_search_step_layer(X, n, k, W, m, ws, cand, 5, -128, 127, &err);
    CHECK(best == 2, "best candidate with coarse W %d", best);
    CHECK(ts_quant_search_step_layer(X, 0, k, W, m, NULL, cand, 5, -128, 127, NULL) < 0,
          "bad shape accepted");
    free(X);
    free(W);
    free(ws);
}

int main(void) {
    RUN(test_round_half_even);
    RUN(test_round_trip);
    RUN(test_clamping);
    RUN(test_weights);
    RUN(test_twin_gelu);
    RUN(test_twin_softmax);
    RUN(test_search_mse);
    RUN(test_search_layer);
    return test_summary();
}
