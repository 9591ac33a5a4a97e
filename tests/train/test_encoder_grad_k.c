/* test_encoder_grad_k.c - the AVX-512 kernels of the encoder backward (encoder_grad_k.h)
 * against the exact formulas in double. */
#include "common/test.h"

#include "nn/nn.h"
#include "train/encoder_grad_k.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static double dgelu_exact(double x) {
    return 0.5 * erfc(-x / sqrt(2.0)) + x * exp(-0.5 * x * x) / sqrt(2.0 * M_PI);
}

static float frand(unsigned *s) {
    *s = *s * 1664525u + 1013904223u;
    return (float)((*s >> 8) / 16777216.0) - 0.5f;
}

/* GELU'(x) within 1e-6 of the exact formula (relative to max(1, |GELU'|)) over a dense grid,
 * the tails and the specials around the interval edges. */
static void test_dgelu(void) {
    if (!ts_nn_isa_available("avx512")) SKIP("no AVX-512");
    const ts_eg_kern *k = ts_eg_kern_avx512();
    const size_t n = 2000003;
    float *x = malloc(sizeof(float) * n), *dy = malloc(sizeof(float) * n);
    REQUIRE(x && dy, "out of memory");
    for (size_t i = 0; i < n; i++) {
        x[i] = -12.0f + 24.0f * (float)i / (float)(n - 1);
        dy[i] = 1.0f;
    }
    x[0] = 0.0f, x[1] = -0.0f, x[2] = 8.0f, x[3] = -8.0f, x[4] = 1e30f, x[5] = -1e30f;
    x[6] = 0.25f, x[7] = -0.25f, x[8] = 1e-30f;
    k->dgelu(x, n, dy);
    double worst = 0, wx = 0;
    for (size_t i = 0; i < n; i++) {
        const double ex = dgelu_exact(fmax(-1e3, fmin(1e3, x[i])));
        const double err = fabs(dy[i] - ex) / fmax(1.0, fabs(ex));
        if (err > worst) worst = err, wx = x[i];
    }
    printf("  GELU' max error %.3g at x = %g\n", worst, wx);
    CHECK(worst <= 1e-6, "GELU' error %g at %g", worst, wx);
    /* the upstream factor multiplies */
    float x1[3] = {0.5f, -1.5f, 2.0f}, d1[3] = {2.0f, -3.0f, 0.5f};
    k->dgelu(x1, 3, d1);
    CHECK(fabs(d1[0] - 2 * dgelu_exact(0.5)) < 2e-6 && fabs(d1[1] + 3 * dgelu_exact(-1.5)) < 2e-6 &&
              fabs(d1[2] - 0.5 * dgelu_exact(2.0)) < 2e-6,
          "scaled GELU'");
    free(x);
    free(dy);
}

/* BatchNorm rows, their fused GELU' and the backward sums on odd channel counts (masked
 * tails), against double loops. */
static void test_rows(void) {
    if (!ts_nn_isa_available("avx512")) SKIP("no AVX-512");
    const ts_eg_kern *k = ts_eg_kern_avx512();
    const int cos[3] = {16, 37, 160};
    unsigned s = 7;
    for (int c = 0; c < 3; c++) {
        const int co = cos[c], rows = 23;
        const size_t n = (size_t)rows * co;
        float *r = malloc(sizeof(float) * n), *res = malloc(sizeof(float) * n);
        float *o = malloc(sizeof(float) * n), *d = malloc(sizeof(float) * n);
        float *d0 = malloc(sizeof(float) * n);
        float al[160], sh[160], mean[160], rstd[160];
        double sg[160] = {0}, sb[160] = {0};
        REQUIRE(r && res && o && d && d0, "out of memory");
        for (size_t i = 0; i < n; i++) r[i] = 4 * frand(&s), res[i] = frand(&s), d[i] = frand(&s);
        for (int i = 0; i < co; i++)
            al[i] = 1 + frand(&s), sh[i] = frand(&s), mean[i] = frand(&s), rstd[i] = 2 + frand(&s);
        memcpy(d0, d, sizeof(float) * n);
        k->bn_rows(r, res, al, sh, rows, co, 0, o);
        double e0 = 0, e1 = 0, e2 = 0, e3 = 0;
        for (size_t i = 0; i < n; i++)
            e0 = fmax(e0, fabs(o[i] - ((double)r[i] * al[i % co] + sh[i % co] + res[i])));
        memcpy(o, d, sizeof(float) * n);
        k->bn_rows(r, NULL, al, sh, rows, co, 1, o);
        for (size_t i = 0; i < n; i++) {
            const double v = (double)r[i] * al[i % co] + sh[i % co];
            e1 = fmax(e1, fabs(o[i] - d[i] * dgelu_exact(v)));
        }
        /* through the GELU of BN(r) + res: d = d0 * GELU'(v), copy = d, dout = d * al */
        k->bn_bwd_rows(r, res, al, sh, mean, rstd, rows, co, 1, d, d, o, sg, sb);
        for (int j = 0; j < co; j++) {
            double g = 0, b = 0;
            for (int p = 0; p < rows; p++) {
                const size_t i = (size_t)p * co + j;
                const double v = (double)r[i] * al[j] + sh[j] + res[i];
                const double dd = d0[i] * dgelu_exact(v);
                g += dd * (r[i] - mean[j]) * rstd[j], b += dd;
                e3 = fmax(e3, fmax(fabs(d[i] - dd * al[j]), fabs(o[i] - dd)));
            }
            e2 = fmax(e2, fmax(fabs(sg[j] - g), fabs(sb[j] - b)));
        }
        CHECK(e0 < 1e-5 && e1 < 2e-6 && e2 < 1e-4 && e3 < 1e-6, "co %d: errors %g %g %g %g", co,
              e0, e1, e2, e3);
        free(r), free(res), free(o), free(d), free(d0);
    }
}

int main(void) {
    RUN(test_dgelu);
    RUN(test_rows);
    return test_summary();
}
