/* conv_i8.c - int8 dense 3x3 convolution (conv_i8.h): quantise once, im2col per band of output
 * rows into a task buffer, the int8 GEMM on the band. */
#include "nn/conv_i8.h"
#include "core.h"
#include "nn/nn.h"
#include "threads.h"
#include "tinysam.h"

#include <stdlib.h>
#include <string.h>

#define BAND_PIXELS 512 /* output pixels per task, about (a few 12-row panels per 32 columns) */

void ts_im2col3x3_u8(const uint8_t *xq, int H, int W, int Ci, int stride, int oy0, int oy1,
                     uint8_t pad, uint8_t *cols) {
    const int Wo = (W - 1) / stride + 1;
    const size_t K = (size_t)9 * Ci;
    for (int oy = oy0; oy < oy1; oy++)
        for (int ox = 0; ox < Wo; ox++) {
            uint8_t *d = cols + ((size_t)(oy - oy0) * Wo + ox) * K;
            for (int ky = 0; ky < 3; ky++) {
                const int iy = oy * stride - 1 + ky;
                for (int kx = 0; kx < 3; kx++, d += Ci) {
                    const int ix = ox * stride - 1 + kx;
                    if (iy < 0 || iy >= H || ix < 0 || ix >= W)
                        memset(d, pad, (size_t)Ci);
                    else
                        memcpy(d, xq + ((size_t)iy * W + ix) * Ci, (size_t)Ci);
                }
            }
        }
}

typedef struct {
    const uint8_t *xq;
    int H, W, Ci, stride, Wo, Ho, rows_per, a_zp;
    float a_step;
    const ts_i8pack *w;
    const float *bias;
    int act;
    float *y;
    int failed;
} conv_job;

static void conv_band(void *ctx, int task, int tid) {
    (void)tid;
    conv_job *j = ctx;
    const int oy0 = task * j->rows_per, oy1 = TS_MIN(j->Ho, oy0 + j->rows_per);
    const int M = (oy1 - oy0) * j->Wo, K = 9 * j->Ci, N = ts_i8pack_n(j->w);
    uint8_t *cols = malloc((size_t)M * K);
    if (!cols) {
        j->failed = 1; /* a plain store: any task failing is all that is read */
        return;
    }
    ts_im2col3x3_u8(j->xq, j->H, j->W, j->Ci, j->stride, oy0, oy1, (uint8_t)j->a_zp, cols);
    ts_i8_out o = {.bias = j->bias, .act = j->act, .C = j->y + (size_t)oy0 * j->Wo * N, .ldc = N};
    ts_gemm_i8_serial(M, cols, K, j->a_step, j->a_zp, j->w, &o);
    free(cols);
}

int ts_conv3x3_i8_nhwc(const float *x, int H, int W, int Ci, int stride, float a_step, int a_zp,
                       const ts_i8pack *w, const float *bias, int act, float *y) {
    if (!x || !w || !y || H < 1 || W < 1 || Ci < 1 || (stride != 1 && stride != 2) ||
        ts_i8pack_k(w) != 9 * Ci || a_zp < 0 || a_zp > 255 || !(a_step > 0.0f))
        return ts_error(TINYSAM_E_ARG, "ts_conv3x3_i8_nhwc: bad argument");
    uint8_t *xq = malloc((size_t)H * W * Ci);
    if (!xq) return ts_error(TINYSAM_E_NOMEM, "out of memory (int8 convolution input)");
    ts_quantize_u8(x, H * W, Ci, Ci, a_step, a_zp, xq, Ci);
    const int Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
    conv_job j = {xq, H, W, Ci, stride, Wo, Ho, TS_MAX(1, BAND_PIXELS / Wo), a_zp, a_step, w,
                  bias, act, y, 0};
    ts_parallel_for((Ho + j.rows_per - 1) / j.rows_per, conv_band, &j);
    free(xq);
    return j.failed ? ts_error(TINYSAM_E_NOMEM, "out of memory (int8 convolution)") : 0;
}
