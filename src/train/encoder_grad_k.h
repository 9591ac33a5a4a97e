/* encoder_grad_k.h - element-wise and depthwise kernels of the encoder backward
 * (encoder_grad.c), one table per ISA. Internal to src/train/encoder_grad*.c. Every kernel
 * works on a row range given by its caller (a fixed task of ts_parallel_for), so results do
 * not depend on the thread count. Per-channel sums accumulate in double. */
#ifndef TS_TRAIN_ENCODER_GRAD_K_H
#define TS_TRAIN_ENCODER_GRAD_K_H

#include <stddef.h>

#define TS_EG_DWMAX 1024 /* widest depthwise convolution */

typedef struct {
    /* dy[i] *= GELU'(x[i]) over n values */
    void (*dgelu)(const float *x, size_t n, float *dy);
    /* rows x co of r: v = r * al + sh (one rounding), v += res when res != NULL;
     * dgelu == 0: out = v; dgelu != 0: out[i] *= GELU'(v) (out holds an upstream gradient) */
    void (*bn_rows)(const float *r, const float *res, const float *al, const float *sh,
                    size_t rows, int co, int dgelu, float *out);
    /* BatchNorm (eval) backward on rows x co, optionally through the GELU after it: d = din,
     * times GELU'(r * al + sh (+ res)) when dg; dcopy = d when dcopy != NULL; sg += d * (r -
     * mean) * rstd, sb += d; dout = d * al (dout may be din) */
    void (*bn_bwd_rows)(const float *r, const float *res, const float *al, const float *sh,
                        const float *mean, const float *rstd, size_t rows, int co, int dg,
                        const float *din, float *dout, float *dcopy, double *sg, double *sb);
    /* LayerNorm backward over rows x C of the forward input x (biased variance, eps):
     * dx = (or += when acc) the input gradient of dy (dx may equal dy unless acc);
     * aw += dy * xhat, ab += dy per channel */
    void (*ln_bwd_rows)(const float *x, const float *dy, const float *w, float eps, size_t rows,
                        int C, int acc, float *dx, double *aw, double *ab);
    /* Softmax backward of one attention matrix, rows x N: the forward output P, the gradient of
     * P in dP (overwritten): dS = P * (dP - rowsum(dP * P)); dab[bidx[i][k]] += dS (the
     * bias-table gradient); dP = dS * scale */
    void (*softmax_bwd)(const float *P, float *dP, int N, const int *bidx, float scale,
                        double *dab);
    /* a[k] += sum over rows of x[row][k], k < n */
    void (*colsum_rows)(const float *x, size_t rows, int n, double *a);
    /* Depthwise 3x3 (pad 1, stride s) backward on x[H][W][C], dr[Ho][Wo][C], w9[9][C]:
     * a[t][k] (9 x C, double) += the weight gradient of output rows [oy0, oy1) (float sums per
     * row, flushed into a); dx rows [iy0, iy1) += the input gradient (dx may be NULL). */
    void (*dw_bwd)(const float *w9, const float *x, const float *dr, float *dx, int H, int W,
                   int C, int s, int oy0, int oy1, int iy0, int iy1, double *a);
} ts_eg_kern;

/* The AVX-512 table (encoder_grad_avx512.c); only called when the CPU has AVX-512. */
const ts_eg_kern *ts_eg_kern_avx512(void);

#endif
