/* grad_blocks.c - double-precision reference forward/backward of the composite modules
 * (see grad_ops.h): TinyViT's Conv2d_BN / PatchMerging, window attention and whole block, and
 * the mask decoder's attention. Built from the primitives of grad_ops.c; each backward
 * recomputes the forward activations it needs. */
#include "train/grad_ops.h"

#include "core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ================================ Conv2d_BN, PatchMerging ================================= */

static size_t conv_out_size(const ts_g_conv2d *c)
{
    return (size_t)c->Co * ts_g_conv2d_out_h(c) * ts_g_conv2d_out_w(c);
}

static void convbn_fwd(const ts_g_convbn *p, const double *x, double *conv, double *y)
{
    const int hw = ts_g_conv2d_out_h(&p->cv) * ts_g_conv2d_out_w(&p->cv);
    ts_g_conv2d_fwd(&p->cv, x, p->w, NULL, conv);
    ts_g_batchnorm_eval_fwd(conv, 1, p->cv.Co, hw, p->gamma, p->beta, p->mean, p->var, 1e-5, y);
}

/* dconv: scratch of the conv output size (overwritten). */
static void convbn_bwd(const ts_g_convbn *p, const double *x, const double *conv,
                       const double *dy, double *dconv, double *dx, const ts_g_convbn *g)
{
    const int hw = ts_g_conv2d_out_h(&p->cv) * ts_g_conv2d_out_w(&p->cv);
    memset(dconv, 0, conv_out_size(&p->cv) * sizeof(double));
    ts_g_batchnorm_eval_bwd(conv, 1, p->cv.Co, hw, p->gamma, p->mean, p->var, 1e-5, dy, dconv,
                            g->gamma, g->beta);
    ts_g_conv2d_bwd(&p->cv, x, p->w, dconv, dx, g->w, NULL);
}

static int patchmerge_check(const ts_g_convbn p[3])
{
    for (int i = 0; i < 3; i++) {
        const ts_g_conv2d *c = &p[i].cv;
        if (c->Ci <= 0 || c->Co <= 0 || c->k <= 0 || c->stride <= 0 || c->groups <= 0 ||
            c->Ci % c->groups || c->Co % c->groups || ts_g_conv2d_out_h(c) <= 0 ||
            ts_g_conv2d_out_w(c) <= 0)
            return ts_error(TINYSAM_E_ARG, "patchmerge: bad conv %d", i);
        if (i > 0 && (c->Ci != p[i - 1].cv.Co || c->H != ts_g_conv2d_out_h(&p[i - 1].cv) ||
                      c->W != ts_g_conv2d_out_w(&p[i - 1].cv)))
            return ts_error(TINYSAM_E_ARG, "patchmerge: conv %d does not chain", i);
    }
    return 0;
}

/* Activations: per stage the conv output, the BN output and (stages 0, 1) the GELU output. */
typedef struct {
    double *conv[3], *bn[3], *act[2], *buf;
} patchmerge_ws;

static int patchmerge_run(const ts_g_convbn p[3], const double *x, patchmerge_ws *s,
                          size_t extra)
{
    int rc = patchmerge_check(p);
    if (rc) return rc;
    size_t n[3], tot = extra;
    for (int i = 0; i < 3; i++) {
        n[i] = conv_out_size(&p[i].cv);
        tot += (i < 2 ? 3 : 2) * n[i];
    }
    s->buf = ts_calloc(tot, sizeof(double));
    if (!s->buf) return TINYSAM_E_NOMEM;
    double *q = s->buf;
    for (int i = 0; i < 3; i++) {
        s->conv[i] = q, q += n[i];
        s->bn[i] = q, q += n[i];
        if (i < 2) s->act[i] = q, q += n[i];
    }
    const double *in = x;
    for (int i = 0; i < 3; i++) {
        convbn_fwd(&p[i], in, s->conv[i], s->bn[i]);
        if (i < 2) ts_g_gelu_fwd(s->bn[i], n[i], s->act[i]);
        in = i < 2 ? s->act[i] : NULL;
    }
    return 0;
}

int ts_g_patchmerge_fwd(const ts_g_convbn p[3], const double *x, double *y)
{
    patchmerge_ws s;
    int rc = patchmerge_run(p, x, &s, 0);
    if (rc) return rc;
    memcpy(y, s.bn[2], conv_out_size(&p[2].cv) * sizeof(double));
    free(s.buf);
    return 0;
}

int ts_g_patchmerge_bwd(const ts_g_convbn p[3], const double *x, const double *dy, double *dx,
                        const ts_g_convbn g[3])
{
    size_t mx = 0;
    for (int i = 0; i < 3; i++) mx = TS_MAX(mx, conv_out_size(&p[i].cv));
    patchmerge_ws s;
    int rc = patchmerge_run(p, x, &s, 3 * mx);
    if (rc) return rc;
    double *dconv = s.bn[2] + conv_out_size(&p[2].cv), *da = dconv + mx, *db = da + mx;
    /* conv3 <- dy; then per stage: GELU backward, Conv2d_BN backward */
    memset(da, 0, mx * sizeof(double));
    convbn_bwd(&p[2], s.act[1], s.conv[2], dy, dconv, da, &g[2]);
    for (int i = 1; i >= 0; i--) {
        size_t n = conv_out_size(&p[i].cv);
        memset(db, 0, n * sizeof(double));
        ts_g_gelu_bwd(s.bn[i], n, da, db);
        memset(da, 0, mx * sizeof(double));
        convbn_bwd(&p[i], i ? s.act[0] : x, s.conv[i], db, dconv, i ? da : dx, &g[i]);
    }
    free(s.buf);
    return 0;
}

/* ================================ TinyViT window attention ================================ */

/* Per-window activations, recomputed by the backward (T = ws*ws tokens), and the backward's
 * per-window gradients; one allocation. */
typedef struct {
    double *t;    /* [T][C]  window tokens (zeros at the padding) */
    double *xn;   /* [T][C]  after LayerNorm */
    double *qkv;  /* [T][3C] */
    double *P;    /* [heads][T][T] softmax of the scores */
    double *o;    /* [T][C]  heads merged */
    double *y;    /* [T][C]  after proj */
    double *dy, *d_o, *dqkv, *dxn, *dt; /* gradients of y, o, qkv, xn, t (backward only) */
    double *dP, *dA;                    /* [T][T] one head's dP and d(scores) (backward only) */
    double *buf;
} winattn_ws;

static int winattn_alloc(winattn_ws *s, int C, int heads, int T, int with_grads)
{
    const size_t tc = (size_t)T * C, tt = (size_t)T * T;
    size_t n = 7 * tc + heads * tt + (with_grads ? 7 * tc + 2 * tt : 0);
    memset(s, 0, sizeof(*s));
    s->buf = ts_calloc(n, sizeof(double));
    if (!s->buf) return TINYSAM_E_NOMEM;
    double *q = s->buf;
    s->t = q, q += tc;
    s->xn = q, q += tc;
    s->qkv = q, q += 3 * tc;
    s->P = q, q += heads * tt;
    s->o = q, q += tc;
    s->y = q, q += tc;
    if (with_grads) {
        s->dy = q, q += tc;
        s->d_o = q, q += tc;
        s->dqkv = q, q += 3 * tc;
        s->dxn = q, q += tc;
        s->dt = q, q += tc;
        s->dP = q, q += tt;
        s->dA = q;
    }
    return 0;
}

/* Gathers window (wr, wc) of x into s->t and runs the module forward into s->y. */
static void winattn_window_fwd(const ts_g_winattn *p, const double *x, int H, int W, int wr,
                               int wc, winattn_ws *s)
{
    const int C = p->C, ws = p->ws, T = ws * ws, nh = p->heads, d = C / nh;
    const double scale = 1.0 / sqrt((double)d);
    for (int i = 0; i < T; i++) {
        int r = wr * ws + i / ws, c = wc * ws + i % ws;
        for (int ch = 0; ch < C; ch++)
            s->t[(size_t)i * C + ch] = (r < H && c < W) ? x[((size_t)r * W + c) * C + ch] : 0.0;
    }
    ts_g_layernorm_fwd(s->t, T, C, p->ln_w, p->ln_b, 1e-5, s->xn);
    ts_g_linear_fwd(s->xn, T, C, p->qkv_w, p->qkv_b, 3 * C, s->qkv);
    for (int h = 0; h < nh; h++) {
        double *P = s->P + (size_t)h * T * T;
        for (int i = 0; i < T; i++)
            for (int j = 0; j < T; j++) {
                const double *q = s->qkv + (size_t)i * 3 * C + h * 3 * d;
                const double *k = s->qkv + (size_t)j * 3 * C + h * 3 * d + d;
                double a = 0;
                for (int e = 0; e < d; e++) a += q[e] * k[e];
                int idx = abs(i / ws - j / ws) * ws + abs(i % ws - j % ws);
                P[(size_t)i * T + j] = a * scale + p->bias[(size_t)h * T + idx];
            }
        ts_g_softmax_rows_fwd(P, T, T, P);
        for (int i = 0; i < T; i++)
            for (int e = 0; e < d; e++) {
                double a = 0;
                for (int j = 0; j < T; j++)
                    a += P[(size_t)i * T + j] * s->qkv[(size_t)j * 3 * C + h * 3 * d + 2 * d + e];
                s->o[(size_t)i * C + h * d + e] = a;
            }
    }
    ts_g_linear_fwd(s->o, T, C, p->proj_w, p->proj_b, C, s->y);
}

static int winattn_check(const ts_g_winattn *p, int H, int W)
{
    if (p->C <= 0 || p->heads <= 0 || p->ws <= 0 || p->C % p->heads || H <= 0 || W <= 0)
        return ts_error(TINYSAM_E_ARG, "winattn: bad shape C=%d heads=%d ws=%d grid %dx%d", p->C,
                        p->heads, p->ws, H, W);
    return 0;
}

int ts_g_winattn_fwd(const ts_g_winattn *p, const double *x, int H, int W, double *y)
{
    int rc = winattn_check(p, H, W);
    if (rc) return rc;
    const int C = p->C, ws = p->ws, T = ws * ws;
    const int nwr = (H + ws - 1) / ws, nwc = (W + ws - 1) / ws;
    winattn_ws s;
    if ((rc = winattn_alloc(&s, C, p->heads, T, 0))) return rc;
    for (int wr = 0; wr < nwr; wr++)
        for (int wc = 0; wc < nwc; wc++) {
            winattn_window_fwd(p, x, H, W, wr, wc, &s);
            /* window reverse + crop: padded tokens' outputs are dropped */
            for (int i = 0; i < T; i++) {
                int r = wr * ws + i / ws, c = wc * ws + i % ws;
                if (r >= H || c >= W) continue;
                memcpy(y + ((size_t)r * W + c) * C, s.y + (size_t)i * C, sizeof(double) * C);
            }
        }
    free(s.buf);
    return 0;
}

int ts_g_winattn_bwd(const ts_g_winattn *p, const double *x, int H, int W, const double *dy,
                     double *dx, const ts_g_winattn *g)
{
    int rc = winattn_check(p, H, W);
    if (rc) return rc;
    const int C = p->C, ws = p->ws, T = ws * ws, nh = p->heads, d = C / nh;
    const double scale = 1.0 / sqrt((double)d);
    const int nwr = (H + ws - 1) / ws, nwc = (W + ws - 1) / ws;
    winattn_ws s;
    if ((rc = winattn_alloc(&s, C, nh, T, 1))) return rc;
    double *dyw = s.dy, *d_o = s.d_o, *dqkv = s.dqkv, *dxn = s.dxn, *dt = s.dt;
    double *dP = s.dP, *dA = s.dA;

    for (int wr = 0; wr < nwr; wr++)
        for (int wc = 0; wc < nwc; wc++) {
            winattn_window_fwd(p, x, H, W, wr, wc, &s);
            /* crop backward: padded tokens get no output gradient */
            for (int i = 0; i < T; i++) {
                int r = wr * ws + i / ws, c = wc * ws + i % ws;
                for (int ch = 0; ch < C; ch++)
                    dyw[(size_t)i * C + ch] =
                        (r < H && c < W) ? dy[((size_t)r * W + c) * C + ch] : 0.0;
            }
            memset(d_o, 0, sizeof(double) * T * C);
            memset(dqkv, 0, sizeof(double) * T * 3 * C);
            memset(dxn, 0, sizeof(double) * T * C);
            memset(dt, 0, sizeof(double) * T * C);
            ts_g_linear_bwd(s.o, T, C, p->proj_w, C, dyw, d_o, g->proj_w, g->proj_b);
            for (int h = 0; h < nh; h++) {
                const double *P = s.P + (size_t)h * T * T;
                /* O = P V: dP = dO V^T, dV = P^T dO (E13) */
                for (int i = 0; i < T; i++)
                    for (int j = 0; j < T; j++) {
                        const double *v = s.qkv + (size_t)j * 3 * C + h * 3 * d + 2 * d;
                        double a = 0;
                        for (int e = 0; e < d; e++) a += d_o[(size_t)i * C + h * d + e] * v[e];
                        dP[(size_t)i * T + j] = a;
                        for (int e = 0; e < d; e++)
                            dqkv[(size_t)j * 3 * C + h * 3 * d + 2 * d + e] +=
                                P[(size_t)i * T + j] * d_o[(size_t)i * C + h * d + e];
                    }
                /* softmax (E12) */
                memset(dA, 0, sizeof(double) * T * T);
                ts_g_softmax_rows_bwd(P, T, T, dP, dA);
                /* scores and the bias table scatter-add (E11) */
                for (int i = 0; i < T; i++)
                    for (int j = 0; j < T; j++) {
                        double a = dA[(size_t)i * T + j];
                        int idx = abs(i / ws - j / ws) * ws + abs(i % ws - j % ws);
                        if (g->bias) g->bias[(size_t)h * T + idx] += a;
                        for (int e = 0; e < d; e++) {
                            dqkv[(size_t)i * 3 * C + h * 3 * d + e] +=
                                a * scale * s.qkv[(size_t)j * 3 * C + h * 3 * d + d + e];
                            dqkv[(size_t)j * 3 * C + h * 3 * d + d + e] +=
                                a * scale * s.qkv[(size_t)i * 3 * C + h * 3 * d + e];
                        }
                    }
            }
            ts_g_linear_bwd(s.xn, T, C, p->qkv_w, 3 * C, dqkv, dxn, g->qkv_w, g->qkv_b);
            ts_g_layernorm_bwd(s.t, T, C, p->ln_w, 1e-5, dxn, dt, g->ln_w, g->ln_b);
            /* window partition + pad backward: padded tokens' gradients are dropped */
            if (!dx) continue;
            for (int i = 0; i < T; i++) {
                int r = wr * ws + i / ws, c = wc * ws + i % ws;
                if (r >= H || c >= W) continue;
                for (int ch = 0; ch < C; ch++)
                    dx[((size_t)r * W + c) * C + ch] += dt[(size_t)i * C + ch];
            }
        }
    free(s.buf);
    return 0;
}

/* ================================ TinyViT block =========================================== */

/* Activations of one block; the forward fills them, the backward reuses them. */
typedef struct {
    double *a;   /* [L][C] attention output */
    double *t1;  /* [L][C] x + a */
    double *tc;  /* [C][L] t1 as NCHW */
    double *cv;  /* [C][L] depthwise conv */
    double *bn;  /* [C][L] BatchNorm */
    double *t2;  /* [L][C] bn as tokens */
    double *m;   /* [L][C] mlp.norm */
    double *h;   /* [L][hidden] fc1 */
    double *gh;  /* [L][hidden] GELU */
    double *buf;
} tvblock_ws;

static int tvblock_run(const ts_g_tvblock *p, const double *x, int H, int W, tvblock_ws *s,
                       size_t extra)
{
    const int C = p->attn.C, L = H * W;
    if (p->hidden <= 0) return ts_error(TINYSAM_E_ARG, "tvblock: hidden=%d", p->hidden);
    const size_t lc = (size_t)L * C, lh = (size_t)L * p->hidden;
    s->buf = ts_calloc(7 * lc + 2 * lh + extra, sizeof(double));
    if (!s->buf) return TINYSAM_E_NOMEM;
    s->a = s->buf, s->t1 = s->a + lc, s->tc = s->t1 + lc, s->cv = s->tc + lc;
    s->bn = s->cv + lc, s->t2 = s->bn + lc, s->m = s->t2 + lc, s->h = s->m + lc;
    s->gh = s->h + lh;
    int rc = ts_g_winattn_fwd(&p->attn, x, H, W, s->a);
    if (rc) {
        free(s->buf);
        return rc;
    }
    const ts_g_conv2d cv = {C, H, W, C, 3, 1, 1, C};
    for (size_t i = 0; i < lc; i++) s->t1[i] = x[i] + s->a[i];
    for (int l = 0; l < L; l++)
        for (int c = 0; c < C; c++) s->tc[(size_t)c * L + l] = s->t1[(size_t)l * C + c];
    ts_g_conv2d_fwd(&cv, s->tc, p->conv_w, NULL, s->cv);
    ts_g_batchnorm_eval_fwd(s->cv, 1, C, L, p->bn_w, p->bn_b, p->bn_mean, p->bn_var, 1e-5, s->bn);
    for (int l = 0; l < L; l++)
        for (int c = 0; c < C; c++) s->t2[(size_t)l * C + c] = s->bn[(size_t)c * L + l];
    ts_g_layernorm_fwd(s->t2, L, C, p->ln_w, p->ln_b, 1e-5, s->m);
    ts_g_linear_fwd(s->m, L, C, p->fc1_w, p->fc1_b, p->hidden, s->h);
    ts_g_gelu_fwd(s->h, lh, s->gh);
    return 0;
}

int ts_g_tvblock_fwd(const ts_g_tvblock *p, const double *x, int H, int W, double *y)
{
    tvblock_ws s;
    int rc = tvblock_run(p, x, H, W, &s, 0);
    if (rc) return rc;
    const size_t lc = (size_t)H * W * p->attn.C;
    ts_g_linear_fwd(s.gh, H * W, p->hidden, p->fc2_w, p->fc2_b, p->attn.C, y);
    for (size_t i = 0; i < lc; i++) y[i] += s.t2[i];
    free(s.buf);
    return 0;
}

int ts_g_tvblock_bwd(const ts_g_tvblock *p, const double *x, int H, int W, const double *dy,
                     double *dx, const ts_g_tvblock *g)
{
    const int C = p->attn.C, L = H * W;
    const size_t lc = (size_t)L * C, lh = (size_t)L * p->hidden;
    tvblock_ws s;
    int rc = tvblock_run(p, x, H, W, &s, 4 * lc + 2 * lh);
    if (rc) return rc;
    double *dt2 = s.gh + lh, *dm = dt2 + lc, *dbn = dm + lc, *dt1 = dbn + lc;
    double *dgh = dt1 + lc, *dh = dgh + lh;
    const ts_g_conv2d cv = {C, H, W, C, 3, 1, 1, C};
    /* y = t2 + fc2(gelu(fc1(LN(t2)))) */
    memcpy(dt2, dy, lc * sizeof(double));
    ts_g_linear_bwd(s.gh, L, p->hidden, p->fc2_w, C, dy, dgh, g->fc2_w, g->fc2_b);
    ts_g_gelu_bwd(s.h, lh, dgh, dh);
    ts_g_linear_bwd(s.m, L, C, p->fc1_w, p->hidden, dh, dm, g->fc1_w, g->fc1_b);
    ts_g_layernorm_bwd(s.t2, L, C, p->ln_w, 1e-5, dm, dt2, g->ln_w, g->ln_b);
    /* tokens -> NCHW, BN, depthwise conv, back (dm is free again: reuse it for d cv) */
    for (int l = 0; l < L; l++)
        for (int c = 0; c < C; c++) dbn[(size_t)c * L + l] = dt2[(size_t)l * C + c];
    memset(dm, 0, lc * sizeof(double));
    ts_g_batchnorm_eval_bwd(s.cv, 1, C, L, p->bn_w, p->bn_mean, p->bn_var, 1e-5, dbn, dm,
                            g->bn_w, g->bn_b);
    memset(dbn, 0, lc * sizeof(double));
    ts_g_conv2d_bwd(&cv, s.tc, p->conv_w, dm, dbn, g->conv_w, NULL);
    for (int l = 0; l < L; l++)
        for (int c = 0; c < C; c++) dt1[(size_t)l * C + c] = dbn[(size_t)c * L + l];
    /* t1 = x + attn(x) */
    if (dx)
        for (size_t i = 0; i < lc; i++) dx[i] += dt1[i];
    rc = ts_g_winattn_bwd(&p->attn, x, H, W, dt1, dx, &g->attn);
    free(s.buf);
    return rc;
}

/* ================================ decoder attention ======================================= */

/* Decoder attention activations: projections, per-head probabilities, merged heads. */
typedef struct {
    double *qp, *kp, *vp; /* [Nq][I], [Nk][I], [Nk][I] */
    double *P;            /* [heads][Nq][Nk] */
    double *o;            /* [Nq][I] */
    double *buf;
} attn_ws;

static int attn_setup(const ts_g_attn *p, int Nq, int Nk, attn_ws *s, size_t extra)
{
    if (p->E <= 0 || p->I <= 0 || p->heads <= 0 || p->I % p->heads || Nq <= 0 || Nk <= 0)
        return ts_error(TINYSAM_E_ARG, "attn: bad shape E=%d I=%d heads=%d Nq=%d Nk=%d", p->E,
                        p->I, p->heads, Nq, Nk);
    const size_t I = (size_t)p->I;
    s->buf = ts_calloc((size_t)Nq * I * 2 + (size_t)Nk * I * 2 + (size_t)p->heads * Nq * Nk +
                           extra,
                       sizeof(double));
    if (!s->buf) return TINYSAM_E_NOMEM;
    s->qp = s->buf;
    s->kp = s->qp + (size_t)Nq * I;
    s->vp = s->kp + (size_t)Nk * I;
    s->P = s->vp + (size_t)Nk * I;
    s->o = s->P + (size_t)p->heads * Nq * Nk;
    return 0;
}

/* Forward up to the merged heads (s->o); the caller applies out_proj. */
static void attn_core_fwd(const ts_g_attn *p, const double *q, int Nq, const double *k,
                          const double *v, int Nk, attn_ws *s)
{
    const int I = p->I, d = I / p->heads;
    const double scale = 1.0 / sqrt((double)d);
    ts_g_linear_fwd(q, Nq, p->E, p->q_w, p->q_b, I, s->qp);
    ts_g_linear_fwd(k, Nk, p->E, p->k_w, p->k_b, I, s->kp);
    ts_g_linear_fwd(v, Nk, p->E, p->v_w, p->v_b, I, s->vp);
    for (int h = 0; h < p->heads; h++) {
        double *P = s->P + (size_t)h * Nq * Nk;
        for (int i = 0; i < Nq; i++)
            for (int j = 0; j < Nk; j++) {
                double a = 0;
                for (int e = 0; e < d; e++)
                    a += s->qp[(size_t)i * I + h * d + e] * s->kp[(size_t)j * I + h * d + e];
                P[(size_t)i * Nk + j] = a * scale;
            }
        ts_g_softmax_rows_fwd(P, Nq, Nk, P);
        for (int i = 0; i < Nq; i++)
            for (int e = 0; e < d; e++) {
                double a = 0;
                for (int j = 0; j < Nk; j++)
                    a += P[(size_t)i * Nk + j] * s->vp[(size_t)j * I + h * d + e];
                s->o[(size_t)i * I + h * d + e] = a;
            }
    }
}

int ts_g_attn_fwd(const ts_g_attn *p, const double *q, int Nq, const double *k, const double *v,
                  int Nk, double *y)
{
    attn_ws s;
    int rc = attn_setup(p, Nq, Nk, &s, 0);
    if (rc) return rc;
    attn_core_fwd(p, q, Nq, k, v, Nk, &s);
    ts_g_linear_fwd(s.o, Nq, p->I, p->o_w, p->o_b, p->E, y);
    free(s.buf);
    return 0;
}

int ts_g_attn_bwd(const ts_g_attn *p, const double *q, int Nq, const double *k, const double *v,
                  int Nk, const double *dy, double *dq, double *dk, double *dv,
                  const ts_g_attn *g)
{
    const size_t I = (size_t)p->I, nqi = (size_t)Nq * I, nki = (size_t)Nk * I;
    attn_ws s;
    int rc = attn_setup(p, Nq, Nk, &s, 2 * nqi + 2 * nki + 2 * (size_t)Nq * Nk);
    if (rc) return rc;
    double *d_o = s.o + nqi, *dqp = d_o + nqi, *dkp = dqp + nqi, *dvp = dkp + nki;
    double *dP = dvp + nki, *dA = dP + (size_t)Nq * Nk;
    const int d = p->I / p->heads;
    const double scale = 1.0 / sqrt((double)d);
    attn_core_fwd(p, q, Nq, k, v, Nk, &s);
    ts_g_linear_bwd(s.o, Nq, p->I, p->o_w, p->E, dy, d_o, g->o_w, g->o_b);
    for (int h = 0; h < p->heads; h++) {
        const double *P = s.P + (size_t)h * Nq * Nk;
        for (int i = 0; i < Nq; i++)
            for (int j = 0; j < Nk; j++) {
                double a = 0;
                for (int e = 0; e < d; e++) {
                    a += d_o[(size_t)i * I + h * d + e] * s.vp[(size_t)j * I + h * d + e];
                    dvp[(size_t)j * I + h * d + e] +=
                        P[(size_t)i * Nk + j] * d_o[(size_t)i * I + h * d + e];
                }
                dP[(size_t)i * Nk + j] = a;
            }
        memset(dA, 0, sizeof(double) * Nq * Nk);
        ts_g_softmax_rows_bwd(P, Nq, Nk, dP, dA);
        for (int i = 0; i < Nq; i++)
            for (int j = 0; j < Nk; j++) {
                double a = dA[(size_t)i * Nk + j] * scale;
                for (int e = 0; e < d; e++) {
                    dqp[(size_t)i * I + h * d + e] += a * s.kp[(size_t)j * I + h * d + e];
                    dkp[(size_t)j * I + h * d + e] += a * s.qp[(size_t)i * I + h * d + e];
                }
            }
    }
    ts_g_linear_bwd(q, Nq, p->E, p->q_w, p->I, dqp, dq, g->q_w, g->q_b);
    ts_g_linear_bwd(k, Nk, p->E, p->k_w, p->I, dkp, dk, g->k_w, g->k_b);
    ts_g_linear_bwd(v, Nk, p->E, p->v_w, p->I, dvp, dv, g->v_w, g->v_b);
    free(s.buf);
    return 0;
}

/* ================================ two-way block =========================================== */

typedef struct {
    double *q1in, *a1, *r1, *Q1, *q2, *a2, *r2, *Q2, *m, *r3, *Q3, *q4; /* [Nq][E] */
    double *h, *hr;                                                   /* [Nq][mlp] */
    double *kk, *a4, *r4, *K4;                                        /* [Nk][E] */
    double *buf;
} twoway_ws;

static void add_vec(const double *a, const double *b, size_t n, double *y)
{
    for (size_t i = 0; i < n; i++) y[i] = a[i] + (b ? b[i] : 0.0);
}

static void acc_vec(double *y, const double *a, size_t n)
{
    if (y)
        for (size_t i = 0; i < n; i++) y[i] += a[i];
}

static int twoway_run(const ts_g_twoway *p, const double *q, int Nq, const double *k, int Nk,
                      const double *qpe, const double *kpe, twoway_ws *s, size_t extra)
{
    const int E = p->E;
    if (E <= 0 || p->mlp <= 0 || Nq <= 0 || Nk <= 0 || p->self_attn.E != E || p->t2i.E != E ||
        p->i2t.E != E)
        return ts_error(TINYSAM_E_ARG, "twoway: bad shape E=%d mlp=%d Nq=%d Nk=%d", E, p->mlp,
                        Nq, Nk);
    const size_t qe = (size_t)Nq * E, qm = (size_t)Nq * p->mlp, ke = (size_t)Nk * E;
    s->buf = ts_calloc(12 * qe + 2 * qm + 4 * ke + extra, sizeof(double));
    if (!s->buf) return TINYSAM_E_NOMEM;
    double *b = s->buf;
    double **qs[] = {&s->q1in, &s->a1, &s->r1, &s->Q1, &s->q2, &s->a2,
                     &s->r2,   &s->Q2, &s->m,  &s->r3, &s->Q3, &s->q4};
    for (int i = 0; i < 12; i++) *qs[i] = b, b += qe;
    s->h = b, b += qm;
    s->hr = b, b += qm;
    s->kk = b, b += ke;
    s->a4 = b, b += ke;
    s->r4 = b, b += ke;
    s->K4 = b;
    int rc;
    /* self-attention */
    add_vec(q, p->skip_first_layer_pe ? NULL : qpe, qe, s->q1in);
    if ((rc = ts_g_attn_fwd(&p->self_attn, s->q1in, Nq, s->q1in, q, Nq, s->a1))) goto fail;
    add_vec(s->a1, p->skip_first_layer_pe ? NULL : q, qe, s->r1);
    ts_g_layernorm_fwd(s->r1, Nq, E, p->n1_w, p->n1_b, 1e-5, s->Q1);
    /* tokens to image */
    add_vec(s->Q1, qpe, qe, s->q2);
    add_vec(k, kpe, ke, s->kk);
    if ((rc = ts_g_attn_fwd(&p->t2i, s->q2, Nq, s->kk, k, Nk, s->a2))) goto fail;
    add_vec(s->Q1, s->a2, qe, s->r2);
    ts_g_layernorm_fwd(s->r2, Nq, E, p->n2_w, p->n2_b, 1e-5, s->Q2);
    /* MLP */
    ts_g_linear_fwd(s->Q2, Nq, E, p->l1_w, p->l1_b, p->mlp, s->h);
    ts_g_relu_fwd(s->h, qm, s->hr);
    ts_g_linear_fwd(s->hr, Nq, p->mlp, p->l2_w, p->l2_b, E, s->m);
    add_vec(s->Q2, s->m, qe, s->r3);
    ts_g_layernorm_fwd(s->r3, Nq, E, p->n3_w, p->n3_b, 1e-5, s->Q3);
    /* image to tokens */
    add_vec(s->Q3, qpe, qe, s->q4);
    if ((rc = ts_g_attn_fwd(&p->i2t, s->kk, Nk, s->q4, s->Q3, Nq, s->a4))) goto fail;
    add_vec(k, s->a4, ke, s->r4);
    ts_g_layernorm_fwd(s->r4, Nk, E, p->n4_w, p->n4_b, 1e-5, s->K4);
    return 0;
fail:
    free(s->buf);
    return rc;
}

int ts_g_twoway_fwd(const ts_g_twoway *p, const double *q, int Nq, const double *k, int Nk,
                    const double *qpe, const double *kpe, double *q_out, double *k_out)
{
    twoway_ws s;
    int rc = twoway_run(p, q, Nq, k, Nk, qpe, kpe, &s, 0);
    if (rc) return rc;
    memcpy(q_out, s.Q3, sizeof(double) * Nq * p->E);
    memcpy(k_out, s.K4, sizeof(double) * Nk * p->E);
    free(s.buf);
    return 0;
}

int ts_g_twoway_bwd(const ts_g_twoway *p, const double *q, int Nq, const double *k, int Nk,
                    const double *qpe, const double *kpe, const double *dq_out,
                    const double *dk_out, double *dq, double *dk, double *dqpe, double *dkpe,
                    const ts_g_twoway *g)
{
    const int E = p->E;
    const size_t qe = (size_t)Nq * E, qm = (size_t)Nq * p->mlp, ke = (size_t)Nk * E;
    twoway_ws s;
    int rc = twoway_run(p, q, Nq, k, Nk, qpe, kpe, &s, 4 * qe + 2 * qm + 4 * ke);
    if (rc) return rc;
    double *dQ = s.K4 + ke, *dr = dQ + qe, *dqa = dr + qe, *dqb = dqa + qe; /* [Nq][E] */
    double *dhr = dqb + qe, *dh = dhr + qm;                                 /* [Nq][mlp] */
    double *dr4 = dh + qm, *dkk = dr4 + ke, *dkq = dkk + ke, *dkv = dkq + ke; /* [Nk][E] */
#define ZERO(b, n) memset((b), 0, sizeof(double) * (n))

    /* norm4(k + i2t(kk, q4, Q3)) */
    ts_g_layernorm_bwd(s.r4, Nk, E, p->n4_w, 1e-5, dk_out, dr4, g->n4_w, g->n4_b);
    acc_vec(dk, dr4, ke);
    memcpy(dQ, dq_out, sizeof(double) * qe);
    ZERO(dqa, qe);
    if ((rc = ts_g_attn_bwd(&p->i2t, s.kk, Nk, s.q4, s.Q3, Nq, dr4, dkk, dqa, dQ, &g->i2t)))
        goto done;
    acc_vec(dQ, dqa, qe); /* q4 = Q3 + qpe */
    acc_vec(dqpe, dqa, qe);

    /* norm3(Q2 + lin2(relu(lin1(Q2)))) */
    ZERO(dr, qe);
    ts_g_layernorm_bwd(s.r3, Nq, E, p->n3_w, 1e-5, dQ, dr, g->n3_w, g->n3_b);
    memcpy(dQ, dr, sizeof(double) * qe); /* dQ is now d Q2 */
    ts_g_linear_bwd(s.hr, Nq, p->mlp, p->l2_w, E, dr, dhr, g->l2_w, g->l2_b);
    ts_g_relu_bwd(s.h, qm, dhr, dh);
    ts_g_linear_bwd(s.Q2, Nq, E, p->l1_w, p->mlp, dh, dQ, g->l1_w, g->l1_b);

    /* norm2(Q1 + t2i(Q1 + qpe, k + kpe, k)) */
    ZERO(dr, qe);
    ts_g_layernorm_bwd(s.r2, Nq, E, p->n2_w, 1e-5, dQ, dr, g->n2_w, g->n2_b);
    memcpy(dQ, dr, sizeof(double) * qe); /* dQ is now d Q1 */
    ZERO(dqa, qe);
    if ((rc = ts_g_attn_bwd(&p->t2i, s.q2, Nq, s.kk, k, Nk, dr, dqa, dkq, dkv, &g->t2i)))
        goto done;
    acc_vec(dQ, dqa, qe);
    acc_vec(dqpe, dqa, qe);
    acc_vec(dkk, dkq, ke); /* both key paths went through kk = k + kpe */
    acc_vec(dk, dkk, ke);
    acc_vec(dkpe, dkk, ke);
    acc_vec(dk, dkv, ke);

    /* norm1(self-attention) */
    ZERO(dr, qe);
    ts_g_layernorm_bwd(s.r1, Nq, E, p->n1_w, 1e-5, dQ, dr, g->n1_w, g->n1_b);
    ZERO(dqa, qe);
    ZERO(dqb, qe);
    /* q and k of the self-attention are the same tensor q1in: one gradient buffer (dqa) */
    if ((rc = ts_g_attn_bwd(&p->self_attn, s.q1in, Nq, s.q1in, q, Nq, dr, dqa, dqa, dqb,
                            &g->self_attn)))
        goto done;
    acc_vec(dq, dqa, qe); /* q1in = q (+ qpe) */
    acc_vec(dq, dqb, qe); /* v = q */
    if (!p->skip_first_layer_pe) {
        acc_vec(dqpe, dqa, qe);
        acc_vec(dq, dr, qe); /* residual */
    }
#undef ZERO
done:
    free(s.buf);
    return rc;
}
