/* nn.h - float32 kernels used by the model graphs. Row-major everywhere.
 * Every kernel has a plain-C reference (*_ref, nn/ref.c) that the tests compare the
 * dispatched (SIMD, threaded) version against. */
#ifndef TS_NN_H
#define TS_NN_H

#include <stddef.h>

/* C[M x N] (ldc) = beta*C + A[M x K] (lda) * op(B)
 * op(B) = B (K x N, ldb) when b_trans = 0, or B^T with B stored N x K (ldb) when 1.
 * beta is 0 (overwrite; C may hold garbage/NaN) or 1 (accumulate). */
void ts_gemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb, int b_trans,
             float *C, int ldc, float beta);
void ts_gemm_ref(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                 int b_trans, float *C, int ldc, float beta);

/* PyTorch Linear: y[M x N] = x[M x K] * W^T + bias, W stored N x K, bias may be NULL. */
void ts_linear(const float *x, int M, int K, const float *W, const float *bias, int N, float *y);

/* LayerNorm over the last axis of x[M x C] (in place), biased variance, then *w + b. */
void ts_layernorm(float *x, int M, int C, const float *w, const float *b, float eps);
/* Copying variant: y = LN(x). */
void ts_layernorm_to(const float *x, float *y, int M, int C, const float *w, const float *b,
                     float eps);

/* Exact-erf GELU x * 0.5 * (1 + erf(x / sqrt(2))), in place over n values. */
void ts_gelu(float *x, size_t n);
void ts_relu(float *x, size_t n);

/* Softmax over each row of x[M x N], in place (max-subtracted). */
void ts_softmax_rows(float *x, int M, int N);

#endif
