/* mask_decoder.c - SAM's mask decoder with its two-way transformer (spec TINYSAM.md 5.4).
 * ref: tinysam/modeling/mask_decoder.py, transformer.py
 * Activations are token-major (rows = tokens or pixels, columns = channels) so that every
 * projection is one GEMM. With few prompt tokens (<= FOLD_MAX) the cross attentions are
 * folded so that no 4096 x 128 image-side projection is formed (t2i_folded, i2t_folded);
 * the upscaling runs in chunks of image tokens that stay in cache. Prompt sets are
 * independent: several run in parallel, one per worker, each with its own workspace. */
#include "core.h"
#include "model/sam_decoder.h"
#include "model/sam_decoder_internal.h"
#include "nn/attn_i8.h"
#include "nn/gemm_i8.h"
#include "nn/nn.h"
#include "threads.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_IMG 4096 /* 64 x 64 image tokens */

/* ------------------------------------------------------------------ loading */

static int take_attn(ts_tensor_map *m, const char *p, int dim, ts_attn_w *a) {
    char n[256];
    a->dim = dim;
    /* a W8A8 projection (lin->p, taken by load_tok_i8) has no float weight or bias here */
#define T(field, lin, suffix, ...)                                                                 \
    snprintf(n, sizeof n, "%s.%s", p, suffix);                                                  \
    if (a->lin.p) a->field = NULL;                                                              \
    else if (!(a->field = ts_map_take(m, n, __VA_ARGS__))) return TINYSAM_E_FORMAT;
    T(q_w, q8, "q_proj.weight", 2, dim, 256) T(q_b, q8, "q_proj.bias", 1, dim)
    T(k_w, k8, "k_proj.weight", 2, dim, 256) T(k_b, k8, "k_proj.bias", 1, dim)
    T(v_w, v8, "v_proj.weight", 2, dim, 256) T(v_b, v8, "v_proj.bias", 1, dim)
    T(o_w, o8, "out_proj.weight", 2, 256, dim) T(o_b, o8, "out_proj.bias", 1, 256)
#undef T
    return 0;
}

static const float *take_ln(ts_tensor_map *m, const char *p, const char *which, int c) {
    char n[256];
    snprintf(n, sizeof n, "%s.%s", p, which);
    return ts_map_take(m, n, 1, c);
}

/* ConvTranspose2d(k2, s2) weight [in][out][2][2] -> GEMM operand [in][(a*2+b)*out + o]. */
static void pack_convt_into(const float *w, int in, int out, float *p) {
    for (int c = 0; c < in; c++)
        for (int o = 0; o < out; o++)
            for (int ab = 0; ab < 4; ab++)
                p[(size_t)c * out * 4 + ab * out + o] = w[((size_t)c * out + o) * 4 + ab];
}

static float *pack_convt(const float *w, int in, int out) {
    float *p = ts_malloc_aligned(sizeof(float) * (size_t)in * out * 4);
    if (p) pack_convt_into(w, in, out, p);
    return p;
}

static int pack_attn(ts_attn_w *a) {
    int D = a->dim;
    return (!a->q8.p && !(a->q_p = ts_wpack_new(a->q_w, D, 256, 256))) ||
           (!a->k8.p && !(a->k_p = ts_wpack_new(a->k_w, D, 256, 256))) ||
           (!a->v8.p && !(a->v_p = ts_wpack_new(a->v_w, D, 256, 256))) ||
           (!a->o8.p && !(a->o_p = ts_wpack_new(a->o_w, 256, D, D)));
}

static void free_attn_i8(ts_attn_w *a) {
    ts_i8pack_free(a->q8.p);
    ts_i8pack_free(a->k8.p);
    ts_i8pack_free(a->v8.p);
    ts_i8pack_free(a->o8.p);
}

static void free_attn_packs(ts_attn_w *a) {
    ts_wpack_free(a->q_p);
    ts_wpack_free(a->k_p);
    ts_wpack_free(a->v_p);
    ts_wpack_free(a->o_p);
}

/* Every Linear of the decoder packed once: with a handful of prompt tokens a projection is
 * a few rows, and packing its weight per call would cost more than the product. */
static int pack_linears(ts_mask_decoder *d) {
    for (int L = 0; L < 2; L++) {
        ts_twoway_layer *l = &d->layer[L];
        if (pack_attn(&l->self_attn) || pack_attn(&l->t2i) || pack_attn(&l->i2t) ||
            (!l->l1_8.p && !(l->l1_p = ts_wpack_new(l->l1_w, 2048, 256, 256))) ||
            (!l->l2_8.p && !(l->l2_p = ts_wpack_new(l->l2_w, 256, 2048, 2048))))
            return TINYSAM_E_NOMEM;
    }
    if (pack_attn(&d->final_attn)) return TINYSAM_E_NOMEM;
    for (int k = 0; k < 3; k++) {
        int o = k == 2 ? 32 : 256;
        for (int t = 0; t < 4; t++)
            if (!d->hyper_8[t][k].p &&
                !(d->hyper_p[t][k] = ts_wpack_new(d->hyper[t][2 * k], o, 256, 256)))
                return TINYSAM_E_NOMEM;
        if (!d->iou_8[k].p &&
            !(d->iou_p[k] = ts_wpack_new(d->iou_head[2 * k], k == 2 ? 4 : 256, 256, 256)))
            return TINYSAM_E_NOMEM;
    }
    return 0;
}

ts_decoder_probe_fn ts_decoder_probe;
void *ts_decoder_probe_ctx;

/* A tensor of an int8 model file, checked and marked used: dtype dt, shape [d0] or [d0][d1]. */
static const void *take_typed(ts_tensor_map *m, const char *P, const char *suffix, ts_dtype dt,
                              int64_t d0, int64_t d1) {
    char n[256];
    snprintf(n, sizeof n, "%s.%s", P, suffix);
    ts_tensor *t = (ts_tensor *)ts_map_get(m, n); /* m is ours to mark */
    if (!t) {
        ts_error(TINYSAM_E_FORMAT, "missing tensor %s", n);
        return NULL;
    }
    if (t->dtype != dt || t->ndim != (d1 ? 2 : 1) || t->shape[0] != d0 ||
        (d1 && t->shape[1] != d1)) {
        ts_error(TINYSAM_E_FORMAT, "tensor %s: wrong dtype or shape for an int8 decoder layer", n);
        return NULL;
    }
    t->used = 1;
    return t->data;
}

/* One W8A8 layer P (int8_model.h): codes [N][K], weight_scale, bias [N], input step / zero
 * point. The pack copies the codes; the bias stays in the map. */
static int take_i8_layer(ts_tensor_map *m, const char *P, int N, int K, ts_i8pack **pack,
                         const float **bias, float *step, int *zp) {
    const int8_t *w = take_typed(m, P, "weight", TS_DTYPE_I8, N, K);
    const float *sc = take_typed(m, P, "weight_scale", TS_DTYPE_F32, N, 0);
    const float *st = take_typed(m, P, "input_step", TS_DTYPE_F32, 1, 0);
    const float *z = take_typed(m, P, "input_zero_point", TS_DTYPE_F32, 1, 0);
    if (!w || !sc || !st || !z) return TINYSAM_E_FORMAT;
    if (!(*st > 0.0f) || !(*z >= 0.0f && *z <= 255.0f) || *z != nearbyintf(*z))
        return ts_error(TINYSAM_E_FORMAT, "%s: bad input quantiser (step %g, zero point %g)", P,
                        (double)*st, (double)*z);
    *step = *st;
    *zp = (int)*z;
    if (bias && !(*bias = take_typed(m, P, "bias", TS_DTYPE_F32, N, 0))) return TINYSAM_E_FORMAT;
    if (!(*pack = ts_i8pack_new(w, N, K, K, sc))) return TINYSAM_E_NOMEM;
    return 0;
}

/* The int8 output upscaling of a W8A8 file (up0 / up3 biases are [4*out], per sub-pixel). */
static int load_up_i8(ts_tensor_map *m, ts_mask_decoder *d) {
    ts_up_i8 *u = d->up_i8 = ts_calloc(1, sizeof *u);
    if (!u) return TINYSAM_E_NOMEM;
    const float *b0, *b3, *st, *z;
    int rc;
    if ((rc = take_i8_layer(m, "mask_decoder.output_upscaling.0", 256, 256, &u->up0, &b0,
                            &u->up0_step, &u->up0_zp)) ||
        (rc = take_i8_layer(m, "mask_decoder.output_upscaling.3", 128, 64, &u->up3, &b3,
                            &u->up3_step, &u->up3_zp)))
        return rc;
    if (!(st = take_typed(m, "mask_decoder.mask_product", "input_step", TS_DTYPE_F32, 1, 0)) ||
        !(z = take_typed(m, "mask_decoder.mask_product", "input_zero_point", TS_DTYPE_F32, 1, 0)))
        return TINYSAM_E_FORMAT;
    if (!(*st > 0.0f) || !(*z >= 0.0f && *z <= 255.0f) || *z != nearbyintf(*z))
        return ts_error(TINYSAM_E_FORMAT, "mask_decoder.mask_product: bad input quantiser");
    u->mp_step = *st;
    u->mp_zp = (int)*z;
    for (int L = 0; L < 3; L++) {
        char P[96];
        if (L < 2)
            snprintf(P, sizeof P, "mask_decoder.transformer.layers.%d.keys_pe", L);
        else
            snprintf(P, sizeof P, "mask_decoder.transformer.final_keys_pe");
        if (!(st = take_typed(m, P, "input_step", TS_DTYPE_F32, 1, 0)) ||
            !(z = take_typed(m, P, "input_zero_point", TS_DTYPE_F32, 1, 0)))
            return TINYSAM_E_FORMAT;
        if (!(*st > 0.0f) || !(*z >= 0.0f && *z <= 255.0f) || *z != nearbyintf(*z))
            return ts_error(TINYSAM_E_FORMAT, "%s: bad input quantiser", P);
        u->kpe_step[L] = *st;
        u->kpe_zp[L] = (int)*z;
        if (L == 2) break;
        snprintf(P, sizeof P, "mask_decoder.transformer.layers.%d.keys", L);
        if (!(st = take_typed(m, P, "input_step", TS_DTYPE_F32, 1, 0)) ||
            !(z = take_typed(m, P, "input_zero_point", TS_DTYPE_F32, 1, 0)))
            return TINYSAM_E_FORMAT;
        if (!(*st > 0.0f) || !(*z >= 0.0f && *z <= 255.0f) || *z != nearbyintf(*z))
            return ts_error(TINYSAM_E_FORMAT, "%s: bad input quantiser", P);
        u->keys_step[L] = *st;
        u->keys_zp[L] = (int)*z;
    }
    u->keys_step[2] = u->up0_step;
    u->keys_zp[2] = u->up0_zp;
    memcpy(d->up0_bias, b0, sizeof d->up0_bias);
    memcpy(d->up3_bias, b3, sizeof d->up3_bias);
    d->up0_b = b0;
    d->up3_b = b3;
    return 0;
}

int ts_dec_tok_layer(int i, char *P, size_t n, int *N, int *K, int *relu_in) {
    static const char *const part[10] = {
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
        "cross_attn_token_to_image.q_proj", "cross_attn_token_to_image.out_proj",
        "cross_attn_image_to_token.k_proj", "cross_attn_image_to_token.v_proj", "mlp.lin1",
        "mlp.lin2"};
    static const int pn[10] = {256, 256, 256, 256, 128, 256, 128, 128, 2048, 256};
    static const int pk[10] = {256, 256, 256, 256, 256, 128, 256, 256, 256, 2048};
    if (i < 0 || i >= TS_DEC_N_TOK) return -1;
    *relu_in = 0;
    if (i < 20) {
        snprintf(P, n, "mask_decoder.transformer.layers.%d.%s", i / 10, part[i % 10]);
        *N = pn[i % 10], *K = pk[i % 10], *relu_in = i % 10 == 9;
    } else if (i < 22) {
        snprintf(P, n, "mask_decoder.transformer.final_attn_token_to_image.%s",
                 i == 20 ? "q_proj" : "out_proj");
        *N = i == 20 ? 128 : 256, *K = i == 20 ? 256 : 128;
    } else if (i < 34) {
        int t = (i - 22) / 3, k = (i - 22) % 3;
        snprintf(P, n, "mask_decoder.output_hypernetworks_mlps.%d.layers.%d", t, k);
        *N = k == 2 ? 32 : 256, *K = 256, *relu_in = k > 0;
    } else {
        int k = i - 34;
        snprintf(P, n, "mask_decoder.iou_prediction_head.layers.%d", k);
        *N = k == 2 ? 4 : 256, *K = 256, *relu_in = k > 0;
    }
    return 0;
}

int ts_dec_site_layer(int s, char *P, size_t n, int *N, int *K, int *relu_in) {
    *relu_in = 0;
    if (s == TS_DEC_SITE_UP0 || s == TS_DEC_SITE_UP3) { /* rows (sub-pixel, channel) */
        snprintf(P, n, "mask_decoder.output_upscaling.%d", s == TS_DEC_SITE_UP0 ? 0 : 3);
        *N = s == TS_DEC_SITE_UP0 ? 4 * 64 : 4 * 32, *K = s == TS_DEC_SITE_UP0 ? 256 : 64;
        return 0;
    }
    if (s == TS_DEC_SITE_MASK) { /* the 4 hypernetwork vectors of 32 */
        snprintf(P, n, "mask_decoder.mask_product");
        *N = 4, *K = 32;
        return 0;
    }
    return s >= TS_DEC_SITE_TOK0 ? ts_dec_tok_layer(s - TS_DEC_SITE_TOK0, P, n, N, K, relu_in)
                                 : -1;
}

static ts_lin_i8 *tok_slot(ts_mask_decoder *d, int i) {
    if (i >= 22) return i < 34 ? &d->hyper_8[(i - 22) / 3][(i - 22) % 3] : &d->iou_8[i - 34];
    if (i >= 20) return i == 20 ? &d->final_attn.q8 : &d->final_attn.o8;
    ts_twoway_layer *l = &d->layer[i / 10];
    ts_lin_i8 *s[10] = {&l->self_attn.q8, &l->self_attn.k8, &l->self_attn.v8, &l->self_attn.o8,
                        &l->t2i.q8,       &l->t2i.o8,       &l->i2t.k8,       &l->i2t.v8,
                        &l->l1_8,         &l->l2_8};
    return s[i % 10];
}

/* The token-side Linears stored W8A8 (those with an input step; a file without one keeps them
 * float, as written by earlier versions), and every one's probe site. */
static int load_tok_i8(ts_tensor_map *m, ts_mask_decoder *d) {
    for (int i = 0; i < TS_DEC_N_TOK; i++) {
        char P[128], n[160];
        int N, K, relu;
        ts_dec_tok_layer(i, P, sizeof P, &N, &K, &relu);
        ts_lin_i8 *s = tok_slot(d, i);
        s->site = TS_DEC_SITE_TOK0 + i;
        snprintf(n, sizeof n, "%s.input_step", P);
        if (!ts_map_get(m, n)) continue;
        int rc = take_i8_layer(m, P, N, K, &s->p, &s->bias, &s->step, &s->zp);
        if (rc) return rc;
        d->n_tok_i8++;
    }
    return 0;
}

int ts_mask_decoder_load(ts_tensor_map *m, ts_mask_decoder **out) {
    *out = NULL;
    ts_mask_decoder *d = ts_calloc(1, sizeof *d);
    if (!d) return TINYSAM_E_NOMEM;
    pthread_mutex_init(&d->ctx_lock, NULL);
    char p[64], n[256];
    int rc = load_tok_i8(m, d);
    if (rc) goto fail;
    rc = TINYSAM_E_FORMAT;
    for (int L = 0; L < 2; L++) {
        ts_twoway_layer *l = &d->layer[L];
        snprintf(p, sizeof p, "mask_decoder.transformer.layers.%d", L);
        char q[128];
        snprintf(q, sizeof q, "%s.self_attn", p);
        if (take_attn(m, q, 256, &l->self_attn)) goto fail;
        snprintf(q, sizeof q, "%s.cross_attn_token_to_image", p);
        if (take_attn(m, q, 128, &l->t2i)) goto fail;
        snprintf(q, sizeof q, "%s.cross_attn_image_to_token", p);
        if (take_attn(m, q, 128, &l->i2t)) goto fail;
        const float **norms[8] = {&l->n1_w, &l->n1_b, &l->n2_w, &l->n2_b,
                                  &l->n3_w, &l->n3_b, &l->n4_w, &l->n4_b};
        for (int k = 0; k < 8; k++) {
            snprintf(q, sizeof q, "%s.norm%d", p, k / 2 + 1);
            if (!(*norms[k] = take_ln(m, q, k % 2 ? "bias" : "weight", 256))) goto fail;
        }
        snprintf(n, sizeof n, "%s.mlp.lin1.weight", p);
        if (!l->l1_8.p && !(l->l1_w = ts_map_take(m, n, 2, 2048, 256))) goto fail;
        snprintf(n, sizeof n, "%s.mlp.lin1.bias", p);
        if (!l->l1_8.p && !(l->l1_b = ts_map_take(m, n, 1, 2048))) goto fail;
        snprintf(n, sizeof n, "%s.mlp.lin2.weight", p);
        if (!l->l2_8.p && !(l->l2_w = ts_map_take(m, n, 2, 256, 2048))) goto fail;
        snprintf(n, sizeof n, "%s.mlp.lin2.bias", p);
        if (!l->l2_8.p && !(l->l2_b = ts_map_take(m, n, 1, 256))) goto fail;
    }
    if (take_attn(m, "mask_decoder.transformer.final_attn_token_to_image", 128, &d->final_attn))
        goto fail;
    if (!(d->nf_w = take_ln(m, "mask_decoder.transformer.norm_final_attn", "weight", 256)) ||
        !(d->nf_b = take_ln(m, "mask_decoder.transformer.norm_final_attn", "bias", 256)) ||
        !(d->iou_token = ts_map_take(m, "mask_decoder.iou_token.weight", 2, 1, 256)) ||
        !(d->mask_tokens = ts_map_take(m, "mask_decoder.mask_tokens.weight", 2, 4, 256)))
        goto fail;
    const float *u0 = NULL, *u3 = NULL;
    int up_i8 = ts_map_get(m, "mask_decoder.output_upscaling.0.input_step") != NULL;
    if (up_i8) {
        if ((rc = load_up_i8(m, d))) goto fail;
        rc = TINYSAM_E_FORMAT;
    } else {
        u0 = ts_map_take(m, "mask_decoder.output_upscaling.0.weight", 4, 256, 64, 2, 2);
        u3 = ts_map_take(m, "mask_decoder.output_upscaling.3.weight", 4, 64, 32, 2, 2);
        d->up0_b = ts_map_take(m, "mask_decoder.output_upscaling.0.bias", 1, 64);
        d->up3_b = ts_map_take(m, "mask_decoder.output_upscaling.3.bias", 1, 32);
        if (!u0 || !u3 || !d->up0_b || !d->up3_b) goto fail;
    }
    d->upn_w = ts_map_take(m, "mask_decoder.output_upscaling.1.weight", 1, 64);
    d->upn_b = ts_map_take(m, "mask_decoder.output_upscaling.1.bias", 1, 64);
    if (!d->upn_w || !d->upn_b) goto fail;
    for (int t = 0; t < 4; t++)
        for (int k = 0; k < 3; k++) {
            int o = k == 2 ? 32 : 256;
            if (d->hyper_8[t][k].p) continue; /* W8A8: taken by load_tok_i8 */
            snprintf(n, sizeof n, "mask_decoder.output_hypernetworks_mlps.%d.layers.%d.weight", t,
                     k);
            if (!(d->hyper[t][2 * k] = ts_map_take(m, n, 2, o, 256))) goto fail;
            snprintf(n, sizeof n, "mask_decoder.output_hypernetworks_mlps.%d.layers.%d.bias", t, k);
            if (!(d->hyper[t][2 * k + 1] = ts_map_take(m, n, 1, o))) goto fail;
        }
    for (int k = 0; k < 3; k++) {
        int o = k == 2 ? 4 : 256;
        if (d->iou_8[k].p) continue;
        snprintf(n, sizeof n, "mask_decoder.iou_prediction_head.layers.%d.weight", k);
        if (!(d->iou_head[2 * k] = ts_map_take(m, n, 2, o, 256))) goto fail;
        snprintf(n, sizeof n, "mask_decoder.iou_prediction_head.layers.%d.bias", k);
        if (!(d->iou_head[2 * k + 1] = ts_map_take(m, n, 1, o))) goto fail;
    }
    rc = TINYSAM_E_NOMEM;
    d->up0_src = u0;
    d->up3_src = u3;
    if (!up_i8) {
        if (!(d->up0_w = pack_convt(u0, 256, 64)) || !(d->up3_w = pack_convt(u3, 64, 32)))
            goto fail;
        for (int ab = 0; ab < 4; ab++) {
            memcpy(d->up0_bias + ab * 64, d->up0_b, 64 * sizeof(float));
            memcpy(d->up3_bias + ab * 32, d->up3_b, 32 * sizeof(float));
        }
    }
    if (pack_linears(d)) goto fail;
    *out = d;
    return 0;
fail:
    ts_mask_decoder_free(d);
    return rc;
}


/* W8A8 layers have no float pack (their weights are not trained). */
static void wref(ts_wpack *p) {
    if (p) ts_wpack_refresh(p);
}

static void refresh_attn(ts_attn_w *a) {
    wref(a->q_p);
    wref(a->k_p);
    wref(a->v_p);
    wref(a->o_p);
}

void ts_mask_decoder_refresh(ts_mask_decoder *d) {
    d->gen++; /* the cached layer-0 projections are stale */
    for (int L = 0; L < 2; L++) {
        ts_twoway_layer *l = &d->layer[L];
        refresh_attn(&l->self_attn);
        refresh_attn(&l->t2i);
        refresh_attn(&l->i2t);
        wref(l->l1_p);
        wref(l->l2_p);
    }
    refresh_attn(&d->final_attn);
    for (int k = 0; k < 3; k++) {
        for (int t = 0; t < 4; t++) wref(d->hyper_p[t][k]);
        wref(d->iou_p[k]);
    }
    if (d->up_i8) return; /* int8 weights are not trained */
    pack_convt_into(d->up0_src, 256, 64, d->up0_w);
    pack_convt_into(d->up3_src, 64, 32, d->up3_w);
    for (int ab = 0; ab < 4; ab++) {
        memcpy(d->up0_bias + ab * 64, d->up0_b, 64 * sizeof(float));
        memcpy(d->up3_bias + ab * 32, d->up3_b, 32 * sizeof(float));
    }
}

/* ------------------------------------------------------------------ forward */

#define FOLD_MAX 16 /* token count up to which the cross attentions are folded */
int ts_mask_decoder_fold_max = FOLD_MAX;
#define UP_TOK 512  /* image tokens per upscaling chunk (8 rows of the 64 x 64 grid) */
#define N_CHUNK (N_IMG / UP_TOK)

/* Scratch of one upscaling chunk: UP_TOK x 256, 4*UP_TOK x 128, 4*UP_TOK x 16. */
typedef struct {
    float *g1, *g2, *m;
    uint8_t *q; /* int8 upscaling: 4*UP_TOK x 128 mask-product codes */
} up_scratch;

typedef struct {
    float *T, *q, *t1, *t2, *mlp; /* tokens x 256 (mlp: tokens x 2048) */
    float *keys, *kpe, *img;      /* 4096 x 256 */
    float *S;                     /* attention weights */
    float *f1, *f2, *sb;          /* folded operands: 8*FOLD_MAX x 256, 8*FOLD_MAX */
    float *pa, *pb, *pc, *ctx;    /* projections: FOLD_MAX x 256, or 4096 x 256 when unfolded */
    float *mask_chw, *mask_scratch; /* for a mask input */
    uint8_t *kq;                  /* int8: the keys + PE, 4096 x 256 codes */
    uint8_t *kTq;                 /* int8: the keys transposed, 256 x 4096 codes */
    uint8_t *kc;                  /* int8: the keys, 4096 x 256 codes (the upscaling's input) */
    /* int8: kpe not written by the codes pass (only its codes are used); kpe_now() makes it
     * from kpe_keys + kpe_pos for the float fallbacks (out of memory for a run-time pack) */
    int kpe_stale;
    const float *kpe_keys, *kpe_pos;
    int8_t *pq;                   /* int8: t2i attention weights, 8*FOLD_MAX x 4096 codes */
    float hblk[128 * 16], h1[256], h2[256], hyper[4 * 32];
} workspace;

static void ws_free(workspace *w) {
    float *all[] = {w->T,  w->q,  w->t1, w->t2, w->mlp, w->keys, w->kpe, w->img,
                    w->S,  w->f1, w->f2, w->sb, w->pa,  w->pb,   w->pc,  w->ctx,
                    w->mask_chw, w->mask_scratch};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ts_free_aligned(all[i]);
    ts_free_aligned(w->kq);
    ts_free_aligned(w->kTq);
    ts_free_aligned(w->kc);
    ts_free_aligned(w->pq);
}

/* direct: room for the unfolded attentions (more than FOLD_MAX tokens) */
static int ws_alloc(workspace *w, int max_tokens, int direct) {
    memset(w, 0, sizeof *w);
    size_t t = (size_t)max_tokens, img = (size_t)N_IMG * 256, f = 8 * FOLD_MAX;
    size_t proj = direct ? (t > N_IMG ? t : N_IMG) * 256 : FOLD_MAX * 256;
    size_t s = direct ? (t > f ? t : f) * N_IMG : 8 * t * N_IMG;
    int ok = 1;
#define A(field, n) ok &= (w->field = ts_malloc_aligned(sizeof(float) * (n))) != NULL;
    A(T, t * 256) A(q, t * 256) A(t1, t * 256) A(t2, t * 256) A(mlp, t * 2048)
    A(keys, img) A(kpe, img) A(img, img) A(S, s) A(f1, f * 256) A(f2, f * 256) A(sb, f)
    A(pa, proj) A(pb, proj) A(pc, proj) A(ctx, proj)
    A(mask_chw, img) A(mask_scratch, TS_PROMPT_DENSE_SCRATCH)
#undef A
    ok &= (w->kq = ts_malloc_aligned(img)) != NULL;
    ok &= (w->kTq = ts_malloc_aligned(img)) != NULL;
    ok &= (w->kc = ts_malloc_aligned(img)) != NULL;
    ok &= (w->pq = ts_malloc_aligned((size_t)8 * FOLD_MAX * N_IMG)) != NULL;
    if (!ok) {
        ws_free(w);
        return ts_error(TINYSAM_E_NOMEM, "out of memory for the mask decoder");
    }
    return 0;
}

/* PyTorch Linear y = x W^T + b with the weight's load-time pack. */
static void linear(const float *x, int M, const ts_wpack *W, const float *b, float *y) {
    ts_gemm_w(M, x, ts_wpack_k(W), W, y, ts_wpack_n(W), 0.0f, b, TS_ACT_NONE);
}

/* A token-side Linear: W8A8 when the file has it (q->p: the input quantised with its static
 * step inside the GEMM; each row is computed alone, so a batch of prompts equals separate
 * calls), else the float pack W. The float form feeds the calibration probe. */
static void lin(const ts_lin_i8 *q, const ts_wpack *W, const float *b, const float *x, int M,
                float *y) {
    if (q->p) {
        ts_i8_out o = {.bias = q->bias, .C = y, .ldc = ts_i8pack_n(q->p)};
        ts_gemm_i8_f32(M, x, ts_i8pack_k(q->p), q->step, q->zp, q->p, &o);
        return;
    }
    if (ts_decoder_probe && q->site >= TS_DEC_SITE_TOK0)
        ts_decoder_probe(ts_decoder_probe_ctx, q->site, x, M, ts_wpack_k(W), 0);
    linear(x, M, W, b, y);
}

/* Image-sized element-wise passes (4096 x 256) are spread over the pool: with one prompt
 * set they would otherwise leave the other cores idle between the GEMMs. Inside a task of
 * an outer ts_parallel_for (several sets) the pool runs them serially. */
#define PAR_TASKS 16
#define PAR_MIN 65536

typedef struct {
    const float *a, *b; /* b NULL: copy */
    float *out;
    size_t n;
} add_job;

static void add_range(const float *a, const float *b, float *out, size_t i0, size_t i1) {
    if (!b) {
        memcpy(out + i0, a + i0, (i1 - i0) * sizeof(float));
        return;
    }
    for (size_t i = i0; i < i1; i++) out[i] = a[i] + b[i];
}

static void add_task(void *ctx, int t, int tid) {
    (void)tid;
    const add_job *j = ctx;
    add_range(j->a, j->b, j->out, j->n * t / PAR_TASKS, j->n * (t + 1) / PAR_TASKS);
}

static void add(const float *a, const float *b, float *out, size_t n) {
    if (n < PAR_MIN) {
        add_range(a, b, out, 0, n);
        return;
    }
    add_job j = {a, b, out, n};
    ts_parallel_for(PAR_TASKS, add_task, &j);
}

static void copy(const float *a, float *out, size_t n) { add(a, NULL, out, n); }

typedef struct {
    const float *src;
    float *dst;
    int rows, cols;
} transpose_job;

/* Source rows [r0, r1). */
static void transpose_rows(const transpose_job *j, int r0, int r1) {
    if (r1 > r0)
        ts_transpose_serial(j->src + (size_t)r0 * j->cols, j->cols, r1 - r0, j->cols, j->dst + r0,
                            j->rows);
}

static void transpose_task(void *ctx, int t, int tid) {
    (void)tid;
    const transpose_job *j = ctx;
    int per = (j->rows + PAR_TASKS - 1) / PAR_TASKS;
    per = (per + 15) / 16 * 16;
    transpose_rows(j, TS_MIN(j->rows, t * per), TS_MIN(j->rows, (t + 1) * per));
}

/* dst (cols x rows) = src (rows x cols)^T. */
static void transpose(const float *src, int rows, int cols, float *dst) {
    transpose_job j = {src, dst, rows, cols};
    if ((size_t)rows * cols < PAR_MIN) transpose_rows(&j, 0, rows);
    else ts_parallel_for(PAR_TASKS, transpose_task, &j);
}

/* The image side of an int8 layer, rows [r0, r1) (multiples of 8) of the 4096 x 256 keys:
 * optionally LayerNorm in place (ln_w), then kpe = keys + PE, kq = codes of kpe, kc = codes of
 * the keys and kTq = kc transposed (256 x 4096): one pass while a block of rows is in cache,
 * the same values as ts_layernorm, add, ts_quantize_u8 and a transpose one after another. */
typedef struct {
    float *keys, *kpe; /* kpe NULL: only its codes */
    const float *pos, *ln_w, *ln_b;
    uint8_t *kq, *kc, *kTq; /* kq NULL: no kpe nor its codes */
    float kq_step, kc_step;
    int kq_zp, kc_zp;
    /* rows made so far of each band of 64 (img_codes_row_done): the band's transpose is made
     * by the thread that finishes it, while its codes are in cache (img_codes_bands_reset) */
    atomic_int band_rows[N_IMG / 64];
} img_codes_job;

static void img_codes_bands_reset(img_codes_job *j) {
    for (int b = 0; b < N_IMG / 64; b++) atomic_init(&j->band_rows[b], 0);
}

/* d = a + b over one row of 256 (restrict and a constant count: the compiler vectorises it) */
static void add_row256(float *restrict d, const float *restrict a, const float *restrict b) {
    for (int i = 0; i < 256; i++) d[i] = a[i] + b[i];
}

/* Rows [r, r + n), n <= 8: all but the transpose. */
static void img_codes_block(const img_codes_job *j, int r, int n) {
    float *x = j->keys + (size_t)r * 256;
    size_t o = (size_t)r * 256;
    if (j->ln_w) ts_layernorm_to_serial(x, x, n, 256, j->ln_w, j->ln_b, 1e-5f);
    if (j->kq) {
        _Alignas(64) float buf[8 * 256];
        float *kp = j->kpe ? j->kpe + o : buf;
        for (int i = 0; i < n; i++) add_row256(kp + i * 256, x + i * 256, j->pos + o + i * 256);
        ts_quantize_u8(kp, n, 256, 256, j->kq_step, j->kq_zp, j->kq + o, 256);
    }
    ts_quantize_u8(x, n, 256, 256, j->kc_step, j->kc_zp, j->kc + o, 256);
}

/* The int8 GEMM's row callback: the image->token output GEMM hands each finished row of the
 * keys (C = w->keys) while it is in cache; the last row of a band of 64 also transposes the
 * band's codes into kTq (the rows of a band come from one or more threads, in any order). */
static void img_codes_row_done(void *ctx, int m, float *row) {
    (void)row;
    img_codes_job *j = ctx;
    img_codes_block(j, m, 1);
    const int b = m / 64;
    if (atomic_fetch_add(&j->band_rows[b], 1) == 63)
        ts_transpose_u8(j->kc + (size_t)b * 64 * 256, 256, 64, 256, j->kTq + b * 64, N_IMG);
}

static void img_codes_rows(const img_codes_job *j, int r0, int r1) {
    for (int r = r0; r < r1; r += 8) img_codes_block(j, r, 8);
    ts_transpose_u8(j->kc + (size_t)r0 * 256, 256, r1 - r0, 256, j->kTq + r0, N_IMG);
}

static void img_codes_task(void *ctx, int t, int tid) {
    (void)tid;
    const int per = N_IMG / PAR_TASKS;
    img_codes_rows(ctx, t * per, (t + 1) * per);
}

/* All of it (unless img_codes_row_done made it). */
static void img_codes(const img_codes_job *j) {
    ts_parallel_for(PAR_TASKS, img_codes_task, (void *)j);
}

/* w->kpe, made now if the codes pass left it out */
static void kpe_now(workspace *w) {
    if (w->kpe_stale) add(w->kpe_keys, w->kpe_pos, w->kpe, (size_t)N_IMG * 256);
    w->kpe_stale = 0;
}

static void attention(const ts_attn_w *a, const float *q_in, int nq, const float *k_in,
                      const float *v_in, int nk, const float *kp, const float *vp, float *out,
                      workspace *w) {
    int D = a->dim, dh = D / 8;
    const float *K = kp ? kp : w->pb, *V = vp ? vp : w->pc;
    lin(&a->q8, a->q_p, a->q_b, q_in, nq, w->pa);
    if (!kp) lin(&a->k8, a->k_p, a->k_b, k_in, nk, w->pb);
    if (!vp) lin(&a->v8, a->v_p, a->v_b, v_in, nk, w->pc);
    const float scale = sqrtf((float)dh); /* true division, as attn / math.sqrt(c_per_head) */
    for (int h = 0; h < 8; h++) {
        ts_gemm(nq, nk, dh, w->pa + h * dh, D, K + h * dh, D, 1, w->S, nk, 0.0f);
        size_t ns = (size_t)nq * nk;
        for (size_t i = 0; i < ns; i++) w->S[i] /= scale;
        ts_softmax_rows(w->S, nq, nk);
        ts_gemm(nq, dh, nk, w->S, nk, V + h * dh, D, 0, w->ctx + h * dh, D, 0.0f);
    }
    lin(&a->o8, a->o_p, a->o_b, w->ctx, nq, out);
}

/* Token-to-image attention for few tokens, without the 4096 x 128 image projections. Per
 * head h: q.(Wk_h x + bk_h) = (Wk_h^T q).x + q.bk_h, whose last term is constant along a
 * softmax row and cancels; and sum_n A(n) (Wv_h x_n + bv_h) = Wv_h (sum_n A(n) x_n) + bv_h,
 * the weights summing to one. The heads of all tokens form one 8nq x 4096 weight matrix
 * (row h*nq + i): two GEMMs over the image instead of two 128-wide projections. */
static void t2i_folded(const ts_attn_w *a, const float *q_in, int nq, const float *k_in,
                       const float *v_in, float *out, workspace *w) {
    int D = a->dim, dh = D / 8, R = 8 * nq;
    const float scale = sqrtf((float)dh);
    lin(&a->q8, a->q_p, a->q_b, q_in, nq, w->pa);
    for (int h = 0; h < 8; h++)
        ts_gemm(nq, 256, dh, w->pa + h * dh, D, a->k_w + (size_t)h * dh * 256, 256, 0,
                w->f1 + (size_t)h * nq * 256, 256, 0.0f);
    for (size_t i = 0; i < (size_t)R * 256; i++) w->f1[i] /= scale;
    /* S^T = x f1^T reads the image in place (no packing of a 4096 x 256 operand) */
    ts_gemm(N_IMG, R, 256, k_in, 256, w->f1, 256, 1, w->img, R, 0.0f);
    transpose(w->img, N_IMG, R, w->S);
    ts_softmax_rows(w->S, R, N_IMG);
    ts_gemm(R, 256, N_IMG, w->S, N_IMG, v_in, 256, 0, w->f2, 256, 0.0f);
    for (int h = 0; h < 8; h++)
        ts_gemm_ex(nq, dh, 256, w->f2 + (size_t)h * nq * 256, 256, a->v_w + (size_t)h * dh * 256,
                   256, 1, w->ctx + h * dh, D, 0.0f, a->v_b + h * dh, TS_ACT_NONE);
    lin(&a->o8, a->o_p, a->o_b, w->ctx, nq, out);
}

/* Image-to-token attention (the 4096 image tokens query nk tokens) for few tokens. Scores
 * per head: from the shared projection qp (4096 x D) when given, else folded as
 * (Wq_h x + bq_h).k = x.(Wq_h^T k) + bq_h.k (a per-column bias). The output projection is
 * applied to the token values before the weighting, Wo_h (sum_j A(j) v_j) =
 * sum_j A(j) (Wo_h v_j), so the 4096 x D context is never formed. Weights: 4096 x 8nk,
 * column h*nk + j. beta = 1 adds the result to out (the residual). */
static void i2t_folded(const ts_attn_w *a, const float *q_in, const float *qp, const float *k_in,
                       const float *v_in, int nk, float *out, float beta, workspace *w) {
    int D = a->dim, dh = D / 8, R = 8 * nk;
    const float scale = sqrtf((float)dh);
    lin(&a->k8, a->k_p, a->k_b, k_in, nk, w->pa);
    lin(&a->v8, a->v_p, a->v_b, v_in, nk, w->pb);
    for (int h = 0; h < 8; h++) {
        ts_gemm(nk, 256, dh, w->pb + h * dh, D, a->o_w + h * dh, D, 1,
                w->f2 + (size_t)h * nk * 256, 256, 0.0f);
        if (qp) {
            ts_gemm(N_IMG, nk, dh, qp + h * dh, D, w->pa + h * dh, D, 1, w->S + h * nk, R, 0.0f);
            continue;
        }
        ts_gemm(nk, 256, dh, w->pa + h * dh, D, a->q_w + (size_t)h * dh * 256, 256, 0,
                w->f1 + (size_t)h * nk * 256, 256, 0.0f);
        for (int j = 0; j < nk; j++) {
            float acc = 0.0f;
            for (int c = 0; c < dh; c++)
                acc += a->q_b[h * dh + c] * w->pa[(size_t)j * D + h * dh + c];
            w->sb[h * nk + j] = acc / scale;
        }
    }
    if (qp) {
        for (size_t i = 0; i < (size_t)N_IMG * R; i++) w->S[i] /= scale;
    } else {
        for (size_t i = 0; i < (size_t)R * 256; i++) w->f1[i] /= scale;
        ts_gemm_ex(N_IMG, R, 256, q_in, 256, w->f1, 256, 1, w->S, R, 0.0f, w->sb, TS_ACT_NONE);
    }
    ts_softmax_rows(w->S, N_IMG * 8, nk); /* each (image token, head) row of nk weights */
    ts_gemm_ex(N_IMG, 256, R, w->S, R, w->f2, 256, 0, out, 256, beta, a->o_b, TS_ACT_NONE);
}

/* The upscaling of image tokens [c*UP_TOK, (c+1)*UP_TOK) and its mask logits. Both
 * transposed convolutions have kernel = stride, so every token owns a 4 x 4 block of the
 * 256 x 256 output: ConvT(256->64) as a GEMM, LayerNorm2d (eps 1e-6), GELU, ConvT(64->32) as
 * a GEMM with GELU, then the 4 hypernetwork vectors at once (block-diagonal hblk, 128 x 16:
 * column sub-pixel*4 + mask token) and a scatter into lr (4 x 256 x 256). */
/* ---- int8 cross attentions (an int8 model file: d->up_i8) ----
 * The image-side products of t2i_folded / i2t_folded as int8 GEMMs. Static operands: the keys
 * + PE (kq: uint8 codes with the layer's calibrated step). Dynamic operands, quantised per
 * call with per-row symmetric scales (ts_i8pack_new_f32): the folded query rows f1, the keys
 * transposed (per channel), the token-side values f2. Attention probabilities: i2t's rows of
 * nk weights are codes of step 1/255 (static: a probability is in [0, 1]); t2i's rows of 4096
 * weights are codes of the row's maximum (round(255 p / max p)) and the product is divided by
 * the code sum, so that the quantised weights still sum to one (the folding relies on it). */

/* out (rows x cols, ldo) = in^T for in (cols x rows): small operands, on this thread. */
static void transpose_small(const float *in, int cols, int rows, float *out) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) out[(size_t)r * cols + c] = in[(size_t)c * rows + r];
}

/* A row of n attention probabilities (>= 0) as codes round(p / (max p / qmax)) in [0, qmax]
 * with the ISA's vectorised quantiser (a true division, as ts_quant_u8_range); returns their
 * sum (the row's rescale is 1 / sum, so that the quantised weights sum to one). */
static int32_t prob_codes(const ts_i8pk_kernels *kn, const float *p, int n, int qmax,
                          uint8_t *q) {
    const float mx = kn->row_max(p, n);
    if (!(mx > 0.0f)) {
        memset(q, 0, (size_t)n);
        return 0;
    }
    kn->quant_row(p, n, mx / (float)qmax, 0, 0, qmax, q);
    int32_t cs = 0;
    for (int i = 0; i < n; i++) cs += q[i];
    return cs;
}

/* Probability rows [r0, r1) of S (N_IMG wide) as codes of each row's maximum (qmax) into pq,
 * and each row's scale 1 / sum(codes) into rsc, so that the quantised weights sum to one. */
static void prob_code_rows(const float *S, int r0, int r1, int qmax, uint8_t *pq, float *rsc) {
    const ts_i8pk_kernels kn = ts_i8pk_get();
    for (int r = r0; r < r1; r++) {
        int32_t cs = prob_codes(&kn, S + (size_t)r * N_IMG, N_IMG, qmax, pq + (size_t)r * N_IMG);
        rsc[r] = cs > 0 ? 1.0f / (float)cs : 0.0f;
    }
}

typedef struct {
    const float *S;
    uint8_t *pq;
    float *rsc;
    int R;
} prob_rows_job;

/* Rows [t R / 8, (t + 1) R / 8) of t2i's probabilities, in codes of 7 bits (p >= 0). */
static void prob_rows_task(void *ctx, int t, int tid) {
    (void)tid;
    const prob_rows_job *j = ctx;
    prob_code_rows(j->S, j->R * t / 8, j->R * (t + 1) / 8, 127, j->pq, j->rsc);
}

static void t2i_folded_i8(const ts_attn_w *a, const float *q_in, int nq, const float *k_in,
                          const uint8_t *kq, float kstep, int kzp, const float *v_in,
                          float vstep, int vzp, int vt_ready, float *out, workspace *w) {
    int D = a->dim, dh = D / 8, R = 8 * nq;
    const float scale = sqrtf((float)dh);
    lin(&a->q8, a->q_p, a->q_b, q_in, nq, w->pa);
    for (int h = 0; h < 8; h++)
        ts_gemm(nq, 256, dh, w->pa + h * dh, D, a->k_w + (size_t)h * dh * 256, 256, 0,
                w->f1 + (size_t)h * nq * 256, 256, 0.0f);
    for (size_t i = 0; i < (size_t)R * 256; i++) w->f1[i] /= scale;
    ts_i8pack *fp = ts_i8pack_new_f32(w->f1, R, 256, 256);
    if (!fp) { /* out of memory: the float form */
        kpe_now(w);
        t2i_folded(a, q_in, nq, k_in, v_in, out, w);
        return;
    }
    ts_i8_out os = {.C = w->img, .ldc = R};
    ts_gemm_i8(N_IMG, kq, 256, kstep, kzp, fp, &os);
    ts_i8pack_free(fp);
    transpose(w->img, N_IMG, R, w->S);
    ts_softmax_rows(w->S, R, N_IMG);
    /* weights as codes of each row's maximum, round(127 p / max p) (7 bits: p >= 0), the row's
     * scale 1 / sum(codes) so that the quantised weights sum to one */
    float rsc[8 * FOLD_MAX];
    prob_rows_job pj = {w->S, (uint8_t *)w->pq, rsc, R};
    ts_parallel_for(8, prob_rows_task, &pj); /* rows apart: a lone prompt uses the pool */
    ts_i8pack *pp = ts_i8pack_new(w->pq, R, N_IMG, N_IMG, rsc);
    if (!pp) {
        kpe_now(w);
        t2i_folded(a, q_in, nq, k_in, v_in, out, w);
        return;
    }
    /* f2^T (256 x R) = keys^T P^T: the keys transposed as static uint8 codes (w->kTq, made
     * with the keys' LayerNorm unless vt_ready is 0) */
    if (!vt_ready) {
        img_codes_job cj = {.keys = (float *)v_in, .kc = w->kc, .kTq = w->kTq, .kc_step = vstep,
                            .kc_zp = vzp};
        img_codes(&cj);
    }
    ts_i8_out ov = {.C = w->img, .ldc = R};
    ts_gemm_i8(256, w->kTq, N_IMG, vstep, vzp, pp, &ov);
    ts_i8pack_free(pp);
    transpose_small(w->img, 256, R, w->f2);
    for (int h = 0; h < 8; h++)
        ts_gemm_ex(nq, dh, 256, w->f2 + (size_t)h * nq * 256, 256, a->v_w + (size_t)h * dh * 256,
                   256, 1, w->ctx + h * dh, D, 0.0f, a->v_b + h * dh, TS_ACT_NONE);
    lin(&a->o8, a->o_p, a->o_b, w->ctx, nq, out);
}

/* i2t_folded with the int8 products; out = res + the attention (res NULL: out +=). cj (or
 * NULL): the next layer's codes pass, made row by row in the output GEMM's epilogue; returns
 * whether it was (else the caller runs it). */
static int i2t_folded_i8(const ts_attn_w *a, const float *q_in, const uint8_t *kq, float kstep,
                         int kzp, const float *qp, const uint8_t *qq, float qstep,
                         const float *k_in, const float *v_in, int nk, const float *res,
                         float *out, img_codes_job *cj, workspace *w) {
    int D = a->dim, dh = D / 8, R = 8 * nk;
    const float scale = sqrtf((float)dh);
    lin(&a->k8, a->k_p, a->k_b, k_in, nk, w->pa);
    lin(&a->v8, a->v_p, a->v_b, v_in, nk, w->pb);
    for (int h = 0; h < 8; h++) {
        ts_gemm(nk, 256, dh, w->pb + h * dh, D, a->o_w + h * dh, D, 1,
                w->f2 + (size_t)h * nk * 256, 256, 0.0f);
        if (qp && qq) continue; /* below, all heads at once */
        if (qp) {
            ts_gemm(N_IMG, nk, dh, qp + h * dh, D, w->pa + h * dh, D, 1, w->S + h * nk, R, 0.0f);
            continue;
        }
        ts_gemm(nk, 256, dh, w->pa + h * dh, D, a->q_w + (size_t)h * dh * 256, 256, 0,
                w->f1 + (size_t)h * nk * 256, 256, 0.0f);
        for (int j = 0; j < nk; j++) {
            float acc = 0.0f;
            for (int c = 0; c < dh; c++)
                acc += a->q_b[h * dh + c] * w->pa[(size_t)j * D + h * dh + c];
            w->sb[h * nk + j] = acc / scale;
        }
    }
    ts_i8pack *fp = NULL;
    if (qp && qq) {
        /* scores of all heads in one int8 GEMM against the shared q codes: the keys laid out
         * block-diagonally, row h*nk + j = head h's slice of key j (zeros elsewhere), / scale */
        memset(w->f1, 0, sizeof(float) * (size_t)R * D);
        for (int h = 0; h < 8; h++)
            for (int jj = 0; jj < nk; jj++)
                for (int c = 0; c < dh; c++)
                    w->f1[(size_t)(h * nk + jj) * D + h * dh + c] =
                        w->pa[(size_t)jj * D + h * dh + c] / scale;
        fp = ts_i8pack_new_f32(w->f1, R, D, D);
        if (fp) {
            ts_i8_out os = {.C = w->S, .ldc = R};
            ts_gemm_i8(N_IMG, qq, D, qstep, 128, fp, &os);
        } else {
            for (int h = 0; h < 8; h++)
                ts_gemm(N_IMG, nk, dh, qp + h * dh, D, w->pa + h * dh, D, 1, w->S + h * nk, R,
                        0.0f);
            for (size_t i = 0; i < (size_t)N_IMG * R; i++) w->S[i] /= scale;
        }
    } else if (qp) {
        for (size_t i = 0; i < (size_t)N_IMG * R; i++) w->S[i] /= scale;
    } else {
        for (size_t i = 0; i < (size_t)R * 256; i++) w->f1[i] /= scale;
        fp = ts_i8pack_new_f32(w->f1, R, 256, 256);
        if (fp) {
            ts_i8_out os = {.bias = w->sb, .C = w->S, .ldc = R};
            ts_gemm_i8(N_IMG, kq, 256, kstep, kzp, fp, &os);
        } else {
            kpe_now(w);
            ts_gemm_ex(N_IMG, R, 256, q_in, 256, w->f1, 256, 1, w->S, R, 0.0f, w->sb,
                       TS_ACT_NONE);
        }
    }
    ts_softmax_rows(w->S, N_IMG * 8, nk);
    /* out += S f2 + o_b: f2 as the weight (256 x R, per output channel), S in codes of 1/255 */
    transpose_small(w->f2, R, 256, w->f1);
    ts_i8pack *op = ts_i8pack_new_f32(w->f1, 256, R, R);
    if (op) {
        ts_i8_out oo = {.bias = a->o_b, .accumulate = !res, .res = res, .C = out, .ldc = 256,
                        .row_done = cj ? img_codes_row_done : NULL, .row_ctx = cj};
        ts_gemm_i8_f32(N_IMG, w->S, R, 1.0f / 255.0f, 0, op, &oo);
    } else {
        if (res) copy(res, out, (size_t)N_IMG * 256);
        ts_gemm_ex(N_IMG, 256, R, w->S, R, w->f2, 256, 0, out, 256, 1.0f, a->o_b, TS_ACT_NONE);
    }
    ts_i8pack_free(fp);
    ts_i8pack_free(op);
    return op != NULL;
}

/* The 4 x 4 output block of every token of the chunk into lr: m is 4*UP_TOK rows of 16
 * (sub-pixel * 4 + mask token). */
static void scatter_masks(int n0, const float *mrow, float *lr) {
    for (int r = 0; r < UP_TOK * 4; r++) {
        int n = n0 + r / 4, ab = r % 4;
        int y1 = 2 * (n / 64) + ab / 2, x1 = 2 * (n % 64) + ab % 2;
        const float *m = mrow + (size_t)r * 16;
        for (int ab2 = 0; ab2 < 4; ab2++) {
            size_t p = (size_t)(2 * y1 + ab2 / 2) * 256 + 2 * x1 + ab2 % 2;
            for (int t = 0; t < 4; t++) lr[(size_t)t * 65536 + p] = m[ab2 * 4 + t];
        }
    }
}

/* up0's row callback: a token's 4 sub-pixels of 64 channels through LayerNorm2d and GELU
 * while the row is in cache (the same values as ts_layernorm then ts_gelu on the chunk: the
 * rows are independent and 256 is a whole number of vectors on every path). */
static void up0_row_done(void *ctx, int m, float *row) {
    (void)m;
    const ts_mask_decoder *d = ctx;
    ts_layernorm_to_serial(row, row, 4, 64, d->upn_w, d->upn_b, 1e-6f);
    ts_gelu_serial(row, 256);
}

/* The int8 form of upscale_chunk: ConvT(256->64) from the keys quantised on the fly, LayerNorm2d
 * and GELU in float (in up0's epilogue, row by row), ConvT(64->32) + GELU requantised straight
 * to uint8 codes (u->q) for the mask product against hp, the hypernetwork vectors quantised per
 * prompt. Runs on the calling thread (inside a pool task). */
static void upscale_chunk_i8(const ts_mask_decoder *d, const float *keys, const uint8_t *kc,
                             const ts_i8pack *hp, int c, const up_scratch *u, float *lr) {
    const ts_up_i8 *q = d->up_i8;
    int n0 = c * UP_TOK;
    ts_i8_out o0 = {.bias = d->up0_bias, .C = u->g1, .ldc = 256, .row_done = up0_row_done,
                    .row_ctx = (void *)d};
    if (kc) /* the keys' codes with up0's step, made for the final attention */
        ts_gemm_i8_serial(UP_TOK, kc + (size_t)n0 * 256, 256, q->up0_step, q->up0_zp, q->up0,
                          &o0);
    else
        ts_gemm_i8_f32_serial(UP_TOK, keys + (size_t)n0 * 256, 256, q->up0_step, q->up0_zp,
                              q->up0, &o0);
    ts_i8_out o3 = {.bias = d->up3_bias, .act = TS_ACT_GELU, .Cq = u->q, .ldc = 128,
                    .out_step = q->mp_step, .out_zp = q->mp_zp};
    ts_gemm_i8_f32_serial(UP_TOK * 4, u->g1, 64, q->up3_step, q->up3_zp, q->up3, &o3);
    ts_i8_out om = {.C = u->m, .ldc = 16};
    ts_gemm_i8_serial(UP_TOK * 4, u->q, 128, q->mp_step, q->mp_zp, hp, &om);
    scatter_masks(n0, u->m, lr);
}

/* The upscaling of image tokens [c*UP_TOK, (c+1)*UP_TOK) and its mask logits. Both
 * transposed convolutions have kernel = stride, so every token owns a 4 x 4 block of the
 * 256 x 256 output: ConvT(256->64) as a GEMM, LayerNorm2d (eps 1e-6), GELU, ConvT(64->32) as
 * a GEMM with GELU, then the 4 hypernetwork vectors at once (block-diagonal hblk, 128 x 16:
 * column sub-pixel*4 + mask token) and a scatter into lr (4 x 256 x 256). */
static void upscale_chunk(const ts_mask_decoder *d, const float *keys, const float *hblk, int c,
                          const up_scratch *u, float *lr) {
    int n0 = c * UP_TOK;
    const float *kin = keys + (size_t)n0 * 256;
    if (ts_decoder_probe) ts_decoder_probe(ts_decoder_probe_ctx, TS_DEC_SITE_UP0, kin, UP_TOK, 256, n0);
    ts_gemm_ex(UP_TOK, 256, 256, kin, 256, d->up0_w, 256, 0, u->g1, 256,
               0.0f, d->up0_bias, TS_ACT_NONE);
    ts_layernorm(u->g1, UP_TOK * 4, 64, d->upn_w, d->upn_b, 1e-6f);
    ts_gelu(u->g1, (size_t)UP_TOK * 256);
    if (ts_decoder_probe)
        ts_decoder_probe(ts_decoder_probe_ctx, TS_DEC_SITE_UP3, u->g1, UP_TOK * 4, 64, n0 * 4);
    ts_gemm_ex(UP_TOK * 4, 128, 64, u->g1, 64, d->up3_w, 128, 0, u->g2, 128, 0.0f, d->up3_bias,
               TS_ACT_GELU);
    if (ts_decoder_probe)
        ts_decoder_probe(ts_decoder_probe_ctx, TS_DEC_SITE_MASK, u->g2, UP_TOK * 4, 128, n0 * 4);
    ts_gemm(UP_TOK * 4, 16, 128, u->g2, 128, hblk, 16, 0, u->m, 16, 0.0f);
    scatter_masks(n0, u->m, lr);
}

/* Image-side tensors shared by the sets of one call. */
typedef struct {
    float *emb_tok;       /* 4096 x 256: the embedding, token-major */
    float *src0, *kpe0;   /* + no_mask_embed, and + dense PE: layer 0 of sets without a mask */
    float *k_t2i, *v_t2i, *q_i2t; /* their layer-0 projections (an int8 model: q only, K and V
                                     as the packs below, unless those could not be made) */
    /* int8 model: the projections as int8 operands, made once per call (shared_i8_make) */
    ts_i8pack *k8[8], *v8[8]; /* per head: K_h (4096 x 16), V_h^T (16 x 4096), per-row scales */
    uint8_t *qq;              /* q_i2t codes, 4096 x 128 */
    float q_step;             /* their step (zero point 128), max |q_i2t| / 127 */
    int has_i8;
    /* Kept between calls on the same embedding (a cached embedding prompted again): emb_tok,
     * src0 and kpe0 hold this embedding for this prompt encoder, no_mask and decoder
     * generation (img_valid); the projections above are made (proj_valid). */
    int img_valid, proj_valid;
    const ts_prompt_encoder *pe;
    unsigned gen;
    const char *isa, *isa_i8; /* the kernels that made them (tests switch ISA at run time) */
    float no_mask[256];
} shared_img;

typedef struct {
    const ts_prompt_encoder *pe;
    const ts_mask_decoder *d;
    const ts_prompt_set *sets;
    const shared_img *sh;
    int use_proj; /* sh's projections are filled */
    int fold_max;
    workspace *ws;
    up_scratch *up;
    /* A task may land on any pool thread, but at most n threads ever run one: each takes
     * the next free workspace on its first task. */
    int *slot_of_tid;
    atomic_int *next_slot;
    int par_up; /* one set: spread the upscaling chunks over the pool */
    float *low_res, *iou;
    float *tokens; /* n x 5 x 256 (hs rows 0..4), or NULL */
    /* per upscaling run */
    const float *keys, *hblk;
    const ts_i8pack *hp; /* int8 upscaling: hblk quantised */
    const uint8_t *kc;   /* the keys' codes with up0's step, or NULL */
    float *lr;
} decode_job;

typedef struct {
    const ts_prompt_encoder *pe;
    shared_img *sh;
} shared_job;

/* Image tokens [t*256, (t+1)*256): the layer-0 image side of every set without a mask
 * input, from the token-major embedding. */
static void shared_task(void *ctx, int t, int tid) {
    (void)tid;
    const shared_job *j = ctx;
    int per = N_IMG / PAR_TASKS, i0 = t * per;
    shared_img *sh = j->sh;
    for (int i = i0; i < i0 + per; i++)
        for (int ch = 0; ch < 256; ch++) {
            size_t x = (size_t)i * 256 + ch;
            sh->src0[x] = sh->emb_tok[x] + j->pe->no_mask[ch];
            sh->kpe0[x] = sh->src0[x] + j->pe->dense_pe_tok[x];
        }
}

typedef struct {
    const float *emb;     /* 256 x 4096 (channel-major, as the caller gives it) */
    const float *emb_tok; /* 4096 x 256 */
    atomic_int differs;
} same_job;

/* Image tokens [t*256, (t+1)*256) compared bit for bit, 16 tokens at a time so that both
 * layouts are read in whole cache lines. */
static void same_task(void *ctx, int t, int tid) {
    (void)tid;
    same_job *j = ctx;
    int per = N_IMG / PAR_TASKS;
    for (int i0 = t * per; i0 < (t + 1) * per; i0 += 16) {
        if (atomic_load_explicit(&j->differs, memory_order_relaxed)) return;
        for (int ch = 0; ch < 256; ch++)
            for (int i = i0; i < i0 + 16; i++) {
                uint32_t a, b;
                memcpy(&a, j->emb + (size_t)ch * N_IMG + i, 4);
                memcpy(&b, j->emb_tok + (size_t)i * 256 + ch, 4);
                if (a != b) {
                    atomic_store(&j->differs, 1);
                    return;
                }
            }
    }
}

/* Whether sh still holds the image side of this embedding for this prompt encoder and these
 * decoder weights: then a call skips the transpose and the layer-0 projections. */
static int shared_is_current(const shared_img *sh, const ts_prompt_encoder *pe,
                             const ts_mask_decoder *d, const float *embedding) {
    if (!sh->img_valid || sh->pe != pe || sh->gen != d->gen || sh->isa != ts_nn_isa_name() ||
        sh->isa_i8 != ts_gemm_i8_isa_name() ||
        memcmp(sh->no_mask, pe->no_mask, sizeof sh->no_mask))
        return 0;
    same_job j = {.emb = embedding, .emb_tok = sh->emb_tok};
    atomic_init(&j.differs, 0);
    ts_parallel_for(PAR_TASKS, same_task, &j);
    return !atomic_load(&j.differs);
}

static void shared_i8_free(shared_img *sh) {
    for (int h = 0; h < 8; h++) {
        ts_i8pack_free(sh->k8[h]);
        ts_i8pack_free(sh->v8[h]);
        sh->k8[h] = sh->v8[h] = NULL;
    }
    sh->has_i8 = 0;
}

/* The shared layer-0 projections as int8 operands (dynamic, per call: they depend on the
 * image): K_h and V_h^T packed per head with per-row scales, q_i2t as uint8 codes of one
 * step. On failure (memory) has_i8 stays 0 and layer 0 runs in float. */
static void shared_i8_make(shared_img *sh, const float *k_t2i, const float *v_t2i,
                           float *vt /* scratch, N_IMG x 128 */) {
    transpose(v_t2i, N_IMG, 128, vt);
    int ok = 1;
    for (int h = 0; h < 8; h++) {
        ok &= (sh->k8[h] = ts_i8pack_new_f32(k_t2i + h * 16, N_IMG, 16, 128)) != NULL;
        ok &= (sh->v8[h] = ts_i8pack_new_f32(vt + (size_t)h * 16 * N_IMG, 16, N_IMG, N_IMG)) != NULL;
    }
    float mx = 0.0f;
    for (size_t i = 0; i < (size_t)N_IMG * 128; i++) {
        float a = fabsf(sh->q_i2t[i]);
        mx = a > mx ? a : mx;
    }
    sh->q_step = mx > 0.0f ? mx / 127.0f : 1.0f;
    ts_quantize_u8(sh->q_i2t, N_IMG, 128, 128, sh->q_step, 128, sh->qq, 128);
    if (!ok) shared_i8_free(sh);
    else sh->has_i8 = 1;
}

typedef struct {
    const shared_img *sh;
    workspace *w;
    const uint8_t *aq;
    float qs;
    int nq;
} t2i_heads_job;

/* Head h of t2i_shared_i8, in its own rows of w->S and w->pq (heads run in parallel for a
 * lone prompt; inside a batch's task the pool runs them in turn). */
static void t2i_head_task(void *ctx, int h, int tid) {
    (void)tid;
    const t2i_heads_job *j = ctx;
    workspace *w = j->w;
    const int nq = j->nq;
    float *S = w->S + (size_t)h * nq * N_IMG;
    uint8_t *pq = (uint8_t *)w->pq + (size_t)h * nq * N_IMG;
    ts_i8_out os = {.C = S, .ldc = N_IMG};
    ts_gemm_i8_serial(nq, j->aq + h * 16, 128, j->qs, 128, j->sh->k8[h], &os);
    /* / sqrt(16): the same values as a division by 4 */
    for (size_t i = 0; i < (size_t)nq * N_IMG; i++) S[i] *= 0.25f;
    ts_softmax_rows_serial(S, nq, N_IMG);
    float rsc[FOLD_MAX];
    prob_code_rows(S, 0, nq, 255, pq, rsc);
    ts_i8_out ov = {.C = w->ctx + h * 16, .ldc = 128};
    ts_gemm_i8_serial(nq, pq, N_IMG, 1.0f, 0, j->sh->v8[h], &ov);
    for (int r = 0; r < nq; r++)
        for (int c = 0; c < 16; c++) w->ctx[(size_t)r * 128 + h * 16 + c] *= rsc[r];
}

/* Token-to-image attention of layer 0 against the shared int8 projections: per head, scores
 * q_h K_h^T from the query rows quantised with one dynamic step, probabilities as codes of each
 * row's maximum (round(255 p / max p)), the product rescaled by 1 / sum(codes) per row. */
static void t2i_shared_i8(const ts_attn_w *a, const float *q_in, int nq, const shared_img *sh,
                          float *out, workspace *w) {
    lin(&a->q8, a->q_p, a->q_b, q_in, nq, w->pa);
    float mx = 0.0f;
    for (int i = 0; i < nq * 128; i++) mx = fabsf(w->pa[i]) > mx ? fabsf(w->pa[i]) : mx;
    const float qs = mx > 0.0f ? mx / 127.0f : 1.0f;
    uint8_t *aq = (uint8_t *)w->f1;
    ts_quantize_u8(w->pa, nq, 128, 128, qs, 128, aq, 128);
    t2i_heads_job hj = {sh, w, aq, qs, nq};
    ts_parallel_for(8, t2i_head_task, &hj);
    lin(&a->o8, a->o_p, a->o_b, w->ctx, nq, out);
}

static void up_task(void *ctx, int c, int tid) {
    const decode_job *j = ctx;
    if (j->hp) upscale_chunk_i8(j->d, j->keys, j->kc, j->hp, c, &j->up[tid], j->lr);
    else upscale_chunk(j->d, j->keys, j->hblk, c, &j->up[tid], j->lr);
}

/* ref: transformer.py (TwoWayTransformer, TwoWayAttentionBlock), mask_decoder.py
 * (predict_masks) */
static void decode_one(const decode_job *j, int s, workspace *w, const up_scratch *up) {
    const ts_prompt_encoder *pe = j->pe;
    const ts_mask_decoder *d = j->d;
    const ts_prompt_set *set = &j->sets[s];
    const float *pos = pe->dense_pe_tok;
    /* tokens: iou token, 4 mask tokens, sparse prompt embeddings */
    int k;
    memcpy(w->T, d->iou_token, 256 * sizeof(float));
    memcpy(w->T + 256, d->mask_tokens, 4 * 256 * sizeof(float));
    ts_prompt_sparse(pe, set, w->T + 5 * 256, &k);
    int nq = 5 + k, fold = nq <= j->fold_max;
    size_t tq = (size_t)nq * 256, ti = (size_t)N_IMG * 256;
    const float *keys = j->sh->src0, *kpe = j->sh->kpe0;
    int proj0 = j->use_proj && !set->mask_input && fold;
    if (set->mask_input) {
        ts_prompt_dense_ws(pe, set->mask_input, w->mask_chw, w->mask_scratch);
        transpose(w->mask_chw, 256, N_IMG, w->img);
        add(j->sh->emb_tok, w->img, w->keys, ti);
        add(w->keys, pos, w->kpe, ti);
        keys = w->keys;
        kpe = w->kpe;
    }
    float *queries = w->q, *qpe = w->t1, *tmp = w->t2;
    const ts_up_i8 *qi = fold ? d->up_i8 : NULL; /* int8 cross attentions */
    int codes_ready = 0; /* w->kq, kc, kTq hold the codes of this layer's kpe and keys */
    w->kpe_stale = 0;
    for (int L = 0; L < 2; L++) {
        const ts_twoway_layer *l = &d->layer[L];
        int shared = L == 0 && proj0;
        if (fold && ts_decoder_probe) {
            ts_decoder_probe(ts_decoder_probe_ctx, TS_DEC_SITE_KPE0 + L, kpe, N_IMG, 256, 0);
            ts_decoder_probe(ts_decoder_probe_ctx, TS_DEC_SITE_KEYS0 + L, keys, N_IMG, 256, 0);
        }
        if (qi && !shared && !codes_ready)
            ts_quantize_u8(kpe, N_IMG, 256, 256, qi->kpe_step[L], qi->kpe_zp[L], w->kq, 256);
        if (L == 0) { /* the first self-attention replaces the queries: no residual, no PE */
            attention(&l->self_attn, w->T, nq, w->T, w->T, nq, NULL, NULL, queries, w);
        } else {
            add(queries, w->T, qpe, tq);
            attention(&l->self_attn, qpe, nq, qpe, queries, nq, NULL, NULL, tmp, w);
            add(queries, tmp, queries, tq);
        }
        ts_layernorm(queries, nq, 256, l->n1_w, l->n1_b, 1e-5f);
        add(queries, w->T, qpe, tq);
        if (shared && qi && j->sh->has_i8)
            t2i_shared_i8(&l->t2i, qpe, nq, j->sh, tmp, w);
        else if (shared)
            attention(&l->t2i, qpe, nq, NULL, NULL, N_IMG, j->sh->k_t2i, j->sh->v_t2i, tmp, w);
        else if (qi)
            t2i_folded_i8(&l->t2i, qpe, nq, kpe, w->kq, qi->kpe_step[L], qi->kpe_zp[L], keys,
                          qi->keys_step[L], qi->keys_zp[L], codes_ready, tmp, w);
        else if (fold)
            t2i_folded(&l->t2i, qpe, nq, kpe, keys, tmp, w);
        else
            attention(&l->t2i, qpe, nq, kpe, keys, N_IMG, NULL, NULL, tmp, w);
        add(queries, tmp, queries, tq);
        ts_layernorm(queries, nq, 256, l->n2_w, l->n2_b, 1e-5f);
        lin(&l->l1_8, l->l1_p, l->l1_b, queries, nq, w->mlp); /* MLP with ReLU */
        ts_relu(w->mlp, (size_t)nq * 2048);
        lin(&l->l2_8, l->l2_p, l->l2_b, w->mlp, nq, tmp);
        add(queries, tmp, queries, tq);
        ts_layernorm(queries, nq, 256, l->n3_w, l->n3_b, 1e-5f);
        add(queries, w->T, qpe, tq); /* image -> token: the image tokens are the queries */
        /* int8: LayerNorm, + PE and the next layer's codes in one pass (kpe itself only for
         * the calibration probe; else made if a fallback needs it) */
        img_codes_job cj = {.keys = w->keys, .kpe = ts_decoder_probe ? w->kpe : NULL,
                            .pos = pos, .ln_w = l->n4_w, .ln_b = l->n4_b, .kq = w->kq,
                            .kc = w->kc, .kTq = w->kTq};
        if (qi) {
            cj.kq_step = qi->kpe_step[L + 1];
            cj.kq_zp = qi->kpe_zp[L + 1];
            cj.kc_step = qi->keys_step[L + 1];
            cj.kc_zp = qi->keys_zp[L + 1];
        }
        img_codes_bands_reset(&cj);
        int rows_done = 0;
        if (fold) { /* keys += attention, accumulated by the output GEMM */
            if (keys != w->keys && !qi) copy(keys, w->keys, ti);
            if (qi) /* the int8 output GEMM adds the residual from where the keys are, and
                     * makes the next layer's codes row by row (LayerNorm, + PE, codes) */
                rows_done = i2t_folded_i8(&l->i2t, kpe, w->kq, qi->kpe_step[L], qi->kpe_zp[L],
                                          shared ? j->sh->q_i2t : NULL,
                                          shared && j->sh->has_i8 ? j->sh->qq : NULL,
                                          j->sh->q_step, qpe, queries, nq,
                                          keys != w->keys ? keys : NULL, w->keys, &cj, w);
            else
                i2t_folded(&l->i2t, kpe, shared ? j->sh->q_i2t : NULL, qpe, queries, nq, w->keys,
                           1.0f, w);
        } else {
            attention(&l->i2t, kpe, N_IMG, qpe, queries, nq, NULL, NULL, w->img, w);
            add(keys, w->img, w->keys, ti);
        }
        if (qi && fold) { /* the codes pass, unless the output GEMM's rows made it */
            if (!rows_done) img_codes(&cj);
            codes_ready = 1;
            w->kpe_stale = !cj.kpe;
            w->kpe_keys = w->keys;
            w->kpe_pos = pos;
        } else {
            ts_layernorm(w->keys, N_IMG, 256, l->n4_w, l->n4_b, 1e-5f);
            add(w->keys, pos, w->kpe, ti);
        }
        keys = w->keys;
        kpe = w->kpe;
    }
    add(queries, w->T, qpe, tq);
    if (fold && ts_decoder_probe)
        ts_decoder_probe(ts_decoder_probe_ctx, TS_DEC_SITE_KPE0 + 2, kpe, N_IMG, 256, 0);
    if (qi) { /* kq, kc, kTq: made with the last LayerNorm */
        t2i_folded_i8(&d->final_attn, qpe, nq, kpe, w->kq, qi->kpe_step[2], qi->kpe_zp[2], keys,
                      qi->keys_step[2], qi->keys_zp[2], 1, tmp, w);
    } else if (fold) t2i_folded(&d->final_attn, qpe, nq, kpe, keys, tmp, w);
    else attention(&d->final_attn, qpe, nq, kpe, keys, N_IMG, NULL, NULL, tmp, w);
    add(queries, tmp, queries, tq);
    ts_layernorm(queries, nq, 256, d->nf_w, d->nf_b, 1e-5f);
    if (j->tokens) memcpy(j->tokens + (size_t)s * 5 * 256, queries, 5 * 256 * sizeof(float));

    /* hypernetworks: one 32-vector per mask token, laid out block-diagonally */
    for (int t = 0; t < 4; t++) {
        const float *const *h = d->hyper[t];
        lin(&d->hyper_8[t][0], d->hyper_p[t][0], h[1], queries + (size_t)(1 + t) * 256, 1, w->h1);
        ts_relu(w->h1, 256);
        lin(&d->hyper_8[t][1], d->hyper_p[t][1], h[3], w->h1, 1, w->h2);
        ts_relu(w->h2, 256);
        lin(&d->hyper_8[t][2], d->hyper_p[t][2], h[5], w->h2, 1, w->hyper + t * 32);
    }
    memset(w->hblk, 0, sizeof w->hblk);
    for (int ab = 0; ab < 4; ab++)
        for (int o = 0; o < 32; o++)
            for (int t = 0; t < 4; t++)
                w->hblk[(ab * 32 + o) * 16 + ab * 4 + t] = w->hyper[t * 32 + o];
    /* IoU head on the IoU token (raw outputs, no sigmoid) */
    const float *const *ih = d->iou_head;
    lin(&d->iou_8[0], d->iou_p[0], ih[1], queries, 1, w->h1);
    ts_relu(w->h1, 256);
    lin(&d->iou_8[1], d->iou_p[1], ih[3], w->h1, 1, w->h2);
    ts_relu(w->h2, 256);
    lin(&d->iou_8[2], d->iou_p[2], ih[5], w->h2, 1, j->iou + (size_t)s * 4);

    float *lr = j->low_res + (size_t)s * 4 * 65536;
    ts_i8pack *hp = NULL;
    if (d->up_i8) { /* the mask product's weight: hblk^T (16 x 128), per-column scales */
        float ht[16 * 128];
        for (int k2 = 0; k2 < 128; k2++)
            for (int c = 0; c < 16; c++) ht[c * 128 + k2] = w->hblk[k2 * 16 + c];
        hp = ts_i8pack_new_f32(ht, 16, 128, 128);
        if (!hp) { /* out of memory: fail soft to zero logits rather than crash */
            memset(lr, 0, sizeof(float) * 4 * 65536);
            return;
        }
    }
    if (j->par_up) {
        decode_job uj = *j;
        uj.keys = keys;
        uj.hblk = w->hblk;
        uj.hp = hp;
        uj.kc = qi ? w->kc : NULL;
        uj.lr = lr;
        ts_parallel_for(N_CHUNK, up_task, &uj);
    } else if (hp) {
        for (int c = 0; c < N_CHUNK; c++) upscale_chunk_i8(d, keys, qi ? w->kc : NULL, hp, c, up, lr);
    } else {
        for (int c = 0; c < N_CHUNK; c++) upscale_chunk(d, keys, w->hblk, c, up, lr);
    }
    ts_i8pack_free(hp);
}

static void decode_task(void *ctx, int s, int tid) {
    const decode_job *j = ctx;
    int *slot = &j->slot_of_tid[tid]; /* only this thread touches its entry */
    if (*slot < 0) *slot = atomic_fetch_add(j->next_slot, 1);
    decode_one(j, s, &j->ws[*slot], &j->up[*slot]);
}

/* Everything one call needs besides the weights: the shared image-side tensors, one
 * workspace per worker and one upscaling scratch per pool thread. Kept on the decoder
 * between calls (one context), so repeated calls neither allocate nor fault in fresh
 * pages. */
struct ts_decode_ctx {
    int nt, n_up, max_tokens, direct;
    int touched; /* its scratch faulted in (ts_sam_decode_prepare) */
    workspace *ws;
    up_scratch *up;
    int *slot_of_tid; /* n_up (pool size) entries */
    shared_img sh;
};

static void ctx_free(ts_decode_ctx *c) {
    if (!c) return;
    for (int t = 0; c->ws && t < c->nt; t++) ws_free(&c->ws[t]);
    for (int t = 0; c->up && t < c->n_up; t++) {
        ts_free_aligned(c->up[t].g1);
        ts_free_aligned(c->up[t].g2);
        ts_free_aligned(c->up[t].m);
        ts_free_aligned(c->up[t].q);
    }
    free(c->ws);
    free(c->up);
    free(c->slot_of_tid);
    shared_i8_free(&c->sh);
    float *sh[] = {c->sh.emb_tok, c->sh.src0, c->sh.kpe0, c->sh.k_t2i, c->sh.v_t2i, c->sh.q_i2t};
    ts_free_aligned(c->sh.qq);
    for (size_t i = 0; i < sizeof sh / sizeof sh[0]; i++) ts_free_aligned(sh[i]);
    free(c);
}

static ts_decode_ctx *ctx_new(int nt, int n_up, int max_tokens, int direct) {
    ts_decode_ctx *c = ts_calloc(1, sizeof *c);
    if (!c) return NULL;
    c->max_tokens = max_tokens;
    c->direct = direct;
    c->ws = ts_calloc((size_t)nt, sizeof *c->ws);
    c->up = ts_calloc((size_t)n_up, sizeof *c->up);
    c->slot_of_tid = ts_calloc((size_t)n_up, sizeof *c->slot_of_tid);
    if (!c->ws || !c->up || !c->slot_of_tid) {
        ctx_free(c);
        return NULL;
    }
    for (; c->nt < nt; c->nt++)
        if (ws_alloc(&c->ws[c->nt], max_tokens, direct)) {
            ctx_free(c);
            return NULL;
        }
    int ok = 1;
    for (; c->n_up < n_up; c->n_up++) {
        up_scratch *u = &c->up[c->n_up];
        ok &= (u->g1 = ts_malloc_aligned(sizeof(float) * UP_TOK * 256)) != NULL;
        ok &= (u->g2 = ts_malloc_aligned(sizeof(float) * UP_TOK * 4 * 128)) != NULL;
        ok &= (u->m = ts_malloc_aligned(sizeof(float) * UP_TOK * 4 * 16)) != NULL;
        ok &= (u->q = ts_malloc_aligned((size_t)UP_TOK * 4 * 128)) != NULL;
    }
    size_t img = (size_t)N_IMG * 256, half = (size_t)N_IMG * 128;
    ok &= (c->sh.emb_tok = ts_malloc_aligned(sizeof(float) * img)) != NULL;
    ok &= (c->sh.src0 = ts_malloc_aligned(sizeof(float) * img)) != NULL;
    ok &= (c->sh.kpe0 = ts_malloc_aligned(sizeof(float) * img)) != NULL;
    ok &= (c->sh.k_t2i = ts_malloc_aligned(sizeof(float) * half)) != NULL;
    ok &= (c->sh.v_t2i = ts_malloc_aligned(sizeof(float) * half)) != NULL;
    ok &= (c->sh.q_i2t = ts_malloc_aligned(sizeof(float) * half)) != NULL;
    ok &= (c->sh.qq = ts_malloc_aligned(half)) != NULL;
    if (!ok) {
        ctx_free(c);
        return NULL;
    }
    return c;
}

/* The context of a one-prompt call, made at load. Not faulted in ahead: a helper thread
 * doing it collided with the encoder's page faults on a busy VM and cost more than it saved;
 * untouched, it costs no memory in a process that never decodes. */
void ts_mask_decoder_prepare(ts_mask_decoder *d) {
    if (d && !d->ctx_cache)
        d->ctx_cache = ctx_new(1, ts_num_threads(), 8, 8 > ts_mask_decoder_fold_max);
}

/* Takes the cached context when it is big enough, else makes one. */
static int ctx_smaller(const ts_decode_ctx *c, int nt, int n_up, int max_tokens, int direct) {
    return c->nt < nt || c->n_up < n_up || c->max_tokens < max_tokens || c->direct < direct;
}

static ts_decode_ctx *ctx_get(ts_mask_decoder *d, int nt, int n_up, int max_tokens,
                              int direct) {
    pthread_mutex_lock(&d->ctx_lock);
    ts_decode_ctx *c = d->ctx_cache;
    d->ctx_cache = NULL;
    pthread_mutex_unlock(&d->ctx_lock);
    if (c && ctx_smaller(c, nt, n_up, max_tokens, direct)) {
        /* a bigger one, keeping the image side (a prepared embedding) */
        ts_decode_ctx *b = ctx_new(TS_MAX(nt, c->nt), TS_MAX(n_up, c->n_up),
                                   TS_MAX(max_tokens, c->max_tokens), TS_MAX(direct, c->direct));
        if (b) {
            shared_img t = b->sh;
            b->sh = c->sh;
            c->sh = t;
        }
        ctx_free(c);
        return b;
    }
    return c ? c : ctx_new(nt, n_up, max_tokens, direct);
}

static void ctx_put(ts_mask_decoder *d, ts_decode_ctx *c) {
    pthread_mutex_lock(&d->ctx_lock);
    ts_decode_ctx *old = d->ctx_cache;
    if (!old || ctx_smaller(old, c->nt, c->n_up, c->max_tokens, c->direct)) {
        d->ctx_cache = c; /* keep the bigger */
        c = old;
    }
    pthread_mutex_unlock(&d->ctx_lock);
    ctx_free(c);
}

/* Brings c's image side up to this embedding: the token-major copy, layer 0's keys and keys +
 * PE (sets without a mask input), and with proj their layer-0 projections (and their int8
 * operands). Every set that can (no mask input, folded) takes layer 0 from the shared
 * projections, a lone set too: a set's values then do not depend on the sets beside it (a
 * batch equals separate calls bit for bit), and a cached embedding prompted again, or one
 * prepared by ts_sam_decode_prepare, reuses them. */
static void shared_update(shared_img *sh, const ts_prompt_encoder *pe, const ts_mask_decoder *d,
                          const float *embedding, int proj, workspace *scratch) {
    if (!shared_is_current(sh, pe, d, embedding)) {
        sh->img_valid = sh->proj_valid = 0;
        shared_i8_free(sh);
        transpose(embedding, 256, N_IMG, sh->emb_tok);
        shared_job sj = {pe, sh};
        ts_parallel_for(PAR_TASKS, shared_task, &sj);
        sh->pe = pe;
        sh->gen = d->gen;
        sh->isa = ts_nn_isa_name();
        sh->isa_i8 = ts_gemm_i8_isa_name();
        memcpy(sh->no_mask, pe->no_mask, sizeof sh->no_mask);
        sh->img_valid = 1;
    }
    if (proj && !sh->proj_valid) {
        const ts_twoway_layer *l0 = &d->layer[0];
        /* an int8 model keeps K and V as int8 packs only: the float ones go to the workspace
         * (free here), and to sh only when the packs cannot be made (then layer 0 runs in
         * float): fewer fresh pages for the first decode's preparation */
        size_t half = (size_t)N_IMG * 128;
        float *k = d->up_i8 ? scratch->keys : sh->k_t2i, *v = d->up_i8 ? scratch->kpe : sh->v_t2i;
        linear(sh->kpe0, N_IMG, l0->t2i.k_p, l0->t2i.k_b, k);
        linear(sh->src0, N_IMG, l0->t2i.v_p, l0->t2i.v_b, v);
        linear(sh->kpe0, N_IMG, l0->i2t.q_p, l0->i2t.q_b, sh->q_i2t);
        if (d->up_i8) {
            shared_i8_make(sh, k, v, scratch->img);
            if (!sh->has_i8) {
                memcpy(sh->k_t2i, k, sizeof(float) * half);
                memcpy(sh->v_t2i, v, sizeof(float) * half);
            }
        }
        sh->proj_valid = 1;
        atomic_fetch_add(&((ts_mask_decoder *)d)->image_sides, 1);
    }
}

typedef struct {
    void *p[32];
    size_t n[32];
    int count;
} touch_job;

static void touch_task(void *ctx, int t, int tid) {
    (void)tid;
    const touch_job *j = ctx;
    ts_mem_populate(j->p[t], j->n[t]);
}

/* The scratch a point or box prompt uses (not a mask input's, nor the unfolded attentions'
 * beyond what the folded path writes): scratch, so its contents do not matter. */
static void touch_list(touch_job *jp, ts_decode_ctx *c, const ts_mask_decoder *d) {
    touch_job j = {.count = 0};
#define T(ptr, bytes) (j.p[j.count] = (ptr), j.n[j.count++] = (bytes))
    size_t img = (size_t)N_IMG * 256, t = (size_t)c->max_tokens;
    for (int k = 0; k < c->nt && j.count + 11 <= 32; k++) {
        workspace *w = &c->ws[k];
        T(w->keys, 4 * img);
        T(w->kpe, 4 * img);
        T(w->img, 4 * (size_t)N_IMG * 8 * FOLD_MAX);
        T(w->S, 4 * 8 * t * N_IMG);
        T(w->mlp, 4 * t * 2048);
        T(w->f1, 4 * 8 * FOLD_MAX * 256);
        T(w->f2, 4 * 8 * FOLD_MAX * 256);
        if (d->up_i8) {
            T(w->kq, img);
            T(w->kTq, img);
            T(w->kc, img);
            T(w->pq, (size_t)8 * FOLD_MAX * N_IMG);
        }
    }
    for (int k = 0; k < c->n_up && j.count + 3 <= 32; k++) {
        T(c->up[k].g1, 4 * UP_TOK * 256);
        if (d->up_i8) T(c->up[k].q, UP_TOK * 4 * 128); /* its codes instead of g2 */
        else T(c->up[k].g2, 4 * UP_TOK * 4 * 128);
    }
#undef T
    *jp = j;
}

/* Faults that scratch in, spread over the pool. */
static void ctx_touch(ts_decode_ctx *c, const ts_mask_decoder *d) {
    touch_job j;
    touch_list(&j, c, d);
    ts_parallel_for(j.count, touch_task, &j);
}

#define WARM_CHUNK ((size_t)1 << 20) /* bytes populated between looks at *stop */

int ts_sam_decode_warm(const ts_mask_decoder *dc, const atomic_int *stop) {
    ts_mask_decoder *d = (ts_mask_decoder *)dc; /* only the context cache is written */
    pthread_mutex_lock(&d->ctx_lock);
    ts_decode_ctx *c = d->ctx_cache; /* the load's context, or none: nothing to warm */
    d->ctx_cache = NULL;
    pthread_mutex_unlock(&d->ctx_lock);
    if (!c) return 0;
    int done = c->touched;
    if (!done) {
        touch_job j;
        touch_list(&j, c, d);
        done = 1;
        for (int t = 0; t < j.count && done; t++)
            for (size_t o = 0; o < j.n[t]; o += WARM_CHUNK) {
                if (atomic_load(stop)) {
                    done = 0; /* the rest at the first prepare, as without warming */
                    break;
                }
                ts_mem_populate((char *)j.p[t] + o, TS_MIN(WARM_CHUNK, j.n[t] - o));
            }
        c->touched = done;
    }
    ctx_put(d, c);
    return done;
}

int ts_sam_decode_prepare(const ts_prompt_encoder *pe, const ts_mask_decoder *dc,
                          const float *embedding) {
    ts_mask_decoder *d = (ts_mask_decoder *)dc; /* only the context cache is written */
    ts_decode_ctx *c = ctx_get(d, 1, ts_num_threads(), 8, 8 > ts_mask_decoder_fold_max);
    if (!c) return ts_error(TINYSAM_E_NOMEM, "out of memory in the mask decoder");
    if (!c->touched) ctx_touch(c, d);
    c->touched = 1;
    /* the projections serve point and box prompts: 7 tokens and more */
    shared_update(&c->sh, pe, d, embedding, ts_mask_decoder_fold_max >= 7, &c->ws[0]);
    ctx_put(d, c);
    return 0;
}

int ts_sam_decode(const ts_prompt_encoder *pe, const ts_mask_decoder *dc, const float *embedding,
                  int n, const ts_prompt_set *sets, float *low_res, float *iou) {
    return ts_sam_decode_tokens(pe, dc, embedding, n, sets, low_res, iou, NULL);
}

int ts_sam_decode_tokens(const ts_prompt_encoder *pe, const ts_mask_decoder *dc,
                         const float *embedding, int n, const ts_prompt_set *sets, float *low_res,
                         float *iou, float *tokens) {
    if (n <= 0) return 0;
    ts_mask_decoder *d = (ts_mask_decoder *)dc; /* only the context cache is written */
    int max_tokens = 8, n_plain = 0; /* room for a few points, so that the cache is reused */
    int fold_max = ts_mask_decoder_fold_max;
    for (int s = 0; s < n; s++) {
        const ts_prompt_set *p = &sets[s];
        if (p->n_points < 0 || p->n_points > TINYSAM_MAX_POINTS)
            return ts_error(TINYSAM_E_ARG, "prompt set %d: %d points (at most %d)", s,
                            p->n_points, TINYSAM_MAX_POINTS);
        int k = 5 + p->n_points + (p->has_box ? 2 : p->n_points > 0);
        if (k > max_tokens) max_tokens = k;
        n_plain += !p->mask_input && k <= fold_max;
    }
    if (fold_max > FOLD_MAX) fold_max = FOLD_MAX; /* the folded scratch is sized for this */
    int threads = ts_num_threads();
    /* workspaces: one per set running at once; upscaling scratch: one per pool thread */
    int nt = n > 1 ? TS_MIN(threads, n) : 1, n_up = threads;
    ts_decode_ctx *c = ctx_get(d, nt, n_up, max_tokens, max_tokens > fold_max);
    if (!c) return ts_error(TINYSAM_E_NOMEM, "out of memory in the mask decoder");
    int use_proj = n_plain >= 1;
    shared_img *sh = &c->sh;
    shared_update(sh, pe, d, embedding, use_proj, &c->ws[0]);
    atomic_int next_slot = 0;
    decode_job j = {.pe = pe, .d = d, .sets = sets, .sh = sh, .use_proj = use_proj,
                    .fold_max = fold_max, .ws = c->ws, .up = c->up, .slot_of_tid = c->slot_of_tid,
                    .next_slot = &next_slot, .par_up = n == 1 && threads > 1,
                    .low_res = low_res, .iou = iou, .tokens = tokens};
    for (int t = 0; t < threads; t++) c->slot_of_tid[t] = -1;
    if (n == 1)
        decode_one(&j, 0, &c->ws[0], &c->up[0]);
    else
        ts_parallel_for(n, decode_task, &j);
    ctx_put(d, c);
    return 0;
}

void ts_mask_decoder_free(ts_mask_decoder *d) {
    if (!d) return;
    ctx_free(d->ctx_cache);
    pthread_mutex_destroy(&d->ctx_lock);
    ts_free_aligned(d->up0_w);
    ts_free_aligned(d->up3_w);
    if (d->up_i8) {
        ts_i8pack_free(d->up_i8->up0);
        ts_i8pack_free(d->up_i8->up3);
        free(d->up_i8);
    }
    for (int L = 0; L < 2; L++) {
        ts_twoway_layer *l = &d->layer[L];
        free_attn_packs(&l->self_attn);
        free_attn_packs(&l->t2i);
        free_attn_packs(&l->i2t);
        free_attn_i8(&l->self_attn);
        free_attn_i8(&l->t2i);
        free_attn_i8(&l->i2t);
        ts_wpack_free(l->l1_p);
        ts_wpack_free(l->l2_p);
        ts_i8pack_free(l->l1_8.p);
        ts_i8pack_free(l->l2_8.p);
    }
    free_attn_packs(&d->final_attn);
    free_attn_i8(&d->final_attn);
    for (int k = 0; k < 3; k++) {
        for (int t = 0; t < 4; t++) ts_i8pack_free(d->hyper_8[t][k].p);
        ts_i8pack_free(d->iou_8[k].p);
    }
    for (int k = 0; k < 3; k++) {
        for (int t = 0; t < 4; t++) ts_wpack_free(d->hyper_p[t][k]);
        ts_wpack_free(d->iou_p[k]);
    }
    free(d);
}
