/* attn_i8_avx512.c - the AVX-512 VNNI attention product of attn_i8.h: per block of 16 packed
 * columns and up to 4 rows, vpdpbusd of a broadcast group of 4 uint8 (A) with the 16 columns'
 * 4 int8 (B): exact int32 sums (at most 4 * 255 * 127 per instruction), the zero-point term
 * a_zp * bsum subtracted at the store (masked on the column tail). Target attribute as in
 * gemm_i8_avx512.c: the Makefile's AVX-512 flags do not include VNNI. */
#include "nn/attn_i8.h"

#include <immintrin.h>
#include <string.h>

#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

void ts_i8pk_gemm_avx512vnni(int M, int N, int K, const uint8_t *A, int lda, int a_zp,
                             const int8_t *Bp, const int32_t *bsum, int32_t *C, int ldc);

static inline int32_t ld32(const uint8_t *p) {
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

TGT void ts_i8pk_gemm_avx512vnni(int M, int N, int K, const uint8_t *A, int lda, int a_zp,
                                 const int8_t *Bp, const int32_t *bsum, int32_t *C, int ldc) {
    const int Np = ts_i8pk_np(N), G = ts_i8pk_kp(K) / 4;
    const __m512i zp = _mm512_set1_epi32(a_zp);
    for (int n0 = 0; n0 < N; n0 += 16) {
        const __mmask16 mk = N - n0 >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (N - n0)) - 1);
        const __m512i zc = _mm512_mullo_epi32(zp, _mm512_loadu_si512(bsum + n0));
        const int8_t *b0 = Bp + (size_t)n0 * 4;
        int m = 0;
        for (; m + 4 <= M; m += 4) {
            const uint8_t *a = A + (size_t)m * lda;
            __m512i c0 = _mm512_setzero_si512(), c1 = c0, c2 = c0, c3 = c0;
            for (int g = 0; g < G; g++) {
                const __m512i b = _mm512_loadu_si512(b0 + (size_t)g * Np * 4);
                c0 = _mm512_dpbusd_epi32(c0, _mm512_set1_epi32(ld32(a + 4 * g)), b);
                c1 = _mm512_dpbusd_epi32(c1, _mm512_set1_epi32(ld32(a + lda + 4 * g)), b);
                c2 = _mm512_dpbusd_epi32(c2, _mm512_set1_epi32(ld32(a + 2 * (size_t)lda + 4 * g)), b);
                c3 = _mm512_dpbusd_epi32(c3, _mm512_set1_epi32(ld32(a + 3 * (size_t)lda + 4 * g)), b);
            }
            int32_t *c = C + (size_t)m * ldc + n0;
            _mm512_mask_storeu_epi32(c, mk, _mm512_sub_epi32(c0, zc));
            _mm512_mask_storeu_epi32(c + ldc, mk, _mm512_sub_epi32(c1, zc));
            _mm512_mask_storeu_epi32(c + 2 * (size_t)ldc, mk, _mm512_sub_epi32(c2, zc));
            _mm512_mask_storeu_epi32(c + 3 * (size_t)ldc, mk, _mm512_sub_epi32(c3, zc));
        }
        for (; m < M; m++) {
            const uint8_t *a = A + (size_t)m * lda;
            __m512i c0 = _mm512_setzero_si512();
            for (int g = 0; g < G; g++)
                c0 = _mm512_dpbusd_epi32(c0, _mm512_set1_epi32(ld32(a + 4 * g)),
                                         _mm512_loadu_si512(b0 + (size_t)g * Np * 4));
            _mm512_mask_storeu_epi32(C + (size_t)m * ldc + n0, mk, _mm512_sub_epi32(c0, zc));
        }
    }
}

void ts_i8pk_to_float_avx512(const int32_t *c, int n, float scale, float *y);
float ts_i8pk_row_max_avx512(const float *x, int n);

void ts_i8pk_to_float_avx512(const int32_t *c, int n, float scale, float *y) {
    const __m512 s = _mm512_set1_ps(scale);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 mk = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        __m512 f = _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(mk, c + i));
        _mm512_mask_storeu_ps(y + i, mk, _mm512_mul_ps(f, s));
    }
}

float ts_i8pk_row_max_avx512(const float *x, int n) {
    __m512 m = _mm512_set1_ps(x[0]);
    for (int i = 0; i < n; i += 16) {
        const __mmask16 mk = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        m = _mm512_mask_max_ps(m, mk, m, _mm512_maskz_loadu_ps(mk, x + i));
    }
    return _mm512_reduce_max_ps(m);
}
