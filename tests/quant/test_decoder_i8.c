/* test_decoder_i8.c - the int8 GEMM on the mask decoder's shapes (model/mask_decoder.c, int8
 * model): exact int32 accumulators against a naive integer sum on every ISA path, for random
 * codes and for the extremes (uint8 0 / 255, weights -127 / 127 as the per-row quantiser makes
 * them, probability codes 0..127 / 0..255). Shapes (M x N x K): the token->image scores
 * (image tokens x 8 heads * tokens x 256), the probability x keys^T product (256 x 8 * tokens
 * x 4096), the shared layer-0 heads (tokens x 4096 x 16, tokens x 16 x 4096), the image->token
 * output (image tokens x 256 x 8 * tokens), both transposed convolutions (tokens x 4*64 x 256,
 * 4*tokens x 4*32 x 64) and the mask product (4*tokens x 16 x 128), with odd tails. */
#include "core.h"
#include "nn/gemm_i8.h"
#include "nn/nn.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

static const char *const ISAS[] = {"avx512", "avx2", "scalar"};

static unsigned rng = 12345u;
static unsigned next(void) {
    rng = rng * 1664525u + 1013904223u;
    return rng >> 8;
}

/* mode 0: random; 1: extremes (A in {0, 255}, W in {-127, 127}) */
static int one_case(int M, int N, int K, int zp, int amax, int mode) {
    uint8_t *A = malloc((size_t)M * K);
    int8_t *W = malloc((size_t)N * K);
    float *sc = malloc(sizeof(float) * N);
    int32_t *C = malloc(sizeof(int32_t) * (size_t)M * N);
    if (!A || !W || !sc || !C) {
        free(A), free(W), free(sc), free(C);
        CHECK(0, "oom");
        return 0;
    }
    for (size_t i = 0; i < (size_t)M * K; i++)
        A[i] = (uint8_t)(mode ? (next() & 1 ? amax : 0) : (int)(next() % (unsigned)(amax + 1)));
    for (size_t i = 0; i < (size_t)N * K; i++)
        W[i] = (int8_t)(mode ? (next() & 1 ? 127 : -127) : (int)(next() % 255u) - 127);
    for (int n = 0; n < N; n++) sc[n] = 1.0f;
    ts_i8pack *p = ts_i8pack_new(W, N, K, K, sc);
    int bad = 0;
    if (p) {
        ts_gemm_i8_s32(M, A, K, zp, p, C, N);
        for (int m = 0; m < M && bad < 5; m++)
            for (int n = 0; n < N; n++) {
                int32_t s = 0;
                for (int k = 0; k < K; k++)
                    s += ((int32_t)A[(size_t)m * K + k] - zp) * W[(size_t)n * K + k];
                if (s != C[(size_t)m * N + n] && bad++ < 5)
                    printf("  %s %dx%dx%d mode %d: [%d][%d] %d != %d\n", ts_gemm_i8_isa_name(), M,
                           N, K, mode, m, n, C[(size_t)m * N + n], s);
            }
    }
    CHECK(p && !bad, "%s: %d x %d x %d (zp %d, mode %d): %s", ts_gemm_i8_isa_name(), M, N, K, zp,
          mode, p ? "accumulators differ" : "pack failed");
    ts_i8pack_free(p);
    free(A), free(W), free(sc), free(C);
    return !bad;
}

static void test_decoder_shapes(void) {
    /* M, N, K, zero point, largest code of A */
    static const int S[][5] = {
        {1029, 56, 256, 128, 255}, /* token->image scores, 7 tokens (image rows cut) */
        {256, 56, 4096, 131, 255}, /* keys^T x probability codes (W: the codes) */
        {7, 4096, 16, 128, 255},   /* shared layer 0: scores per head */
        {9, 16, 4096, 0, 255},     /* shared layer 0: probability codes x V_h^T */
        {515, 256, 72, 0, 255},    /* image->token output: probabilities (K = 8 * 9 tokens) */
        {517, 256, 256, 128, 255}, /* ConvT 256 -> 4 * 64 */
        {1030, 128, 64, 14, 255},  /* ConvT 64 -> 4 * 32 */
        {1031, 16, 128, 14, 255},  /* mask product */
    };
    int ran = 0;
    for (size_t i = 0; i < sizeof ISAS / sizeof ISAS[0]; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        REQUIRE(ts_nn_set_isa(ISAS[i]) == 0, "set %s", ISAS[i]);
        printf("  isa %s -> int8 path %s\n", ISAS[i], ts_gemm_i8_isa_name());
        for (size_t s = 0; s < sizeof S / sizeof S[0]; s++)
            for (int mode = 0; mode < 2; mode++)
                one_case(S[s][0], S[s][1], S[s][2], S[s][3], S[s][4], mode);
        ran++;
    }
    ts_nn_set_isa(ISAS[0]);
    CHECK(ran >= 1, "no ISA ran");
}

int main(void) {
    RUN(test_decoder_shapes);
    return test_summary();
}
