/* test_decoder_i8.c - the int8 GEMM on the mask decoder's shapes (model/mask_decoder.c, int8
 * model): exact int32 accumulators against a naive integer sum on every ISA path, for random
 * codes and for the extremes (uint8 0 / 255, weights -127 / 127 as the per-row quantiser makes
 * them, probability codes 0..127 / 0..255). Shapes (M x N x K): the token->image scores
 * (image tokens x 8 heads * tokens x 256), the probability x keys^T product (256 x 8 * tokens
 * x 4096), the shared layer-0 heads (tokens x 4096 x 16, tokens x 16 x 4096), the image->token
 * output (image tokens x 256 x 8 * tokens), both transposed convolutions (tokens x 4*64 x 256,
 * 4*tokens x 4*32 x 64) and the mask product (4*tokens x 16 x 128), with odd tails; and the
 * token-side Linears (tokens x 256/128/2048 x 256/128/2048, one row for the hypernetwork and IoU
 * heads) through the float-input path with its epilogue, exact, each row alone = in a batch. */
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

/* The token-side Linears' path: float rows quantised inside the GEMM (ts_gemm_i8_f32) with a
 * bias. X = (A - zp) * step with a power-of-two step quantises back to A exactly, so the output
 * must equal the integer reference's epilogue (float)acc * (step * scale[n]) + bias[n] bit for
 * bit; and each row alone (one prompt) must equal the same row of the M-row call (a batch). */
static void f32_case(int M, int N, int K, int zp) {
    const float step = 0.25f;
    float *X = malloc(sizeof(float) * (size_t)M * K), *sc = malloc(sizeof(float) * N);
    float *b = malloc(sizeof(float) * N), *Y = malloc(sizeof(float) * (size_t)M * N);
    float *y1 = malloc(sizeof(float) * N);
    int8_t *W = malloc((size_t)N * K);
    uint8_t *A = malloc((size_t)M * K);
    REQUIRE(X && sc && b && Y && y1 && W && A, "oom");
    for (size_t i = 0; i < (size_t)M * K; i++) {
        A[i] = (uint8_t)(next() % 256u);
        X[i] = (float)((int)A[i] - zp) * step;
    }
    for (size_t i = 0; i < (size_t)N * K; i++) W[i] = (int8_t)((int)(next() % 255u) - 127);
    for (int n = 0; n < N; n++) {
        sc[n] = (float)(next() % 1000u + 1) * 1e-5f;
        b[n] = (float)((int)(next() % 2001u) - 1000) * 1e-3f;
    }
    ts_i8pack *p = ts_i8pack_new(W, N, K, K, sc);
    REQUIRE(p, "pack");
    ts_i8_out o = {.bias = b, .C = Y, .ldc = N};
    ts_gemm_i8_f32(M, X, K, step, zp, p, &o);
    int bad = 0, rows = 0;
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            int32_t acc = 0;
            for (int k = 0; k < K; k++)
                acc += ((int32_t)A[(size_t)m * K + k] - zp) * W[(size_t)n * K + k];
            float ref = (float)acc * (step * sc[n]) + b[n];
            bad += ref != Y[(size_t)m * N + n];
        }
        ts_i8_out o1 = {.bias = b, .C = y1, .ldc = N};
        ts_gemm_i8_f32(1, X + (size_t)m * K, K, step, zp, p, &o1);
        rows += memcmp(y1, Y + (size_t)m * N, sizeof(float) * N) != 0;
    }
    CHECK(!bad, "%s: f32 %d x %d x %d (zp %d): %d outputs differ from the reference",
          ts_gemm_i8_isa_name(), M, N, K, zp, bad);
    CHECK(!rows, "%s: f32 %d x %d x %d: %d rows differ alone", ts_gemm_i8_isa_name(), M, N, K,
          rows);
    ts_i8pack_free(p);
    free(X), free(sc), free(b), free(Y), free(y1), free(W), free(A);
}

static void test_token_linears(void) {
    static const int S[][4] = {{7, 256, 256, 128}, {9, 128, 256, 128}, {7, 256, 128, 131},
                               {7, 2048, 256, 128}, {7, 256, 2048, 0},  {1, 32, 256, 0},
                               {1, 4, 256, 0},      {13, 256, 256, 128}};
    int ran = 0;
    for (size_t i = 0; i < sizeof ISAS / sizeof ISAS[0]; i++) {
        if (!ts_nn_isa_available(ISAS[i])) continue;
        REQUIRE(ts_nn_set_isa(ISAS[i]) == 0, "set %s", ISAS[i]);
        for (size_t s = 0; s < sizeof S / sizeof S[0]; s++) f32_case(S[s][0], S[s][1], S[s][2], S[s][3]);
        ran++;
    }
    ts_nn_set_isa(ISAS[0]);
    CHECK(ran >= 1, "no ISA ran");
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
        {7, 256, 256, 128, 255},   /* token-side Linears: self-attention projections */
        {9, 128, 256, 128, 255},   /* cross-attention token-side projections 256 -> 128 */
        {7, 256, 128, 131, 255},   /* their out_proj 128 -> 256 */
        {7, 2048, 256, 128, 255},  /* MLP lin1 */
        {7, 256, 2048, 0, 255},    /* MLP lin2 (post-ReLU input, zero point 0) */
        {1, 256, 256, 0, 255},     /* hypernetwork / IoU head: one row */
        {1, 32, 256, 0, 255},      /* hypernetwork output */
        {1, 4, 256, 0, 255},       /* IoU output */
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
    RUN(test_token_linears);
    return test_summary();
}
