/* kernels_impl.h - the SIMD kernels, written once over a small vector-macro layer and
 * compiled twice: kernels_avx512.c (16 lanes) and kernels_avx2.c (8 lanes) define TS_VEC_BITS
 * and include this file. Layouts are those of nn.h / nn_isa.h. */
#include "nn/nn.h"
#include "nn/nn_isa.h"

#include <immintrin.h>
#include <math.h>

#if TS_VEC_BITS == 512
typedef __m512 vf;
typedef __m512i vi;
#define VL              16
#define TS_MR           12
#define V_LOAD(p)       _mm512_loadu_ps(p)
#define V_LOADA(p)      _mm512_load_ps(p)
#define V_STORE(p, v)   _mm512_storeu_ps(p, v)
#define V_SET1(x)       _mm512_set1_ps(x)
#define V_ZERO()        _mm512_setzero_ps()
#define V_ADD           _mm512_add_ps
#define V_SUB           _mm512_sub_ps
#define V_MUL           _mm512_mul_ps
#define V_DIV           _mm512_div_ps
#define V_ABS(x)        _mm512_abs_ps(x)
#define V_MAX           _mm512_max_ps
#define V_MIN           _mm512_min_ps
#define V_AND           _mm512_and_ps
#define V_OR            _mm512_or_ps
#define V_FMA(a, b, c)  _mm512_fmadd_ps(a, b, c)
#define V_FNMA(a, b, c) _mm512_fnmadd_ps(a, b, c)
#define V_ROUND(x)      _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define V_FLOOR(x)      _mm512_roundscale_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#define V_CVT_I(x)      _mm512_cvtps_epi32(x)
#define VI_ADD          _mm512_add_epi32
#define VI_SET1         _mm512_set1_epi32
#define VI_SLLI         _mm512_slli_epi32
#define V_FROM_I        _mm512_castsi512_ps
#define V_HSUM(v)       _mm512_reduce_add_ps(v)
#define V_HMAX(v)       _mm512_reduce_max_ps(v)
#define SUFFIX(n)       n##_avx512
#define ISA_NAME        "avx512"
#elif TS_VEC_BITS == 256
typedef __m256 vf;
typedef __m256i vi;
#define VL              8
#define TS_MR           6
#define V_LOAD(p)       _mm256_loadu_ps(p)
#define V_LOADA(p)      _mm256_load_ps(p)
#define V_STORE(p, v)   _mm256_storeu_ps(p, v)
#define V_SET1(x)       _mm256_set1_ps(x)
#define V_ZERO()        _mm256_setzero_ps()
#define V_ADD           _mm256_add_ps
#define V_SUB           _mm256_sub_ps
#define V_MUL           _mm256_mul_ps
#define V_DIV           _mm256_div_ps
#define V_ABS(x)        _mm256_andnot_ps(_mm256_set1_ps(-0.0f), x)
#define V_MAX           _mm256_max_ps
#define V_MIN           _mm256_min_ps
#define V_AND           _mm256_and_ps
#define V_OR            _mm256_or_ps
#define V_FMA(a, b, c)  _mm256_fmadd_ps(a, b, c)
#define V_FNMA(a, b, c) _mm256_fnmadd_ps(a, b, c)
#define V_ROUND(x)      _mm256_round_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define V_FLOOR(x)      _mm256_round_ps(x, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)
#define V_CVT_I(x)      _mm256_cvtps_epi32(x)
#define VI_ADD          _mm256_add_epi32
#define VI_SET1         _mm256_set1_epi32
#define VI_SLLI         _mm256_slli_epi32
#define V_FROM_I        _mm256_castsi256_ps
#define SUFFIX(n)       n##_avx2
#define ISA_NAME        "avx2"
static inline float V_HSUM(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
static inline float V_HMAX(vf v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#else
#error "define TS_VEC_BITS to 256 or 512"
#endif

#define TS_NR (2 * VL)

/* ---- element-wise math ------------------------------------------------------------- */

/* exp: Cephes-style range reduction x = n ln2 + r, degree-6 polynomial on r (about 1 ulp);
 * inputs clamped so that 2^n stays a normal float. */
static inline vf SUFFIX(v_exp)(vf x) {
    x = V_MIN(V_MAX(x, V_SET1(-87.3365447505531f)), V_SET1(88.3762626647949f));
    vf n = V_ROUND(V_MUL(x, V_SET1(1.44269504088896341f)));
    vf r = V_FNMA(n, V_SET1(0.693359375f), x);
    r = V_FNMA(n, V_SET1(-2.12194440e-4f), r);
    vf p = V_SET1(1.9875691500e-4f);
    p = V_FMA(p, r, V_SET1(1.3981999507e-3f));
    p = V_FMA(p, r, V_SET1(8.3334519073e-3f));
    p = V_FMA(p, r, V_SET1(4.1665795894e-2f));
    p = V_FMA(p, r, V_SET1(1.6666665459e-1f));
    p = V_FMA(p, r, V_SET1(5.0000001201e-1f));
    p = V_FMA(p, V_MUL(r, r), V_ADD(r, V_SET1(1.0f)));
    vi e = VI_SLLI(VI_ADD(V_CVT_I(n), VI_SET1(127)), 23);
    return V_MUL(p, V_FROM_I(e));
}

/* GELU(x) = x Phi(x) = relu(x) - f(|x|), f(a) = a Q(a), Q the normal tail 0.5 erfc(a/sqrt 2).
 * f is smooth, bounded (max 0.17) and below 2.6e-7 past a = 16/3, so it is a piecewise
 * polynomial on [0, 16/3]: 32 intervals of degree 4 (AVX-512: a two-table permute) or 8 of
 * degree 6 (AVX2), the coefficients picked per lane from registers by a permute (the table
 * is one or two vectors per degree). Fitted in double (Chebyshev nodes; tools/fit_gelu.py prints the tables), evaluated in
 * float: |error| < 4e-8 everywhere, against 30 operations of erf via exp, 15 here (AVX2: 20).
 * Past 16/3 the last interval's end value (2.6e-7) stands for f, within 1e-6 of GELU. */
/* 32 intervals, degree 4: max |error| 2.1e-08 */
static const float TS_GELU_TAB32[5][32] = {
    {
        5.04275195e-05f, 4.42714845e-05f, 3.30625589e-05f, 1.87499245e-05f,
        3.68790143e-06f, -9.86679061e-06f, -2.01886669e-05f, -2.63481252e-05f,
        -2.82646288e-05f, -2.65683011e-05f, -2.23369625e-05f, -1.67953112e-05f,
        -1.10544443e-05f, -5.94149651e-06f, -1.9340448e-06f, 8.15974659e-07f,
        2.40145391e-06f, 3.05852632e-06f, 3.07327809e-06f, 2.7136814e-06f,
        2.19156686e-06f, 1.6506682e-06f, 1.17243928e-06f, 7.90812464e-07f,
        5.08922028e-07f, 3.13527408e-07f, 1.85362381e-07f, 1.05368784e-07f,
        5.76756456e-08f, 3.04355581e-08f, 1.5498939e-08f, 7.62264829e-09f,
    },
    {
        1.02174931e-06f, 0.000204590295f, 0.000383023202f, 0.000515900494f,
        0.000590758515f, 0.000604708039f, 0.000564003421f, 0.000481852359f,
        0.000375164498f, 0.000261102279f, 0.000154212132f, 6.463514e-05f,
        -2.45739034e-06f, -4.6376259e-05f, -6.97458963e-05f, -7.70820552e-05f,
        -7.34769565e-05f, -6.36185941e-05f, -5.12239494e-05f, -3.88486551e-05f,
        -2.79688502e-05f, -1.92129228e-05f, -1.26381001e-05f, -7.98118617e-06f,
        -4.84841848e-06f, -2.83751592e-06f, -1.60178536e-06f, -8.73012652e-07f,
        -4.59763129e-07f, -2.34117934e-07f, -1.1533642e-07f, -5.49968746e-08f,
    },
    {
        -0.0110821398f, -0.0107784187f, -0.00990249403f, -0.00855948962f,
        -0.00690396409f, -0.00511377305f, -0.00336206262f, -0.0017931083f,
        -0.000506247801f, 0.000450172956f, 0.00107537536f, 0.0014057064f,
        0.00150062272f, 0.00142851518f, 0.0012549879f, 0.00103500672f,
        0.000809155172f, 0.000603342371f, 0.000430846034f, 0.000295504375f,
        0.000195079265f, 0.000124154161f, 7.6270393e-05f, 4.52714921e-05f,
        2.59845219e-05f, 1.44314681e-05f, 7.7597706e-06f, 4.04137518e-06f,
        2.03948593e-06f, 9.97628831e-07f, 4.73151033e-07f, 2.17631992e-07f,
    },
    {
        0.083333388f, 0.0613739826f, 0.0406080745f, 0.0220844392f,
        0.00658815494f, -0.00543278875f, -0.0138857439f, -0.0189986881f,
        -0.021244809f, -0.0212449245f, -0.019667577f, -0.0171435513f,
        -0.0142054092f, -0.0112557374f, -0.00856158044f, -0.00626855763f,
        -0.00442650821f, -0.00301900925f, -0.0019909374f, -0.00127061969f,
        -0.000785300916f, -0.000470283179f, -0.00027301244f, -0.000153697954f,
        -8.39369022e-05f, -4.44787547e-05f, -2.28752433e-05f, -1.14202876e-05f,
        -5.53554128e-06f, -2.6054272e-06f, -1.19094e-06f, -5.28740316e-07f,
    },
    {
        -1.13839416e-09f, 0.0723026916f, 0.123147108f, 0.154268757f,
        0.16832836f, 0.168606982f, 0.158655256f, 0.141951248f,
        0.121614963f, 0.100210801f, 0.0796505883f, 0.0611902662f,
        0.0455002673f, 0.0327819735f, 0.0229024347f, 0.0155241638f,
        0.0102143483f, 0.0065259207f, 0.00404969417f, 0.00244145165f,
        0.00143020088f, 0.000814201601f, 0.00045050992f, 0.000242301918f,
        0.00012668487f, 6.43928433e-05f, 3.18214625e-05f, 1.52895045e-05f,
        7.14291036e-06f, 3.24474627e-06f, 1.4332536e-06f, 6.15620877e-07f,
    },
};
/* 8 intervals, degree 6: max |error| 3.5e-08 */
static const float TS_GELU_TAB8[7][8] = {
    {
        -0.000563734095f, 0.000514017651f, 0.00026254449f, -0.00016441998f,
        -6.89523949e-05f, 1.12884445e-05f, 7.85474367e-06f, 1.29561454e-06f,
    },
    {
        -0.000559040112f, -0.00363450684f, 5.04725831e-05f, 0.00131056714f,
        0.000216088243f, -0.000131041306f, -5.02542425e-05f, -7.06583432e-06f,
    },
    {
        0.0135562895f, 0.00317829498f, -0.00743828248f, -0.0036252581f,
        0.000520958507f, 0.000643684063f, 0.000158015304f, 1.83538323e-05f,
    },
    {
        -0.000155994407f, 0.037288174f, 0.0241061412f, 2.1460979e-05f,
        -0.00469375728f, -0.00180944102f, -0.000315479469f, -2.99688163e-05f,
    },
    {
        -0.177280813f, -0.110409863f, -0.00811743457f, 0.0239927508f,
        0.0129477112f, 0.0031232771f, 0.000416070339f, 3.26392947e-05f,
    },
    {
        0.333331615f, 0.0263504684f, -0.0849781111f, -0.0568210147f,
        -0.0177062005f, -0.00314128422f, -0.000335748337f, -2.21397804e-05f,
    },
    {
        1.77848136e-08f, 0.168328375f, 0.121614948f, 0.0455002636f,
        0.0102143511f, 0.00143020146f, 0.000126684783f, 7.14287171e-06f,
    },
};

#if TS_VEC_BITS == 512
/* 32 entries per coefficient: two zmm tables joined by one vpermt2ps */
#define GELU_N   32
#define GELU_DEG 4
#define GELU_TAB TS_GELU_TAB32
#define V_PERM(tab, idx) _mm512_permutex2var_ps(V_LOAD(tab), idx, V_LOAD((tab) + 16))
#else
#define GELU_N   8
#define GELU_DEG 6
#define GELU_TAB TS_GELU_TAB8
#define V_PERM(tab, idx) _mm256_permutevar8x32_ps(V_LOAD(tab), idx)
#endif

static inline vf SUFFIX(v_gelu)(vf x) {
    vf a = V_ABS(x);
    /* u = a in interval units, below GELU_N; lane index i = floor(u), t = u - i in [0, 1) */
    vf u = V_MIN(V_MUL(a, V_SET1((float)GELU_N * 3.0f / 16.0f)), V_SET1((float)GELU_N - 0.001f));
    vf fl = V_FLOOR(u);
    vi idx = V_CVT_I(fl);
    vf t = V_SUB(u, fl);
    vf p = V_PERM(GELU_TAB[0], idx);
#pragma GCC unroll 8
    for (int d = 1; d <= GELU_DEG; d++) p = V_FMA(p, t, V_PERM(GELU_TAB[d], idx));
    /* max(0, x) keeps a NaN x (the second operand is returned for NaN) */
    return V_SUB(V_MAX(V_ZERO(), x), p);
}
#undef V_PERM
#undef GELU_TAB

static float SUFFIX(gelu1)(float x) {
    return x * 0.5f * (1.0f + erff(x * 0.70710678118654752f));
}

static void SUFFIX(gelu)(float *x, size_t n) {
    size_t i = 0;
    for (; i + VL <= n; i += VL) V_STORE(x + i, SUFFIX(v_gelu)(V_LOAD(x + i)));
    for (; i < n; i++) x[i] = SUFFIX(gelu1)(x[i]);
}

/* m rows of n (stride ldc): c = act(c + bias); one call per tile keeps the constants of the
 * GELU in registers across rows. */
static void SUFFIX(bias_act)(float *c, int ldc, int m, const float *bias, int n, int act) {
    for (int r = 0; r < m; r++, c += ldc) {
        int i = 0;
        if (act == TS_ACT_GELU) {
            for (; i + VL <= n; i += VL) {
                vf v = V_LOAD(c + i);
                if (bias) v = V_ADD(v, V_LOAD(bias + i));
                V_STORE(c + i, SUFFIX(v_gelu)(v));
            }
        } else if (bias) {
            for (; i + VL <= n; i += VL) V_STORE(c + i, V_ADD(V_LOAD(c + i), V_LOAD(bias + i)));
        } else {
            i = n;
        }
        for (; i < n; i++) {
            float v = c[i] + (bias ? bias[i] : 0.0f);
            c[i] = act == TS_ACT_GELU ? SUFFIX(gelu1)(v) : v;
        }
    }
}

/* ---- rows: LayerNorm, softmax ------------------------------------------------------ */

static void SUFFIX(layernorm)(const float *x, float *y, int M, int C, const float *w,
                              const float *b, float eps) {
    for (int m = 0; m < M; m++) {
        const float *xr = x + (size_t)m * C;
        float *yr = y + (size_t)m * C;
        vf s = V_ZERO();
        int c = 0;
        for (; c + VL <= C; c += VL) s = V_ADD(s, V_LOAD(xr + c));
        float sum = V_HSUM(s);
        for (; c < C; c++) sum += xr[c];
        float mean = sum / (float)C;
        vf vm = V_SET1(mean);
        s = V_ZERO();
        c = 0;
        for (; c + VL <= C; c += VL) {
            vf d = V_SUB(V_LOAD(xr + c), vm);
            s = V_FMA(d, d, s);
        }
        float var = V_HSUM(s);
        for (; c < C; c++) var += (xr[c] - mean) * (xr[c] - mean);
        float rstd = 1.0f / sqrtf(var / (float)C + eps);
        vf vr = V_SET1(rstd);
        c = 0;
        for (; c + VL <= C; c += VL) {
            vf d = V_MUL(V_SUB(V_LOAD(xr + c), vm), vr);
            V_STORE(yr + c, V_FMA(d, V_LOAD(w + c), V_LOAD(b + c)));
        }
        for (; c < C; c++) yr[c] = (xr[c] - mean) * rstd * w[c] + b[c];
    }
}

/* Rows shorter than a vector (the decoder's image->token weights: 7-10 per row, 32768 rows
 * per layer) in one padded vector each: the scalar expf tail would cost more than the rest. */
static void SUFFIX(softmax_short)(float *x, int M, int N) {
    float t[VL];
    for (int m = 0; m < M; m++) {
        float *r = x + (size_t)m * N;
        float mx = r[0];
        for (int i = 1; i < N; i++) mx = r[i] > mx ? r[i] : mx;
        for (int i = 0; i < VL; i++) t[i] = i < N ? r[i] : mx; /* padding: dropped below */
        V_STORE(t, SUFFIX(v_exp)(V_SUB(V_LOAD(t), V_SET1(mx))));
        float s = 0.0f;
        for (int i = 0; i < N; i++) s += t[i];
        float inv = 1.0f / s;
        for (int i = 0; i < N; i++) r[i] = t[i] * inv;
    }
}

static void SUFFIX(softmax)(float *x, int M, int N) {
    if (N < VL) {
        SUFFIX(softmax_short)(x, M, N);
        return;
    }
    for (int m = 0; m < M; m++) {
        float *r = x + (size_t)m * N;
        int i = 0;
        float mx = r[0];
        if (N >= VL) {
            vf vm = V_LOAD(r);
            for (i = VL; i + VL <= N; i += VL) vm = V_MAX(vm, V_LOAD(r + i));
            mx = V_HMAX(vm);
        }
        for (; i < N; i++) mx = r[i] > mx ? r[i] : mx;
        vf vmx = V_SET1(mx), vs = V_ZERO();
        for (i = 0; i + VL <= N; i += VL) {
            vf e = SUFFIX(v_exp)(V_SUB(V_LOAD(r + i), vmx));
            V_STORE(r + i, e);
            vs = V_ADD(vs, e);
        }
        float s = V_HSUM(vs);
        for (; i < N; i++) {
            r[i] = expf(r[i] - mx);
            s += r[i];
        }
        float inv = 1.0f / s;
        vf vi_ = V_SET1(inv);
        for (i = 0; i + VL <= N; i += VL) V_STORE(r + i, V_MUL(V_LOAD(r + i), vi_));
        for (; i < N; i++) r[i] *= inv;
    }
}

/* ---- depthwise 3x3 (NHWC) ------------------------------------------------------------ */

/* Channel blocks outer, output pixels inner: the block's nine weights and bias stay in
 * registers. Taps are summed in the order of the reference (ky, then kx, skipping padding). */
static void SUFFIX(dwconv_rows3)(const float *const rows[3], int W, int C, int stride,
                                 const float *w9, const float *bias, int act, float *y) {
    int Wo = (W - 1) / stride + 1;
    const size_t sC = (size_t)stride * C;
    int c = 0;
    for (; c + VL <= C; c += VL) {
        vf w[9];
#pragma GCC unroll 9
        for (int t = 0; t < 9; t++) w[t] = V_LOAD(w9 + (size_t)t * C + c);
        vf b = bias ? V_LOAD(bias + c) : V_ZERO();
        for (int ox = 0; ox < Wo; ox++) {
            int ix0 = ox * stride - 1;
            int left = ix0 >= 0, right = ix0 + 2 < W; /* the centre tap ix0 + 1 is inside */
            vf acc = b;
#pragma GCC unroll 3
            for (int ky = 0; ky < 3; ky++) {
                if (!rows[ky]) continue;
                const float *xc = rows[ky] + (size_t)ox * sC + c; /* centre: ix0 + 1 */
                if (left) acc = V_FMA(V_LOAD(xc - C), w[ky * 3], acc);
                acc = V_FMA(V_LOAD(xc), w[ky * 3 + 1], acc);
                if (right) acc = V_FMA(V_LOAD(xc + C), w[ky * 3 + 2], acc);
            }
            if (act == TS_ACT_GELU) acc = SUFFIX(v_gelu)(acc);
            V_STORE(y + (size_t)ox * C + c, acc);
        }
    }
    for (; c < C; c++) {
        for (int ox = 0; ox < Wo; ox++) {
            int ix0 = ox * stride - 1;
            float acc = bias ? bias[c] : 0.0f;
            for (int ky = 0; ky < 3; ky++) {
                if (!rows[ky]) continue;
                for (int kx = 0; kx < 3; kx++) {
                    int ix = ix0 + kx;
                    if (ix < 0 || ix >= W) continue;
                    acc = fmaf(rows[ky][(size_t)ix * C + c], w9[(ky * 3 + kx) * C + c], acc);
                }
            }
            y[(size_t)ox * C + c] = act == TS_ACT_GELU ? SUFFIX(gelu1)(acc) : acc;
        }
    }
}

static void SUFFIX(dwconv_row)(const float *x, int H, int W, int C, int stride, const float *w9,
                               const float *bias, int act, float *y, int oy) {
    const float *rows[3];
    for (int ky = 0; ky < 3; ky++) {
        int iy = oy * stride - 1 + ky;
        rows[ky] = iy >= 0 && iy < H ? x + (size_t)iy * W * C : NULL;
    }
    SUFFIX(dwconv_rows3)(rows, W, C, stride, w9, bias, act, y);
}

static void SUFFIX(scale_add)(float *x, float s, const float *b, int n) {
    vf vs = V_SET1(s);
    int i = 0;
    for (; i + VL <= n; i += VL) V_STORE(x + i, V_ADD(V_MUL(V_LOAD(x + i), vs), V_LOAD(b + i)));
    for (; i < n; i++) x[i] = x[i] * s + b[i];
}

/* ---- transpose ------------------------------------------------------------------------ */

/* 8 x 8 blocks in ymm registers (unpack, shuffle, lane permute: 24 operations per 64 values)
 * in both builds: on a 256-bit datapath the 16 x 16 zmm version is no faster. */
static inline void SUFFIX(tr8x8)(const float *s, size_t lds, float *d, size_t ldd) {
    __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + lds);
    __m256 r2 = _mm256_loadu_ps(s + 2 * lds), r3 = _mm256_loadu_ps(s + 3 * lds);
    __m256 r4 = _mm256_loadu_ps(s + 4 * lds), r5 = _mm256_loadu_ps(s + 5 * lds);
    __m256 r6 = _mm256_loadu_ps(s + 6 * lds), r7 = _mm256_loadu_ps(s + 7 * lds);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
}

static void SUFFIX(transpose)(const float *src, int lds, int rows, int cols, float *dst,
                              int ldd) {
    const size_t ls = (size_t)lds, ld = (size_t)ldd;
    int r8 = rows & ~7, c8 = cols & ~7;
    for (int r0 = 0; r0 < r8; r0 += 32) /* 32-row strips: the 8-column destination rows */
        for (int c = 0; c < c8; c += 8) /* of a strip fill whole cache lines */
            for (int r = r0; r < r8 && r < r0 + 32; r += 8)
                SUFFIX(tr8x8)(src + (size_t)r * ls + c, ls, dst + (size_t)c * ld + r, ld);
    for (int r = 0; r < rows; r++) /* the edges */
        for (int c = r < r8 ? c8 : 0; c < cols; c++)
            dst[(size_t)c * ld + r] = src[(size_t)r * ls + c];
}

/* ---- GEMM micro-kernel ----------------------------------------------------------------- */

/* TS_MR x (2 vectors) register tile: 24 (AVX-512) or 12 (AVX2) accumulators, B rows loaded
 * once per k and A values broadcast. */
static void SUFFIX(ukernel)(int kc, const float *Ap, const float *Bp, float *C, int ldc,
                            int acc) {
    vf c0[TS_MR], c1[TS_MR];
#pragma GCC unroll 16
    for (int r = 0; r < TS_MR; r++) c0[r] = c1[r] = V_ZERO();
    for (int k = 0; k < kc; k++) {
        vf b0 = V_LOADA(Bp), b1 = V_LOADA(Bp + VL);
#pragma GCC unroll 16
        for (int r = 0; r < TS_MR; r++) {
            vf a = V_SET1(Ap[r]);
            c0[r] = V_FMA(a, b0, c0[r]);
            c1[r] = V_FMA(a, b1, c1[r]);
        }
        Ap += TS_MR;
        Bp += TS_NR;
    }
    if (acc) {
#pragma GCC unroll 16
        for (int r = 0; r < TS_MR; r++) {
            float *cr = C + (size_t)r * ldc;
            V_STORE(cr, V_ADD(V_LOAD(cr), c0[r]));
            V_STORE(cr + VL, V_ADD(V_LOAD(cr + VL), c1[r]));
        }
    } else {
#pragma GCC unroll 16
        for (int r = 0; r < TS_MR; r++) {
            float *cr = C + (size_t)r * ldc;
            V_STORE(cr, c0[r]);
            V_STORE(cr + VL, c1[r]);
        }
    }
}

/* The same tile with A read in place (row r of the panel at A + r*lda, k contiguous), which
 * saves packing A. Rows are addressed from four bases, three rows apart, plus lda and 2*lda,
 * so that the twelve (AVX2: six) row streams need few registers. Sums in the same order as
 * ukernel, so both give identical results. */
static void SUFFIX(ukernel_da)(int kc, const float *A, int lda, const float *Bp, int ldb,
                               float *C, int ldc, int acc) {
    vf c0[TS_MR], c1[TS_MR];
#pragma GCC unroll 16
    for (int r = 0; r < TS_MR; r++) c0[r] = c1[r] = V_ZERO();
    const size_t L = (size_t)lda;
    const float *p0 = A, *p3 = A + 3 * L;
#if TS_MR > 6
    const float *p6 = A + 6 * L, *p9 = A + 9 * L;
#endif
    for (int k = 0; k < kc; k++) {
        vf b0 = V_LOAD(Bp), b1 = V_LOAD(Bp + VL);
        vf a;
#define TS_ROW(r, ptr, off)                                                                    \
    a = V_SET1(ptr[off + k]);                                                                  \
    c0[r] = V_FMA(a, b0, c0[r]);                                                               \
    c1[r] = V_FMA(a, b1, c1[r]);
        TS_ROW(0, p0, 0)
        TS_ROW(1, p0, L)
        TS_ROW(2, p0, 2 * L)
        TS_ROW(3, p3, 0)
        TS_ROW(4, p3, L)
        TS_ROW(5, p3, 2 * L)
#if TS_MR > 6
        TS_ROW(6, p6, 0)
        TS_ROW(7, p6, L)
        TS_ROW(8, p6, 2 * L)
        TS_ROW(9, p9, 0)
        TS_ROW(10, p9, L)
        TS_ROW(11, p9, 2 * L)
#endif
#undef TS_ROW
        Bp += ldb;
    }
    if (acc) {
#pragma GCC unroll 16
        for (int r = 0; r < TS_MR; r++) {
            float *cr = C + (size_t)r * ldc;
            V_STORE(cr, V_ADD(V_LOAD(cr), c0[r]));
            V_STORE(cr + VL, V_ADD(V_LOAD(cr + VL), c1[r]));
        }
    } else {
#pragma GCC unroll 16
        for (int r = 0; r < TS_MR; r++) {
            float *cr = C + (size_t)r * ldc;
            V_STORE(cr, c0[r]);
            V_STORE(cr + VL, c1[r]);
        }
    }
}

/* ukernel_da for a partial panel of m < TS_MR rows (tails of M): m is a constant after
 * inlining, so each variant keeps its 2m accumulators in registers. */
static inline __attribute__((always_inline)) void SUFFIX(ukda_m)(const int m, int kc,
                                                                  const float *A, int lda,
                                                                  const float *Bp, int ldb,
                                                                  float *C, int ldc, int acc) {
    vf c0[TS_MR], c1[TS_MR];
    for (int r = 0; r < m; r++) c0[r] = c1[r] = V_ZERO();
    for (int k = 0; k < kc; k++) {
        vf b0 = V_LOAD(Bp), b1 = V_LOAD(Bp + VL);
        for (int r = 0; r < m; r++) {
            vf a = V_SET1(A[(size_t)r * lda + k]);
            c0[r] = V_FMA(a, b0, c0[r]);
            c1[r] = V_FMA(a, b1, c1[r]);
        }
        Bp += ldb;
    }
    for (int r = 0; r < m; r++) {
        float *cr = C + (size_t)r * ldc;
        if (acc) {
            c0[r] = V_ADD(V_LOAD(cr), c0[r]);
            c1[r] = V_ADD(V_LOAD(cr + VL), c1[r]);
        }
        V_STORE(cr, c0[r]);
        V_STORE(cr + VL, c1[r]);
    }
}

static void SUFFIX(ukernel_da_rows)(int m, int kc, const float *A, int lda, const float *Bp,
                                    int ldb, float *C, int ldc, int acc) {
    switch (m) {
#define TS_CASE(n)                                                                             \
    case n: SUFFIX(ukda_m)(n, kc, A, lda, Bp, ldb, C, ldc, acc); break;
        TS_CASE(1) TS_CASE(2) TS_CASE(3) TS_CASE(4) TS_CASE(5)
#if TS_MR > 6
        TS_CASE(6) TS_CASE(7) TS_CASE(8) TS_CASE(9) TS_CASE(10) TS_CASE(11)
#endif
#undef TS_CASE
    default: SUFFIX(ukernel_da)(kc, A, lda, Bp, ldb, C, ldc, acc); break;
    }
}

const ts_nn_isa SUFFIX(ts_nn_isa) = {
    .name = ISA_NAME,
    .mr = TS_MR,
    .nr = TS_NR,
    .ukernel = SUFFIX(ukernel),
    .ukernel_da = SUFFIX(ukernel_da),
    .ukernel_da_rows = SUFFIX(ukernel_da_rows),
    .bias_act = SUFFIX(bias_act),
    .gelu = SUFFIX(gelu),
    .layernorm = SUFFIX(layernorm),
    .softmax = SUFFIX(softmax),
    .scale_add = SUFFIX(scale_add),
    .transpose = SUFFIX(transpose),
    .dwconv_row = SUFFIX(dwconv_row),
    .dwconv_rows3 = SUFFIX(dwconv_rows3),
};
