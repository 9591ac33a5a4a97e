/* tiny_vit_sam.c - the TinyViT (vit_t) image encoder with SAM's neck (spec TINYSAM.md §4).
 * ref: tinysam/modeling/tiny_vit_sam.py
 *
 * Activations are kept channels-last throughout (NHWC = PyTorch's token layout (1, H*W, C)),
 * so every 1x1 convolution and Linear is one GEMM over pixels, the 3x3 convolutions are GEMMs
 * with im2col done while packing, and the depthwise convolutions and LayerNorm2d run along
 * contiguous channels. The hook gets PyTorch's layout (NCHW where the official module is NCHW);
 * the conversion happens only when a hook is set. BatchNorm is folded into private copies of
 * the convolution weights at load (§4.2: changes rounding only). */
#include "model/image_encoder.h"
#include "core.h"
#include "nn/nn.h"
#include "threads.h"
#include "tinysam.h"

#include <math.h>
#include <pthread.h>
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
#define MLP_CHUNK  1024 /* MLP rows per pass: keeps the 4C hidden activations in cache */

static const int DIMS[N_STAGES] = {64, 128, 160, 320};
static const int DEPTHS[N_STAGES] = {2, 2, 6, 2};
static const int HEADS[N_STAGES] = {2, 4, 5, 10};
static const int WINDOWS[N_STAGES] = {7, 7, 14, 7};

/* A convolution with its BatchNorm folded in: w scaled by alpha per output channel, b = beta.
 * Layouts: 1x1 [co][ci]; dense 3x3 [co][ky][kx][ci]; depthwise [ky*3+kx][c]. */
typedef struct {
    float *w, *b;
} conv_bn;

typedef struct {
    const float *ln_w, *ln_b, *qkv_w, *qkv_b, *proj_w, *proj_b; /* from the map */
    float *bias_tab;                                            /* [heads][N][N], N = ws^2 */
    conv_bn local;                                              /* depthwise 3x3 */
    const float *mlp_ln_w, *mlp_ln_b, *fc1_w, *fc1_b, *fc2_w, *fc2_b;
} vit_block;

struct ts_tiny_vit {
    conv_bn pe1, pe2;   /* patch embed: 3x3 s2 3->32, 3x3 s2 32->64 */
    conv_bn mb[2][3];   /* stage 0 MBConv: 1x1 64->256, dw 256, 1x1 256->64 */
    conv_bn merge[3][3]; /* PatchMerging after stages 0..2: 1x1, dw (stride 2,2,1), 1x1 */
    vit_block blk[N_VIT];
    const float *neck0_w, *neck1_w, *neck1_b, *neck3_w, *neck3_b; /* from the map */
    float *neck2_w;     /* 3x3 256->256 permuted to [co][ky][kx][ci] */
    float **owned;      /* every private allocation */
    int n_owned, cap_owned;
    /* The activation arena of the last forward pass, kept for the next one (saves ~150 MB of
     * page faults per image); a concurrent second forward allocates its own. */
    pthread_mutex_t arena_mu;
    float *arena;
    size_t arena_n;
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

/* Shape values are passed to ts_map_take as int. */
static const float *take1(ts_tensor_map *m, const char *name, int a) {
    return ts_map_take(m, name, 1, a);
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
    return 0;
}

static const float *take_blk(ts_tensor_map *m, int s, int b, const char *part, int ndim, int a,
                             int c) {
    char name[160];
    snprintf(name, sizeof name, "image_encoder.layers.%d.blocks.%d.%s", s, b, part);
    return ndim == 1 ? ts_map_take(m, name, 1, a) : ts_map_take(m, name, 2, a, c);
}

static int load_vit_block(ts_tiny_vit *e, ts_tensor_map *m, int s, int b, vit_block *v) {
    const int C = DIMS[s], h = HEADS[s], ws = WINDOWS[s], N = ws * ws;
    // clang-format off
    if (!(v->ln_w     = take_blk(m, s, b, "attn.norm.weight",   1, C, 0))     ||
        !(v->ln_b     = take_blk(m, s, b, "attn.norm.bias",     1, C, 0))     ||
        !(v->qkv_w    = take_blk(m, s, b, "attn.qkv.weight",    2, 3 * C, C)) ||
        !(v->qkv_b    = take_blk(m, s, b, "attn.qkv.bias",      1, 3 * C, 0)) ||
        !(v->proj_w   = take_blk(m, s, b, "attn.proj.weight",   2, C, C))     ||
        !(v->proj_b   = take_blk(m, s, b, "attn.proj.bias",     1, C, 0))     ||
        !(v->mlp_ln_w = take_blk(m, s, b, "mlp.norm.weight",    1, C, 0))     ||
        !(v->mlp_ln_b = take_blk(m, s, b, "mlp.norm.bias",      1, C, 0))     ||
        !(v->fc1_w    = take_blk(m, s, b, "mlp.fc1.weight",     2, 4 * C, C)) ||
        !(v->fc1_b    = take_blk(m, s, b, "mlp.fc1.bias",       1, 4 * C, 0)) ||
        !(v->fc2_w    = take_blk(m, s, b, "mlp.fc2.weight",     2, C, 4 * C)) ||
        !(v->fc2_b    = take_blk(m, s, b, "mlp.fc2.bias",       1, C, 0)))
        return TINYSAM_E_FORMAT;
    // clang-format on
    const float *ab = take_blk(m, s, b, "attn.attention_biases", 2, h, N);
    if (!ab) return TINYSAM_E_FORMAT;
    /* §4.6/§4.9: the loaded biases, expanded: tab[j][p1][p2] = ab[j][|dy|*ws + |dx|] */
    v->bias_tab = own(e, (size_t)h * N * N);
    if (!v->bias_tab) return TINYSAM_E_NOMEM;
    for (int j = 0; j < h; j++)
        for (int p1 = 0; p1 < N; p1++)
            for (int p2 = 0; p2 < N; p2++) {
                int dy = abs(p1 / ws - p2 / ws), dx = abs(p1 % ws - p2 % ws);
                v->bias_tab[((size_t)j * N + p1) * N + p2] = ab[(size_t)j * N + dy * ws + dx];
            }
    char prefix[96];
    snprintf(prefix, sizeof prefix, "layers.%d.blocks.%d.local_conv", s, b);
    return take_conv_bn(e, m, prefix, C, 1, 3, &v->local);
}

static int load_all(ts_tiny_vit *e, ts_tensor_map *m) {
    int rc;
    char p[96];
    if ((rc = take_conv_bn(e, m, "patch_embed.seq.0", 32, 3, 3, &e->pe1))) return rc;
    if ((rc = take_conv_bn(e, m, "patch_embed.seq.2", 64, 32, 3, &e->pe2))) return rc;
    for (int b = 0; b < 2; b++) {
        const int C = DIMS[0], Hd = 4 * C;
        snprintf(p, sizeof p, "layers.0.blocks.%d.conv1", b);
        if ((rc = take_conv_bn(e, m, p, Hd, C, 1, &e->mb[b][0]))) return rc;
        snprintf(p, sizeof p, "layers.0.blocks.%d.conv2", b);
        if ((rc = take_conv_bn(e, m, p, Hd, 1, 3, &e->mb[b][1]))) return rc;
        snprintf(p, sizeof p, "layers.0.blocks.%d.conv3", b);
        if ((rc = take_conv_bn(e, m, p, C, Hd, 1, &e->mb[b][2]))) return rc;
    }
    for (int s = 0; s < 3; s++) {
        const int ci = DIMS[s], co = DIMS[s + 1];
        snprintf(p, sizeof p, "layers.%d.downsample.conv1", s);
        if ((rc = take_conv_bn(e, m, p, co, ci, 1, &e->merge[s][0]))) return rc;
        snprintf(p, sizeof p, "layers.%d.downsample.conv2", s);
        if ((rc = take_conv_bn(e, m, p, co, 1, 3, &e->merge[s][1]))) return rc;
        snprintf(p, sizeof p, "layers.%d.downsample.conv3", s);
        if ((rc = take_conv_bn(e, m, p, co, co, 1, &e->merge[s][2]))) return rc;
    }
    int bi = 0;
    for (int s = 1; s < N_STAGES; s++)
        for (int b = 0; b < DEPTHS[s]; b++)
            if ((rc = load_vit_block(e, m, s, b, &e->blk[bi++]))) return rc;
    // clang-format off
    if (!(e->neck0_w = ts_map_take(m, "image_encoder.neck.0.weight", 4, 256, 320, 1, 1)) ||
        !(e->neck1_w = take1(m, "image_encoder.neck.1.weight", 256))                     ||
        !(e->neck1_b = take1(m, "image_encoder.neck.1.bias", 256))                       ||
        !(e->neck3_w = take1(m, "image_encoder.neck.3.weight", 256))                     ||
        !(e->neck3_b = take1(m, "image_encoder.neck.3.bias", 256)))
        return TINYSAM_E_FORMAT;
    // clang-format on
    const float *w2 = ts_map_take(m, "image_encoder.neck.2.weight", 4, 256, 256, 3, 3);
    if (!w2) return TINYSAM_E_FORMAT;
    if (!(e->neck2_w = own(e, (size_t)256 * 256 * 9))) return TINYSAM_E_NOMEM;
    for (int o = 0; o < 256; o++)
        for (int i = 0; i < 256; i++)
            for (int t = 0; t < 9; t++)
                e->neck2_w[((size_t)o * 9 + t) * 256 + i] = w2[((size_t)o * 256 + i) * 9 + t];
    return 0;
}

int ts_tiny_vit_load(ts_tensor_map *m, ts_tiny_vit **out) {
    if (!m || !out) return ts_error(TINYSAM_E_ARG, "ts_tiny_vit_load: NULL argument");
    *out = NULL;
    ts_tiny_vit *e = ts_calloc(1, sizeof(*e));
    if (!e) return TINYSAM_E_NOMEM;
    pthread_mutex_init(&e->arena_mu, NULL);
    int rc = load_all(e, m);
    if (rc) {
        ts_tiny_vit_free(e);
        return ts_error_prefix(rc, "image encoder");
    }
    *out = e;
    return 0;
}

void ts_tiny_vit_free(ts_tiny_vit *e) {
    if (!e) return;
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
    for (int c = 0; c < j->cols; c++)
        for (int r = r0; r < r1; r++)
            j->dst[(size_t)c * j->rows + r] = j->src[(size_t)r * j->cols + c];
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

/* Window attention (§4.6) for one TinyViT block, in place: t = t + Attention(windows of t). */
typedef struct {
    const vit_block *v;
    float *t;
    int R, C, heads, ws, nw;
    float *scratch;     /* per thread: scratch_per floats */
    size_t scratch_per;
    float *dump;        /* [windows][N][C] attention outputs for the hook, or NULL */
    int nthreads;       /* scratch slots */
} attn_job;

static void attn_window(void *ctx, int w, int tid) {
    const attn_job *j = ctx;
    const vit_block *v = j->v;
    const int C = j->C, ws = j->ws, N = ws * ws, R = j->R, C3 = 3 * C;
    TS_ASSERT(tid < j->nthreads);
    float *xw = j->scratch + (size_t)tid * j->scratch_per; /* N x C */
    float *qkv = xw + (size_t)N * C;                      /* N x 3C */
    float *S = qkv + (size_t)N * C3;                      /* N x N */
    float *o = S + (size_t)N * N;                         /* N x C */
    float *a = o + (size_t)N * C;                         /* N x C */
    const int y0 = (w / j->nw) * ws, x0 = (w % j->nw) * ws;
    /* gather; tokens beyond R are the zero padding (unmasked: they still act as keys) */
    for (int p = 0; p < N; p++) {
        int gy = y0 + p / ws, gx = x0 + p % ws;
        float *dst = xw + (size_t)p * C;
        if (gy < R && gx < R)
            memcpy(dst, j->t + ((size_t)gy * R + gx) * C, sizeof(float) * C);
        else
            memset(dst, 0, sizeof(float) * C);
    }
    // ref: tinysam/modeling/tiny_vit_sam.py, Attention.forward
    {
        ts_layernorm(xw, N, C, v->ln_w, v->ln_b, LN_EPS);
        ts_gemm_ex(N, C3, C, xw, C, v->qkv_w, C, 1, qkv, C3, 0.0f, v->qkv_b, TS_ACT_NONE);
        for (int h = 0; h < j->heads; h++) {
            const float *q = qkv + h * 3 * HEAD_DIM; /* head-major: [q k v] per head */
            const float *k = q + HEAD_DIM, *vv = q + 2 * HEAD_DIM;
            const float *tab = v->bias_tab + (size_t)h * N * N;
            ts_gemm(N, N, HEAD_DIM, q, C3, k, C3, 1, S, N, 0.0f);
            for (int i = 0; i < N * N; i++) S[i] = S[i] * ATTN_SCALE + tab[i];
            ts_softmax_rows(S, N, N);
            ts_gemm(N, HEAD_DIM, N, S, N, vv, C3, 0, o + h * HEAD_DIM, C, 0.0f);
        }
        ts_gemm_ex(N, C, C, o, C, v->proj_w, C, 1, a, C, 0.0f, v->proj_b, TS_ACT_NONE);
    } // a: N x C
    if (j->dump) memcpy(j->dump + (size_t)w * N * C, a, sizeof(float) * N * C);
    for (int p = 0; p < N; p++) {
        int gy = y0 + p / ws, gx = x0 + p % ws;
        if (gy >= R || gx >= R) continue;
        float *dst = j->t + ((size_t)gy * R + gx) * C;
        const float *src = a + (size_t)p * C;
        for (int c = 0; c < C; c++) dst[c] += src[c];
    }
}

/* Scratch floats one thread needs in attn_window. */
static size_t attn_scratch_per(int C, int ws) {
    size_t N = (size_t)ws * ws;
    return N * C * 3 + N * 3 * C + N * N + 16;
}

/* ---- forward ----------------------------------------------------------------------------- */

/* Arena layout (floats). Stage 0 dominates: x 256x256x64 plus two 256x256x256 hidden maps. */
#define SZ_X   ((size_t)256 * 256 * 64)
#define SZ_H   ((size_t)256 * 256 * 256)
#define SZ_MLP ((size_t)MLP_CHUNK * 320 + (size_t)MLP_CHUNK * 1280)

int ts_tiny_vit_forward(const ts_tiny_vit *enc, const float *input, float *out,
                        ts_stage_hook hook, void *user) {
    if (!enc || !input || !out)
        return ts_error(TINYSAM_E_ARG, "ts_tiny_vit_forward: NULL argument");
    const int nthreads = ts_num_threads();
    size_t attn_per = 0;
    for (int s = 1; s < N_STAGES; s++)
        attn_per = TS_MAX(attn_per, attn_scratch_per(DIMS[s], WINDOWS[s]));
    attn_per = (attn_per + 15) / 16 * 16;
    size_t n_attn = attn_per * (size_t)nthreads;
    size_t total = SZ_X + 2 * SZ_H + TS_MAX(n_attn, SZ_MLP);
    ts_tiny_vit *mut = (ts_tiny_vit *)enc; /* only the arena cache changes */
    float *arena = NULL;
    pthread_mutex_lock(&mut->arena_mu);
    if (mut->arena && mut->arena_n >= total) {
        arena = mut->arena;
        mut->arena = NULL;
    }
    pthread_mutex_unlock(&mut->arena_mu);
    if (!arena) arena = ts_malloc_aligned(total * sizeof(float));
    if (!arena) return ts_error_prefix(TINYSAM_E_NOMEM, "image encoder activations");
    float *bx = arena, *bh1 = bx + SZ_X, *bh2 = bh1 + SZ_H, *bscr = bh2 + SZ_H;
    hook_ctx hk = {hook, user, NULL};
    float *dump = NULL;
    if (hook) {
        /* one-off hook buffers, outside the layer loops */
        hk.tmp = ts_malloc_aligned(SZ_H * sizeof(float));
        dump = ts_malloc_aligned((size_t)19 * 19 * 49 * 128 * sizeof(float));
        if (!hk.tmp || !dump) {
            ts_free_aligned(hk.tmp);
            ts_free_aligned(dump);
            ts_free_aligned(arena);
            return ts_error_prefix(TINYSAM_E_NOMEM, "image encoder hook buffers");
        }
    }

    float *x = bx; /* running activations, NHWC */
    int R = 256;   /* current side */
    // ref: PatchEmbed.forward: Conv2d_BN s2 -> GELU -> Conv2d_BN s2
    {
        float *hwc = bh1; /* 1024 x 1024 x 3 */
        tr_job tj = {input, hwc, 3, IMG * IMG};
        ts_parallel_for(IMG * IMG / 16384, chw_to_hwc_task, &tj);
        ts_conv3x3_nhwc(hwc, IMG, IMG, 3, 2, enc->pe1.w, enc->pe1.b, 32, TS_ACT_GELU, bh2);
        ts_conv3x3_nhwc(bh2, 512, 512, 32, 2, enc->pe2.w, enc->pe2.b, 64, TS_ACT_NONE, x);
        report(&hk, "patch_embed", x, R * R, 64, 1);
    } // x: 256 x 256 x 64

    // ref: ConvLayer with MBConv blocks (§4.4)
    for (int b = 0; b < DEPTHS[0]; b++) {
        const conv_bn *cv = enc->mb[b];
        const int C = DIMS[0], Hd = 4 * C, L = R * R;
        ts_gemm_ex(L, Hd, C, x, C, cv[0].w, C, 1, bh1, Hd, 0.0f, cv[0].b, TS_ACT_GELU);
        ts_dwconv3x3_nhwc(bh1, R, R, Hd, 1, cv[1].w, cv[1].b, TS_ACT_GELU, bh2);
        /* x = GELU(x + conv3(h)): residual accumulated into x, GELU after the add */
        ts_gemm_ex(L, C, Hd, bh2, Hd, cv[2].w, Hd, 1, x, C, 1.0f, cv[2].b, TS_ACT_GELU);
        if (b == 0) report(&hk, "layers0_block0", x, L, C, 1);
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
                attn_job aj = {v, x, R, C, heads, ws, nw, bscr, attn_per,
                               (hook && s == 1 && b == 0) ? dump : NULL, nthreads};
                ts_parallel_for(nw * nw, attn_window, &aj); /* x = x + attn(x) */
                if (aj.dump) {
                    hk.hook(hk.user, "layers1_block0_attn", dump, (long long)nw * nw * ws * ws * C);
                }
                float *t2 = x == bx ? bh1 : bx;
                ts_dwconv3x3_nhwc(x, R, R, C, 1, v->local.w, v->local.b, TS_ACT_NONE, t2);
                x = t2; /* no residual around local_conv */
                // ref: Mlp.forward, x = x + fc2(GELU(fc1(LN(x)))) in row chunks
                for (int r0 = 0; r0 < L; r0 += MLP_CHUNK) {
                    int nr = TS_MIN(MLP_CHUNK, L - r0);
                    float *ln = bscr, *hid = bscr + (size_t)MLP_CHUNK * C;
                    float *xr = x + (size_t)r0 * C;
                    ts_layernorm_to(xr, ln, nr, C, v->mlp_ln_w, v->mlp_ln_b, LN_EPS);
                    ts_gemm_ex(nr, 4 * C, C, ln, C, v->fc1_w, C, 1, hid, 4 * C, 0.0f, v->fc1_b,
                               TS_ACT_GELU);
                    ts_gemm_ex(nr, C, 4 * C, hid, 4 * C, v->fc2_w, 4 * C, 1, xr, C, 1.0f,
                               v->fc2_b, TS_ACT_NONE);
                }
                if (b == 0 && s < 3) {
                    char name[32];
                    snprintf(name, sizeof name, "layers%d_block0", s);
                    report(&hk, name, x, L, C, 0);
                }
            }
        }
        if (s < 3) {
            // ref: PatchMerging.forward (§4.5): stride 1 into the 320-channel stage
            const conv_bn *cv = enc->merge[s];
            const int co = DIMS[s + 1], stride = co == 320 ? 1 : 2, L = R * R;
            const int Ro = (R - 1) / stride + 1;
            float *h1 = x == bh1 ? bh2 : bh1;
            float *h2 = h1 == bh1 ? bh2 : bh1; /* != h1; x is dead after conv1 */
            if (x == bh2) h2 = bx;
            ts_gemm_ex(L, co, C, x, C, cv[0].w, C, 1, h1, co, 0.0f, cv[0].b, TS_ACT_GELU);
            ts_dwconv3x3_nhwc(h1, R, R, co, stride, cv[1].w, cv[1].b, TS_ACT_GELU, h2);
            float *xo = bx == h2 ? bh1 : bx; /* any buffer but h2 (h1 is dead) */
            ts_gemm_ex(Ro * Ro, co, co, h2, co, cv[2].w, co, 1, xo, co, 0.0f, cv[2].b,
                       TS_ACT_NONE);
            x = xo;
            R = Ro;
        }
        char name[32];
        snprintf(name, sizeof name, "layers%d", s);
        report(&hk, name, x, R * R, DIMS[s < 3 ? s + 1 : 3], 0);
    } // x: 64 x 64 x 320 tokens

    // ref: ImageEncoderViT neck: 1x1 conv -> LayerNorm2d -> 3x3 conv -> LayerNorm2d (§4.8)
    {
        const int L = 64 * 64;
        float *n1 = x == bx ? bh1 : bx, *n2 = x == bh2 ? bh1 : bh2;
        if (n1 == n2) n2 = bx == x ? bh2 : bh1;
        ts_gemm_ex(L, 256, 320, x, 320, enc->neck0_w, 320, 1, n1, 256, 0.0f, NULL, TS_ACT_NONE);
        ts_layernorm(n1, L, 256, enc->neck1_w, enc->neck1_b, LN2D_EPS);
        ts_conv3x3_nhwc(n1, 64, 64, 256, 1, enc->neck2_w, NULL, 256, TS_ACT_NONE, n2);
        ts_layernorm(n2, L, 256, enc->neck3_w, enc->neck3_b, LN2D_EPS);
        transpose(n2, L, 256, out); /* to NCHW */
        if (hook) hook(user, "neck", out, (long long)256 * L);
    } // out: 256 x 64 x 64

    ts_free_aligned(hk.tmp);
    ts_free_aligned(dump);
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
