/* test_attn_i8.c - the int8 attention products (nn/attn_i8.h) on every ISA path against an
 * exact reference written here: codes from quant.h's element quantisers (ts_quant_u8_zp for A,
 * ts_quant_sym(-127, 127) for B), int64 sums of (a - zp) * b. Both uses (q.k^T: B from rows;
 * P.v: B from the columns of v) with the window sizes of the encoder (49, 196 tokens), tails
 * (N, K not multiples of 16 / 4, M not a multiple of 4) and extremes (saturated codes). */
#include "nn/attn_i8.h"
#include "nn/nn.h"
#include "quant/quant.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const char *const ISAS[] = {"avx512", "avx2", "scalar"};
#define N_ISAS 3

static unsigned long long g_rng = 0x2545F4914F6CDD1Dull;
static unsigned rnd(void) {
    g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
    return (unsigned)(g_rng >> 33);
}
static float frand(void) { return (float)(rnd() & 0xffffff) / (float)(1 << 24) * 2.0f - 1.0f; }

/* C = A * B^T with B[N][K] given as rows (cols 0) or as X[K][N] (cols 1). Returns mismatches,
 * -1 when out of memory. */
static int prod_case(int M, int N, int K, int zp, int cols, float scale) {
    const float a_step = 0.05f, b_step = 0.03f;
    const int lda = ts_i8pk_kp(K) + 4;
    float *xa = malloc(sizeof(float) * M * K), *xb = malloc(sizeof(float) * N * K);
    uint8_t *A = malloc((size_t)M * lda);
    int8_t *Bp = malloc(ts_i8pk_bytes(N, K));
    int32_t *bsum = malloc(sizeof(int32_t) * ts_i8pk_np(N)), *C = malloc(sizeof(int32_t) * M * N);
    if (!xa || !xb || !A || !Bp || !bsum || !C) return -1;
    for (int i = 0; i < M * K; i++) xa[i] = scale * frand();
    for (int i = 0; i < N * K; i++) xb[i] = scale * frand();
    for (int m = 0; m < M; m++) ts_i8pk_quant_a(NULL, xa + (size_t)m * K, K, lda, a_step, zp, A + (size_t)m * lda);
    if (cols) /* xb as X[K][N] */
        ts_i8pk_quant_cols(NULL, xb, N, K, N, b_step, Bp, bsum);
    else
        ts_i8pk_quant_rows(NULL, xb, K, N, K, b_step, Bp, bsum);
    ts_i8pk_gemm(NULL, M, N, K, A, lda, zp, Bp, bsum, C, N);
    int bad = 0;
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            long long s = 0;
            for (int k = 0; k < K; k++) {
                int a = ts_quant_u8_zp(xa[(size_t)m * K + k], a_step, zp) - zp;
                float xv = cols ? xb[(size_t)k * N + n] : xb[(size_t)n * K + k];
                s += (long long)a * ts_quant_sym(xv, b_step, -127, 127);
            }
            if (s != C[(size_t)m * N + n] && bad++ < 3)
                printf("  %s M%d N%d K%d zp%d cols%d: (%d,%d) got %d want %lld\n",
                       ts_i8pk_isa_name(), M, N, K, zp, cols, m, n, C[(size_t)m * N + n], s);
        }
    free(xa);
    free(xb);
    free(A);
    free(Bp);
    free(bsum);
    free(C);
    return bad;
}

static const int SHAPES[][3] = { /* M, N, K */
    {49, 49, 32}, {7, 49, 32}, {49, 196, 32}, {196, 196, 32}, {5, 17, 32}, {1, 1, 32},
    {49, 32, 49}, {6, 32, 196}, {13, 33, 7}, {3, 16, 4}, {4, 15, 1},
};

static void test_products(void) {
    int ran = 0;
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        REQUIRE(ts_nn_set_isa(ISAS[i]) == 0, "set %s", ISAS[i]);
        printf("  isa %s -> %s\n", ISAS[i], ts_i8pk_isa_name());
        ran++;
        for (size_t s = 0; s < sizeof SHAPES / sizeof SHAPES[0]; s++)
            for (int cols = 0; cols < 2; cols++)
                for (int zp = 0; zp <= 128; zp += 128) {
                    const int *c = SHAPES[s];
                    int bad = prod_case(c[0], c[1], c[2], zp, cols, 3.0f);
                    CHECK(bad == 0, "%s shape %zu cols %d zp %d: %d differ", ISAS[i], s, cols,
                          zp, bad);
                }
    }
    ts_nn_set_isa(ISAS[0]);
    CHECK(ran >= 1, "no ISA ran");
}

/* Saturated codes (|x| far beyond 127 steps): the largest sums, still exact. */
static void test_extremes(void) {
    for (int i = 0; i < N_ISAS; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        ts_nn_set_isa(ISAS[i]);
        for (int zp = 0; zp <= 255; zp += 255) {
            int bad = prod_case(9, 37, 196, zp, 1, 1e4f);
            CHECK(bad == 0, "%s extremes zp %d: %d differ", ISAS[i], zp, bad);
            bad = prod_case(9, 37, 32, zp, 0, 1e4f);
            CHECK(bad == 0, "%s extremes rows zp %d: %d differ", ISAS[i], zp, bad);
        }
    }
    ts_nn_set_isa(ISAS[0]);
}

int main(void) {
    RUN(test_products);
    RUN(test_extremes);
    return test_summary();
}
