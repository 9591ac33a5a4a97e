/* gemm_i8_avx2.c - the AVX2 int8 GEMM kernels (gemm_i8_isa.h), for CPUs without VNNI.
 *
 * Saturation: vpmaddubsw (u8 x s8, pairs added into int16) would saturate here, since the
 * activations use the full uint8 range: 2 * 255 * 127 = 64770 > 32767 (it is only safe for
 * 7-bit activations). So both operands are widened to 16 bit instead - the weights once, at
 * packing (int16 pairs of consecutive k), the activations when a panel is packed (uint16
 * pairs) - and multiplied with vpmaddwd, which adds two 16x16-bit products into an int32 lane:
 * at most 2 * 255 * 128 = 65280, no saturation (vpmaddwd only saturates for
 * -32768 * -32768 twice, impossible with these ranges). Tile 6 rows x 16 columns: 12 ymm
 * accumulators. */
#include "nn/gemm_i8_isa.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

#define MR 6
#define NR 16

static inline int32_t ld32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* [kcp/2][6][2] uint16 */
static void avx2_pack_a(int m, int kc, int kcp, const uint8_t *A, int lda, void *Ap) {
    uint16_t *d = Ap;
    for (int r = 0; r < MR; r++) {
        const uint8_t *ar = A + (size_t)r * lda;
        uint16_t *dr = d + 2 * r;
        if (r >= m) {
            for (int kp = 0; kp < kcp / 2; kp++) dr[kp * 2 * MR] = dr[kp * 2 * MR + 1] = 0;
            continue;
        }
        int k = 0;
        for (; k + 2 <= kc; k += 2) {
            dr[k * MR] = ar[k];
            dr[k * MR + 1] = ar[k + 1];
        }
        for (; k < kcp; k++) dr[(k / 2) * 2 * MR + (k & 1)] = k < kc ? ar[k] : 0;
    }
}

static void avx2_kernel(int ng, const void *A, ptrdiff_t rs, ptrdiff_t gs, const void *Bp,
                        int32_t *C, int ldc, int acc) {
    __m256i c0[MR], c1[MR];
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) c0[r] = c1[r] = _mm256_setzero_si256();
    const uint8_t *a = A;
    const int16_t *b = Bp;
    for (int g = 0; g < ng; g++) {
        __m256i b0 = _mm256_load_si256((const __m256i *)b);
        __m256i b1 = _mm256_load_si256((const __m256i *)(b + 16));
#pragma GCC unroll 8
        for (int r = 0; r < MR; r++) {
            __m256i av = _mm256_set1_epi32(ld32(a + r * rs));
            c0[r] = _mm256_add_epi32(c0[r], _mm256_madd_epi16(av, b0));
            c1[r] = _mm256_add_epi32(c1[r], _mm256_madd_epi16(av, b1));
        }
        a += gs;
        b += 32;
    }
#pragma GCC unroll 8
    for (int r = 0; r < MR; r++) {
        int32_t *cr = C + (size_t)r * ldc;
        if (acc) {
            c0[r] = _mm256_add_epi32(c0[r], _mm256_loadu_si256((const __m256i *)cr));
            c1[r] = _mm256_add_epi32(c1[r], _mm256_loadu_si256((const __m256i *)(cr + 8)));
        }
        _mm256_storeu_si256((__m256i *)cr, c0[r]);
        _mm256_storeu_si256((__m256i *)(cr + 8), c1[r]);
    }
}

static void avx2_epi_row(const int32_t *acc, const int32_t *zc, const float *comb,
                         const float *bias, int n, float *y) {
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i v = _mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(acc + i)),
                                     _mm256_loadu_si256((const __m256i *)(zc + i)));
        __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_loadu_ps(comb + i));
        if (bias) f = _mm256_add_ps(f, _mm256_loadu_ps(bias + i));
        _mm256_storeu_ps(y + i, f);
    }
    for (; i < n; i++) {
        int32_t v = (int32_t)((uint32_t)acc[i] - (uint32_t)zc[i]);
        float f = (float)v * comb[i];
        y[i] = bias ? f + bias[i] : f;
    }
}

static void avx2_quant_row(const float *x, int n, float step, int zp, int qlo, int qhi,
                           uint8_t *q) {
    __m256 vs = _mm256_set1_ps(step), lo = _mm256_set1_ps((float)qlo);
    __m256 hi = _mm256_set1_ps((float)qhi), vz = _mm256_set1_ps((float)zp);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 r = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + i), vs),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        r = _mm256_and_ps(r, _mm256_cmp_ps(r, r, _CMP_ORD_Q)); /* NaN -> 0 */
        r = _mm256_min_ps(_mm256_max_ps(r, lo), hi);
        __m256i v = _mm256_cvtps_epi32(_mm256_add_ps(r, vz));
        __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        _mm_storel_epi64((__m128i *)(q + i), _mm_packus_epi16(w, w));
    }
    for (; i < n; i++) { /* as quant.h ts_quant_u8_range */
        float r = nearbyintf(x[i] / step);
        if (r != r) r = 0.0f;
        r = r < (float)qlo ? (float)qlo : r > (float)qhi ? (float)qhi : r;
        q[i] = (uint8_t)((int)r + zp);
    }
}

static void avx2_add_row(float *c, const float *a, const float *y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(c + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(y + i)));
    for (; i < n; i++) c[i] = a[i] + y[i];
}

const ts_i8_isa ts_i8_isa_avx2 = {
    .name = "avx2",
    .mr = MR,
    .nr = NR,
    .kg = 2,
    .bsize = 2,
    .asize = 2,
    .a_inplace = 0,
    .pack_a = avx2_pack_a,
    .kernel = avx2_kernel,
    .epi_row = avx2_epi_row,
    .quant_row = avx2_quant_row,
    .add_row = avx2_add_row,
};
