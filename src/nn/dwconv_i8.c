/* dwconv_i8.c - the int8 depthwise 3x3 row (dwconv_i8.h): portable kernel and selection. */
#include "nn/dwconv_i8.h"
#include "nn/nn.h"

#include <string.h>

void ts_dwconv3x3_i8_rows3_avx512(const uint8_t *const rows[3], int W, int C, int stride,
                                  int zp, const int8_t *w9, const float *comb,
                                  const float *bias, int act, float *y_row);

void ts_dwconv3x3_i8_rows3_scalar(const uint8_t *const rows[3], int W, int C, int stride,
                                  int zp, const int8_t *w9, const float *comb,
                                  const float *bias, int act, float *y_row) {
    const int Wo = (W - 1) / stride + 1;
    for (int ox = 0; ox < Wo; ox++) {
        float *y = y_row + (size_t)ox * C;
        for (int c = 0; c < C; c++) {
            int32_t acc = 0;
            for (int ky = 0; ky < 3; ky++) {
                if (!rows[ky]) continue;
                for (int kx = 0; kx < 3; kx++) {
                    int ix = ox * stride - 1 + kx;
                    if (ix < 0 || ix >= W) continue;
                    acc += ((int32_t)rows[ky][(size_t)ix * C + c] - zp) *
                           w9[(size_t)(ky * 3 + kx) * C + c];
                }
            }
            float f = (float)acc * comb[c];
            y[c] = bias ? f + bias[c] : f;
        }
        if (act == TS_ACT_GELU) ts_gelu(y, (size_t)C);
    }
}

void ts_dwconv3x3_i8_rows3(const uint8_t *const rows[3], int W, int C, int stride, int zp,
                           const int8_t *w9, const float *comb, const float *bias, int act,
                           float *y_row) {
    if (!strcmp(ts_nn_isa_name(), "avx512"))
        ts_dwconv3x3_i8_rows3_avx512(rows, W, C, stride, zp, w9, comb, bias, act, y_row);
    else
        ts_dwconv3x3_i8_rows3_scalar(rows, W, C, stride, zp, w9, comb, bias, act, y_row);
}
