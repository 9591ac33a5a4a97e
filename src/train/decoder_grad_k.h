/* decoder_grad_k.h - AVX-512 element-wise kernels of the float decoder backward
 * (decoder_grad.c; portable versions there). Internal to src/train/decoder_grad*.c. Only
 * called when the nn dispatch runs AVX-512 (ts_nn_isa_name() is "avx512"). */
#ifndef TS_TRAIN_DECODER_GRAD_K_H
#define TS_TRAIN_DECODER_GRAD_K_H

#include <stddef.h>

/* dx[i] = dy[i] * GELU'(x[i]) (erf form; |error of GELU'| below 2e-7). */
void ts_dgf_gelu_bwd_avx512(const float *x, size_t n, const float *dy, float *dx);
/* Row LayerNorm of x[M][C] (C a multiple of 16; statistics in double):
 * y = (x - mean) / sqrt(var + eps) * w + b. */
void ts_dgf_ln_fwd_avx512(const float *x, int M, int C, const float *w, const float *b,
                          double eps, float *y);
/* Its backward: dx += input gradient; dw += dy * xhat, db += dy (row by row, in float). */
void ts_dgf_ln_bwd_avx512(const float *x, int M, int C, const float *w, double eps,
                          const float *dy, float *dx, float *dw, float *db);

#endif
