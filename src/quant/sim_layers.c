/* sim_layers.c - Q-TinySAM's four quantisation layer classes (see sim_layers.h). */
#include "quant/sim_layers.h"

#include "core.h"
#include "nn/nn.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define QMIN (-128)
#define QMAX 127

static const char *const class_names[] = {"InferQuantLinear", "InferQuantLinearPost",
                                          "InferQuantConv2d", "InferQuantConvTranspose2d"};

int ts_simq_kind_of(const char *cls, ts_simq_kind *out) {
    for (int i = 0; i < 4; i++)
        if (!strcmp(cls, class_names[i])) {
            *out = (ts_simq_kind)i;
            return 0;
        }
    return ts_error(TINYSAM_E_FORMAT, "'%s' is not a quantisation layer class", cls);
}

const char *ts_simq_class_name(ts_simq_kind k) {
    return class_names[k];
}

const char *ts_simq_path_name(ts_simq_path p) {
    return p == TS_SIMQ_INT8 ? "int8" : p == TS_SIMQ_SIM ? "sim" : "raw";
}

/* round half to even of x / step, clamped */
static inline float qclamp(float x, float step, int lo, int hi) {
    float q = nearbyintf(x / step);
    return q < (float)lo ? (float)lo : q > (float)hi ? (float)hi : q;
}

static ts_tensor *get(ts_tensor_map *m, const char *path, const char *leaf, int required) {
    char name[512];
    snprintf(name, sizeof name, "%s.%s", path, leaf);
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->t[i].name, name)) {
            m->t[i].used = 1;
            return &m->t[i];
        }
    if (required) ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': missing tensor '%s'", path, name);
    return NULL;
}

/* An integer scalar buffer (n_V, crb_rows, ...), or def when absent. */
static int get_int(ts_tensor_map *m, const char *path, const char *leaf, int def, int *out) {
    ts_tensor *t = get(m, path, leaf, 0);
    *out = def;
    if (!t) return 0;
    if (t->numel != 1 || (t->dtype != TS_DTYPE_I32 && t->dtype != TS_DTYPE_I64))
        return ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': '%s' is not an integer scalar",
                        path, leaf);
    long long v = t->dtype == TS_DTYPE_I32 ? *(const int32_t *)t->data : *(const int64_t *)t->data;
    if (v <= 0 || v > (1 << 30))
        return ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': %s = %lld", path, leaf, v);
    *out = (int)v;
    return 0;
}

static int positive_steps(const float *s, int64_t n) {
    for (int64_t i = 0; i < n; i++)
        if (!(s[i] > 0.0f) || !isfinite(s[i])) return 0;
    return 1;
}

/* w_sim over the 4-d view `view` of the weight, the steps broadcast from `st` (right-aligned,
 * each dim 1 or the view's). E_FORMAT when they do not broadcast. */
static int quant_weight(const char *path, const float *w, const int64_t view[4],
                        const ts_tensor *st, float *out) {
    int64_t sshape[4] = {1, 1, 1, 1};
    if (st->ndim > 4) goto bad;
    for (int d = 0; d < st->ndim; d++) sshape[4 - st->ndim + d] = st->shape[d];
    int64_t sstride[4], acc = 1;
    for (int d = 3; d >= 0; d--) {
        if (sshape[d] != 1 && sshape[d] != view[d]) goto bad;
        sstride[d] = sshape[d] == 1 ? 0 : acc;
        acc *= sshape[d];
    }
    const float *s = st->data;
    if (!positive_steps(s, st->numel))
        return ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': w_interval not positive", path);
    size_t i = 0;
    for (int64_t a = 0; a < view[0]; a++)
        for (int64_t b = 0; b < view[1]; b++)
            for (int64_t c = 0; c < view[2]; c++)
                for (int64_t d = 0; d < view[3]; d++, i++) {
                    float step = s[a * sstride[0] + b * sstride[1] + c * sstride[2] + d * sstride[3]];
                    out[i] = qclamp(w[i], step, QMIN, QMAX) * step;
                }
    return 0;
bad:
    return ts_error(TINYSAM_E_FORMAT,
                    "quantisation layer '%s': w_interval's shape does not broadcast over the "
                    "weight",
                    path);
}

/* The int8 pack of a weight whose steps are one per output row (Linear and 1x1 conv: row n
 * of [N][K]): codes clamp(round(w / s[n]), -128, 127). */
static ts_i8pack *pack_rows(const float *w, int N, int K, const float *s) {
    int8_t *q = malloc((size_t)N * K + 1);
    if (!q) return ts_error(TINYSAM_E_NOMEM, "out of memory"), NULL;
    for (int n = 0; n < N; n++)
        for (int k = 0; k < K; k++)
            q[(size_t)n * K + k] = (int8_t)qclamp(w[(size_t)n * K + k], s[n], QMIN, QMAX);
    ts_i8pack *p = ts_i8pack_new(q, N, K, K, s);
    free(q);
    return p;
}

int ts_simq_layer_load(ts_tensor_map *m, const char *path, ts_simq_kind kind, int quant,
                       int allow_int8, ts_simq_layer *out) {
    memset(out, 0, sizeof *out);
    out->kind = kind;
    out->n_a = 1;
    ts_tensor *w = get(m, path, "weight", 1), *b = get(m, path, "bias", 0);
    if (!w) return TINYSAM_E_FORMAT;
    int linear = kind <= TS_SIMQ_LINEAR_POST;
    if (w->dtype != TS_DTYPE_F32 || w->ndim != (linear ? 2 : 4))
        return ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': weight of the wrong kind", path);
    if (w->shape[0] > (1 << 20) || w->shape[1] > (1 << 20) ||
        (!linear && (w->shape[2] > 64 || w->shape[3] > 64)))
        return ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': weight too large", path);
    out->n_out = (int)w->shape[0];
    out->n_in = (int)w->shape[1];
    out->kh = linear ? 1 : (int)w->shape[2];
    out->kw = linear ? 1 : (int)w->shape[3];
    int co = kind == TS_SIMQ_CONVT2D ? out->n_in : out->n_out;
    if (b && (b->dtype != TS_DTYPE_F32 || b->numel != co))
        return ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': bias of the wrong shape", path);
    out->w = w->data;
    out->b = b ? b->data : NULL;
    int rc = 0;
    if ((quant && !(out->w_sim = malloc((size_t)w->numel * sizeof(float) + 1))) ||
        !(out->a_step = malloc(sizeof(float))))
        return ts_simq_layer_free(out), ts_error(TINYSAM_E_NOMEM, "out of memory");
    out->a_step[0] = 1.0f;
    /* mode raw: the float layer; its buffers (if any) are not read */
    static const char *const bufs[] = {"w_interval", "a_interval", "a_neg_interval", "a_bias",
                                       "n_V", "n_H", "n_a", "crb_rows", "crb_cols", "crb_acts"};
    if (!quant) {
        out->wk = out->w;
        for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) get(m, path, bufs[i], 0);
        return 0;
    }
    out->path = TS_SIMQ_SIM;
    ts_tensor *wi = get(m, path, "w_interval", 1), *ai = get(m, path, "a_interval", 1);
    if (!wi || !ai) return ts_simq_layer_free(out), TINYSAM_E_FORMAT;
    if (wi->dtype != TS_DTYPE_F32 || ai->dtype != TS_DTYPE_F32) {
        ts_simq_layer_free(out);
        return ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': steps are not float", path);
    }
    int64_t view[4] = {w->shape[0], w->shape[1], out->kh, out->kw};
    int n_V = 1, n_H = 1, crb_rows = 0, crb_cols = 0, crb_acts = 0;
    if (linear) {
        if ((rc = get_int(m, path, "n_V", 1, &n_V)) || (rc = get_int(m, path, "n_H", 1, &n_H)) ||
            (rc = get_int(m, path, "n_a", 1, &out->n_a)) ||
            (rc = get_int(m, path, "crb_rows", out->n_out / n_V, &crb_rows)) ||
            (rc = get_int(m, path, "crb_cols", out->n_in / n_H, &crb_cols)) ||
            (rc = get_int(m, path, "crb_acts", out->n_in, &crb_acts)))
            return ts_simq_layer_free(out), rc;
        (void)crb_acts; /* the calibration's chunking; the forward chunks with n_a */
        if ((int64_t)n_V * crb_rows != out->n_out || (int64_t)n_H * crb_cols != out->n_in ||
            out->n_a > out->n_in) {
            ts_simq_layer_free(out);
            return ts_error(TINYSAM_E_FORMAT,
                            "quantisation layer '%s': n_V*crb_rows x n_H*crb_cols = %lld x %lld "
                            "is not the weight's %d x %d",
                            path, (long long)n_V * crb_rows, (long long)n_H * crb_cols, out->n_out,
                            out->n_in);
        }
        view[0] = n_V;
        view[1] = crb_rows;
        view[2] = n_H;
        view[3] = crb_cols;
        /* a_interval [n_a, 1] (one per chunk) or one value */
        if (ai->numel != out->n_a && ai->numel != 1) {
            ts_simq_layer_free(out);
            return ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': %lld a_interval values for "
                            "n_a = %d", path, (long long)ai->numel, out->n_a);
        }
        float *s = realloc(out->a_step, (size_t)out->n_a * sizeof(float));
        if (!s) return ts_simq_layer_free(out), ts_error(TINYSAM_E_NOMEM, "out of memory");
        out->a_step = s;
        for (int c = 0; c < out->n_a; c++) s[c] = ((const float *)ai->data)[ai->numel == 1 ? 0 : c];
    } else {
        if (ai->numel != 1) {
            ts_simq_layer_free(out);
            return ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': a_interval is not a scalar",
                            path);
        }
        out->a_step[0] = *(const float *)ai->data;
        get_int(m, path, "n_V", 1, &n_V);
        get_int(m, path, "n_H", 1, &n_H);
    }
    if (!positive_steps(out->a_step, out->n_a)) {
        ts_simq_layer_free(out);
        return ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': a_interval not positive", path);
    }
    if (kind == TS_SIMQ_LINEAR_POST) {
        ts_tensor *an = get(m, path, "a_neg_interval", 1);
        if (!an || an->numel != 1 || an->dtype != TS_DTYPE_F32 ||
            !positive_steps(an->data, 1)) {
            ts_simq_layer_free(out);
            return an ? ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': bad a_neg_interval",
                                 path)
                      : TINYSAM_E_FORMAT;
        }
        out->a_neg = *(const float *)an->data;
    }
    if (kind >= TS_SIMQ_CONV2D) {
        ts_tensor *ab = get(m, path, "a_bias", 1);
        if (!ab || ab->numel != 1 || ab->dtype != TS_DTYPE_F32 ||
            !isfinite(*(const float *)ab->data)) {
            ts_simq_layer_free(out);
            return ab ? ts_error(TINYSAM_E_FORMAT, "quantisation layer '%s': bad a_bias", path)
                      : TINYSAM_E_FORMAT;
        }
        out->a_bias = *(const float *)ab->data;
    }
    if ((rc = quant_weight(path, out->w, view, wi, out->w_sim))) return ts_simq_layer_free(out), rc;
    out->wk = out->w_sim;
    /* int8: one step per output row and one input step */
    int rows = wi->numel == out->n_out &&
               (linear ? n_V == out->n_out && n_H == 1 && out->n_a == 1
                       : kind == TS_SIMQ_CONV2D && wi->shape[0] == out->n_out && out->kh == 1 &&
                             out->kw == 1);
    if (allow_int8 && rows) {
        if (!(out->pack = pack_rows(out->w, out->n_out, out->n_in, wi->data)))
            return ts_simq_layer_free(out), TINYSAM_E_NOMEM;
        if (kind == TS_SIMQ_CONV2D) {
            if (!(out->fold_bias = malloc((size_t)out->n_out * sizeof(float))))
                return ts_simq_layer_free(out), ts_error(TINYSAM_E_NOMEM, "out of memory");
            ts_i8pack_fold_abias(out->pack, out->a_bias, out->b, out->fold_bias);
        }
        out->path = TS_SIMQ_INT8;
    }
    return 0;
}

void ts_simq_layer_free(ts_simq_layer *l) {
    free(l->w_sim);
    free(l->a_step);
    free(l->fold_bias);
    ts_i8pack_free(l->pack);
    memset(l, 0, sizeof *l);
}

/* ---- inputs */

/* torch.chunk(n_in, n_a): chunks of ceil(n_in / n_a); the step of column k. */
static void quant_linear_input(const ts_simq_layer *l, const float *x, size_t M, float *xs) {
    int K = l->n_in, per = (K + l->n_a - 1) / l->n_a;
    for (size_t r = 0; r < M; r++)
        for (int k = 0; k < K; k++) {
            size_t i = r * K + k;
            float a = l->a_step[k / per];
            if (l->kind == TS_SIMQ_LINEAR) {
                xs[i] = qclamp(x[i], a, QMIN, QMAX) * a;
            } else {
                float pos = qclamp(x[i], a, 0, QMAX) * a;
                float neg = qclamp(x[i], l->a_neg, QMIN, 0) * l->a_neg;
                xs[i] = pos + neg;
            }
        }
}

static void quant_conv_input(const ts_simq_layer *l, const float *x, size_t n, float *xs) {
    float a = l->a_step[0], ab = l->a_bias;
    for (size_t i = 0; i < n; i++) {
        float q = qclamp(x[i] - ab, a, QMIN, QMAX);
        float t = q * a; /* two roundings, as aq * a_interval + a_bias */
        xs[i] = t + ab;
    }
}

int ts_simq_linear(const ts_simq_layer *l, const float *x, int M, float *y) {
    if (l->kind > TS_SIMQ_LINEAR_POST) return ts_error(TINYSAM_E_ARG, "not a linear layer");
    int N = l->n_out, K = l->n_in;
    if (M <= 0) return 0;
    if (l->path == TS_SIMQ_INT8) {
        if (l->kind == TS_SIMQ_LINEAR) {
            ts_i8_out o = {.bias = l->b, .act = TS_ACT_NONE, .C = y, .ldc = N};
            ts_gemm_i8_f32(M, x, K, l->a_step[0], 128, l->pack, &o);
            return 0;
        }
        /* twin uniform: the positive codes (zp 0), then the negative ones added */
        uint8_t *q = malloc((size_t)M * K);
        if (!q) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        ts_quantize_u8_range(x, M, K, K, l->a_step[0], 0, 0, QMAX, q, K);
        ts_i8_out o = {.bias = l->b, .act = TS_ACT_NONE, .C = y, .ldc = N};
        ts_gemm_i8(M, q, K, l->a_step[0], 0, l->pack, &o);
        ts_quantize_u8_range(x, M, K, K, l->a_neg, 128, QMIN, 0, q, K);
        ts_i8_out o2 = {.bias = NULL, .act = TS_ACT_NONE, .accumulate = 1, .C = y, .ldc = N};
        ts_gemm_i8(M, q, K, l->a_neg, 128, l->pack, &o2);
        free(q);
        return 0;
    }
    const float *in = x;
    float *xs = NULL;
    if (l->path == TS_SIMQ_SIM) {
        if (!(xs = malloc((size_t)M * K * sizeof(float))))
            return ts_error(TINYSAM_E_NOMEM, "out of memory");
        quant_linear_input(l, x, (size_t)M, xs);
        in = xs;
    }
    ts_gemm_ex(M, N, K, in, K, l->wk, K, 1, y, N, 0.0f, l->b, TS_ACT_NONE);
    free(xs);
    return 0;
}

/* ---- convolutions */

int ts_simq_conv2d(const ts_simq_layer *l, const float *x, int H, int W, int stride, int pad,
                   int groups, float *y, int *Ho_out, int *Wo_out) {
    if (l->kind != TS_SIMQ_CONV2D || stride < 1 || pad < 0 || groups < 1 ||
        l->n_out % groups)
        return ts_error(TINYSAM_E_ARG, "bad convolution geometry");
    int kh = l->kh, kw = l->kw, Ci = l->n_in, Co = l->n_out, Cg = Co / groups;
    int Ho = (H + 2 * pad - kh) / stride + 1, Wo = (W + 2 * pad - kw) / stride + 1;
    if (Ho <= 0 || Wo <= 0) return ts_error(TINYSAM_E_ARG, "convolution input too small");
    *Ho_out = Ho;
    *Wo_out = Wo;
    size_t nin = (size_t)Ci * groups * H * W, P = (size_t)Ho * Wo;
    const float *in = x;
    float *xs = NULL;
    if (l->path != TS_SIMQ_RAW) {
        if (!(xs = malloc(nin * sizeof(float)))) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        quant_conv_input(l, x, nin, xs);
        in = xs;
    }
    if (l->path == TS_SIMQ_INT8 && groups == 1 && stride == 1 && pad == 0) {
        /* 1x1: y^T[P][Co] = (x - a_bias)^T codes * W^T; the a_bias part is in fold_bias */
        float *xt = malloc(P * Ci * sizeof(float)), *yt = malloc(P * Co * sizeof(float));
        if (!xt || !yt) {
            free(xt), free(yt), free(xs);
            return ts_error(TINYSAM_E_NOMEM, "out of memory");
        }
        for (int c = 0; c < Ci; c++)
            for (size_t p = 0; p < P; p++) xt[p * Ci + c] = x[(size_t)c * P + p] - l->a_bias;
        ts_i8_out o = {.bias = l->fold_bias, .act = TS_ACT_NONE, .C = yt, .ldc = Co};
        ts_gemm_i8_f32((int)P, xt, Ci, l->a_step[0], 128, l->pack, &o);
        for (size_t p = 0; p < P; p++)
            for (int c = 0; c < Co; c++) y[(size_t)c * P + p] = yt[p * Co + c];
        free(xt), free(yt), free(xs);
        return 0;
    }
    if (Ci == 1 && groups > 1) { /* depthwise: direct */
        for (int c = 0; c < Co; c++) {
            const float *wc = l->wk + (size_t)c * kh * kw, *xc = in + (size_t)(c / Cg) * H * W;
            float bias = l->b ? l->b[c] : 0.0f;
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    float s = 0.0f;
                    for (int ky = 0; ky < kh; ky++) {
                        int iy = oy * stride - pad + ky;
                        if (iy < 0 || iy >= H) continue;
                        for (int kx = 0; kx < kw; kx++) {
                            int ix = ox * stride - pad + kx;
                            if (ix >= 0 && ix < W) s += wc[ky * kw + kx] * xc[(size_t)iy * W + ix];
                        }
                    }
                    y[(size_t)c * P + (size_t)oy * Wo + ox] = s + bias;
                }
        }
        free(xs);
        return 0;
    }
    /* im2col per group: col[Ci*kh*kw][P], y_g[Cg][P] = W_g[Cg][K] col */
    size_t K = (size_t)Ci * kh * kw;
    float *col = malloc(K * P * sizeof(float));
    if (!col) return free(xs), ts_error(TINYSAM_E_NOMEM, "out of memory");
    for (int g = 0; g < groups; g++) {
        for (int c = 0; c < Ci; c++)
            for (int ky = 0; ky < kh; ky++)
                for (int kx = 0; kx < kw; kx++) {
                    float *row = col + ((size_t)(c * kh + ky) * kw + kx) * P;
                    const float *xc = in + (size_t)(g * Ci + c) * H * W;
                    for (int oy = 0; oy < Ho; oy++) {
                        int iy = oy * stride - pad + ky;
                        for (int ox = 0; ox < Wo; ox++) {
                            int ix = ox * stride - pad + kx;
                            row[(size_t)oy * Wo + ox] =
                                iy >= 0 && iy < H && ix >= 0 && ix < W ? xc[(size_t)iy * W + ix]
                                                                       : 0.0f;
                        }
                    }
                }
        float *yg = y + (size_t)g * Cg * P;
        ts_gemm((int)Cg, (int)P, (int)K, l->wk + (size_t)g * Cg * K, (int)K, col, (int)P, 0, yg,
                (int)P, 0.0f);
        if (l->b)
            for (int c = 0; c < Cg; c++)
                for (size_t p = 0; p < P; p++) yg[(size_t)c * P + p] += l->b[g * Cg + c];
    }
    free(col);
    free(xs);
    return 0;
}

int ts_simq_convt2d(const ts_simq_layer *l, const float *x, int H, int W, float *y) {
    if (l->kind != TS_SIMQ_CONVT2D) return ts_error(TINYSAM_E_ARG, "not a transposed convolution");
    int Ci = l->n_out, Co = l->n_in, kh = l->kh, kw = l->kw;
    size_t P = (size_t)H * W, nin = (size_t)Ci * P;
    const float *in = x;
    float *xs = NULL;
    if (l->path != TS_SIMQ_RAW) {
        if (!(xs = malloc(nin * sizeof(float)))) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        quant_conv_input(l, x, nin, xs);
        in = xs;
    }
    /* tap (dy, dx): t[Co][P] = W[:, :, dy, dx]^T x, placed at (kh*i + dy, kw*j + dx) */
    float *wt = malloc((size_t)Co * Ci * sizeof(float)), *t = malloc((size_t)Co * P * sizeof(float));
    if (!wt || !t) {
        free(wt), free(t), free(xs);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    int Wy = W * kw;
    for (int dy = 0; dy < kh; dy++)
        for (int dx = 0; dx < kw; dx++) {
            for (int o = 0; o < Co; o++)
                for (int c = 0; c < Ci; c++)
                    wt[(size_t)o * Ci + c] = l->wk[(((size_t)c * Co + o) * kh + dy) * kw + dx];
            ts_gemm(Co, (int)P, Ci, wt, Ci, in, (int)P, 0, t, (int)P, 0.0f);
            for (int o = 0; o < Co; o++) {
                float bias = l->b ? l->b[o] : 0.0f;
                for (int i = 0; i < H; i++)
                    for (int j = 0; j < W; j++)
                        y[(size_t)o * H * kh * Wy + (size_t)(i * kh + dy) * Wy + j * kw + dx] =
                            t[(size_t)o * P + (size_t)i * W + j] + bias;
            }
        }
    free(wt), free(t), free(xs);
    return 0;
}
