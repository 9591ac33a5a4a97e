/* decoder_grad_avx512.c - AVX-512 versions of the float decoder backward's element-wise
 * passes: GELU', row LayerNorm forward and backward (decoder_grad_k.h). LayerNorm statistics
 * and normalised values are computed in double lanes, as in the portable versions (float
 * statistics move the gradients measurably away from the reference). */
#include "train/decoder_grad_k.h"

#include <immintrin.h>
#include <math.h>

/* exp(v) for v <= 0 (clamped at -87): 2^n * p(r), r = v - n ln2, degree-6 Taylor on
 * |r| <= ln2/2 (relative error ~2e-7). */
static inline __m512 exp_neg(__m512 v) {
    v = _mm512_max_ps(v, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), v);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* GELU'(x) = Phi(x) + x phi(x); the upper tail Q = 1 - Phi(|x|) = erfc(|x|/sqrt2)/2 by
 * Abramowitz-Stegun 7.1.26 (|error| <= 1.5e-7 on erf), sharing exp(-x^2/2) with phi. */
static inline __m512 dgelu16(__m512 x) {
    const __m512 ax = _mm512_abs_ps(x);
    const __m512 e = exp_neg(_mm512_mul_ps(_mm512_mul_ps(x, x), _mm512_set1_ps(-0.5f)));
    const __m512 z = _mm512_mul_ps(ax, _mm512_set1_ps(0.70710678118654752f));
    const __m512 t = _mm512_div_ps(_mm512_set1_ps(1.0f),
                                   _mm512_fmadd_ps(z, _mm512_set1_ps(0.3275911f),
                                                   _mm512_set1_ps(1.0f)));
    __m512 p = _mm512_set1_ps(1.061405429f);
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
    p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
    const __m512 q = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(p, t), e), _mm512_set1_ps(0.5f));
    const __mmask16 neg = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
    const __m512 phi_cdf = _mm512_mask_blend_ps(neg, _mm512_sub_ps(_mm512_set1_ps(1.0f), q), q);
    return _mm512_fmadd_ps(_mm512_mul_ps(x, e), _mm512_set1_ps(0.39894228040143268f), phi_cdf);
}

void ts_dgf_gelu_bwd_avx512(const float *x, size_t n, const float *dy, float *dx) {
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(dx + i, _mm512_mul_ps(_mm512_loadu_ps(dy + i),
                                               dgelu16(_mm512_loadu_ps(x + i))));
    if (i < n) {
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(dx + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, dy + i),
                                                       dgelu16(_mm512_maskz_loadu_ps(k, x + i))));
    }
}

/* One row's mean (broadcast into *mu) and 1 / sqrt(variance + eps), in double lanes. */
static double row_rstd(const float *r, int C, double eps, __m512d *mu) {
    __m512d s = _mm512_setzero_pd();
    for (int c = 0; c < C; c += 8) s = _mm512_add_pd(s, _mm512_cvtps_pd(_mm256_loadu_ps(r + c)));
    *mu = _mm512_set1_pd(_mm512_reduce_add_pd(s) / C);
    __m512d v = _mm512_setzero_pd();
    for (int c = 0; c < C; c += 8) {
        __m512d d = _mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(r + c)), *mu);
        v = _mm512_fmadd_pd(d, d, v);
    }
    return 1.0 / sqrt(_mm512_reduce_add_pd(v) / C + eps);
}

/* Statistics and xhat in double lanes, as the scalar version; then * w + b in float. */
void ts_dgf_ln_fwd_avx512(const float *x, int M, int C, const float *w, const float *b,
                          double eps, float *y) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * C;
        float *o = y + (size_t)m * C;
        __m512d mu;
        const __m512d rs = _mm512_set1_pd(row_rstd(r, C, eps, &mu));
        for (int c = 0; c < C; c += 8) {
            __m256 xh = _mm512_cvtpd_ps(
                _mm512_mul_pd(_mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(r + c)), mu), rs));
            _mm256_storeu_ps(o + c, _mm256_add_ps(_mm256_mul_ps(xh, _mm256_loadu_ps(w + c)),
                                                  _mm256_loadu_ps(b + c)));
        }
    }
}

/* In double lanes (8 wide), as the scalar version: the input gradient is a difference of
 * nearly equal terms. */
void ts_dgf_ln_bwd_avx512(const float *x, int M, int C, const float *w, double eps,
                          const float *dy, float *dx, float *dw, float *db) {
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * C, *g = dy + (size_t)m * C;
        float *o = dx + (size_t)m * C;
        __m512d mu;
        const double rsv = row_rstd(r, C, eps, &mu);
        const __m512d rs = _mm512_set1_pd(rsv);
        __m512d sg = _mm512_setzero_pd(), sgx = _mm512_setzero_pd();
        for (int c = 0; c < C; c += 8) {
            const __m512d xh = _mm512_mul_pd(_mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(r + c)),
                                                           mu), rs);
            const __m512d gv = _mm512_cvtps_pd(_mm256_loadu_ps(g + c));
            const __m512d gw = _mm512_mul_pd(gv, _mm512_cvtps_pd(_mm256_loadu_ps(w + c)));
            sg = _mm512_add_pd(sg, gw);
            sgx = _mm512_fmadd_pd(gw, xh, sgx);
            if (dw)
                _mm256_storeu_ps(dw + c, _mm256_add_ps(_mm256_loadu_ps(dw + c),
                                                       _mm512_cvtpd_ps(_mm512_mul_pd(gv, xh))));
            if (db)
                _mm256_storeu_ps(db + c, _mm256_add_ps(_mm256_loadu_ps(db + c),
                                                       _mm256_loadu_ps(g + c)));
        }
        const __m512d msg = _mm512_set1_pd(_mm512_reduce_add_pd(sg) / C);
        const __m512d msgx = _mm512_set1_pd(_mm512_reduce_add_pd(sgx) / C);
        for (int c = 0; c < C; c += 8) {
            const __m512d xh = _mm512_mul_pd(_mm512_sub_pd(_mm512_cvtps_pd(_mm256_loadu_ps(r + c)),
                                                           mu), rs);
            const __m512d gw = _mm512_mul_pd(_mm512_cvtps_pd(_mm256_loadu_ps(g + c)),
                                             _mm512_cvtps_pd(_mm256_loadu_ps(w + c)));
            const __m512d t = _mm512_fnmadd_pd(xh, msgx, _mm512_sub_pd(gw, msg));
            _mm256_storeu_ps(o + c, _mm256_add_ps(_mm256_loadu_ps(o + c),
                                                  _mm512_cvtpd_ps(_mm512_mul_pd(rs, t))));
        }
    }
}
