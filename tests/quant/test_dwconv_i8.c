/* test_dwconv_i8.c - the int8 depthwise 3x3 row (nn/dwconv_i8.h) on every ISA path against
 * an exact reference written here (int64 sums of (u - zp) * w over the in-image taps, then
 * (float)acc * comb + bias): equal bit for bit. Channel tails, odd widths, both strides,
 * missing rows (top / bottom padding), saturated codes and weights at +-127. */
#include "nn/dwconv_i8.h"
#include "nn/nn.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

static const char *const ISAS[] = {"avx512", "avx2", "scalar"};
#define N_ISAS 3

static unsigned long long g_rng = 0xD1B54A32D192ED03ull;
static unsigned rnd(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)(g_rng >> 33);
}

static int dw_case(int W, int C, int stride, int zp, int missing, int extreme, int act) {
    const int Wo = (W - 1) / stride + 1;
    uint8_t *r = malloc((size_t)3 * W * C);
    int8_t *w9 = malloc((size_t)9 * C);
    float *comb = malloc(sizeof(float) * C), *bias = malloc(sizeof(float) * C);
    float *y = malloc(sizeof(float) * Wo * C), *want = malloc(sizeof(float) * C);
    if (!r || !w9 || !comb || !bias || !y || !want) return -1;
    for (int i = 0; i < 3 * W * C; i++) r[i] = extreme ? (rnd() & 1 ? 255 : 0) : (uint8_t)rnd();
    for (int i = 0; i < 9 * C; i++) w9[i] = extreme ? (rnd() & 1 ? 127 : -127) : (int8_t)(rnd() % 255 - 127);
    for (int c = 0; c < C; c++) {
        comb[c] = 1e-4f * (float)(1 + rnd() % 100);
        bias[c] = (float)((int)(rnd() % 200) - 100) / 64.0f;
    }
    const uint8_t *rows[3] = {r, r + (size_t)W * C, r + (size_t)2 * W * C};
    if (missing == 1) rows[0] = NULL;
    if (missing == 2) rows[2] = NULL;
    ts_dwconv3x3_i8_rows3(rows, W, C, stride, zp, w9, comb, bias, act, y);
    int bad = 0;
    for (int ox = 0; ox < Wo; ox++) {
        for (int c = 0; c < C; c++) {
            long long acc = 0;
            for (int ky = 0; ky < 3; ky++)
                for (int kx = 0; kx < 3; kx++) {
                    int ix = ox * stride - 1 + kx;
                    if (!rows[ky] || ix < 0 || ix >= W) continue;
                    acc += (long long)((int)rows[ky][(size_t)ix * C + c] - zp) *
                           w9[(ky * 3 + kx) * C + c];
                }
            float f = (float)acc * comb[c];
            want[c] = f + bias[c];
        }
        if (act == TS_ACT_GELU) ts_gelu(want, (size_t)C);
        for (int c = 0; c < C; c++)
            if (y[(size_t)ox * C + c] != want[c] && bad++ < 3)
                printf("  %s W%d C%d s%d zp%d miss%d: (%d,%d) got %.9g want %.9g\n",
                       ts_nn_isa_name(), W, C, stride, zp, missing, ox, c,
                       (double)y[(size_t)ox * C + c], (double)want[c]);
    }
    free(r);
    free(w9);
    free(comb);
    free(bias);
    free(y);
    free(want);
    return bad;
}

static const int SHAPES[][3] = {{7, 16, 1}, {9, 33, 2}, {1, 5, 1}, {2, 17, 2}, {13, 256, 1},
                                {14, 320, 2}, {5, 64, 1}, {3, 1, 1}};

static void test_rows(void) {
    int ran = 0;
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        REQUIRE(ts_nn_set_isa(ISAS[i]) == 0, "set %s", ISAS[i]);
        ran++;
        for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++)
            for (int missing = 0; missing < 3; missing++)
                for (int zp = 0; zp <= 255; zp += 127) {
                    const int *c = SHAPES[s];
                    int act = (s + missing) % 2 ? TS_ACT_GELU : TS_ACT_NONE;
                    int bad = dw_case(c[0], c[1], c[2], zp, missing, 0, act);
                    CHECK(bad == 0, "%s shape %zu missing %d zp %d: %d differ", ISAS[i], s,
                          missing, zp, bad);
                }
        for (int zp = 0; zp <= 255; zp += 255) {
            int bad = dw_case(11, 48, 1, zp, 0, 1, TS_ACT_NONE);
            CHECK(bad == 0, "%s extremes zp %d: %d differ", ISAS[i], zp, bad);
        }
    }
    ts_nn_set_isa(ISAS[0]);
    CHECK(ran >= 1, "no ISA ran");
}

int main(void) {
    RUN(test_rows);
    return test_summary();
}
