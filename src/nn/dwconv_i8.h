/* dwconv_i8.h - int8 depthwise 3x3 convolution (padding 1, stride 1 or 2, NHWC), one output
 * row from its three input rows, for the W8A8 encoder's MBConv / PatchMerging / local_conv
 * (the float kernel is nn.h ts_dwconv3x3_nhwc_rows3):
 *   acc[ox][c] = sum over the in-image taps of (rows[ky][ix][c] - zp) * w9[ky*3 + kx][c]
 *                (exact int32; NULL rows and x outside [0, W) are the padding, real 0)
 *   y[ox][c]   = act((float)acc * comb[c] + (bias ? bias[c] : 0))   (mul, then add)
 * with comb[c] = a_step * w_scale[c]. AVX-512 (widened to int32, vpmulld) when nn.h's ISA is
 * "avx512", else portable C. */
#ifndef TS_DWCONV_I8_H
#define TS_DWCONV_I8_H

#include <stdint.h>

void ts_dwconv3x3_i8_rows3(const uint8_t *const rows[3], int W, int C, int stride, int zp,
                           const int8_t *w9, const float *comb, const float *bias, int act,
                           float *y_row);
/* The portable kernel, whatever the ISA (the reference path of the tests). */
void ts_dwconv3x3_i8_rows3_scalar(const uint8_t *const rows[3], int W, int C, int stride,
                                  int zp, const int8_t *w9, const float *comb,
                                  const float *bias, int act, float *y_row);

#endif
