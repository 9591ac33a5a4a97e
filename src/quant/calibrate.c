/* calibrate.c - post-training calibration of the W8A8 image encoder (calibrate.h). */
#include "quant/calibrate.h"
#include "quant/calibrate_decoder.h"
#include "quant/hessian.h"
#include "core.h"
#include "model/sam.h"
#include "model/transforms.h"
#include "quant/int8_model.h"
#include "quant/quant.h"
#include "threads.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_GRID   64    /* clip ratios searched per layer */
#define LO_RATIO 0.25f /* smallest clip, as a fraction of the observed range */
#define LAYER_ROWS 128 /* rows of the layer-output-error search */
#define LAYER_CANDS 24
#define HESS_ROWS 128 /* rows of the Hessian-guided search */

enum { NQ = TS_TINY_VIT_N_QLAYERS, NA = TS_TINY_VIT_N_ATTN, NC = NQ + NA };

typedef struct {
    ts_tiny_vit_qlayer q;
    int K;      /* values per sampled row: q.K, or the input channels of a 3x3 conv */
    float *buf; /* samples, whole rows of K */
    long long *ids; /* the row number of each sampled row */
    size_t n, cap;
    size_t img_row0; /* first sampled row of the current image */
    long long stride; /* keep a row when hash(row) % stride == 0 */
    size_t img_cap, img_n; /* this image's budget and use */
    float mn, mx;
} col_t;

struct ts_calib {
    const ts_tiny_vit *enc;
    col_t L[NC]; /* the layers' inputs, then the attention blocks' qkv outputs */
    pthread_mutex_t mu;
    int n_images;
};

/* A mixer of the row number (splitmix64's finaliser): rows kept spread over the map. */
static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

int ts_calib_new(const ts_tiny_vit *enc, int n_images, ts_calib **out) {
    if (!enc || !out || n_images < 1)
        return ts_error(TINYSAM_E_ARG, "ts_calib_new: bad argument");
    *out = NULL;
    if (ts_tiny_vit_n_int8(enc))
        return ts_error(TINYSAM_E_ARG, "calibration needs the float model, not an int8 one");
    ts_calib *c = ts_calloc(1, sizeof *c);
    if (!c) return TINYSAM_E_NOMEM;
    c->enc = enc;
    c->n_images = n_images;
    pthread_mutex_init(&c->mu, NULL);
    size_t per_img = TS_MIN((size_t)TS_CALIB_VALUES_PER_IMAGE,
                            (size_t)TS_CALIB_VALUES_MAX / (size_t)n_images);
    for (int i = 0; i < NC; i++) {
        col_t *l = &c->L[i];
        int rc = 0;
        if (i < NQ) {
            rc = ts_tiny_vit_qlayer_get(enc, i, &l->q);
        } else { /* an attention block's qkv output, rows of 3C */
            ts_tiny_vit_attn a;
            if (!(rc = ts_tiny_vit_attn_get(enc, i - NQ, &a))) {
                snprintf(l->q.name, sizeof l->q.name, "%s", a.name);
                l->q.N = l->q.K = 3 * a.C;
                l->q.taps = 1;
                l->q.rows = a.rows;
            }
        }
        if (rc) {
            ts_calib_free(c);
            return rc;
        }
        l->K = l->q.K / l->q.taps;
        long long vals = l->q.rows * l->K;
        l->stride = TS_MAX(1, (vals + (long long)per_img - 1) / (long long)per_img);
        /* the hash keeps about rows / stride rows: room for 25% more, then stop */
        size_t rows_img = (size_t)(l->q.rows / l->stride) * 5 / 4 + 16;
        l->img_cap = TS_MIN(rows_img * (size_t)l->K, per_img * 5 / 4);
        l->img_cap = TS_MAX(1, l->img_cap / (size_t)l->K) * (size_t)l->K; /* >= 1 row */
        l->cap = l->img_cap * (size_t)n_images;
        l->buf = ts_malloc(sizeof(float) * l->cap);
        l->ids = ts_malloc(sizeof(long long) * (l->cap / (size_t)l->K + 1));
        l->mn = INFINITY;
        l->mx = -INFINITY;
        if (!l->buf || !l->ids) {
            ts_calib_free(c);
            return TINYSAM_E_NOMEM;
        }
    }
    *out = c;
    return 0;
}

void ts_calib_free(ts_calib *c) {
    if (!c) return;
    for (int i = 0; i < NC; i++) {
        free(c->L[i].buf);
        free(c->L[i].ids);
    }
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* The tap (worker threads): range of every value, copies of the sampled rows. */
static void tap(void *user, int layer, long long row0, const float *x, int rows, int ldx) {
    ts_calib *c = user;
    if (layer < 0 || layer >= NC) return;
    col_t *l = &c->L[layer];
    const int K = l->K;
    float mn = INFINITY, mx = -INFINITY;
    for (int r = 0; r < rows; r++)
        for (int k = 0; k < K; k++) {
            float v = x[(size_t)r * ldx + k];
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
    pthread_mutex_lock(&c->mu);
    if (mn < l->mn) l->mn = mn;
    if (mx > l->mx) l->mx = mx;
    for (int r = 0; r < rows; r++) {
        if (mix((uint64_t)(row0 + r)) % (uint64_t)l->stride) continue;
        if (l->img_n + (size_t)K > l->img_cap || l->n + (size_t)K > l->cap) break;
        l->ids[l->n / (size_t)K] = row0 + r;
        memcpy(l->buf + l->n, x + (size_t)r * ldx, sizeof(float) * K);
        l->n += (size_t)K;
        l->img_n += (size_t)K;
    }
    pthread_mutex_unlock(&c->mu);
}

typedef struct {
    long long id;
    size_t at;
} row_ref;

static int cmp_row(const void *a, const void *b) {
    const row_ref *x = a, *y = b;
    if (x->id != y->id) return (x->id > y->id) - (x->id < y->id);
    return (x->at > y->at) - (x->at < y->at); /* one thread's repeats: as appended */
}

long ts_calib_sort_rows(float *buf, long long *ids, size_t r0, size_t nr, size_t K, int unique) {
    if (nr < 2) return (long)nr;
    row_ref *ref = ts_malloc(sizeof(row_ref) * nr);
    float *tmp = ts_malloc(sizeof(float) * nr * K);
    if (!ref || !tmp) {
        free(ref);
        free(tmp);
        return -1;
    }
    for (size_t i = 0; i < nr; i++) ref[i] = (row_ref){ids[r0 + i], r0 + i};
    qsort(ref, nr, sizeof *ref, cmp_row);
    size_t u = 0; /* rows kept */
    for (size_t i = 0; i < nr; i++) {
        if (unique && u && ref[i].id == ids[r0 + u - 1]) continue;
        memcpy(tmp + u * K, buf + ref[i].at * K, sizeof(float) * K);
        ids[r0 + u++] = ref[i].id;
    }
    memcpy(buf + r0 * K, tmp, sizeof(float) * u * K);
    free(ref);
    free(tmp);
    return (long)u;
}

/* This image's rows in row order, each once: the samples, hence the searched steps, depend
 * neither on thread timing nor on the thread count (the MBConv / PatchMerging pipeline's
 * bands, whose count follows the thread count, recompute the first 1x1's rows above them and
 * tap them again). */
static int sort_rows(col_t *l) {
    const size_t K = (size_t)l->K, r0 = l->img_row0, nr = l->n / K - r0;
    long kept = ts_calib_sort_rows(l->buf, l->ids, r0, nr, K, 1);
    if (kept < 0) return TINYSAM_E_NOMEM;
    l->n -= (nr - (size_t)kept) * K;
    l->img_n -= (nr - (size_t)kept) * K;
    return 0;
}

int ts_calib_add_input(ts_calib *c, const float *input) {
    if (!c || !input) return ts_error(TINYSAM_E_ARG, "ts_calib_add_input: NULL argument");
    float *emb = ts_malloc_aligned(sizeof(float) * 256 * 64 * 64);
    if (!emb) return TINYSAM_E_NOMEM;
    for (int i = 0; i < NC; i++) {
        c->L[i].img_n = 0;
        c->L[i].img_row0 = c->L[i].n / (size_t)c->L[i].K;
    }
    int rc = ts_tiny_vit_forward_tap(c->enc, input, emb, NULL, NULL, tap, c);
    ts_free_aligned(emb);
    for (int i = 0; i < NC && !rc; i++) rc = sort_rows(&c->L[i]);
    return rc;
}

int ts_calib_add_image(ts_calib *c, const tinysam_image *img) {
    if (!c || !img || !img->rgb || img->width <= 0 || img->height <= 0)
        return ts_error(TINYSAM_E_ARG, "ts_calib_add_image: bad argument");
    int newh, neww;
    ts_preprocess_shape(img->height, img->width, TINYSAM_INPUT_SIDE, &newh, &neww);
    uint8_t *resized = ts_malloc((size_t)newh * neww * 3);
    float *input = ts_malloc_aligned(sizeof(float) * 3 * TINYSAM_INPUT_SIDE * TINYSAM_INPUT_SIDE);
    int rc = TINYSAM_E_NOMEM;
    if (resized && input &&
        !(rc = ts_resize_rgb_pil(img->rgb, img->width, img->height, resized, neww, newh))) {
        ts_normalize_pad(resized, newh, neww, input);
        rc = ts_calib_add_input(c, input);
    }
    free(resized);
    ts_free_aligned(input);
    return rc;
}

float ts_calib_search_asym(const float *x, size_t n, int n_grid, float lo_ratio, int *zp,
                           double *mse) {
    float lo = 0.0f, hi = 0.0f;
    for (size_t i = 0; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i]; /* NaN never wins */
    }
    *zp = 0;
    if (mse) *mse = 0.0;
    if (!(hi > lo) || !isfinite(hi) || !isfinite(lo)) return 1.0f;
    if (n_grid < 1) n_grid = 1;
    float best_step = (hi - lo) / 255.0f;
    int best_zp = (int)TS_MIN(255.0f, nearbyintf(-lo / best_step));
    double best = INFINITY;
    for (int g = 0; g < n_grid; g++) {
        float r =
            n_grid == 1 ? 1.0f : lo_ratio + (1.0f - lo_ratio) * (float)g / (float)(n_grid - 1);
        float top = TS_MAX(r * hi, 0.0f);
        float step = (top - lo) / 255.0f;
        if (!(step > 0.0f)) continue;
        int z = (int)TS_MIN(255.0f, TS_MAX(0.0f, nearbyintf(-lo / step)));
        double e = 0.0;
        for (size_t i = 0; i < n; i++) {
            float q = nearbyintf(x[i] / step) + (float)z;
            q = q < 0.0f ? 0.0f : q > 255.0f ? 255.0f : q;
            double d = (double)((q - (float)z) * step) - (double)x[i];
            e += d * d;
        }
        if (e < best) {
            best = e;
            best_step = step;
            best_zp = z;
        }
    }
    *zp = best_zp;
    if (mse) *mse = n ? best / (double)n : 0.0;
    return best_step;
}

/* n rows of K for a search, spread evenly over the n_values / K rows sampled. */
static void pick_rows(const float *buf, size_t n_values, int K, int n, float *X) {
    size_t every = n_values / (size_t)K / (size_t)n;
    for (int r = 0; r < n; r++)
        memcpy(X + (size_t)r * K, buf + (size_t)r * every * K, sizeof(float) * K);
}

/* Layer-output-error search of a symmetric input step (quant.h), on LAYER_ROWS of the
 * sampled rows, over candidates around the MSE step. */
static float search_layer(const float *buf, size_t n_values, const float *w, int K, int N,
                          float mse_step) {
    int n = (int)TS_MIN((size_t)LAYER_ROWS, n_values / (size_t)K);
    if (n < 1) return mse_step;
    float *X = ts_malloc(sizeof(float) * (size_t)n * K);
    float *Wt = ts_malloc(sizeof(float) * (size_t)K * N);
    float cand[LAYER_CANDS];
    float step = mse_step;
    if (X && Wt) {
        pick_rows(buf, n_values, K, n, X);
        for (int o = 0; o < N; o++)
            for (int k = 0; k < K; k++) Wt[(size_t)k * N + o] = w[(size_t)o * K + k];
        for (int i = 0; i < LAYER_CANDS; i++) /* 0.5x .. 1.5x of the MSE step */
            cand[i] = mse_step * (0.5f + (float)i / (float)(LAYER_CANDS - 1));
        int best = ts_quant_search_step_layer(X, n, K, Wt, N, NULL, cand, LAYER_CANDS, -128, 127,
                                              NULL);
        if (best >= 0) step = cand[best];
    }
    free(X);
    free(Wt);
    return step;
}

float ts_calib_input_step(const float *buf, size_t n, int post_gelu, const float *w, int K, int N,
                          int *zp) {
    if (post_gelu) return ts_calib_search_asym(buf, n, N_GRID, LO_RATIO, zp, NULL);
    *zp = 128;
    float step = ts_quant_search_step_mse(buf, n, -128, 127, N_GRID, LO_RATIO, NULL);
    return w ? search_layer(buf, n, w, K, N, step) : step;
}

typedef struct {
    ts_calib *c;
    int method;
    float *step;
    int *zp;
    const ts_hessian *h; /* TS_CALIB_HESSIAN */
    float **w_scale;
    int rc;
} solve_job;

/* The Hessian-guided search (hessian.h) of a GEMM layer on HESS_ROWS of its sampled rows,
 * starting from the MSE step in step / zp; the per-channel weight scales into ws. */
static int search_hessian(const col_t *l, const double *G, float *step, int *zp, float *ws) {
    const int K = l->q.K;
    int n = (int)TS_MIN((size_t)HESS_ROWS, l->n / (size_t)K);
    if (n < 1) return 0;
    float *X = ts_malloc(sizeof(float) * (size_t)n * K);
    if (!X) return TINYSAM_E_NOMEM;
    pick_rows(l->buf, l->n, K, n, X);
    int rc = ts_hessian_search_layer(X, n, K, l->q.w, l->q.N, G, l->q.post_gelu, l->mn, l->mx,
                                     NULL, step, zp, ws, NULL);
    free(X);
    return rc;
}

static void solve_task(void *ctx, int i, int tid) {
    (void)tid;
    solve_job *j = ctx;
    const col_t *l = &j->c->L[i];
    const int layer = j->method == TS_CALIB_LAYER && l->q.taps == 1;
    j->step[i] = ts_calib_input_step(l->buf, l->n, l->q.post_gelu, layer ? l->q.w : NULL, l->q.K,
                                     l->q.N, &j->zp[i]);
    /* Hessian: GEMM layers (a 3x3 convolution's samples are pixels, not its patches: it keeps
     * the MSE step and abs-max weight scales) */
    if (j->method == TS_CALIB_HESSIAN && l->q.taps == 1 && j->w_scale[i]) {
        int rc = search_hessian(l, j->h->g2[i], &j->step[i], &j->zp[i], j->w_scale[i]);
        if (rc) j->rc = rc;
    } else if (j->method == TS_CALIB_HESSIAN && j->w_scale[i]) { /* abs-max, as ts_quant_weights */
        for (int o = 0; o < l->q.N; o++) {
            float m = 0.0f;
            for (int k = 0; k < l->q.K; k++) m = fmaxf(m, fabsf(l->q.w[(size_t)o * l->q.K + k]));
            j->w_scale[i][o] = m > 0.0f ? m / 127.0f : 1.0f;
        }
    }
}

int ts_calib_solve(ts_calib *c, int method, float *step, int *zp) {
    if (method == TS_CALIB_HESSIAN)
        return ts_error(TINYSAM_E_ARG, "ts_calib_solve: the Hessian method needs "
                                       "ts_calib_solve_hessian");
    return ts_calib_solve_hessian(c, method, NULL, step, zp, NULL);
}

int ts_calib_solve_hessian(ts_calib *c, int method, const ts_hessian *h, float *step, int *zp,
                           float **w_scale) {
    if (!c || !step || !zp ||
        (method != TS_CALIB_MSE && method != TS_CALIB_LAYER && method != TS_CALIB_HESSIAN) ||
        (method == TS_CALIB_HESSIAN && (!h || !w_scale)))
        return ts_error(TINYSAM_E_ARG, "ts_calib_solve: bad argument");
    for (int i = 0; i < NQ; i++)
        if (!c->L[i].n)
            return ts_error(TINYSAM_E_ARG, "%s: no calibration samples", c->L[i].q.name);
    solve_job j = {c, method, step, zp, h, w_scale, 0};
    ts_parallel_for(NQ, solve_task, &j);
    return j.rc;
}

/* The attention blocks' product steps (calibrate.h). */
int ts_calib_solve_attn(ts_calib *c, float *steps) {
    if (!c || !steps) return ts_error(TINYSAM_E_ARG, "ts_calib_solve_attn: bad argument");
    for (int a = 0; a < NA; a++) {
        const col_t *l = &c->L[NQ + a];
        const size_t rows = l->n / (size_t)l->K;
        if (!rows) return ts_error(TINYSAM_E_ARG, "%s: no calibration samples", l->q.name);
        float *v = ts_malloc(sizeof(float) * rows * (size_t)l->K / 3);
        if (!v) return TINYSAM_E_NOMEM;
        for (int part = 0; part < 3; part++) { /* q, k, v: columns h*96 + part*32 + d */
            size_t n = 0;
            for (size_t r = 0; r < rows; r++)
                for (int col = part * 32; col < l->K; col += 96)
                    for (int d = 0; d < 32; d++) v[n++] = l->buf[r * (size_t)l->K + col + d];
            steps[4 * a + part] = ts_quant_search_step_mse(v, n, part ? -127 : -128, 127,
                                                            N_GRID, LO_RATIO, NULL);
        }
        steps[4 * a + 3] = 1.0f / 255.0f; /* exp(s - max) in (0, 1] */
        free(v);
    }
    return 0;
}

int ts_calib_gelu_compare(ts_calib *c, int layer, double *mse_asym, double *mse_twin) {
    if (!c || layer < 0 || layer >= NQ || !c->L[layer].q.post_gelu || !mse_asym || !mse_twin)
        return ts_error(TINYSAM_E_ARG, "ts_calib_gelu_compare: bad argument");
    const col_t *l = &c->L[layer];
    int zp;
    ts_calib_search_asym(l->buf, l->n, N_GRID, LO_RATIO, &zp, mse_asym);
    float hi = 0.0f;
    for (size_t i = 0; i < l->n; i++) hi = l->buf[i] > hi ? l->buf[i] : hi;
    double best = INFINITY;
    for (int g = 0; g < N_GRID && hi > 0.0f; g++) { /* the positive step, as the asym search */
        float r = LO_RATIO + (1.0f - LO_RATIO) * (float)g / (float)(N_GRID - 1);
        float step = r * hi / 127.0f;
        double e = 0.0;
        for (size_t i = 0; i < l->n; i++) {
            double d = (double)ts_twin_gelu_fq(l->buf[i], step) - (double)l->buf[i];
            e += d * d;
        }
        best = e < best ? e : best;
    }
    *mse_twin = l->n && isfinite(best) ? best / (double)l->n : 0.0;
    return 0;
}

const char *ts_quant_scope_name(int scope) {
    return scope == TS_SCOPE_GEMM ? "gemm" : scope == TS_SCOPE_ENCODER ? "encoder" : "all";
}

const char *ts_quant_method_name(int method) {
    return method == TS_CALIB_LAYER ? "layer" : method == TS_CALIB_HESSIAN ? "hessian" : "mse";
}

int ts_calib_out_begin(ts_calib_out *o, const tinysam_model *model, const char *const *paths,
                       int n_paths, int method, int scope, int n_int8, const ts_hessian *grads,
                       int verbose) {
    snprintf(o->calib, sizeof o->calib,
             "{\"images\":%d,\"method\":\"%s\",\"scope\":\"%s\",\"int8_layers\":%d,"
             "\"weights\":\"per-channel symmetric int8\","
             "\"activations\":\"u8 static per layer\"}",
             n_paths, ts_quant_method_name(method), ts_quant_scope_name(scope), n_int8);
    static const char *keys[TS_CALIB_META_N] = {"format", "tinysam.family", "tinysam.version",
                                                "tinysam.config", "tinysam.calibration"};
    const char *values[TS_CALIB_META_N] = {"pt", model->info.family, TINYSAM_VERSION,
                                           model->info.config, o->calib};
    memcpy(o->keys, keys, sizeof keys);
    memcpy(o->values, values, sizeof values);
    /* scope all: the decoder's int8 layers (calibrate_decoder.h) replace their float tensors
     * in a view of the map; the encoder scopes keep the decoder weight-only */
    o->dv = NULL;
    o->src = model->map;
    if (scope != TS_SCOPE_ALL) return 0;
    ts_dec_quant dq;
    int rc = ts_calib_decoder_hessian((tinysam_model *)model, paths, n_paths, grads, &dq, verbose);
    if (!rc) rc = ts_int8_decoder_view_new(model->map, &dq, &o->dv);
    if (!rc) o->src = ts_int8_decoder_view_map(o->dv);
    return rc;
}

void ts_calib_out_end(ts_calib_out *o, int rc, const char *out_path, int verbose) {
    ts_int8_decoder_view_free(o->dv);
    if (!rc && verbose) fprintf(stderr, "wrote %s\n", out_path);
}

int ts_quantize_model(const tinysam_model *model, const char *const *paths, int n_paths,
                      int method, const char *out_path, int verbose) {
    ts_quant_opts o = {method, TS_SCOPE_ALL, NULL};
    return ts_quantize_model_opts(model, paths, n_paths, &o, out_path, verbose);
}

int ts_quantize_model_opts(const tinysam_model *model, const char *const *paths, int n_paths,
                           const ts_quant_opts *opts, const char *out_path, int verbose) {
    if (!model || !paths || n_paths < 1 || !out_path || !opts || opts->scope < TS_SCOPE_GEMM ||
        opts->scope > TS_SCOPE_ALL)
        return ts_error(TINYSAM_E_ARG, "ts_quantize_model: bad argument");
    const int method = opts->method;
    if (!model->encoder)
        return ts_error(TINYSAM_E_UNSUPPORTED, "quantisation supports the vit_t (TinySAM) "
                                               "encoder only, not %s", model->info.family);
    ts_calib *c;
    int rc = ts_calib_new(model->encoder, n_paths, &c);
    if (rc) return rc;
    for (int i = 0; i < n_paths && !rc; i++) {
        if (verbose) fprintf(stderr, "calibrating %d/%d %s\n", i + 1, n_paths, paths[i]);
        tinysam_image img;
        if ((rc = tinysam_image_load(paths[i], 0, &img))) break;
        rc = ts_calib_add_image(c, &img);
        tinysam_image_free(&img);
    }
    float step[NQ], attn[4 * NA];
    int zp[NQ];
    float *w_scale[NQ] = {0}; /* the Hessian method's searched weight scales */
    ts_hessian h;
    memset(&h, 0, sizeof h);
    const ts_hessian *hg = opts->grads ? opts->grads : &h;
    if (!rc && method == TS_CALIB_HESSIAN) {
        if (!opts->grads && !(rc = ts_hessian_init(&h, model->encoder)))
            rc = ts_hessian_collect(model, paths, n_paths, &h, verbose);
        for (int i = 0; i < NQ && !rc; i++)
            if (!(w_scale[i] = ts_malloc(sizeof(float) * (size_t)hg->n[i]))) rc = TINYSAM_E_NOMEM;
    }
    if (!rc) {
        if (verbose) fprintf(stderr, "searching %d activation steps (%s)\n", NQ,
                             ts_quant_method_name(method));
        rc = ts_calib_solve_hessian(c, method, hg, step, zp, w_scale);
        if (!rc) rc = ts_calib_solve_attn(c, attn);
    }
    const int nq = opts->scope == TS_SCOPE_GEMM ? TS_TINY_VIT_N_GEMM : TS_TINY_VIT_N_ENCODER;
    ts_calib_out o;
    if (!rc && !(rc = ts_calib_out_begin(&o, model, paths, n_paths, method, opts->scope, nq,
                                         method == TS_CALIB_HESSIAN ? hg : NULL, verbose))) {
        rc = ts_int8_model_save_layers_ws(out_path, o.src, model->encoder, step, zp,
                                          method == TS_CALIB_HESSIAN
                                              ? (const float *const *)w_scale
                                              : NULL,
                                          nq, opts->scope == TS_SCOPE_GEMM ? NULL : attn,
                                          TS_CALIB_META_N, o.keys, o.values);
        ts_calib_out_end(&o, rc, out_path, verbose);
    }
    for (int i = 0; i < NQ; i++) free(w_scale[i]);
    ts_hessian_free(&h);
    ts_calib_free(c);
    return rc;
}
