/* ref.c - plain-C reference kernels: the ground truth for the SIMD versions' tests,
 * and the portable fallback. */
#include "nn/nn.h"

#include <math.h>

void ts_gemm_ref(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                 int b_trans, float *C, int ldc, float beta) {
    for (int m = 0; m < M; m++) {
        for (int n = 0; n < N; n++) {
            float acc = 0.0f;
            if (b_trans)
                for (int k = 0; k < K; k++) acc += A[(size_t)m * lda + k] * B[(size_t)n * ldb + k];
            else
                for (int k = 0; k < K; k++) acc += A[(size_t)m * lda + k] * B[(size_t)k * ldb + n];
            float *c = &C[(size_t)m * ldc + n];
            *c = beta != 0.0f ? *c + acc : acc;
        }
    }
}

void ts_layernorm_to(const float *x, float *y, int M, int C, const float *w, const float *b,
                     float eps) {
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * C;
        float *yr = y + (size_t)m * C;
        double s = 0;
        for (int c = 0; c < C; c++) s += xr[c];
        float mean = (float)(s / C);
        double v = 0;
        for (int c = 0; c < C; c++) {
            double d = (double)xr[c] - mean;
            v += d * d;
        }
        float rstd = 1.0f / sqrtf((float)(v / C) + eps);
        for (int c = 0; c < C; c++) yr[c] = (xr[c] - mean) * rstd * w[c] + b[c];
    }
}

void ts_layernorm(float *x, int M, int C, const float *w, const float *b, float eps) {
    ts_layernorm_to(x, x, M, C, w, b, eps);
}

void ts_gelu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] * 0.5f * (1.0f + erff(x[i] * 0.70710678118654752f));
}

void ts_relu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void ts_softmax_rows(float *x, int M, int N) {
    for (int m = 0; m < M; m++) {
        float *r = x + (size_t)m * N;
        float mx = r[0];
        for (int i = 1; i < N; i++) mx = r[i] > mx ? r[i] : mx;
        float s = 0.0f;
        for (int i = 0; i < N; i++) {
            r[i] = expf(r[i] - mx);
            s += r[i];
        }
        float inv = 1.0f / s;
        for (int i = 0; i < N; i++) r[i] *= inv;
    }
}

void ts_linear(const float *x, int M, int K, const float *W, const float *bias, int N, float *y) {
    ts_gemm(M, N, K, x, K, W, K, 1, y, N, 0.0f);
    if (bias)
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) y[(size_t)m * N + n] += bias[n];
}
