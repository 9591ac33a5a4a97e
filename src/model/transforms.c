/* transforms.c - the predictor's pre- and post-processing (spec TINYSAM.md section 3).
 * ref: tinysam/utils/transforms.py (ResizeLongestSide), tinysam/modeling/sam.py
 * (preprocess, postprocess_masks). Everything here is bit-exact with the reference;
 * the Makefile builds with -ffp-contract=off so no a*b+c is fused behind our back. */
#include "model/transforms.h"
#include "nn/nn.h"

#include "core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- 3.2 target size */

void ts_preprocess_shape(int h, int w, int target, int *newh, int *neww) {
    double scale = (double)target / (double)TS_MAX(h, w);
    *newh = (int)((double)h * scale + 0.5);
    *neww = (int)((double)w * scale + 0.5);
}

/* ---------------------------------------------------------------- 3.3 PIL resize */

#define PIL_PREC 22

/* One axis of PIL's antialiased bilinear filter: for output o, taps xmin[o] .. xmin[o] +
 * n[o] - 1 with 22-bit fixed-point weights k[o * ksize ..]. */
typedef struct {
    int ksize;
    int *xmin, *n, *k;
} pil_coeffs;

static void pil_coeffs_free(pil_coeffs *c) {
    free(c->xmin);
    free(c->n);
    free(c->k);
}

static int pil_coeffs_make(int in, int out, pil_coeffs *c) {
    double scale = (double)in / out;
    double filterscale = scale > 1.0 ? scale : 1.0;
    double support = 1.0 * filterscale;
    int ksize = (int)ceil(support) * 2 + 1;
    c->ksize = ksize;
    c->xmin = malloc(sizeof(int) * (size_t)out);
    c->n = malloc(sizeof(int) * (size_t)out);
    c->k = malloc(sizeof(int) * (size_t)out * (size_t)ksize);
    double *w = malloc(sizeof(double) * (size_t)ksize);
    if (!c->xmin || !c->n || !c->k || !w) {
        free(w);
        pil_coeffs_free(c);
        return ts_error(TINYSAM_E_NOMEM, "resize: out of memory");
    }
    double ss = 1.0 / filterscale;
    for (int o = 0; o < out; o++) {
        double center = (o + 0.5) * scale;
        int xmin = (int)(center - support + 0.5);
        if (xmin < 0) xmin = 0;
        int xmax = (int)(center + support + 0.5);
        if (xmax > in) xmax = in;
        int n = xmax - xmin;
        if (n > ksize) n = ksize; /* cannot happen; keeps the table bounds obvious */
        double ww = 0.0;
        for (int x = 0; x < n; x++) {
            double t = (x + xmin - center + 0.5) * ss;
            if (t < 0.0) t = -t;
            w[x] = t < 1.0 ? 1.0 - t : 0.0;
            ww += w[x];
        }
        int *k = c->k + (size_t)o * ksize;
        for (int x = 0; x < n; x++) {
            double v = ww != 0.0 ? w[x] / ww : w[x];
            k[x] = v < 0 ? (int)(-0.5 + v * (1 << PIL_PREC)) : (int)(0.5 + v * (1 << PIL_PREC));
        }
        for (int x = n; x < ksize; x++)
            k[x] = 0;
        c->xmin[o] = xmin;
        c->n[o] = n;
    }
    free(w);
    return TINYSAM_OK;
}

static inline uint8_t pil_clip8(int acc) {
    /* acc >> 22 with clamping to [0, 255]; the shift floors like PIL's. */
    if (acc >= (256 << PIL_PREC)) return 255;
    if (acc <= 0) return 0;
    return (uint8_t)(acc >> PIL_PREC);
}

/* Horizontal pass: rows of src (src_w x h RGB) -> dst (dst_w x h RGB). */
static void pil_pass_h(const uint8_t *src, int src_w, int h, uint8_t *dst, int dst_w,
                       const pil_coeffs *c) {
    for (int y = 0; y < h; y++) {
        const uint8_t *s = src + (size_t)y * src_w * 3;
        uint8_t *d = dst + (size_t)y * dst_w * 3;
        for (int o = 0; o < dst_w; o++) {
            const int *k = c->k + (size_t)o * c->ksize;
            const uint8_t *p = s + (size_t)c->xmin[o] * 3;
            int n = c->n[o];
            int a0 = 1 << (PIL_PREC - 1), a1 = a0, a2 = a0;
            for (int x = 0; x < n; x++) {
                a0 += p[3 * x + 0] * k[x];
                a1 += p[3 * x + 1] * k[x];
                a2 += p[3 * x + 2] * k[x];
            }
            d[3 * o + 0] = pil_clip8(a0);
            d[3 * o + 1] = pil_clip8(a1);
            d[3 * o + 2] = pil_clip8(a2);
        }
    }
}

/* Vertical pass: src (w x src_h RGB) -> dst (w x dst_h RGB). */
static void pil_pass_v(const uint8_t *src, int w, uint8_t *dst, int dst_h, const pil_coeffs *c,
                       int *acc) {
    size_t row = (size_t)w * 3;
    for (int o = 0; o < dst_h; o++) {
        const int *k = c->k + (size_t)o * c->ksize;
        const uint8_t *s = src + (size_t)c->xmin[o] * row;
        for (size_t i = 0; i < row; i++)
            acc[i] = 1 << (PIL_PREC - 1);
        /* Row-major accumulation: same integer sums as PIL's per-pixel loop (integer
         * addition is associative), but cache friendly. */
        for (int y = 0; y < c->n[o]; y++) {
            const uint8_t *p = s + (size_t)y * row;
            int ky = k[y];
            for (size_t i = 0; i < row; i++)
                acc[i] += p[i] * ky;
        }
        uint8_t *d = dst + (size_t)o * row;
        for (size_t i = 0; i < row; i++)
            d[i] = pil_clip8(acc[i]);
    }
}

int ts_resize_rgb_pil(const uint8_t *src, int src_w, int src_h, uint8_t *dst, int dst_w,
                      int dst_h) {
    if (!src || !dst || src_w <= 0 || src_h <= 0 || dst_w <= 0 || dst_h <= 0)
        return ts_error(TINYSAM_E_ARG, "resize: bad sizes %dx%d -> %dx%d", src_w, src_h, dst_w,
                        dst_h);
    if (src_w == dst_w && src_h == dst_h) {
        memcpy(dst, src, (size_t)src_w * src_h * 3);
        return TINYSAM_OK;
    }
    int rc = TINYSAM_OK;
    uint8_t *mid = NULL;
    int *acc = NULL;
    pil_coeffs ch = {0}, cv = {0};
    const uint8_t *cur = src; /* after the horizontal pass: dst_w x src_h */
    if (src_w != dst_w) {
        if ((rc = pil_coeffs_make(src_w, dst_w, &ch))) goto done;
        if (src_h == dst_h) {
            pil_pass_h(src, src_w, src_h, dst, dst_w, &ch);
            goto done;
        }
        mid = ts_malloc((size_t)dst_w * src_h * 3);
        if (!mid) {
            rc = TINYSAM_E_NOMEM;
            goto done;
        }
        pil_pass_h(src, src_w, src_h, mid, dst_w, &ch);
        cur = mid;
    }
    if ((rc = pil_coeffs_make(src_h, dst_h, &cv))) goto done;
    acc = ts_malloc(sizeof(int) * (size_t)dst_w * 3);
    if (!acc) {
        rc = TINYSAM_E_NOMEM;
        goto done;
    }
    pil_pass_v(cur, dst_w, dst, dst_h, &cv, acc);
done:
    pil_coeffs_free(&ch);
    pil_coeffs_free(&cv);
    free(mid);
    free(acc);
    return rc;
}

/* ---------------------------------------------------------------- 3.4 normalisation */

void ts_normalize_pad(const uint8_t *resized, int newh, int neww, float *out) {
    static const float mean[3] = {123.675f, 116.28f, 103.53f};
    static const float stdv[3] = {58.395f, 57.12f, 57.375f};
    const size_t plane = (size_t)TINYSAM_INPUT_SIDE * TINYSAM_INPUT_SIDE;
    for (int c = 0; c < 3; c++) {
        float *o = out + c * plane;
        for (int y = 0; y < TINYSAM_INPUT_SIDE; y++) {
            float *orow = o + (size_t)y * TINYSAM_INPUT_SIDE;
            if (y >= newh) {
                memset(orow, 0, sizeof(float) * TINYSAM_INPUT_SIDE);
                continue;
            }
            const uint8_t *r = resized + (size_t)y * neww * 3 + c;
            /* A true division, as torch does; 1/std would round differently. */
            for (int x = 0; x < neww; x++)
                orow[x] = ((float)r[3 * x] - mean[c]) / stdv[c];
            for (int x = neww; x < TINYSAM_INPUT_SIDE; x++)
                orow[x] = 0.0f;
        }
    }
}

/* ---------------------------------------------------------------- 3.5 coordinates */

double ts_apply_coord(double v, int new_len, int orig_len) {
    return v * ((double)new_len / (double)orig_len);
}

/* ---------------------------------------------------------------- 3.6 masks */

/* torch 1.13 upsample_bilinear2d (align_corners=False) weights for one axis. */
typedef struct {
    int i0, i1;
    float l0, l1;
} lin_tap;

static lin_tap lin_tap_at(int in, int out, int o) {
    if (in == out) return (lin_tap){o, o, 1.0f, 0.0f};
    float s = (float)in / (float)out;
    double real = (double)s * (o + 0.5) - 0.5;
    if (real < 0) real = 0;
    long long i0 = (long long)real;
    if (i0 > in - 1) i0 = in - 1;
    int i1 = i0 < in - 1 ? (int)i0 + 1 : (int)i0;
    double f = real - (double)i0;
    f = f < 0.0 ? 0.0 : (f > 1.0 ? 1.0 : f);
    lin_tap t = {(int)i0, i1, 0.0f, (float)f};
    t.l0 = 1.0f - t.l1;
    return t;
}

static void lin_taps(int in, int out, int n, lin_tap *t) {
    for (int o = 0; o < n; o++) t[o] = lin_tap_at(in, out, o);
}

void ts_upsample_taps(int in, int out, int n, int *i0, int *i1, float *l0, float *l1) {
    for (int o = 0; o < n; o++) {
        lin_tap t = lin_tap_at(in, out, o);
        i0[o] = t.i0;
        i1[o] = t.i1;
        l0[o] = t.l0;
        l1[o] = t.l1;
    }
}

/* The taps of the horizontal passes as separate arrays, so that SIMD code loads 8 or 16 of
 * each at once. */
typedef struct {
    int *i0, *i1;
    float *l0, *l1;
} tap_cols;

/* The taps of n output columns into the 4n words at mem. */
static tap_cols lin_taps_cols(int in, int out, int n, void *mem) {
    tap_cols c;
    c.i0 = mem;
    c.i1 = c.i0 + n;
    c.l0 = (float *)(c.i1 + n);
    c.l1 = c.l0 + n;
    for (int o = 0; o < n; o++) {
        lin_tap t = lin_tap_at(in, out, o);
        c.i0[o] = t.i0;
        c.i1[o] = t.i1;
        c.l0[o] = t.l0;
        c.l1[o] = t.l1;
    }
    return c;
}

/* dst[x] = fmaf(src[ix0], lx0, src[ix1] * lx1): the r0/r1 of section 3.6, which depend
 * only on the source row, so the two axes can be done separably and stay exact. The
 * portable versions use libm's fmaf; the x86-64 one gathers 8 source values per step (5%
 * faster than scalar loads, 16-wide AVX-512 gathers 3% slower, on Zen 4). fmaf and the FMA instruction are both exact, so every version gives
 * identical bits. */
static void interp_row_generic(const float *src, const tap_cols *t, int n, float *dst) {
    for (int x = 0; x < n; x++) dst[x] = fmaf(src[t->i0[x]], t->l0[x], src[t->i1[x]] * t->l1[x]);
}

static void blend_rows_generic(const float *r0, const float *r1, float ly0, float ly1, int n,
                               float *dst) {
    for (int x = 0; x < n; x++) dst[x] = fmaf(r0[x], ly0, r1[x] * ly1);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define PP_HAVE_X86 1

__attribute__((target("avx2,fma"))) static void interp_row_avx2(const float *src,
                                                                const tap_cols *t, int n,
                                                                float *dst) {
    int x = 0;
    for (; x + 8 <= n; x += 8) {
        __m256 a = _mm256_i32gather_ps(src, _mm256_loadu_si256((const __m256i *)(t->i0 + x)), 4);
        __m256 b = _mm256_i32gather_ps(src, _mm256_loadu_si256((const __m256i *)(t->i1 + x)), 4);
        __m256 r = _mm256_fmadd_ps(a, _mm256_loadu_ps(t->l0 + x),
                                   _mm256_mul_ps(b, _mm256_loadu_ps(t->l1 + x)));
        _mm256_storeu_ps(dst + x, r);
    }
    for (; x < n; x++) dst[x] = fmaf(src[t->i0[x]], t->l0[x], src[t->i1[x]] * t->l1[x]);
}

__attribute__((target("avx2,fma"))) static void blend_rows_fma(const float *r0, const float *r1,
                                                               float ly0, float ly1, int n,
                                                               float *dst) {
    for (int x = 0; x < n; x++) dst[x] = fmaf(r0[x], ly0, r1[x] * ly1);
}
#endif

typedef void (*interp_row_fn)(const float *, const tap_cols *, int, float *);
typedef void (*blend_rows_fn)(const float *, const float *, float, float, int, float *);

/* Two-slot cache of horizontally interpolated rows keyed by source row index: output
 * rows walk the source rows monotonically, so each source row is interpolated once. */
typedef struct {
    int key[2];
    float *row[2];
    int next; /* slot to evict */
} row_cache;

/* Scratch layout (floats): step-1 cache 2*neww, intermediate row neww, step-2 cache
 * 2*w, then the four tap tables (16 bytes each = 4 floats per tap). */
long long ts_postprocess_scratch_size(int newh, int neww, int h, int w) {
    return 3LL * neww + 2LL * w + 4LL * (newh + neww + h + w);
}

typedef struct {
    const float *low;       /* 256 x 256 */
    const lin_tap *ay; /* 256 -> 1024 taps for rows < newh */
    tap_cols ax;       /* 256 -> 1024 taps for cols < neww */
    tap_cols bx;       /* neww -> w */
    int neww, w;
    row_cache c1; /* low-res rows interpolated to neww columns */
    row_cache c2; /* intermediate rows interpolated to w columns */
    float *mid;   /* one intermediate (1024-frame, cropped) row */
    interp_row_fn interp_row;
    blend_rows_fn blend_rows;
} pp_state;

static const float *cache_get(row_cache *c, int key) {
    if (c->key[0] == key) return c->row[0];
    if (c->key[1] == key) return c->row[1];
    return NULL;
}

static float *cache_put(row_cache *c, int key, int keep) {
    /* Never evict the row the caller still needs (keep). */
    int s = c->next;
    if (c->key[s] == keep && keep >= 0) s ^= 1;
    c->key[s] = key;
    c->next = s ^ 1;
    return c->row[s];
}

static const float *low_row(pp_state *st, int r, int keep) {
    const float *p = cache_get(&st->c1, r);
    if (p) return p;
    float *d = cache_put(&st->c1, r, keep);
    st->interp_row(st->low + (size_t)r * TINYSAM_LOWRES, &st->ax, st->neww, d);
    return d;
}

static const float *mid_row(pp_state *st, int r, int keep) {
    const float *p = cache_get(&st->c2, r);
    if (p) return p;
    const lin_tap *t = &st->ay[r];
    const float *a = low_row(st, t->i0, -1);
    const float *b = low_row(st, t->i1, t->i0);
    st->blend_rows(a, b, t->l0, t->l1, st->neww, st->mid);
    float *d = cache_put(&st->c2, r, keep);
    st->interp_row(st->mid, &st->bx, st->w, d);
    return d;
}

int ts_postprocess_mask(const float *low_res, int newh, int neww, int h, int w, float *out,
                        float *tmp) {
    return ts_postprocess_mask_rows(low_res, newh, neww, h, w, out, 0, h, tmp);
}

int ts_postprocess_mask_rows(const float *low_res, int newh, int neww, int h, int w, float *out,
                             int y0, int y1, float *tmp) {
    if (!low_res || !out || newh <= 0 || neww <= 0 || newh > TINYSAM_INPUT_SIDE ||
        neww > TINYSAM_INPUT_SIDE || h <= 0 || w <= 0 || y0 < 0 || y1 > h || y0 > y1)
        return ts_error(TINYSAM_E_ARG, "postprocess: bad sizes %dx%d -> %dx%d", neww, newh, w, h);
    float *own = NULL;
    if (!tmp) {
        own = ts_malloc(sizeof(float) * (size_t)ts_postprocess_scratch_size(newh, neww, h, w));
        if (!own) return TINYSAM_E_NOMEM;
        tmp = own;
    }
    pp_state st = {0};
    float *p = tmp;
    st.c1.row[0] = p, p += neww;
    st.c1.row[1] = p, p += neww;
    st.mid = p, p += neww;
    st.c2.row[0] = p, p += w;
    st.c2.row[1] = p, p += w;
    lin_tap *ay = (lin_tap *)p, *ax = ay + newh, *by = ax + neww, *bx = by + h; /* 4 words each */
    st.c1.key[0] = st.c1.key[1] = st.c2.key[0] = st.c2.key[1] = -1;

    /* Step 1: 256 -> 1024 (only the cropped rows/columns); step 3: newh x neww -> h x w. */
    lin_taps(TINYSAM_LOWRES, TINYSAM_INPUT_SIDE, newh, ay);
    st.ax = lin_taps_cols(TINYSAM_LOWRES, TINYSAM_INPUT_SIDE, neww, ax);
    lin_taps(newh, h, h, by);
    st.bx = lin_taps_cols(neww, w, w, bx);
    st.low = low_res;
    st.ay = ay;
    st.neww = neww;
    st.w = w;
    st.interp_row = interp_row_generic;
    st.blend_rows = blend_rows_generic;
#ifdef PP_HAVE_X86
    /* the kernels' ISA (TINYSAM_ISA, ts_nn_set_isa), so that every path is testable */
    const char *isa = ts_nn_isa_name();
    if (strcmp(isa, "scalar") != 0) {
        st.interp_row = interp_row_avx2; /* 16-wide gathers were slower on Zen 4 */
        st.blend_rows = blend_rows_fma;
    }
#endif

    for (int y = y0; y < y1; y++) {
        const float *a = mid_row(&st, by[y].i0, -1);
        const float *b = mid_row(&st, by[y].i1, by[y].i0);
        st.blend_rows(a, b, by[y].l0, by[y].l1, w, out + (size_t)(y - y0) * w);
    }
    free(own);
    return TINYSAM_OK;
}
