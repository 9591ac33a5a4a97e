/* tiny_vit_sam.c - the TinyViT (vit_t) image encoder with SAM's neck (spec TINYSAM.md §4).
 * ref: tinysam/modeling/tiny_vit_sam.py
 *
 * Activations are kept channels-last throughout (NHWC = PyTorch's token layout (1, H*W, C)),
 * so every 1x1 convolution and Linear is one GEMM over pixels, the 3x3 convolutions are GEMMs
 * with im2col done while packing, and the depthwise convolutions and LayerNorm2d run along
 * contiguous channels. The hook gets PyTorch's layout (NCHW where the official module is NCHW);
 * the conversion happens only when a hook is set. BatchNorm is folded into private copies of
 * the convolution weights at load (§4.2: changes rounding only), and every GEMM weight is
 * packed for the micro-kernel once, at load (ts_wpack).
 *
 * W8A8 (Q-TinySAM, §7): the GEMMs of ts_tiny_vit_qlayer (1x1 convs, qkv, proj, fc1, fc2,
 * neck.0) and the dense 3x3 convs (patch embed, neck.2) go through lin_op, which holds either
 * the float pack or, when the file stores the layer as int8 (quant/int8_model.h), an int8
 * pack and the input's static quantiser: the float activations are quantised inside
 * ts_gemm_i8_f32 (3x3: nn/conv_i8.h). A block whose file gives "attn.product_steps" runs its
 * attention products in int8 (attn_head_i8). Depthwise convs, norms, softmax stay float. A
 * calibration tap (ts_tiny_vit_forward_tap) sees each quantised layer's float input and each
 * block's qkv output.
 *
 * Threading: one ts_parallel_for per fused step, each task running single-thread kernels on
 * its own rows or window with its own scratch slot: MBConv / PatchMerging as a row pipeline
 * (the 4x hidden map never leaves the slot), window attention per window, local_conv + MLP
 * per image row. All activations live in one arena, sized on the first pass and kept. */
#include "model/image_encoder.h"
#include "core.h"
#include "nn/attn_i8.h"
#include "nn/conv_i8.h"
#include "nn/nn.h"
#include "threads.h"
#include "tinysam.h"

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- constants (§4.1, §4.7) ---------------------------------------------------------- */

#define IMG        1024
#define N_STAGES   4
#define N_VIT      10  /* TinyViT blocks in stages 1..3: 2 + 6 + 2 */
#define HEAD_DIM   32
#define ATTN_SCALE 0.17677669f /* 32^-0.5, multiplied (§4.1) */
#define LN_EPS     1e-5f
#define LN2D_EPS   1e-6f
#define BN_EPS     1e-5f

static const int DIMS[N_STAGES] = {64, 128, 160, 320};
static const int DEPTHS[N_STAGES] = {2, 2, 6, 2};
static const int HEADS[N_STAGES] = {2, 4, 5, 10};
static const int WINDOWS[N_STAGES] = {7, 7, 14, 7};

/* A GEMM the W8A8 model quantises (1x1 conv or Linear): the float pack, or the int8 pack
 * with its input quantiser (§7). q.w / q.b are the float weight and bias the GEMM uses. */
typedef struct {
    ts_tiny_vit_qlayer q;
    ts_wpack *pk; /* float, or NULL */
    ts_i8pack *q8; /* int8, or NULL */
    int id;        /* index in the encoder's list (the calibration tap's layer) */
} lin_op;

/* A convolution with its BatchNorm folded in: w scaled by alpha per output channel, b = beta.
 * Layouts: 1x1 [co][ci]; dense 3x3 [co][ky][kx][ci]; depthwise [ky*3+kx][c]. */
typedef struct {
    float *w, *b;
    ts_wpack *pk; /* w packed for the GEMM (dense 3x3; NULL for 1x1 and depthwise) */
    lin_op *op;   /* 1x1: the GEMM (float or int8); else NULL */
} conv_bn;

typedef struct {
    const float *ln_w, *ln_b; /* from the map */
    float *bias_tab;          /* [heads][N][N], N = ws^2 */
    conv_bn local;            /* depthwise 3x3 */
    const float *mlp_ln_w, *mlp_ln_b;
    lin_op *qkv, *proj, *fc1, *fc2; /* the linears, packed at load (float or int8) */
    int id;                         /* block index 0 .. N_VIT-1 */
    int attn_i8;                    /* the attention products in int8 (nn/attn_i8.h) */
    float astep[4];                 /* their steps: q, k, v, exp(s - max) (image_encoder.h) */
} vit_block;

#define MAX_PACKS 64 /* 2 + 4 + 6 + 10 x 4 + 2 = 54 packed weights */

struct ts_tiny_vit {
    conv_bn pe1, pe2;   /* patch embed: 3x3 s2 3->32, 3x3 s2 32->64 (op: the W8A8 layer) */
    conv_bn mb[2][3];   /* stage 0 MBConv: 1x1 64->256, dw 256, 1x1 256->64 */
    conv_bn merge[3][3]; /* PatchMerging after stages 0..2: 1x1, dw (stride 2,2,1), 1x1 */
    vit_block blk[N_VIT];
    const float *neck1_w, *neck1_b, *neck3_w, *neck3_b; /* from the map */
    conv_bn neck2;      /* 3x3 256->256, no bias, [co][ky][kx][ci] */
    lin_op *neck0;      /* 1x1 320->256, no bias */
    lin_op lin[TS_TINY_VIT_N_QLAYERS]; /* the quantisable GEMMs, in load order */
    int n_lin, n_int8;
    ts_wpack *packs[MAX_PACKS]; /* every packed weight, for freeing */
    int n_packs;
    float **owned;      /* every private allocation */
    int n_owned, cap_owned;
    /* The activation arena of the last forward pass, kept for the next one (saves ~150 MB of
     * page faults per image); a concurrent second forward allocates its own. */
    pthread_mutex_t arena_mu;
    float *arena;
    size_t arena_n;
    size_t arena_warm; /* bytes of it known faulted in, in the order of first use */
};

/* ---- loading ------------------------------------------------------------------------------ */

static float *own(ts_tiny_vit *e, size_t n) {
    if (e->n_owned == e->cap_owned) {
        int cap = e->cap_owned ? 2 * e->cap_owned : 64;
        float **p = realloc(e->owned, sizeof(*p) * (size_t)cap);
        if (!p) {
            ts_error(TINYSAM_E_NOMEM, "out of memory");
            return NULL;
        }
        e->owned = p;
        e->cap_owned = cap;
    }
    float *p = ts_malloc_aligned(n * sizeof(float));
    if (p) e->owned[e->n_owned++] = p;
    return p;
}

/* Packs W [N][ci * taps] (a Linear / 1x1 conv, or a dense 3x3 conv) for the GEMM once (W must outlive the encoder: it is the map's
 * tensor or a private copy, kept for runs under another ISA). */
static ts_wpack *pack(ts_tiny_vit *e, const float *W, int N, int ci, int taps) {
    if (e->n_packs == MAX_PACKS) {
        ts_error(TINYSAM_E_NOMEM, "too many packed weights");
        return NULL;
    }
    ts_wpack *p = taps == 9 ? ts_wpack_new_conv3x3(W, N, ci) : ts_wpack_new(W, N, ci, ci);
    if (p) e->packs[e->n_packs++] = p;
    return p;
}

/* Shape values are passed to ts_map_take as int. */
static const float *take1(ts_tensor_map *m, const char *name, int a) {
    return ts_map_take(m, name, 1, a);
}

static ts_tensor *find_tensor(ts_tensor_map *m, const char *name) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->t[i].name, name)) return &m->t[i];
    return NULL;
}

/* Whether the map holds quantised layer P as int8 (P.weight of dtype I8). */
static int is_int8(ts_tensor_map *m, const char *P) {
    char name[160];
    snprintf(name, sizeof name, "%s.weight", P);
    const ts_tensor *t = find_tensor(m, name);
    return t && t->dtype == TS_DTYPE_I8;
}

/* Registers the next quantisable layer (taps 9: a dense 3x3 conv, K = 9 * ci). */
static lin_op *new_lin_taps(ts_tiny_vit *e, const char *P, int N, int K, int taps, int stride,
                            int post_gelu, long long rows) {
    if (e->n_lin == TS_TINY_VIT_N_QLAYERS) {
        ts_error(TINYSAM_E_FORMAT, "too many quantisable layers");
        return NULL;
    }
    lin_op *op = &e->lin[e->n_lin];
    memset(op, 0, sizeof *op);
    op->id = e->n_lin++;
    snprintf(op->q.name, sizeof op->q.name, "%s", P);
    op->q.N = N;
    op->q.K = K;
    op->q.taps = taps;
    op->q.stride = stride;
    op->q.post_gelu = post_gelu;
    op->q.rows = rows;
    return op;
}

static lin_op *new_lin(ts_tiny_vit *e, const char *P, int N, int K, int post_gelu,
                       long long rows) {
    return new_lin_taps(e, P, N, K, 1, 1, post_gelu, rows);
}

/* Float GEMM of op: W [N][K] and b (may be NULL) must outlive the encoder. */
static int lin_float(ts_tiny_vit *e, lin_op *op, const float *W, const float *b) {
    op->q.w = W;
    op->q.b = b;
    const int taps = op->q.taps;
    return (op->pk = pack(e, W, op->q.N, op->q.K / taps, taps)) ? 0 : TINYSAM_E_NOMEM;
}

/* Int8 GEMM of op from the W8A8 tensors of prefix op->q.name (spec §7; file layout in
 * quant/int8_model.h). */
static int lin_int8(ts_tiny_vit *e, ts_tensor_map *m, lin_op *op) {
    const char *P = op->q.name;
    const int N = op->q.N, K = op->q.K;
    char name[160];
    snprintf(name, sizeof name, "%s.weight", P);
    ts_tensor *t = find_tensor(m, name);
    const int taps = op->q.taps, ci = K / taps;
    if (taps == 9) { /* the official [co][ci][3][3] */
        if (!t || t->dtype != TS_DTYPE_I8 || t->ndim != 4 || t->shape[0] != N ||
            t->shape[1] != ci || t->shape[2] != 3 || t->shape[3] != 3)
            return ts_error(TINYSAM_E_FORMAT, "tensor %s: expected I8 [%d,%d,3,3]", name, N, ci);
    } else if (!t || t->dtype != TS_DTYPE_I8 || t->ndim != 2 || t->shape[0] != N ||
               t->shape[1] != K) {
        return ts_error(TINYSAM_E_FORMAT, "tensor %s: expected I8 [%d,%d]", name, N, K);
    }
    t->used = 1;
    const float *sc, *b, *st, *zp;
    snprintf(name, sizeof name, "%s.weight_scale", P);
    if (!(sc = take1(m, name, N))) return TINYSAM_E_FORMAT;
    snprintf(name, sizeof name, "%s.bias", P);
    if (!(b = take1(m, name, N))) return TINYSAM_E_FORMAT;
    snprintf(name, sizeof name, "%s.input_step", P);
    if (!(st = take1(m, name, 1))) return TINYSAM_E_FORMAT;
    snprintf(name, sizeof name, "%s.input_zero_point", P);
    if (!(zp = take1(m, name, 1))) return TINYSAM_E_FORMAT;
    if (ts_i8_check_layer_steps(P, st[0], zp[0], sc, b, N)) return TINYSAM_E_FORMAT;
    const int8_t *codes = t->data;
    int8_t *perm = NULL;
    if (taps == 9) { /* to the GEMM's columns [ky][kx][ci] */
        if (!(perm = malloc((size_t)N * K))) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        for (int o = 0; o < N; o++)
            for (int i = 0; i < ci; i++)
                for (int k = 0; k < 9; k++)
                    perm[((size_t)o * 9 + k) * ci + i] = codes[((size_t)o * ci + i) * 9 + k];
        codes = perm;
    }
    /* the file's codes are used in place (they live as long as the map); a permuted copy
     * is copied by the pack */
    op->q8 = perm ? ts_i8pack_new(codes, N, K, K, sc) : ts_i8pack_new_borrowed(codes, N, K, sc);
    free(perm);
    if (!op->q8) return ts_error_prefix(TINYSAM_E_NOMEM, "%s", P);
    op->q.b = b;
    op->q.q = op->q8;
    op->q.in_step = st[0];
    op->q.in_zp = (int)zp[0];
    e->n_int8++;
    return 0;
}

/* Takes "prefix.c.weight" [co, ci_g, k, k] and "prefix.bn.*", folds the BN (§4.2 arithmetic
 * for alpha/beta), writes the layout above. dw: groups = co (ci_g = 1). */
static int take_conv_bn(ts_tiny_vit *e, ts_tensor_map *m, const char *prefix, int co, int ci_g,
                        int k, conv_bn *out) {
    char name[160];
    snprintf(name, sizeof name, "image_encoder.%s.c.weight", prefix);
    const float *w = ts_map_take(m, name, 4, co, ci_g, k, k);
    if (!w) return TINYSAM_E_FORMAT;
    const float *bn[4];
    static const char *const parts[4] = {"weight", "bias", "running_mean", "running_var"};
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "image_encoder.%s.bn.%s", prefix, parts[i]);
        if (!(bn[i] = take1(m, name, co))) return TINYSAM_E_FORMAT;
    }
    int taps = k * k;
    out->w = own(e, (size_t)co * ci_g * taps);
    out->b = own(e, (size_t)co);
    if (!out->w || !out->b) return TINYSAM_E_NOMEM;
    for (int o = 0; o < co; o++) {
        float alpha = bn[0][o] * (1.0f / sqrtf(bn[3][o] + BN_EPS));
        out->b[o] = fmaf(-bn[2][o], alpha, bn[1][o]);
        for (int i = 0; i < ci_g; i++)
            for (int t = 0; t < taps; t++) {
                float v = w[((size_t)o * ci_g + i) * taps + t] * alpha;
                if (ci_g == 1 && taps == 9) /* depthwise: [tap][c] */
                    out->w[(size_t)t * co + o] = v;
                else /* [co][tap][ci] (1x1: [co][ci]) */
                    out->w[((size_t)o * taps + t) * ci_g + i] = v;
            }
    }
    out->pk = NULL;
    out->op = NULL;
    if (taps == 9 && ci_g > 1 && !(out->pk = pack(e, out->w, co, ci_g, taps)))
        return TINYSAM_E_NOMEM;
    return 0;
}

/* A 1x1 Conv2d_BN (a quantisable GEMM): "prefix.c.weight" I8 (W8A8 file) or float + BN. */
static int take_conv1x1(ts_tiny_vit *e, ts_tensor_map *m, const char *prefix, int co, int ci,
                        int post_gelu, long long rows, conv_bn *out) {
    char P[128];
    snprintf(P, sizeof P, "image_encoder.%s.c", prefix);
    memset(out, 0, sizeof *out);
    if (!(out->op = new_lin(e, P, co, ci, post_gelu, rows))) return TINYSAM_E_FORMAT;
    if (is_int8(m, P)) return lin_int8(e, m, out->op);
    lin_op *op = out->op;
    int rc = take_conv_bn(e, m, prefix, co, ci, 1, out);
    out->op = op;
    return rc ? rc : lin_float(e, op, out->w, out->b);
}

/* A dense 3x3 Conv2d_BN (a quantisable layer, taps 9): "prefix.c.weight" I8 [co][ci][3][3]
 * (W8A8 file) or float + BN. */
static int take_conv3x3(ts_tiny_vit *e, ts_tensor_map *m, const char *prefix, int co, int ci,
                        int stride, int post_gelu, long long rows, conv_bn *out) {
    char P[128];
    snprintf(P, sizeof P, "image_encoder.%s.c", prefix);
    memset(out, 0, sizeof *out);
    lin_op *op = new_lin_taps(e, P, co, 9 * ci, 9, stride, post_gelu, rows);
    if (!op) return TINYSAM_E_FORMAT;
    int rc = is_int8(m, P) ? lin_int8(e, m, op) : take_conv_bn(e, m, prefix, co, ci, 3, out);
    if (rc) return rc;
    if (!op->q8) {
        op->q.w = out->w;
        op->q.b = out->b;
        op->pk = out->pk;
    }
    out->op = op;
    return 0;
}

static const float *take_blk(ts_tensor_map *m, int s, int b, const char *part, int ndim, int a,
                             int c) {
    char name[160];
    snprintf(name, sizeof name, "image_encoder.layers.%d.blocks.%d.%s", s, b, part);
    return ndim == 1 ? ts_map_take(m, name, 1, a) : ts_map_take(m, name, 2, a, c);
}

/* A Linear of block (s, b): int8 when its weight is I8, else the float weight and bias. */
static int take_linear(ts_tiny_vit *e, ts_tensor_map *m, int s, int b, const char *part, int N,
                       int K, int post_gelu, lin_op **out) {
    char P[128];
    snprintf(P, sizeof P, "image_encoder.layers.%d.blocks.%d.%s", s, b, part);
    const int R = 256 >> (s < 3 ? s : 2);
    lin_op *op = *out = new_lin(e, P, N, K, post_gelu, (long long)R * R);
    if (!op) return TINYSAM_E_FORMAT;
    if (is_int8(m, P)) return lin_int8(e, m, op);
    char wn[160], bn[160];
    snprintf(wn, sizeof wn, "%s.weight", P);
    snprintf(bn, sizeof bn, "%s.bias", P);
    const float *w = ts_map_take(m, wn, 2, N, K), *bias = w ? take1(m, bn, N) : NULL;
    if (!bias) return TINYSAM_E_FORMAT;
    return lin_float(e, op, w, bias);
}

static int load_vit_block(ts_tiny_vit *e, ts_tensor_map *m, int s, int b, vit_block *v) {
    const int C = DIMS[s], h = HEADS[s], ws = WINDOWS[s], N = ws * ws;
    int rc;
    // clang-format off
    if (!(v->ln_w     = take_blk(m, s, b, "attn.norm.weight",   1, C, 0))     ||
        !(v->ln_b     = take_blk(m, s, b, "attn.norm.bias",     1, C, 0))     ||
        !(v->mlp_ln_w = take_blk(m, s, b, "mlp.norm.weight",    1, C, 0))     ||
        !(v->mlp_ln_b = take_blk(m, s, b, "mlp.norm.bias",      1, C, 0)))
        return TINYSAM_E_FORMAT;
    if ((rc = take_linear(e, m, s, b, "attn.qkv",  3 * C, C,     0, &v->qkv))  ||
        (rc = take_linear(e, m, s, b, "attn.proj", C,     C,     0, &v->proj)) ||
        (rc = take_linear(e, m, s, b, "mlp.fc1",   4 * C, C,     0, &v->fc1))  ||
        (rc = take_linear(e, m, s, b, "mlp.fc2",   C,     4 * C, 1, &v->fc2)))
        return rc;
    // clang-format on
    const float *ab = take_blk(m, s, b, "attn.attention_biases", 2, h, N);
    if (!ab) return TINYSAM_E_FORMAT;
    /* §4.6/§4.9: the loaded biases, expanded: tab[j][p1][p2] = ab[j][|dy|*ws + |dx|] */
    v->bias_tab = own(e, (size_t)h * N * N);
    if (!v->bias_tab) return TINYSAM_E_NOMEM;
    int idx[14 * 14]; /* one row p1's offsets |dy|*ws + |dx|, the same for every head */
    for (int p1 = 0; p1 < N; p1++) {
        for (int p2 = 0; p2 < N; p2++)
            idx[p2] = abs(p1 / ws - p2 / ws) * ws + abs(p1 % ws - p2 % ws);
        for (int j = 0; j < h; j++) {
            float *d = v->bias_tab + ((size_t)j * N + p1) * N;
            const float *a = ab + (size_t)j * N;
            for (int p2 = 0; p2 < N; p2++) d[p2] = a[idx[p2]];
        }
    }
    char an[128];
    snprintf(an, sizeof an, "image_encoder.layers.%d.blocks.%d.attn.product_steps", s, b);
    if (find_tensor(m, an)) { /* W8A8 attention products (quant/int8_model.h) */
        const float *st = take1(m, an, 4);
        if (!st) return TINYSAM_E_FORMAT;
        for (int i = 0; i < 4; i++)
            if (!(isfinite(st[i]) && st[i] > 0.0f))
                return ts_error(TINYSAM_E_FORMAT, "%s[%d] %g is not a positive number", an, i,
                                (double)st[i]);
        memcpy(v->astep, st, sizeof v->astep);
        v->attn_i8 = 1;
    }
    char prefix[96];
    snprintf(prefix, sizeof prefix, "layers.%d.blocks.%d.local_conv", s, b);
    return take_conv_bn(e, m, prefix, C, 1, 3, &v->local);
}

static int load_all(ts_tiny_vit *e, ts_tensor_map *m) {
    int rc;
    char p[96];
    for (int b = 0; b < 2; b++) {
        const int C = DIMS[0], Hd = 4 * C;
        snprintf(p, sizeof p, "layers.0.blocks.%d.conv1", b);
        if ((rc = take_conv1x1(e, m, p, Hd, C, 0, 256 * 256, &e->mb[b][0]))) return rc;
        snprintf(p, sizeof p, "layers.0.blocks.%d.conv2", b);
        if ((rc = take_conv_bn(e, m, p, Hd, 1, 3, &e->mb[b][1]))) return rc;
        snprintf(p, sizeof p, "layers.0.blocks.%d.conv3", b);
        if ((rc = take_conv1x1(e, m, p, C, Hd, 1, 256 * 256, &e->mb[b][2]))) return rc;
    }
    for (int s = 0; s < 3; s++) {
        const int ci = DIMS[s], co = DIMS[s + 1], R = 256 >> s, Ro = s < 2 ? R / 2 : R;
        snprintf(p, sizeof p, "layers.%d.downsample.conv1", s);
        if ((rc = take_conv1x1(e, m, p, co, ci, 0, R * R, &e->merge[s][0]))) return rc;
        snprintf(p, sizeof p, "layers.%d.downsample.conv2", s);
        if ((rc = take_conv_bn(e, m, p, co, 1, 3, &e->merge[s][1]))) return rc;
        snprintf(p, sizeof p, "layers.%d.downsample.conv3", s);
        if ((rc = take_conv1x1(e, m, p, co, co, 1, Ro * Ro, &e->merge[s][2]))) return rc;
    }
    int bi = 0;
    for (int s = 1; s < N_STAGES; s++)
        for (int b = 0; b < DEPTHS[s]; b++)
        {
            e->blk[bi].id = bi;
            if ((rc = load_vit_block(e, m, s, b, &e->blk[bi++]))) return rc;
        }
    if (!(e->neck0 = new_lin(e, "image_encoder.neck.0", 256, 320, 0, 64 * 64)))
        return TINYSAM_E_FORMAT;
    if (is_int8(m, "image_encoder.neck.0")) {
        if ((rc = lin_int8(e, m, e->neck0))) return rc;
    } else {
        const float *w0 = ts_map_take(m, "image_encoder.neck.0.weight", 4, 256, 320, 1, 1);
        if (!w0) return TINYSAM_E_FORMAT;
        if ((rc = lin_float(e, e->neck0, w0, NULL))) return rc;
    }
    // clang-format off
    if (!(e->neck1_w = take1(m, "image_encoder.neck.1.weight", 256))                     ||
        !(e->neck1_b = take1(m, "image_encoder.neck.1.bias", 256))                       ||
        !(e->neck3_w = take1(m, "image_encoder.neck.3.weight", 256))                     ||
        !(e->neck3_b = take1(m, "image_encoder.neck.3.bias", 256)))
        return TINYSAM_E_FORMAT;
    // clang-format on
    /* the dense 3x3 convolutions last: layers TS_TINY_VIT_N_GEMM .. (image_encoder.h) */
    if ((rc = take_conv3x3(e, m, "patch_embed.seq.2", 64, 32, 2, 1, 512 * 512, &e->pe2)))
        return rc;
    memset(&e->neck2, 0, sizeof e->neck2);
    lin_op *n2 = new_lin_taps(e, "image_encoder.neck.2", 256, 9 * 256, 9, 1, 0, 64 * 64);
    if (!n2) return TINYSAM_E_FORMAT;
    e->neck2.op = n2;
    if (is_int8(m, "image_encoder.neck.2")) {
        if ((rc = lin_int8(e, m, n2))) return rc;
    } else {
        const float *w2 = ts_map_take(m, "image_encoder.neck.2.weight", 4, 256, 256, 3, 3);
        if (!w2) return TINYSAM_E_FORMAT;
        float *w = e->neck2.w = own(e, (size_t)256 * 256 * 9);
        if (!w) return TINYSAM_E_NOMEM;
        for (int o = 0; o < 256; o++)
            for (int i = 0; i < 256; i++)
                for (int t = 0; t < 9; t++)
                    w[((size_t)o * 9 + t) * 256 + i] = w2[((size_t)o * 256 + i) * 9 + t];
        if ((rc = lin_float(e, n2, w, NULL))) return rc;
        e->neck2.pk = n2->pk;
    }
    /* last: the 3->32 conv, whose int8 form measured slower (image_encoder.h) */
    if ((rc = take_conv3x3(e, m, "patch_embed.seq.0", 32, 3, 2, 0, 1024 * 1024, &e->pe1)))
        return rc;
    if (e->n_lin != TS_TINY_VIT_N_QLAYERS)
        return ts_error(TINYSAM_E_FORMAT, "%d quantisable layers, expected %d", e->n_lin,
                        TS_TINY_VIT_N_QLAYERS);
    return 0;
}

int ts_tiny_vit_qlayer_get(const ts_tiny_vit *enc, int i, ts_tiny_vit_qlayer *out) {
    if (!enc || !out || i < 0 || i >= enc->n_lin)
        return ts_error(TINYSAM_E_ARG, "ts_tiny_vit_qlayer_get: bad argument");
    *out = enc->lin[i].q;
    return 0;
}

int ts_tiny_vit_attn_get(const ts_tiny_vit *enc, int i, ts_tiny_vit_attn *out) {
    if (!enc || !out || i < 0 || i >= N_VIT)
        return ts_error(TINYSAM_E_ARG, "ts_tiny_vit_attn_get: bad argument");
    int s = 1, b = i;
    while (b >= DEPTHS[s]) b -= DEPTHS[s++];
    const vit_block *v = &enc->blk[i];
    const int R = 256 >> (s < 3 ? s : 2);
    memset(out, 0, sizeof *out);
    snprintf(out->name, sizeof out->name, "image_encoder.layers.%d.blocks.%d.attn", s, b);
    out->C = DIMS[s];
    out->heads = HEADS[s];
    out->tokens = WINDOWS[s] * WINDOWS[s];
    out->rows = (long long)R * R;
    out->int8 = v->attn_i8;
    memcpy(out->step, v->astep, sizeof out->step);
    return 0;
}

int ts_tiny_vit_n_int8(const ts_tiny_vit *enc) {
    return enc ? enc->n_int8 : 0;
}

static size_t arena_floats(int nthreads);

/* The activation arena, sized at load (the first forward pass does not allocate it; it
 * still faults its pages in). Faulting it in ahead on a helper thread, and transparent huge
 * pages, were tried: on the busy 2-core VM both cost more system time than they saved
 * (README, Start-up). */
static int arena_at_load(ts_tiny_vit *e) {
    e->arena_n = arena_floats(ts_num_threads());
    e->arena = ts_malloc_aligned(e->arena_n * sizeof(float));
    return e->arena ? 0 : TINYSAM_E_NOMEM;
}

int ts_tiny_vit_load(ts_tensor_map *m, ts_tiny_vit **out) {
    if (!m || !out) return ts_error(TINYSAM_E_ARG, "ts_tiny_vit_load: NULL argument");
    *out = NULL;
    ts_tiny_vit *e = ts_calloc(1, sizeof(*e));
    if (!e) return TINYSAM_E_NOMEM;
    pthread_mutex_init(&e->arena_mu, NULL);
    ts_threads_start(); /* the pool's threads now, not in the first forward pass */
    int rc = arena_at_load(e);
    if (!rc) rc = load_all(e, m);
    if (rc) {
        ts_tiny_vit_free(e);
        return ts_error_prefix(rc, "image encoder");
    }
    *out = e;
    return 0;
}

void ts_tiny_vit_free(ts_tiny_vit *e) {
    if (!e) return;
    for (int i = 0; i < e->n_packs; i++) ts_wpack_free(e->packs[i]);
    for (int i = 0; i < e->n_lin; i++) ts_i8pack_free(e->lin[i].q8);
    for (int i = 0; i < e->n_owned; i++) ts_free_aligned(e->owned[i]);
    free(e->owned);
    ts_free_aligned(e->arena);
    pthread_mutex_destroy(&e->arena_mu);
    free(e);
}

/* ---- forward helpers ------------------------------------------------------------------------ */

typedef struct {
    ts_stage_hook hook;
    void *user;
    float *tmp; /* layout conversion buffer, only when hook is set */
} hook_ctx;

/* dst[c][r] = src[r][c] for src rows x cols, in 64-row blocks spread over the pool. */
typedef struct {
    const float *src;
    float *dst;
    int rows, cols;
} tr_job;

static void transpose_task(void *ctx, int i, int tid) {
    (void)tid;
    const tr_job *j = ctx;
    int r0 = i * 64, r1 = TS_MIN(j->rows, r0 + 64);
    ts_transpose_serial(j->src + (size_t)r0 * j->cols, j->cols, r1 - r0, j->cols, j->dst + r0,
                        j->rows);
}

static void transpose(const float *src, int rows, int cols, float *dst) {
    tr_job j = {src, dst, rows, cols};
    ts_parallel_for((rows + 63) / 64, transpose_task, &j);
}

/* Planar 3 x n to interleaved n x 3 (the CHW input to HWC), in chunks over the pool. */
static void chw_to_hwc_task(void *ctx, int i, int tid) {
    (void)tid;
    const tr_job *j = ctx;
    size_t p0 = (size_t)i * 16384, p1 = TS_MIN((size_t)j->cols, p0 + 16384);
    for (size_t p = p0; p < p1; p++)
        for (int c = 0; c < 3; c++) j->dst[p * 3 + c] = j->src[(size_t)c * j->cols + p];
}

/* Reports tokens x[HW][C]; as NCHW when nchw. */
static void report(hook_ctx *h, const char *name, const float *x, int HW, int C, int nchw) {
    if (!h->hook) return;
    if (!nchw) {
        h->hook(h->user, name, x, (long long)HW * C);
        return;
    }
    transpose(x, HW, C, h->tmp);
    h->hook(h->user, name, h->tmp, (long long)HW * C);
}

/* The calibration tap of a pass (NULL pointer when none: nothing else to pay). */
typedef struct {
    ts_gemm_tap fn;
    void *user;
} tap_t;

/* C[M x N] (ldc) = op(X[M x K] (ldx)): act(X * W^T + b), or with acc C + that (act after the
 * add, as ts_gemm_w with beta 1). Int8: X is quantised on the fly with the layer's input
 * quantiser; ts_gemm_i8 adds act(y) to C, so a GELU after the add runs on the sum here. */
static void lin_gemm(const lin_op *op, int M, const float *X, int ldx, float *C, int ldc,
                     int acc, int act, int serial, const tap_t *tap, long long row0) {
    if (tap) tap->fn(tap->user, op->id, row0, X, M, ldx);
    if (!op->q8) {
        (serial ? ts_gemm_w_serial : ts_gemm_w)(M, X, ldx, op->pk, C, ldc, acc ? 1.0f : 0.0f,
                                                op->q.b, act);
        return;
    }
    const int post = acc && act != TS_ACT_NONE;
    ts_i8_out o = {.bias = op->q.b, .act = post ? TS_ACT_NONE : act, .accumulate = acc, .C = C,
                   .ldc = ldc};
    (serial ? ts_gemm_i8_f32_serial : ts_gemm_i8_f32)(M, X, ldx, op->q.in_step, op->q.in_zp,
                                                      op->q8, &o);
    if (post)
        for (int r = 0; r < M; r++) ts_gelu(C + (size_t)r * ldc, (size_t)op->q.N);
}

/* A dense 3x3 convolution (pe1, pe2, neck.2) of x[H][H][Ci] into y: the float packed conv,
 * or the int8 one (nn/conv_i8.h) with the layer's input quantiser. */
static int conv3_run(const conv_bn *cv, const float *x, int H, int Ci, int act, float *y,
                     const tap_t *tap) {
    const lin_op *op = cv->op;
    if (tap) tap->fn(tap->user, op->id, 0, x, H * H, Ci);
    if (!op->q8) {
        ts_conv3x3_nhwc_w(x, H, H, Ci, op->q.stride, op->pk, op->q.b, act, y);
        return 0;
    }
    return ts_conv3x3_i8_nhwc(x, H, H, Ci, op->q.stride, op->q.in_step, op->q.in_zp, op->q8,
                              op->q.b, act, y);
}

/* Per-thread scratch: every task below works in its own slot (tid) of the arena. */
typedef struct {
    float *base;
    size_t per; /* floats per slot */
    int n;      /* slots */
} scratch_t;

static float *slot(const scratch_t *s, int tid) {
    TS_ASSERT(tid < s->n);
    return s->base + (size_t)tid * s->per;
}

/* Window attention (§4.6) for one TinyViT block, in place: t = t + Attention(windows of t).
 * One task per group of WIN_GROUP windows (consecutive in `order`): their tokens share one
 * LayerNorm, one qkv and one proj GEMM (4 x 49 rows fill the micro-kernel's 12-row panels,
 * one 49-row window leaves a 6- and a 7-row tail), while scores stay per window; everything
 * of a group stays in its slot, in cache. Windows on the bottom/right edge hold zero padding
 * tokens: their outputs are discarded, so only the nv real tokens are queries (rows of LN,
 * qkv, scores, proj); as keys and values the padding tokens all share one qkv row (that of a
 * zero token, pad_qkv, computed per block). */
#define WIN_GROUP_ROWS 196 /* a group holds windows up to this many tokens in all */

typedef struct {
    const vit_block *v;
    float *t;
    int R, C, heads, ws, nw, tasks;
    const float *pad_qkv; /* [3C] */
    const short *order;   /* task -> window: full windows first (see window_order) */
    scratch_t scr;
    float *dump; /* [windows][N][C] attention outputs for the hook (then every token), or NULL */
    const tap_t *tap;
} attn_job;

typedef struct {
    int w, y0, x0, vh, vw, nv, off; /* window, origin, real extent, first row in the group */
} win_t;

/* The calibration tap on a group's rows X (M x C): it numbers a window's rows w*N + i,
 * whatever the grouping. */
static void tap_windows(const tap_t *tap, int layer, const win_t *win, int gn, int N,
                        const float *X, int C) {
    if (!tap) return;
    for (int g = 0; g < gn; g++)
        tap->fn(tap->user, layer, (long long)win[g].w * N, X + (size_t)win[g].off * C, win[g].nv,
                C);
}

/* The int8 products' scratch in a slot: codes of q (nv x 32), packed k and v^T, their sums,
 * the probability codes (nv x Kp) and the int32 products. */
typedef struct {
    uint8_t *qa, *pa;
    int8_t *kp, *vp;
    int32_t *ksum, *vsum, *c32;
} i8_scratch;

static size_t i8_scratch_floats(int N) {
    size_t Kp = (size_t)ts_i8pk_kp(N), Np = (size_t)ts_i8pk_np(N);
    size_t bytes = (size_t)N * HEAD_DIM + (size_t)N * Kp + ts_i8pk_bytes(N, HEAD_DIM) +
                   ts_i8pk_bytes(HEAD_DIM, N) + 4 * (Np + 32) + 4 * (size_t)N * Np + 6 * 64;
    return (bytes + 3) / 4;
}

static i8_scratch i8_scratch_at(float *base, int N) {
    uint8_t *p = (uint8_t *)base;
    i8_scratch s;
#define TAKE(ptr, type, bytes)                                                                  \
    do {                                                                                       \
        ptr = (type)(void *)p;                                                                 \
        p += ((size_t)(bytes) + 63) / 64 * 64;                                                 \
    } while (0)
    TAKE(s.c32, int32_t *, 4 * (size_t)N * ts_i8pk_np(N));
    TAKE(s.ksum, int32_t *, 4 * (size_t)ts_i8pk_np(N));
    TAKE(s.vsum, int32_t *, 4 * 32);
    TAKE(s.qa, uint8_t *, (size_t)N * HEAD_DIM);
    TAKE(s.pa, uint8_t *, (size_t)N * ts_i8pk_kp(N));
    TAKE(s.kp, int8_t *, ts_i8pk_bytes(N, HEAD_DIM));
    TAKE(s.vp, int8_t *, ts_i8pk_bytes(HEAD_DIM, N));
#undef TAKE
    return s;
}

/* One head of one window with int8 products (Q-TinySAM, §7): q (u8, zp 128), k and v (int8)
 * on the block's static steps; scores S = (q.k^T) * (q_step k_step) * ATTN_SCALE + bias,
 * softmax in float; then each probability row is quantised on the step pmax / 255 (pmax its
 * largest value, 1 / sum of the exponentials: the codes are those of exp(s - max) in [0, 1]
 * on the static step 1/255, the normalisation comes after the product), one integer GEMM
 * with v^T, out = acc * (pmax / 255) * v_step. */
static void attn_head_i8(const vit_block *v, const float *q, const float *k, const float *vv,
                         int C3, int nv, int N, int vw, int ws, const float *tab, float *out,
                         int ldo, float *S, const i8_scratch *sc, const ts_i8pk_kernels *kn) {
    const float qs = v->astep[0], ks = v->astep[1], vs = v->astep[2];
    const int Kp = ts_i8pk_kp(N);
    for (int i = 0; i < nv; i++)
        ts_i8pk_quant_a(kn, q + (size_t)i * C3, HEAD_DIM, HEAD_DIM, qs, 128, sc->qa + (size_t)i * HEAD_DIM);
    ts_i8pk_quant_rows(kn, k, C3, N, HEAD_DIM, ks, sc->kp, sc->ksum);
    ts_i8pk_quant_cols(kn, vv, C3, N, HEAD_DIM, vs, sc->vp, sc->vsum);
    ts_i8pk_gemm(kn, nv, N, HEAD_DIM, sc->qa, HEAD_DIM, 128, sc->kp, sc->ksum, sc->c32, N);
    kn->to_float(sc->c32, nv * N, qs * ks, S);
    for (int i = 0; i < nv; i++) {
        int iy = i / vw, ix = i % vw;
        ts_scale_add(S + (size_t)i * N, ATTN_SCALE, tab + (size_t)(iy * ws + ix) * N, N);
    }
    ts_softmax_rows_serial(S, nv, N);
    float rstep[196];
    for (int i = 0; i < nv; i++) {
        const float *p = S + (size_t)i * N;
        const float mx = kn->row_max(p, N);
        rstep[i] = mx > 0.0f ? mx / 255.0f : 1.0f;
        ts_i8pk_quant_a(kn, p, N, Kp, rstep[i], 0, sc->pa + (size_t)i * Kp);
    }
    ts_i8pk_gemm(kn, nv, HEAD_DIM, N, sc->pa, Kp, 0, sc->vp, sc->vsum, sc->c32, HEAD_DIM);
    for (int i = 0; i < nv; i++)
        kn->to_float(sc->c32 + (size_t)i * HEAD_DIM, HEAD_DIM, rstep[i] * vs, out + (size_t)i * ldo);
}

static void attn_group(void *ctx, int task, int tid) {
    const attn_job *j = ctx;
    const vit_block *v = j->v;
    const int C = j->C, ws = j->ws, N = ws * ws, R = j->R, C3 = 3 * C;
    const int nwin = j->nw * j->nw;
    const int g0 = (int)((long long)nwin * task / j->tasks);
    const int gn = (int)((long long)nwin * (task + 1) / j->tasks) - g0;
    win_t win[WIN_GROUP_ROWS / 49];
    TS_ASSERT(gn <= (int)(sizeof win / sizeof win[0]));
    int M = 0;
    for (int g = 0; g < gn; g++) {
        win_t *wd = &win[g];
        wd->w = j->order[g0 + g];
        wd->y0 = (wd->w / j->nw) * ws;
        wd->x0 = (wd->w % j->nw) * ws;
        /* queries: the vh x vw real tokens (all N when the hook wants every output) */
        wd->vh = j->dump ? ws : TS_MIN(ws, R - wd->y0);
        wd->vw = j->dump ? ws : TS_MIN(ws, R - wd->x0);
        wd->nv = wd->vh * wd->vw;
        wd->off = M;
        M += wd->nv;
    }
    const int Mmax = TS_MAX(N, WIN_GROUP_ROWS);
    float *xw = slot(&j->scr, tid);         /* M x C */
    float *qc = xw + (size_t)Mmax * C;      /* M x 3C, the queries' rows */
    float *kv = qc + (size_t)Mmax * C3;     /* N x 3C, a padded window's keys and values */
    float *S = kv + (size_t)N * C3;         /* nv x N */
    float *o = S + (size_t)N * N;           /* M x C */
    float *a = o + (size_t)Mmax * C;        /* M x C */
    float *kT = a + (size_t)Mmax * C;       /* HEAD_DIM x N, one head's keys transposed */
    i8_scratch i8 = i8_scratch_at(kT + (size_t)HEAD_DIM * N, N); /* the int8 products' */
    const ts_i8pk_kernels kn = ts_i8pk_get();
    for (int g = 0; g < gn; g++) {
        const win_t *wd = &win[g];
        for (int iy = 0, i = 0; iy < wd->vh; iy++)
            for (int ix = 0; ix < wd->vw; ix++, i++) {
                int gy = wd->y0 + iy, gx = wd->x0 + ix;
                float *dst = xw + (size_t)(wd->off + i) * C;
                if (gy < R && gx < R)
                    memcpy(dst, j->t + ((size_t)gy * R + gx) * C, sizeof(float) * C);
                else
                    memset(dst, 0, sizeof(float) * C);
            }
    }
    // ref: tinysam/modeling/tiny_vit_sam.py, Attention.forward
    ts_layernorm_to_serial(xw, xw, M, C, v->ln_w, v->ln_b, LN_EPS);
    tap_windows(j->tap, v->qkv->id, win, gn, N, xw, C);
    lin_gemm(v->qkv, M, xw, C, qc, C3, 0, TS_ACT_NONE, 1, NULL, 0);
    tap_windows(j->tap, TS_TINY_VIT_N_QLAYERS + v->id, win, gn, N, qc, C3);
    for (int g = 0; g < gn; g++) {
        const win_t *wd = &win[g];
        const int nv = wd->nv;
        const float *q0 = qc + (size_t)wd->off * C3, *kv0 = q0;
        if (nv != N) { /* keys and values in window order, padding tokens from pad_qkv */
            for (int p = 0; p < N; p++) {
                int iy = p / ws, ix = p % ws;
                const float *src = iy < wd->vh && ix < wd->vw
                                       ? q0 + (size_t)(iy * wd->vw + ix) * C3
                                       : j->pad_qkv;
                memcpy(kv + (size_t)p * C3, src, sizeof(float) * C3);
            }
            kv0 = kv;
        }
        for (int h = 0; h < j->heads; h++) {
            const float *q = q0 + h * 3 * HEAD_DIM; /* head-major: [q k v] per head */
            const float *k = kv0 + h * 3 * HEAD_DIM + HEAD_DIM, *vv = k + HEAD_DIM;
            const float *tab = v->bias_tab + (size_t)h * N * N;
            if (v->attn_i8) {
                attn_head_i8(v, q, k, vv, C3, nv, N, wd->vw, ws, tab,
                             o + (size_t)wd->off * C + h * HEAD_DIM, C, S, &i8, &kn);
                continue;
            }
            /* keys transposed by 8x8 register blocks: the GEMM then packs them with row
             * copies instead of a scalar gather (same products, same order) */
            ts_transpose_serial(k, C3, N, HEAD_DIM, kT, N);
            ts_gemm_serial(nv, N, HEAD_DIM, q, C3, kT, N, 0, S, N, 0.0f, NULL, TS_ACT_NONE);
            for (int iy = 0, i = 0; iy < wd->vh; iy++)
                for (int ix = 0; ix < wd->vw; ix++, i++)
                    ts_scale_add(S + (size_t)i * N, ATTN_SCALE, tab + (size_t)(iy * ws + ix) * N,
                                 N);
            ts_softmax_rows_serial(S, nv, N);
            ts_gemm_serial(nv, HEAD_DIM, N, S, N, vv, C3, 0, o + (size_t)wd->off * C + h * HEAD_DIM,
                           C, 0.0f, NULL, TS_ACT_NONE);
        }
    }
    tap_windows(j->tap, v->proj->id, win, gn, N, o, C);
    lin_gemm(v->proj, M, o, C, a, C, 0, TS_ACT_NONE, 1, NULL, 0);
    for (int g = 0; g < gn; g++) {
        const win_t *wd = &win[g];
        const float *aw = a + (size_t)wd->off * C;
        if (j->dump) memcpy(j->dump + (size_t)wd->w * N * C, aw, sizeof(float) * N * C);
        for (int iy = 0, i = 0; iy < wd->vh; iy++)
            for (int ix = 0; ix < wd->vw; ix++, i++) {
                int gy = wd->y0 + iy, gx = wd->x0 + ix;
                if (gy >= R || gx >= R) continue;
                float *dst = j->t + ((size_t)gy * R + gx) * C;
                const float *src = aw + (size_t)i * C;
                for (int c = 0; c < C; c++) dst[c] += src[c];
            }
    }
}

/* Windows by decreasing number of real tokens (then index): the pool hands out tasks in
 * order, so the small edge windows come last and even out the threads' finishing times. */
static void window_order(int R, int ws, int nw, short *order) {
    int n = 0;
    for (int pass = 0; pass < 3; pass++) /* full, edge, corner */
        for (int w = 0; w < nw * nw; w++) {
            int edge = ((w / nw) * ws + ws > R) + ((w % nw) * ws + ws > R);
            if (edge == pass) order[n++] = (short)w;
        }
}

/* Scratch floats one thread needs in attn_window. */
static size_t attn_scratch_per(int C, int ws) {
    size_t N = (size_t)ws * ws, Mmax = TS_MAX(N, WIN_GROUP_ROWS);
    return Mmax * C * 3 + Mmax * 3 * C + N * 3 * C + N * N + HEAD_DIM * N + 16 +
           i8_scratch_floats((int)N);
}

/* pad_qkv[3C] = qkv(LN(zero token)): the keys/values of every padding token of a block. */
static void pad_token_qkv(const vit_block *v, int C, float *zero_row, float *pad_qkv) {
    memset(zero_row, 0, sizeof(float) * C);
    ts_layernorm_to_serial(zero_row, zero_row, 1, C, v->ln_w, v->ln_b, LN_EPS);
    lin_gemm(v->qkv, 1, zero_row, C, pad_qkv, 3 * C, 0, TS_ACT_NONE, 1, NULL, 0);
}

/* local_conv then the MLP of a TinyViT block, up to MLP_ROWS image rows per task (§4.6):
 * y = dw(x); y = y + fc2(GELU(fc1(LN(y)))). The rows' LN and 4C hidden values stay in the
 * slot; x is only read, so tasks are independent. Three rows (192 or 384 tokens) rather than
 * one (64 tokens: two 8-row tail panels of the micro-kernel) made the stage-3/4 MLP GEMMs
 * about a quarter faster. */
#define MLP_ROWS 3

/* Tasks for n items at about `per` items each: a multiple of the thread count, so that the
 * threads get equal shares (task t covers items [n t / tasks, n (t+1) / tasks)). */
static int even_tasks(int n, int per, int nt) {
    int tasks = (n + per - 1) / per;
    if (per > 1) tasks = TS_MIN(n, (tasks + nt - 1) / nt * nt);
    return tasks;
}

typedef struct {
    const vit_block *v;
    const float *x;
    float *y;
    int R, C, tasks;
    scratch_t scr;
    const tap_t *tap;
} mlp_job;

static void local_mlp_rows(void *ctx, int task, int tid) {
    const mlp_job *j = ctx;
    const vit_block *v = j->v;
    const int R = j->R, C = j->C;
    const int oy0 = (int)((long long)R * task / j->tasks);
    const int oy1 = (int)((long long)R * (task + 1) / j->tasks), M = (oy1 - oy0) * R;
    float *yr = j->y + (size_t)oy0 * R * C;
    float *ln = slot(&j->scr, tid), *hid = ln + (size_t)MLP_ROWS * R * C;
    for (int oy = oy0; oy < oy1; oy++)
        ts_dwconv3x3_nhwc_row(j->x, R, R, C, 1, v->local.w, v->local.b, TS_ACT_NONE,
                              j->y + (size_t)oy * R * C, oy);
    // ref: Mlp.forward
    ts_layernorm_to_serial(yr, ln, M, C, v->mlp_ln_w, v->mlp_ln_b, LN_EPS);
    lin_gemm(v->fc1, M, ln, C, hid, 4 * C, 0, TS_ACT_GELU, 1, j->tap, (long long)oy0 * R);
    lin_gemm(v->fc2, M, hid, 4 * C, yr, C, 1, TS_ACT_NONE, 1, j->tap, (long long)oy0 * R);
}

static size_t mlp_scratch_per(int R, int C) {
    return (size_t)MLP_ROWS * R * C * 5;
}

/* MBConv (§4.4) and PatchMerging (§4.5) as one row pipeline: h = GELU(pw1(in)),
 * d = GELU(dw(h)), out = pw2(d) (+ in, then GELU, for MBConv). A task runs a band of output
 * rows and keeps only the three h rows the depthwise row needs (a ring in its slot), so the
 * 4x-wide hidden map never goes to memory; a band recomputes the h row(s) above its first
 * row (bit-identical), and the bands are even, so threads get equal work. out != in. */
typedef struct {
    const float *in;
    int H, W, Ci;
    const conv_bn *pw1, *dw, *pw2;
    int Ch, Co, stride, residual;
    float *out;
    int n_bands;
    scratch_t scr;
    const tap_t *tap;
} pipe_job;

static void pipe_band(void *ctx, int band, int tid) {
    const pipe_job *j = ctx;
    const int W = j->W, Ch = j->Ch, st = j->stride;
    const int Ho = (j->H - 1) / st + 1, Wo = (W - 1) / st + 1;
    const int oy0 = (int)((long long)Ho * band / j->n_bands);
    const int oy1 = (int)((long long)Ho * (band + 1) / j->n_bands);
    const size_t hrow = (size_t)W * Ch;
    float *ring = slot(&j->scr, tid), *d = ring + 3 * hrow;
    int done = oy0 * st - 2; /* last h row computed */
    for (int oy = oy0; oy < oy1; oy++) {
        int lo = TS_MAX(0, oy * st - 1), hi = TS_MIN(j->H - 1, oy * st + 1);
        for (int r = TS_MAX(lo, done + 1); r <= hi; r++)
            lin_gemm(j->pw1->op, W, j->in + (size_t)r * W * j->Ci, j->Ci,
                     ring + (size_t)(r % 3) * hrow, Ch, 0, TS_ACT_GELU, 1, j->tap,
                     (long long)r * W);
        done = TS_MAX(done, hi);
        const float *rows[3];
        for (int ky = 0; ky < 3; ky++) {
            int iy = oy * st - 1 + ky;
            rows[ky] = iy >= 0 && iy < j->H ? ring + (size_t)(iy % 3) * hrow : NULL;
        }
        ts_dwconv3x3_nhwc_rows3(rows, W, Ch, st, j->dw->w, j->dw->b, TS_ACT_GELU, d);
        float *orow = j->out + (size_t)oy * Wo * j->Co;
        if (j->residual) /* x + conv3(...), GELU after the add; stride 1, Ci = Co */
            memcpy(orow, j->in + (size_t)oy * W * j->Ci, sizeof(float) * Wo * j->Co);
        lin_gemm(j->pw2->op, Wo, d, Ch, orow, j->Co, j->residual,
                 j->residual ? TS_ACT_GELU : TS_ACT_NONE, 1, j->tap, (long long)oy * Wo);
    }
}

static size_t pipe_scratch_per(int W, int Ch) {
    return (size_t)4 * W * Ch;
}

/* Runs the pipeline over the pool: bands of about 64 output rows, a multiple of the thread
 * count (one band on one thread: nothing recomputed). */
static void run_pipe(const float *in, int H, int Ci, const conv_bn *cv, int Ch, int Co,
                     int stride, int residual, float *out, scratch_t scr, const tap_t *tap) {
    int Ho = (H - 1) / stride + 1, nt = scr.n;
    int per = nt > 1 ? TS_MAX(1, Ho / (64 * nt)) : 1;
    pipe_job pj = {in, H, H, Ci, &cv[0], &cv[1], &cv[2], Ch, Co, stride, residual, out,
                   TS_MIN(Ho, per * nt), scr, tap};
    ts_parallel_for(pj.n_bands, pipe_band, &pj);
}

/* ---- forward ----------------------------------------------------------------------------- */

/* Build with -DTS_ENC_PROFILE for a per-part wall-time breakdown on stderr. */
#ifdef TS_ENC_PROFILE
#include <time.h>
static double prof_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
#define N_PROF 10
static double g_prof[N_PROF], g_prof_t0;
static const char *const PROF_NAMES[N_PROF] = {"input",     "pe1",          "pe2",
                                               "mbconv",    "-",            "attn",
                                               "local+mlp", "merge",        "-",
                                               "neck"};
#define PROF_START() (g_prof_t0 = prof_now())
#define PROF(i)                                                                                \
    do {                                                                                       \
        double t_ = prof_now();                                                                \
        g_prof[i] += t_ - g_prof_t0;                                                           \
        g_prof_t0 = t_;                                                                        \
    } while (0)
#define PROF_DUMP()                                                                            \
    do {                                                                                       \
        for (int i_ = 0; i_ < N_PROF; i_++)                                                    \
            fprintf(stderr, "%-15s %7.1f ms\n", PROF_NAMES[i_], 1e3 * g_prof[i_]);             \
        memset(g_prof, 0, sizeof g_prof);                                                      \
    } while (0)
#else
#define PROF_START() ((void)0)
#define PROF(i)      ((void)0)
#define PROF_DUMP()  ((void)0)
#endif

/* Arena layout (floats): A and Cb hold the running tokens (at most 256x256x64 and the
 * 512x512x32 patch-embed map), B the HWC input (later the neck's first map); then the
 * per-thread slots. The 4x-wide hidden maps of MBConv / PatchMerging live in the slots. */
#define SZ_A ((size_t)256 * 256 * 64)
#define SZ_B ((size_t)1024 * 1024 * 3)
#define SZ_C ((size_t)512 * 512 * 32)

static size_t slot_floats(void) {
    size_t per = 0;
    for (int s = 1; s < N_STAGES; s++) {
        int R = 256 >> (s < 3 ? s : 2); /* 128, 64, 64 */
        per = TS_MAX(per, attn_scratch_per(DIMS[s], WINDOWS[s]));
        per = TS_MAX(per, mlp_scratch_per(R, DIMS[s]));
    }
    per = TS_MAX(per, pipe_scratch_per(256, 4 * DIMS[0]));
    for (int s = 0; s < 3; s++) per = TS_MAX(per, pipe_scratch_per(256 >> s, DIMS[s + 1]));
    return (per + 15) / 16 * 16;
}

static size_t arena_floats(int nthreads) {
    return SZ_A + SZ_B + SZ_C + slot_floats() * (size_t)nthreads;
}

int ts_tiny_vit_forward(const ts_tiny_vit *enc, const float *input, float *out,
                        ts_stage_hook hook, void *user) {
    return ts_tiny_vit_forward_tap(enc, input, out, hook, user, NULL, NULL);
}

int ts_tiny_vit_forward_tap(const ts_tiny_vit *enc, const float *input, float *out,
                            ts_stage_hook hook, void *user, ts_gemm_tap tap_fn, void *tap_user) {
    if (!enc || !input || !out)
        return ts_error(TINYSAM_E_ARG, "ts_tiny_vit_forward: NULL argument");
    const tap_t tap_s = {tap_fn, tap_user}, *tap = tap_fn ? &tap_s : NULL;
    const int nthreads = ts_num_threads();
    const size_t per = slot_floats();
    size_t total = arena_floats(nthreads);
    ts_tiny_vit *mut = (ts_tiny_vit *)enc; /* only the arena cache changes */
    float *arena = NULL;
    size_t arena_n = total; /* floats in the arena this pass holds */
    pthread_mutex_lock(&mut->arena_mu);
    if (mut->arena && mut->arena_n >= total) {
        arena = mut->arena;
        arena_n = mut->arena_n;
        mut->arena = NULL;
    }
    pthread_mutex_unlock(&mut->arena_mu);
    if (!arena) arena = ts_malloc_aligned(total * sizeof(float));
    if (!arena) return ts_error_prefix(TINYSAM_E_NOMEM, "image encoder activations");
    float *bA = arena, *bB = bA + SZ_A, *bC = bB + SZ_B;
    const scratch_t scr = {bC + SZ_C, per, nthreads};
    hook_ctx hk = {hook, user, NULL};
    float *dump = NULL;
    if (hook) {
        /* one-off hook buffers, outside the layer loops */
        hk.tmp = ts_malloc_aligned(SZ_A * sizeof(float)); /* the largest NCHW report */
        dump = ts_malloc_aligned((size_t)19 * 19 * 49 * 128 * sizeof(float));
        if (!hk.tmp || !dump) {
            ts_free_aligned(hk.tmp);
            ts_free_aligned(dump);
            ts_free_aligned(arena);
            return ts_error_prefix(TINYSAM_E_NOMEM, "image encoder hook buffers");
        }
    }

    int rc = 0;
    float *x = bA; /* running activations, NHWC */
    int R = 256;   /* current side */
    // ref: PatchEmbed.forward: Conv2d_BN s2 -> GELU -> Conv2d_BN s2
    {
        PROF_START();
        float *hwc = bB; /* 1024 x 1024 x 3 */
        tr_job tj = {input, hwc, 3, IMG * IMG};
        ts_parallel_for(IMG * IMG / 16384, chw_to_hwc_task, &tj);
        PROF(0);
        if ((rc = conv3_run(&enc->pe1, hwc, IMG, 3, TS_ACT_GELU, bC, tap))) goto out;
        PROF(1);
        if ((rc = conv3_run(&enc->pe2, bC, 512, 32, TS_ACT_NONE, x, tap))) goto out;
        PROF(2);
        report(&hk, "patch_embed", x, R * R, 64, 1);
    } // x: 256 x 256 x 64

    // ref: ConvLayer with MBConv blocks (§4.4): x = GELU(x + conv3(GELU(dw(GELU(conv1(x))))))
    for (int b = 0; b < DEPTHS[0]; b++) {
        const int C = DIMS[0];
        PROF_START();
        float *xo = x == bA ? bC : bA;
        run_pipe(x, R, C, enc->mb[b], 4 * C, C, 1, 1, xo, scr, tap);
        x = xo;
        PROF(3);
        if (b == 0) report(&hk, "layers0_block0", x, R * R, C, 1);
    } // x: 256 x 256 x 64

    int bi = 0;
    for (int s = 0; s < N_STAGES; s++) {
        const int C = DIMS[s];
        if (s > 0) {
            const int heads = HEADS[s], ws = WINDOWS[s], L = R * R;
            const int nw = (R + ws - 1) / ws; /* windows per side after padding */
            for (int b = 0; b < DEPTHS[s]; b++, bi++) {
                const vit_block *v = &enc->blk[bi];
                // ref: TinyViTBlock.forward
                PROF_START();
                float pad_qkv[3 * 320], zero_row[320];
                pad_token_qkv(v, C, zero_row, pad_qkv);
                short order[19 * 19];
                TS_ASSERT(nw <= 19);
                window_order(R, ws, nw, order);
                const int group = TS_MAX(1, WIN_GROUP_ROWS / (ws * ws));
                attn_job aj = {v, x, R, C, heads, ws, nw,
                               even_tasks(nw * nw, group, nthreads), pad_qkv, order, scr,
                               (hook && s == 1 && b == 0) ? dump : NULL, tap};
                ts_parallel_for(aj.tasks, attn_group, &aj); /* x = x + attn(x) */
                PROF(5);
                if (aj.dump) {
                    hk.hook(hk.user, "layers1_block0_attn", dump, (long long)nw * nw * ws * ws * C);
                }
                /* local_conv (no residual around it) and the MLP, into the other buffer */
                float *t2 = x == bA ? bC : bA;
                mlp_job mj = {v, x, t2, R, C, even_tasks(R, MLP_ROWS, nthreads), scr, tap};
                ts_parallel_for(mj.tasks, local_mlp_rows, &mj);
                x = t2;
                PROF(6);
                if (b == 0 && s < 3) {
                    char name[32];
                    snprintf(name, sizeof name, "layers%d_block0", s);
                    report(&hk, name, x, L, C, 0);
                }
            }
        }
        if (s < 3) {
            // ref: PatchMerging.forward (§4.5): stride 1 into the 320-channel stage
            const int co = DIMS[s + 1], stride = co == 320 ? 1 : 2;
            const int Ro = (R - 1) / stride + 1;
            PROF_START();
            float *xo = x == bA ? bC : bA;
            run_pipe(x, R, C, enc->merge[s], co, co, stride, 0, xo, scr, tap);
            x = xo;
            PROF(7);
            R = Ro;
        }
        char name[32];
        snprintf(name, sizeof name, "layers%d", s);
        report(&hk, name, x, R * R, DIMS[s < 3 ? s + 1 : 3], 0);
    } // x: 64 x 64 x 320 tokens

    // ref: ImageEncoderViT neck: 1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d (§4.8)
    {
        PROF_START();
        const int L = 64 * 64;
        float *n1 = bB, *n2 = x == bA ? bC : bA;
        lin_gemm(enc->neck0, L, x, 320, n1, 256, 0, TS_ACT_NONE, 0, tap, 0);
        ts_layernorm(n1, L, 256, enc->neck1_w, enc->neck1_b, LN2D_EPS);
        if ((rc = conv3_run(&enc->neck2, n1, 64, 256, TS_ACT_NONE, n2, tap))) goto out;
        ts_layernorm(n2, L, 256, enc->neck3_w, enc->neck3_b, LN2D_EPS);
        transpose(n2, L, 256, out); /* to NCHW */
        PROF(9);
        PROF_DUMP();
        if (hook) hook(user, "neck", out, (long long)256 * L);
    } // out: 256 x 64 x 64

out:
    ts_free_aligned(hk.tmp);
    ts_free_aligned(dump);
    float *used = arena;
    pthread_mutex_lock(&mut->arena_mu);
    if (!mut->arena || mut->arena_n < arena_n) { /* keep the larger one */
        float *old = mut->arena;
        mut->arena = arena;
        mut->arena_n = arena_n;
        arena = old;
    }
    if (mut->arena == used) mut->arena_warm = SIZE_MAX; /* a whole pass wrote it */
    pthread_mutex_unlock(&mut->arena_mu);
    ts_free_aligned(arena);
    return rc;
}

#define WARM_CHUNK ((size_t)1 << 20) /* bytes populated between looks at *stop */

int ts_tiny_vit_warm(const ts_tiny_vit *enc, const atomic_int *stop) {
    ts_tiny_vit *mut = (ts_tiny_vit *)enc; /* only the arena cache changes */
    pthread_mutex_lock(&mut->arena_mu);
    float *arena = mut->arena; /* taken, as a pass takes it: a concurrent pass makes its own */
    mut->arena = NULL;
    size_t n = mut->arena_n * sizeof(float), at = TS_MIN(mut->arena_warm, n);
    pthread_mutex_unlock(&mut->arena_mu);
    if (!arena) return 0;
    /* in the order the first pass writes it: B (the HWC input), C (patch embedding), A */
    const size_t a = SZ_A * sizeof(float), b = SZ_B * sizeof(float), c = SZ_C * sizeof(float);
    while (at < n && !atomic_load(stop)) {
        size_t len = TS_MIN(WARM_CHUNK, n - at); /* a, b, c: whole chunks */
        size_t off = at < b + c ? a + at : at < a + b + c ? at - b - c : at;
        ts_mem_populate((char *)arena + off, len);
        at += len;
    }
    pthread_mutex_lock(&mut->arena_mu);
    if (!mut->arena) {
        mut->arena = arena;
        mut->arena_warm = at;
        arena = NULL;
    }
    pthread_mutex_unlock(&mut->arena_mu);
    ts_free_aligned(arena); /* a pass meanwhile kept its own */
    return at >= n;
}
