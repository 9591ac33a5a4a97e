/* test_conv_i8.c - the int8 dense 3x3 convolution (nn/conv_i8.h) on every ISA path (forced in
 * turn through TINYSAM_ISA's names) against an exact reference written here: per-element
 * quantisation (quant.h ts_quant_u8_zp), a naive padded 3x3 sum in int64, and gemm_i8.h's
 * epilogue formula (float)acc * (a_step * w_scale[n]) + bias[n]: equal bit for bit. Shapes
 * with odd sides, both strides, channel counts that leave K and N tails; extremes (inputs that
 * saturate codes 0 and 255, weights at +-127). */
#include "nn/conv_i8.h"
#include "nn/nn.h"
#include "quant/quant.h"
#include "test.h"
#include "tinysam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const ISAS[] = {"avx512", "avx2", "scalar"};
#define N_ISAS 3

static unsigned long long g_rng = 0x9E3779B97F4A7C15ull;
static unsigned rnd(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)(g_rng >> 33);
}
static float frand(void) { return (float)(rnd() & 0xffffff) / (float)(1 << 24) * 2.0f - 1.0f; }

/* One case on the current ISA; extreme: inputs far outside the clip, weights +-127. */
static int conv_case(int H, int W, int Ci, int Co, int stride, int zp, int extreme, int act) {
    const int K = 9 * Ci, Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
    const float a_step = 0.02f;
    float *x = malloc(sizeof(float) * H * W * Ci), *bias = malloc(sizeof(float) * Co);
    float *scale = malloc(sizeof(float) * Co);
    int8_t *Wq = malloc((size_t)Co * K);
    uint8_t *xq = malloc((size_t)H * W * Ci);
    float *y = malloc(sizeof(float) * Ho * Wo * Co);
    if (!x || !bias || !scale || !Wq || !xq || !y) return -1;
    for (int i = 0; i < H * W * Ci; i++) x[i] = extreme ? (rnd() & 1 ? 1e3f : -1e3f) : 3.0f * frand();
    for (int i = 0; i < Co * K; i++) Wq[i] = extreme ? (rnd() & 1 ? 127 : -127) : (int8_t)(rnd() % 255 - 127);
    for (int n = 0; n < Co; n++) {
        scale[n] = 0.001f + 0.01f * (float)(rnd() % 100) / 100.0f;
        bias[n] = frand();
    }
    for (int i = 0; i < H * W * Ci; i++) xq[i] = ts_quant_u8_zp(x[i], a_step, zp);
    ts_i8pack *p = ts_i8pack_new(Wq, Co, K, K, scale);
    if (!p || ts_conv3x3_i8_nhwc(x, H, W, Ci, stride, a_step, zp, p, bias, act, y)) return -1;
    int bad = 0;
    for (int oy = 0; oy < Ho; oy++)
        for (int ox = 0; ox < Wo; ox++)
            for (int n = 0; n < Co; n++) {
                long long acc = 0;
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++) {
                        int iy = oy * stride - 1 + ky, ix = ox * stride - 1 + kx;
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                        for (int c = 0; c < Ci; c++)
                            acc += (long long)((int)xq[((size_t)iy * W + ix) * Ci + c] - zp) *
                                   Wq[(size_t)n * K + (ky * 3 + kx) * Ci + c];
                    }
                float want = (float)acc * (a_step * scale[n]) + bias[n];
                if (act == TS_ACT_GELU) ts_gelu_ref(&want, 1);
                float got = y[((size_t)oy * Wo + ox) * Co + n];
                int ok = act == TS_ACT_GELU ? fabsf(got - want) <= 2e-6f * (1.0f + fabsf(want))
                                            : got == want;
                if (!ok && bad++ < 3)
                    printf("  %s H%d W%d Ci%d Co%d s%d zp%d: (%d,%d,%d) got %.9g want %.9g\n",
                           ts_gemm_i8_isa_name(), H, W, Ci, Co, stride, zp, oy, ox, n,
                           (double)got, (double)want);
            }
    ts_i8pack_free(p);
    free(x);
    free(bias);
    free(scale);
    free(Wq);
    free(xq);
    free(y);
    return bad;
}

static const int SHAPES[][5] = { /* H, W, Ci, Co, stride */
    {9, 7, 3, 32, 2}, {8, 8, 3, 5, 2}, {11, 13, 32, 64, 2}, {7, 9, 5, 17, 1},
    {6, 6, 64, 33, 1}, {5, 40, 8, 16, 1}, {1, 1, 4, 3, 1}, {3, 2, 7, 12, 2},
};

static void test_shapes(void) {
    int ran = 0;
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        REQUIRE(ts_nn_set_isa(ISAS[i]) == 0, "set %s", ISAS[i]);
        ran++;
        for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++) {
            const int *c = SHAPES[s];
            for (int zp = 0; zp <= 255; zp += 128) {
                int bad = conv_case(c[0], c[1], c[2], c[3], c[4], zp, 0, TS_ACT_NONE);
                CHECK(bad == 0, "%s shape %zu zp %d: %d outputs differ", ISAS[i], s, zp, bad);
            }
            int bad = conv_case(c[0], c[1], c[2], c[3], c[4], 128, 0, TS_ACT_GELU);
            CHECK(bad == 0, "%s shape %zu GELU: %d outputs differ", ISAS[i], s, bad);
        }
        /* a band larger than one task (the output split over several tasks) */
        int bad = conv_case(40, 37, 16, 24, 1, 128, 0, TS_ACT_NONE);
        CHECK(bad == 0, "%s large: %d outputs differ", ISAS[i], bad);
    }
    ts_nn_set_isa(ISAS[0]);
    CHECK(ran >= 1, "no ISA ran");
}

static void test_extremes(void) {
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        for (int zp = 0; zp <= 255; zp += 255) {
            int bad = conv_case(9, 10, 64, 19, 1, zp, 1, TS_ACT_NONE);
            CHECK(bad == 0, "%s extremes zp %d: %d outputs differ", ISAS[i], zp, bad);
        }
    }
    ts_nn_set_isa(ISAS[0]);
}

static void test_bad_args(void) {
    int8_t w[9 * 4] = {0};
    float sc[1] = {1.0f}, x[16] = {0}, y[16];
    ts_i8pack *p = ts_i8pack_new(w, 1, 36, 36, sc);
    REQUIRE(p, "pack");
    CHECK(ts_conv3x3_i8_nhwc(x, 2, 2, 3, 1, 0.1f, 128, p, NULL, TS_ACT_NONE, y) ==
              TINYSAM_E_ARG, "K mismatch accepted");
    CHECK(ts_conv3x3_i8_nhwc(x, 2, 2, 4, 3, 0.1f, 128, p, NULL, TS_ACT_NONE, y) ==
              TINYSAM_E_ARG, "stride 3 accepted");
    CHECK(ts_conv3x3_i8_nhwc(x, 2, 2, 4, 1, 0.0f, 128, p, NULL, TS_ACT_NONE, y) ==
              TINYSAM_E_ARG, "step 0 accepted");
    ts_i8pack_free(p);
}

int main(void) {
    RUN(test_shapes);
    RUN(test_extremes);
    RUN(test_bad_args);
    return test_summary();
}
