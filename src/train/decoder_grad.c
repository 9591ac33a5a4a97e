/* decoder_grad.c - prompt encoder + mask decoder forward with a tape and its backward
 * (spec/DISTILL.md 5.1, 5.3): the double reference on the ts_g_* ops, then the float32 version
 * on the nn.h kernels. See decoder_grad.h. */
#include "train/decoder_grad.h"

#include "core.h"
#include "nn/nn.h"
#include "threads.h"
#include "train/decoder_grad_k.h"
#include "train/grad_ops.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_SPARSE 32 /* sparse tokens of one set */
#define NQ_MAX (5 + MAX_SPARSE)
#define LN_EPS 1e-5
#define LN2D_EPS 1e-6

/* Pointers into a parameter (or gradient) array, one per checkpoint tensor. */
typedef struct {
    double *pemb[4], *nap, *nomask;
    double *c0_w, *c0_b, *n1_w, *n1_b, *c3_w, *c3_b, *n4_w, *n4_b, *c6_w, *c6_b;
    ts_g_twoway layer[2];
    ts_g_attn fin;
    double *nf_w, *nf_b, *iou_tok, *mask_tok;
    double *up0_w, *up0_b, *upn_w, *upn_b, *up3_w, *up3_b;
    double *hyp[4][6], *iouh[6];
} net;

/* One walk over the tensors in the checkpoint's parameter order: defines the layout
 * (build != 0) or binds a net to an array (base). */
typedef struct {
    ts_dg_layout *L;
    int build, i, err;
    double *base;
} walker;

static void def(walker *w, double **slot, int ndim, int s0, int s1, int s2, int s3,
                const char *fmt, ...) __attribute__((format(printf, 8, 9)));

static void def(walker *w, double **slot, int ndim, int s0, int s1, int s2, int s3,
                const char *fmt, ...) {
    ts_dg_layout *L = w->L;
    if (w->build) {
        if (L->n >= TS_DG_MAX_TENSORS) {
            w->err = 1;
            return;
        }
        ts_dg_tensor *t = &L->t[L->n++];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->name, sizeof t->name, fmt, ap);
        va_end(ap);
        int s[4] = {s0, s1, s2, s3};
        t->ndim = ndim;
        t->numel = 1;
        for (int k = 0; k < 4; k++) {
            t->shape[k] = k < ndim ? s[k] : 1;
            if (k < ndim) t->numel *= (size_t)s[k];
        }
        t->off = L->total;
        L->total += t->numel;
        return;
    }
    if (w->i >= L->n) {
        w->err = 1;
        return;
    }
    *slot = w->base ? w->base + L->t[w->i].off : NULL;
    w->i++;
}

static void def_attn(walker *w, ts_g_attn *a, int E, int I, int heads, const char *prefix) {
    a->E = E, a->I = I, a->heads = heads;
    def(w, &a->q_w, 2, I, E, 0, 0, "%s.q_proj.weight", prefix);
    def(w, &a->q_b, 1, I, 0, 0, 0, "%s.q_proj.bias", prefix);
    def(w, &a->k_w, 2, I, E, 0, 0, "%s.k_proj.weight", prefix);
    def(w, &a->k_b, 1, I, 0, 0, 0, "%s.k_proj.bias", prefix);
    def(w, &a->v_w, 2, I, E, 0, 0, "%s.v_proj.weight", prefix);
    def(w, &a->v_b, 1, I, 0, 0, 0, "%s.v_proj.bias", prefix);
    def(w, &a->o_w, 2, E, I, 0, 0, "%s.out_proj.weight", prefix);
    def(w, &a->o_b, 1, E, 0, 0, 0, "%s.out_proj.bias", prefix);
}

static void walk(walker *w, const ts_dg_config *c, net *n) {
    const int E = c->E, I = E / c->cross_down, mc = c->mask_chans, ih = c->iou_hidden;
    char p[TS_DG_NAME];
    for (int k = 0; k < 4; k++)
        def(w, &n->pemb[k], 2, 1, E, 0, 0, "prompt_encoder.point_embeddings.%d.weight", k);
    def(w, &n->nap, 2, 1, E, 0, 0, "prompt_encoder.not_a_point_embed.weight");
    const char *md = "prompt_encoder.mask_downscaling";
    def(w, &n->c0_w, 4, mc / 4, 1, 2, 2, "%s.0.weight", md);
    def(w, &n->c0_b, 1, mc / 4, 0, 0, 0, "%s.0.bias", md);
    def(w, &n->n1_w, 1, mc / 4, 0, 0, 0, "%s.1.weight", md);
    def(w, &n->n1_b, 1, mc / 4, 0, 0, 0, "%s.1.bias", md);
    def(w, &n->c3_w, 4, mc, mc / 4, 2, 2, "%s.3.weight", md);
    def(w, &n->c3_b, 1, mc, 0, 0, 0, "%s.3.bias", md);
    def(w, &n->n4_w, 1, mc, 0, 0, 0, "%s.4.weight", md);
    def(w, &n->n4_b, 1, mc, 0, 0, 0, "%s.4.bias", md);
    def(w, &n->c6_w, 4, E, mc, 1, 1, "%s.6.weight", md);
    def(w, &n->c6_b, 1, E, 0, 0, 0, "%s.6.bias", md);
    def(w, &n->nomask, 2, 1, E, 0, 0, "prompt_encoder.no_mask_embed.weight");
    for (int l = 0; l < 2; l++) {
        ts_g_twoway *t = &n->layer[l];
        t->E = E, t->mlp = c->mlp, t->skip_first_layer_pe = l == 0;
        snprintf(p, sizeof p, "mask_decoder.transformer.layers.%d.self_attn", l);
        def_attn(w, &t->self_attn, E, E, c->heads, p);
        def(w, &t->n1_w, 1, E, 0, 0, 0, "mask_decoder.transformer.layers.%d.norm1.weight", l);
        def(w, &t->n1_b, 1, E, 0, 0, 0, "mask_decoder.transformer.layers.%d.norm1.bias", l);
        snprintf(p, sizeof p, "mask_decoder.transformer.layers.%d.cross_attn_token_to_image", l);
        def_attn(w, &t->t2i, E, I, c->heads, p);
        def(w, &t->n2_w, 1, E, 0, 0, 0, "mask_decoder.transformer.layers.%d.norm2.weight", l);
        def(w, &t->n2_b, 1, E, 0, 0, 0, "mask_decoder.transformer.layers.%d.norm2.bias", l);
        def(w, &t->l1_w, 2, c->mlp, E, 0, 0, "mask_decoder.transformer.layers.%d.mlp.lin1.weight",
            l);
        def(w, &t->l1_b, 1, c->mlp, 0, 0, 0, "mask_decoder.transformer.layers.%d.mlp.lin1.bias", l);
        def(w, &t->l2_w, 2, E, c->mlp, 0, 0, "mask_decoder.transformer.layers.%d.mlp.lin2.weight",
            l);
        def(w, &t->l2_b, 1, E, 0, 0, 0, "mask_decoder.transformer.layers.%d.mlp.lin2.bias", l);
        def(w, &t->n3_w, 1, E, 0, 0, 0, "mask_decoder.transformer.layers.%d.norm3.weight", l);
        def(w, &t->n3_b, 1, E, 0, 0, 0, "mask_decoder.transformer.layers.%d.norm3.bias", l);
        def(w, &t->n4_w, 1, E, 0, 0, 0, "mask_decoder.transformer.layers.%d.norm4.weight", l);
        def(w, &t->n4_b, 1, E, 0, 0, 0, "mask_decoder.transformer.layers.%d.norm4.bias", l);
        snprintf(p, sizeof p, "mask_decoder.transformer.layers.%d.cross_attn_image_to_token", l);
        def_attn(w, &t->i2t, E, I, c->heads, p);
    }
    def_attn(w, &n->fin, E, I, c->heads, "mask_decoder.transformer.final_attn_token_to_image");
    def(w, &n->nf_w, 1, E, 0, 0, 0, "mask_decoder.transformer.norm_final_attn.weight");
    def(w, &n->nf_b, 1, E, 0, 0, 0, "mask_decoder.transformer.norm_final_attn.bias");
    def(w, &n->iou_tok, 2, 1, E, 0, 0, "mask_decoder.iou_token.weight");
    def(w, &n->mask_tok, 2, 4, E, 0, 0, "mask_decoder.mask_tokens.weight");
    def(w, &n->up0_w, 4, E, E / 4, 2, 2, "mask_decoder.output_upscaling.0.weight");
    def(w, &n->up0_b, 1, E / 4, 0, 0, 0, "mask_decoder.output_upscaling.0.bias");
    def(w, &n->upn_w, 1, E / 4, 0, 0, 0, "mask_decoder.output_upscaling.1.weight");
    def(w, &n->upn_b, 1, E / 4, 0, 0, 0, "mask_decoder.output_upscaling.1.bias");
    def(w, &n->up3_w, 4, E / 4, E / 8, 2, 2, "mask_decoder.output_upscaling.3.weight");
    def(w, &n->up3_b, 1, E / 8, 0, 0, 0, "mask_decoder.output_upscaling.3.bias");
    for (int t = 0; t < 4; t++) {
        const int out[3] = {E, E, E / 8};
        for (int l = 0; l < 3; l++) {
            def(w, &n->hyp[t][2 * l], 2, out[l], E, 0, 0,
                "mask_decoder.output_hypernetworks_mlps.%d.layers.%d.weight", t, l);
            def(w, &n->hyp[t][2 * l + 1], 1, out[l], 0, 0, 0,
                "mask_decoder.output_hypernetworks_mlps.%d.layers.%d.bias", t, l);
        }
    }
    const int iin[3] = {E, ih, ih}, iout[3] = {ih, ih, 4};
    for (int l = 0; l < 3; l++) {
        def(w, &n->iouh[2 * l], 2, iout[l], iin[l], 0, 0,
            "mask_decoder.iou_prediction_head.layers.%d.weight", l);
        def(w, &n->iouh[2 * l + 1], 1, iout[l], 0, 0, 0,
            "mask_decoder.iou_prediction_head.layers.%d.bias", l);
    }
}

void ts_dg_config_sam(ts_dg_config *c) {
    *c = (ts_dg_config){.E = 256, .H = 64, .W = 64, .mlp = 2048, .heads = 8, .cross_down = 2,
                        .iou_hidden = 256, .mask_chans = 16};
}

int ts_dg_layout_init(ts_dg_layout *L, const ts_dg_config *c) {
    memset(L, 0, sizeof *L);
    if (c->E <= 0 || c->E % 8 || c->E % 2 || c->H <= 0 || c->W <= 0 || c->mlp <= 0 ||
        c->heads <= 0 || c->cross_down <= 0 || c->E % c->cross_down ||
        (c->E / c->cross_down) % c->heads || c->E % c->heads || c->iou_hidden <= 0 ||
        c->mask_chans <= 0 || c->mask_chans % 4)
        return ts_error(TINYSAM_E_ARG, "decoder_grad: bad configuration");
    L->c = *c;
    walker w = {.L = L, .build = 1};
    net n;
    walk(&w, c, &n);
    if (w.err) return ts_error(TINYSAM_E_ARG, "decoder_grad: too many tensors");
    return 0;
}

int ts_dg_find(const ts_dg_layout *L, const char *name) {
    for (int i = 0; i < L->n; i++)
        if (!strcmp(L->t[i].name, name)) return i;
    return -1;
}

static void bind(const ts_dg_layout *L, double *base, net *n) {
    walker w = {.L = (ts_dg_layout *)L, .build = 0, .base = base};
    walk(&w, &L->c, n);
}

static int take(const ts_tensor_map *m, const char *name, int ndim, const int *shape,
                double *dst) {
    const ts_tensor *t = ts_map_get(m, name);
    if (!t) return ts_error(TINYSAM_E_FORMAT, "missing tensor %s", name);
    int ok = t->dtype == TS_DTYPE_F32 && t->ndim == ndim;
    for (int k = 0; ok && k < ndim; k++) ok = t->shape[k] == shape[k];
    if (!ok) return ts_error(TINYSAM_E_FORMAT, "tensor %s: unexpected dtype or shape", name);
    const float *s = t->data;
    for (int64_t i = 0; i < t->numel; i++) dst[i] = s[i];
    return 0;
}

int ts_dg_load(const ts_dg_layout *L, const ts_tensor_map *m, double *params, double *gauss) {
    for (int i = 0; i < L->n; i++) {
        const ts_dg_tensor *t = &L->t[i];
        int rc = take(m, t->name, t->ndim, t->shape, params + t->off);
        if (rc) return rc;
    }
    const int gs[2] = {2, L->c.E / 2};
    return take(m, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", 2, gs, gauss);
}

/* ---- context and tape ------------------------------------------------------------------- */

struct ts_dg {
    const ts_dg_layout *L;
    net p;                 /* parameters */
    const double *gauss;   /* 2 x E/2 */
    int E, HW, P, E4, E8, mc, ih;
    double *dpe;           /* dense PE, token layout [HW][E] */
    /* tape of one set */
    int nq, ns, kind[MAX_SPARSE], has_mask;
    double *tok0;                                  /* [nq][E] */
    double *mk, *m0, *m1, *m2, *m3, *m4, *m5;      /* mask path */
    double *dense;                                 /* [E][HW] */
    double *src0, *q1, *k1, *q2, *k2;              /* transformer inputs / outputs */
    double *fq, *fk, *fr, *hs;                     /* final attention */
    double *x0, *u1, *u2, *u3, *u4, *up;           /* upscaling */
    double *hh[4][4], *hyp;                        /* per token: h0 r0 h1 r1; hyper [4][E8] */
    double *ih0, *ir0, *ih1, *ir1, *iou;           /* IoU head */
    double *z;                                     /* [4][P] */
    /* backward scratch */
    double *g_hs, *g_fr, *g_fq, *g_q2, *g_q1, *g_q0, *g_tok0, *g_pe; /* [NQ_MAX][E] */
    double *g_fk, *g_k2, *g_k1, *g_src0;                          /* [HW][E] */
    double *g_x0, *g_u1, *g_u2, *g_u3, *g_u4, *g_up;
    double *g_hyp, *g_v[4];                                       /* small vectors */
    double *g_dense, *g_m5, *g_m4, *g_m3, *g_m2, *g_m1, *g_m0;
    double *buf;
};

void ts_dg_free(ts_dg *d) {
    if (!d) return;
    free(d->buf);
    free(d);
}

/* PositionEmbeddingRandom._pe_encoding of one normalised point, in double. */
static void pe_encode(const double *G, int E, double x, double y, double *out) {
    const int h = E / 2;
    double u = 2.0 * x - 1.0, v = 2.0 * y - 1.0;
    for (int k = 0; k < h; k++) {
        double f = (u * G[k] + v * G[h + k]) * 6.283185307179586;
        out[k] = sin(f);
        out[h + k] = cos(f);
    }
}

int ts_dg_create(const ts_dg_layout *L, const double *params, const double *gauss, ts_dg **out) {
    *out = NULL;
    const ts_dg_config *c = &L->c;
    ts_dg *d = ts_calloc(1, sizeof *d);
    if (!d) return TINYSAM_E_NOMEM;
    d->L = L;
    bind(L, (double *)params, &d->p);
    d->gauss = gauss;
    d->E = c->E, d->HW = c->H * c->W, d->P = 16 * d->HW, d->E4 = c->E / 4, d->E8 = c->E / 8;
    d->mc = c->mask_chans, d->ih = c->iou_hidden;
    const size_t E = (size_t)d->E, HW = (size_t)d->HW, P = (size_t)d->P, QE = NQ_MAX * E;
    const size_t IE = HW * E, mc = (size_t)d->mc, V = E > (size_t)d->ih ? E : (size_t)d->ih;
    /* sizes of every buffer, in the order they are carved below */
    size_t total = IE;                               /* dpe */
    total += QE;                                     /* tok0 */
    total += P + 4 * HW * mc / 4 * 3 + HW * mc * 3;  /* mk, m0..m2, m3..m5 */
    total += IE * 6;                                 /* dense src0 k1 k2 fk x0 */
    total += QE * 6;                                 /* q1 q2 fq fr hs (+1 spare) */
    total += 4 * HW * d->E4 * 3 + P * d->E8 * 2;     /* u1 u2 u3, u4 up */
    total += 16 * V + 4 * (size_t)d->E8;             /* hh, hyp */
    total += 4 * V + 4;                              /* iou head */
    total += 4 * P;                                  /* z */
    total += QE * 8;                                 /* g_hs .. g_pe */
    total += IE * 4;                                 /* g_fk g_k2 g_k1 g_src0 */
    total += IE + 4 * HW * d->E4 * 3 + P * d->E8 * 2; /* g_x0, g_u1..g_u3, g_u4 g_up */
    total += 4 * (size_t)d->E8 + 4 * V;              /* g_hyp, g_v */
    total += IE + HW * mc * 3 + 4 * HW * mc / 4 * 3; /* g_dense, g_m5..g_m3, g_m2..g_m0 */
    d->buf = ts_calloc(total, sizeof(double));
    if (!d->buf) {
        free(d);
        return TINYSAM_E_NOMEM;
    }
    double *q = d->buf;
#define CARVE(ptr, n) (ptr = q, q += (n))
    CARVE(d->dpe, IE);
    CARVE(d->tok0, QE);
    CARVE(d->mk, P);
    CARVE(d->m0, 4 * HW * mc / 4);
    CARVE(d->m1, 4 * HW * mc / 4);
    CARVE(d->m2, 4 * HW * mc / 4);
    CARVE(d->m3, HW * mc);
    CARVE(d->m4, HW * mc);
    CARVE(d->m5, HW * mc);
    CARVE(d->dense, IE);
    CARVE(d->src0, IE);
    CARVE(d->k1, IE);
    CARVE(d->k2, IE);
    CARVE(d->fk, IE);
    CARVE(d->x0, IE);
    CARVE(d->q1, QE);
    CARVE(d->q2, QE);
    CARVE(d->fq, QE);
    CARVE(d->fr, QE);
    CARVE(d->hs, QE);
    q += QE;
    CARVE(d->u1, 4 * HW * d->E4);
    CARVE(d->u2, 4 * HW * d->E4);
    CARVE(d->u3, 4 * HW * d->E4);
    CARVE(d->u4, P * d->E8);
    CARVE(d->up, P * d->E8);
    for (int t = 0; t < 4; t++)
        for (int k = 0; k < 4; k++) CARVE(d->hh[t][k], V);
    CARVE(d->hyp, 4 * (size_t)d->E8);
    CARVE(d->ih0, V);
    CARVE(d->ir0, V);
    CARVE(d->ih1, V);
    CARVE(d->ir1, V);
    CARVE(d->iou, 4);
    CARVE(d->z, 4 * P);
    CARVE(d->g_hs, QE);
    CARVE(d->g_fr, QE);
    CARVE(d->g_fq, QE);
    CARVE(d->g_q2, QE);
    CARVE(d->g_q1, QE);
    CARVE(d->g_q0, QE);
    CARVE(d->g_tok0, QE);
    CARVE(d->g_pe, QE);
    CARVE(d->g_fk, IE);
    CARVE(d->g_k2, IE);
    CARVE(d->g_k1, IE);
    CARVE(d->g_src0, IE);
    CARVE(d->g_x0, IE);
    CARVE(d->g_u1, 4 * HW * d->E4);
    CARVE(d->g_u2, 4 * HW * d->E4);
    CARVE(d->g_u3, 4 * HW * d->E4);
    CARVE(d->g_u4, P * d->E8);
    CARVE(d->g_up, P * d->E8);
    CARVE(d->g_hyp, 4 * (size_t)d->E8);
    for (int k = 0; k < 4; k++) CARVE(d->g_v[k], V);
    CARVE(d->g_dense, IE);
    CARVE(d->g_m5, HW * mc);
    CARVE(d->g_m4, HW * mc);
    CARVE(d->g_m3, HW * mc);
    CARVE(d->g_m2, 4 * HW * mc / 4);
    CARVE(d->g_m1, 4 * HW * mc / 4);
    CARVE(d->g_m0, 4 * HW * mc / 4);
#undef CARVE
    if ((size_t)(q - d->buf) != total) {
        ts_dg_free(d);
        return ts_error(TINYSAM_E_ARG, "decoder_grad: tape size mismatch");
    }
    /* get_dense_pe: cell (i, j) at ((j + 0.5) / W, (i + 0.5) / H), token layout */
    for (int i = 0; i < c->H; i++)
        for (int j = 0; j < c->W; j++)
            pe_encode(gauss, d->E, (j + 0.5) / c->W, (i + 0.5) / c->H,
                      d->dpe + ((size_t)i * c->W + j) * E);
    *out = d;
    return 0;
}

/* ---- forward of one set into the tape ------------------------------------------------------ */

static ts_g_conv2d conv_cfg(int Ci, int H, int W, int Co, int k, int s) {
    return (ts_g_conv2d){.Ci = Ci, .H = H, .W = W, .Co = Co, .k = k, .stride = s, .pad = 0,
                         .groups = 1};
}

/* 3-layer MLP with ReLU between the layers (SAM's MLP): in -> h0 r0 h1 r1 -> out. */
static void mlp3_fwd(double *const *w, const double *in, int i0, int i1, int i2, int o,
                     double *h0, double *r0, double *h1, double *r1, double *out) {
    ts_g_linear_fwd(in, 1, i0, w[0], w[1], i1, h0);
    ts_g_relu_fwd(h0, (size_t)i1, r0);
    ts_g_linear_fwd(r0, 1, i1, w[2], w[3], i2, h1);
    ts_g_relu_fwd(h1, (size_t)i2, r1);
    ts_g_linear_fwd(r1, 1, i2, w[4], w[5], o, out);
}

/* dout -> din (accumulated) and the weight gradients g (may hold NULLs: whole g NULL). */
static void mlp3_bwd(double *const *w, double *const *g, const double *in, int i0, int i1,
                     int i2, int o, const double *h0, const double *r0, const double *h1,
                     const double *r1, const double *dout, double *din, double *s0, double *s1,
                     double *s2, double *s3) {
    memset(s0, 0, sizeof(double) * (size_t)i2);
    memset(s1, 0, sizeof(double) * (size_t)i2);
    memset(s2, 0, sizeof(double) * (size_t)i1);
    memset(s3, 0, sizeof(double) * (size_t)i1);
    ts_g_linear_bwd(r1, 1, i2, w[4], o, dout, s0, g ? g[4] : NULL, g ? g[5] : NULL);
    ts_g_relu_bwd(h1, (size_t)i2, s0, s1);
    ts_g_linear_bwd(r0, 1, i1, w[2], i2, s1, s2, g ? g[2] : NULL, g ? g[3] : NULL);
    ts_g_relu_bwd(h0, (size_t)i1, s2, s3);
    ts_g_linear_bwd(in, 1, i0, w[0], i1, s3, din, g ? g[0] : NULL, g ? g[1] : NULL);
}

static int set_forward(ts_dg *d, const double *emb, const ts_prompt_set *s) {
    const net *p = &d->p;
    const int E = d->E, HW = d->HW, H = d->L->c.H, W = d->L->c.W, mc = d->mc;
    /* sparse tokens: as ts_prompt_sparse */
    int ns = 0;
    double *sp = d->tok0 + 5 * (size_t)E;
    for (int i = 0; s->n_points > 0 && i <= s->n_points; i++) {
        int pad = i == s->n_points;
        if (pad && s->has_box) break;
        int label = pad ? -1 : s->labels[i];
        if (label < -1 || label > 1)
            return ts_error(TINYSAM_E_ARG, "decoder_grad: point label %d", label);
        if (ns >= MAX_SPARSE) return ts_error(TINYSAM_E_LIMIT, "decoder_grad: too many points");
        double *e = sp + (size_t)ns * E;
        d->kind[ns++] = label == -1 ? 4 : label;
        if (label == -1) {
            memcpy(e, p->nap, sizeof(double) * E);
            continue;
        }
        pe_encode(d->gauss, E, s->coords[2 * i], s->coords[2 * i + 1], e);
        for (int c = 0; c < E; c++) e[c] += p->pemb[label][c];
    }
    if (s->has_box)
        for (int corner = 0; corner < 2; corner++) {
            if (ns >= MAX_SPARSE) return ts_error(TINYSAM_E_LIMIT, "decoder_grad: too many tokens");
            double *e = sp + (size_t)ns * E;
            d->kind[ns++] = 2 + corner;
            pe_encode(d->gauss, E, s->box[2 * corner], s->box[2 * corner + 1], e);
            for (int c = 0; c < E; c++) e[c] += p->pemb[2 + corner][c];
        }
    d->ns = ns;
    d->nq = 5 + ns;
    const int nq = d->nq;
    memcpy(d->tok0, p->iou_tok, sizeof(double) * E);
    memcpy(d->tok0 + E, p->mask_tok, sizeof(double) * 4 * E);
    /* dense embedding */
    d->has_mask = s->mask_input != NULL;
    if (d->has_mask) {
        for (int i = 0; i < d->P; i++) d->mk[i] = s->mask_input[i];
        ts_g_conv2d c0 = conv_cfg(1, 4 * H, 4 * W, mc / 4, 2, 2);
        ts_g_conv2d c3 = conv_cfg(mc / 4, 2 * H, 2 * W, mc, 2, 2);
        ts_g_conv2d c6 = conv_cfg(mc, H, W, E, 1, 1);
        ts_g_conv2d_fwd(&c0, d->mk, p->c0_w, p->c0_b, d->m0);
        ts_g_layernorm2d_fwd(d->m0, mc / 4, 4 * HW, p->n1_w, p->n1_b, LN2D_EPS, d->m1);
        ts_g_gelu_fwd(d->m1, (size_t)mc * HW, d->m2);
        ts_g_conv2d_fwd(&c3, d->m2, p->c3_w, p->c3_b, d->m3);
        ts_g_layernorm2d_fwd(d->m3, mc, HW, p->n4_w, p->n4_b, LN2D_EPS, d->m4);
        ts_g_gelu_fwd(d->m4, (size_t)mc * HW, d->m5);
        ts_g_conv2d_fwd(&c6, d->m5, p->c6_w, p->c6_b, d->dense);
    } else {
        for (int c = 0; c < E; c++)
            for (int i = 0; i < HW; i++) d->dense[(size_t)c * HW + i] = p->nomask[c];
    }
    /* src = E_S + dense, token layout */
    for (int i = 0; i < HW; i++)
        for (int c = 0; c < E; c++)
            d->src0[(size_t)i * E + c] = emb[(size_t)c * HW + i] + d->dense[(size_t)c * HW + i];
    int rc = ts_g_twoway_fwd(&p->layer[0], d->tok0, nq, d->src0, HW, d->tok0, d->dpe, d->q1,
                             d->k1);
    if (!rc)
        rc = ts_g_twoway_fwd(&p->layer[1], d->q1, nq, d->k1, HW, d->tok0, d->dpe, d->q2, d->k2);
    if (rc) return rc;
    /* final token-to-image attention, residual, norm_final_attn */
    for (size_t i = 0; i < (size_t)nq * E; i++) d->fq[i] = d->q2[i] + d->tok0[i];
    for (size_t i = 0; i < (size_t)HW * E; i++) d->fk[i] = d->k2[i] + d->dpe[i];
    if ((rc = ts_g_attn_fwd(&p->fin, d->fq, nq, d->fk, d->k2, HW, d->fr))) return rc;
    for (size_t i = 0; i < (size_t)nq * E; i++) d->fr[i] += d->q2[i];
    ts_g_layernorm_fwd(d->fr, nq, E, p->nf_w, p->nf_b, LN_EPS, d->hs);
    /* output upscaling on the image side */
    for (int i = 0; i < HW; i++)
        for (int c = 0; c < E; c++) d->x0[(size_t)c * HW + i] = d->k2[(size_t)i * E + c];
    ts_g_convt2d_fwd(d->x0, E, H, W, p->up0_w, p->up0_b, d->E4, 2, 2, d->u1);
    ts_g_layernorm2d_fwd(d->u1, d->E4, 4 * HW, p->upn_w, p->upn_b, LN2D_EPS, d->u2);
    ts_g_gelu_fwd(d->u2, (size_t)d->E4 * 4 * HW, d->u3);
    ts_g_convt2d_fwd(d->u3, d->E4, 2 * H, 2 * W, p->up3_w, p->up3_b, d->E8, 2, 2, d->u4);
    ts_g_gelu_fwd(d->u4, (size_t)d->E8 * d->P, d->up);
    /* hypernetworks, masks, IoU head */
    for (int t = 0; t < 4; t++)
        mlp3_fwd(p->hyp[t], d->hs + (size_t)(1 + t) * E, E, E, E, d->E8, d->hh[t][0],
                 d->hh[t][1], d->hh[t][2], d->hh[t][3], d->hyp + (size_t)t * d->E8);
    ts_g_hyper_fwd(d->hyp, d->up, 1, 4, d->E8, d->P, d->z);
    mlp3_fwd(p->iouh, d->hs, E, d->ih, d->ih, 4, d->ih0, d->ir0, d->ih1, d->ir1, d->iou);
    return 0;
}

int ts_dg_forward(ts_dg *d, const double *emb, int N, const ts_prompt_set *sets, double *z,
                  double *u, double *tok) {
    if (N <= 0) return ts_error(TINYSAM_E_ARG, "decoder_grad: %d prompt sets", N);
    const size_t P4 = 4 * (size_t)d->P, T5 = 5 * (size_t)d->E;
    for (int i = 0; i < N; i++) {
        int rc = set_forward(d, emb, &sets[i]);
        if (rc) return rc;
        if (z) memcpy(z + (size_t)i * P4, d->z, sizeof(double) * P4);
        if (u) memcpy(u + (size_t)i * 4, d->iou, sizeof(double) * 4);
        if (tok) memcpy(tok + (size_t)i * T5, d->hs, sizeof(double) * T5);
    }
    return 0;
}

/* ---- backward of one set from the tape ---------------------------------------------------- */

static void zero(double *x, size_t n) { memset(x, 0, sizeof(double) * n); }

static int set_backward(ts_dg *d, const double *dz, const double *du, const double *dtok,
                        net *g, double *demb) {
    const net *p = &d->p;
    const int E = d->E, HW = d->HW, H = d->L->c.H, W = d->L->c.W, mc = d->mc, nq = d->nq;
    const size_t QE = (size_t)nq * E, IE = (size_t)HW * E;
    const size_t U1 = (size_t)d->E4 * 4 * HW, U4 = (size_t)d->E8 * d->P;
    zero(d->g_hs, QE);
    /* masks = hyper . up (D8), hypernetwork MLPs (D7) */
    zero(d->g_up, U4);
    if (dz) {
        zero(d->g_hyp, 4 * (size_t)d->E8);
        ts_g_hyper_bwd(d->hyp, d->up, 1, 4, d->E8, d->P, dz, d->g_hyp, d->g_up);
        for (int t = 0; t < 4; t++)
            mlp3_bwd(p->hyp[t], g ? g->hyp[t] : NULL, d->hs + (size_t)(1 + t) * E, E, E, E,
                     d->E8, d->hh[t][0], d->hh[t][1], d->hh[t][2], d->hh[t][3],
                     d->g_hyp + (size_t)t * d->E8, d->g_hs + (size_t)(1 + t) * E, d->g_v[0],
                     d->g_v[1], d->g_v[2], d->g_v[3]);
    }
    if (du)
        mlp3_bwd(p->iouh, g ? g->iouh : NULL, d->hs, E, d->ih, d->ih, 4, d->ih0, d->ir0, d->ih1,
                 d->ir1, du, d->g_hs, d->g_v[0], d->g_v[1], d->g_v[2], d->g_v[3]);
    if (dtok)
        for (size_t i = 0; i < 5 * (size_t)E; i++) d->g_hs[i] += dtok[i];
    /* output upscaling (D6) back to the transformer's image side */
    zero(d->g_k2, IE);
    if (dz) {
        zero(d->g_u4, U4), zero(d->g_u3, U1), zero(d->g_u2, U1), zero(d->g_u1, U1);
        zero(d->g_x0, IE);
        ts_g_gelu_bwd(d->u4, U4, d->g_up, d->g_u4);
        ts_g_convt2d_bwd(d->u3, d->E4, 2 * H, 2 * W, p->up3_w, d->E8, 2, 2, d->g_u4, d->g_u3,
                         g ? g->up3_w : NULL, g ? g->up3_b : NULL);
        ts_g_gelu_bwd(d->u2, U1, d->g_u3, d->g_u2);
        ts_g_layernorm2d_bwd(d->u1, d->E4, 4 * HW, p->upn_w, LN2D_EPS, d->g_u2, d->g_u1,
                             g ? g->upn_w : NULL, g ? g->upn_b : NULL);
        ts_g_convt2d_bwd(d->x0, E, H, W, p->up0_w, d->E4, 2, 2, d->g_u1, d->g_x0,
                         g ? g->up0_w : NULL, g ? g->up0_b : NULL);
        for (int i = 0; i < HW; i++)
            for (int c = 0; c < E; c++) d->g_k2[(size_t)i * E + c] += d->g_x0[(size_t)c * HW + i];
    }
    /* final attention (D5): hs = LN(q2 + attn(q2 + tok0, k2 + pe, k2)) */
    zero(d->g_fr, QE), zero(d->g_fq, QE), zero(d->g_q2, QE), zero(d->g_tok0, QE);
    zero(d->g_fk, IE);
    ts_g_layernorm_bwd(d->fr, nq, E, p->nf_w, LN_EPS, d->g_hs, d->g_fr, g ? g->nf_w : NULL,
                       g ? g->nf_b : NULL);
    int rc = ts_g_attn_bwd(&p->fin, d->fq, nq, d->fk, d->k2, HW, d->g_fr, d->g_fq, d->g_fk,
                           d->g_k2, g ? &g->fin : NULL);
    if (rc) return rc;
    for (size_t i = 0; i < QE; i++) {
        d->g_q2[i] = d->g_fr[i] + d->g_fq[i];
        d->g_tok0[i] = d->g_fq[i];
    }
    for (size_t i = 0; i < IE; i++) d->g_k2[i] += d->g_fk[i];
    /* the two two-way blocks (D4); the original tokens are also the query PE */
    zero(d->g_q1, QE), zero(d->g_k1, IE), zero(d->g_pe, QE);
    rc = ts_g_twoway_bwd(&p->layer[1], d->q1, nq, d->k1, HW, d->tok0, d->dpe, d->g_q2, d->g_k2,
                         d->g_q1, d->g_k1, d->g_pe, NULL, g ? &g->layer[1] : NULL);
    if (rc) return rc;
    zero(d->g_q0, QE), zero(d->g_src0, IE);
    rc = ts_g_twoway_bwd(&p->layer[0], d->tok0, nq, d->src0, HW, d->tok0, d->dpe, d->g_q1,
                         d->g_k1, d->g_q0, d->g_src0, d->g_pe, NULL, g ? &g->layer[0] : NULL);
    if (rc) return rc;
    for (size_t i = 0; i < QE; i++) d->g_tok0[i] += d->g_q0[i] + d->g_pe[i];
    /* src = E_S + dense (D2) */
    if (demb)
        for (int c = 0; c < E; c++)
            for (int i = 0; i < HW; i++) demb[(size_t)c * HW + i] += d->g_src0[(size_t)i * E + c];
    if (g && !d->has_mask) {
        for (int i = 0; i < HW; i++)
            for (int c = 0; c < E; c++) g->nomask[c] += d->g_src0[(size_t)i * E + c];
    } else if (g) {
        /* mask_downscaling (P3); no gradient into the mask input */
        for (int c = 0; c < E; c++)
            for (int i = 0; i < HW; i++) d->g_dense[(size_t)c * HW + i] = d->g_src0[(size_t)i * E + c];
        const size_t M3 = (size_t)mc * HW, M0 = (size_t)mc * HW; /* mc/4 x 4HW = mc x HW */
        zero(d->g_m5, M3), zero(d->g_m4, M3), zero(d->g_m3, M3);
        zero(d->g_m2, M0), zero(d->g_m1, M0), zero(d->g_m0, M0);
        ts_g_conv2d c0 = conv_cfg(1, 4 * H, 4 * W, mc / 4, 2, 2);
        ts_g_conv2d c3 = conv_cfg(mc / 4, 2 * H, 2 * W, mc, 2, 2);
        ts_g_conv2d c6 = conv_cfg(mc, H, W, E, 1, 1);
        ts_g_conv2d_bwd(&c6, d->m5, p->c6_w, d->g_dense, d->g_m5, g->c6_w, g->c6_b);
        ts_g_gelu_bwd(d->m4, M3, d->g_m5, d->g_m4);
        ts_g_layernorm2d_bwd(d->m3, mc, HW, p->n4_w, LN2D_EPS, d->g_m4, d->g_m3, g->n4_w,
                             g->n4_b);
        ts_g_conv2d_bwd(&c3, d->m2, p->c3_w, d->g_m3, d->g_m2, g->c3_w, g->c3_b);
        ts_g_gelu_bwd(d->m1, M0, d->g_m2, d->g_m1);
        ts_g_layernorm2d_bwd(d->m0, mc / 4, 4 * HW, p->n1_w, LN2D_EPS, d->g_m1, d->g_m0, g->n1_w,
                             g->n1_b);
        ts_g_conv2d_bwd(&c0, d->mk, p->c0_w, d->g_m0, NULL, g->c0_w, g->c0_b);
    }
    /* token rows (D1, P1): output tokens, then the sparse embeddings by label */
    if (g) {
        for (int c = 0; c < E; c++) g->iou_tok[c] += d->g_tok0[c];
        for (int c = 0; c < 4 * E; c++) g->mask_tok[c] += d->g_tok0[E + c];
        for (int j = 0; j < d->ns; j++) {
            double *dst = d->kind[j] == 4 ? g->nap : g->pemb[d->kind[j]];
            const double *src = d->g_tok0 + (size_t)(5 + j) * E;
            for (int c = 0; c < E; c++) dst[c] += src[c];
        }
    }
    return 0;
}

int ts_dg_backward(ts_dg *d, const double *emb, int N, const ts_prompt_set *sets,
                   const double *dz, const double *du, const double *dtok, double *grads,
                   double *demb) {
    if (N <= 0) return ts_error(TINYSAM_E_ARG, "decoder_grad: %d prompt sets", N);
    net g;
    if (grads) bind(d->L, grads, &g);
    const size_t P4 = 4 * (size_t)d->P, T5 = 5 * (size_t)d->E;
    for (int i = 0; i < N; i++) {
        int rc = set_forward(d, emb, &sets[i]);
        if (!rc)
            rc = set_backward(d, dz ? dz + (size_t)i * P4 : NULL, du ? du + (size_t)i * 4 : NULL,
                              dtok ? dtok + (size_t)i * T5 : NULL, grads ? &g : NULL, demb);
        if (rc) return rc;
    }
    return 0;
}

/* ================================ float32 version ========================================== */
/* The same computation in float on ts_gemm. Image-side tensors are pixel-major ([pixel][C])
 * throughout: the transformer's keys already are, ConvTranspose2d k2 s2 becomes one GEMM plus
 * a sub-pixel scatter, LayerNorm2d a row LayerNorm. Attention keeps its projections and
 * probabilities on the tape (no recomputation); the cross attentions between a few tokens and
 * the image are folded so that no image-side projection is formed (attn_fwd_folded,
 * attn_fwd_folded_i2t). The small mask_downscaling path (P3) runs in double on the ts_g_* ops
 * except its last 1x1 convolution (a float GEMM). The sets run on the worker pool, one tape
 * per worker, with fixed-order reductions (see "the sets on the worker pool" below).
 * Parameters are reached through the double layout binder bound to an untouched calloc'd
 * block: a pointer's distance from that block is the tensor offset. */

#define TS_DGF_MAXW 64 /* most workers (threads) one context runs the sets on */

typedef struct {
    int E, I, heads;
    float *qw, *qb, *kw, *kb, *vw, *vb, *ow, *ob;
} fatt;

typedef struct {
    int skip;
    fatt sa, t2i, i2t;
    float *n1w, *n1b, *n2w, *n2b, *n3w, *n3b, *n4w, *n4b, *l1w, *l1b, *l2w, *l2b;
} ftw;

typedef struct {
    float *pemb[4], *nap, *nomask;
    float *md[10]; /* mask_downscaling: c0_w c0_b n1_w n1_b c3_w c3_b n4_w n4_b c6_w c6_b */
    ftw layer[2];
    fatt fin;
    float *nfw, *nfb, *iou_tok, *mask_tok;
    float *up0w, *up0b, *upnw, *upnb, *up3w, *up3b;
    float *hyp[4][6], *iouh[6];
} fnet;

/* Attention tape: projections, probabilities, merged heads. */
typedef struct {
    float *qp, *kp, *vp, *P, *o;
} atape;

/* Two-way block tape (inputs q, k are the caller's). */
typedef struct {
    atape sa, t2i, i2t;
    float *qin, *r1, *q1, *qin2, *kin2, *r2, *q2, *h, *hr, *r3, *q3, *kin4, *r4;
} ltape;

struct ts_dgf {
    const ts_dg_layout *L;
    double *dummy; /* untouched block the double binder is bound to (offsets only) */
    net off;       /* bound to dummy */
    fnet p;
    int E, HW, H, W, P, E4, E8, mc, ih, I, heads, mlp;
    float *dpe; /* [HW][E] */
    double gauss_f[1024]; /* the PE matrix, 2 x E/2 */
    /* mask path in double (small): parameters copied per call, tape, gradients */
    size_t mdn[10];
    double *mdp[10], *mdg[10];
    double *mk, *m0, *m1, *m2, *m3, *m4, *m5, *gm[6], *dbuf;
    float *wp0, *wp3, *gwp; /* the ConvTranspose2d weights permuted (convt_perm), a gradient */
    float *m5f, *g_m5f; /* m5 pixel-major [HW][mc] and its gradient: the 1x1 conv as a GEMM */
    /* tape of one set */
    int nq, ns, kind[MAX_SPARSE], has_mask;
    float *tok0, *src0;
    ltape lt[2];
    float *q1o, *k1o, *q2o, *k2o; /* block outputs */
    atape fa;
    float *fq, *fk, *fr, *hs;
    float *t1, *u1, *u2, *u3, *t2, *u4, *up; /* upscaling, pixel-major */
    float *hh[5][4], *hyp, *iou, *z;
    /* backward scratch */
    float *tr;                               /* transpose buffer */
    float *a_do, *a_dqp, *a_dkp, *a_dvp, *a_dP, *a_dT;
    float *gq[9], *gk[4], *g_h, *g_hr;       /* [NQ][E], [HW][E], [NQ][mlp] */
    float *g_t1, *g_ua, *g_ub, *g_t2, *g_u4, *g_up, *g_hyp, *g_v[4], *g_pe, *g_tok0;
    float *buf;
    /* set-level parallelism. A worker is a full one-set context; wk[0] is the handle itself.
     * gset: the worker's parameter gradients of its current set (L->total floats). */
    float *gset;
    const float *params_in;
    float gauss_in[1024];
    const float *embt; /* the handle's [HW][E] transpose of the embedding, read by src0 */
    int rc;
    int nw;
    struct ts_dgf *wk[TS_DGF_MAXW];
    float *embt_buf; /* handle: [HW][E] */
    float *sacc;     /* handle: [HW][E] d src0 summed over the sets, in set order */
    double *mdacc;   /* handle: mask-path gradients summed in set order */
    ts_dgf_grad_hook hook; /* output-gradient hook (copied into the workers), its context */
    void *hook_ctx;
    int set;               /* the set this worker back-propagates (the hook's argument) */
};

static float *FP(const ts_dgf *d, const double *p, float *base) {
    return base + (p - d->dummy);
}

static fatt fatt_of(const ts_dgf *d, const ts_g_attn *a, float *base) {
    return (fatt){a->E, a->I, a->heads, FP(d, a->q_w, base), FP(d, a->q_b, base),
                  FP(d, a->k_w, base), FP(d, a->k_b, base), FP(d, a->v_w, base),
                  FP(d, a->v_b, base), FP(d, a->o_w, base), FP(d, a->o_b, base)};
}

static void fnet_of(const ts_dgf *d, float *base, fnet *f) {
    const net *n = &d->off;
    for (int k = 0; k < 4; k++) f->pemb[k] = FP(d, n->pemb[k], base);
    f->nap = FP(d, n->nap, base), f->nomask = FP(d, n->nomask, base);
    double *md[10] = {n->c0_w, n->c0_b, n->n1_w, n->n1_b, n->c3_w,
                      n->c3_b, n->n4_w, n->n4_b, n->c6_w, n->c6_b};
    for (int k = 0; k < 10; k++) f->md[k] = FP(d, md[k], base);
    for (int l = 0; l < 2; l++) {
        const ts_g_twoway *t = &n->layer[l];
        ftw *o = &f->layer[l];
        o->skip = t->skip_first_layer_pe;
        o->sa = fatt_of(d, &t->self_attn, base);
        o->t2i = fatt_of(d, &t->t2i, base);
        o->i2t = fatt_of(d, &t->i2t, base);
        o->n1w = FP(d, t->n1_w, base), o->n1b = FP(d, t->n1_b, base);
        o->n2w = FP(d, t->n2_w, base), o->n2b = FP(d, t->n2_b, base);
        o->n3w = FP(d, t->n3_w, base), o->n3b = FP(d, t->n3_b, base);
        o->n4w = FP(d, t->n4_w, base), o->n4b = FP(d, t->n4_b, base);
        o->l1w = FP(d, t->l1_w, base), o->l1b = FP(d, t->l1_b, base);
        o->l2w = FP(d, t->l2_w, base), o->l2b = FP(d, t->l2_b, base);
    }
    f->fin = fatt_of(d, &n->fin, base);
    f->nfw = FP(d, n->nf_w, base), f->nfb = FP(d, n->nf_b, base);
    f->iou_tok = FP(d, n->iou_tok, base), f->mask_tok = FP(d, n->mask_tok, base);
    f->up0w = FP(d, n->up0_w, base), f->up0b = FP(d, n->up0_b, base);
    f->upnw = FP(d, n->upn_w, base), f->upnb = FP(d, n->upn_b, base);
    f->up3w = FP(d, n->up3_w, base), f->up3b = FP(d, n->up3_b, base);
    for (int t = 0; t < 4; t++)
        for (int k = 0; k < 6; k++) f->hyp[t][k] = FP(d, n->hyp[t][k], base);
    for (int k = 0; k < 6; k++) f->iouh[k] = FP(d, n->iouh[k], base);
}

static void dgf_free_one(ts_dgf *d) {
    free(d->dummy);
    free(d->dbuf);
    ts_free_aligned(d->buf);
    ts_free_aligned(d->gset);
    free(d);
}

void ts_dgf_free(ts_dgf *d) {
    if (!d) return;
    for (int w = 1; w < d->nw; w++) dgf_free_one(d->wk[w]);
    ts_free_aligned(d->embt_buf);
    ts_free_aligned(d->sacc);
    free(d->mdacc);
    dgf_free_one(d);
}

/* A bump allocator run twice: counting (base NULL), then carving. */
typedef struct {
    float *base;
    size_t used;
} arena;

static float *take_f(arena *a, size_t n) {
    float *p = a->base ? a->base + a->used : NULL;
    a->used += (n + 15) & ~(size_t)15; /* 64-byte steps */
    return p;
}


static void carve(ts_dgf *d, arena *a) {
    const size_t E = (size_t)d->E, HW = (size_t)d->HW, I = (size_t)d->I, h = (size_t)d->heads;
    const size_t Q = NQ_MAX, P = (size_t)d->P, E4 = (size_t)d->E4, E8 = (size_t)d->E8;
    const size_t ML = (size_t)d->mlp, V = E > (size_t)d->ih ? E : (size_t)d->ih;
    /* token -> image kp, vp: the projections, or A and PV when folded (attn_fwd_folded) */
    const size_t FK = HW * I > h * Q * E ? HW * I : h * Q * E;
    d->dpe = take_f(a, HW * E);
    d->tok0 = take_f(a, Q * E);
    d->src0 = take_f(a, HW * E);
    for (int l = 0; l < 2; l++) {
        ltape *t = &d->lt[l];
        t->sa = (atape){take_f(a, Q * E), take_f(a, Q * E), take_f(a, Q * E),
                        take_f(a, h * Q * Q), take_f(a, Q * E)};
        t->t2i = (atape){take_f(a, Q * I), take_f(a, FK), take_f(a, FK),
                         take_f(a, h * Q * HW), take_f(a, Q * I)};
        t->i2t = (atape){take_f(a, FK), take_f(a, Q * I), take_f(a, Q * I),
                         take_f(a, h * HW * Q), take_f(a, FK)};
        t->qin = take_f(a, Q * E), t->r1 = take_f(a, Q * E), t->q1 = take_f(a, Q * E);
        t->qin2 = take_f(a, Q * E), t->kin2 = take_f(a, HW * E);
        t->r2 = take_f(a, Q * E), t->q2 = take_f(a, Q * E);
        t->h = take_f(a, Q * ML), t->hr = take_f(a, Q * ML);
        t->r3 = take_f(a, Q * E), t->q3 = take_f(a, Q * E), t->kin4 = take_f(a, Q * E);
        t->r4 = take_f(a, HW * E);
    }
    d->q1o = take_f(a, Q * E), d->k1o = take_f(a, HW * E);
    d->q2o = take_f(a, Q * E), d->k2o = take_f(a, HW * E);
    d->fa = (atape){take_f(a, Q * I), take_f(a, FK), take_f(a, FK),
                    take_f(a, h * Q * HW), take_f(a, Q * I)};
    d->fq = take_f(a, Q * E), d->fk = take_f(a, HW * E);
    d->fr = take_f(a, Q * E), d->hs = take_f(a, Q * E);
    d->t1 = take_f(a, HW * 4 * E4);
    d->u1 = take_f(a, 4 * HW * E4), d->u2 = take_f(a, 4 * HW * E4), d->u3 = take_f(a, 4 * HW * E4);
    d->t2 = take_f(a, 4 * HW * 4 * E8);
    d->u4 = take_f(a, P * E8), d->up = take_f(a, P * E8);
    for (int t = 0; t < 5; t++)
        for (int k = 0; k < 4; k++) d->hh[t][k] = take_f(a, V);
    d->hyp = take_f(a, 4 * E8), d->iou = take_f(a, 4), d->z = take_f(a, 4 * P);
    size_t trn = HW * E;
    if (P * E8 > trn) trn = P * E8;
    if (4 * P > trn) trn = 4 * P;
    if (Q * ML > trn) trn = Q * ML;
    if ((E + h) * Q > trn) trn = (E + h) * Q; /* attn_bwd_folded_i2t */
    d->tr = take_f(a, trn);
    size_t ai = (HW > Q ? HW : Q) * (I > E ? I : E);
    if (ai < FK) ai = FK;
    d->a_do = take_f(a, ai), d->a_dqp = take_f(a, ai), d->a_dkp = take_f(a, ai);
    d->a_dvp = take_f(a, ai);
    d->a_dP = take_f(a, h * Q * (HW > Q ? HW : Q)), d->a_dT = take_f(a, h * Q * (HW > Q ? HW : Q));
    for (int k = 0; k < 9; k++) d->gq[k] = take_f(a, Q * E);
    for (int k = 0; k < 4; k++) d->gk[k] = take_f(a, HW * E);
    d->g_h = take_f(a, Q * ML), d->g_hr = take_f(a, Q * ML);
    d->g_t1 = take_f(a, HW * 4 * E4);
    d->g_ua = take_f(a, 4 * HW * E4), d->g_ub = take_f(a, 4 * HW * E4);
    d->g_t2 = take_f(a, 4 * HW * 4 * E8);
    d->g_u4 = take_f(a, P * E8), d->g_up = take_f(a, P * E8);
    d->g_hyp = take_f(a, 4 * E8);
    for (int k = 0; k < 4; k++) d->g_v[k] = take_f(a, V);
    d->g_pe = take_f(a, Q * E), d->g_tok0 = take_f(a, Q * E);
    d->m5f = take_f(a, HW * (size_t)d->mc), d->g_m5f = take_f(a, HW * (size_t)d->mc);
    d->wp0 = take_f(a, E * 4 * E4), d->wp3 = take_f(a, E4 * 4 * E8);
    d->gwp = take_f(a, E * 4 * E4 > E4 * 4 * E8 ? E * 4 * E4 : E4 * 4 * E8);
}

/* One one-set context (the handle, or a worker). */
static int dgf_new(const ts_dg_layout *L, const float *params, const float *gauss,
                   ts_dgf **out) {
    *out = NULL;
    const ts_dg_config *c = &L->c;
    ts_dgf *d = ts_calloc(1, sizeof *d);
    if (!d) return TINYSAM_E_NOMEM;
    d->L = L;
    d->E = c->E, d->H = c->H, d->W = c->W, d->HW = c->H * c->W, d->P = 16 * d->HW;
    d->E4 = c->E / 4, d->E8 = c->E / 8, d->mc = c->mask_chans, d->ih = c->iou_hidden;
    d->I = c->E / c->cross_down, d->heads = c->heads, d->mlp = c->mlp;
    /* offsets: the double binder on a block that is never touched (calloc: no pages) */
    d->dummy = ts_calloc(L->total, sizeof(double));
    if (!d->dummy) {
        free(d);
        return TINYSAM_E_NOMEM;
    }
    bind(L, d->dummy, &d->off);
    fnet_of(d, (float *)params, &d->p);
    arena a = {0};
    carve(d, &a);
    d->buf = ts_malloc_aligned(sizeof(float) * a.used);
    d->gset = ts_malloc_aligned(sizeof(float) * L->total);
    d->params_in = params;
    const size_t HW = (size_t)d->HW, mc = (size_t)d->mc;
    const double *md[10] = {d->off.c0_w, d->off.c0_b, d->off.n1_w, d->off.n1_b, d->off.c3_w,
                            d->off.c3_b, d->off.n4_w, d->off.n4_b, d->off.c6_w, d->off.c6_b};
    size_t nd = 0;
    for (int k = 0; k < 10; k++) {
        const double *nxt = k < 9 ? md[k + 1] : NULL;
        /* the mask tensors are consecutive in the layout except c6_b -> no_mask */
        d->mdn[k] = nxt ? (size_t)(nxt - md[k]) : (size_t)d->E;
        nd += 2 * d->mdn[k];
    }
    nd += (size_t)d->P + 6 * mc * HW + 6 * mc * HW;
    d->dbuf = ts_calloc(nd, sizeof(double));
    if (!d->buf || !d->dbuf || !d->gset) {
        dgf_free_one(d);
        return TINYSAM_E_NOMEM;
    }
    a = (arena){.base = d->buf};
    carve(d, &a);
    double *q = d->dbuf;
    for (int k = 0; k < 10; k++) d->mdp[k] = q, q += d->mdn[k];
    for (int k = 0; k < 10; k++) d->mdg[k] = q, q += d->mdn[k];
    d->mk = q, q += d->P;
    double **m[6] = {&d->m0, &d->m1, &d->m2, &d->m3, &d->m4, &d->m5};
    for (int k = 0; k < 6; k++) *m[k] = q, q += mc * HW;
    for (int k = 0; k < 6; k++) d->gm[k] = q, q += mc * HW;
    /* dense PE, pixel-major */
    double *row = malloc(sizeof(double) * d->E);
    if (!row) {
        dgf_free_one(d);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    if (d->E > 1024) {
        free(row);
        dgf_free_one(d);
        return ts_error(TINYSAM_E_ARG, "decoder_grad: embedding too wide");
    }
    for (int k = 0; k < d->E; k++) d->gauss_f[k] = gauss[k], d->gauss_in[k] = gauss[k];
    for (int i = 0; i < c->H; i++)
        for (int j = 0; j < c->W; j++) {
            pe_encode(d->gauss_f, d->E, (j + 0.5) / c->W, (i + 0.5) / c->H, row);
            for (int e = 0; e < d->E; e++)
                d->dpe[((size_t)i * c->W + j) * d->E + e] = (float)row[e];
        }
    free(row);
    *out = d;
    return 0;
}

/* Workers up to n (at most TS_DGF_MAXW); the handle is worker 0. */
static int dgf_grow(ts_dgf *d, int n) {
    if (n > TS_DGF_MAXW) n = TS_DGF_MAXW;
    while (d->nw < n) {
        ts_dgf *w = NULL;
        int rc = dgf_new(d->L, d->params_in, d->gauss_in, &w);
        if (rc) return rc;
        w->embt = d->embt_buf;
        d->wk[d->nw++] = w;
    }
    return 0;
}

int ts_dgf_create(const ts_dg_layout *L, const float *params, const float *gauss,
                  ts_dgf **out) {
    *out = NULL;
    ts_dgf *d = NULL;
    int rc = dgf_new(L, params, gauss, &d);
    if (rc) return rc;
    d->nw = 1;
    d->wk[0] = d;
    const size_t IE = (size_t)d->HW * d->E;
    size_t nmd = 0;
    for (int k = 0; k < 10; k++) nmd += d->mdn[k];
    d->embt_buf = ts_malloc_aligned(sizeof(float) * IE);
    d->sacc = ts_malloc_aligned(sizeof(float) * IE);
    d->mdacc = malloc(sizeof(double) * nmd);
    if (!d->embt_buf || !d->sacc || !d->mdacc) {
        ts_dgf_free(d);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    d->embt = d->embt_buf;
    if ((rc = dgf_grow(d, ts_num_threads()))) {
        ts_dgf_free(d);
        return rc;
    }
    *out = d;
    return 0;
}

/* ---- float building blocks ---------------------------------------------------------------- */

static void zf(float *x, size_t n) { memset(x, 0, sizeof(float) * n); }

/* y[M][N] = x[M][K] W^T + b */
static void lin_f(const float *x, int M, int K, const float *W, const float *b, int N, float *y) {
    ts_gemm_ex(M, N, K, x, K, W, K, 1, y, N, 0.0f, b, TS_ACT_NONE);
}

/* db[n] += sum over the M rows of dy[m][n], row by row (contiguous) in double. */
static void colsum_f(const float *dy, int M, int N, float *db) {
    double acc[1024];
    for (int n0 = 0; n0 < N; n0 += 1024) {
        const int nn = N - n0 < 1024 ? N - n0 : 1024;
        for (int n = 0; n < nn; n++) acc[n] = 0;
        for (int m = 0; m < M; m++) {
            const float *r = dy + (size_t)m * N + n0;
            for (int n = 0; n < nn; n++) acc[n] += r[n];
        }
        for (int n = 0; n < nn; n++) db[n0 + n] += (float)acc[n];
    }
}

/* dx += dy W; dW += dy^T x; db += colsum dy (tr: N*M floats). */
static void lin_bwd_f(const float *x, int M, int K, const float *W, int N, const float *dy,
                      float *dx, float *dW, float *db, float *tr) {
    if (dx) ts_gemm(M, K, N, dy, N, W, K, 0, dx, K, 1.0f);
    if (dW) {
        ts_transpose_serial(dy, N, M, N, tr, M);
        ts_gemm(N, K, M, tr, M, x, K, 0, dW, K, 1.0f);
    }
    if (db) colsum_f(dy, M, N, db);
}

/* The output-gradient hook (ts_dgf_set_grad_hook) for the layer whose weight is W (a tensor
 * of the parameters), or for `name` when W is NULL. */
static void hook_out(const ts_dgf *d, const float *W, const char *name, const float *dy,
                     size_t rows, int cols) {
    if (!d->hook) return;
    char pre[TS_DG_NAME];
    if (W) {
        const ptrdiff_t off = W - d->params_in;
        const ts_dg_tensor *t = NULL;
        for (int i = 0; i < d->L->n && !t; i++)
            if ((ptrdiff_t)d->L->t[i].off == off) t = &d->L->t[i];
        const size_t len = t ? strlen(t->name) : 0;
        if (len < 8 || strcmp(t->name + len - 7, ".weight")) return;
        snprintf(pre, sizeof pre, "%.*s", (int)(len - 7), t->name);
        name = pre;
    }
    d->hook(d->hook_ctx, d->set, name, dy, rows, cols);
}

/* The AVX-512 element-wise kernels (decoder_grad_avx512.c) when nn runs AVX-512. */
static int simd512(int C) { return C % 16 == 0 && !strcmp(ts_nn_isa_name(), "avx512"); }

/* Row LayerNorm, statistics in double. */
static void ln_f(const float *x, int M, int C, const float *w, const float *b, double eps,
                 float *y) {
    if (simd512(C)) {
        ts_dgf_ln_fwd_avx512(x, M, C, w, b, eps, y);
        return;
    }
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * C;
        double mu = 0, var = 0;
        for (int c = 0; c < C; c++) mu += r[c];
        mu /= C;
        for (int c = 0; c < C; c++) var += (r[c] - mu) * (r[c] - mu);
        double rs = 1.0 / sqrt(var / C + eps);
        for (int c = 0; c < C; c++)
            y[(size_t)m * C + c] = (float)((r[c] - mu) * rs) * w[c] + b[c];
    }
}

static void ln_bwd_f(const float *x, int M, int C, const float *w, double eps, const float *dy,
                     float *dx, float *dw, float *db) {
    if (simd512(C)) {
        ts_dgf_ln_bwd_avx512(x, M, C, w, eps, dy, dx, dw, db);
        return;
    }
    for (int m = 0; m < M; m++) {
        const float *r = x + (size_t)m * C, *g = dy + (size_t)m * C;
        double mu = 0, var = 0, sg = 0, sgx = 0;
        for (int c = 0; c < C; c++) mu += r[c];
        mu /= C;
        for (int c = 0; c < C; c++) var += (r[c] - mu) * (r[c] - mu);
        double rs = 1.0 / sqrt(var / C + eps);
        for (int c = 0; c < C; c++) {
            double xh = (r[c] - mu) * rs, gw = (double)g[c] * w[c];
            sg += gw, sgx += gw * xh;
            if (dw) dw[c] += (float)(g[c] * xh);
            if (db) db[c] += g[c];
        }
        sg /= C, sgx /= C;
        for (int c = 0; c < C; c++) {
            double xh = (r[c] - mu) * rs;
            dx[(size_t)m * C + c] += (float)(rs * ((double)g[c] * w[c] - sg - xh * sgx));
        }
    }
}

static void gelu_bwd_f(const float *x, size_t n, const float *dy, float *dx) {
    if (simd512(16)) {
        ts_dgf_gelu_bwd_avx512(x, n, dy, dx);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        double v = x[i];
        double cdf = 0.5 * (1.0 + erf(v * 0.70710678118654752));
        double pdf = 0.39894228040143267794 * exp(-0.5 * v * v);
        dx[i] = (float)(dy[i] * (cdf + v * pdf));
    }
}

static void add_f(float *y, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = a[i] + b[i];
}

static void acc_f(float *y, const float *a, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += a[i];
}

/* A few query rows against many keys (tokens -> image): the key-side operand of the per-head
 * products is transposed once, so that ts_gemm reads it in place instead of packing it for
 * every head. */
/* A few query tokens against the image (token -> image attention): the key and value
 * projections are folded into the query side, as the inference decoder does, so no
 * Nk x I image-side projection is formed forward or backward. Per head h (Wk_h, Wv_h: the
 * head's dh rows of the projection weights):
 *   A_h = scale qp_h Wk_h (Nq x E), S_h = A_h k^T (the key bias adds a per-row constant,
 *   which the softmax removes: its gradient is exactly zero), P_h = softmax(S_h),
 *   PV_h = P_h v (Nq x E), o_h = PV_h Wv_h^T + bv_h (the rows of P_h sum to 1).
 * All heads' rows are stacked (row h*Nq + i), so the image-side products are single GEMMs.
 * On the tape, kp holds A (heads*Nq x E) and vp holds PV. */
/* Folded when it costs fewer multiply-adds (stacked rows nh*Nq against the I columns of the
 * two projections: up to about 16 tokens with SAM's shapes), and always on small maps (then
 * either way is cheap, and the small-configuration tests check this path). */
static int folded(const fatt *a, int Nq, int Nk) {
    const double fold = (double)a->heads * Nq * a->E, proj = (double)a->I * (a->E + Nq);
    return Nq < Nk && (fold <= proj || Nk < 256);
}

static void attn_fwd_folded(const fatt *a, atape *t, const float *q, int Nq, const float *k,
                            const float *v, int Nk, float *y) {
    const int E = a->E, I = a->I, nh = a->heads, dh = I / nh, R = nh * Nq;
    const float scale = (float)(1.0 / sqrt((double)dh));
    float *A = t->kp, *PV = t->vp;
    lin_f(q, Nq, E, a->qw, a->qb, I, t->qp);
    for (int h = 0; h < nh; h++)
        ts_gemm(Nq, E, dh, t->qp + h * dh, I, a->kw + (size_t)h * dh * E, E, 0,
                A + (size_t)h * Nq * E, E, 0.0f);
    for (size_t i = 0; i < (size_t)R * E; i++) A[i] *= scale;
    ts_gemm(R, Nk, E, A, E, k, E, 1, t->P, Nk, 0.0f);
    ts_softmax_rows(t->P, R, Nk);
    ts_gemm(R, E, Nk, t->P, Nk, v, E, 0, PV, E, 0.0f);
    for (int h = 0; h < nh; h++)
        ts_gemm_ex(Nq, dh, E, PV + (size_t)h * Nq * E, E, a->vw + (size_t)h * dh * E, E, 1,
                   t->o + h * dh, I, 0.0f, a->vb + h * dh, TS_ACT_NONE);
    lin_f(t->o, Nq, I, a->ow, a->ob, E, y);
}

/* Scratch: a_do, a_dqp, a_dkp (dPV), a_dvp (dA), a_dP, a_dT (heads*Nq x Nk), tr. */
static void attn_bwd_folded(ts_dgf *d, const fatt *a, const fatt *g, const atape *t,
                            const float *q, int Nq, const float *k, const float *v, int Nk,
                            const float *dy, float *dq, float *dk, float *dv) {
    const int E = a->E, I = a->I, nh = a->heads, dh = I / nh, R = nh * Nq;
    const float scale = (float)(1.0 / sqrt((double)dh));
    const float *A = t->kp, *PV = t->vp;
    float *dO = d->a_do, *dqp = d->a_dqp, *dPV = d->a_dkp, *dA = d->a_dvp;
    float *dP = d->a_dP, *dT = d->a_dT, *sm = d->tr;
    zf(dO, (size_t)Nq * I);
    hook_out(d, a->ow, NULL, dy, (size_t)Nq, E);
    lin_bwd_f(t->o, Nq, I, a->ow, E, dy, dO, g ? g->ow : NULL, g ? g->ob : NULL, d->tr);
    for (int h = 0; h < nh; h++) { /* o_h = PV_h Wv_h^T + bv_h */
        ts_gemm(Nq, E, dh, dO + h * dh, I, a->vw + (size_t)h * dh * E, E, 0,
                dPV + (size_t)h * Nq * E, E, 0.0f);
        if (g) {
            ts_transpose_serial(dO + h * dh, I, Nq, dh, sm, Nq);
            ts_gemm(dh, E, Nq, sm, Nq, PV + (size_t)h * Nq * E, E, 0,
                    g->vw + (size_t)h * dh * E, E, 1.0f);
        }
    }
    if (g) colsum_f(dO, Nq, I, g->vb);
    /* PV = P v */
    ts_gemm(R, Nk, E, dPV, E, v, E, 1, dP, Nk, 0.0f);
    ts_transpose_serial(t->P, Nk, R, Nk, dT, R);
    ts_gemm(Nk, E, R, dT, R, dPV, E, 0, dv, E, 1.0f);
    /* softmax */
    for (int i = 0; i < R; i++) {
        float *gr = dP + (size_t)i * Nk;
        const float *pr = t->P + (size_t)i * Nk;
        double s = 0;
        for (int j = 0; j < Nk; j++) s += (double)gr[j] * pr[j];
        for (int j = 0; j < Nk; j++) gr[j] = pr[j] * (gr[j] - (float)s);
    }
    /* S = A k^T */
    ts_gemm(R, E, Nk, dP, Nk, k, E, 0, dA, E, 0.0f);
    ts_transpose_serial(dP, Nk, R, Nk, dT, R);
    ts_gemm(Nk, E, R, dT, R, A, E, 0, dk, E, 1.0f);
    /* A_h = scale qp_h Wk_h */
    for (size_t i = 0; i < (size_t)R * E; i++) dA[i] *= scale;
    for (int h = 0; h < nh; h++) {
        const float *dAh = dA + (size_t)h * Nq * E;
        ts_gemm(Nq, dh, E, dAh, E, a->kw + (size_t)h * dh * E, E, 1, dqp + h * dh, I, 0.0f);
        if (g) {
            ts_transpose_serial(t->qp + h * dh, I, Nq, dh, sm, Nq);
            ts_gemm(dh, E, Nq, sm, Nq, dAh, E, 0, g->kw + (size_t)h * dh * E, E, 1.0f);
        }
    }
    hook_out(d, a->qw, NULL, dqp, (size_t)Nq, I);
    lin_bwd_f(q, Nq, E, a->qw, I, dqp, dq, g ? g->qw : NULL, g ? g->qb : NULL, d->tr);
}

/* Image -> token attention (Nq image queries, a few token keys), folded the other way:
 *   BT_h = scale kp_h Wq_h (Nk x E), c_h = scale kp_h bq_h (Nk): S_h = x BT_h^T + c_h;
 *   VW_h = vp_h Wo_h^T (Nk x E, Wo_h: the head's dh columns of Wo): y = sum_h P_h VW_h + bo,
 * so neither the Nq x I query projection nor the Nq x I context is formed. Heads stacked as
 * columns h*Nk + j of S and P (Nq x nh*Nk: a softmax over each group of Nk). On the tape, qp
 * holds BT, o holds VW, kp and vp the token projections. */
static void attn_fwd_folded_i2t(const fatt *a, atape *t, const float *x, int Nq, const float *k,
                                const float *v, int Nk, float *y, float *c) {
    const int E = a->E, I = a->I, nh = a->heads, dh = I / nh, R = nh * Nk;
    const float scale = (float)(1.0 / sqrt((double)dh));
    float *BT = t->qp, *VW = t->o;
    lin_f(k, Nk, E, a->kw, a->kb, I, t->kp);
    lin_f(v, Nk, E, a->vw, a->vb, I, t->vp);
    for (int h = 0; h < nh; h++) {
        ts_gemm(Nk, E, dh, t->kp + h * dh, I, a->qw + (size_t)h * dh * E, E, 0,
                BT + (size_t)h * Nk * E, E, 0.0f);
        ts_gemm(Nk, E, dh, t->vp + h * dh, I, a->ow + h * dh, I, 1, VW + (size_t)h * Nk * E, E,
                0.0f);
        for (int j = 0; j < Nk; j++) {
            double acc = 0;
            for (int e = 0; e < dh; e++)
                acc += (double)t->kp[(size_t)j * I + h * dh + e] * a->qb[h * dh + e];
            c[h * Nk + j] = (float)acc * scale;
        }
    }
    for (size_t i = 0; i < (size_t)R * E; i++) BT[i] *= scale;
    ts_gemm_ex(Nq, R, E, x, E, BT, E, 1, t->P, R, 0.0f, c, TS_ACT_NONE);
    ts_softmax_rows(t->P, Nq * nh, Nk);
    ts_gemm_ex(Nq, E, R, t->P, R, VW, E, 0, y, E, 0.0f, a->ob, TS_ACT_NONE);
}

/* Scratch: a_dP (dS), a_dT, a_dkp (dVW), a_dvp (dBT), a_dqp (dkp), a_do (dvp), tr. */
static void attn_bwd_folded_i2t(ts_dgf *d, const fatt *a, const fatt *g, const atape *t,
                                const float *x, int Nq, const float *k, const float *v, int Nk,
                                const float *dy, float *dx, float *dk, float *dv) {
    const int E = a->E, I = a->I, nh = a->heads, dh = I / nh, R = nh * Nk;
    const float scale = (float)(1.0 / sqrt((double)dh));
    const float *BT = t->qp, *VW = t->o, *P = t->P;
    float *dP = d->a_dP, *dT = d->a_dT, *dVW = d->a_dkp, *dBT = d->a_dvp;
    float *dkp = d->a_dqp, *dvp = d->a_do, *sm = d->tr, *gc = d->tr + (size_t)E * NQ_MAX;
    if (g) colsum_f(dy, Nq, E, g->ob);
    /* y = P VW + bo */
    ts_gemm(Nq, R, E, dy, E, VW, E, 1, dP, R, 0.0f);
    ts_transpose_serial(P, R, Nq, R, dT, Nq);
    ts_gemm(R, E, Nq, dT, Nq, dy, E, 0, dVW, E, 0.0f);
    for (int h = 0; h < nh; h++) { /* VW_h = vp_h Wo_h^T */
        const float *dVWh = dVW + (size_t)h * Nk * E;
        ts_gemm(Nk, dh, E, dVWh, E, a->ow + h * dh, I, 0, dvp + h * dh, I, 0.0f);
        if (g) {
            ts_transpose_serial(dVWh, E, Nk, E, sm, Nk);
            ts_gemm(E, dh, Nk, sm, Nk, t->vp + h * dh, I, 0, g->ow + h * dh, I, 1.0f);
        }
    }
    /* softmax over each group of Nk */
    for (size_t r = 0; r < (size_t)Nq * nh; r++) {
        float *gr = dP + r * Nk;
        const float *pr = P + r * Nk;
        double s = 0;
        for (int j = 0; j < Nk; j++) s += (double)gr[j] * pr[j];
        for (int j = 0; j < Nk; j++) gr[j] = pr[j] * (gr[j] - (float)s);
    }
    /* S = x BT^T + c */
    for (int r = 0; r < R; r++) gc[r] = 0.0f;
    colsum_f(dP, Nq, R, gc);
    ts_gemm(Nq, E, R, dP, R, BT, E, 0, dx, E, 1.0f);
    ts_transpose_serial(dP, R, Nq, R, dT, Nq);
    ts_gemm(R, E, Nq, dT, Nq, x, E, 0, dBT, E, 0.0f);
    for (size_t i = 0; i < (size_t)R * E; i++) dBT[i] *= scale;
    for (int r = 0; r < R; r++) gc[r] *= scale;
    for (int h = 0; h < nh; h++) { /* BT_h = scale kp_h Wq_h, c_h = scale kp_h bq_h */
        const float *dBTh = dBT + (size_t)h * Nk * E;
        ts_gemm(Nk, dh, E, dBTh, E, a->qw + (size_t)h * dh * E, E, 1, dkp + h * dh, I, 0.0f);
        for (int j = 0; j < Nk; j++)
            for (int e = 0; e < dh; e++)
                dkp[(size_t)j * I + h * dh + e] += gc[h * Nk + j] * a->qb[h * dh + e];
        if (g) {
            ts_transpose_serial(t->kp + h * dh, I, Nk, dh, sm, Nk);
            ts_gemm(dh, E, Nk, sm, Nk, dBTh, E, 0, g->qw + (size_t)h * dh * E, E, 1.0f);
            for (int e = 0; e < dh; e++) {
                double acc = 0;
                for (int j = 0; j < Nk; j++)
                    acc += (double)gc[h * Nk + j] * t->kp[(size_t)j * I + h * dh + e];
                g->qb[h * dh + e] += (float)acc;
            }
        }
    }
    hook_out(d, a->kw, NULL, dkp, (size_t)Nk, I);
    hook_out(d, a->vw, NULL, dvp, (size_t)Nk, I);
    lin_bwd_f(k, Nk, E, a->kw, I, dkp, dk, g ? g->kw : NULL, g ? g->kb : NULL, d->tr);
    lin_bwd_f(v, Nk, E, a->vw, I, dvp, dv, g ? g->vw : NULL, g ? g->vb : NULL, d->tr);
}

/* c: heads * NQ_MAX floats of scratch. */
static void attn_fwd_f(const fatt *a, atape *t, const float *q, int Nq, const float *k,
                       const float *v, int Nk, float *y, float *c) {
    if (folded(a, Nq, Nk)) {
        attn_fwd_folded(a, t, q, Nq, k, v, Nk, y);
        return;
    }
    if (folded(a, Nk, Nq)) {
        attn_fwd_folded_i2t(a, t, q, Nq, k, v, Nk, y, c);
        return;
    }
    const int I = a->I, dh = I / a->heads;
    const float scale = (float)(1.0 / sqrt((double)dh));
    lin_f(q, Nq, a->E, a->qw, a->qb, I, t->qp);
    lin_f(k, Nk, a->E, a->kw, a->kb, I, t->kp);
    lin_f(v, Nk, a->E, a->vw, a->vb, I, t->vp);
    for (int h = 0; h < a->heads; h++) {
        float *S = t->P + (size_t)h * Nq * Nk;
        ts_gemm(Nq, Nk, dh, t->qp + h * dh, I, t->kp + h * dh, I, 1, S, Nk, 0.0f);
        for (size_t i = 0; i < (size_t)Nq * Nk; i++) S[i] *= scale;
        ts_softmax_rows(S, Nq, Nk);
        ts_gemm(Nq, dh, Nk, S, Nk, t->vp + h * dh, I, 0, t->o + h * dh, I, 0.0f);
    }
    lin_f(t->o, Nq, I, a->ow, a->ob, a->E, y);
}

/* Accumulates into dq, dk, dv (may alias each other) and the gradients g (may be NULL). */
static void attn_bwd_f(ts_dgf *d, const fatt *a, const fatt *g, const atape *t, const float *q,
                       int Nq, const float *k, const float *v, int Nk, const float *dy,
                       float *dq, float *dk, float *dv) {
    if (folded(a, Nq, Nk)) {
        attn_bwd_folded(d, a, g, t, q, Nq, k, v, Nk, dy, dq, dk, dv);
        return;
    }
    if (folded(a, Nk, Nq)) {
        attn_bwd_folded_i2t(d, a, g, t, q, Nq, k, v, Nk, dy, dq, dk, dv);
        return;
    }
    const int I = a->I, dh = I / a->heads;
    const float scale = (float)(1.0 / sqrt((double)dh));
    float *dO = d->a_do, *dqp = d->a_dqp, *dkp = d->a_dkp, *dvp = d->a_dvp;
    float *dP = d->a_dP, *dT = d->a_dT;
    zf(dO, (size_t)Nq * I);
    hook_out(d, a->ow, NULL, dy, (size_t)Nq, a->E);
    lin_bwd_f(t->o, Nq, I, a->ow, a->E, dy, dO, g ? g->ow : NULL, g ? g->ob : NULL, d->tr);
    for (int h = 0; h < a->heads; h++) {
        const float *Ph = t->P + (size_t)h * Nq * Nk;
        ts_gemm(Nq, Nk, dh, dO + h * dh, I, t->vp + h * dh, I, 1, dP, Nk, 0.0f);
        ts_transpose_serial(Ph, Nk, Nq, Nk, dT, Nq);
        ts_gemm(Nk, dh, Nq, dT, Nq, dO + h * dh, I, 0, dvp + h * dh, I, 0.0f);
        for (int i = 0; i < Nq; i++) {
            float *gr = dP + (size_t)i * Nk;
            const float *pr = Ph + (size_t)i * Nk;
            double s = 0;
            for (int j = 0; j < Nk; j++) s += (double)gr[j] * pr[j];
            for (int j = 0; j < Nk; j++) gr[j] = pr[j] * (gr[j] - (float)s) * scale;
        }
        ts_gemm(Nq, dh, Nk, dP, Nk, t->kp + h * dh, I, 0, dqp + h * dh, I, 0.0f);
        ts_transpose_serial(dP, Nk, Nq, Nk, dT, Nq);
        ts_gemm(Nk, dh, Nq, dT, Nq, t->qp + h * dh, I, 0, dkp + h * dh, I, 0.0f);
    }
    hook_out(d, a->qw, NULL, dqp, (size_t)Nq, I);
    hook_out(d, a->kw, NULL, dkp, (size_t)Nk, I);
    hook_out(d, a->vw, NULL, dvp, (size_t)Nk, I);
    lin_bwd_f(q, Nq, a->E, a->qw, I, dqp, dq, g ? g->qw : NULL, g ? g->qb : NULL, d->tr);
    lin_bwd_f(k, Nk, a->E, a->kw, I, dkp, dk, g ? g->kw : NULL, g ? g->kb : NULL, d->tr);
    lin_bwd_f(v, Nk, a->E, a->vw, I, dvp, dv, g ? g->vw : NULL, g ? g->vb : NULL, d->tr);
}

static void twoway_fwd_f(const ts_dgf *d, const ftw *p, ltape *t, const float *q, int Nq,
                         const float *k, int Nk, const float *qpe, const float *kpe, float *qo,
                         float *ko) {
    const int E = d->E, ML = d->mlp;
    const size_t QE = (size_t)Nq * E, KE = (size_t)Nk * E;
    if (p->skip) {
        attn_fwd_f(&p->sa, &t->sa, q, Nq, q, q, Nq, t->r1, d->tr);
    } else {
        add_f(t->qin, q, qpe, QE);
        attn_fwd_f(&p->sa, &t->sa, t->qin, Nq, t->qin, q, Nq, t->r1, d->tr);
        acc_f(t->r1, q, QE);
    }
    ln_f(t->r1, Nq, E, p->n1w, p->n1b, LN_EPS, t->q1);
    add_f(t->qin2, t->q1, qpe, QE);
    add_f(t->kin2, k, kpe, KE);
    attn_fwd_f(&p->t2i, &t->t2i, t->qin2, Nq, t->kin2, k, Nk, t->r2, d->tr);
    acc_f(t->r2, t->q1, QE);
    ln_f(t->r2, Nq, E, p->n2w, p->n2b, LN_EPS, t->q2);
    lin_f(t->q2, Nq, E, p->l1w, p->l1b, ML, t->h);
    for (size_t i = 0; i < (size_t)Nq * ML; i++) t->hr[i] = t->h[i] > 0 ? t->h[i] : 0.0f;
    lin_f(t->hr, Nq, ML, p->l2w, p->l2b, E, t->r3);
    acc_f(t->r3, t->q2, QE);
    ln_f(t->r3, Nq, E, p->n3w, p->n3b, LN_EPS, t->q3);
    add_f(t->kin4, t->q3, qpe, QE);
    attn_fwd_f(&p->i2t, &t->i2t, t->kin2, Nk, t->kin4, t->q3, Nq, t->r4, d->tr);
    acc_f(t->r4, k, KE);
    ln_f(t->r4, Nk, E, p->n4w, p->n4b, LN_EPS, ko);
    memcpy(qo, t->q3, sizeof(float) * QE);
}

/* dqo, dko: gradients of the outputs (read only). Accumulates dq, dk, dqpe. Scratch: gq[2..5],
 * gk[2..3], g_h, g_hr. */
static void twoway_bwd_f(ts_dgf *d, const ftw *p, const ftw *g, const ltape *t, const float *q,
                         int Nq, const float *k, int Nk, const float *dqo, const float *dko,
                         float *dq, float *dk, float *dqpe) {
    const int E = d->E, ML = d->mlp;
    const size_t QE = (size_t)Nq * E, KE = (size_t)Nk * E, QM = (size_t)Nq * ML;
    float *dr4 = d->gk[2], *dqin4 = d->gk[3], *dkin4 = d->gq[5], *dq3 = d->gq[2];
    zf(dr4, KE), zf(dqin4, KE), zf(dkin4, QE);
    ln_bwd_f(t->r4, Nk, E, p->n4w, LN_EPS, dko, dr4, g ? g->n4w : NULL, g ? g->n4b : NULL);
    acc_f(dk, dr4, KE);
    memcpy(dq3, dqo, sizeof(float) * QE);
    attn_bwd_f(d, &p->i2t, g ? &g->i2t : NULL, &t->i2t, t->kin2, Nk, t->kin4, t->q3, Nq, dr4,
               dqin4, dkin4, dq3);
    acc_f(dk, dqin4, KE);
    acc_f(dq3, dkin4, QE);
    acc_f(dqpe, dkin4, QE);
    float *dr3 = d->gq[3], *dq2 = d->gq[4];
    zf(dr3, QE);
    ln_bwd_f(t->r3, Nq, E, p->n3w, LN_EPS, dq3, dr3, g ? g->n3w : NULL, g ? g->n3b : NULL);
    memcpy(dq2, dr3, sizeof(float) * QE);
    zf(d->g_hr, QM), zf(d->g_h, QM);
    hook_out(d, p->l2w, NULL, dr3, (size_t)Nq, E);
    lin_bwd_f(t->hr, Nq, ML, p->l2w, E, dr3, d->g_hr, g ? g->l2w : NULL, g ? g->l2b : NULL,
              d->tr);
    for (size_t i = 0; i < QM; i++) d->g_h[i] = t->h[i] > 0 ? d->g_hr[i] : 0.0f;
    hook_out(d, p->l1w, NULL, d->g_h, (size_t)Nq, ML);
    lin_bwd_f(t->q2, Nq, E, p->l1w, ML, d->g_h, dq2, g ? g->l1w : NULL, g ? g->l1b : NULL,
              d->tr);
    float *dr2 = d->gq[2], *dq1 = d->gq[3], *dqin2 = d->gq[5], *dkin2 = d->gk[3];
    zf(dr2, QE);
    ln_bwd_f(t->r2, Nq, E, p->n2w, LN_EPS, dq2, dr2, g ? g->n2w : NULL, g ? g->n2b : NULL);
    memcpy(dq1, dr2, sizeof(float) * QE);
    zf(dqin2, QE), zf(dkin2, KE);
    attn_bwd_f(d, &p->t2i, g ? &g->t2i : NULL, &t->t2i, t->qin2, Nq, t->kin2, k, Nk, dr2, dqin2,
               dkin2, dk);
    acc_f(dq1, dqin2, QE);
    acc_f(dqpe, dqin2, QE);
    acc_f(dk, dkin2, KE);
    float *dr1 = d->gq[4], *dqin = d->gq[5];
    zf(dr1, QE);
    ln_bwd_f(t->r1, Nq, E, p->n1w, LN_EPS, dq1, dr1, g ? g->n1w : NULL, g ? g->n1b : NULL);
    if (p->skip) {
        attn_bwd_f(d, &p->sa, g ? &g->sa : NULL, &t->sa, q, Nq, q, q, Nq, dr1, dq, dq, dq);
    } else {
        acc_f(dq, dr1, QE);
        zf(dqin, QE);
        attn_bwd_f(d, &p->sa, g ? &g->sa : NULL, &t->sa, t->qin, Nq, t->qin, q, Nq, dr1, dqin,
                   dqin, dq);
        acc_f(dq, dqin, QE);
        acc_f(dqpe, dqin, QE);
    }
}

static void mlp3_fwd_f(float *const *w, const float *in, int i0, int i1, int i2, int o,
                       float *const *hh, float *out) {
    lin_f(in, 1, i0, w[0], w[1], i1, hh[0]);
    for (int i = 0; i < i1; i++) hh[1][i] = hh[0][i] > 0 ? hh[0][i] : 0.0f;
    lin_f(hh[1], 1, i1, w[2], w[3], i2, hh[2]);
    for (int i = 0; i < i2; i++) hh[3][i] = hh[2][i] > 0 ? hh[2][i] : 0.0f;
    lin_f(hh[3], 1, i2, w[4], w[5], o, out);
}

static void mlp3_bwd_f(ts_dgf *d, float *const *w, float *const *g, const float *in, int i0,
                       int i1, int i2, int o, float *const *hh, const float *dout, float *din) {
    float **s = d->g_v;
    zf(s[0], (size_t)i2), zf(s[2], (size_t)i1);
    hook_out(d, w[4], NULL, dout, 1, o);
    lin_bwd_f(hh[3], 1, i2, w[4], o, dout, s[0], g ? g[4] : NULL, g ? g[5] : NULL, d->tr);
    for (int i = 0; i < i2; i++) s[1][i] = hh[2][i] > 0 ? s[0][i] : 0.0f;
    hook_out(d, w[2], NULL, s[1], 1, i2);
    lin_bwd_f(hh[1], 1, i1, w[2], i2, s[1], s[2], g ? g[2] : NULL, g ? g[3] : NULL, d->tr);
    for (int i = 0; i < i1; i++) s[3][i] = hh[0][i] > 0 ? s[2][i] : 0.0f;
    hook_out(d, w[0], NULL, s[3], 1, i1);
    lin_bwd_f(in, 1, i0, w[0], i1, s[3], din, g ? g[0] : NULL, g ? g[1] : NULL, d->tr);
}

/* ConvTranspose2d k2 s2 on pixel-major tensors: x [H*W][Ci] -> y [(2H)(2W)][Co], as one GEMM
 * with the weight [Ci][Co][2][2] permuted to wp [Ci][4][Co] (sub-pixel s = 2a + c major), so
 * the GEMM's output t [HW][4][Co] scatters as contiguous rows of Co. */
static void convt_perm(const float *w, int Ci, int Co, float *wp) {
    for (int i = 0; i < Ci; i++)
        for (int o = 0; o < Co; o++)
            for (int s = 0; s < 4; s++)
                wp[((size_t)i * 4 + s) * Co + o] = w[((size_t)i * Co + o) * 4 + s];
}

static void convt_fwd_f(const float *x, int H, int W, int Ci, const float *wp, const float *b,
                        int Co, float *t, float *y) {
    ts_gemm(H * W, 4 * Co, Ci, x, Ci, wp, 4 * Co, 0, t, 4 * Co, 0.0f);
    for (int yy = 0; yy < H; yy++)
        for (int xx = 0; xx < W; xx++)
            for (int s = 0; s < 4; s++) {
                const float *tr = t + (((size_t)yy * W + xx) * 4 + s) * Co;
                float *yr = y + ((size_t)(2 * yy + s / 2) * 2 * W + 2 * xx + s % 2) * Co;
                for (int o = 0; o < Co; o++) yr[o] = tr[o] + b[o];
            }
}

/* dy [(2H)(2W)][Co] -> dt [HW][4][Co] (gathered), dx += dt wp^T, dw += x^T dt (through the
 * permuted gradient gp: Ci*4*Co floats), db. */
static void convt_bwd_f(ts_dgf *d, const float *x, int H, int W, int Ci, const float *wp, int Co,
                        const float *dy, float *dt, float *dx, float *dw, float *db, float *gp) {
    for (int yy = 0; yy < H; yy++)
        for (int xx = 0; xx < W; xx++)
            for (int s = 0; s < 4; s++)
                memcpy(dt + (((size_t)yy * W + xx) * 4 + s) * Co,
                       dy + ((size_t)(2 * yy + s / 2) * 2 * W + 2 * xx + s % 2) * Co,
                       sizeof(float) * Co);
    if (db) colsum_f(dy, 4 * H * W, Co, db);
    if (dw) {
        ts_transpose_serial(x, Ci, H * W, Ci, d->tr, H * W);
        ts_gemm(Ci, 4 * Co, H * W, d->tr, H * W, dt, 4 * Co, 0, gp, 4 * Co, 0.0f);
        for (int i = 0; i < Ci; i++)
            for (int o = 0; o < Co; o++)
                for (int s = 0; s < 4; s++)
                    dw[((size_t)i * Co + o) * 4 + s] += gp[((size_t)i * 4 + s) * Co + o];
    }
    if (dx) ts_gemm(H * W, Ci, 4 * Co, dt, 4 * Co, wp, 4 * Co, 1, dx, Ci, 1.0f);
}

/* ---- one set ------------------------------------------------------------------------------ */

static void refresh_mask_params(ts_dgf *d) {
    for (int k = 0; k < 10; k++)
        for (size_t i = 0; i < d->mdn[k]; i++) d->mdp[k][i] = d->p.md[k][i];
}

/* src0 reads the embedding through d->embt ([HW][E], set by the caller). */
static int set_forward_f(ts_dgf *d, const ts_prompt_set *s) {
    const fnet *p = &d->p;
    const int E = d->E, HW = d->HW, H = d->H, W = d->W, mc = d->mc;
    double row[1024];
    int ns = 0;
    float *sp = d->tok0 + 5 * (size_t)E;
    const double *G = d->gauss_f;
    for (int i = 0; s->n_points > 0 && i <= s->n_points; i++) {
        int pad = i == s->n_points;
        if (pad && s->has_box) break;
        int label = pad ? -1 : s->labels[i];
        if (label < -1 || label > 1)
            return ts_error(TINYSAM_E_ARG, "decoder_grad: point label %d", label);
        if (ns >= MAX_SPARSE) return ts_error(TINYSAM_E_LIMIT, "decoder_grad: too many points");
        float *e = sp + (size_t)ns * E;
        d->kind[ns++] = label == -1 ? 4 : label;
        if (label == -1) {
            memcpy(e, p->nap, sizeof(float) * E);
            continue;
        }
        pe_encode(G, E, s->coords[2 * i], s->coords[2 * i + 1], row);
        for (int c = 0; c < E; c++) e[c] = (float)row[c] + p->pemb[label][c];
    }
    if (s->has_box)
        for (int corner = 0; corner < 2; corner++) {
            if (ns >= MAX_SPARSE) return ts_error(TINYSAM_E_LIMIT, "decoder_grad: too many tokens");
            float *e = sp + (size_t)ns * E;
            d->kind[ns++] = 2 + corner;
            pe_encode(G, E, s->box[2 * corner], s->box[2 * corner + 1], row);
            for (int c = 0; c < E; c++) e[c] = (float)row[c] + p->pemb[2 + corner][c];
        }
    d->ns = ns;
    d->nq = 5 + ns;
    const int nq = d->nq;
    const size_t QE = (size_t)nq * E, IE = (size_t)HW * E;
    memcpy(d->tok0, p->iou_tok, sizeof(float) * E);
    memcpy(d->tok0 + E, p->mask_tok, sizeof(float) * 4 * E);
    d->has_mask = s->mask_input != NULL;
    if (d->has_mask) {
        double *const *w = d->mdp;
        for (int i = 0; i < d->P; i++) d->mk[i] = s->mask_input[i];
        ts_g_conv2d c0 = conv_cfg(1, 4 * H, 4 * W, mc / 4, 2, 2);
        ts_g_conv2d c3 = conv_cfg(mc / 4, 2 * H, 2 * W, mc, 2, 2);
        ts_g_conv2d_fwd(&c0, d->mk, w[0], w[1], d->m0);
        ts_g_layernorm2d_fwd(d->m0, mc / 4, 4 * HW, w[2], w[3], LN2D_EPS, d->m1);
        ts_g_gelu_fwd(d->m1, (size_t)mc * HW, d->m2);
        ts_g_conv2d_fwd(&c3, d->m2, w[4], w[5], d->m3);
        ts_g_layernorm2d_fwd(d->m3, mc, HW, w[6], w[7], LN2D_EPS, d->m4);
        ts_g_gelu_fwd(d->m4, (size_t)mc * HW, d->m5);
        /* the 1x1 conv mc -> E (most of the path's work) as a float GEMM, pixel-major */
        for (int c = 0; c < mc; c++)
            for (int i = 0; i < HW; i++)
                d->m5f[(size_t)i * mc + c] = (float)d->m5[(size_t)c * HW + i];
        lin_f(d->m5f, HW, mc, p->md[8], p->md[9], E, d->src0);
        for (size_t i = 0; i < IE; i++) d->src0[i] = d->embt[i] + d->src0[i];
    } else {
        for (int i = 0; i < HW; i++) {
            const float *er = d->embt + (size_t)i * E;
            float *sr = d->src0 + (size_t)i * E;
            for (int c = 0; c < E; c++) sr[c] = er[c] + p->nomask[c];
        }
    }
    twoway_fwd_f(d, &p->layer[0], &d->lt[0], d->tok0, nq, d->src0, HW, d->tok0, d->dpe, d->q1o,
                 d->k1o);
    twoway_fwd_f(d, &p->layer[1], &d->lt[1], d->q1o, nq, d->k1o, HW, d->tok0, d->dpe, d->q2o,
                 d->k2o);
    add_f(d->fq, d->q2o, d->tok0, QE);
    add_f(d->fk, d->k2o, d->dpe, IE);
    attn_fwd_f(&p->fin, &d->fa, d->fq, nq, d->fk, d->k2o, HW, d->fr, d->tr);
    acc_f(d->fr, d->q2o, QE);
    ln_f(d->fr, nq, E, p->nfw, p->nfb, LN_EPS, d->hs);
    convt_perm(p->up0w, E, d->E4, d->wp0);
    convt_perm(p->up3w, d->E4, d->E8, d->wp3);
    convt_fwd_f(d->k2o, H, W, E, d->wp0, p->up0b, d->E4, d->t1, d->u1);
    ln_f(d->u1, 4 * HW, d->E4, p->upnw, p->upnb, LN2D_EPS, d->u2);
    memcpy(d->u3, d->u2, sizeof(float) * 4 * HW * d->E4);
    ts_gelu(d->u3, (size_t)4 * HW * d->E4);
    convt_fwd_f(d->u3, 2 * H, 2 * W, d->E4, d->wp3, p->up3b, d->E8, d->t2, d->u4);
    memcpy(d->up, d->u4, sizeof(float) * d->P * d->E8);
    ts_gelu(d->up, (size_t)d->P * d->E8);
    for (int t = 0; t < 4; t++)
        mlp3_fwd_f(p->hyp[t], d->hs + (size_t)(1 + t) * E, E, E, E, d->E8, d->hh[t],
                   d->hyp + (size_t)t * d->E8);
    ts_gemm(4, d->P, d->E8, d->hyp, d->E8, d->up, d->E8, 1, d->z, d->P, 0.0f);
    mlp3_fwd_f(p->iouh, d->hs, E, d->ih, d->ih, 4, d->hh[4], d->iou);
    return 0;
}

/* Leaves d src0 ([HW][E], the gradient of the embedding) in gk[0]. */
static int set_backward_f(ts_dgf *d, const float *dz, const float *du, const float *dtok,
                          const fnet *g) {
    const fnet *p = &d->p;
    const int E = d->E, HW = d->HW, H = d->H, W = d->W, mc = d->mc, nq = d->nq, P = d->P;
    const size_t QE = (size_t)nq * E, IE = (size_t)HW * E;
    const size_t U1 = (size_t)d->E4 * 4 * HW, U4 = (size_t)d->E8 * P;
    float *g_hs = d->gq[6], *g_fr = d->gq[7], *g_fq = d->gq[8];
    zf(g_hs, QE);
    zf(d->gk[0], IE);
    if (dz) {
        /* masks = hyper up^T (D8), hypernetworks (D7) */
        ts_gemm(4, d->E8, P, dz, P, d->up, d->E8, 0, d->g_hyp, d->E8, 0.0f);
        ts_transpose_serial(dz, P, 4, P, d->tr, 4);
        hook_out(d, NULL, "mask_decoder.mask_product", d->tr, (size_t)P, 4);
        ts_gemm(P, d->E8, 4, d->tr, 4, d->hyp, d->E8, 0, d->g_up, d->E8, 0.0f);
        for (int t = 0; t < 4; t++)
            mlp3_bwd_f(d, p->hyp[t], g ? g->hyp[t] : NULL, d->hs + (size_t)(1 + t) * E, E, E, E,
                       d->E8, d->hh[t], d->g_hyp + (size_t)t * d->E8,
                       g_hs + (size_t)(1 + t) * E);
        /* output upscaling (D6), pixel-major */
        gelu_bwd_f(d->u4, U4, d->g_up, d->g_u4);
        zf(d->g_ub, U1);
        convt_bwd_f(d, d->u3, 2 * H, 2 * W, d->E4, d->wp3, d->E8, d->g_u4, d->g_t2, d->g_ub,
                    g ? g->up3w : NULL, g ? g->up3b : NULL, d->gwp);
        hook_out(d, p->up3w, NULL, d->g_t2, (size_t)4 * HW, 4 * d->E8);
        gelu_bwd_f(d->u2, U1, d->g_ub, d->g_ua);
        zf(d->g_ub, U1);
        ln_bwd_f(d->u1, 4 * HW, d->E4, p->upnw, LN2D_EPS, d->g_ua, d->g_ub, g ? g->upnw : NULL,
                 g ? g->upnb : NULL);
        convt_bwd_f(d, d->k2o, H, W, E, d->wp0, d->E4, d->g_ub, d->g_t1, d->gk[0],
                    g ? g->up0w : NULL, g ? g->up0b : NULL, d->gwp);
        hook_out(d, p->up0w, NULL, d->g_t1, (size_t)HW, 4 * d->E4);
    }
    if (du)
        mlp3_bwd_f(d, p->iouh, g ? g->iouh : NULL, d->hs, E, d->ih, d->ih, 4, d->hh[4], du,
                   g_hs);
    if (dtok) acc_f(g_hs, dtok, 5 * (size_t)E);
    /* final attention (D5) */
    zf(g_fr, QE), zf(g_fq, QE), zf(d->gk[1], IE);
    ln_bwd_f(d->fr, nq, E, p->nfw, LN_EPS, g_hs, g_fr, g ? g->nfw : NULL, g ? g->nfb : NULL);
    attn_bwd_f(d, &p->fin, g ? &g->fin : NULL, &d->fa, d->fq, nq, d->fk, d->k2o, HW, g_fr, g_fq,
               d->gk[1], d->gk[0]);
    add_f(d->gq[0], g_fr, g_fq, QE);
    memcpy(d->g_tok0, g_fq, sizeof(float) * QE);
    acc_f(d->gk[0], d->gk[1], IE);
    /* two-way blocks (D4) */
    zf(d->gq[1], QE), zf(d->gk[1], IE), zf(d->g_pe, QE);
    twoway_bwd_f(d, &p->layer[1], g ? &g->layer[1] : NULL, &d->lt[1], d->q1o, nq, d->k1o, HW,
                 d->gq[0], d->gk[0], d->gq[1], d->gk[1], d->g_pe);
    zf(d->gq[0], QE), zf(d->gk[0], IE);
    twoway_bwd_f(d, &p->layer[0], g ? &g->layer[0] : NULL, &d->lt[0], d->tok0, nq, d->src0, HW,
                 d->gq[1], d->gk[1], d->gq[0], d->gk[0], d->g_pe);
    acc_f(d->g_tok0, d->gq[0], QE);
    acc_f(d->g_tok0, d->g_pe, QE);
    const float *gs = d->gk[0]; /* d src0, [HW][E] */
    if (g && !d->has_mask) {
        for (int c = 0; c < E; c++) {
            double s = 0;
            for (int i = 0; i < HW; i++) s += gs[(size_t)i * E + c];
            g->nomask[c] += (float)s;
        }
    } else if (g) {
        double *const *w = d->mdp, *const *gw = d->mdg, *const *gm = d->gm;
        const size_t M = (size_t)mc * HW;
        for (int k = 0; k < 6; k++) memset(gm[k], 0, sizeof(double) * M);
        ts_g_conv2d c0 = conv_cfg(1, 4 * H, 4 * W, mc / 4, 2, 2);
        ts_g_conv2d c3 = conv_cfg(mc / 4, 2 * H, 2 * W, mc, 2, 2);
        zf(d->g_m5f, (size_t)HW * mc);
        lin_bwd_f(d->m5f, HW, mc, p->md[8], E, gs, d->g_m5f, g->md[8], g->md[9], d->tr);
        for (int c = 0; c < mc; c++)
            for (int i = 0; i < HW; i++) gm[5][(size_t)c * HW + i] = d->g_m5f[(size_t)i * mc + c];
        ts_g_gelu_bwd(d->m4, M, gm[5], gm[4]);
        ts_g_layernorm2d_bwd(d->m3, mc, HW, w[6], LN2D_EPS, gm[4], gm[3], gw[6], gw[7]);
        ts_g_conv2d_bwd(&c3, d->m2, w[4], gm[3], gm[2], gw[4], gw[5]);
        ts_g_gelu_bwd(d->m1, M, gm[2], gm[1]);
        ts_g_layernorm2d_bwd(d->m0, mc / 4, 4 * HW, w[2], LN2D_EPS, gm[1], gm[0], gw[2], gw[3]);
        ts_g_conv2d_bwd(&c0, d->mk, w[0], gm[0], NULL, gw[0], gw[1]);
    }
    if (g) {
        for (int c = 0; c < E; c++) g->iou_tok[c] += d->g_tok0[c];
        for (int c = 0; c < 4 * E; c++) g->mask_tok[c] += d->g_tok0[E + c];
        for (int j = 0; j < d->ns; j++) {
            float *dst = d->kind[j] == 4 ? g->nap : g->pemb[d->kind[j]];
            const float *src = d->g_tok0 + (size_t)(5 + j) * E;
            for (int c = 0; c < E; c++) dst[c] += src[c];
        }
    }
    return 0;
}

/* ---- the sets on the worker pool ---------------------------------------------------------
 * The sets are independent given the embedding: worker i of a round runs set s0 + i on its own
 * tape, writing the set's parameter gradients into its own zeroed gset and its d src0 into its
 * gk[0]. The round's per-set results are then added into the outputs in set order, so the
 * sums (and the bits) do not depend on the number of threads. A round of one set runs on the
 * calling thread, where ts_gemm spreads over the pool instead (no kernel splits its reduction
 * axis across threads, so that path gives the same bits). */
typedef struct {
    ts_dgf *d;
    const ts_prompt_set *sets;
    int s0, cnt, grads;
    const float *dz, *du, *dtok;
    float *z, *u, *tok;
} sjob;

static void fwd_task(void *ctx, int i, int tid) {
    (void)tid;
    const sjob *j = ctx;
    ts_dgf *w = j->d->wk[i];
    const int s = j->s0 + i;
    const size_t P4 = 4 * (size_t)w->P, T5 = 5 * (size_t)w->E;
    w->rc = set_forward_f(w, &j->sets[s]);
    if (w->rc) return;
    if (j->z) memcpy(j->z + (size_t)s * P4, w->z, sizeof(float) * P4);
    if (j->u) memcpy(j->u + (size_t)s * 4, w->iou, sizeof(float) * 4);
    if (j->tok) memcpy(j->tok + (size_t)s * T5, w->hs, sizeof(float) * T5);
}

static void bwd_task(void *ctx, int i, int tid) {
    (void)tid;
    const sjob *j = ctx;
    ts_dgf *w = j->d->wk[i];
    const int s = j->s0 + i;
    const size_t P4 = 4 * (size_t)w->P, T5 = 5 * (size_t)w->E;
    for (int k = 0; k < 10; k++) memset(w->mdg[k], 0, sizeof(double) * w->mdn[k]);
    fnet g;
    w->hook = j->d->hook, w->hook_ctx = j->d->hook_ctx, w->set = s;
    if (j->grads) {
        zf(w->gset, w->L->total);
        fnet_of(w, w->gset, &g);
    }
    w->rc = set_forward_f(w, &j->sets[s]);
    if (!w->rc)
        w->rc = set_backward_f(w, j->dz ? j->dz + (size_t)s * P4 : NULL,
                               j->du ? j->du + (size_t)s * 4 : NULL,
                               j->dtok ? j->dtok + (size_t)s * T5 : NULL, j->grads ? &g : NULL);
}

/* Reduction of a round: chunk c of the parameter gradients, then of d src0. */
#define RED_CHUNK 32768
typedef struct {
    ts_dgf *d;
    int cnt, ng;
    float *grads;
    size_t ntot, nie;
} rjob;

static void red_task(void *ctx, int c, int tid) {
    (void)tid;
    const rjob *r = ctx;
    ts_dgf *const *wk = r->d->wk;
    int sacc = c >= r->ng;
    size_t n = sacc ? r->nie : r->ntot, a = (size_t)(sacc ? c - r->ng : c) * RED_CHUNK;
    size_t b = a + RED_CHUNK < n ? a + RED_CHUNK : n;
    float *dst = sacc ? r->d->sacc : r->grads;
    for (int w = 0; w < r->cnt; w++) {
        const float *src = sacc ? wk[w]->gk[0] : wk[w]->gset;
        for (size_t i = a; i < b; i++) dst[i] += src[i];
    }
}

/* Workers to use now: the pool's threads, at most the workers allocated (grown if the pool
 * grew since ts_dgf_create). */
static int dgf_workers(ts_dgf *d, int N) {
    int nt = ts_num_threads();
    if (nt > d->nw && dgf_grow(d, nt)) nt = d->nw; /* out of memory: run on fewer */
    if (nt > d->nw) nt = d->nw;
    if (nt > N) nt = N;
    return nt < 1 ? 1 : nt;
}

static void run_round(sjob *j, ts_task_fn fn) {
    if (j->cnt == 1)
        fn(j, 0, 0);
    else
        ts_parallel_for(j->cnt, fn, j);
}

static int round_rc(const ts_dgf *d, int cnt) {
    for (int w = 0; w < cnt; w++)
        if (d->wk[w]->rc) return d->wk[w]->rc;
    return 0;
}

/* embt = emb^T ([E][HW] -> [HW][E]); the mask parameters in double for every worker. */
static void prepare(ts_dgf *d, const float *emb, int nw) {
    ts_transpose_serial(emb, d->HW, d->E, d->HW, d->embt_buf, d->E);
    for (int w = 0; w < nw; w++) refresh_mask_params(d->wk[w]);
}

int ts_dgf_forward(ts_dgf *d, const float *emb, int N, const ts_prompt_set *sets, float *z,
                   float *u, float *tok) {
    if (N <= 0) return ts_error(TINYSAM_E_ARG, "decoder_grad: %d prompt sets", N);
    const int nw = dgf_workers(d, N);
    prepare(d, emb, nw);
    sjob j = {.d = d, .sets = sets, .z = z, .u = u, .tok = tok};
    for (j.s0 = 0; j.s0 < N; j.s0 += nw) {
        j.cnt = N - j.s0 < nw ? N - j.s0 : nw;
        run_round(&j, fwd_task);
        int rc = round_rc(d, j.cnt);
        if (rc) return rc;
    }
    return 0;
}

int ts_dgf_backward(ts_dgf *d, const float *emb, int N, const ts_prompt_set *sets,
                    const float *dz, const float *du, const float *dtok, float *grads,
                    float *demb) {
    if (N <= 0) return ts_error(TINYSAM_E_ARG, "decoder_grad: %d prompt sets", N);
    const int nw = dgf_workers(d, N);
    prepare(d, emb, nw);
    const size_t IE = (size_t)d->HW * d->E;
    size_t nmd = 0;
    for (int k = 0; k < 10; k++) nmd += d->mdn[k];
    memset(d->mdacc, 0, sizeof(double) * nmd);
    if (demb) zf(d->sacc, IE);
    sjob j = {.d = d, .sets = sets, .grads = grads != NULL, .dz = dz, .du = du, .dtok = dtok};
    rjob r = {.d = d, .grads = grads, .ntot = grads ? d->L->total : 0, .nie = demb ? IE : 0};
    r.ng = (int)((r.ntot + RED_CHUNK - 1) / RED_CHUNK);
    const int nchunks = r.ng + (int)((r.nie + RED_CHUNK - 1) / RED_CHUNK);
    for (j.s0 = 0; j.s0 < N; j.s0 += nw) {
        j.cnt = r.cnt = N - j.s0 < nw ? N - j.s0 : nw;
        run_round(&j, bwd_task);
        int rc = round_rc(d, j.cnt);
        if (rc) return rc;
        ts_parallel_for(nchunks, red_task, &r);
        for (int w = 0; w < j.cnt; w++) { /* the mask path's double gradients */
            double *acc = d->mdacc;
            for (int k = 0; k < 10; k++)
                for (size_t i = 0; i < d->mdn[k]; i++) *acc++ += d->wk[w]->mdg[k][i];
        }
    }
    if (grads) {
        fnet g;
        fnet_of(d, grads, &g);
        const double *acc = d->mdacc;
        for (int k = 0; k < 10; k++)
            for (size_t i = 0; i < d->mdn[k]; i++) g.md[k][i] += (float)*acc++;
    }
    if (demb) { /* demb [E][HW] += sacc^T, through a transposed copy in the handle's tape */
        float *t = d->embt_buf;
        ts_transpose_serial(d->sacc, d->E, d->HW, d->E, t, d->HW);
        for (size_t i = 0; i < IE; i++) demb[i] += t[i];
    }
    return 0;
}

void ts_dgf_set_grad_hook(ts_dgf *d, ts_dgf_grad_hook fn, void *ctx) {
    if (!d) return;
    d->hook = fn;
    d->hook_ctx = fn ? ctx : NULL;
}
