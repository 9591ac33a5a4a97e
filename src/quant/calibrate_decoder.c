/* calibrate_decoder.c - calibration and file tensors of the mask decoder's int8 layers
 * (calibrate_decoder.h). */
#include "quant/calibrate_decoder.h"
#include "core.h"
#include "io/tensor_map_internal.h"
#include "model/sam_decoder_internal.h"
#include "quant/calibrate.h"
#include "quant/hessian.h"
#include "quant/quant.h"
#include "tinysam.h"

#include <math.h>
#include "threads.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GRID 4          /* points per side of the calibration grid */
#define ROW_EVERY 64    /* one sampled row in this many (spread by a hash of the row) */
#define N_GRID 100      /* candidates of the step searches */
#define LO_RATIO 0.5f
#define HESS_ROWS 128   /* rows of the Hessian-guided search (as the encoder's) */

size_t ts_dec_ws_offset(int s, int *n) {
    size_t off = 0;
    for (int k = 0; k <= s && k < TS_DEC_N_SITES; k++) {
        int N = 0, K, relu; /* rows with a fixed weight: not the mask product's */
        char P[128];
        if (k == TS_DEC_SITE_MASK || ts_dec_site_layer(k, P, sizeof P, &N, &K, &relu)) N = 0;
        if (k == s) {
            if (n) *n = N;
            return off;
        }
        off += (size_t)N;
    }
    if (n) *n = 0;
    return off;
}

/* The float weight of site s as the int8 layer's rows: W[N][K] (a ConvTranspose2d's rows
 * (a*2+b)*out + o, as put_convt writes them); NULL when s has no fixed weight. */
static float *site_weight(const ts_tensor_map *m, int s, int *N, int *K) {
    char P[128], n[160];
    int relu;
    if (s == TS_DEC_SITE_MASK || ts_dec_site_layer(s, P, sizeof P, N, K, &relu)) return NULL;
    const int convt = s == TS_DEC_SITE_UP0 || s == TS_DEC_SITE_UP3;
    const int in = convt ? *K : 0, out = convt ? *N / 4 : 0;
    snprintf(n, sizeof n, "%s.weight", P);
    const ts_tensor *w = ts_map_get(m, n);
    if (!w || w->dtype != TS_DTYPE_F32 || w->numel != (int64_t)*N * *K) return NULL;
    float *g = ts_malloc(sizeof(float) * (size_t)*N * *K);
    if (!g) return NULL;
    const float *wf = w->data;
    if (in)
        for (int c = 0; c < in; c++)
            for (int o = 0; o < out; o++)
                for (int ab = 0; ab < 4; ab++)
                    g[(size_t)(ab * out + o) * in + c] = wf[((size_t)c * out + o) * 4 + ab];
    else
        memcpy(g, wf, sizeof(float) * (size_t)*N * *K);
    return g;
}

typedef struct {
    const ts_tensor_map *map;
    const ts_hessian *h;
    float *const *buf;
    const size_t *n;
    ts_dec_quant *q;
    int rc;
} hess_job;

/* The Hessian-guided search of site s (from its MSE step), on HESS_ROWS of its sampled rows
 * spread over the sample. */
static void hess_task(void *ctx, int s, int tid) {
    (void)tid;
    hess_job *j = ctx;
    ts_dec_quant *q = j->q;
    int N = 0, K = 0, nw = 0;
    const size_t off = ts_dec_ws_offset(s, &nw);
    if (!nw || !j->h->dec_g2[s] || j->h->dec_n[s] != nw || !(q->step[s] > 0.0f)) return;
    float *W = site_weight(j->map, s, &N, &K);
    if (!W || N != nw) {
        free(W);
        return;
    }
    const size_t rows = j->n[s] / (size_t)K;
    const int n = (int)TS_MIN((size_t)HESS_ROWS, rows);
    float *X = n > 0 ? ts_malloc(sizeof(float) * (size_t)n * K) : NULL;
    if (!X) {
        free(W);
        if (n > 0) j->rc = TINYSAM_E_NOMEM;
        return;
    }
    const float *b = j->buf[s];
    for (int r = 0; r < n; r++)
        memcpy(X + (size_t)r * K, b + (size_t)r * (rows / (size_t)n) * K, sizeof(float) * K);
    float mn = 0.0f, mx = 0.0f;
    for (size_t i = 0; i < j->n[s]; i++) mn = fminf(mn, b[i]), mx = fmaxf(mx, b[i]);
    char P[128];
    int relu = 0, tN, tK;
    if (s >= TS_DEC_SITE_TOK0) ts_dec_tok_layer(s - TS_DEC_SITE_TOK0, P, sizeof P, &tN, &tK, &relu);
    const int asym = s == TS_DEC_SITE_UP3 || relu; /* post-GELU / ReLU inputs, as the MSE steps */
    /* no gradient at all (mask token 0's hypernetwork: its mask is not in the task loss):
     * the plain output error */
    const double *G = j->h->dec_g2[s];
    double gs = 0;
    for (int c = 0; c < N; c++) gs += G[c];
    int rc = ts_hessian_search_layer(X, n, K, W, N, gs > 0 ? G : NULL, asym, mn, mx, NULL,
                                     &q->step[s], &q->zp[s], q->ws + off, NULL);
    if (rc) j->rc = rc;
    else q->ws_set[s] = 1;
    free(X);
    free(W);
}

/* The samples of every site. The upscaling's chunks of one prompt append from every pool
 * thread, in the order they finish: each row is kept with its row number and the rows of a
 * prompt are put in row order once it returns (sort_call), so the sample, hence every step
 * searched on it, does not depend on thread timing or count. */
typedef struct {
    pthread_mutex_t lock;
    unsigned call; /* prompt counter: which residue of the row hash is kept */
    float *buf[TS_DEC_N_SITES];
    long long *id[TS_DEC_N_SITES]; /* per kept row: its row number in the call */
    size_t n[TS_DEC_N_SITES], cap[TS_DEC_N_SITES];
    size_t call0[TS_DEC_N_SITES]; /* values kept before the current prompt */
    int cols[TS_DEC_N_SITES];
    int failed;
} collector;

static void probe(void *ctx, int site, const float *x, int rows, int cols, int row0) {
    collector *c = ctx;
    pthread_mutex_lock(&c->lock);
    for (int r = 0; r < rows && !c->failed; r++) {
        unsigned h = ((unsigned)(row0 + r) * 2654435761u) >> 16;
        if (site < TS_DEC_SITE_TOK0 && h % ROW_EVERY != c->call % ROW_EVERY) continue;
        if (c->cols[site] != cols && c->n[site]) { /* one row width per site */
            c->failed = 1;
            break;
        }
        c->cols[site] = cols;
        if (c->n[site] + (size_t)cols > c->cap[site]) {
            size_t nc = c->cap[site] ? 2 * c->cap[site] : (size_t)1 << 20;
            float *b = realloc(c->buf[site], sizeof(float) * nc);
            if (b) c->buf[site] = b;
            long long *id = b ? realloc(c->id[site], sizeof(long long) * (nc / cols + 1)) : NULL;
            if (!id) {
                c->failed = 1;
                break;
            }
            c->id[site] = id;
            c->cap[site] = nc;
        }
        c->id[site][c->n[site] / (size_t)cols] = (long long)row0 + r;
        memcpy(c->buf[site] + c->n[site], x + (size_t)r * cols, sizeof(float) * (size_t)cols);
        c->n[site] += (size_t)cols;
    }
    pthread_mutex_unlock(&c->lock);
}

/* Puts the rows site s kept during the current prompt in row order. */
static int sort_call(collector *c, int s) {
    const size_t K = (size_t)c->cols[s], r0 = K ? c->call0[s] / K : 0;
    const size_t nr = K ? c->n[s] / K - r0 : 0;
    return ts_calib_sort_rows(c->buf[s], c->id[s], r0, nr, K, 0) < 0 ? TINYSAM_E_NOMEM : 0;
}

/* One prompt through the float model (probe on), its best mask's box in *box (0 if empty). */
static int run_prompt(tinysam_model *m, const tinysam_embedding *e, collector *c,
                      const tinysam_prompt *p, float box[4], int *has_box) {
    tinysam_prediction pr;
    c->call++;
    for (int s = 0; s < TS_DEC_N_SITES; s++) c->call0[s] = c->n[s];
    int rc = tinysam_predict(m, e, p, TINYSAM_PREDICT_MASKS, &pr);
    if (rc) return rc;
    for (int s = 0; s < TS_DEC_N_SITES && !rc && !c->failed; s++) rc = sort_call(c, s);
    if (rc) {
        tinysam_prediction_free(&pr);
        return rc;
    }
    *has_box = 0;
    if (box) {
        const uint8_t *mk = pr.masks + (size_t)pr.best * pr.width * pr.height;
        int x0 = pr.width, y0 = pr.height, x1 = -1, y1 = -1;
        for (int y = 0; y < pr.height; y++)
            for (int x = 0; x < pr.width; x++)
                if (mk[(size_t)y * pr.width + x]) {
                    x0 = TS_MIN(x0, x), x1 = TS_MAX(x1, x);
                    y0 = TS_MIN(y0, y), y1 = TS_MAX(y1, y);
                }
        if (x1 >= 0) {
            box[0] = (float)x0, box[1] = (float)y0, box[2] = (float)x1, box[3] = (float)y1;
            *has_box = 1;
        }
    }
    tinysam_prediction_free(&pr);
    return 0;
}

int ts_calib_decoder(tinysam_model *model, const char *const *paths, int n, ts_dec_quant *q,
                     int verbose) {
    return ts_calib_decoder_hessian(model, paths, n, NULL, q, verbose);
}

int ts_calib_decoder_hessian(tinysam_model *model, const char *const *paths, int n,
                             const ts_hessian *h, ts_dec_quant *q, int verbose) {
    if (!model || !paths || n < 1 || !q)
        return ts_error(TINYSAM_E_ARG, "ts_calib_decoder: bad argument");
    memset(q->ws_set, 0, sizeof q->ws_set);
    if (ts_decoder_probe)
        return ts_error(TINYSAM_E_ARG, "ts_calib_decoder: a decoder calibration is running");
    if (model->mask_decoder->up_i8)
        return ts_error(TINYSAM_E_ARG, "the model's decoder is already quantised");
    collector c;
    memset(&c, 0, sizeof c);
    pthread_mutex_init(&c.lock, NULL);
    ts_decoder_probe_ctx = &c;
    ts_decoder_probe = probe;
    int rc = 0;
    for (int i = 0; i < n && !rc; i++) {
        if (verbose) fprintf(stderr, "decoder calibration %d/%d %s\n", i + 1, n, paths[i]);
        tinysam_image img;
        tinysam_embedding *e = NULL;
        if ((rc = tinysam_image_load(paths[i], 0, &img))) break;
        rc = tinysam_encode(model, &img, &e);
        for (int g = 0; g < GRID * GRID && !rc; g++) {
            float pt[2] = {((float)(g % GRID) + 0.5f) * (float)img.width / GRID,
                           ((float)(g / GRID) + 0.5f) * (float)img.height / GRID};
            int lab = 1, has_box = 0;
            tinysam_prompt p = {.n_points = 1, .points = pt, .labels = &lab};
            float box[4];
            rc = run_prompt(model, e, &c, &p, box, &has_box);
            if (rc || !has_box) continue;
            tinysam_prompt pb = {.has_box = 1, .box = {box[0], box[1], box[2], box[3]}};
            rc = run_prompt(model, e, &c, &pb, NULL, &has_box);
        }
        tinysam_embedding_free(e);
        tinysam_image_free(&img);
    }
    ts_decoder_probe = NULL;
    ts_decoder_probe_ctx = NULL;
    if (!rc && c.failed) rc = ts_error(TINYSAM_E_NOMEM, "out of memory in decoder calibration");
    for (int s = 0; s < TS_DEC_N_SITES && !rc; s++)
        if (!c.n[s]) rc = ts_error(TINYSAM_E_ARG, "decoder calibration: no samples");
    if (!rc) {
        for (int s = 0; s < TS_DEC_N_SITES; s++) {
            char P[128];
            int N, K, relu = 0;
            if (s >= TS_DEC_SITE_TOK0)
                ts_dec_tok_layer(s - TS_DEC_SITE_TOK0, P, sizeof P, &N, &K, &relu);
            if (s >= TS_DEC_SITE_TOK0 && ts_dec_tok_kept_float(s - TS_DEC_SITE_TOK0)) {
                q->step[s] = 0.0f;
                q->zp[s] = 0;
            } else if (s == TS_DEC_SITE_UP3 || s == TS_DEC_SITE_MASK || relu) { /* post-GELU / ReLU */
                q->step[s] =
                    ts_calib_search_asym(c.buf[s], c.n[s], N_GRID, LO_RATIO, &q->zp[s], NULL);
            } else { /* LayerNorm outputs (+ PE) */
                q->zp[s] = 128;
                q->step[s] = ts_quant_search_step_mse(c.buf[s], c.n[s], -128, 127, N_GRID,
                                                      LO_RATIO, NULL);
            }
        }
    }
    if (!rc && h) {
        const double t0 = ts_now_ms();
        hess_job j = {model->map, h, c.buf, c.n, q, 0};
        ts_parallel_for(TS_DEC_N_SITES, hess_task, &j);
        rc = j.rc;
        int nl = 0;
        for (int s = 0; s < TS_DEC_N_SITES; s++) nl += q->ws_set[s];
        if (verbose)
            fprintf(stderr, "decoder: Hessian-guided search of %d layers, %.1f s\n", nl,
                    (ts_now_ms() - t0) / 1000);
    }
    for (int s = 0; s < TS_DEC_N_SITES; s++) free(c.buf[s]), free(c.id[s]);
    pthread_mutex_destroy(&c.lock);
    return rc;
}

/* ------------------------------------------------------------------ file tensors */

enum { N_OWN = 16 + 2 * TS_DEC_N_TOK };

struct ts_int8_decoder_view {
    ts_tensor_map m;  /* names ours, data src's or own[] */
    void *own[N_OWN];
    int n_own;
    float qv[2 * TS_DEC_N_SITES]; /* steps and zero points, as F32 [1] tensors */
};

static void *own(ts_int8_decoder_view *v, size_t bytes) {
    if (v->n_own == N_OWN) return NULL;
    return v->own[v->n_own++] = ts_calloc(1, bytes ? bytes : 1);
}

static ts_tensor *put(ts_tensor_map *m, const char *P, const char *suffix, ts_dtype dt,
                      void *data, int64_t d0, int64_t d1) {
    char name[256];
    snprintf(name, sizeof name, "%s.%s", P, suffix);
    ts_tensor *t = NULL;
    for (int i = 0; i < m->n && !t; i++)
        if (!strcmp(m->t[i].name, name)) t = &m->t[i];
    if (!t && !(t = ts_map_add(m, name))) return NULL;
    t->dtype = t->file_dtype = dt;
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->numel = d1 ? d0 * d1 : d0;
    t->data = data;
    t->used = 1;
    return t;
}

/* ConvT(in -> out, k2 s2) P as the W8A8 layer of int8_model.h: weight [4*out][in] (row
 * (a*2+b)*out + o = the output channel o of sub-pixel (a, b)), per-row scales, bias [4*out]. */
static int put_convt(ts_int8_decoder_view *v, const ts_tensor_map *src, const char *P, int in,
                     int out, float step, int zp, const float *ws, float *qv) {
    char n[256];
    snprintf(n, sizeof n, "%s.weight", P);
    const ts_tensor *w = ts_map_get(src, n);
    snprintf(n, sizeof n, "%s.bias", P);
    const ts_tensor *b = ts_map_get(src, n);
    if (!w || !b || w->dtype != TS_DTYPE_F32 || b->dtype != TS_DTYPE_F32 ||
        w->numel != (int64_t)in * out * 4 || b->numel != out)
        return ts_error(TINYSAM_E_FORMAT, "%s: not a float ConvTranspose2d(%d, %d, 2, 2)", P, in,
                        out);
    const int N = 4 * out;
    float *g = ts_malloc(sizeof(float) * (size_t)N * in);
    int8_t *codes = own(v, (size_t)N * in);
    float *sc = own(v, sizeof(float) * N), *bias = own(v, sizeof(float) * N);
    if (!g || !codes || !sc || !bias) {
        free(g);
        return TINYSAM_E_NOMEM;
    }
    const float *wf = w->data, *bf = b->data;
    for (int c = 0; c < in; c++)
        for (int o = 0; o < out; o++)
            for (int ab = 0; ab < 4; ab++)
                g[(size_t)(ab * out + o) * in + c] = wf[((size_t)c * out + o) * 4 + ab];
    for (int ab = 0; ab < 4; ab++) memcpy(bias + ab * out, bf, sizeof(float) * out);
    if (ws) { /* searched scales (the Hessian method) */
        memcpy(sc, ws, sizeof(float) * N);
        ts_quant_weights_scaled(g, N, in, in, sc, codes);
    } else {
        ts_quant_weights(g, N, in, in, codes, sc);
    }
    free(g);
    qv[0] = step;
    qv[1] = (float)zp;
    if (!put(&v->m, P, "weight", TS_DTYPE_I8, codes, N, in) ||
        !put(&v->m, P, "weight_scale", TS_DTYPE_F32, sc, N, 0) ||
        !put(&v->m, P, "bias", TS_DTYPE_F32, bias, N, 0) ||
        !put(&v->m, P, "input_step", TS_DTYPE_F32, &qv[0], 1, 0) ||
        !put(&v->m, P, "input_zero_point", TS_DTYPE_F32, &qv[1], 1, 0))
        return TINYSAM_E_NOMEM;
    return 0;
}

/* Token-side Linear i (ts_dec_tok_layer) as a W8A8 layer: the float weight [N][K] quantised
 * per output channel; its float bias stays as it is. */
static int put_linear(ts_int8_decoder_view *v, const ts_tensor_map *src, int i, float step,
                      int zp, const float *ws, float *qv) {
    char P[128], n[160];
    int N, K, relu;
    ts_dec_tok_layer(i, P, sizeof P, &N, &K, &relu);
    snprintf(n, sizeof n, "%s.weight", P);
    const ts_tensor *w = ts_map_get(src, n);
    snprintf(n, sizeof n, "%s.bias", P);
    const ts_tensor *b = ts_map_get(src, n);
    if (!w || !b || w->dtype != TS_DTYPE_F32 || b->dtype != TS_DTYPE_F32 || w->ndim != 2 ||
        w->shape[0] != N || w->shape[1] != K || b->numel != N)
        return ts_error(TINYSAM_E_FORMAT, "%s: not a float Linear(%d, %d)", P, K, N);
    int8_t *codes = own(v, (size_t)N * K);
    float *sc = own(v, sizeof(float) * N);
    if (!codes || !sc) return TINYSAM_E_NOMEM;
    if (ws) {
        memcpy(sc, ws, sizeof(float) * N);
        ts_quant_weights_scaled(w->data, N, K, K, sc, codes);
    } else {
        ts_quant_weights(w->data, N, K, K, codes, sc);
    }
    qv[0] = step;
    qv[1] = (float)zp;
    if (!put(&v->m, P, "weight", TS_DTYPE_I8, codes, N, K) ||
        !put(&v->m, P, "weight_scale", TS_DTYPE_F32, sc, N, 0) ||
        !put(&v->m, P, "input_step", TS_DTYPE_F32, &qv[0], 1, 0) ||
        !put(&v->m, P, "input_zero_point", TS_DTYPE_F32, &qv[1], 1, 0))
        return TINYSAM_E_NOMEM;
    return 0;
}

/* Site s's searched weight scales, or NULL (abs-max). */
static const float *site_ws(const ts_dec_quant *q, int s) {
    return q->ws_set[s] ? q->ws + ts_dec_ws_offset(s, NULL) : NULL;
}

int ts_int8_decoder_view_new(const ts_tensor_map *src, const ts_dec_quant *q,
                             ts_int8_decoder_view **out) {
    if (!src || !q || !out) return ts_error(TINYSAM_E_ARG, "ts_int8_decoder_view_new: bad argument");
    *out = NULL;
    for (int s = 0; s < TS_DEC_N_SITES; s++)
        if ((s >= TS_DEC_SITE_TOK0 && q->step[s] == 0.0f) || /* a float token-side Linear */
            (q->step[s] > 0.0f && q->zp[s] >= 0 && q->zp[s] <= 255))
            continue;
        else
            return ts_error(TINYSAM_E_ARG, "decoder site %d: bad input quantiser", s);
    ts_int8_decoder_view *v = ts_calloc(1, sizeof *v);
    if (!v) return TINYSAM_E_NOMEM;
    int rc = TINYSAM_E_NOMEM;
    for (int i = 0; i < src->n; i++) {
        ts_tensor *c = ts_map_add(&v->m, src->t[i].name);
        if (!c) goto fail;
        char *name = c->name;
        *c = src->t[i];
        c->name = name;
    }
    if ((rc = put_convt(v, src, "mask_decoder.output_upscaling.0", 256, 64,
                        q->step[TS_DEC_SITE_UP0], q->zp[TS_DEC_SITE_UP0],
                        site_ws(q, TS_DEC_SITE_UP0), &v->qv[0])) ||
        (rc = put_convt(v, src, "mask_decoder.output_upscaling.3", 64, 32,
                        q->step[TS_DEC_SITE_UP3], q->zp[TS_DEC_SITE_UP3],
                        site_ws(q, TS_DEC_SITE_UP3), &v->qv[2])))
        goto fail;
    rc = TINYSAM_E_NOMEM;
    v->qv[4] = q->step[TS_DEC_SITE_MASK];
    v->qv[5] = (float)q->zp[TS_DEC_SITE_MASK];
    if (!put(&v->m, "mask_decoder.mask_product", "input_step", TS_DTYPE_F32, &v->qv[4], 1, 0) ||
        !put(&v->m, "mask_decoder.mask_product", "input_zero_point", TS_DTYPE_F32, &v->qv[5], 1,
             0))
        goto fail;
    for (int L = 0; L < 3; L++) { /* the keys + PE of the cross attentions (their k_proj input) */
        char P[96];
        if (L < 2)
            snprintf(P, sizeof P, "mask_decoder.transformer.layers.%d.keys_pe", L);
        else
            snprintf(P, sizeof P, "mask_decoder.transformer.final_keys_pe");
        float *qv = &v->qv[6 + 2 * L];
        qv[0] = q->step[TS_DEC_SITE_KPE0 + L];
        qv[1] = (float)q->zp[TS_DEC_SITE_KPE0 + L];
        if (!put(&v->m, P, "input_step", TS_DTYPE_F32, &qv[0], 1, 0) ||
            !put(&v->m, P, "input_zero_point", TS_DTYPE_F32, &qv[1], 1, 0))
            goto fail;
        if (L == 2) break; /* the final attention's keys: output_upscaling.0's input */
        snprintf(P, sizeof P, "mask_decoder.transformer.layers.%d.keys", L);
        qv = &v->qv[12 + 2 * L];
        qv[0] = q->step[TS_DEC_SITE_KEYS0 + L];
        qv[1] = (float)q->zp[TS_DEC_SITE_KEYS0 + L];
        if (!put(&v->m, P, "input_step", TS_DTYPE_F32, &qv[0], 1, 0) ||
            !put(&v->m, P, "input_zero_point", TS_DTYPE_F32, &qv[1], 1, 0))
            goto fail;
    }
    for (int i = 0; i < TS_DEC_N_TOK; i++) {
        int st = TS_DEC_SITE_TOK0 + i;
        if (q->step[st] > 0.0f &&
            (rc = put_linear(v, src, i, q->step[st], q->zp[st], site_ws(q, st), &v->qv[2 * st])))
            goto fail;
    }
    *out = v;
    return 0;
fail:
    ts_int8_decoder_view_free(v);
    return rc;
}

const ts_tensor_map *ts_int8_decoder_view_map(const ts_int8_decoder_view *v) { return &v->m; }

void ts_int8_decoder_view_free(ts_int8_decoder_view *v) {
    if (!v) return;
    for (int i = 0; i < v->m.n; i++) free(v->m.t[i].name);
    free(v->m.t);
    for (int i = 0; i < v->n_own; i++) free(v->own[i]);
    free(v);
}
