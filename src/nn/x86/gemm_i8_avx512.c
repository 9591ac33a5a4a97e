/* gemm_i8_avx512.c - the AVX-512 VNNI int8 GEMM kernels (gemm_i8_isa.h): vpdpbusd multiplies
 * 4 consecutive uint8 activations by 4 int8 weights and adds the four products into an int32
 * lane without saturation (each sum is at most 4 * 255 * 128), so accumulation is exact.
 * Tile 12 rows x 32 columns: 24 zmm accumulators, 2 weight vectors, 1 broadcast. The Makefile
 * compiles *_avx512.c with -mavx512f/bw/vl/dq, not VNNI: the functions that use it carry the
 * target attribute, and the table is only chosen when the CPU reports avx512vnni. */
#include "nn/gemm_i8_isa.h"

#include <immintrin.h>
#include <string.h>

#define MR 12
#define NR 32
#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

static inline int32_t ld32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* [kcp/4][12][4] uint8; rare (partial panels, K % 4 != 0), so plain C */
static void vnni_pack_a(int m, int kc, int kcp, const uint8_t *A, int lda, void *Ap) {
    uint8_t *d = Ap;
    for (int g = 0; g < kcp / 4; g++)
        for (int r = 0; r < MR; r++)
            for (int e = 0; e < 4; e++) {
                int k = 4 * g + e;
                *d++ = r < m && k < kc ? A[(size_t)r * lda + k] : 0;
            }
}

/* Rows are addressed from four bases three rows apart plus rs and 2*rs (few registers). */
TGT static void vnni_kernel(int ng, const void *A, ptrdiff_t rs, ptrdiff_t gs, const void *Bp,
                            int32_t *C, int ldc, int acc) {
    __m512i c0[MR], c1[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) c0[r] = c1[r] = _mm512_setzero_si512();
    const uint8_t *p0 = A, *p3 = p0 + 3 * rs, *p6 = p0 + 6 * rs, *p9 = p0 + 9 * rs;
    const int8_t *b = Bp;
    for (int g = 0; g < ng; g++) {
        __m512i b0 = _mm512_load_si512((const void *)b),
                b1 = _mm512_load_si512((const void *)(b + 64));
        __m512i a;
#define TS_ROW(r, ptr, off)                                                                    \
    a = _mm512_set1_epi32(ld32(ptr + (off)));                                                  \
    c0[r] = _mm512_dpbusd_epi32(c0[r], a, b0);                                                 \
    c1[r] = _mm512_dpbusd_epi32(c1[r], a, b1);
        TS_ROW(0, p0, 0)
        TS_ROW(1, p0, rs)
        TS_ROW(2, p0, 2 * rs)
        TS_ROW(3, p3, 0)
        TS_ROW(4, p3, rs)
        TS_ROW(5, p3, 2 * rs)
        TS_ROW(6, p6, 0)
        TS_ROW(7, p6, rs)
        TS_ROW(8, p6, 2 * rs)
        TS_ROW(9, p9, 0)
        TS_ROW(10, p9, rs)
        TS_ROW(11, p9, 2 * rs)
#undef TS_ROW
        p0 += gs;
        p3 += gs;
        p6 += gs;
        p9 += gs;
        b += 2 * 64;
    }
#pragma GCC unroll 16
    for (int r = 0; r < MR; r++) {
        int32_t *cr = C + (size_t)r * ldc;
        if (acc) {
            c0[r] = _mm512_add_epi32(c0[r], _mm512_loadu_si512((const void *)cr));
            c1[r] = _mm512_add_epi32(c1[r], _mm512_loadu_si512((const void *)(cr + 16)));
        }
        _mm512_storeu_si512((void *)cr, c0[r]);
        _mm512_storeu_si512((void *)(cr + 16), c1[r]);
    }
}

TGT static inline __m512 epi16(const int32_t *acc, const int32_t *zc, const float *comb,
                               const float *bias, __mmask16 k) {
    __m512i v = _mm512_sub_epi32(_mm512_maskz_loadu_epi32(k, acc), _mm512_maskz_loadu_epi32(k, zc));
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_maskz_loadu_ps(k, comb));
    return bias ? _mm512_add_ps(f, _mm512_maskz_loadu_ps(k, bias)) : f;
}

TGT static void vnni_epi_row(const int32_t *acc, const int32_t *zc, const float *comb,
                             const float *bias, int n, float *y) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, epi16(acc + i, zc + i, comb + i, bias ? bias + i : NULL, 0xffff));
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(y + i, k,
                              epi16(acc + i, zc + i, comb + i, bias ? bias + i : NULL, k));
    }
}

/* round(x / step) (a true division, as the scalar formula), NaN -> 0, clamped to [lo, hi] in
 * float (no out-of-range conversion), then + zp */
TGT static inline __m512i q16(__m512 x, __m512 vs, __m512 lo, __m512 hi, __m512 vz) {
    __m512 r =
        _mm512_roundscale_ps(_mm512_div_ps(x, vs), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(r, r, _CMP_ORD_Q), r);
    r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
    return _mm512_cvtps_epi32(_mm512_add_ps(r, vz));
}

TGT static void vnni_quant_row(const float *x, int n, float step, int zp, int qlo, int qhi,
                               uint8_t *q) {
    __m512 vs = _mm512_set1_ps(step), lo = _mm512_set1_ps((float)qlo);
    __m512 hi = _mm512_set1_ps((float)qhi), vz = _mm512_set1_ps((float)zp);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm_storeu_si128((__m128i *)(q + i),
                         _mm512_cvtepi32_epi8(q16(_mm512_loadu_ps(x + i), vs, lo, hi, vz)));
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_cvtepi32_storeu_epi8(q + i, k,
                                         q16(_mm512_maskz_loadu_ps(k, x + i), vs, lo, hi, vz));
    }
}

TGT static void vnni_add_row(float *c, const float *a, const float *y, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(c + i, _mm512_add_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(y + i)));
    if (i < n) {
        __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(c + i, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, a + i),
                                                      _mm512_maskz_loadu_ps(k, y + i)));
    }
}

const ts_i8_isa ts_i8_isa_avx512vnni = {
    .name = "avx512vnni",
    .mr = MR,
    .nr = NR,
    .kg = 4,
    .bsize = 1,
    .asize = 1,
    .a_inplace = 1,
    .pack_a = vnni_pack_a,
    .kernel = vnni_kernel,
    .epi_row = vnni_epi_row,
    .quant_row = vnni_quant_row,
    .add_row = vnni_add_row,
};
