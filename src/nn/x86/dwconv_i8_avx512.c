/* dwconv_i8_avx512.c - the AVX-512 int8 depthwise 3x3 row (dwconv_i8.h): 16 channels per
 * vector, codes widened to int32 (vpmovzxbd / vpmovsxbd), (u - zp) * w by vpmulld, exact;
 * then the float epilogue (mul, add) as the portable kernel; masked channel tail. */
#include "nn/dwconv_i8.h"
#include "nn/nn.h"

#include <immintrin.h>

void ts_dwconv3x3_i8_rows3_avx512(const uint8_t *const rows[3], int W, int C, int stride,
                                  int zp, const int8_t *w9, const float *comb,
                                  const float *bias, int act, float *y_row);

void ts_dwconv3x3_i8_rows3_avx512(const uint8_t *const rows[3], int W, int C, int stride,
                                  int zp, const int8_t *w9, const float *comb,
                                  const float *bias, int act, float *y_row) {
    const int Wo = (W - 1) / stride + 1;
    const __m512i vzp = _mm512_set1_epi32(zp);
    for (int ox = 0; ox < Wo; ox++) {
        float *y = y_row + (size_t)ox * C;
        for (int c0 = 0; c0 < C; c0 += 16) {
            const int nc = C - c0 < 16 ? C - c0 : 16;
            const __mmask16 mk = (__mmask16)((1u << nc) - 1);
            __m512i acc = _mm512_setzero_si512();
            for (int ky = 0; ky < 3; ky++) {
                if (!rows[ky]) continue;
                for (int kx = 0; kx < 3; kx++) {
                    const int ix = ox * stride - 1 + kx;
                    if (ix < 0 || ix >= W) continue;
                    __m512i u = _mm512_cvtepu8_epi32(
                        _mm_maskz_loadu_epi8(mk, rows[ky] + (size_t)ix * C + c0));
                    __m512i w = _mm512_cvtepi8_epi32(
                        _mm_maskz_loadu_epi8(mk, w9 + (size_t)(ky * 3 + kx) * C + c0));
                    acc = _mm512_add_epi32(acc, _mm512_mullo_epi32(_mm512_sub_epi32(u, vzp), w));
                }
            }
            __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), _mm512_maskz_loadu_ps(mk, comb + c0));
            if (bias) f = _mm512_add_ps(f, _mm512_maskz_loadu_ps(mk, bias + c0));
            _mm512_mask_storeu_ps(y + c0, mk, f);
        }
        if (act == TS_ACT_GELU) ts_gelu(y, (size_t)C);
    }
}
