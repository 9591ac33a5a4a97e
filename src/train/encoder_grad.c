/* encoder_grad.c - TinyViT (vit_t) + neck forward with a tape and its backward, float32 on the
 * nn.h kernels (spec/DISTILL.md 5.3 E1-E16). See encoder_grad.h.
 *
 * Every activation is channels-last: x[P][C] with P = pixels (row-major). 1x1 convolutions
 * and Linears are GEMMs; dense 3x3 convolutions run ts_conv3x3_nhwc forward; backward, the
 * weight gradient goes through im2col chunks and dx is a 3x3 convolution with the flipped
 * kernel (stride 1) or a GEMM into columns gathered back (col2im); depthwise convolutions are
 * loops over contiguous channels. Weight gradients dW = dY^T X run as two fixed halves of
 * dW, each through transposed chunks of dY and a serial GEMM. Per-channel sums (biases,
 * BatchNorm, LayerNorm, the bias table) accumulate in double, in per-task partials reduced in
 * a fixed order; every threaded loop has a task count that depends on the shapes only, so
 * gradients do not depend on the thread count or the scheduling. The element-wise kernels
 * (GELU' as a piecewise polynomial, BatchNorm with its GELU' fused, LayerNorm, softmax and
 * depthwise backward) come from a table per ISA: encoder_grad_k.h, the AVX-512 one in
 * encoder_grad_avx512.c, the portable one below. */
#include "train/encoder_grad.h"

#include "train/encoder_grad_k.h"

#include "core.h"
#include "nn/nn.h"
#include "threads.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LN_EPS 1e-5f
#define LN2D_EPS 1e-6f
#define BN_EPS 1e-5f
#define CHUNK 1024 /* rows per im2col / weight-gradient chunk */
#define MAXC 4096  /* widest channel count of any tensor */
#define DWMAX TS_EG_DWMAX
#define WG_TASKS 2 /* tasks of a weight gradient (two halves: few redundant packs) */
#define CNMAX 2048    /* output pixels per dense-convolution chunk, at most */
#define PAR_MIN 65536 /* floats: below, a copy loop runs on the calling thread */
#define NTASK 32   /* fixed task count of the threaded loops: sums reduce in task order, so
                    * results do not depend on the thread count or scheduling */

/* ---- layout ------------------------------------------------------------------------------ */

typedef struct {
    float *w, *g, *b, *mean, *var; /* c.weight, bn.weight, bn.bias, running stats */
} cbn_p;

typedef struct {
    float *ab, *lnw, *lnb, *qkvw, *qkvb, *pw, *pb, *mlnw, *mlnb, *f1w, *f1b, *f2w, *f2b;
    cbn_p lc;
} vb_p;

typedef struct {
    cbn_p pe[2];
    cbn_p mb[TS_EG_MAX_MB][3];
    cbn_p mg[3][3];
    vb_p vb[TS_EG_MAX_VB];
    float *n0, *n1w, *n1b, *n2, *n3w, *n3b;
} net;

typedef struct {
    ts_eg_layout *L;
    int build, i, err;
    float *base;
} walker;

static void def(walker *w, float **slot, int frozen, int ndim, int s0, int s1, int s2, int s3,
                const char *fmt, ...) __attribute__((format(printf, 9, 10)));

static void def(walker *w, float **slot, int frozen, int ndim, int s0, int s1, int s2, int s3,
                const char *fmt, ...) {
    ts_eg_layout *L = w->L;
    if (w->build) {
        if (L->n >= TS_EG_MAX_TENSORS) {
            w->err = 1;
            return;
        }
        ts_eg_tensor *t = &L->t[L->n++];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(t->name, sizeof t->name, fmt, ap);
        va_end(ap);
        int s[4] = {s0, s1, s2, s3};
        t->ndim = ndim;
        t->frozen = frozen;
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

static void def_cbn(walker *w, cbn_p *c, int co, int cig, int k, const char *prefix) {
    def(w, &c->w, 0, 4, co, cig, k, k, "image_encoder.%s.c.weight", prefix);
    def(w, &c->g, 0, 1, co, 0, 0, 0, "image_encoder.%s.bn.weight", prefix);
    def(w, &c->b, 0, 1, co, 0, 0, 0, "image_encoder.%s.bn.bias", prefix);
    def(w, &c->mean, 1, 1, co, 0, 0, 0, "image_encoder.%s.bn.running_mean", prefix);
    def(w, &c->var, 1, 1, co, 0, 0, 0, "image_encoder.%s.bn.running_var", prefix);
}

static void walk(walker *w, const ts_eg_config *c, net *n) {
    char p[TS_EG_NAME];
    const int *D = c->dims;
    def_cbn(w, &n->pe[0], D[0] / 2, 3, 3, "patch_embed.seq.0");
    def_cbn(w, &n->pe[1], D[0], D[0] / 2, 3, "patch_embed.seq.2");
    const int hd = D[0] * c->mb_ratio;
    for (int b = 0; b < c->depths[0]; b++) {
        snprintf(p, sizeof p, "layers.0.blocks.%d.conv1", b);
        def_cbn(w, &n->mb[b][0], hd, D[0], 1, p);
        snprintf(p, sizeof p, "layers.0.blocks.%d.conv2", b);
        def_cbn(w, &n->mb[b][1], hd, 1, 3, p);
        snprintf(p, sizeof p, "layers.0.blocks.%d.conv3", b);
        def_cbn(w, &n->mb[b][2], D[0], hd, 1, p);
    }
    int vi = 0;
    for (int s = 0; s < 4; s++) {
        const int C = D[s], N = c->windows[s] * c->windows[s], H = C * c->mlp_ratio;
        for (int b = 0; s > 0 && b < c->depths[s]; b++, vi++) {
            vb_p *v = &n->vb[vi];
            #define f "image_encoder.layers.%d.blocks.%d.%s"
            def(w, &v->ab, 0, 2, c->heads[s], N, 0, 0, f, s, b, "attn.attention_biases");
            def(w, &v->lnw, 0, 1, C, 0, 0, 0, f, s, b, "attn.norm.weight");
            def(w, &v->lnb, 0, 1, C, 0, 0, 0, f, s, b, "attn.norm.bias");
            def(w, &v->qkvw, 0, 2, 3 * C, C, 0, 0, f, s, b, "attn.qkv.weight");
            def(w, &v->qkvb, 0, 1, 3 * C, 0, 0, 0, f, s, b, "attn.qkv.bias");
            def(w, &v->pw, 0, 2, C, C, 0, 0, f, s, b, "attn.proj.weight");
            def(w, &v->pb, 0, 1, C, 0, 0, 0, f, s, b, "attn.proj.bias");
            def(w, &v->mlnw, 0, 1, C, 0, 0, 0, f, s, b, "mlp.norm.weight");
            def(w, &v->mlnb, 0, 1, C, 0, 0, 0, f, s, b, "mlp.norm.bias");
            def(w, &v->f1w, 0, 2, H, C, 0, 0, f, s, b, "mlp.fc1.weight");
            def(w, &v->f1b, 0, 1, H, 0, 0, 0, f, s, b, "mlp.fc1.bias");
            def(w, &v->f2w, 0, 2, C, H, 0, 0, f, s, b, "mlp.fc2.weight");
            def(w, &v->f2b, 0, 1, C, 0, 0, 0, f, s, b, "mlp.fc2.bias");
#undef f
            snprintf(p, sizeof p, "layers.%d.blocks.%d.local_conv", s, b);
            def_cbn(w, &v->lc, C, 1, 3, p);
        }
        if (s < 3) {
            const int co = D[s + 1];
            snprintf(p, sizeof p, "layers.%d.downsample.conv1", s);
            def_cbn(w, &n->mg[s][0], co, C, 1, p);
            snprintf(p, sizeof p, "layers.%d.downsample.conv2", s);
            def_cbn(w, &n->mg[s][1], co, 1, 3, p);
            snprintf(p, sizeof p, "layers.%d.downsample.conv3", s);
            def_cbn(w, &n->mg[s][2], co, co, 1, p);
        }
    }
    const int E = c->neck;
    def(w, &n->n0, 0, 4, E, D[3], 1, 1, "image_encoder.neck.0.weight");
    def(w, &n->n1w, 0, 1, E, 0, 0, 0, "image_encoder.neck.1.weight");
    def(w, &n->n1b, 0, 1, E, 0, 0, 0, "image_encoder.neck.1.bias");
    def(w, &n->n2, 0, 4, E, E, 3, 3, "image_encoder.neck.2.weight");
    def(w, &n->n3w, 0, 1, E, 0, 0, 0, "image_encoder.neck.3.weight");
    def(w, &n->n3b, 0, 1, E, 0, 0, 0, "image_encoder.neck.3.bias");
}

void ts_eg_config_vit_t(ts_eg_config *c) {
    *c = (ts_eg_config){.img = 1024, .dims = {64, 128, 160, 320}, .depths = {2, 2, 6, 2},
                        .heads = {2, 4, 5, 10}, .windows = {7, 7, 14, 7},
                        .merge_stride = {2, 2, 1}, .mb_ratio = 4, .mlp_ratio = 4, .neck = 256};
}

int ts_eg_layout_init(ts_eg_layout *L, const ts_eg_config *c) {
    memset(L, 0, sizeof *L);
    int ok = c->img >= 8 && c->img % 4 == 0 && c->depths[0] >= 0 &&
             c->depths[0] <= TS_EG_MAX_MB && c->mb_ratio > 0 && c->mlp_ratio > 0 &&
             c->neck > 0 && c->dims[0] % 2 == 0;
    int nvb = 0;
    for (int s = 0; s < 4; s++) {
        ok = ok && c->dims[s] > 0 && c->depths[s] >= 0;
        if (s > 0) {
            ok = ok && c->heads[s] > 0 && c->windows[s] > 0 && c->dims[s] % c->heads[s] == 0;
            nvb += c->depths[s];
        }
        if (s < 3) ok = ok && (c->merge_stride[s] == 1 || c->merge_stride[s] == 2);
    }
    ok = ok && nvb <= TS_EG_MAX_VB;
    for (int s = 0; ok && s < 4; s++)
        ok = (size_t)c->dims[s] * (size_t)(s ? c->mlp_ratio : c->mb_ratio) <= MAXC &&
             (size_t)c->dims[s] * 3 <= MAXC && c->dims[s] <= DWMAX;
    ok = ok && (size_t)c->dims[0] * c->mb_ratio <= DWMAX;
    if (!ok || c->neck > MAXC) return ts_error(TINYSAM_E_ARG, "encoder_grad: bad configuration");
    L->c = *c;
    int R = c->img / 4;
    for (int s = 0; s < 3; s++) R = (R - 1) / c->merge_stride[s] + 1;
    L->out_side = R;
    walker w = {.L = L, .build = 1};
    net n;
    walk(&w, c, &n);
    if (w.err) return ts_error(TINYSAM_E_ARG, "encoder_grad: too many tensors");
    return 0;
}

int ts_eg_find(const ts_eg_layout *L, const char *name) {
    for (int i = 0; i < L->n; i++)
        if (!strcmp(L->t[i].name, name)) return i;
    return -1;
}

int ts_eg_load(const ts_eg_layout *L, const ts_tensor_map *m, float *params) {
    for (int i = 0; i < L->n; i++) {
        const ts_eg_tensor *T = &L->t[i];
        const ts_tensor *t = ts_map_get(m, T->name);
        if (!t) return ts_error(TINYSAM_E_FORMAT, "missing tensor %s", T->name);
        int ok = t->dtype == TS_DTYPE_F32 && t->ndim == T->ndim;
        for (int k = 0; ok && k < T->ndim; k++) ok = t->shape[k] == T->shape[k];
        if (!ok) return ts_error(TINYSAM_E_FORMAT, "tensor %s: unexpected dtype or shape", T->name);
        memcpy(params + T->off, t->data, sizeof(float) * T->numel);
    }
    return 0;
}

static void bind(const ts_eg_layout *L, float *base, net *n) {
    walker w = {.L = (ts_eg_layout *)L, .build = 0, .base = base};
    walk(&w, &L->c, n);
}

/* ---- modules and context ------------------------------------------------------------------ */

enum { M_PE, M_MB, M_MG, M_VB, M_NECK };

typedef struct {
    int kind, idx;        /* idx: MBConv block, merge or TinyViT block number */
    int R, Ro, Ci, Co;    /* input / output side and channels */
    int stride;           /* merges */
    int heads, ws, hidden; /* TinyViT blocks (hidden: MLP width); MBConv hidden */
    int Rp, nw;           /* padded side, windows per side */
    float *x;             /* tape: the module's input [R*R][Ci] */
    float *r1, *r2, *r3;  /* tape: raw convolution outputs */
    float *qkv, *P, *O, *t1, *rlc, *f1; /* tape (TinyViT block) */
} mod;

#define MAX_MODS (2 + TS_EG_MAX_MB + 3 + TS_EG_MAX_VB)

struct ts_egf {
    const ts_eg_layout *L;
    const float *params; /* the bound parameters (names of hooked layers by offset) */
    ts_egf_grad_hook hook; /* output-gradient callback of the backward, or NULL */
    void *hook_ctx;
    net p;
    mod m[MAX_MODS];
    int nm;
    size_t tape_n, scratch_n;
    float *s[4];        /* scratch maps, smax floats each */
    float *gin, *gout;  /* gradient ping-pong, gmax floats each */
    float *col, *dcol;  /* im2col chunks */
    size_t colmax;      /* floats in each */
    float *tr;          /* transposed chunk for weight gradients */
    float *wp, *gwp;    /* permuted dense 3x3 weight and its gradient */
    float *w9;          /* permuted depthwise weight [9][C] */
    int *bidx;          /* relative-position index of a window, N x N */
    float *wsc;         /* window scratch: nslot x 3 x N x N */
    int nslot, maxN;    /* window-attention task slots */
    double *acc;        /* per-channel accumulators, 10 x MAXC */
    double *part;       /* per-task partial sums, NTASK x 2 x MAXC */
    double *pab;        /* bias-table partials per window and head */
    double *pdw;        /* depthwise weight-gradient partials, NTASK x 9 x DWMAX */
    float alpha[MAXC], shift[MAXC];
    const ts_eg_kern *k; /* element-wise kernels of the current ISA */
    double ms[2][5]; /* forward / backward time of the last pass per module kind */
    float **owned;
    int n_owned;
};

static const ts_eg_kern *kern_pick(void);

static float *talloc(ts_egf *e, size_t n, size_t *counter) {
    float *p = ts_malloc_aligned((n ? n : 1) * sizeof(float));
    if (!p) return NULL;
    e->owned[e->n_owned++] = p;
    *counter += n;
    return p;
}

void ts_egf_free(ts_egf *e) {
    if (!e) return;
    for (int i = 0; i < e->n_owned; i++) ts_free_aligned(e->owned[i]);
    free(e->owned);
    free(e->bidx);
    free(e->acc);
    free(e->part);
    free(e->pab);
    free(e->pdw);
    free(e);
}

void ts_egf_times(const ts_egf *e, int backward, double ms[5]) {
    for (int k = 0; k < 5; k++) ms[k] = e ? e->ms[backward != 0][k] : 0;
}

void ts_egf_memory(const ts_egf *e, size_t *tape_bytes, size_t *scratch_bytes) {
    if (tape_bytes) *tape_bytes = e ? e->tape_n * sizeof(float) : 0;
    if (scratch_bytes) *scratch_bytes = e ? e->scratch_n * sizeof(float) : 0;
}

#define SZ(a) ((size_t)(a))

int ts_egf_create(const ts_eg_layout *L, const float *params, ts_egf **out) {
    *out = NULL;
    if (!L || !params || L->n == 0) return ts_error(TINYSAM_E_ARG, "encoder_grad: bad argument");
    ts_egf *e = calloc(1, sizeof *e);
    if (!e) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    e->L = L;
    e->params = params;
    bind(L, (float *)params, &e->p);
    const ts_eg_config *c = &L->c;
    /* the module list and the sizes of everything */
    int R = c->img / 4, nm = 0, vi = 0, maxN = 1;
    size_t smax = 0, gmax = 0, pabmax = 1;
#define UPD(v, x) ((v) = (v) > SZ(x) ? (v) : SZ(x))
    mod *m = e->m;
    m[nm++] = (mod){.kind = M_PE, .R = c->img, .Ro = R, .Ci = 3, .Co = c->dims[0]};
    UPD(smax, SZ(c->img / 2) * (c->img / 2) * (c->dims[0] / 2));
    for (int b = 0; b < c->depths[0]; b++) {
        m[nm++] = (mod){.kind = M_MB, .idx = b, .R = R, .Ro = R, .Ci = c->dims[0],
                        .Co = c->dims[0], .hidden = c->dims[0] * c->mb_ratio};
        UPD(smax, SZ(R) * R * c->dims[0] * c->mb_ratio);
    }
    for (int s = 0; s < 4; s++) {
        const int C = c->dims[s];
        for (int b = 0; s > 0 && b < c->depths[s]; b++) {
            mod *v = &m[nm++];
            const int ws = c->windows[s], nw = (R + ws - 1) / ws;
            *v = (mod){.kind = M_VB, .idx = vi++, .R = R, .Ro = R, .Ci = C, .Co = C,
                       .heads = c->heads[s], .ws = ws, .hidden = C * c->mlp_ratio,
                       .Rp = nw * ws, .nw = nw};
            UPD(smax, SZ(R) * R * C * c->mlp_ratio);
            UPD(smax, SZ(v->Rp) * v->Rp * 3 * C);
            UPD(pabmax, SZ(nw) * nw * v->heads * ws * ws);
            if (ws * ws > maxN) maxN = ws * ws;
        }
        if (s < 3) {
            const int Ro = (R - 1) / c->merge_stride[s] + 1;
            m[nm++] = (mod){.kind = M_MG, .idx = s, .R = R, .Ro = Ro, .Ci = C,
                            .Co = c->dims[s + 1], .stride = c->merge_stride[s]};
            UPD(smax, SZ(R) * R * c->dims[s + 1]);
            R = Ro;
        }
    }
    m[nm++] = (mod){.kind = M_NECK, .R = R, .Ro = R, .Ci = c->dims[3], .Co = c->neck};
    UPD(smax, SZ(R) * R * c->neck);
    e->nm = nm;
    for (int i = 0; i < nm; i++) {
        UPD(gmax, SZ(m[i].R) * m[i].R * m[i].Ci);
        UPD(gmax, SZ(m[i].Ro) * m[i].Ro * m[i].Co);
        UPD(smax, SZ(m[i].R) * m[i].R * m[i].Ci);
    }
    size_t colmax = SZ(CHUNK) * 9 * TS_MAX(c->neck, c->dims[0] / 2);
    e->colmax = colmax;
    size_t wpmax = SZ(9) * TS_MAX(SZ(c->neck) * c->neck, SZ(c->dims[0]) * c->dims[0] / 2);
    e->owned = calloc(16 * MAX_MODS + 32, sizeof(float *));
    e->bidx = malloc(sizeof(int) * SZ(maxN) * maxN);
    e->acc = calloc(10 * SZ(MAXC), sizeof(double));
    e->part = calloc(SZ(NTASK) * 2 * MAXC, sizeof(double));
    e->pab = calloc(pabmax, sizeof(double));
    e->pdw = calloc(SZ(NTASK) * 9 * DWMAX, sizeof(double));
    e->nslot = TS_MAX(1, TS_MIN(ts_num_threads(), 64));
    e->k = kern_pick();
    e->maxN = maxN;
    int bad = !e->owned || !e->bidx || !e->acc || !e->part || !e->pab || !e->pdw;
    for (int k = 0; k < 4 && !bad; k++) bad = !(e->s[k] = talloc(e, smax, &e->scratch_n));
    bad = bad || !(e->gin = talloc(e, gmax, &e->scratch_n)) ||
          !(e->gout = talloc(e, gmax, &e->scratch_n)) ||
          !(e->col = talloc(e, colmax, &e->scratch_n)) ||
          !(e->dcol = talloc(e, colmax, &e->scratch_n)) ||
          !(e->tr = talloc(e, SZ(CHUNK) * MAXC, &e->scratch_n)) ||
          !(e->wp = talloc(e, wpmax, &e->scratch_n)) ||
          !(e->gwp = talloc(e, wpmax, &e->scratch_n)) ||
          !(e->w9 = talloc(e, SZ(9) * MAXC, &e->scratch_n)) ||
          !(e->wsc = talloc(e, SZ(e->nslot) * 3 * maxN * maxN, &e->scratch_n));
    for (int i = 0; i < nm && !bad; i++) {
        mod *q = &m[i];
        const size_t P = SZ(q->R) * q->R, Po = SZ(q->Ro) * q->Ro;
        size_t *tn = &e->tape_n;
        bad = !(q->x = talloc(e, P * q->Ci, tn));
        switch (q->kind) {
        case M_PE: {
            const size_t P1 = SZ(q->R / 2) * (q->R / 2);
            bad = bad || !(q->r1 = talloc(e, P1 * q->Co / 2, tn)) ||
                  !(q->r2 = talloc(e, Po * q->Co, tn));
            break;
        }
        case M_MB:
            bad = bad || !(q->r1 = talloc(e, P * q->hidden, tn)) ||
                  !(q->r2 = talloc(e, P * q->hidden, tn)) || !(q->r3 = talloc(e, P * q->Co, tn));
            break;
        case M_MG:
            bad = bad || !(q->r1 = talloc(e, P * q->Co, tn)) ||
                  !(q->r2 = talloc(e, Po * q->Co, tn)) || !(q->r3 = talloc(e, Po * q->Co, tn));
            break;
        case M_VB: {
            const size_t Np = SZ(q->Rp) * q->Rp, N = SZ(q->ws) * q->ws;
            bad = bad || !(q->qkv = talloc(e, Np * 3 * q->Ci, tn)) ||
                  !(q->P = talloc(e, SZ(q->nw) * q->nw * q->heads * N * N, tn)) ||
                  !(q->O = talloc(e, Np * q->Ci, tn)) || !(q->t1 = talloc(e, P * q->Ci, tn)) ||
                  !(q->rlc = talloc(e, P * q->Ci, tn)) || !(q->f1 = talloc(e, P * q->hidden, tn));
            break;
        }
        case M_NECK:
            bad = bad || !(q->r1 = talloc(e, P * q->Co, tn)) || !(q->r2 = talloc(e, P * q->Co, tn));
            break;
        }
    }
#undef UPD
    if (bad) {
        ts_egf_free(e);
        return ts_error(TINYSAM_E_NOMEM, "encoder_grad: out of memory for the tape");
    }
    *out = e;
    return 0;
}

/* ---- primitives ------------------------------------------------------------------------------ */

typedef struct {
    int ci, co, k, stride, dw;
} cgeo;

static float gelu_grad(float x) {
    const float phi = 0.39894228040143267794f * expf(-0.5f * x * x);
    return 0.5f * (1.0f + erff(x * 0.70710678118654752440f)) + x * phi;
}

/* ---- portable kernels (encoder_grad_k.h; the AVX-512 ones are in encoder_grad_avx512.c) -- */

static void sk_dgelu(const float *x, size_t n, float *dy) {
    for (size_t k = 0; k < n; k++) dy[k] *= gelu_grad(x[k]);
}

static void sk_bn_rows(const float *r, const float *res, const float *al, const float *sh,
                       size_t rows, int co, int dg, float *out) {
    for (size_t p = 0; p < rows; p++) {
        const float *rr = r + p * co;
        float *o = out + p * co;
        for (int k = 0; k < co; k++) {
            float v = fmaf(rr[k], al[k], sh[k]);
            if (res) v += res[p * co + k];
            o[k] = dg ? o[k] * gelu_grad(v) : v;
        }
    }
}

static void sk_bn_bwd_rows(const float *r, const float *res, const float *al,
                           const float *sh, const float *mean, const float *rstd, size_t rows,
                           int co, int dg, const float *din, float *dout, float *dcopy,
                           double *sg, double *sb) {
    for (size_t p = 0; p < rows; p++)
        for (int k = 0; k < co; k++) {
            const size_t i = p * co + k;
            float d = din[i];
            if (dg) {
                float v = fmaf(r[i], al[k], sh[k]);
                if (res) v += res[i];
                d *= gelu_grad(v);
            }
            if (dcopy) dcopy[i] = d;
            sg[k] += (double)d * ((r[i] - mean[k]) * rstd[k]);
            sb[k] += d;
            dout[i] = d * al[k];
        }
}

static void sk_ln_bwd_rows(const float *x, const float *dy, const float *w, float eps,
                           size_t rows, int C, int acc, float *dx, double *aw, double *ab) {
    for (size_t m = 0; m < rows; m++) {
        const float *xr = x + m * C, *d = dy + m * C;
        double mean = 0, var = 0;
        for (int k = 0; k < C; k++) mean += xr[k];
        mean /= C;
        for (int k = 0; k < C; k++) var += (xr[k] - mean) * (xr[k] - mean);
        var /= C;
        const double rstd = 1.0 / sqrt(var + eps);
        double mg = 0, mgx = 0;
        for (int k = 0; k < C; k++) {
            const double xh = (xr[k] - mean) * rstd, gk = (double)d[k] * w[k];
            mg += gk, mgx += gk * xh;
            aw[k] += d[k] * xh, ab[k] += d[k];
        }
        mg /= C, mgx /= C;
        float *o = dx + m * C;
        for (int k = 0; k < C; k++) {
            const double xh = (xr[k] - mean) * rstd;
            const float v = (float)(rstd * ((double)d[k] * w[k] - mg - xh * mgx));
            o[k] = acc ? o[k] + v : v;
        }
    }
}

static void sk_softmax_bwd(const float *P, float *dP, int N, const int *bidx, float scale,
                           double *dab) {
    for (int i = 0; i < N; i++) {
        float *r = dP + SZ(i) * N;
        const float *pr = P + SZ(i) * N;
        double sum = 0;
        for (int k = 0; k < N; k++) sum += (double)r[k] * pr[k];
        for (int k = 0; k < N; k++) {
            r[k] = pr[k] * (r[k] - (float)sum);
            dab[bidx[SZ(i) * N + k]] += r[k];
            r[k] *= scale;
        }
    }
}

static void sk_colsum_rows(const float *x, size_t rows, int n, double *a) {
    for (size_t p = 0; p < rows; p++)
        for (int k = 0; k < n; k++) a[k] += x[p * n + k];
}

static void sk_dw_bwd(const float *w9, const float *x, const float *dr, float *dx, int H, int W,
                      int C, int s, int oy0, int oy1, int iy0, int iy1, double *a) {
    const int Ho = (H - 1) / s + 1, Wo = (W - 1) / s + 1;
    float ra[9 * DWMAX];
    for (int oy = oy0; oy < oy1; oy++) {
        memset(ra, 0, sizeof(float) * 9 * C);
        for (int ox = 0; ox < Wo; ox++) {
            const float *d = dr + (SZ(oy) * Wo + ox) * C;
            for (int t = 0; t < 9; t++) {
                const int iy = oy * s - 1 + t / 3, ix = ox * s - 1 + t % 3;
                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                const float *xi = x + (SZ(iy) * W + ix) * C;
                float *rt = ra + SZ(t) * C;
                for (int k = 0; k < C; k++) rt[k] += d[k] * xi[k];
            }
        }
        for (int k = 0; k < 9 * C; k++) a[k] += ra[k];
    }
    if (!dx) return;
    for (int iy = iy0; iy < iy1; iy++)
        for (int ix = 0; ix < W; ix++) {
            float *di = dx + (SZ(iy) * W + ix) * C;
            for (int t = 0; t < 9; t++) {
                const int ny = iy + 1 - t / 3, nx = ix + 1 - t % 3;
                if (ny < 0 || nx < 0 || ny % s || nx % s || ny / s >= Ho || nx / s >= Wo)
                    continue;
                const float *d = dr + (SZ(ny / s) * Wo + nx / s) * C;
                const float *wt = w9 + SZ(t) * C;
                for (int k = 0; k < C; k++) di[k] += d[k] * wt[k];
            }
        }
}

static const ts_eg_kern kern_scalar = {
    .dgelu = sk_dgelu,
    .bn_rows = sk_bn_rows,
    .bn_bwd_rows = sk_bn_bwd_rows,
    .ln_bwd_rows = sk_ln_bwd_rows,
    .softmax_bwd = sk_softmax_bwd,
    .colsum_rows = sk_colsum_rows,
    .dw_bwd = sk_dw_bwd,
};

/* The kernels of the ISA nn.h dispatches to (TINYSAM_ISA respected). */
static const ts_eg_kern *kern_pick(void) {
    return !strcmp(ts_nn_isa_name(), "avx512") ? ts_eg_kern_avx512() : &kern_scalar;
}

typedef struct {
    const ts_eg_kern *k;
    const float *x;
    float *dy;
    size_t n;
} gb_job;

static void gelu_bwd_task(void *ctx, int i, int tid) {
    (void)tid;
    const gb_job *j = ctx;
    const size_t a = j->n * i / NTASK, b = j->n * (i + 1) / NTASK;
    j->k->dgelu(j->x + a, b - a, j->dy + a);
}

/* dy[i] *= GELU'(x[i]) */
static void gelu_bwd(const ts_egf *e, const float *x, size_t n, float *dy) {
    gb_job j = {e->k, x, dy, n};
    ts_parallel_for(NTASK, gelu_bwd_task, &j);
}

/* Fills e->alpha / e->shift for a BatchNorm (spec TINYSAM.md 4.2 arithmetic). */
static void bn_coef(ts_egf *e, const cbn_p *c, int co) {
    for (int o = 0; o < co; o++) {
        e->alpha[o] = c->g[o] * (1.0f / sqrtf(c->var[o] + BN_EPS));
        e->shift[o] = fmaf(-c->mean[o], e->alpha[o], c->b[o]);
    }
}

/* A row-range job over P rows of co channels (the fields each loop needs). */
typedef struct {
    ts_egf *e;
    const cbn_p *c;
    const float *r, *res, *w, *g; /* g: an upstream gradient that is only read */
    float *out, *dy, *dx;
    size_t P;
    int co, acc;
    float eps;
    const float *rstd;
} row_job;

static void bn_apply_task(void *ctx, int i, int tid) {
    (void)tid;
    const row_job *j = ctx;
    const int co = j->co;
    const size_t a = j->P * i / NTASK, b = j->P * (i + 1) / NTASK;
    j->e->k->bn_rows(j->r + a * co, j->res ? j->res + a * co : NULL, j->e->alpha, j->e->shift,
                     b - a, co, j->acc, j->out + a * co);
}

/* out = act(BN(r)) (+ res before the act when res != NULL) */
static void bn_apply(ts_egf *e, const cbn_p *c, const float *r, size_t P, int co,
                     const float *res, int gelu, float *out) {
    bn_coef(e, c, co);
    row_job j = {.e = e, .c = c, .r = r, .res = res, .out = out, .P = P, .co = co};
    ts_parallel_for(NTASK, bn_apply_task, &j);
    if (gelu) ts_gelu(out, P * co);
}

/* Sums the per-task partials (2 x MAXC each) of n channels into gw and gb, in task order. */
static void reduce_parts(const ts_egf *e, int n, float *gw, float *gb) {
    for (int k = 0; k < n; k++) {
        double a = 0, b = 0;
        for (int t = 0; t < NTASK; t++) {
            a += e->part[(SZ(t) * 2) * MAXC + k];
            b += e->part[(SZ(t) * 2 + 1) * MAXC + k];
        }
        if (gw) gw[k] += (float)a;
        if (gb) gb[k] += (float)b;
    }
}

static void bn_bwd_task(void *ctx, int i, int tid) {
    (void)tid;
    const row_job *j = ctx;
    const int co = j->co;
    double *sg = j->e->part + SZ(i) * 2 * MAXC, *sb = sg + MAXC;
    memset(sg, 0, sizeof(double) * 2 * MAXC);
    const size_t a = j->P * i / NTASK, b = j->P * (i + 1) / NTASK, o = a * co;
    j->e->k->bn_bwd_rows(j->r + o, j->res ? j->res + o : NULL, j->e->alpha, j->e->shift,
                         j->c->mean, j->rstd, b - a, co, j->acc, j->g + o, j->dy + o,
                         j->dx ? j->dx + o : NULL, sg, sb);
}

/* BatchNorm (eval) backward, optionally through a GELU after it (dg: the forward was
 * GELU(BN(r) + res), res may be NULL): d = din (* GELU'), copied to dcopy when not NULL;
 * dout = d * alpha (dout may be din); dgamma += sum d * xhat, dbeta += sum d (gc may be
 * NULL). */
static void bn_bwd_ex(ts_egf *e, const cbn_p *c, const cbn_p *gc, const float *r, size_t P,
                      int co, int dg, const float *res, const float *din, float *dout,
                      float *dcopy) {
    float rstd[MAXC];
    bn_coef(e, c, co);
    for (int k = 0; k < co; k++) rstd[k] = 1.0f / sqrtf(c->var[k] + BN_EPS);
    row_job j = {.e = e, .c = c, .r = r, .res = res, .g = din, .dy = dout, .dx = dcopy, .P = P,
                 .co = co, .acc = dg, .rstd = rstd};
    ts_parallel_for(NTASK, bn_bwd_task, &j);
    if (gc) reduce_parts(e, co, gc->g, gc->b);
}

/* in place, no GELU */
static void bn_bwd(ts_egf *e, const cbn_p *c, const cbn_p *gc, const float *r, size_t P, int co,
                   float *dy) {
    bn_bwd_ex(e, c, gc, r, P, co, 0, NULL, dy, dy, NULL);
}

static void colsum_task(void *ctx, int i, int tid) {
    (void)tid;
    const row_job *j = ctx;
    const int N = j->co;
    double *a = j->e->part + SZ(i) * 2 * MAXC + MAXC;
    memset(a, 0, sizeof(double) * N);
    const size_t p0 = j->P * i / NTASK, p1 = j->P * (i + 1) / NTASK;
    j->e->k->colsum_rows(j->r + p0 * N, p1 - p0, N, a);
}

/* gb[n] += sum over rows of dy[P][N] */
static void colsum(ts_egf *e, const float *dy, size_t P, int N, float *gb) {
    if (!gb) return;
    row_job j = {.e = e, .r = dy, .P = P, .co = N};
    ts_parallel_for(NTASK, colsum_task, &j);
    reduce_parts(e, N, NULL, gb);
}

typedef struct {
    ts_egf *e;
    const float *dy, *x;
    float *gW;
    size_t P;
    int ldy, N, ldx, K, ldw, ntask, splitn;
} wg_job;

/* Task t of a weight gradient: a 16-aligned range of the rows of gW (splitn: its dy columns
 * are transposed into rows of e->tr) or of its columns (each task transposes the whole dy
 * chunk into its own slot of e->tr). Every element sums the chunks in order. */
static void wgrad_task(void *ctx, int t, int tid) {
    (void)tid;
    const wg_job *j = ctx;
    const int D = j->splitn ? j->N : j->K, nb = (D + 15) / 16;
    const int lo = TS_MIN(D, 16 * (nb * t / j->ntask));
    const int hi = TS_MIN(D, 16 * (nb * (t + 1) / j->ntask));
    if (lo >= hi) return;
    float *tr = j->e->tr + (j->splitn ? SZ(lo) : SZ(t) * j->N) * CHUNK;
    for (size_t p0 = 0; p0 < j->P; p0 += CHUNK) {
        const int n = (int)TS_MIN((size_t)CHUNK, j->P - p0);
        const float *dy = j->dy + p0 * j->ldy, *x = j->x + p0 * j->ldx;
        if (j->splitn) {
            ts_transpose_serial(dy + lo, j->ldy, n, hi - lo, tr, n);
            ts_gemm_serial(hi - lo, j->K, n, tr, n, x, j->ldx, 0, j->gW + SZ(lo) * j->ldw,
                           j->ldw, 1.0f, NULL, TS_ACT_NONE);
        } else {
            ts_transpose_serial(dy, j->ldy, n, j->N, tr, n);
            ts_gemm_serial(j->N, hi - lo, n, tr, n, x + lo, j->ldx, 0, j->gW + lo, j->ldw, 1.0f,
                           NULL, TS_ACT_NONE);
        }
    }
}

/* gW[N][K] += dy[P][N]^T x[P][K] (ldx K), in row chunks through transposed copies of dy,
 * split over the longer side of gW into a task count that depends on the shape only. */
static void wgrad(ts_egf *e, const float *dy, int ldy, size_t P, int N, const float *x, int ldx,
                  int K, float *gW, int ldw) {
    wg_job j = {.e = e, .dy = dy, .x = x, .gW = gW, .P = P, .ldy = ldy, .N = N, .ldx = ldx,
                .K = K, .ldw = ldw, .splitn = N >= K};
    j.ntask = WG_TASKS;
    if (!j.splitn) j.ntask = TS_MAX(1, TS_MIN(j.ntask, MAXC / N));
    ts_parallel_for(j.ntask, wgrad_task, &j);
}

/* Raw convolution r = conv(x), x[H][W][ci] -> r[Ho][Wo][co]. */
static void conv_fwd(ts_egf *e, const cbn_p *c, cgeo g, const float *x, int H, int W, float *r) {
    if (g.k == 1) {
        ts_gemm(H * W, g.co, g.ci, x, g.ci, c->w, g.ci, 1, r, g.co, 0.0f);
    } else if (g.dw) {
        for (int o = 0; o < g.co; o++)
            for (int t = 0; t < 9; t++) e->w9[SZ(t) * g.co + o] = c->w[SZ(o) * 9 + t];
        ts_dwconv3x3_nhwc(x, H, W, g.co, g.stride, e->w9, NULL, TS_ACT_NONE, r);
    } else {
        for (int o = 0; o < g.co; o++)
            for (int i = 0; i < g.ci; i++)
                for (int t = 0; t < 9; t++)
                    e->wp[(SZ(o) * 9 + t) * g.ci + i] = c->w[(SZ(o) * g.ci + i) * 9 + t];
        ts_conv3x3_nhwc(x, H, W, g.ci, g.stride, e->wp, NULL, g.co, TS_ACT_NONE, r);
    }
}

typedef struct {
    const ts_eg_kern *k;
    const float *w9, *x, *dr;
    float *dx;
    double *part; /* NTASK slots of 9 x DWMAX; a task uses [9][C] of its slot */
    int H, W, C, s;
} dw_job;

/* Depthwise 3x3 backward, task i of NTASK: the weight gradient of output rows
 * [Ho i / NTASK, Ho (i + 1) / NTASK) into its partial, and dx of input rows
 * [H i / NTASK, H (i + 1) / NTASK) gathered from the output pixels that read them (no two
 * tasks write the same row). */
static void dw_bwd_task(void *ctx, int i, int tid) {
    (void)tid;
    const dw_job *j = ctx;
    const int Ho = (j->H - 1) / j->s + 1;
    double *a = j->part + SZ(i) * 9 * DWMAX;
    memset(a, 0, sizeof(double) * 9 * j->C);
    j->k->dw_bwd(j->w9, j->x, j->dr, j->dx, j->H, j->W, j->C, j->s, Ho * i / NTASK,
                 Ho * (i + 1) / NTASK, j->H * i / NTASK, j->H * (i + 1) / NTASK, a);
}

typedef struct {
    const float *x;
    float *col;
    int H, W, ci, s, Wo, n;
    size_t p0;
} i2c_job;

/* im2col rows [n i / NTASK, n (i + 1) / NTASK) of the chunk at output pixel p0: taps (ky, kx)
 * major, input channel minor, zeros at the padding */
static void im2col_task(void *ctx, int i, int tid) {
    (void)tid;
    const i2c_job *j = ctx;
    const int ci = j->ci, K9 = 9 * ci;
    for (int r = j->n * i / NTASK; r < j->n * (i + 1) / NTASK; r++) {
        const int oy = (int)((j->p0 + r) / j->Wo), ox = (int)((j->p0 + r) % j->Wo);
        float *cr = j->col + SZ(r) * K9;
        for (int t = 0; t < 9; t++) {
            const int iy = oy * j->s - 1 + t / 3, ix = ox * j->s - 1 + t % 3;
            if (iy < 0 || iy >= j->H || ix < 0 || ix >= j->W)
                memset(cr + t * ci, 0, sizeof(float) * ci);
            else
                memcpy(cr + t * ci, j->x + (SZ(iy) * j->W + ix) * ci, sizeof(float) * ci);
        }
    }
}

typedef struct {
    const float *dcol;
    float *dx;
    int H, W, ci, s, Wo, n;
    size_t p0;
} c2i_job;

/* col2im of a chunk as a gather: task i adds into its share of the input rows the columns of
 * the chunk's output pixels that read them, in output-pixel order (one tap per pixel) */
static void col2im_task(void *ctx, int i, int tid) {
    (void)tid;
    const c2i_job *j = ctx;
    const int s = j->s, ci = j->ci, K9 = 9 * ci, Wo = j->Wo;
    const int oya = (int)(j->p0 / Wo), oyb = (int)((j->p0 + j->n - 1) / Wo);
    const int ya = TS_MAX(0, oya * s - 1), yb = TS_MIN(j->H - 1, oyb * s + 1), ny = yb - ya + 1;
    for (int iy = ya + ny * i / NTASK; iy < ya + ny * (i + 1) / NTASK; iy++)
        for (int oy = oya; oy <= oyb; oy++) {
            const int ky = iy - oy * s + 1;
            if (ky < 0 || ky > 2) continue;
            for (int ox = 0; ox < Wo; ox++) {
                const long r = (long)oy * Wo + ox - (long)j->p0;
                if (r < 0 || r >= j->n) continue;
                for (int kx = 0; kx < 3; kx++) {
                    const int ix = ox * s - 1 + kx;
                    if (ix < 0 || ix >= j->W) continue;
                    float *di = j->dx + (SZ(iy) * j->W + ix) * ci;
                    const float *dc = j->dcol + SZ(r) * K9 + SZ(ky * 3 + kx) * ci;
                    for (int c = 0; c < ci; c++) di[c] += dc[c];
                }
            }
        }
}

/* Convolution backward from dr[Ho][Wo][co]: dx (H x W x ci; NULL = not wanted) is overwritten,
 * or accumulated into when acc; gw (checkpoint layout) accumulates. */
/* Hands the gradient dr of a layer's raw output (rows x cols, row-major) to the hook with the
 * layer's name: the weight tensor's name less ".weight" (".c.weight" of a conv with a BatchNorm
 * gives the conv-BN prefix "....c" the inference names its folded layer by). With a BatchNorm
 * c->g, the folded layer's output is BN(r) = alpha r + shift, so its gradient is dr / alpha:
 * alpha goes along as the per-column scale. */
static void hook_out(ts_egf *e, const float *w, const cbn_p *c, const float *dr, size_t rows,
                     int cols) {
    if (!e->hook) return;
    const ts_eg_tensor *t = NULL;
    for (int i = 0; i < e->L->n && !t; i++)
        if (e->params + e->L->t[i].off == w) t = &e->L->t[i];
    if (!t) return;
    char name[TS_EG_NAME];
    snprintf(name, sizeof name, "%s", t->name);
    char *dot = strrchr(name, '.');
    if (dot) *dot = 0;
    float *al = NULL;
    if (c && c->g) {
        bn_coef(e, c, cols);
        al = e->alpha;
    }
    e->hook(e->hook_ctx, name, dr, rows, cols, al);
}

void ts_egf_set_grad_hook(ts_egf *e, ts_egf_grad_hook fn, void *ctx) {
    if (!e) return;
    e->hook = fn;
    e->hook_ctx = ctx;
}

static void conv_bwd(ts_egf *e, const cbn_p *c, cgeo g, const float *x, int H, int W,
                     const float *dr, float *dx, int acc, float *gw) {
    const int Ho = (H - 1) / g.stride + 1, Wo = (W - 1) / g.stride + 1;
    const size_t P = SZ(H) * W, Po = SZ(Ho) * Wo;
    if (!g.dw) hook_out(e, c->w, c, dr, Po, g.co);
    if (g.k == 1) {
        /* weight gradient first: dx may overwrite x (the callers reuse scratch) */
        wgrad(e, dr, g.co, P, g.co, x, g.ci, g.ci, gw, g.ci);
        if (dx) ts_gemm((int)P, g.ci, g.co, dr, g.co, c->w, g.ci, 0, dx, g.ci, acc ? 1.0f : 0.0f);
        return;
    }
    if (dx && !acc && (g.dw || g.stride != 1)) memset(dx, 0, sizeof(float) * P * g.ci);
    if (g.dw) {
        for (int o = 0; o < g.co; o++)
            for (int t = 0; t < 9; t++) e->w9[SZ(t) * g.co + o] = c->w[SZ(o) * 9 + t];
        dw_job j = {.k = e->k, .w9 = e->w9, .x = x, .dr = dr, .dx = dx, .part = e->pdw,
                    .H = H, .W = W, .C = g.co, .s = g.stride};
        ts_parallel_for(NTASK, dw_bwd_task, &j);
        for (int k = 0; k < g.co; k++)
            for (int t = 0; t < 9; t++) {
                double a = 0;
                for (int i = 0; i < NTASK; i++) a += e->pdw[SZ(i) * 9 * DWMAX + SZ(t) * g.co + k];
                gw[SZ(k) * 9 + t] += (float)a;
            }
        return;
    }
    /* dense 3x3: im2col per chunk of output pixels, taps (ky, kx, ci) as the permuted weight */
    const int ci = g.ci, co = g.co, K9 = 9 * ci;
    for (int o = 0; o < co; o++)
        for (int i = 0; i < ci; i++)
            for (int t = 0; t < 9; t++)
                e->wp[(SZ(o) * 9 + t) * ci + i] = c->w[(SZ(o) * ci + i) * 9 + t];
    memset(e->gwp, 0, sizeof(float) * co * K9);
    /* stride 1, dx overwritten: dx is the 3x3 convolution of dr with the flipped, transposed
     * kernel (below), instead of a GEMM into columns and their scatter */
    const int direct = dx && !acc && g.stride == 1;
    /* up to CNMAX output pixels per chunk, as the column buffers and e->tr allow (few input
     * channels: fewer chunks, fewer pool calls) */
    const size_t cn =
        TS_MAX(SZ(1), TS_MIN(TS_MIN(e->colmax / K9, SZ(CHUNK) * MAXC / co), SZ(CNMAX)));
    for (size_t p0 = 0; p0 < Po; p0 += cn) {
        const int n = (int)TS_MIN(cn, Po - p0);
        i2c_job ij = {.x = x, .col = e->col, .H = H, .W = W, .ci = ci, .s = g.stride, .Wo = Wo,
                      .p0 = p0, .n = n};
        if (SZ(n) * K9 >= PAR_MIN) /* small chunks (3 input channels): pool calls cost more */
            ts_parallel_for(NTASK, im2col_task, &ij);
        else
            for (int i = 0; i < NTASK; i++) im2col_task(&ij, i, 0);
        ts_transpose_serial(dr + p0 * co, co, n, co, e->tr, n);
        ts_gemm(co, K9, n, e->tr, n, e->col, K9, 0, e->gwp, K9, 1.0f);
        if (!dx || direct) continue;
        ts_gemm(n, K9, co, dr + p0 * co, co, e->wp, K9, 0, e->dcol, K9, 0.0f);
        c2i_job cj = {.dcol = e->dcol, .dx = dx, .H = H, .W = W, .ci = ci, .s = g.stride,
                      .Wo = Wo, .n = n, .p0 = p0};
        ts_parallel_for(NTASK, col2im_task, &cj);
    }
    for (int o = 0; o < co; o++)
        for (int i = 0; i < ci; i++)
            for (int t = 0; t < 9; t++)
                gw[(SZ(o) * ci + i) * 9 + t] += e->gwp[(SZ(o) * 9 + t) * ci + i];
    if (!direct) return;
    /* dx[y][x][i] = sum over taps (ky, kx), o of dr[y + 1 - ky][x + 1 - kx][o] w[o][i][ky][kx] */
    for (int i = 0; i < ci; i++)
        for (int t = 0; t < 9; t++)
            for (int o = 0; o < co; o++)
                e->wp[(SZ(i) * 9 + t) * co + o] = c->w[(SZ(o) * ci + i) * 9 + 8 - t];
    ts_conv3x3_nhwc(dr, Ho, Wo, co, 1, e->wp, NULL, ci, TS_ACT_NONE, dx);
}

static void ln_bwd_task(void *ctx, int i, int tid) {
    (void)tid;
    const row_job *j = ctx;
    const int C = j->co;
    double *aw = j->e->part + SZ(i) * 2 * MAXC, *ab = aw + MAXC;
    memset(aw, 0, sizeof(double) * 2 * MAXC);
    const size_t a = j->P * i / NTASK, b = j->P * (i + 1) / NTASK;
    j->e->k->ln_bwd_rows(j->r + a * C, j->g + a * C, j->w, j->eps, b - a, C, j->acc,
                         j->dx + a * C, aw, ab);
}

/* LayerNorm backward over rows of x[M][C] (the forward input): dx = (or +=, acc) the input
 * gradient from dy; gw, gb accumulate. dx may equal dy (row by row in place) unless acc. */
static void ln_bwd(ts_egf *e, const float *x, size_t M, int C, const float *w, float eps,
                   const float *dy, float *dx, int acc, float *gw, float *gb) {
    row_job j = {.e = e, .r = x, .w = w, .g = dy, .dx = dx, .P = M, .co = C,
                 .acc = acc, .eps = eps};
    ts_parallel_for(NTASK, ln_bwd_task, &j);
    reduce_parts(e, C, gw, gb);
}

/* ---- modules: forward ------------------------------------------------------------------------ */

static cgeo G(int ci, int co, int k, int stride, int dw) {
    return (cgeo){ci, co, k, stride, dw};
}

static void pe_fwd(ts_egf *e, mod *q, float *out) {
    const cbn_p *c = e->p.pe;
    const int S = q->R, S1 = S / 2, c1 = q->Co / 2;
    conv_fwd(e, &c[0], G(3, c1, 3, 2, 0), q->x, S, S, q->r1);
    bn_apply(e, &c[0], q->r1, SZ(S1) * S1, c1, NULL, 1, e->s[0]);
    conv_fwd(e, &c[1], G(c1, q->Co, 3, 2, 0), e->s[0], S1, S1, q->r2);
    bn_apply(e, &c[1], q->r2, SZ(q->Ro) * q->Ro, q->Co, NULL, 0, out);
}

static void mb_fwd(ts_egf *e, mod *q, float *out) {
    const cbn_p *c = e->p.mb[q->idx];
    const int R = q->R, C = q->Ci, Hd = q->hidden;
    const size_t P = SZ(R) * R;
    conv_fwd(e, &c[0], G(C, Hd, 1, 1, 0), q->x, R, R, q->r1);
    bn_apply(e, &c[0], q->r1, P, Hd, NULL, 1, e->s[0]);
    conv_fwd(e, &c[1], G(Hd, Hd, 3, 1, 1), e->s[0], R, R, q->r2);
    bn_apply(e, &c[1], q->r2, P, Hd, NULL, 1, e->s[1]);
    conv_fwd(e, &c[2], G(Hd, C, 1, 1, 0), e->s[1], R, R, q->r3);
    bn_apply(e, &c[2], q->r3, P, C, q->x, 1, out);
}

static void mg_fwd(ts_egf *e, mod *q, float *out) {
    const cbn_p *c = e->p.mg[q->idx];
    const int R = q->R, Ro = q->Ro, Co = q->Co;
    conv_fwd(e, &c[0], G(q->Ci, Co, 1, 1, 0), q->x, R, R, q->r1);
    bn_apply(e, &c[0], q->r1, SZ(R) * R, Co, NULL, 1, e->s[0]);
    conv_fwd(e, &c[1], G(Co, Co, 3, q->stride, 1), e->s[0], R, R, q->r2);
    bn_apply(e, &c[1], q->r2, SZ(Ro) * Ro, Co, NULL, 1, e->s[1]);
    conv_fwd(e, &c[2], G(Co, Co, 1, 1, 0), e->s[1], Ro, Ro, q->r3);
    bn_apply(e, &c[2], q->r3, SZ(Ro) * Ro, Co, NULL, 0, out);
}

typedef struct {
    const mod *q;
    const float *src, *base;
    float *dst;
} wg_copy_job;

/* Window layout: padded token (wy*ws+iy, wx*ws+ix) -> row (wy*nw+wx)*N + iy*ws+ix. Task wy
 * gathers the windows of window row wy from x[R*R][C] into xw[Np][C] (zeros at the
 * padding). */
static void win_gather_task(void *ctx, int wy, int tid) {
    (void)tid;
    const wg_copy_job *j = ctx;
    const mod *q = j->q;
    const int R = q->R, ws = q->ws, nw = q->nw, C = q->Ci, N = ws * ws;
    for (int wx = 0; wx < nw; wx++)
        for (int i = 0; i < N; i++) {
            const int y = wy * ws + i / ws, xx = wx * ws + i % ws;
            float *d = j->dst + ((SZ(wy) * nw + wx) * N + i) * C;
            if (y < R && xx < R)
                memcpy(d, j->src + (SZ(y) * R + xx) * C, sizeof(float) * C);
            else
                memset(d, 0, sizeof(float) * C);
        }
}

static void win_gather(const mod *q, const float *x, float *xw) {
    wg_copy_job j = {.q = q, .src = x, .dst = xw};
    ts_parallel_for(q->nw, win_gather_task, &j);
}

/* Task wy: the real rows of the windows of window row wy: y = base + yw (y += yw when base
 * is NULL). Every pixel lies in one window: no two tasks write the same row. */
static void win_scatter_task(void *ctx, int wy, int tid) {
    (void)tid;
    const wg_copy_job *j = ctx;
    const mod *q = j->q;
    const int R = q->R, ws = q->ws, nw = q->nw, C = q->Ci, N = ws * ws;
    for (int wx = 0; wx < nw; wx++)
        for (int i = 0; i < N; i++) {
            const int yy = wy * ws + i / ws, xx = wx * ws + i % ws;
            if (yy >= R || xx >= R) continue;
            const float *sw = j->src + ((SZ(wy) * nw + wx) * N + i) * C;
            const size_t o = (SZ(yy) * R + xx) * C;
            float *d = j->dst + o;
            const float *b = j->base ? j->base + o : d;
            for (int k = 0; k < C; k++) d[k] = b[k] + sw[k];
        }
}

/* y[R*R][C] = base + the real rows of yw[Np][C] (base NULL: y +=) */
static void win_scatter_add(const mod *q, const float *yw, const float *base, float *y) {
    wg_copy_job j = {.q = q, .src = yw, .base = base, .dst = y};
    ts_parallel_for(q->nw, win_scatter_task, &j);
}

static void set_bidx(ts_egf *e, int ws) {
    const int N = ws * ws;
    for (int i = 0; i < N; i++)
        for (int j = 0; j < N; j++)
            e->bidx[SZ(i) * N + j] = abs(i / ws - j / ws) * ws + abs(i % ws - j % ws);
}

typedef struct {
    ts_egf *e;
    const mod *q;
    const vb_p *v;
    float scale;
    const float *dO;
    float *dqkv;
} win_job;

/* Attention of window w, every head: P = softmax(q k^T scale + bias), O = P v. */
static void win_fwd_task(void *ctx, int w, int tid) {
    const win_job *wj = ctx;
    const mod *q = wj->q;
    const int C = q->Ci, N = q->ws * q->ws, h = q->heads, d = C / h;
    /* keys transposed into the thread's slot: the GEMM packs rows instead of gathering */
    float *kT = tid < wj->e->nslot ? wj->e->wsc + SZ(tid) * 3 * wj->e->maxN * wj->e->maxN
                                   : NULL;
    for (int j = 0; j < h; j++) {
        const float *qw = q->qkv + SZ(w) * N * 3 * C + SZ(j) * 3 * d;
        float *A = q->P + (SZ(w) * h + j) * N * N;
        if (kT) {
            ts_transpose_serial(qw + d, 3 * C, N, d, kT, N);
            ts_gemm_serial(N, N, d, qw, 3 * C, kT, N, 0, A, N, 0.0f, NULL, TS_ACT_NONE);
        } else {
            ts_gemm_serial(N, N, d, qw, 3 * C, qw + d, 3 * C, 1, A, N, 0.0f, NULL, TS_ACT_NONE);
        }
        const float *ab = wj->v->ab + SZ(j) * N;
        for (int i = 0; i < N * N; i++) A[i] = A[i] * wj->scale + ab[wj->e->bidx[i]];
        ts_softmax_rows_serial(A, N, N);
        ts_gemm_serial(N, d, N, A, N, qw + 2 * d, 3 * C, 0, q->O + SZ(w) * N * C + SZ(j) * d,
                       C, 0.0f, NULL, TS_ACT_NONE);
    }
}

/* Attention backward of the windows slot, slot + nslot, ... (scratch slot `slot`): dq, dk, dv
 * into dqkv, the bias-table gradient of window w and head j into pab[w][j][N]. */
static void win_bwd_task(void *ctx, int slot, int tid) {
    (void)tid;
    const win_job *wj = ctx;
    const ts_egf *e = wj->e;
    const mod *q = wj->q;
    const int C = q->Ci, N = q->ws * q->ws, h = q->heads, d = C / h, nwin = q->nw * q->nw;
    float *dP = e->wsc + SZ(slot) * 3 * e->maxN * e->maxN, *PT = dP + SZ(N) * N;
    float *dAT = PT + SZ(N) * N;
    for (int w = slot; w < nwin; w += e->nslot)
        for (int j = 0; j < h; j++) {
            const float *qw = q->qkv + SZ(w) * N * 3 * C + SZ(j) * 3 * d;
            float *dqw = wj->dqkv + SZ(w) * N * 3 * C + SZ(j) * 3 * d;
            const float *Pm = q->P + (SZ(w) * h + j) * N * N;
            const float *dOw = wj->dO + SZ(w) * N * C + SZ(j) * d;
            double *dab = e->pab + (SZ(w) * h + j) * N;
            memset(dab, 0, sizeof(double) * N);
            ts_transpose_serial(qw + 2 * d, 3 * C, N, d, dAT, N); /* v^T (dAT is free) */
            ts_gemm_serial(N, N, d, dOw, C, dAT, N, 0, dP, N, 0.0f, NULL, TS_ACT_NONE);
            ts_transpose_serial(Pm, N, N, N, PT, N);
            ts_gemm_serial(N, d, N, PT, N, dOw, C, 0, dqw + 2 * d, 3 * C, 0.0f, NULL,
                           TS_ACT_NONE);
            e->k->softmax_bwd(Pm, dP, N, e->bidx, wj->scale, dab);
            ts_gemm_serial(N, d, N, dP, N, qw + d, 3 * C, 0, dqw, 3 * C, 0.0f, NULL, TS_ACT_NONE);
            ts_transpose_serial(dP, N, N, N, dAT, N);
            ts_gemm_serial(N, d, N, dAT, N, qw, 3 * C, 0, dqw + d, 3 * C, 0.0f, NULL,
                           TS_ACT_NONE);
        }
}

static void vb_fwd(ts_egf *e, mod *q, float *out) {
    const vb_p *v = &e->p.vb[q->idx];
    const int R = q->R, C = q->Ci, ws = q->ws, N = ws * ws, h = q->heads, d = C / h;
    const int nwin = q->nw * q->nw, Np = nwin * N, Hd = q->hidden;
    const size_t P = SZ(R) * R;
    const float scale = 1.0f / sqrtf((float)d);
    float *xw = e->s[0], *xn = e->s[1], *yw = e->s[2];
    /* attention (E8-E13) */
    win_gather(q, q->x, xw);
    ts_layernorm_to(xw, xn, Np, C, v->lnw, v->lnb, LN_EPS);
    ts_gemm_ex(Np, 3 * C, C, xn, C, v->qkvw, C, 1, q->qkv, 3 * C, 0.0f, v->qkvb, TS_ACT_NONE);
    set_bidx(e, ws);
    win_job wj = {.e = e, .q = q, .v = v, .scale = scale};
    ts_parallel_for(nwin, win_fwd_task, &wj);
    ts_gemm_ex(Np, C, C, q->O, C, v->pw, C, 1, yw, C, 0.0f, v->pb, TS_ACT_NONE);
    win_scatter_add(q, yw, q->x, q->t1);
    /* local conv (no residual), then the MLP with its residual */
    conv_fwd(e, &v->lc, G(C, C, 3, 1, 1), q->t1, R, R, q->rlc);
    float *t2 = e->s[0], *ln = e->s[1], *g = e->s[2];
    bn_apply(e, &v->lc, q->rlc, P, C, NULL, 0, t2);
    ts_layernorm_to(t2, ln, (int)P, C, v->mlnw, v->mlnb, LN_EPS);
    ts_gemm_ex((int)P, Hd, C, ln, C, v->f1w, C, 1, q->f1, Hd, 0.0f, v->f1b, TS_ACT_NONE);
    memcpy(g, q->f1, sizeof(float) * P * Hd);
    ts_gelu(g, P * Hd);
    memcpy(out, t2, sizeof(float) * P * C);
    ts_gemm_ex((int)P, C, Hd, g, Hd, v->f2w, Hd, 1, out, C, 1.0f, v->f2b, TS_ACT_NONE);
}

/* LayerNorm2d on channels-last = LayerNorm over rows, eps 1e-6 */
static void neck_fwd(ts_egf *e, mod *q, float *out) {
    const net *n = &e->p;
    const int R = q->R, E = q->Co;
    const size_t P = SZ(R) * R;
    cbn_p c0 = {.w = n->n0}, c2 = {.w = n->n2};
    conv_fwd(e, &c0, G(q->Ci, E, 1, 1, 0), q->x, R, R, q->r1);
    ts_layernorm_to(q->r1, e->s[0], (int)P, E, n->n1w, n->n1b, LN2D_EPS);
    conv_fwd(e, &c2, G(E, E, 3, 1, 0), e->s[0], R, R, q->r2);
    ts_layernorm_to(q->r2, out, (int)P, E, n->n3w, n->n3b, LN2D_EPS);
}

int ts_egf_forward(ts_egf *e, const float *img, float *emb) {
    if (!e || !img || !emb) return ts_error(TINYSAM_E_ARG, "encoder_grad: NULL argument");
    const int S = e->L->c.img;
    const size_t PP = SZ(S) * S;
    float *x0 = e->m[0].x;
    for (size_t p = 0; p < PP; p++)
        for (int k = 0; k < 3; k++) x0[p * 3 + k] = img[SZ(k) * PP + p];
    memset(e->ms[0], 0, sizeof e->ms[0]);
    for (int i = 0; i < e->nm; i++) {
        mod *q = &e->m[i];
        float *out = i + 1 < e->nm ? e->m[i + 1].x : e->s[3];
        const double t0 = ts_now_ms();
        switch (q->kind) {
        case M_PE: pe_fwd(e, q, out); break;
        case M_MB: mb_fwd(e, q, out); break;
        case M_MG: mg_fwd(e, q, out); break;
        case M_VB: vb_fwd(e, q, out); break;
        case M_NECK: neck_fwd(e, q, out); break;
        }
        e->ms[0][q->kind] += ts_now_ms() - t0;
    }
    const mod *nk = &e->m[e->nm - 1];
    const int P = nk->R * nk->R;
    ts_transpose_serial(e->s[3], nk->Co, P, nk->Co, emb, P);
    return 0;
}

/* ---- modules: backward (dy -> dx; dx overwritten) --------------------------------------------- */

static void pe_bwd(ts_egf *e, mod *q, const cbn_p *gc, float *dy) {
    const cbn_p *c = e->p.pe;
    const int S = q->R, S1 = S / 2, c1 = q->Co / 2, Ro = q->Ro;
    const size_t P1 = SZ(S1) * S1, Po = SZ(Ro) * Ro;
    float *dr2 = e->s[1], *h = e->s[2], *dh = e->s[0];
    bn_bwd_ex(e, &c[1], &gc[1], q->r2, Po, q->Co, 0, NULL, dy, dr2, NULL);
    bn_apply(e, &c[0], q->r1, P1, c1, NULL, 1, h);
    conv_bwd(e, &c[1], G(c1, q->Co, 3, 2, 0), h, S1, S1, dr2, dh, 0, gc[1].w);
    bn_bwd_ex(e, &c[0], &gc[0], q->r1, P1, c1, 1, NULL, dh, dh, NULL);
    conv_bwd(e, &c[0], G(3, c1, 3, 2, 0), q->x, S, S, dh, NULL, 0, gc[0].w);
}

static void mb_bwd(ts_egf *e, mod *q, const cbn_p *gc, const float *dy, float *dx) {
    const cbn_p *c = e->p.mb[q->idx];
    const int R = q->R, C = q->Ci, Hd = q->hidden;
    const size_t P = SZ(R) * R;
    float *sa = e->s[0], *sb = e->s[1], *sc = e->s[2], *sd = e->s[3];
    /* dx = the gradient of the residual sum */
    bn_bwd_ex(e, &c[2], &gc[2], q->r3, P, C, 1, q->x, dy, sb, dx);
    bn_apply(e, &c[1], q->r2, P, Hd, NULL, 1, sc);
    conv_bwd(e, &c[2], G(Hd, C, 1, 1, 0), sc, R, R, sb, sc, 0, gc[2].w);
    /* sc was read by the weight gradient before the GEMM overwrote it with dh2 */
    bn_bwd_ex(e, &c[1], &gc[1], q->r2, P, Hd, 1, NULL, sc, sc, NULL);
    bn_apply(e, &c[0], q->r1, P, Hd, NULL, 1, sd);
    conv_bwd(e, &c[1], G(Hd, Hd, 3, 1, 1), sd, R, R, sc, sa, 0, gc[1].w);
    bn_bwd_ex(e, &c[0], &gc[0], q->r1, P, Hd, 1, NULL, sa, sa, NULL);
    conv_bwd(e, &c[0], G(C, Hd, 1, 1, 0), q->x, R, R, sa, dx, 1, gc[0].w);
}

static void mg_bwd(ts_egf *e, mod *q, const cbn_p *gc, const float *dy, float *dx) {
    const cbn_p *c = e->p.mg[q->idx];
    const int R = q->R, Ro = q->Ro, Co = q->Co;
    const size_t P = SZ(R) * R, Po = SZ(Ro) * Ro;
    float *sa = e->s[0], *sb = e->s[1], *sc = e->s[2], *sd = e->s[3];
    bn_bwd_ex(e, &c[2], &gc[2], q->r3, Po, Co, 0, NULL, dy, sb, NULL);
    bn_apply(e, &c[1], q->r2, Po, Co, NULL, 1, sc);
    conv_bwd(e, &c[2], G(Co, Co, 1, 1, 0), sc, Ro, Ro, sb, sc, 0, gc[2].w);
    bn_bwd_ex(e, &c[1], &gc[1], q->r2, Po, Co, 1, NULL, sc, sc, NULL);
    bn_apply(e, &c[0], q->r1, P, Co, NULL, 1, sd);
    conv_bwd(e, &c[1], G(Co, Co, 3, q->stride, 1), sd, R, R, sc, sa, 0, gc[1].w);
    bn_bwd_ex(e, &c[0], &gc[0], q->r1, P, Co, 1, NULL, sa, sa, NULL);
    conv_bwd(e, &c[0], G(q->Ci, Co, 1, 1, 0), q->x, R, R, sa, dx, 0, gc[0].w);
}

static void vb_bwd(ts_egf *e, mod *q, vb_p *gv, const float *dy, float *dx) {
    const vb_p *v = &e->p.vb[q->idx];
    const int R = q->R, C = q->Ci, ws = q->ws, N = ws * ws, h = q->heads, d = C / h;
    const int nwin = q->nw * q->nw, Np = nwin * N, Hd = q->hidden;
    const size_t P = SZ(R) * R;
    const float scale = 1.0f / sqrtf((float)d);
    float *sa = e->s[0], *sb = e->s[1], *sc = e->s[2], *sd = e->s[3];
    /* MLP: y = t2 + fc2(GELU(fc1(LN(t2)))) */
    float *t2 = sa, *ln = sb, *g = sc, *dg = sd;
    bn_apply(e, &v->lc, q->rlc, P, C, NULL, 0, t2);
    ts_layernorm_to(t2, ln, (int)P, C, v->mlnw, v->mlnb, LN_EPS);
    memcpy(g, q->f1, sizeof(float) * P * Hd);
    ts_gelu(g, P * Hd);
    hook_out(e, v->f2w, NULL, dy, P, C);
    wgrad(e, dy, C, P, C, g, Hd, Hd, gv->f2w, Hd);
    colsum(e, dy, P, C, gv->f2b);
    ts_gemm((int)P, Hd, C, dy, C, v->f2w, Hd, 0, dg, Hd, 0.0f);
    gelu_bwd(e, q->f1, P * Hd, dg);
    hook_out(e, v->f1w, NULL, dg, P, Hd);
    wgrad(e, dg, Hd, P, Hd, ln, C, C, gv->f1w, C);
    colsum(e, dg, P, Hd, gv->f1b);
    float *dln = sc, *dt2 = sb;
    ts_gemm((int)P, C, Hd, dg, Hd, v->f1w, C, 0, dln, C, 0.0f);
    memcpy(dt2, dy, sizeof(float) * P * C);
    ln_bwd(e, t2, P, C, v->mlnw, LN_EPS, dln, dt2, 1, gv->mlnw, gv->mlnb);
    /* local conv + BN, no residual */
    bn_bwd(e, &v->lc, &gv->lc, q->rlc, P, C, dt2);
    float *dt1 = sa;
    conv_bwd(e, &v->lc, G(C, C, 3, 1, 1), q->t1, R, R, dt2, dt1, 0, gv->lc.w);
    /* attention: t1 = x + scatter(proj(O)) */
    float *dyw = sb, *dO = sc, *dqkv = sd;
    win_gather(q, dt1, dyw);
    hook_out(e, v->pw, NULL, dyw, SZ(Np), C);
    ts_gemm(Np, C, C, dyw, C, v->pw, C, 0, dO, C, 0.0f);
    wgrad(e, dyw, C, SZ(Np), C, q->O, C, C, gv->pw, C);
    colsum(e, dyw, SZ(Np), C, gv->pb);
    set_bidx(e, ws);
    win_job wj = {.e = e, .q = q, .v = v, .scale = scale, .dO = dO, .dqkv = dqkv};
    ts_parallel_for(e->nslot, win_bwd_task, &wj);
    for (int j = 0; j < h; j++)
        for (int i = 0; i < N; i++) {
            double a = 0;
            for (int w = 0; w < nwin; w++) a += e->pab[(SZ(w) * h + j) * N + i];
            gv->ab[SZ(j) * N + i] += (float)a;
        }
    float *xw = sb, *xn = sc;
    win_gather(q, q->x, xw);
    ts_layernorm_to(xw, xn, Np, C, v->lnw, v->lnb, LN_EPS);
    hook_out(e, v->qkvw, NULL, dqkv, SZ(Np), 3 * C);
    wgrad(e, dqkv, 3 * C, SZ(Np), 3 * C, xn, C, C, gv->qkvw, C);
    colsum(e, dqkv, SZ(Np), 3 * C, gv->qkvb);
    float *dxn = sc;
    ts_gemm(Np, C, 3 * C, dqkv, 3 * C, v->qkvw, C, 0, dxn, C, 0.0f);
    ln_bwd(e, xw, SZ(Np), C, v->lnw, LN_EPS, dxn, dxn, 0, gv->lnw, gv->lnb);
    win_scatter_add(q, dxn, dt1, dx); /* dx = dt1 (residual) + the attention's part */
}

static void neck_bwd(ts_egf *e, mod *q, net *gn, const float *dy, float *dx) {
    const net *n = &e->p;
    const int R = q->R, E = q->Co;
    const size_t P = SZ(R) * R;
    cbn_p c0 = {.w = n->n0}, c2 = {.w = n->n2};
    float *dr2 = e->s[1], *n1 = e->s[2], *dn1 = e->s[0];
    ln_bwd(e, q->r2, P, E, n->n3w, LN2D_EPS, dy, dr2, 0, gn->n3w, gn->n3b);
    ts_layernorm_to(q->r1, n1, (int)P, E, n->n1w, n->n1b, LN2D_EPS);
    conv_bwd(e, &c2, G(E, E, 3, 1, 0), n1, R, R, dr2, dn1, 0, gn->n2);
    ln_bwd(e, q->r1, P, E, n->n1w, LN2D_EPS, dn1, dn1, 0, gn->n1w, gn->n1b);
    conv_bwd(e, &c0, G(q->Ci, E, 1, 1, 0), q->x, R, R, dn1, dx, 0, gn->n0);
}

int ts_egf_backward(ts_egf *e, const float *demb, float *grads) {
    if (!e || !demb || !grads) return ts_error(TINYSAM_E_ARG, "encoder_grad: NULL argument");
    net gn;
    bind(e->L, grads, &gn);
    const mod *nk = &e->m[e->nm - 1];
    const int P = nk->R * nk->R;
    /* the neck's dy lives in s[3], which its backward does not touch */
    ts_transpose_serial(demb, P, nk->Co, P, e->s[3], nk->Co);
    float *dy = e->s[3], *dx = e->gout;
    memset(e->ms[1], 0, sizeof e->ms[1]);
    for (int i = e->nm - 1; i >= 0; i--) {
        mod *q = &e->m[i];
        const double t0 = ts_now_ms();
        switch (q->kind) {
        case M_NECK: neck_bwd(e, q, &gn, dy, dx); break;
        case M_VB: vb_bwd(e, q, &gn.vb[q->idx], dy, dx); break;
        case M_MG: mg_bwd(e, q, gn.mg[q->idx], dy, dx); break;
        case M_MB: mb_bwd(e, q, gn.mb[q->idx], dy, dx); break;
        case M_PE: pe_bwd(e, q, gn.pe, dy); break;
        }
        e->ms[1][q->kind] += ts_now_ms() - t0;
        dy = dx;
        dx = dx == e->gout ? e->gin : e->gout;
    }
    return 0;
}
