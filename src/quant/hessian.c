/* hessian.c - gradients of the task loss at the float model and the Hessian-guided scale search
 * (hessian.h). */
#include "quant/hessian.h"
#include "core.h"
#include "model/sam.h"
#include "model/sam_decoder.h"
#include "model/transforms.h"
#include "nn/nn.h"
#include "train/decoder_grad.h"
#include "train/encoder_grad.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { NQ = TS_TINY_VIT_N_QLAYERS };

#define GRID 4 /* points per side of the calibration grid (as calibrate_decoder.c) */
#define MAX_SETS (2 * GRID * GRID)
#define PLANE 65536 /* 256 x 256 low-res logits */

int ts_hessian_init(ts_hessian *h, const ts_tiny_vit *enc) {
    if (!h || !enc) return ts_error(TINYSAM_E_ARG, "ts_hessian_init: bad argument");
    memset(h, 0, sizeof *h);
    for (int i = 0; i < NQ; i++) {
        ts_tiny_vit_qlayer q;
        int rc = ts_tiny_vit_qlayer_get(enc, i, &q);
        if (rc) {
            ts_hessian_free(h);
            return rc;
        }
        snprintf(h->name[i], sizeof h->name[i], "%s", q.name);
        h->n[i] = q.N;
        if (!(h->g2[i] = ts_calloc((size_t)q.N, sizeof(double)))) {
            ts_hessian_free(h);
            return TINYSAM_E_NOMEM;
        }
    }
    /* the decoder's int8 layers with a hooked output (SAM's shapes: E 256) */
    for (int s = 0; s < TS_DEC_N_SITES; s++) {
        int N = 0, K, relu;
        if (ts_dec_site_layer(s, h->dec_name[s], 96, &N, &K, &relu) || !N) continue;
        h->dec_n[s] = N;
        if (!(h->dec_g2[s] = ts_calloc((size_t)N, sizeof(double)))) {
            ts_hessian_free(h);
            return TINYSAM_E_NOMEM;
        }
    }
    return 0;
}

void ts_hessian_free(ts_hessian *h) {
    if (!h) return;
    for (int i = 0; i < NQ; i++) free(h->g2[i]);
    for (int s = 0; s < TS_DEC_N_SITES; s++) free(h->dec_g2[s]);
    memset(h, 0, sizeof *h);
}

void ts_hessian_hook(void *ctx, const char *name, const float *dr, size_t rows, int cols,
                     const float *scale) {
    ts_hessian *h = ctx;
    int l = -1;
    for (int i = 0; i < NQ && l < 0; i++)
        if (!strcmp(h->name[i], name)) l = i;
    if (l < 0 || h->n[l] != cols) return;
    double *g2 = h->g2[l];
    for (size_t r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            double g = dr[r * (size_t)cols + c];
            if (scale) g = scale[c] != 0.0f ? g / scale[c] : 0.0;
            g2[c] += g * g;
        }
}

void ts_hessian_dec_hook(void *ctx, int set, const char *name, const float *dy, size_t rows,
                         int cols) {
    const ts_hessian_dec_ctx *x = ctx;
    const ts_hessian *h = x->h;
    if (set < 0 || set >= x->n_sets) return;
    for (int s = 0; s < TS_DEC_N_SITES; s++) {
        if (!h->dec_n[s] || h->dec_n[s] != cols || strcmp(h->dec_name[s], name)) continue;
        double *g2 = x->acc[(size_t)set * TS_DEC_N_SITES + s];
        for (size_t r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                double g = dy[r * (size_t)cols + c];
                g2[c] += g * g;
            }
        return;
    }
}

/* ------------------------------------------------------------------ gradient collection */

/* (x_1024 + 0.5) / 1024, as the predictor's prompt transform */
static float to_model(double v, int new_len, int orig_len) {
    float f = (float)ts_apply_coord(v, new_len, orig_len);
    return (f + 0.5f) / 1024.0f;
}

/* The box of the float model's best mask for prompt p (0 when empty). */
static int best_box(tinysam_model *m, const tinysam_embedding *e, const tinysam_prompt *p,
                    float box[4], int *has) {
    tinysam_prediction pr;
    int rc = tinysam_predict(m, e, p, TINYSAM_PREDICT_MASKS, &pr);
    if (rc) return rc;
    const uint8_t *mk = pr.masks + (size_t)pr.best * pr.width * pr.height;
    int x0 = pr.width, y0 = pr.height, x1 = -1, y1 = -1;
    for (int y = 0; y < pr.height; y++)
        for (int x = 0; x < pr.width; x++)
            if (mk[(size_t)y * pr.width + x]) {
                x0 = TS_MIN(x0, x), x1 = TS_MAX(x1, x);
                y0 = TS_MIN(y0, y), y1 = TS_MAX(y1, y);
            }
    *has = x1 >= 0;
    if (*has) box[0] = (float)x0, box[1] = (float)y0, box[2] = (float)x1, box[3] = (float)y1;
    tinysam_prediction_free(&pr);
    return 0;
}

typedef struct {
    ts_eg_layout EL;
    ts_dg_layout DL;
    float *ep, *eg, *dp, gauss[256];
    ts_egf *enc;
    ts_dgf *dec;
    float *input, *emb, *demb, *z, *dz;
} gctx;

static void gctx_free(gctx *g) {
    ts_egf_free(g->enc);
    ts_dgf_free(g->dec);
    free(g->ep);
    free(g->eg);
    free(g->dp);
    ts_free_aligned(g->input);
    ts_free_aligned(g->emb);
    free(g->demb);
    free(g->z);
    free(g->dz);
}

static int gctx_new(gctx *g, const tinysam_model *model) {
    memset(g, 0, sizeof *g);
    ts_eg_config ec;
    ts_dg_config dc;
    ts_eg_config_vit_t(&ec);
    ts_dg_config_sam(&dc);
    int rc = ts_eg_layout_init(&g->EL, &ec);
    if (!rc) rc = ts_dg_layout_init(&g->DL, &dc);
    if (rc) return rc;
    g->ep = ts_malloc(sizeof(float) * g->EL.total);
    g->eg = ts_calloc(g->EL.total, sizeof(float));
    g->dp = ts_malloc(sizeof(float) * g->DL.total);
    double *tmp = ts_malloc(sizeof(double) * g->DL.total), dg[256];
    g->input = ts_malloc_aligned(sizeof(float) * 3 * TINYSAM_INPUT_SIDE * TINYSAM_INPUT_SIDE);
    g->emb = ts_malloc_aligned(sizeof(float) * 256 * 64 * 64);
    g->demb = ts_malloc(sizeof(float) * 256 * 64 * 64);
    g->z = ts_malloc(sizeof(float) * MAX_SETS * 4 * PLANE);
    g->dz = ts_malloc(sizeof(float) * MAX_SETS * 4 * PLANE);
    if (!g->ep || !g->eg || !g->dp || !tmp || !g->input || !g->emb || !g->demb || !g->z ||
        !g->dz) {
        free(tmp);
        return TINYSAM_E_NOMEM;
    }
    rc = ts_eg_load(&g->EL, model->map, g->ep);
    if (!rc) rc = ts_dg_load(&g->DL, model->map, tmp, dg);
    if (!rc) {
        for (size_t i = 0; i < g->DL.total; i++) g->dp[i] = (float)tmp[i];
        for (int i = 0; i < 256; i++) g->gauss[i] = (float)dg[i];
    }
    free(tmp);
    if (!rc) rc = ts_egf_create(&g->EL, g->ep, &g->enc);
    if (!rc) rc = ts_dgf_create(&g->DL, g->dp, g->gauss, &g->dec);
    return rc;
}

/* One image: prompts, float forward, dL/dz of the BCE against the binarised logits, backward
 * through the decoder and the encoder (the hook accumulates). */
static int grad_image(gctx *g, tinysam_model *m, const tinysam_image *img, ts_hessian *h,
                      int verbose) {
    int newh, neww, rc;
    double tm[5];
    tm[0] = ts_now_ms();
    ts_preprocess_shape(img->height, img->width, TINYSAM_INPUT_SIDE, &newh, &neww);
    uint8_t *resized = ts_malloc((size_t)newh * neww * 3);
    if (!resized) return TINYSAM_E_NOMEM;
    if ((rc = ts_resize_rgb_pil(img->rgb, img->width, img->height, resized, neww, newh))) {
        free(resized);
        return rc;
    }
    ts_normalize_pad(resized, newh, neww, g->input);
    free(resized);
    /* the float embedding (the tape's forward: the decoder backward and the prompts use it) */
    if ((rc = ts_egf_forward(g->enc, g->input, g->emb))) return rc;
    tm[1] = ts_now_ms();
    /* the prompts, as calibrate_decoder.c: grid points, then the box of each best mask */
    float coords[2 * GRID * GRID];
    int labels[GRID * GRID];
    ts_prompt_set sets[MAX_SETS];
    int ns = 0;
    tinysam_embedding e = {.data = g->emb, .orig_w = img->width, .orig_h = img->height,
                           .input_w = neww, .input_h = newh};
    for (int k = 0; k < GRID * GRID && !rc; k++) {
        float pt[2] = {((float)(k % GRID) + 0.5f) * (float)img->width / GRID,
                       ((float)(k / GRID) + 0.5f) * (float)img->height / GRID};
        int lab = 1, has = 0;
        tinysam_prompt p = {.n_points = 1, .points = pt, .labels = &lab};
        float box[4];
        if ((rc = best_box(m, &e, &p, box, &has))) break;
        coords[2 * k] = to_model(pt[0], neww, img->width);
        coords[2 * k + 1] = to_model(pt[1], newh, img->height);
        labels[k] = 1;
        sets[ns++] = (ts_prompt_set){.n_points = 1, .coords = &coords[2 * k],
                                     .labels = &labels[k]};
        if (has) {
            ts_prompt_set b = {.has_box = 1};
            for (int j = 0; j < 4; j++)
                b.box[j] = to_model(box[j], j % 2 ? newh : neww, j % 2 ? img->height : img->width);
            sets[ns++] = b;
        }
    }
    if (rc) return rc;
    tm[2] = ts_now_ms();
    if ((rc = ts_dgf_forward(g->dec, g->emb, ns, sets, g->z, NULL, NULL))) return rc;
    /* mean BCE over the multimask tokens 1..3 of every set: d/dz = (sigmoid(z) - [z > 0]) / n */
    const double inv = 1.0 / ((double)ns * 3 * PLANE);
    for (int s = 0; s < ns; s++)
        for (int t = 0; t < 4; t++) {
            const float *z = g->z + ((size_t)s * 4 + t) * PLANE;
            float *dz = g->dz + ((size_t)s * 4 + t) * PLANE;
            for (int i = 0; i < PLANE; i++) {
                double sg = 1.0 / (1.0 + exp(-(double)z[i]));
                dz[i] = t ? (float)((sg - (z[i] > 0.0f)) * inv) : 0.0f;
            }
        }
    memset(g->demb, 0, sizeof(float) * 256 * 64 * 64);
    /* the decoder layers' g^2, one accumulator per set, summed in set order below */
    size_t per_set = 0;
    for (int s = 0; s < TS_DEC_N_SITES; s++) per_set += (size_t)h->dec_n[s];
    double *blk = ts_calloc(per_set * (size_t)ns + 1, sizeof(double));
    double **acc = ts_calloc((size_t)ns * TS_DEC_N_SITES, sizeof(double *));
    if (!blk || !acc) {
        free(blk);
        free(acc);
        return TINYSAM_E_NOMEM;
    }
    double *q = blk;
    for (int k = 0; k < ns; k++)
        for (int s = 0; s < TS_DEC_N_SITES; s++)
            acc[(size_t)k * TS_DEC_N_SITES + s] = q, q += h->dec_n[s];
    ts_hessian_dec_ctx hc = {h, acc, ns};
    ts_dgf_set_grad_hook(g->dec, ts_hessian_dec_hook, &hc);
    rc = ts_dgf_backward(g->dec, g->emb, ns, sets, g->dz, NULL, NULL, NULL, g->demb);
    ts_dgf_set_grad_hook(g->dec, NULL, NULL);
    for (int k = 0; k < ns && !rc; k++)
        for (int s = 0; s < TS_DEC_N_SITES; s++)
            for (int c = 0; c < h->dec_n[s]; c++)
                h->dec_g2[s][c] += acc[(size_t)k * TS_DEC_N_SITES + s][c];
    free(blk);
    free(acc);
    if (rc) return rc;
    tm[3] = ts_now_ms();
    ts_egf_set_grad_hook(g->enc, ts_hessian_hook, h);
    rc = ts_egf_backward(g->enc, g->demb, g->eg);
    ts_egf_set_grad_hook(g->enc, NULL, NULL);
    tm[4] = ts_now_ms();
    if (verbose)
        fprintf(stderr, "  %d prompts; ms: encoder forward %.0f, prompts %.0f, decoder forward + "
                        "backward %.0f, encoder backward %.0f\n",
                ns, tm[1] - tm[0], tm[2] - tm[1], tm[3] - tm[2], tm[4] - tm[3]);
    h->prompts += ns;
    h->images++;
    return rc;
}

int ts_hessian_collect(const tinysam_model *model, const char *const *paths, int n,
                       ts_hessian *h, int verbose) {
    if (!model || !paths || n < 1 || !h)
        return ts_error(TINYSAM_E_ARG, "ts_hessian_collect: bad argument");
    if (!model->encoder || !model->map || !model->prompt_encoder || !model->mask_decoder)
        return ts_error(TINYSAM_E_UNSUPPORTED, "the Hessian method needs a float vit_t model");
    gctx g;
    int rc = gctx_new(&g, model);
    for (int i = 0; i < n && !rc; i++) {
        if (verbose) fprintf(stderr, "task-loss gradients %d/%d %s\n", i + 1, n, paths[i]);
        tinysam_image img;
        if ((rc = tinysam_image_load(paths[i], 0, &img))) break;
        rc = grad_image(&g, (tinysam_model *)model, &img, h, verbose);
        tinysam_image_free(&img);
    }
    gctx_free(&g);
    return rc;
}

/* ------------------------------------------------------------------ the search */

void ts_hessian_grid_default(ts_hessian_grid *g) {
    g->n_cand = 100;
    g->lo_r = 0.5f;
    g->hi_r = 1.2f;
    g->rounds = 3;
}

static float ratio(const ts_hessian_grid *g, int j) {
    return g->n_cand == 1 ? 1.0f
                          : g->lo_r + (g->hi_r - g->lo_r) * (float)j / (float)(g->n_cand - 1);
}

/* x^ of the int8 GEMM's input: (clamp(round(x / step) + zp, 0, 255) - zp) * step */
static void fq_in(const float *x, size_t n, float step, int zp, float *out) {
    for (size_t i = 0; i < n; i++) {
        float q = nearbyintf(x[i] / step) + (float)zp;
        q = q < 0.0f ? 0.0f : q > 255.0f ? 255.0f : q;
        out[i] = (q - (float)zp) * step;
    }
}

/* row c of W quantised with scale s into out (codes clamp(round(w / s), -127, 127)) */
static void fq_row(const float *w, int K, float s, float *out) {
    for (int k = 0; k < K; k++) {
        float q = s > 0.0f ? nearbyintf(w[k] / s) : 0.0f;
        q = q < -127.0f ? -127.0f : q > 127.0f ? 127.0f : q;
        out[k] = q * s;
    }
}

/* the input quantiser of candidate r */
static void in_cand(int asym, float r, float amax, float lo, float hi, float *step, int *zp) {
    if (!asym) {
        *step = r * amax / 127.0f;
        *zp = 128;
        return;
    }
    float top = TS_MAX(r * hi, 0.0f);
    *step = (top - lo) / 255.0f;
    *zp = *step > 0.0f ? (int)TS_MIN(255.0f, TS_MAX(0.0f, nearbyintf(-lo / *step))) : 0;
}

int ts_hessian_search_layer(const float *X, int n, int K, const float *W, int N,
                            const double *G, int asym, float x_min, float x_max,
                            const ts_hessian_grid *grid, float *step, int *zp, float *w_scale,
                            double *err) {
    ts_hessian_grid def;
    if (!grid) ts_hessian_grid_default(&def), grid = &def;
    if (!X || !W || !step || !zp || !w_scale || n < 1 || K < 1 || N < 1 || grid->n_cand < 1 ||
        grid->rounds < 0 || !(*step > 0.0f))
        return ts_error(TINYSAM_E_ARG, "ts_hessian_search_layer: bad argument");
    const size_t nk = (size_t)n * K, nN = (size_t)n * N, NK = (size_t)N * K;
    float *O = ts_malloc(sizeof(float) * nN), *Oq = ts_malloc(sizeof(float) * nN);
    float *Xq = ts_malloc(sizeof(float) * nk), *Wq = ts_malloc(sizeof(float) * NK);
    float *amaxw = ts_malloc(sizeof(float) * N), *ws0 = ts_malloc(sizeof(float) * N);
    double *ec = ts_malloc(sizeof(double) * N), *best_c = ts_malloc(sizeof(double) * N);
    int rc = TINYSAM_E_NOMEM;
    if (!O || !Oq || !Xq || !Wq || !amaxw || !ws0 || !ec || !best_c) goto done;
    const float lo = TS_MIN(x_min, 0.0f), hi = TS_MAX(x_max, 0.0f);
    const float amax = TS_MAX(fabsf(x_min), fabsf(x_max));
    for (int c = 0; c < N; c++) {
        float m = 0.0f;
        for (int k = 0; k < K; k++) m = fmaxf(m, fabsf(W[(size_t)c * K + k]));
        amaxw[c] = m;
        w_scale[c] = m > 0.0f ? m / 127.0f : 1.0f;
    }
    ts_gemm(n, N, K, X, K, W, K, 1, O, N, 0.0f);
    /* the objective of Oq against O: per channel (ec) and weighted total */
#define CHANNEL_ERR()                                                                            \
    do {                                                                                         \
        for (int c = 0; c < N; c++) ec[c] = 0.0;                                                 \
        for (int i = 0; i < n; i++)                                                              \
            for (int c = 0; c < N; c++) {                                                        \
                double d = (double)Oq[(size_t)i * N + c] - (double)O[(size_t)i * N + c];         \
                ec[c] += d * d;                                                                  \
            }                                                                                    \
    } while (0)
    double total = INFINITY;
    const int amax_ok = asym ? hi > lo : amax > 0.0f;
    for (int round = 0; round < grid->rounds; round++) {
        const float step0 = *step;
        const int zp0 = *zp;
        memcpy(ws0, w_scale, sizeof(float) * N);
        /* weights, given the quantised input: per channel, the objective separates */
        fq_in(X, nk, *step, *zp, Xq);
        for (int c = 0; c < N; c++) best_c[c] = INFINITY;
        float *cand_s = ts_malloc(sizeof(float) * N);
        if (!cand_s) goto done;
        /* candidate -1: the scales that stand (a round never makes a channel worse) */
        for (int j = -1; j < grid->n_cand; j++) {
            const float r = j < 0 ? 0.0f : ratio(grid, j);
            for (int c = 0; c < N; c++) {
                float s = j < 0 ? w_scale[c] : amaxw[c] > 0.0f ? r * amaxw[c] / 127.0f : 1.0f;
                cand_s[c] = s;
                fq_row(W + (size_t)c * K, K, s, Wq + (size_t)c * K);
            }
            ts_gemm(n, N, K, Xq, K, Wq, K, 1, Oq, N, 0.0f);
            CHANNEL_ERR();
            for (int c = 0; c < N; c++)
                if (ec[c] < best_c[c]) best_c[c] = ec[c], w_scale[c] = cand_s[c];
        }
        free(cand_s);
        /* the input step, given the quantised weights */
        for (int c = 0; c < N; c++) fq_row(W + (size_t)c * K, K, w_scale[c], Wq + (size_t)c * K);
        if (!amax_ok) continue;
        double best = INFINITY;
        float bstep = *step;
        int bzp = *zp;
        for (int j = -1; j < grid->n_cand; j++) { /* -1: the step that stands */
            float s = *step;
            int z = *zp;
            if (j >= 0) in_cand(asym, ratio(grid, j), amax, lo, hi, &s, &z);
            if (!(s > 0.0f)) continue;
            fq_in(X, nk, s, z, Xq);
            ts_gemm(n, N, K, Xq, K, Wq, K, 1, Oq, N, 0.0f);
            CHANNEL_ERR();
            double e = 0.0;
            for (int c = 0; c < N; c++) e += (G ? G[c] : 1.0) * ec[c];
            if (e < best) best = e, bstep = s, bzp = z;
        }
        *step = bstep;
        *zp = bzp;
        total = best;
        /* a round that changed nothing would repeat itself: the rest are the same */
        if (*step == step0 && *zp == zp0 && !memcmp(ws0, w_scale, sizeof(float) * N)) break;
    }
#undef CHANNEL_ERR
    if (err) {
        if (!isfinite(total)) { /* no activation search ran: the objective of what stands */
            fq_in(X, nk, *step, *zp, Xq);
            for (int c = 0; c < N; c++)
                fq_row(W + (size_t)c * K, K, w_scale[c], Wq + (size_t)c * K);
            ts_gemm(n, N, K, Xq, K, Wq, K, 1, Oq, N, 0.0f);
            total = 0.0;
            for (int r = 0; r < n; r++)
                for (int c = 0; c < N; c++) {
                    double d = (double)Oq[(size_t)r * N + c] - (double)O[(size_t)r * N + c];
                    total += (G ? G[c] : 1.0) * d * d;
                }
        }
        *err = total;
    }
    rc = 0;
done:
    free(O);
    free(Oq);
    free(Xq);
    free(Wq);
    free(amaxw);
    free(ws0);
    free(ec);
    free(best_c);
    return rc;
}
