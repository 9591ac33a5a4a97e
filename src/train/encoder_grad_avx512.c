/* encoder_grad_avx512.c - the AVX-512 kernels of encoder_grad_k.h. Compiled with the AVX-512
 * flags (file name); reached only through ts_eg_kern_avx512 when the CPU has them. Channel
 * loops run 16 lanes with a masked tail, so every element takes the same arithmetic. */
#include "train/encoder_grad_k.h"

#include <immintrin.h>
#include <math.h>
#include <string.h>

/* GELU'(x) = [x > 0] - sign(x) f'(|x|) with f(a) = a Q(a) (Q the normal tail), f'(a) =
 * Q(a) - a phi(a): smooth, 0.5 at 0, below 4e-14 past 8. Piecewise polynomial on [0, 8]:
 * 32 intervals of degree 5 (Chebyshev nodes, fitted in double), coefficients picked per lane
 * by a two-table permute. The 32 x 6 table is printed by a few lines of Python (math.erfc,
 * Chebyshev interpolation per interval); tests/train/test_encoder_grad_k.c checks it against
 * the exact formula. */
/* max |error| 9.8e-09 (double evaluation of the float tables) */
static const float DGELU_TAB[6][32] = {
    {
        -5.52272795e-05f, -3.36173325e-05f, -1.27133342e-06f, 2.66824463e-05f,
        3.94056879e-05f, 3.52101051e-05f, 2.03787222e-05f, 3.96497899e-06f,
        -7.3617889e-06f, -1.15435787e-05f, -1.02403919e-05f, -6.50343327e-06f,
        -2.82837595e-06f, -3.95600466e-07f, 7.12852739e-07f, 9.33429192e-07f,
        7.49101844e-07f, 4.78235279e-07f, 2.61049024e-07f, 1.25724469e-07f,
        5.43351106e-08f, 2.12911342e-08f, 7.61672947e-09f, 2.49981857e-09f,
        7.5541795e-10f, 2.1076936e-10f, 5.44147331e-11f, 1.30220097e-11f,
        2.89280232e-12f, 5.97256944e-13f, 1.14722007e-13f, 2.05188192e-14f,
    },
    {
        -4.76799141e-06f, -0.000287985604f, -0.000457317365f, -0.000459178409f,
        -0.000318638165f, -0.000115689945f, 6.27801564e-05f, 0.000163663324f,
        0.000180705538f, 0.000141184966f, 8.18733824e-05f, 3.02860662e-05f,
        -1.8721131e-06f, -1.54419831e-05f, -1.69619325e-05f, -1.31481193e-05f,
        -8.39761742e-06f, -4.65661333e-06f, -2.2979109e-06f, -1.02326305e-06f,
        -4.14794386e-07f, -1.53974256e-07f, -5.25630774e-08f, -1.65543206e-08f,
        -4.821755e-09f, -1.301385e-09f, -3.25983712e-10f, -7.58817661e-11f,
        -1.64323572e-11f, -3.31345238e-12f, -6.2261562e-13f, -1.09096651e-13f,
    },
    {
        0.00415839953f, 0.00359940389f, 0.00212980178f, 0.000303874811f,
        -0.00125862588f, -0.002141417f, -0.002260515f, -0.00181503012f,
        -0.00112729194f, -0.000480569812f, -3.05774702e-05f, 0.000196635519f,
        0.000254864077f, 0.00022051073f, 0.000155444155f, 9.48646993e-05f,
        5.15059655e-05f, 2.52514019e-05f, 1.12810621e-05f, 4.62048638e-06f,
        1.74244337e-06f, 6.06923948e-07f, 1.95731374e-07f, 5.85540931e-08f,
        1.62735425e-08f, 4.20699342e-09f, 1.01267883e-09f, 2.27172739e-10f,
        4.75273501e-11f, 9.27913042e-12f, 1.69154794e-12f, 2.88059073e-13f,
    },
    {
        -6.78638742e-07f, 0.0118926307f, 0.0206265785f, 0.024260005f,
        0.0226843972f, 0.0173915904f, 0.0106256474f, 0.0044244267f,
        5.70434224e-07f, -0.00237107649f, -0.00308133918f, -0.00278429058f,
        -0.00207765121f, -0.001352494f, -0.000787504425f, -0.000415779359f,
        -0.000200727736f, -8.91051313e-05f, -3.6512869e-05f, -1.38510213e-05f,
        -4.87477382e-06f, -1.59441072e-06f, -4.85295061e-07f, -1.37609433e-07f,
        -3.63848329e-08f, -8.97741614e-09f, -2.06832729e-09f, -4.45206927e-10f,
        -8.95744937e-11f, -1.68525194e-11f, -2.96591983e-12f, -4.88433621e-13f,
    },
    {
        -0.199471086f, -0.187292203f, -0.154028386f, -0.108221129f,
        -0.0604926534f, -0.0199773032f, 0.00809475034f, 0.0229173247f,
        0.0269954354f, 0.0243006628f, 0.0186238363f, 0.0126457587f,
        0.00775575358f, 0.00434344169f, 0.00223625312f, 0.00106329622f,
        0.000468404265f, 0.00019161863f, 7.29247549e-05f, 2.58542041e-05f,
        8.54833797e-06f, 2.63822017e-06f, 7.60562898e-07f, 2.04935404e-07f,
        5.16390415e-08f, 1.21732677e-08f, 2.68575184e-09f, 5.54746415e-10f,
        1.07303839e-10f, 1.94417503e-11f, 3.30027e-12f, 5.24978769e-13f,
    },
    {
        0.5f, 0.304626644f, 0.132504866f, 0.000774276443f,
        -0.0833154693f, -0.122661583f, -0.127469197f, -0.110926151f,
        -0.0852318034f, -0.0591897443f, -0.0376110859f, -0.0220275335f,
        -0.0119456472f, -0.00601738133f, -0.00282176048f, -0.0012338165f,
        -0.000503649644f, -0.000192115665f, -6.85291452e-05f, -2.28730678e-05f,
        -7.1469417e-06f, -2.0913958e-06f, -5.7334654e-07f, -1.4729406e-07f,
        -3.54686271e-08f, -8.00726063e-09f, -1.69504499e-09f, -3.36514344e-10f,
        -6.26628263e-11f, -1.09459265e-11f, -1.7938138e-12f, -2.75819894e-13f,
    },
};
#define DG_N 32
#define DG_DEG 5
#define DG_RANGE 8.0f

static inline __m512 dgelu16(__m512 x) {
    const __m512 a = _mm512_abs_ps(x);
    const __m512 u = _mm512_min_ps(_mm512_mul_ps(a, _mm512_set1_ps(DG_N / DG_RANGE)),
                                   _mm512_set1_ps(DG_N - 0.001f));
    const __m512 fl = _mm512_roundscale_ps(u, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const __m512i idx = _mm512_cvttps_epi32(fl);
    const __m512 t = _mm512_sub_ps(u, fl);
#define PERM(d) _mm512_permutex2var_ps(_mm512_loadu_ps(DGELU_TAB[d]), idx, \
                                       _mm512_loadu_ps(DGELU_TAB[d] + 16))
    __m512 p = PERM(0);
    for (int d = 1; d <= DG_DEG; d++) p = _mm512_fmadd_ps(p, t, PERM(d));
#undef PERM
    const __mmask16 pos = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_GT_OQ);
    return _mm512_mask_sub_ps(p, pos, _mm512_set1_ps(1.0f), p);
}

static inline __mmask16 tail(int n) {
    return n >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << n) - 1);
}

static void k_dgelu(const float *x, size_t n, float *dy) {
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : tail((int)(n - i));
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        _mm512_mask_storeu_ps(dy + i, m,
                              _mm512_mul_ps(_mm512_maskz_loadu_ps(m, dy + i), dgelu16(v)));
    }
}

static void k_bn_rows(const float *r, const float *res, const float *al, const float *sh,
                      size_t rows, int co, int dg, float *out) {
    for (size_t p = 0; p < rows; p++) {
        const float *rr = r + p * co, *rs = res ? res + p * co : NULL;
        float *o = out + p * co;
        for (int k = 0; k < co; k += 16) {
            const __mmask16 m = tail(co - k);
            __m512 v = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, rr + k),
                                       _mm512_maskz_loadu_ps(m, al + k),
                                       _mm512_maskz_loadu_ps(m, sh + k));
            if (rs) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, rs + k));
            if (dg) v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, o + k), dgelu16(v));
            _mm512_mask_storeu_ps(o + k, m, v);
        }
    }
}

/* the low / high 8 lanes of v widened to double */
static inline __m512d lo_pd(__m512 v) {
    return _mm512_cvtps_pd(_mm512_castps512_ps256(v));
}

static inline __m512d hi_pd(__m512 v) {
    return _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

/* a[0..15] += v (16 floats widened to double) */
static inline void acc_pd(double *a, __m512 v) {
    const __m512d lo = lo_pd(v);
    const __m512d hi = hi_pd(v);
    _mm512_storeu_pd(a, _mm512_add_pd(_mm512_loadu_pd(a), lo));
    _mm512_storeu_pd(a + 8, _mm512_add_pd(_mm512_loadu_pd(a + 8), hi));
}

/* a[0..15] += x * y in double (the products exact) */
static inline void acc_mul_pd(double *a, __m512 x, __m512 y) {
    const __m512d xl = lo_pd(x);
    const __m512d xh = hi_pd(x);
    const __m512d yl = lo_pd(y);
    const __m512d yh = hi_pd(y);
    _mm512_storeu_pd(a, _mm512_fmadd_pd(xl, yl, _mm512_loadu_pd(a)));
    _mm512_storeu_pd(a + 8, _mm512_fmadd_pd(xh, yh, _mm512_loadu_pd(a + 8)));
}

static void k_bn_bwd_rows(const float *r, const float *res, const float *al, const float *sh,
                          const float *mean, const float *rstd, size_t rows, int co, int dg,
                          const float *din, float *dout, float *dcopy, double *sg,
                          double *sb) {
    for (size_t p = 0; p < rows; p++) {
        const size_t o = p * co;
        for (int k = 0; k < co; k += 16) {
            const __mmask16 m = tail(co - k);
            const __m512 rv = _mm512_maskz_loadu_ps(m, r + o + k);
            __m512 dv = _mm512_maskz_loadu_ps(m, din + o + k);
            if (dg) {
                __m512 v = _mm512_fmadd_ps(rv, _mm512_maskz_loadu_ps(m, al + k),
                                           _mm512_maskz_loadu_ps(m, sh + k));
                if (res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res + o + k));
                dv = _mm512_mul_ps(dv, dgelu16(v));
            }
            if (dcopy) _mm512_mask_storeu_ps(dcopy + o + k, m, dv);
            const __m512 xh = _mm512_mul_ps(_mm512_sub_ps(rv, _mm512_maskz_loadu_ps(m, mean + k)),
                                            _mm512_maskz_loadu_ps(m, rstd + k));
            if (m == 0xffff) {
                acc_mul_pd(sg + k, dv, xh);
                acc_pd(sb + k, dv);
            } else {
                float t0[16], t1[16];
                _mm512_storeu_ps(t0, dv);
                _mm512_storeu_ps(t1, xh);
                for (int i = 0; i < co - k; i++)
                    sg[k + i] += (double)t0[i] * t1[i], sb[k + i] += t0[i];
            }
            _mm512_mask_storeu_ps(dout + o + k, m,
                                  _mm512_mul_ps(dv, _mm512_maskz_loadu_ps(m, al + k)));
        }
    }
}

static inline double hsum_pd(__m512d v) {
    return _mm512_reduce_add_pd(v);
}

static void k_ln_bwd_rows(const float *x, const float *dy, const float *w, float eps,
                          size_t rows, int C, int acc, float *dx, double *aw, double *ab) {
    for (size_t m = 0; m < rows; m++) {
        const float *xr = x + m * C, *d = dy + m * C;
        __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
        for (int k = 0; k < C; k += 16) {
            const __m512 v = _mm512_maskz_loadu_ps(tail(C - k), xr + k);
            s0 = _mm512_add_pd(s0, lo_pd(v));
            s1 = _mm512_add_pd(s1, hi_pd(v));
        }
        const double mean = hsum_pd(_mm512_add_pd(s0, s1)) / C;
        const __m512d mv = _mm512_set1_pd(mean);
        s0 = s1 = _mm512_setzero_pd();
        for (int k = 0; k < C; k += 16) {
            const __mmask16 mk = tail(C - k);
            const __m512 v = _mm512_maskz_loadu_ps(mk, xr + k);
            const __m512d a = _mm512_maskz_sub_pd((__mmask8)mk, lo_pd(v), mv);
            const __m512d b = _mm512_maskz_sub_pd((__mmask8)(mk >> 8), hi_pd(v), mv);
            s0 = _mm512_fmadd_pd(a, a, s0);
            s1 = _mm512_fmadd_pd(b, b, s1);
        }
        const double var = hsum_pd(_mm512_add_pd(s0, s1)) / C;
        const float rstd = (float)(1.0 / sqrt(var + eps)), meanf = (float)mean;
        const __m512 vr = _mm512_set1_ps(rstd), vm = _mm512_set1_ps(meanf);
        __m512 g0 = _mm512_setzero_ps(), g1 = _mm512_setzero_ps();
        for (int k = 0; k < C; k += 16) {
            const __mmask16 mk = tail(C - k);
            const __m512 xh =
                _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, xr + k), vm), vr);
            const __m512 dv = _mm512_maskz_loadu_ps(mk, d + k);
            const __m512 gk = _mm512_mul_ps(dv, _mm512_maskz_loadu_ps(mk, w + k));
            g0 = _mm512_add_ps(g0, gk);
            g1 = _mm512_fmadd_ps(gk, xh, g1);
            if (mk == 0xffff) {
                acc_mul_pd(aw + k, dv, xh);
                acc_pd(ab + k, dv);
            } else {
                float t0[16], t1[16];
                _mm512_storeu_ps(t0, dv);
                _mm512_storeu_ps(t1, xh);
                for (int i = 0; i < C - k; i++)
                    aw[k + i] += (double)t0[i] * t1[i], ab[k + i] += t0[i];
            }
        }
        const __m512 mg = _mm512_set1_ps(_mm512_reduce_add_ps(g0) / C);
        const __m512 mgx = _mm512_set1_ps(_mm512_reduce_add_ps(g1) / C);
        float *o = dx + m * C;
        for (int k = 0; k < C; k += 16) {
            const __mmask16 mk = tail(C - k);
            const __m512 xh =
                _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, xr + k), vm), vr);
            const __m512 gk = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, d + k),
                                            _mm512_maskz_loadu_ps(mk, w + k));
            __m512 v = _mm512_mul_ps(
                vr, _mm512_sub_ps(_mm512_sub_ps(gk, mg), _mm512_mul_ps(xh, mgx)));
            if (acc) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, o + k));
            _mm512_mask_storeu_ps(o + k, mk, v);
        }
    }
}

static void k_softmax_bwd(const float *P, float *dP, int N, const int *bidx, float scale,
                          double *dab) {
    const __m512 sc = _mm512_set1_ps(scale);
    for (int i = 0; i < N; i++) {
        float *r = dP + (size_t)i * N;
        const float *pr = P + (size_t)i * N;
        const int *bi = bidx + (size_t)i * N;
        __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
        for (int k = 0; k < N; k += 16) {
            const __mmask16 m = tail(N - k);
            const __m512 a = _mm512_maskz_loadu_ps(m, r + k), b = _mm512_maskz_loadu_ps(m, pr + k);
            s0 = _mm512_fmadd_pd(lo_pd(a), lo_pd(b), s0);
            s1 = _mm512_fmadd_pd(hi_pd(a), hi_pd(b), s1);
        }
        const __m512 sum = _mm512_set1_ps((float)_mm512_reduce_add_pd(_mm512_add_pd(s0, s1)));
        for (int k = 0; k < N; k += 16) {
            const __mmask16 m = tail(N - k);
            const __m512 ds = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, pr + k),
                                            _mm512_sub_ps(_mm512_maskz_loadu_ps(m, r + k), sum));
            float t[16];
            _mm512_storeu_ps(t, ds);
            const int n = N - k < 16 ? N - k : 16;
            for (int l = 0; l < n; l++) dab[bi[k + l]] += t[l];
            _mm512_mask_storeu_ps(r + k, m, _mm512_mul_ps(ds, sc));
        }
    }
}

static void k_colsum_rows(const float *x, size_t rows, int n, double *a) {
    for (size_t p = 0; p < rows; p++) {
        const float *xr = x + p * n;
        int k = 0;
        for (; k + 16 <= n; k += 16) acc_pd(a + k, _mm512_loadu_ps(xr + k));
        for (; k < n; k++) a[k] += xr[k];
    }
}

static void k_dw_bwd(const float *w9, const float *x, const float *dr, float *dx, int H, int W,
                     int C, int s, int oy0, int oy1, int iy0, int iy1, double *a) {
    const int Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1;
    /* per output row: the nine tap sums of a 16-channel block stay in registers over the row
     * (summed over ox in order, as a float per row), then go into the double partials */
    for (int oy = oy0; oy < oy1; oy++) {
        const float *xr[3];
        for (int ky = 0; ky < 3; ky++) {
            const int iy = oy * s - 1 + ky;
            xr[ky] = iy >= 0 && iy < H ? x + (size_t)iy * W * C : NULL;
        }
        const float *drow = dr + (size_t)oy * Wo * C;
        for (int k = 0; k < C; k += 16) {
            const __mmask16 m = tail(C - k);
            __m512 acc[9];
            for (int t = 0; t < 9; t++) acc[t] = _mm512_setzero_ps();
            for (int ox = 0; ox < Wo; ox++) {
                const __m512 dv = _mm512_maskz_loadu_ps(m, drow + (size_t)ox * C + k);
                for (int kx = 0; kx < 3; kx++) {
                    const int ix = ox * s - 1 + kx;
                    if (ix < 0 || ix >= W) continue;
                    for (int ky = 0; ky < 3; ky++)
                        if (xr[ky])
                            acc[ky * 3 + kx] = _mm512_fmadd_ps(
                                dv, _mm512_maskz_loadu_ps(m, xr[ky] + (size_t)ix * C + k),
                                acc[ky * 3 + kx]);
                }
            }
            for (int t = 0; t < 9; t++) {
                if (m == 0xffff) {
                    acc_pd(a + (size_t)t * C + k, acc[t]);
                } else {
                    float tmp[16];
                    _mm512_storeu_ps(tmp, acc[t]);
                    for (int i = 0; i < C - k; i++) a[(size_t)t * C + k + i] += tmp[i];
                }
            }
        }
    }
    if (!dx) return;
    for (int iy = iy0; iy < iy1; iy++)
        for (int ix = 0; ix < W; ix++) {
            float *di = dx + ((size_t)iy * W + ix) * C;
            for (int k = 0; k < C; k += 16) {
                const __mmask16 m = tail(C - k);
                __m512 acc = _mm512_maskz_loadu_ps(m, di + k);
                for (int t = 0; t < 9; t++) {
                    const int ny = iy + 1 - t / 3, nx = ix + 1 - t % 3;
                    if (ny < 0 || nx < 0 || ny % s || nx % s || ny / s >= Ho || nx / s >= Wo)
                        continue;
                    const float *d = dr + ((size_t)(ny / s) * Wo + nx / s) * C;
                    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, d + k),
                                          _mm512_maskz_loadu_ps(m, w9 + (size_t)t * C + k), acc);
                }
                _mm512_mask_storeu_ps(di + k, m, acc);
            }
        }
}

static const ts_eg_kern K = {
    .dgelu = k_dgelu,
    .bn_rows = k_bn_rows,
    .bn_bwd_rows = k_bn_bwd_rows,
    .ln_bwd_rows = k_ln_bwd_rows,
    .softmax_bwd = k_softmax_bwd,
    .colsum_rows = k_colsum_rows,
    .dw_bwd = k_dw_bwd,
};

const ts_eg_kern *ts_eg_kern_avx512(void) {
    return &K;
}
