/* conv_i8.h - int8 dense 3x3 convolution (padding 1, stride 1 or 2, NHWC) for the W8A8
 * (Q-TinySAM) encoder: the patch embedding's two convolutions and the neck's 3x3 one.
 *
 * The float input x[H][W][Ci] is quantised once with the layer's static quantiser
 * (u8 = clamp(round(x / a_step) + a_zp, 0, 255), gemm_i8.h), then each band of output rows is
 * unfolded (im2col, row = output pixel, columns [ky][kx][ci], the padding as the code a_zp,
 * i.e. the real value 0) and multiplied by the int8 weight pack of Wq[Co][9 * Ci] (same column
 * order, per-output-channel scales) with gemm_i8's exact int32 accumulation and epilogue:
 *   y[p][n] = act((float)acc[p][n] * (a_step * w_scale[n]) + bias[n]).
 * The result equals ts_gemm_i8 on the explicit im2col matrix, bit for bit, on every ISA. */
#ifndef TS_CONV_I8_H
#define TS_CONV_I8_H

#include "nn/gemm_i8.h"

/* y[Ho][Wo][Co] (Co = ts_i8pack_n(w), 9 * Ci = ts_i8pack_k(w)); bias may be NULL; act
 * TS_ACT_NONE or TS_ACT_GELU. Threaded over bands of output rows. Returns 0 or
 * TINYSAM_E_NOMEM / TINYSAM_E_ARG (message set). */
int ts_conv3x3_i8_nhwc(const float *x, int H, int W, int Ci, int stride, float a_step, int a_zp,
                       const ts_i8pack *w, const float *bias, int act, float *y);

/* The im2col of output rows [oy0, oy1) of the quantised map xq[H][W][Ci]: cols[(oy - oy0) *
 * Wo + ox][(ky * 3 + kx) * Ci + ci], out-of-image taps set to pad (the zero point). */
void ts_im2col3x3_u8(const uint8_t *xq, int H, int W, int Ci, int stride, int oy0, int oy1,
                     uint8_t pad, uint8_t *cols);

#endif
