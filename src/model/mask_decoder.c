/* mask_decoder.c - SAM's mask decoder with its two-way transformer (spec TINYSAM.md 5.4).
 * ref: tinysam/modeling/mask_decoder.py, transformer.py
 * Activations are token-major (rows = tokens or pixels, columns = channels) so that every
 * projection is one GEMM. Prompt sets are independent: several run in parallel, one per
 * worker, each with its own workspace. */
#include "core.h"
#include "model/sam_decoder.h"
#include "model/sam_decoder_internal.h"
#include "nn/nn.h"
#include "threads.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define N_IMG 4096 /* 64 x 64 image tokens */

/* ------------------------------------------------------------------ loading */

static int take_attn(ts_tensor_map *m, const char *p, int dim, ts_attn_w *a) {
    char n[256];
    a->dim = dim;
#define T(field, suffix, ...)                                                                      \
    snprintf(n, sizeof n, "%s.%s", p, suffix);                                                  \
    if (!(a->field = ts_map_take(m, n, __VA_ARGS__))) return TINYSAM_E_FORMAT;
    T(q_w, "q_proj.weight", 2, dim, 256) T(q_b, "q_proj.bias", 1, dim)
    T(k_w, "k_proj.weight", 2, dim, 256) T(k_b, "k_proj.bias", 1, dim)
    T(v_w, "v_proj.weight", 2, dim, 256) T(v_b, "v_proj.bias", 1, dim)
    T(o_w, "out_proj.weight", 2, 256, dim) T(o_b, "out_proj.bias", 1, 256)
#undef T
    return 0;
}

static const float *take_ln(ts_tensor_map *m, const char *p, const char *which, int c) {
    char n[256];
    snprintf(n, sizeof n, "%s.%s", p, which);
    return ts_map_take(m, n, 1, c);
}

/* ConvTranspose2d(k2, s2) weight [in][out][2][2] -> GEMM operand [in][(a*2+b)*out + o]. */
static float *pack_convt(const float *w, int in, int out) {
    float *p = ts_malloc_aligned(sizeof(float) * (size_t)in * out * 4);
    if (!p) return NULL;
    for (int c = 0; c < in; c++)
        for (int o = 0; o < out; o++)
            for (int ab = 0; ab < 4; ab++)
                p[(size_t)c * out * 4 + ab * out + o] = w[((size_t)c * out + o) * 4 + ab];
    return p;
}

int ts_mask_decoder_load(ts_tensor_map *m, ts_mask_decoder **out) {
    *out = NULL;
    ts_mask_decoder *d = ts_calloc(1, sizeof *d);
    if (!d) return TINYSAM_E_NOMEM;
    pthread_mutex_init(&d->ctx_lock, NULL);
    char p[64], n[256];
    int rc = TINYSAM_E_FORMAT;
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
        if (!(l->l1_w = ts_map_take(m, n, 2, 2048, 256))) goto fail;
        snprintf(n, sizeof n, "%s.mlp.lin1.bias", p);
        if (!(l->l1_b = ts_map_take(m, n, 1, 2048))) goto fail;
        snprintf(n, sizeof n, "%s.mlp.lin2.weight", p);
        if (!(l->l2_w = ts_map_take(m, n, 2, 256, 2048))) goto fail;
        snprintf(n, sizeof n, "%s.mlp.lin2.bias", p);
        if (!(l->l2_b = ts_map_take(m, n, 1, 256))) goto fail;
    }
    if (take_attn(m, "mask_decoder.transformer.final_attn_token_to_image", 128, &d->final_attn))
        goto fail;
    if (!(d->nf_w = take_ln(m, "mask_decoder.transformer.norm_final_attn", "weight", 256)) ||
        !(d->nf_b = take_ln(m, "mask_decoder.transformer.norm_final_attn", "bias", 256)) ||
        !(d->iou_token = ts_map_take(m, "mask_decoder.iou_token.weight", 2, 1, 256)) ||
        !(d->mask_tokens = ts_map_take(m, "mask_decoder.mask_tokens.weight", 2, 4, 256)))
        goto fail;
    const float *u0 = ts_map_take(m, "mask_decoder.output_upscaling.0.weight", 4, 256, 64, 2, 2);
    const float *u3 = ts_map_take(m, "mask_decoder.output_upscaling.3.weight", 4, 64, 32, 2, 2);
    d->up0_b = ts_map_take(m, "mask_decoder.output_upscaling.0.bias", 1, 64);
    d->upn_w = ts_map_take(m, "mask_decoder.output_upscaling.1.weight", 1, 64);
    d->upn_b = ts_map_take(m, "mask_decoder.output_upscaling.1.bias", 1, 64);
    d->up3_b = ts_map_take(m, "mask_decoder.output_upscaling.3.bias", 1, 32);
    if (!u0 || !u3 || !d->up0_b || !d->upn_w || !d->upn_b || !d->up3_b) goto fail;
    for (int t = 0; t < 4; t++)
        for (int k = 0; k < 3; k++) {
            int o = k == 2 ? 32 : 256;
            snprintf(n, sizeof n, "mask_decoder.output_hypernetworks_mlps.%d.layers.%d.weight", t,
                     k);
            if (!(d->hyper[t][2 * k] = ts_map_take(m, n, 2, o, 256))) goto fail;
            snprintf(n, sizeof n, "mask_decoder.output_hypernetworks_mlps.%d.layers.%d.bias", t, k);
            if (!(d->hyper[t][2 * k + 1] = ts_map_take(m, n, 1, o))) goto fail;
        }
    for (int k = 0; k < 3; k++) {
        int o = k == 2 ? 4 : 256;
        snprintf(n, sizeof n, "mask_decoder.iou_prediction_head.layers.%d.weight", k);
        if (!(d->iou_head[2 * k] = ts_map_take(m, n, 2, o, 256))) goto fail;
        snprintf(n, sizeof n, "mask_decoder.iou_prediction_head.layers.%d.bias", k);
        if (!(d->iou_head[2 * k + 1] = ts_map_take(m, n, 1, o))) goto fail;
    }
    rc = TINYSAM_E_NOMEM;
    if (!(d->up0_w = pack_convt(u0, 256, 64)) || !(d->up3_w = pack_convt(u3, 64, 32))) goto fail;
    for (int ab = 0; ab < 4; ab++) {
        memcpy(d->up0_bias + ab * 64, d->up0_b, 64 * sizeof(float));
        memcpy(d->up3_bias + ab * 32, d->up3_b, 32 * sizeof(float));
    }
    *out = d;
    return 0;
fail:
    ts_mask_decoder_free(d);
    return rc;
}


/* ------------------------------------------------------------------ forward */

typedef struct {
    int max_tokens;
    float *T, *q, *qpe, *keys, *kpe;      /* tokens; image tokens 4096 x 256 */
    float *pa, *pb, *pc, *ctx, *scores;   /* projections, attention context, scores */
    float *st;                            /* transposed scores (keys x queries) */
    float *tmp;                           /* tokens x 2048 (MLP), or 4096 x 256 */
    float *up1, *up2, *big;               /* upscaling; up2: per-sub-pixel mask logits */
    float *dense;                         /* 256 x 4096 for a mask input */
    float hyper[4 * 32], h1[256], h2[256];
    float hbd[128 * 16]; /* hypernetwork outputs, block-diagonal per sub-pixel */
} workspace;

static void ws_free(workspace *w) {
    float *all[] = {w->T, w->q, w->qpe, w->keys, w->kpe, w->pa, w->pb, w->pc, w->ctx, w->scores,
                    w->tmp, w->up1, w->up2, w->big, w->dense, w->st};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) ts_free_aligned(all[i]);
}

static int ws_alloc(workspace *w, int max_tokens) {
    memset(w, 0, sizeof *w);
    w->max_tokens = max_tokens;
    size_t t = (size_t)max_tokens, img = (size_t)N_IMG * 256;
    size_t rows = t > N_IMG ? t : N_IMG;
#define A(field, n) ok &= (w->field = ts_malloc_aligned(sizeof(float) * (n))) != NULL;
    int ok = 1;
    A(T, t * 256) A(q, t * 256) A(qpe, t * 256) A(keys, img) A(kpe, img)
    A(pa, rows * 256) A(pb, rows * 256) A(pc, rows * 256) A(ctx, rows * 256)
    A(scores, t * N_IMG) A(st, t * N_IMG) A(tmp, (t * 2048 > img ? t * 2048 : img))
    A(up1, 128 * 128 * 64) A(up2, 128 * 128 * 16) A(big, 128 * 128 * 128) A(dense, img)
#undef A
    if (!ok) {
        ws_free(w);
        return ts_error(TINYSAM_E_NOMEM, "out of memory for the mask decoder");
    }
    return 0;
}

static void add(const float *a, const float *b, float *out, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

/* Attention(q_in, k_in, v_in) -> out (nq x 256). Projections of k/v (nk x dim) may be given
 * precomputed (kp, vp), likewise the q projection (qp). */
static void attention(const ts_attn_w *a, const float *q_in, int nq, const float *k_in,
                      const float *v_in, int nk, const float *qp, const float *kp,
                      const float *vp, float *out, workspace *w) {
    int D = a->dim, dh = D / 8;
    float *Q = w->pa, *K = w->pb, *V = w->pc;
    if (qp) Q = (float *)qp;
    else ts_linear(q_in, nq, 256, a->q_w, a->q_b, D, Q);
    if (kp) K = (float *)kp;
    else ts_linear(k_in, nk, 256, a->k_w, a->k_b, D, K);
    if (vp) V = (float *)vp;
    else ts_linear(v_in, nk, 256, a->v_w, a->v_b, D, V);
    const float scale = sqrtf((float)dh); /* true division, as attn / math.sqrt(c_per_head) */
    for (int h = 0; h < 8; h++) {
        if (nq < nk) { /* few queries, many keys: S^T = K Q^T packs only the small Q */
            ts_gemm(nk, nq, dh, K + h * dh, D, Q + h * dh, D, 1, w->st, nq, 0.0f);
            for (int i = 0; i < nq; i++)
                for (int jk = 0; jk < nk; jk++)
                    w->scores[(size_t)i * nk + jk] = w->st[(size_t)jk * nq + i];
        } else {
            ts_gemm(nq, nk, dh, Q + h * dh, D, K + h * dh, D, 1, w->scores, nk, 0.0f);
        }
        size_t ns = (size_t)nq * nk;
        for (size_t i = 0; i < ns; i++) w->scores[i] /= scale;
        ts_softmax_rows(w->scores, nq, nk);
        ts_gemm(nq, dh, nk, w->scores, nk, V + h * dh, D, 0, w->ctx + h * dh, D, 0.0f);
    }
    ts_linear(w->ctx, nq, D, a->o_w, a->o_b, 256, out);
}

/* Image-side tensors shared by every set without a mask input (layer 0 only). */
typedef struct {
    const float *emb_tok; /* 4096 x 256: the embedding, token-major */
    float *src0;          /* embedding + no_mask_embed */
    float *k_t2i, *v_t2i, *q_i2t; /* layer-0 projections of src0 (+ PE) */
} shared_img;

typedef struct {
    const ts_prompt_encoder *pe;
    const ts_mask_decoder *d;
    const ts_prompt_set *sets;
    shared_img *sh;
    workspace *ws;
    float *low_res, *iou;
    int *rc;
} decode_job;

static void decode_one(const decode_job *j, int s, workspace *w) {
    const ts_prompt_encoder *pe = j->pe;
    const ts_mask_decoder *d = j->d;
    const ts_prompt_set *set = &j->sets[s];
    const float *pos = pe->dense_pe_tok;
    /* tokens: iou token, 4 mask tokens, sparse prompt embeddings */
    int k;
    memcpy(w->T, d->iou_token, 256 * sizeof(float));
    memcpy(w->T + 256, d->mask_tokens, 4 * 256 * sizeof(float));
    ts_prompt_sparse(pe, set, w->T + 5 * 256, &k);
    int nq = 5 + k;
    size_t tq = (size_t)nq * 256, ti = (size_t)N_IMG * 256;
    int shared = set->mask_input == NULL;
    if (shared) {
        memcpy(w->keys, j->sh->src0, ti * sizeof(float));
    } else {
        ts_prompt_dense_ws(pe, set->mask_input, w->dense, w->up1); /* up1: free until upscaling */
        for (int i = 0; i < N_IMG; i++)
            for (int c = 0; c < 256; c++)
                w->keys[(size_t)i * 256 + c] =
                    j->sh->emb_tok[(size_t)i * 256 + c] + w->dense[(size_t)c * N_IMG + i];
    }
    float *queries = w->q, *tmp = w->tmp;
    /* ref: transformer.py, TwoWayTransformer.forward / TwoWayAttentionBlock.forward */
    for (int L = 0; L < 2; L++) {
        const ts_twoway_layer *l = &d->layer[L];
        if (L == 0) { /* the first self-attention replaces the queries: no residual, no PE */
            attention(&l->self_attn, w->T, nq, w->T, w->T, nq, NULL, NULL, NULL, queries, w);
        } else {
            add(queries, w->T, w->qpe, tq);
            attention(&l->self_attn, w->qpe, nq, w->qpe, queries, nq, NULL, NULL, NULL, tmp, w);
            add(queries, tmp, queries, tq);
        }
        ts_layernorm(queries, nq, 256, l->n1_w, l->n1_b, 1e-5f);
        /* token -> image */
        add(queries, w->T, w->qpe, tq);
        int sh0 = L == 0 && shared;
        if (!sh0) add(w->keys, pos, w->kpe, ti);
        attention(&l->t2i, w->qpe, nq, w->kpe, w->keys, N_IMG, NULL, sh0 ? j->sh->k_t2i : NULL,
                  sh0 ? j->sh->v_t2i : NULL, tmp, w);
        add(queries, tmp, queries, tq);
        ts_layernorm(queries, nq, 256, l->n2_w, l->n2_b, 1e-5f);
        /* MLP (ReLU) */
        ts_linear(queries, nq, 256, l->l1_w, l->l1_b, 2048, tmp);
        ts_relu(tmp, (size_t)nq * 2048);
        ts_linear(tmp, nq, 2048, l->l2_w, l->l2_b, 256, w->qpe);
        add(queries, w->qpe, queries, tq);
        ts_layernorm(queries, nq, 256, l->n3_w, l->n3_b, 1e-5f);
        /* image -> token: the image tokens are the queries */
        add(queries, w->T, w->qpe, tq);
        attention(&l->i2t, w->kpe, N_IMG, w->qpe, queries, nq, sh0 ? j->sh->q_i2t : NULL, NULL,
                  NULL, tmp, w);
        add(w->keys, tmp, w->keys, ti);
        ts_layernorm(w->keys, N_IMG, 256, l->n4_w, l->n4_b, 1e-5f);
    }
    add(queries, w->T, w->qpe, tq);
    add(w->keys, pos, w->kpe, ti);
    attention(&d->final_attn, w->qpe, nq, w->kpe, w->keys, N_IMG, NULL, NULL, NULL, tmp, w);
    add(queries, tmp, queries, tq);
    ts_layernorm(queries, nq, 256, d->nf_w, d->nf_b, 1e-5f);

    /* ref: mask_decoder.py, predict_masks: upscaling, ConvTranspose as GEMM + scatter */
    ts_gemm_ex(N_IMG, 256, 256, w->keys, 256, d->up0_w, 256, 0, w->tmp, 256, 0.0f, d->up0_bias,
               TS_ACT_NONE);
    for (int i = 0; i < 64; i++)
        for (int jx = 0; jx < 64; jx++)
            for (int ab = 0; ab < 4; ab++)
                memcpy(w->up1 + ((size_t)(2 * i + ab / 2) * 128 + 2 * jx + ab % 2) * 64,
                       w->tmp + ((size_t)i * 64 + jx) * 256 + ab * 64, 64 * sizeof(float));
    for (int p = 0; p < 128 * 128; p++) { /* LayerNorm2d (eps 1e-6, true division), GELU */
        float *x = w->up1 + (size_t)p * 64, u = 0.0f, v = 0.0f;
        for (int c = 0; c < 64; c++) u += x[c];
        u /= 64.0f;
        for (int c = 0; c < 64; c++) v += (x[c] - u) * (x[c] - u);
        v /= 64.0f;
        float sd = sqrtf(v + 1e-6f);
        for (int c = 0; c < 64; c++) x[c] = d->upn_w[c] * ((x[c] - u) / sd) + d->upn_b[c];
    }
    ts_gelu(w->up1, (size_t)128 * 128 * 64);
    ts_gemm_ex(128 * 128, 128, 64, w->up1, 64, d->up3_w, 128, 0, w->big, 128, 0.0f, d->up3_bias,
               TS_ACT_GELU);
    /* hypernetworks: one 32-vector per mask token; masks = hyper . upscaled features */
    for (int t = 0; t < 4; t++) {
        const float *const *h = d->hyper[t];
        ts_linear(queries + (size_t)(1 + t) * 256, 1, 256, h[0], h[1], 256, w->h1);
        ts_relu(w->h1, 256);
        ts_linear(w->h1, 1, 256, h[2], h[3], 256, w->h2);
        ts_relu(w->h2, 256);
        ts_linear(w->h2, 1, 256, h[4], h[5], 32, w->hyper + t * 32);
    }
    /* The second ConvTranspose's output stays as 128x128 rows of (a, b, o) columns: one GEMM
     * with the block-diagonal hyper matrix gives every (sub-pixel, token) pair, which is then
     * scattered to the 256x256 masks (no 8 MB feature scatter, no transposed packing). */
    memset(w->hbd, 0, sizeof w->hbd);
    for (int ab = 0; ab < 4; ab++)
        for (int o = 0; o < 32; o++)
            for (int t = 0; t < 4; t++)
                w->hbd[(ab * 32 + o) * 16 + ab * 4 + t] = w->hyper[t * 32 + o];
    float *r = w->up2; /* 16384 x 16 */
    ts_gemm(128 * 128, 16, 128, w->big, 128, w->hbd, 16, 0, r, 16, 0.0f);
    float *lr = j->low_res + (size_t)s * 4 * 65536;
    for (int i = 0; i < 128; i++)
        for (int a = 0; a < 2; a++)
            for (int t = 0; t < 4; t++) {
                float *dst = lr + (size_t)t * 65536 + (size_t)(2 * i + a) * 256;
                const float *src = r + (size_t)i * 128 * 16 + a * 8 + t;
                for (int jx = 0; jx < 128; jx++) {
                    dst[2 * jx] = src[(size_t)jx * 16];
                    dst[2 * jx + 1] = src[(size_t)jx * 16 + 4];
                }
            }
    /* IoU head on the IoU token (raw outputs, no sigmoid) */
    const float *const *ih = d->iou_head;
    ts_linear(queries, 1, 256, ih[0], ih[1], 256, w->h1);
    ts_relu(w->h1, 256);
    ts_linear(w->h1, 1, 256, ih[2], ih[3], 256, w->h2);
    ts_relu(w->h2, 256);
    ts_linear(w->h2, 1, 256, ih[4], ih[5], 4, j->iou + (size_t)s * 4);
    j->rc[s] = 0;
}

static void decode_task(void *ctx, int s, int tid) {
    const decode_job *j = ctx;
    decode_one(j, s, &j->ws[tid]);
}

/* Everything one call needs besides the weights: the shared image-side tensors and one
 * workspace per worker. Kept on the decoder between calls (one context), so repeated calls
 * neither allocate nor fault in fresh pages. */
struct ts_decode_ctx {
    int nt, max_tokens;
    workspace *ws;
    float *emb_tok;
    shared_img sh;
};

static void ctx_free(ts_decode_ctx *c) {
    if (!c) return;
    for (int t = 0; c->ws && t < c->nt; t++) ws_free(&c->ws[t]);
    free(c->ws);
    ts_free_aligned(c->emb_tok);
    ts_free_aligned(c->sh.src0);
    ts_free_aligned(c->sh.k_t2i);
    ts_free_aligned(c->sh.v_t2i);
    ts_free_aligned(c->sh.q_i2t);
    free(c);
}

static ts_decode_ctx *ctx_new(int nt, int max_tokens) {
    ts_decode_ctx *c = ts_calloc(1, sizeof *c);
    if (!c) return NULL;
    c->max_tokens = max_tokens;
    c->ws = ts_calloc((size_t)nt, sizeof *c->ws);
    if (!c->ws) {
        free(c);
        return NULL;
    }
    for (; c->nt < nt; c->nt++)
        if (ws_alloc(&c->ws[c->nt], max_tokens)) {
            ctx_free(c);
            return NULL;
        }
    c->emb_tok = ts_malloc_aligned(sizeof(float) * N_IMG * 256);
    c->sh.src0 = ts_malloc_aligned(sizeof(float) * N_IMG * 256);
    c->sh.k_t2i = ts_malloc_aligned(sizeof(float) * N_IMG * 128);
    c->sh.v_t2i = ts_malloc_aligned(sizeof(float) * N_IMG * 128);
    c->sh.q_i2t = ts_malloc_aligned(sizeof(float) * N_IMG * 128);
    if (!c->emb_tok || !c->sh.src0 || !c->sh.k_t2i || !c->sh.v_t2i || !c->sh.q_i2t) {
        ctx_free(c);
        return NULL;
    }
    c->sh.emb_tok = c->emb_tok;
    return c;
}

/* Takes the cached context when it is big enough, else makes one. */
static ts_decode_ctx *ctx_get(ts_mask_decoder *d, int nt, int max_tokens) {
    pthread_mutex_lock(&d->ctx_lock);
    ts_decode_ctx *c = d->ctx_cache;
    d->ctx_cache = NULL;
    pthread_mutex_unlock(&d->ctx_lock);
    if (c && (c->nt < nt || c->max_tokens < max_tokens)) {
        ctx_free(c);
        c = NULL;
    }
    return c ? c : ctx_new(nt, max_tokens);
}

static void ctx_put(ts_mask_decoder *d, ts_decode_ctx *c) {
    pthread_mutex_lock(&d->ctx_lock);
    ts_decode_ctx *old = d->ctx_cache;
    if (!old || old->nt < c->nt || old->max_tokens < c->max_tokens) { /* keep the bigger */
        d->ctx_cache = c;
        c = old;
    }
    pthread_mutex_unlock(&d->ctx_lock);
    ctx_free(c);
}

int ts_sam_decode(const ts_prompt_encoder *pe, const ts_mask_decoder *dc, const float *embedding,
                  int n, const ts_prompt_set *sets, float *low_res, float *iou) {
    if (n <= 0) return 0;
    ts_mask_decoder *d = (ts_mask_decoder *)dc; /* only the context cache is written */
    int max_tokens = 8; /* room for a few points, so that the cached context is reused */
    for (int s = 0; s < n; s++) {
        if (sets[s].n_points < 0 || sets[s].n_points > TINYSAM_MAX_POINTS)
            return ts_error(TINYSAM_E_ARG, "prompt set %d: %d points (at most %d)", s,
                            sets[s].n_points, TINYSAM_MAX_POINTS);
        int k = 5 + sets[s].n_points + (sets[s].has_box ? 2 : 1);
        if (k > max_tokens) max_tokens = k;
    }
    int nt = n > 1 ? ts_num_threads() : 1;
    if (nt > n) nt = n;
    int *rcs = ts_calloc((size_t)n, sizeof *rcs);
    ts_decode_ctx *c = rcs ? ctx_get(d, nt, max_tokens) : NULL;
    if (!c) {
        free(rcs);
        return ts_error(TINYSAM_E_NOMEM, "out of memory in the mask decoder");
    }
    float *emb_tok = c->emb_tok;
    shared_img *sh = &c->sh;
    for (int ch = 0; ch < 256; ch++)
        for (int i = 0; i < N_IMG; i++)
            emb_tok[(size_t)i * 256 + ch] = embedding[(size_t)ch * N_IMG + i];
    /* layer-0 image-side projections do not depend on the prompt (without a mask input) */
    float *kpe = c->ws[0].kpe;
    for (int i = 0; i < N_IMG; i++)
        for (int ch = 0; ch < 256; ch++) {
            size_t x = (size_t)i * 256 + ch;
            sh->src0[x] = emb_tok[x] + pe->no_mask[ch];
            kpe[x] = sh->src0[x] + pe->dense_pe_tok[x];
        }
    const ts_twoway_layer *l0 = &d->layer[0];
    ts_linear(kpe, N_IMG, 256, l0->t2i.k_w, l0->t2i.k_b, 128, sh->k_t2i);
    ts_linear(sh->src0, N_IMG, 256, l0->t2i.v_w, l0->t2i.v_b, 128, sh->v_t2i);
    ts_linear(kpe, N_IMG, 256, l0->i2t.q_w, l0->i2t.q_b, 128, sh->q_i2t);
    decode_job j = {pe, d, sets, sh, c->ws, low_res, iou, rcs};
    if (nt == 1)
        for (int s = 0; s < n; s++) decode_one(&j, s, &c->ws[0]);
    else
        ts_parallel_for(n, decode_task, &j);
    int rc = 0;
    for (int s = 0; s < n && !rc; s++) rc = rcs[s];
    if (rc == TINYSAM_E_NOMEM) ts_error(rc, "out of memory in the mask decoder");
    free(rcs);
    ctx_put(d, c);
    return rc;
}

void ts_mask_decoder_free(ts_mask_decoder *d) {
    if (!d) return;
    ctx_free(d->ctx_cache);
    pthread_mutex_destroy(&d->ctx_lock);
    ts_free_aligned(d->up0_w);
    ts_free_aligned(d->up3_w);
    free(d);
}
