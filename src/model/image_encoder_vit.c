/* image_encoder_vit.c - SAM's ViT image encoder with its neck.
 * ref: segment_anything/modeling/image_encoder.py (ImageEncoderViT, Block, Attention,
 * window_partition, get_rel_pos, add_decomposed_rel_pos), modeling/common.py (LayerNorm2d)
 *
 * Activations are tokens (row-major [64*64][C], PyTorch's B H W C layout), so every Linear and
 * 1x1 convolution is one GEMM over tokens. Weights are used in place from the tensor map
 * (Linear weights as GEMM operands with b_trans = 1); nothing big is copied.
 *
 * One attention layer, windowed or global, runs as:
 *   QKV = LN1(x) Wqkv^T + b             [4096][3C], column = s*C + head*hd + d
 *   O   = per (window, head, block of query rows): softmax(q*scale k^T + rel_h + rel_w) v,
 *         the window's keys/values gathered from QKV, window_partition's zero-padded tokens
 *         standing in as rows equal to the qkv bias (which is what a zero row maps to)
 *   x  += O Wproj^T + b                 (row-wise, so it commutes with window_unpartition)
 * A global block is one 64x64 "window". Scores exist only for one block of query rows per
 * thread (256 x 4096 floats for a global block), never heads x 4096 x 4096. */
#include "model/image_encoder_vit.h"
#include "core.h"
#include "nn/nn.h"
#include "quant/int8_vit.h"
#include "threads.h"
#include "tinysam.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define IMG       1024
#define PATCH     16
#define GRID      (IMG / PATCH) /* 64 tokens per side */
#define NTOK      (GRID * GRID)
#define OUT_CHANS 256
#define LN_EPS    1e-6f /* norm_layer = partial(nn.LayerNorm, eps=1e-6) in build_sam */
#define LN2D_EPS  1e-6f
#define ROW_BLOCK 256  /* query rows per attention task when a window is bigger than 512 */
#define MLP_CHUNK 4096 /* MLP rows per pass: one pass measured fastest (84 MB for ViT-H) */
#define MAX_DEPTH 256

typedef struct {
    const float *n1_w, *n1_b, *qkv_w, *qkv_b, *proj_w, *proj_b;
    const float *n2_w, *n2_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
    const float *rel_h, *rel_w; /* [2*side-1][hd]: from the map, or resampled (owned) */
    int side;                   /* window side: window_size, or GRID for a global block */
} vit_block;

struct ts_sam_vit {
    ts_sam_vit_config cfg;
    const float *pe_w, *pe_b, *pos; /* [C][3*16*16], [C], [64*64][C] */
    vit_block *blk;
    const float *neck0_w, *neck1_w, *neck1_b, *neck3_w, *neck3_b;
    float *neck2_w;              /* [256][3][3][256]: the one repacked weight (2.4 MB) */
    float *owned[2 * MAX_DEPTH]; /* resampled relative-position tables */
    int n_owned;
    ts_vit_i8 *i8; /* the W8A8 linear layers of an int8 file (quant/int8_vit.h), or NULL */
    /* The activation arena of the last forward pass, kept for the next one (page faults on
     * ~100-200 MB per image otherwise); a concurrent second forward allocates its own. */
    pthread_mutex_t arena_mu;
    float *arena;
    size_t arena_n;
};

/* ---- detection ------------------------------------------------------------------------------ */

/* i8: an int8 weight (a W8A8 file's linear layer, quant/int8_vit.h) is accepted too. */
static const ts_tensor *get_tensor(const ts_tensor_map *m, const char *name, int ndim, int i8) {
    const ts_tensor *t = ts_map_get(m, name);
    if (!t) {
        ts_error(TINYSAM_E_FORMAT, "missing tensor %s", name);
        return NULL;
    }
    if (!(t->dtype == TS_DTYPE_F32 || (i8 && t->dtype == TS_DTYPE_I8)) || t->ndim != ndim) {
        ts_error(TINYSAM_E_FORMAT, "tensor %s: expected a %d-d float tensor, found %d-d%s", name,
                 ndim, t->ndim, t->dtype == TS_DTYPE_F32 ? "" : " non-float");
        return NULL;
    }
    for (int i = 0; i < ndim; i++)
        if (t->shape[i] < 1 || t->shape[i] > (1 << 20)) {
            ts_error(TINYSAM_E_FORMAT, "tensor %s: implausible dimension %lld", name,
                     (long long)t->shape[i]);
            return NULL;
        }
    return t;
}

static const ts_tensor *get_f32(const ts_tensor_map *m, const char *name, int ndim) {
    return get_tensor(m, name, ndim, 0);
}

/* Parses "image_encoder.blocks.<i>." and returns i, or -1. */
static int block_index(const char *name) {
    static const char pre[] = "image_encoder.blocks.";
    if (strncmp(name, pre, sizeof pre - 1)) return -1;
    const char *p = name + sizeof pre - 1;
    if (*p < '0' || *p > '9') return -1;
    long v = 0;
    while (*p >= '0' && *p <= '9' && v < 100000)
        v = v * 10 + (*p++ - '0');
    return *p == '.' ? (int)v : -1;
}

int ts_sam_vit_detect(const ts_tensor_map *m, ts_sam_vit_config *cfg) {
    if (!m || !cfg) return ts_error(TINYSAM_E_ARG, "ts_sam_vit_detect: NULL argument");
    memset(cfg, 0, sizeof(*cfg));
    char name[160];
    const ts_tensor *t = get_tensor(m, "image_encoder.patch_embed.proj.weight", 4, 1);
    if (!t) return TINYSAM_E_FORMAT;
    const int C = (int)t->shape[0];
    if (t->shape[1] != 3 || t->shape[2] != PATCH || t->shape[3] != PATCH)
        return ts_error(TINYSAM_E_FORMAT,
                        "tensor image_encoder.patch_embed.proj.weight has shape "
                        "[%lld,%lld,%lld,%lld], expected [C,3,16,16]",
                        (long long)t->shape[0], (long long)t->shape[1], (long long)t->shape[2],
                        (long long)t->shape[3]);
    cfg->embed_dim = C;
    cfg->patch = PATCH;

    /* depth = number of consecutive blocks; any block key beyond them is an error */
    int depth = 0;
    for (; depth <= MAX_DEPTH; depth++) {
        snprintf(name, sizeof name, "image_encoder.blocks.%d.norm1.weight", depth);
        if (!ts_map_get(m, name)) break;
    }
    if (depth == 0) return ts_error(TINYSAM_E_FORMAT, "missing tensor %s", name);
    if (depth > MAX_DEPTH)
        return ts_error(TINYSAM_E_FORMAT, "more than %d encoder blocks (%s)", MAX_DEPTH, name);
    for (int i = 0; i < m->n; i++) {
        int bi = block_index(m->t[i].name);
        if (bi >= depth)
            return ts_error(TINYSAM_E_FORMAT,
                            "tensor %s: block %d without image_encoder.blocks.%d.norm1.weight",
                            m->t[i].name, bi, depth);
    }
    cfg->depth = depth;

    /* head dim and global blocks from the relative-position tables */
    int hd = 0, win_len = 0;
    for (int b = 0; b < depth; b++) {
        snprintf(name, sizeof name, "image_encoder.blocks.%d.attn.rel_pos_h", b);
        if (!(t = get_f32(m, name, 2))) return TINYSAM_E_FORMAT;
        int len = (int)t->shape[0], d = (int)t->shape[1];
        if (b == 0) hd = d;
        if (d != hd || C % d != 0)
            return ts_error(TINYSAM_E_FORMAT,
                            "tensor %s has head dim %d (width %d, block 0 head dim %d)", name, d, C,
                            hd);
        if (len == 2 * GRID - 1) {
            if (cfg->n_global == TS_SAM_VIT_MAX_GLOBAL)
                return ts_error(TINYSAM_E_FORMAT, "tensor %s: too many global blocks", name);
            cfg->global_idx[cfg->n_global++] = b;
        } else {
            if (len % 2 == 0 || len < 3 || len > 2 * GRID - 1)
                return ts_error(TINYSAM_E_FORMAT,
                                "tensor %s has %d rows: not 2*window-1 for a window of 2..64", name,
                                len);
            if (win_len && len != win_len)
                return ts_error(TINYSAM_E_FORMAT,
                                "tensor %s has %d rows where earlier windowed blocks have %d", name,
                                len, win_len);
            win_len = len;
        }
        snprintf(name, sizeof name, "image_encoder.blocks.%d.attn.rel_pos_w", b);
        if (!(t = get_f32(m, name, 2))) return TINYSAM_E_FORMAT;
        if ((int)t->shape[1] != hd)
            return ts_error(TINYSAM_E_FORMAT, "tensor %s has head dim %d, expected %d", name,
                            (int)t->shape[1], hd);
    }
    cfg->head_dim = hd;
    cfg->num_heads = C / hd;
    cfg->window_size = win_len ? (win_len + 1) / 2 : 0;

    if (!(t = get_tensor(m, "image_encoder.neck.0.weight", 4, 1))) return TINYSAM_E_FORMAT;
    cfg->out_chans = (int)t->shape[0];
    if (t->shape[0] != OUT_CHANS || t->shape[1] != C || t->shape[2] != 1 || t->shape[3] != 1)
        return ts_error(TINYSAM_E_FORMAT,
                        "tensor image_encoder.neck.0.weight has shape [%lld,%lld,%lld,%lld], "
                        "expected [256,%d,1,1]",
                        (long long)t->shape[0], (long long)t->shape[1], (long long)t->shape[2],
                        (long long)t->shape[3], C);
    return 0;
}

/* ---- loading -------------------------------------------------------------------------------- */

/* get_rel_pos's F.interpolate(mode="linear", align_corners=False) of a [len][hd] table to
 * [out_len][hd]; only reached when a table is not 2*side-1 rows long. */
static void resample_rel_pos(const float *src, int len, int hd, int out_len, float *dst) {
    const float ratio = (float)len / (float)out_len;
    for (int o = 0; o < out_len; o++) {
        double s = ((double)o + 0.5) * (double)ratio - 0.5;
        if (s < 0) s = 0;
        int i0 = (int)s;
        if (i0 > len - 1) i0 = len - 1;
        int i1 = i0 + (i0 < len - 1);
        float l1 = (float)(s - i0), l0 = 1.0f - l1;
        for (int d = 0; d < hd; d++)
            dst[(size_t)o * hd + d] = l0 * src[(size_t)i0 * hd + d] + l1 * src[(size_t)i1 * hd + d];
    }
}

/* Takes a relative-position table of whatever length the file has and returns it with
 * 2*side-1 rows. */
static const float *take_rel_pos(ts_sam_vit *e, ts_tensor_map *m, const char *name, int side) {
    const int hd = e->cfg.head_dim, want = 2 * side - 1;
    const ts_tensor *t = ts_map_get(m, name);
    int len = t && t->ndim == 2 ? (int)t->shape[0] : want;
    const float *p = ts_map_take(m, name, 2, len, hd);
    if (!p || len == want) return p;
    float *r = ts_malloc_aligned(sizeof(float) * (size_t)want * hd);
    if (!r) return NULL;
    e->owned[e->n_owned++] = r;
    resample_rel_pos(p, len, hd, want, r);
    return r;
}

static int is_global(const ts_sam_vit_config *c, int b) {
    for (int i = 0; i < c->n_global; i++)
        if (c->global_idx[i] == b) return 1;
    return 0;
}

/* A linear layer's float weight [N][K] and bias: not taken when the layer is int8. */
static int take_lin(const ts_sam_vit *e, ts_tensor_map *m, int id, const char *wn, const char *bn,
                    int N, int K, const float **w, const float **bias) {
    if (ts_vit_i8_has(e->i8, id)) return 0;
    if (!(*w = ts_map_take(m, wn, 2, N, K)) || !(*bias = ts_map_take(m, bn, 1, N)))
        return TINYSAM_E_FORMAT;
    return 0;
}

static int load_block(ts_sam_vit *e, ts_tensor_map *m, int b, vit_block *v) {
    const int C = e->cfg.embed_dim, H = 4 * C;
    char n[24][128];
    static const char *const parts[12] = {"norm1.weight",  "norm1.bias",       "attn.qkv.weight",
                                          "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias",
                                          "norm2.weight",  "norm2.bias",       "mlp.lin1.weight",
                                          "mlp.lin1.bias", "mlp.lin2.weight",  "mlp.lin2.bias"};
    for (int i = 0; i < 12; i++)
        snprintf(n[i], sizeof n[i], "image_encoder.blocks.%d.%s", b, parts[i]);
    // clang-format off
    if (!(v->n1_w   = ts_map_take(m, n[0], 1, C))        ||
        !(v->n1_b   = ts_map_take(m, n[1], 1, C))        ||
        take_lin(e, m, 4 * b + TS_VIT_L_QKV, n[2], n[3], 3 * C, C, &v->qkv_w, &v->qkv_b) ||
        take_lin(e, m, 4 * b + TS_VIT_L_PROJ, n[4], n[5], C, C, &v->proj_w, &v->proj_b) ||
        !(v->n2_w   = ts_map_take(m, n[6], 1, C))        ||
        !(v->n2_b   = ts_map_take(m, n[7], 1, C))        ||
        take_lin(e, m, 4 * b + TS_VIT_L_FC1, n[8], n[9], H, C, &v->fc1_w, &v->fc1_b) ||
        take_lin(e, m, 4 * b + TS_VIT_L_FC2, n[10], n[11], C, H, &v->fc2_w, &v->fc2_b))
        return TINYSAM_E_FORMAT;
    // clang-format on
    if (!v->qkv_b) { /* int8 qkv: padded window tokens still need the bias */
        const ts_tensor *t = ts_map_get(m, n[3]);
        if (!t || t->dtype != TS_DTYPE_F32 || t->numel != 3 * C)
            return ts_error(TINYSAM_E_FORMAT, "tensor %s: expected float32 [%d]", n[3], 3 * C);
        v->qkv_b = t->data;
    }
    v->side = is_global(&e->cfg, b) ? GRID : e->cfg.window_size;
    snprintf(n[12], sizeof n[12], "image_encoder.blocks.%d.attn.rel_pos_h", b);
    snprintf(n[13], sizeof n[13], "image_encoder.blocks.%d.attn.rel_pos_w", b);
    if (!(v->rel_h = take_rel_pos(e, m, n[12], v->side)) ||
        !(v->rel_w = take_rel_pos(e, m, n[13], v->side)))
        return TINYSAM_E_FORMAT;
    return 0;
}

static int load_all(ts_sam_vit *e, ts_tensor_map *m) {
    int rc = ts_sam_vit_detect(m, &e->cfg);
    if (rc) return rc;
    const int C = e->cfg.embed_dim, P = PATCH, D = e->cfg.depth;
    if ((rc = ts_vit_i8_load(m, D, C, &e->i8))) return rc;
    // clang-format off
    if ((!ts_vit_i8_has(e->i8, TS_VIT_L_PATCH(D)) &&
         (!(e->pe_w = ts_map_take(m, "image_encoder.patch_embed.proj.weight", 4, C, 3, P, P)) ||
          !(e->pe_b = ts_map_take(m, "image_encoder.patch_embed.proj.bias", 1, C))))       ||
        !(e->pos  = ts_map_take(m, "image_encoder.pos_embed", 4, 1, GRID, GRID, C)))
        return TINYSAM_E_FORMAT;
    // clang-format on
    e->blk = ts_calloc((size_t)e->cfg.depth, sizeof(*e->blk));
    if (!e->blk) return TINYSAM_E_NOMEM;
    for (int b = 0; b < e->cfg.depth; b++)
        if ((rc = load_block(e, m, b, &e->blk[b]))) return rc;
    // clang-format off
    if ((!ts_vit_i8_has(e->i8, TS_VIT_L_NECK0(D)) &&
         !(e->neck0_w = ts_map_take(m, "image_encoder.neck.0.weight", 4, OUT_CHANS, C, 1, 1))) ||
        !(e->neck1_w = ts_map_take(m, "image_encoder.neck.1.weight", 1, OUT_CHANS))          ||
        !(e->neck1_b = ts_map_take(m, "image_encoder.neck.1.bias", 1, OUT_CHANS))            ||
        !(e->neck3_w = ts_map_take(m, "image_encoder.neck.3.weight", 1, OUT_CHANS))          ||
        !(e->neck3_b = ts_map_take(m, "image_encoder.neck.3.bias", 1, OUT_CHANS)))
        return TINYSAM_E_FORMAT;
    // clang-format on
    const float *w2 = ts_map_take(m, "image_encoder.neck.2.weight", 4, OUT_CHANS, OUT_CHANS, 3, 3);
    if (!w2) return TINYSAM_E_FORMAT;
    e->neck2_w = ts_malloc_aligned(sizeof(float) * OUT_CHANS * OUT_CHANS * 9);
    if (!e->neck2_w) return TINYSAM_E_NOMEM;
    for (int o = 0; o < OUT_CHANS; o++) /* [co][ci][ky][kx] -> [co][ky][kx][ci] for nn.h */
        for (int i = 0; i < OUT_CHANS; i++)
            for (int k = 0; k < 9; k++)
                e->neck2_w[((size_t)o * 9 + k) * OUT_CHANS + i] =
                    w2[((size_t)o * OUT_CHANS + i) * 9 + k];
    return 0;
}

int ts_sam_vit_load(ts_tensor_map *m, ts_sam_vit **out) {
    if (!m || !out) return ts_error(TINYSAM_E_ARG, "ts_sam_vit_load: NULL argument");
    *out = NULL;
    ts_sam_vit *e = ts_calloc(1, sizeof(*e));
    if (!e) return TINYSAM_E_NOMEM;
    pthread_mutex_init(&e->arena_mu, NULL);
    int rc = load_all(e, m);
    if (rc) {
        ts_sam_vit_free(e);
        return ts_error_prefix(rc, "SAM ViT image encoder");
    }
    *out = e;
    return 0;
}

void ts_sam_vit_free(ts_sam_vit *e) {
    if (!e) return;
    for (int i = 0; i < e->n_owned; i++)
        ts_free_aligned(e->owned[i]);
    ts_free_aligned(e->neck2_w);
    ts_free_aligned(e->arena);
    ts_vit_i8_free(e->i8);
    pthread_mutex_destroy(&e->arena_mu);
    free(e->blk);
    free(e);
}

const ts_sam_vit_config *ts_sam_vit_get_config(const ts_sam_vit *e) {
    return e ? &e->cfg : NULL;
}

int ts_sam_vit_n_int8(const ts_sam_vit *e) {
    return e ? ts_vit_i8_count(e->i8) : 0;
}

/* ---- forward helpers ------------------------------------------------------------------------ */

/* PatchEmbed's 16x16 stride-16 convolution as a GEMM: row = patch, column = (c, ky, kx), the
 * weight's own [C][3][16][16] order. Task i = one row of patches. */
typedef struct {
    const float *in;
    float *cols;
} im2col_job;

static void im2col_task(void *ctx, int py, int tid) {
    (void)tid;
    const im2col_job *j = ctx;
    const int K = 3 * PATCH * PATCH;
    for (int px = 0; px < GRID; px++) {
        float *row = j->cols + ((size_t)py * GRID + px) * K;
        for (int c = 0; c < 3; c++)
            for (int ky = 0; ky < PATCH; ky++)
                memcpy(row + (c * PATCH + ky) * PATCH,
                       j->in + ((size_t)c * IMG + py * PATCH + ky) * IMG + px * PATCH,
                       sizeof(float) * PATCH);
    }
}

/* Attention.forward with add_decomposed_rel_pos for one (window, head, block of query rows),
 * reading q, k, v from the token-order QKV. window_partition's zero padding is applied here: a
 * padded token's qkv row is exactly the qkv bias (0 * W + b), and such keys and values take part
 * in the softmax (SAM does not mask them); padded query rows are never computed, since
 * window_unpartition drops them. */
typedef struct {
    const float *qkv;   /* [4096][3C], column = s*C + head*hd + d (reshape(B, HW, 3, heads, hd)) */
    const float *qkv_b; /* [3C] */
    const float *kt;    /* global blocks: keys transposed, [heads][hd][4096] */
    float *o;           /* [4096][C], column = head*hd + d */
    const float *rel_h, *rel_w;
    int C, hd, heads, side, nw, rb, nrb;
    float scale;
    float *scratch; /* per thread: scratch_per floats */
    size_t scratch_per;
    int nthreads;
} attn_job;

static size_t attn_scratch_per(int hd, int side) {
    size_t N = (size_t)side * side, rb = N <= 2 * ROW_BLOCK ? N : ROW_BLOCK;
    size_t R = 2 * (size_t)side - 1;
    size_t kv = side == GRID ? 0 : 2 * N * hd; /* gathered window keys (transposed), values */
    return (3 * rb * hd + rb * N + 2 * rb * R + kv + 64) / 16 * 16;
}

/* Token index of window position p, or -1 for padding. */
static inline int win_token(int y0, int x0, int side, int p) {
    int gy = y0 + p / side, gx = x0 + p % side;
    return gy < GRID && gx < GRID ? gy * GRID + gx : -1;
}

static void attn_task(void *ctx, int i, int tid) {
    const attn_job *j = ctx;
    TS_ASSERT(tid < j->nthreads);
    const int C = j->C, C3 = 3 * C, hd = j->hd, S = j->side, N = S * S, R = 2 * S - 1;
    const int win = i / (j->heads * j->nrb), h = (i / j->nrb) % j->heads;
    const int r0 = (i % j->nrb) * j->rb, nr = TS_MIN(j->rb, N - r0);
    const int y0 = (win / j->nw) * S, x0 = (win % j->nw) * S;
    const int global = S == GRID;
    float *qs = j->scratch + (size_t)tid * j->scratch_per; /* nr x hd, q * scale */
    float *qu = qs + (size_t)j->rb * hd;                   /* nr x hd, q (window only) */
    float *ob = qu + (size_t)j->rb * hd;                   /* nr x hd, output (window only) */
    float *sc = ob + (size_t)j->rb * hd;                   /* nr x N scores */
    float *rh = sc + (size_t)j->rb * N;                    /* nr x R */
    float *rw = rh + (size_t)j->rb * R;                    /* nr x R */
    /* K is used as k^T [hd][N] (b_trans = 0): the GEMM packs that twice as fast as [N][hd] */
    const float *q, *kt, *v;
    int ldq, ldv;
    if (global) { /* one window in token order: read QKV in place */
        q = j->qkv + (size_t)r0 * C3 + h * hd;
        kt = j->kt + (size_t)h * hd * N;
        v = j->qkv + 2 * C + h * hd;
        ldq = ldv = C3;
    } else {
        float *kb = rw + (size_t)j->rb * R, *vb = kb + (size_t)N * hd;
        for (int p = 0; p < N; p++) {
            int tok = win_token(y0, x0, S, p);
            const float *row = tok >= 0 ? j->qkv + (size_t)tok * C3 : j->qkv_b;
            for (int d = 0; d < hd; d++)
                kb[(size_t)d * N + p] = row[C + h * hd + d];
            memcpy(vb + (size_t)p * hd, row + 2 * C + h * hd, sizeof(float) * hd);
            if (p >= r0 && p < r0 + nr)
                memcpy(qu + (size_t)(p - r0) * hd, row + h * hd, sizeof(float) * hd);
        }
        q = qu;
        kt = kb;
        v = vb;
        ldq = ldv = hd;
    }
    for (int r = 0; r < nr; r++)
        for (int d = 0; d < hd; d++)
            qs[r * hd + d] = q[(size_t)r * ldq + d] * j->scale;
    ts_gemm(nr, N, hd, qs, hd, kt, N, 0, sc, N, 0.0f);
    /* rel_h[q][kh] = q . Rh[qh - kh + S-1] with the unscaled q: all R offsets as one GEMM */
    ts_gemm(nr, R, hd, q, ldq, j->rel_h, hd, 1, rh, R, 0.0f);
    ts_gemm(nr, R, hd, q, ldq, j->rel_w, hd, 1, rw, R, 0.0f);
    for (int r = 0; r < nr; r++) {
        const int qi = r0 + r, qh = qi / S, qw = qi % S;
        float *srow = sc + (size_t)r * N, *rwr = rw + (size_t)r * R;
        for (int a = 0, b = R - 1; a < b; a++, b--) { /* reversed: rel_w[kw] = rwr[S-1-qw+kw] */
            float tmp = rwr[a];
            rwr[a] = rwr[b];
            rwr[b] = tmp;
        }
        const float *rwk = rwr + S - 1 - qw;
        for (int kh = 0; kh < S; kh++) { /* (attn + rel_h) + rel_w, as PyTorch adds them */
            const float a = rh[(size_t)r * R + qh - kh + S - 1];
            float *s = srow + kh * S;
            for (int kw = 0; kw < S; kw++)
                s[kw] = (s[kw] + a) + rwk[kw];
        }
    }
    ts_softmax_rows(sc, nr, N);
    /* attn @ v, heads concatenated per token: channel = head*hd + d */
    if (global) {
        ts_gemm(nr, hd, N, sc, N, v, ldv, 0, j->o + (size_t)r0 * C + h * hd, C, 0.0f);
        return;
    }
    ts_gemm(nr, hd, N, sc, N, v, ldv, 0, ob, hd, 0.0f);
    for (int r = 0; r < nr; r++) { /* window_unpartition: padded rows dropped */
        int tok = win_token(y0, x0, S, r0 + r);
        if (tok >= 0)
            memcpy(j->o + (size_t)tok * C + h * hd, ob + (size_t)r * hd, sizeof(float) * hd);
    }
}

/* kt[c][tok] = K[tok][c] for the C key columns of QKV ([heads][hd][4096]), 64 tokens per task. */
typedef struct {
    const float *qkv;
    float *kt;
    int C;
} kt_job;

static void transpose_k_task(void *ctx, int i, int tid) {
    (void)tid;
    const kt_job *j = ctx;
    const int t0 = i * 64, C = j->C;
    for (int c = 0; c < C; c++) {
        const float *src = j->qkv + (size_t)t0 * 3 * C + C + c;
        float *dst = j->kt + (size_t)c * NTOK + t0;
        for (int k = 0; k < 64; k++)
            dst[k] = src[(size_t)k * 3 * C];
    }
}

/* ---- forward -------------------------------------------------------------------------------- */

/* One linear layer (id: quant/int8_vit.h) over M token rows: Y (ldy) = X W^T + b, plus Y when
 * beta = 1; the int8 GEMM when the layer is int8; the tap sees its input first. */
typedef struct {
    ts_sam_vit_tap tap;
    void *user;
} fwd_ctx;

static void linear(const ts_sam_vit *e, const fwd_ctx *f, int id, long long row0, int M, int N,
                   int K, const float *X, int ldx, const float *W, const float *b, float *Y,
                   int ldy, float beta, int act) {
    if (f->tap) f->tap(f->user, id, row0, X, M, ldx);
    if (ts_vit_i8_has(e->i8, id)) ts_vit_i8_linear(e->i8, id, M, X, ldx, Y, ldy, beta != 0.0f, act);
    else ts_gemm_ex(M, N, K, X, ldx, W, K, 1, Y, ldy, beta, b, act);
}

int ts_sam_vit_forward(const ts_sam_vit *e, const float *input, float *out) {
    return ts_sam_vit_forward_tap(e, input, out, NULL, NULL);
}

int ts_sam_vit_forward_tap(const ts_sam_vit *e, const float *input, float *out,
                           ts_sam_vit_tap tap, void *user) {
    if (!e || !input || !out) return ts_error(TINYSAM_E_ARG, "ts_sam_vit_forward: NULL argument");
    const fwd_ctx fc = {tap, user};
    const int D = e->cfg.depth;
    const ts_sam_vit_config *cf = &e->cfg;
    const int C = cf->embed_dim, hd = cf->head_dim, heads = cf->num_heads;
    const int nthreads = ts_num_threads();

    size_t scratch_per = 0;
    for (int b = 0; b < cf->depth; b++)
        scratch_per = TS_MAX(scratch_per, attn_scratch_per(hd, e->blk[b].side));
    const size_t sz_x = (size_t)NTOK * C;
    /* qkv also holds the patch columns (4096 x 768) and the neck's two 4096 x 256 maps */
    const size_t sz_qkv = TS_MAX((size_t)NTOK * 3 * C, (size_t)NTOK * 3 * PATCH * PATCH);
    const size_t sz_hid = (size_t)MLP_CHUNK * 4 * C;
    const size_t sz_scr = scratch_per * (size_t)nthreads;
    const size_t total = 3 * sz_x + sz_qkv + TS_MAX(sz_hid, sz_scr);
    ts_sam_vit *mut = (ts_sam_vit *)e; /* only the arena cache changes */
    float *arena = NULL;
    pthread_mutex_lock(&mut->arena_mu);
    if (mut->arena && mut->arena_n >= total) {
        arena = mut->arena;
        mut->arena = NULL;
    }
    pthread_mutex_unlock(&mut->arena_mu);
    if (!arena) arena = ts_malloc_aligned(total * sizeof(float));
    if (!arena) return ts_error_prefix(TINYSAM_E_NOMEM, "SAM ViT encoder activations");
    float *x = arena;          /* running tokens [4096][C] */
    float *t = x + sz_x;       /* LN output [4096][C] */
    float *o = t + sz_x;       /* attention output [4096][C] */
    float *qkv = o + sz_x;     /* [4096][3C] */
    float *scr = qkv + sz_qkv; /* MLP hidden chunk, or attention scratch */

    // ref: PatchEmbed.forward (conv 16x16 stride 16) then x + pos_embed
    {
        const int K = 3 * PATCH * PATCH;
        im2col_job ij = {input, qkv};
        ts_parallel_for(GRID, im2col_task, &ij);
        linear(e, &fc, TS_VIT_L_PATCH(D), 0, NTOK, C, K, qkv, K, e->pe_w, e->pe_b, x, C, 0.0f,
               TS_ACT_NONE);
        for (size_t i = 0; i < sz_x; i++)
            x[i] += e->pos[i];
    }

    for (int b = 0; b < cf->depth; b++) {
        const vit_block *v = &e->blk[b];
        const int s = v->side, nw = (GRID + s - 1) / s, N = s * s;
        // ref: Block.forward: x = x + unpartition(attn(partition(norm1(x))))
        ts_layernorm_to(x, t, NTOK, C, v->n1_w, v->n1_b, LN_EPS);
        linear(e, &fc, 4 * b + TS_VIT_L_QKV, 0, NTOK, 3 * C, C, t, C, v->qkv_w, v->qkv_b, qkv,
               3 * C, 0.0f, TS_ACT_NONE);
        if (s == GRID) { /* t (dead until norm2) holds the transposed keys */
            kt_job kj = {qkv, t, C};
            ts_parallel_for(NTOK / 64, transpose_k_task, &kj);
        }
        const int rb = N <= 2 * ROW_BLOCK ? N : ROW_BLOCK, nrb = (N + rb - 1) / rb;
        // clang-format off
        attn_job aj = {.qkv = qkv, .qkv_b = v->qkv_b, .kt = t, .o = o,
                       .rel_h = v->rel_h, .rel_w = v->rel_w, .C = C, .hd = hd, .heads = heads,
                       .side = s, .nw = nw, .rb = rb, .nrb = nrb,
                       .scale = (float)pow((double)hd, -0.5), /* head_dim**-0.5 */
                       .scratch = scr, .scratch_per = scratch_per, .nthreads = nthreads};
        // clang-format on
        ts_parallel_for(nw * nw * heads * nrb, attn_task, &aj);
        /* proj per token (row-wise, so after the unpartition), the residual add as beta = 1 */
        linear(e, &fc, 4 * b + TS_VIT_L_PROJ, 0, NTOK, C, C, o, C, v->proj_w, v->proj_b, x, C,
               1.0f, TS_ACT_NONE);
        // ref: x = x + mlp(norm2(x)), MLPBlock lin1 -> GELU -> lin2, in row chunks
        for (int r0 = 0; r0 < NTOK; r0 += MLP_CHUNK) {
            const int nr = TS_MIN(MLP_CHUNK, NTOK - r0);
            float *xr = x + (size_t)r0 * C;
            ts_layernorm_to(xr, t, nr, C, v->n2_w, v->n2_b, LN_EPS);
            const int f1 = 4 * b + TS_VIT_L_FC1, f2 = 4 * b + TS_VIT_L_FC2;
            if (!tap && ts_vit_i8_has(e->i8, f1) && ts_vit_i8_has(e->i8, f2)) {
                /* int8 MLP: the hidden layer as u8 codes in scr (quant/int8_vit.h) */
                ts_vit_i8_mlp(e->i8, f1, f2, nr, t, C, (uint8_t *)scr, xr, C);
                continue;
            }
            linear(e, &fc, f1, r0, nr, 4 * C, C, t, C, v->fc1_w, v->fc1_b, scr, 4 * C, 0.0f,
                   TS_ACT_GELU);
            linear(e, &fc, f2, r0, nr, C, 4 * C, scr, 4 * C, v->fc2_w, v->fc2_b,
                   xr, C, 1.0f, TS_ACT_NONE);
        }
    }

    // ref: neck: conv1x1 (no bias) -> LayerNorm2d -> conv3x3 pad 1 (no bias) -> LayerNorm2d
    {
        float *n1 = qkv, *n2 = qkv + (size_t)NTOK * OUT_CHANS;
        linear(e, &fc, TS_VIT_L_NECK0(D), 0, NTOK, OUT_CHANS, C, x, C, e->neck0_w, NULL, n1,
               OUT_CHANS, 0.0f, TS_ACT_NONE);
        ts_layernorm(n1, NTOK, OUT_CHANS, e->neck1_w, e->neck1_b, LN2D_EPS);
        ts_conv3x3_nhwc(n1, GRID, GRID, OUT_CHANS, 1, e->neck2_w, NULL, OUT_CHANS, TS_ACT_NONE, n2);
        ts_layernorm(n2, NTOK, OUT_CHANS, e->neck3_w, e->neck3_b, LN2D_EPS);
        for (int c = 0; c < OUT_CHANS; c++) /* tokens -> NCHW */
            for (int p = 0; p < NTOK; p++)
                out[(size_t)c * NTOK + p] = n2[(size_t)p * OUT_CHANS + c];
    }
    pthread_mutex_lock(&mut->arena_mu);
    if (!mut->arena || mut->arena_n < total) { /* keep the larger one */
        float *old = mut->arena;
        mut->arena = arena;
        mut->arena_n = total;
        arena = old;
    }
    pthread_mutex_unlock(&mut->arena_mu);
    ts_free_aligned(arena);
    return 0;
}
