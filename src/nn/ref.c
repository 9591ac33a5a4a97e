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

void ts_layernorm_to_ref(const float *x, float *y, int M, int C, const float *w,
                         const float *b, float eps) {
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

void ts_gelu_ref(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] * 0.5f * (1.0f + erff(x[i] * 0.70710678118654752f));
}

void ts_relu(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = x[i] > 0.0f ? x[i] : 0.0f;
}

void ts_softmax_rows_ref(float *x, int M, int N) {
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

/* Direct loops over the taps; accumulation in double so that it is a trustworthy oracle. */
void ts_dwconv3x3_nhwc_ref(const float *x, int H, int W, int C, int stride, const float *w9,
                           const float *bias, int act, float *y) {
    int Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
    for (int oy = 0; oy < Ho; oy++)
        for (int ox = 0; ox < Wo; ox++)
            for (int c = 0; c < C; c++) {
                double acc = bias ? bias[c] : 0.0;
                for (int ky = 0; ky < 3; ky++)
                    for (int kx = 0; kx < 3; kx++) {
                        int iy = oy * stride - 1 + ky, ix = ox * stride - 1 + kx;
                        if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                        acc += (double)x[((size_t)iy * W + ix) * C + c] * w9[(ky * 3 + kx) * C + c];
                    }
                float v = (float)acc;
                if (act == TS_ACT_GELU) ts_gelu_ref(&v, 1);
                y[((size_t)oy * Wo + ox) * C + c] = v;
            }
}

void ts_conv3x3_nhwc_ref(const float *x, int H, int W, int Ci, int stride, const float *w,
                         const float *bias, int Co, int act, float *y) {
    int Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
    for (int oy = 0; oy < Ho; oy++)
        for (int ox = 0; ox < Wo; ox++)
            for (int co = 0; co < Co; co++) {
                double acc = bias ? bias[co] : 0.0;
                for (int t = 0; t < 9; t++) {
                    int iy = oy * stride - 1 + t / 3, ix = ox * stride - 1 + t % 3;
                    if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                    const float *xp = x + ((size_t)iy * W + ix) * Ci;
                    const float *wp = w + ((size_t)co * 9 + t) * Ci;
                    for (int ci = 0; ci < Ci; ci++) acc += (double)xp[ci] * wp[ci];
                }
                float v = (float)acc;
                if (act == TS_ACT_GELU) ts_gelu_ref(&v, 1);
                y[((size_t)oy * Wo + ox) * Co + co] = v;
            }
}
