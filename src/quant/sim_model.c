/* sim_model.c - the reference forward of a vit_t SAM with Q-TinySAM's quantisation layers
 * (see sim_model.h). Written for clarity, in the official modules' order of operations:
 * NCHW maps for the convolutional parts, token rows [L][C] for the attention parts.
 * ref: tinysam/modeling/tiny_vit_sam.py, mask_decoder.py, transformer.py, prompt_encoder.py */
#include "quant/sim_model.h"

#include "core.h"
#include "io/json.h"
#include "nn/nn.h"
#include "quant/sim_layers.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *path;
    ts_simq_layer l;
} named_layer;

struct ts_simq_model {
    ts_tensor_map *map;
    named_layer *layers; /* sorted by path */
    int n_layers;
    int path_count[3], class_count[4];
};

/* ------------------------------------------------------------------ load */

static int cmp_layer(const void *a, const void *b) {
    return strcmp(((const named_layer *)a)->path, ((const named_layer *)b)->path);
}

static const ts_simq_layer *layer(const ts_simq_model *s, const char *path) {
    named_layer key = {.path = (char *)path};
    const named_layer *f = bsearch(&key, s->layers, (size_t)s->n_layers, sizeof key, cmp_layer);
    return f ? &f->l : NULL;
}

static const float *tensor(const ts_simq_model *s, const char *name, int64_t numel) {
    const ts_tensor *t = ts_map_get(s->map, name);
    if (!t || t->dtype != TS_DTYPE_F32 || t->numel != numel) return NULL;
    ((ts_tensor *)t)->used = 1;
    return t->data;
}

static int starts(const char *s, const char *p) {
    return !strncmp(s, p, strlen(p));
}

/* The weights the forward runs as layers: every Linear / convolution weight of the encoder
 * (not the unused ImageNet head), of the mask down-scaling and of the decoder. */
static int is_layer_weight(const ts_tensor *t, char *path, size_t cap) {
    size_t n = strlen(t->name);
    if (n < 8 || strcmp(t->name + n - 7, ".weight") || (t->ndim != 2 && t->ndim != 4)) return 0;
    if (starts(t->name, "image_encoder.head.") || starts(t->name, "mask_decoder.iou_token.") ||
        starts(t->name, "mask_decoder.mask_tokens."))
        return 0;
    if (!starts(t->name, "image_encoder.") && !starts(t->name, "mask_decoder.") &&
        !starts(t->name, "prompt_encoder.mask_downscaling."))
        return 0;
    if (n - 7 >= cap) return 0;
    memcpy(path, t->name, n - 7);
    path[n - 7] = 0;
    return 1;
}

int ts_simq_model_load(ts_tensor_map *m, ts_simq_model **out) {
    *out = NULL;
    if (!m->metadata_json) return 0;
    ts_json *meta = NULL, *q = NULL;
    int rc = ts_json_parse(m->metadata_json, strlen(m->metadata_json), &meta);
    if (rc) return ts_error_prefix(rc, "model metadata");
    const ts_json *ql = ts_json_get(meta, "tinysam.quant_layers");
    if (!ql || ql->type != TS_JSON_STRING ||
        (rc = ts_json_parse(ql->string, strlen(ql->string), &q)) || q->type != TS_JSON_OBJECT ||
        q->n == 0) {
        if (!rc && ql && (ql->type != TS_JSON_STRING || (q && q->type != TS_JSON_OBJECT)))
            rc = ts_error(TINYSAM_E_FORMAT, "model metadata: tinysam.quant_layers is not an object");
        ts_json_free(q);
        ts_json_free(meta);
        return rc;
    }
    if (!ts_map_get(m, "image_encoder.patch_embed.seq.0.c.weight")) {
        ts_json_free(q);
        ts_json_free(meta);
        return ts_error(TINYSAM_E_UNSUPPORTED,
                        "quantisation layers are run for the vit_t (TinySAM) model only");
    }
    ts_simq_model *s = ts_calloc(1, sizeof *s);
    if (!s || !(s->layers = ts_calloc((size_t)m->n + 1, sizeof *s->layers))) {
        free(s);
        ts_json_free(q);
        ts_json_free(meta);
        return TINYSAM_E_NOMEM;
    }
    s->map = m;
    const char *env = getenv("TINYSAM_QSIM_FLOAT");
    int allow_int8 = !(env && *env && strcmp(env, "0"));
    /* every quantisation layer named in the metadata must be found below */
    int n_named = q->n, found = 0;
    for (int i = 0; i < m->n && !rc; i++) {
        char path[512];
        if (!is_layer_weight(&m->t[i], path, sizeof path)) continue;
        ts_simq_kind kind = m->t[i].ndim == 2 ? TS_SIMQ_LINEAR
                            : strstr(path, "output_upscaling") ? TS_SIMQ_CONVT2D
                                                                : TS_SIMQ_CONV2D;
        int quant = 0;
        const ts_json *c = ts_json_get(q, path);
        if (c) {
            char cls[64] = "", mode[32] = "";
            if (c->type != TS_JSON_STRING || sscanf(c->string, "%63s %31s", cls, mode) != 2 ||
                ts_simq_kind_of(cls, &kind)) {
                rc = ts_error(TINYSAM_E_FORMAT, "model metadata: bad quantisation entry for '%s'",
                              path);
                break;
            }
            quant = !strcmp(mode, "quant_forward");
            found++;
        }
        named_layer *nl = &s->layers[s->n_layers];
        if (!(nl->path = strdup(path))) {
            rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
            break;
        }
        s->n_layers++;
        if ((rc = ts_simq_layer_load(m, path, kind, quant, allow_int8, &nl->l))) break;
        s->path_count[nl->l.path]++;
        if (c) s->class_count[kind]++;
    }
    if (!rc && found != n_named)
        rc = ts_error(TINYSAM_E_UNSUPPORTED,
                      "%d quantisation layer(s) are not at a place of the vit_t model that runs "
                      "them",
                      n_named - found);
    ts_json_free(q);
    ts_json_free(meta);
    if (rc) {
        ts_simq_model_free(s);
        return rc;
    }
    qsort(s->layers, (size_t)s->n_layers, sizeof *s->layers, cmp_layer);
    *out = s;
    return 0;
}

void ts_simq_model_free(ts_simq_model *s) {
    if (!s) return;
    for (int i = 0; i < s->n_layers; i++) {
        free(s->layers[i].path);
        ts_simq_layer_free(&s->layers[i].l);
    }
    free(s->layers);
    free(s);
}

void ts_simq_model_counts(const ts_simq_model *s, int path[3], int per_class[4]) {
    for (int i = 0; i < 3; i++) path[i] = s ? s->path_count[i] : 0;
    for (int i = 0; i < 4; i++) per_class[i] = s ? s->class_count[i] : 0;
}

/* ------------------------------------------------------------------ building blocks */

#define FAILM(...) return ts_error(TINYSAM_E_FORMAT, __VA_ARGS__)

static float *falloc(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) ts_error(TINYSAM_E_NOMEM, "out of memory");
    return p;
}

static void gelu(float *x, size_t n) {
    ts_gelu(x, n);
}

/* Conv2d_BN (conv, then BatchNorm in eval: spec's fmaf form), x [Ci][H][W] -> *y (allocated). */
static int conv_bn(const ts_simq_model *s, const char *prefix, const float *x, int H, int W,
                   int stride, int pad, int groups, float **y, int *Ho, int *Wo) {
    char p[256];
    snprintf(p, sizeof p, "%s.c", prefix);
    const ts_simq_layer *l = layer(s, p);
    if (!l) FAILM("quantised model: layer '%s' missing", p);
    int Co = l->n_out;
    int Hq = (H + 2 * pad - l->kh) / stride + 1, Wq = (W + 2 * pad - l->kw) / stride + 1;
    if (!(*y = falloc((size_t)Co * Hq * Wq))) return TINYSAM_E_NOMEM;
    int rc = ts_simq_conv2d(l, x, H, W, stride, pad, groups, *y, Ho, Wo);
    if (rc) return rc;
    const float *g, *b, *mu, *var;
    char n[4][300];
    snprintf(n[0], sizeof n[0], "%s.bn.weight", prefix);
    snprintf(n[1], sizeof n[1], "%s.bn.bias", prefix);
    snprintf(n[2], sizeof n[2], "%s.bn.running_mean", prefix);
    snprintf(n[3], sizeof n[3], "%s.bn.running_var", prefix);
    if (!(g = tensor(s, n[0], Co)) || !(b = tensor(s, n[1], Co)) || !(mu = tensor(s, n[2], Co)) ||
        !(var = tensor(s, n[3], Co)))
        FAILM("quantised model: BatchNorm '%s.bn' missing", prefix);
    size_t P = (size_t)*Ho * *Wo;
    for (int c = 0; c < Co; c++) {
        float alpha = g[c] * (1.0f / sqrtf(var[c] + 1e-5f));
        float beta = fmaf(-mu[c], alpha, b[c]);
        float *yc = *y + (size_t)c * P;
        for (size_t i = 0; i < P; i++) yc[i] = fmaf(yc[i], alpha, beta);
    }
    return 0;
}

/* LayerNorm2d over channels of x [C][P], in place. */
static int layernorm2d(const ts_simq_model *s, const char *prefix, float *x, int C, size_t P) {
    char nw[256], nb[256];
    snprintf(nw, sizeof nw, "%s.weight", prefix);
    snprintf(nb, sizeof nb, "%s.bias", prefix);
    const float *w = tensor(s, nw, C), *b = tensor(s, nb, C);
    if (!w || !b) FAILM("quantised model: LayerNorm2d '%s' missing", prefix);
    for (size_t p = 0; p < P; p++) {
        float u = 0, v = 0;
        for (int c = 0; c < C; c++) u += x[(size_t)c * P + p];
        u /= (float)C;
        for (int c = 0; c < C; c++) {
            float d = x[(size_t)c * P + p] - u;
            v += d * d;
        }
        v /= (float)C;
        float r = sqrtf(v + 1e-6f);
        for (int c = 0; c < C; c++) {
            float *e = &x[(size_t)c * P + p];
            *e = w[c] * ((*e - u) / r) + b[c];
        }
    }
    return 0;
}

static int layernorm(const ts_simq_model *s, const char *prefix, const float *x, float *y, int M,
                     int C) {
    char nw[256], nb[256];
    snprintf(nw, sizeof nw, "%s.weight", prefix);
    snprintf(nb, sizeof nb, "%s.bias", prefix);
    const float *w = tensor(s, nw, C), *b = tensor(s, nb, C);
    if (!w || !b) FAILM("quantised model: LayerNorm '%s' missing", prefix);
    ts_layernorm_to(x, y, M, C, w, b, 1e-5f);
    return 0;
}

/* [C][P] <-> [P][C] */
static void transpose(const float *src, int rows, int cols, float *dst) {
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[(size_t)c * rows + r] = src[(size_t)r * cols + c];
}

/* ------------------------------------------------------------------ image encoder */

/* MBConv (stage 0): x [C][H][W] in place. */
static int mbconv(const ts_simq_model *s, int b, float *x, int C, int H, int W) {
    char p[128];
    float *t1 = NULL, *t2 = NULL, *t3 = NULL;
    int Ho, Wo, rc;
    snprintf(p, sizeof p, "image_encoder.layers.0.blocks.%d.conv1", b);
    if ((rc = conv_bn(s, p, x, H, W, 1, 0, 1, &t1, &Ho, &Wo))) goto done;
    int Ch = C * 4;
    gelu(t1, (size_t)Ch * H * W);
    snprintf(p, sizeof p, "image_encoder.layers.0.blocks.%d.conv2", b);
    if ((rc = conv_bn(s, p, t1, H, W, 1, 1, Ch, &t2, &Ho, &Wo))) goto done;
    gelu(t2, (size_t)Ch * H * W);
    snprintf(p, sizeof p, "image_encoder.layers.0.blocks.%d.conv3", b);
    if ((rc = conv_bn(s, p, t2, H, W, 1, 0, 1, &t3, &Ho, &Wo))) goto done;
    for (size_t i = 0; i < (size_t)C * H * W; i++) x[i] += t3[i];
    gelu(x, (size_t)C * H * W);
done:
    free(t1), free(t2), free(t3);
    return rc;
}

/* PatchMerging: x [Ci][R][R] -> *out [Co][Ro][Ro]. */
static int patch_merging(const ts_simq_model *s, int st, const float *x, int R, int Co, int stride,
                         float **out, int *Ro) {
    char p[128];
    float *t1 = NULL, *t2 = NULL;
    int Ho, Wo, rc;
    snprintf(p, sizeof p, "image_encoder.layers.%d.downsample.conv1", st);
    if ((rc = conv_bn(s, p, x, R, R, 1, 0, 1, &t1, &Ho, &Wo))) goto done;
    gelu(t1, (size_t)Co * R * R);
    snprintf(p, sizeof p, "image_encoder.layers.%d.downsample.conv2", st);
    if ((rc = conv_bn(s, p, t1, R, R, stride, 1, Co, &t2, &Ho, &Wo))) goto done;
    gelu(t2, (size_t)Co * Ho * Wo);
    snprintf(p, sizeof p, "image_encoder.layers.%d.downsample.conv3", st);
    rc = conv_bn(s, p, t2, Ho, Wo, 1, 0, 1, out, Ro, &Wo);
done:
    free(t1), free(t2);
    return rc;
}

/* TinyViT attention on one group of windows: xw [nw*N][C] (padded tokens included) -> ow. */
static int attention_windows(const ts_simq_model *s, const char *pre, const float *xw, int nw,
                             int N, int C, int heads, int ws, float *ow) {
    char p[256];
    size_t rows = (size_t)nw * N;
    float *ln = falloc(rows * C), *qkv = falloc(rows * 3 * C), *o = falloc(rows * C),
          *S = falloc((size_t)N * N);
    int rc = ln && qkv && o && S ? 0 : TINYSAM_E_NOMEM;
    snprintf(p, sizeof p, "%s.attn.attention_biases", pre);
    int P = ws * ws;
    const float *ab = tensor(s, p, (int64_t)heads * P);
    if (!rc && !ab) rc = ts_error(TINYSAM_E_FORMAT, "quantised model: '%s' missing", p);
    snprintf(p, sizeof p, "%s.attn.norm", pre);
    if (!rc) rc = layernorm(s, p, xw, ln, (int)rows, C);
    snprintf(p, sizeof p, "%s.attn.qkv", pre);
    const ts_simq_layer *lq = layer(s, p);
    snprintf(p, sizeof p, "%s.attn.proj", pre);
    const ts_simq_layer *lp = layer(s, p);
    if (!rc && (!lq || !lp)) rc = ts_error(TINYSAM_E_FORMAT, "quantised model: '%s' layers missing", pre);
    if (!rc) rc = ts_simq_linear(lq, ln, (int)rows, qkv);
    const float scale = 0.17677669529663687f; /* 32^-0.5 */
    for (int w = 0; w < nw && !rc; w++)
        for (int h = 0; h < heads; h++) {
            const float *base = qkv + (size_t)w * N * 3 * C + h * 96;
            for (int i = 0; i < N; i++) {
                const float *q = base + (size_t)i * 3 * C;
                int yi = i / ws, xi = i % ws;
                float mx = -INFINITY;
                for (int j = 0; j < N; j++) {
                    const float *k = base + (size_t)j * 3 * C + 32;
                    float d = 0;
                    for (int c = 0; c < 32; c++) d += q[c] * k[c];
                    int yj = j / ws, xj = j % ws;
                    float v = d * scale + ab[h * P + abs(yi - yj) * ws + abs(xi - xj)];
                    S[j] = v;
                    mx = v > mx ? v : mx;
                }
                float sum = 0;
                for (int j = 0; j < N; j++) sum += S[j] = expf(S[j] - mx);
                float *oi = o + ((size_t)w * N + i) * C + h * 32;
                for (int c = 0; c < 32; c++) oi[c] = 0;
                for (int j = 0; j < N; j++) {
                    const float *v = base + (size_t)j * 3 * C + 64;
                    float a = S[j] / sum;
                    for (int c = 0; c < 32; c++) oi[c] += a * v[c];
                }
            }
        }
    if (!rc) rc = ts_simq_linear(lp, o, (int)rows, ow);
    free(ln), free(qkv), free(o), free(S);
    return rc;
}

/* TinyViTBlock on tokens x [R*R][C], in place. */
static int vit_block(const ts_simq_model *s, int st, int b, float *x, int R, int C, int heads,
                     int ws) {
    char pre[128], p[256];
    snprintf(pre, sizeof pre, "image_encoder.layers.%d.blocks.%d", st, b);
    int nwy = (R + ws - 1) / ws, nw = nwy * nwy, N = ws * ws;
    size_t L = (size_t)R * R;
    float *xw = falloc((size_t)nw * N * C), *ow = falloc((size_t)nw * N * C), *chw = falloc(L * C),
          *t = NULL, *h = NULL;
    int rc = xw && ow && chw ? 0 : TINYSAM_E_NOMEM;
    if (rc) goto done;
    /* windows of the zero-padded map (padding before the attention's LayerNorm) */
    memset(xw, 0, (size_t)nw * N * C * sizeof(float));
    for (int y = 0; y < R; y++)
        for (int xx = 0; xx < R; xx++) {
            int w = (y / ws) * nwy + xx / ws, i = (y % ws) * ws + xx % ws;
            memcpy(xw + ((size_t)w * N + i) * C, x + ((size_t)y * R + xx) * C, C * sizeof(float));
        }
    if ((rc = attention_windows(s, pre, xw, nw, N, C, heads, ws, ow))) goto done;
    for (int y = 0; y < R; y++)
        for (int xx = 0; xx < R; xx++) {
            int w = (y / ws) * nwy + xx / ws, i = (y % ws) * ws + xx % ws;
            float *d = x + ((size_t)y * R + xx) * C;
            const float *a = ow + ((size_t)w * N + i) * C;
            for (int c = 0; c < C; c++) d[c] += a[c];
        }
    /* local conv (depthwise 3x3 + BN, no residual) */
    transpose(x, (int)L, C, chw);
    int Ho, Wo;
    snprintf(p, sizeof p, "%s.local_conv", pre);
    if ((rc = conv_bn(s, p, chw, R, R, 1, 1, C, &t, &Ho, &Wo))) goto done;
    transpose(t, C, (int)L, x);
    /* MLP */
    free(t);
    t = NULL;
    if (!(t = falloc(L * C)) || !(h = falloc(L * 4 * C))) {
        rc = TINYSAM_E_NOMEM;
        goto done;
    }
    snprintf(p, sizeof p, "%s.mlp.norm", pre);
    if ((rc = layernorm(s, p, x, t, (int)L, C))) goto done;
    snprintf(p, sizeof p, "%s.mlp.fc1", pre);
    const ts_simq_layer *l1 = layer(s, p);
    snprintf(p, sizeof p, "%s.mlp.fc2", pre);
    const ts_simq_layer *l2 = layer(s, p);
    if (!l1 || !l2) {
        rc = ts_error(TINYSAM_E_FORMAT, "quantised model: '%s.mlp' layers missing", pre);
        goto done;
    }
    if ((rc = ts_simq_linear(l1, t, (int)L, h))) goto done;
    gelu(h, L * 4 * C);
    if ((rc = ts_simq_linear(l2, h, (int)L, t))) goto done;
    for (size_t i = 0; i < L * C; i++) x[i] += t[i];
done:
    free(xw), free(ow), free(chw), free(t), free(h);
    return rc;
}

int ts_simq_encode(const ts_simq_model *s, const float *input, float *out) {
    float *a = NULL, *b = NULL, *tok = NULL;
    int H, W, rc;
    ts_error_clear();
    if ((rc = conv_bn(s, "image_encoder.patch_embed.seq.0", input, 1024, 1024, 2, 1, 1, &a, &H, &W)))
        goto done;
    gelu(a, (size_t)32 * H * W);
    if ((rc = conv_bn(s, "image_encoder.patch_embed.seq.2", a, H, W, 2, 1, 1, &b, &H, &W))) goto done;
    free(a);
    a = NULL;
    for (int k = 0; k < 2 && !rc; k++) rc = mbconv(s, k, b, 64, H, W);
    if (rc) goto done;
    int R;
    if ((rc = patch_merging(s, 0, b, H, 128, 2, &a, &R))) goto done;
    free(b);
    b = NULL;
    /* stages 1..3 on tokens; a holds [C][R][R] */
    static const int dims[4] = {64, 128, 160, 320}, heads[4] = {2, 4, 5, 10},
                     wins[4] = {7, 7, 14, 7}, depth[4] = {2, 2, 6, 2};
    for (int st = 1; st < 4; st++) {
        int C = dims[st];
        size_t L = (size_t)R * R;
        if (!(tok = falloc(L * C))) {
            rc = TINYSAM_E_NOMEM;
            goto done;
        }
        transpose(a, C, (int)L, tok);
        free(a);
        a = NULL;
        for (int k = 0; k < depth[st] && !rc; k++) rc = vit_block(s, st, k, tok, R, C, heads[st], wins[st]);
        if (rc) goto done;
        if (!(a = falloc(L * C))) {
            rc = TINYSAM_E_NOMEM;
            goto done;
        }
        transpose(tok, (int)L, C, a);
        free(tok);
        tok = NULL;
        if (st < 3) {
            int Co = dims[st + 1], stride = Co == 320 ? 1 : 2, Ro;
            if ((rc = patch_merging(s, st, a, R, Co, stride, &b, &Ro))) goto done;
            free(a);
            a = b;
            b = NULL;
            R = Ro;
        }
    }
    /* neck: a = [320][64][64] */
    const ts_simq_layer *n0 = layer(s, "image_encoder.neck.0"), *n2 = layer(s, "image_encoder.neck.2");
    if (!n0 || !n2 || R != 64) {
        rc = ts_error(TINYSAM_E_FORMAT, "quantised model: neck missing");
        goto done;
    }
    if (!(b = falloc((size_t)256 * 4096))) {
        rc = TINYSAM_E_NOMEM;
        goto done;
    }
    int Ho, Wo;
    if ((rc = ts_simq_conv2d(n0, a, 64, 64, 1, 0, 1, b, &Ho, &Wo))) goto done;
    if ((rc = layernorm2d(s, "image_encoder.neck.1", b, 256, 4096))) goto done;
    if ((rc = ts_simq_conv2d(n2, b, 64, 64, 1, 1, 1, out, &Ho, &Wo))) goto done;
    rc = layernorm2d(s, "image_encoder.neck.3", out, 256, 4096);
done:
    free(a), free(b), free(tok);
    return rc;
}

/* ------------------------------------------------------------------ mask decoder */

/* SAM's Attention: q [Nq][256], k, v [Nk][256] -> out [Nq][256]. */
static int dec_attention(const ts_simq_model *s, const char *pre, const float *q, int Nq,
                         const float *k, const float *v, int Nk, float *out) {
    char p[256];
    const ts_simq_layer *l[4];
    static const char *const names[4] = {"q_proj", "k_proj", "v_proj", "out_proj"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s.%s", pre, names[i]);
        if (!(l[i] = layer(s, p))) FAILM("quantised model: layer '%s' missing", p);
    }
    int D = l[0]->n_out, c = D / 8;
    float *qp = falloc((size_t)Nq * D), *kp = falloc((size_t)Nk * D), *vp = falloc((size_t)Nk * D),
          *o = falloc((size_t)Nq * D), *S = falloc((size_t)Nq * Nk), *kt = falloc((size_t)Nk * c),
          *qh = falloc((size_t)Nq * c), *vh = falloc((size_t)Nk * c), *oh = falloc((size_t)Nq * c);
    int rc = qp && kp && vp && o && S && kt && qh && vh && oh ? 0 : TINYSAM_E_NOMEM;
    if (!rc) rc = ts_simq_linear(l[0], q, Nq, qp);
    if (!rc) rc = ts_simq_linear(l[1], k, Nk, kp);
    if (!rc) rc = ts_simq_linear(l[2], v, Nk, vp);
    const float div = sqrtf((float)c);
    for (int h = 0; h < 8 && !rc; h++) {
        for (int i = 0; i < Nq; i++) memcpy(qh + (size_t)i * c, qp + (size_t)i * D + h * c, c * sizeof(float));
        for (int j = 0; j < Nk; j++) {
            memcpy(vh + (size_t)j * c, vp + (size_t)j * D + h * c, c * sizeof(float));
            memcpy(kt + (size_t)j * c, kp + (size_t)j * D + h * c, c * sizeof(float));
        }
        ts_gemm(Nq, Nk, c, qh, c, kt, c, 1, S, Nk, 0.0f);
        for (size_t i = 0; i < (size_t)Nq * Nk; i++) S[i] /= div;
        ts_softmax_rows(S, Nq, Nk);
        ts_gemm(Nq, c, Nk, S, Nk, vh, c, 0, oh, c, 0.0f);
        for (int i = 0; i < Nq; i++) memcpy(o + (size_t)i * D + h * c, oh + (size_t)i * c, c * sizeof(float));
    }
    if (!rc) rc = ts_simq_linear(l[3], o, Nq, out);
    free(qp), free(kp), free(vp), free(o), free(S), free(kt), free(qh), free(vh), free(oh);
    return rc;
}

/* MLP of the decoder heads: n layers, ReLU between. */
static int head_mlp(const ts_simq_model *s, const char *pre, const float *x, float *y) {
    float a[256], b[256];
    memcpy(a, x, sizeof a);
    for (int i = 0; i < 3; i++) {
        char p[256];
        snprintf(p, sizeof p, "%s.layers.%d", pre, i);
        const ts_simq_layer *l = layer(s, p);
        if (!l || l->n_in != 256 || l->n_out > 256) FAILM("quantised model: layer '%s' missing", p);
        int rc = ts_simq_linear(l, a, 1, i == 2 ? y : b);
        if (rc) return rc;
        if (i < 2) {
            ts_relu(b, (size_t)l->n_out);
            memcpy(a, b, sizeof a);
        }
    }
    return 0;
}

static void add(float *d, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++) d[i] = a[i] + b[i];
}

int ts_simq_decode(const ts_simq_model *s, const ts_prompt_encoder *pe, const float *embedding,
                   const ts_prompt_set *set, float *low_res, float *iou) {
    ts_error_clear();
    enum { NI = 4096, D = 256 };
    int T = 5 + set->n_points + 2, k = 0, rc = 0;
    float *tok = falloc((size_t)T * D), *qpe = falloc((size_t)T * D), *dense = falloc((size_t)D * NI),
          *keys = falloc((size_t)NI * D), *kpe = falloc((size_t)NI * D), *qb = falloc((size_t)T * D),
          *kb = falloc((size_t)NI * D), *ao = falloc((size_t)NI * D), *mlp = falloc((size_t)T * 2048),
          *up1 = falloc((size_t)64 * 128 * 128), *up2 = falloc((size_t)32 * 256 * 256);
    if (!tok || !qpe || !dense || !keys || !kpe || !qb || !kb || !ao || !mlp || !up1 || !up2) {
        rc = TINYSAM_E_NOMEM;
        goto done;
    }
    const float *iou_tok = tensor(s, "mask_decoder.iou_token.weight", D),
                *mask_tok = tensor(s, "mask_decoder.mask_tokens.weight", 4 * D);
    if (!iou_tok || !mask_tok) {
        rc = ts_error(TINYSAM_E_FORMAT, "quantised model: decoder tokens missing");
        goto done;
    }
    memcpy(tok, iou_tok, D * sizeof(float));
    memcpy(tok + D, mask_tok, 4 * D * sizeof(float));
    ts_prompt_sparse(pe, set, tok + 5 * D, &k);
    T = 5 + k;
    memcpy(qpe, tok, (size_t)T * D * sizeof(float));
    /* dense prompt: no_mask_embed, or the mask down-scaling (quantised convolutions) */
    if (!set->mask_input) {
        if ((rc = ts_prompt_dense(pe, NULL, dense))) goto done;
    } else {
        static const char *const cv[3] = {"prompt_encoder.mask_downscaling.0",
                                          "prompt_encoder.mask_downscaling.3",
                                          "prompt_encoder.mask_downscaling.6"};
        const ts_simq_layer *c0 = layer(s, cv[0]), *c3 = layer(s, cv[1]), *c6 = layer(s, cv[2]);
        if (!c0 || !c3 || !c6) {
            rc = ts_error(TINYSAM_E_FORMAT, "quantised model: mask down-scaling missing");
            goto done;
        }
        float *m1 = up1, *m2 = up2; /* scratch: 4x128x128, 16x64x64 */
        int Ho, Wo;
        if ((rc = ts_simq_conv2d(c0, set->mask_input, 256, 256, 2, 0, 1, m1, &Ho, &Wo))) goto done;
        if ((rc = layernorm2d(s, "prompt_encoder.mask_downscaling.1", m1, 4, (size_t)Ho * Wo))) goto done;
        gelu(m1, (size_t)4 * Ho * Wo);
        if ((rc = ts_simq_conv2d(c3, m1, Ho, Wo, 2, 0, 1, m2, &Ho, &Wo))) goto done;
        if ((rc = layernorm2d(s, "prompt_encoder.mask_downscaling.4", m2, 16, (size_t)Ho * Wo))) goto done;
        gelu(m2, (size_t)16 * Ho * Wo);
        if ((rc = ts_simq_conv2d(c6, m2, Ho, Wo, 1, 0, 1, dense, &Ho, &Wo))) goto done;
    }
    /* keys = (embedding + dense) as tokens, key_pe = dense PE as tokens */
    for (size_t i = 0; i < (size_t)D * NI; i++) ao[i] = embedding[i] + dense[i];
    transpose(ao, D, NI, keys);
    memcpy(kpe, ts_prompt_dense_pe(pe), sizeof(float) * (size_t)NI * D);
    float *q = tok;
    for (int L = 0; L < 2; L++) {
        char pre[128], p[192];
        snprintf(pre, sizeof pre, "mask_decoder.transformer.layers.%d", L);
        snprintf(p, sizeof p, "%s.self_attn", pre);
        if (L == 0) {
            if ((rc = dec_attention(s, p, q, T, q, q, T, qb))) goto done;
            memcpy(q, qb, (size_t)T * D * sizeof(float));
        } else {
            add(qb, q, qpe, (size_t)T * D);
            if ((rc = dec_attention(s, p, qb, T, qb, q, T, ao))) goto done;
            add(q, q, ao, (size_t)T * D);
        }
        snprintf(p, sizeof p, "%s.norm1", pre);
        if ((rc = layernorm(s, p, q, q, T, D))) goto done;
        add(qb, q, qpe, (size_t)T * D);
        add(kb, keys, kpe, (size_t)NI * D);
        snprintf(p, sizeof p, "%s.cross_attn_token_to_image", pre);
        if ((rc = dec_attention(s, p, qb, T, kb, keys, NI, ao))) goto done;
        add(q, q, ao, (size_t)T * D);
        snprintf(p, sizeof p, "%s.norm2", pre);
        if ((rc = layernorm(s, p, q, q, T, D))) goto done;
        snprintf(p, sizeof p, "%s.mlp.lin1", pre);
        const ts_simq_layer *l1 = layer(s, p);
        snprintf(p, sizeof p, "%s.mlp.lin2", pre);
        const ts_simq_layer *l2 = layer(s, p);
        if (!l1 || !l2 || l1->n_out > 2048) {
            rc = ts_error(TINYSAM_E_FORMAT, "quantised model: '%s.mlp' missing", pre);
            goto done;
        }
        if ((rc = ts_simq_linear(l1, q, T, mlp))) goto done;
        ts_relu(mlp, (size_t)T * l1->n_out);
        if ((rc = ts_simq_linear(l2, mlp, T, ao))) goto done;
        add(q, q, ao, (size_t)T * D);
        snprintf(p, sizeof p, "%s.norm3", pre);
        if ((rc = layernorm(s, p, q, q, T, D))) goto done;
        add(qb, q, qpe, (size_t)T * D);
        add(kb, keys, kpe, (size_t)NI * D);
        snprintf(p, sizeof p, "%s.cross_attn_image_to_token", pre);
        if ((rc = dec_attention(s, p, kb, NI, qb, q, T, ao))) goto done;
        add(keys, keys, ao, (size_t)NI * D);
        snprintf(p, sizeof p, "%s.norm4", pre);
        if ((rc = layernorm(s, p, keys, keys, NI, D))) goto done;
    }
    add(qb, q, qpe, (size_t)T * D);
    add(kb, keys, kpe, (size_t)NI * D);
    if ((rc = dec_attention(s, "mask_decoder.transformer.final_attn_token_to_image", qb, T, kb, keys,
                            NI, ao)))
        goto done;
    add(q, q, ao, (size_t)T * D);
    if ((rc = layernorm(s, "mask_decoder.transformer.norm_final_attn", q, q, T, D))) goto done;
    /* upscaling: keys as [256][64][64] */
    transpose(keys, NI, D, ao);
    const ts_simq_layer *u0 = layer(s, "mask_decoder.output_upscaling.0"),
                        *u3 = layer(s, "mask_decoder.output_upscaling.3");
    if (!u0 || !u3) {
        rc = ts_error(TINYSAM_E_FORMAT, "quantised model: output upscaling missing");
        goto done;
    }
    if ((rc = ts_simq_convt2d(u0, ao, 64, 64, up1))) goto done;
    if ((rc = layernorm2d(s, "mask_decoder.output_upscaling.1", up1, 64, 128 * 128))) goto done;
    gelu(up1, (size_t)64 * 128 * 128);
    if ((rc = ts_simq_convt2d(u3, up1, 128, 128, up2))) goto done;
    gelu(up2, (size_t)32 * 256 * 256);
    float hyper[4 * 32];
    for (int t = 0; t < 4; t++) {
        char p[128];
        snprintf(p, sizeof p, "mask_decoder.output_hypernetworks_mlps.%d", t);
        if ((rc = head_mlp(s, p, q + (size_t)(1 + t) * D, hyper + t * 32))) goto done;
    }
    ts_gemm(4, 256 * 256, 32, hyper, 32, up2, 256 * 256, 0, low_res, 256 * 256, 0.0f);
    rc = head_mlp(s, "mask_decoder.iou_prediction_head", q, iou);
done:
    free(tok), free(qpe), free(dense), free(keys), free(kpe), free(qb), free(kb), free(ao), free(mlp),
        free(up1), free(up2);
    return rc;
}
