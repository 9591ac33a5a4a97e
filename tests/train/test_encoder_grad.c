/* test_encoder_grad.c - the student image encoder's backward (src/train/encoder_grad.c):
 *  (a) the float encoder against a double composition of the ts_g_* reference ops (Conv2d_BN
 *      = ts_g_conv2d + ts_g_batchnorm_eval, MBConv from them, ts_g_patchmerge, ts_g_tvblock,
 *      the neck from ts_g_conv2d + ts_g_layernorm2d) on a tiny encoder that exercises every
 *      path (window padding and none, several windows, merge strides 2 and 1): forward output
 *      and every tensor's gradient within 1e-4 of the tensor's max |g| (double);
 *  (b) case A parity (spec/DISTILL.md 6.2) of every image_encoder.* gradient: the encoder
 *      backward driven by the total dL/dE_S (the float decoder backward of decoder_grad.c plus
 *      the L_emb term), against distill/case_a/grads.json and grad_idx/grad_val.npy. */
#include "distill_case.h"
#include "eg_tiny.h"

#include "io/tensor_map.h"
#include "train/decoder_grad.h"
#include "train/encoder_grad.h"
#include "train/grad_ops.h"

#include <math.h>
#include <stdarg.h>

static uint64_t g_rng = 0x2545f4914f6cdd1dULL;
static double urand(void) { /* [-1, 1) */
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (double)(g_rng >> 11) / 4503599627370496.0 - 1.0;
}

/* ---- (a) the double reference of a whole (tiny) encoder ---------------------------------- */

typedef struct {
    const ts_eg_layout *L;
    double *base;
} dnet;

static double *T(const dnet *n, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static double *T(const dnet *n, const char *fmt, ...) {
    char name[TS_EG_NAME];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    int i = ts_eg_find(n->L, name);
    if (i < 0) {
        printf("  no tensor %s\n", name);
        return NULL;
    }
    return n->base + n->L->t[i].off;
}

static void cbn_bind(const dnet *n, ts_g_convbn *c, const char *prefix, int ci, int H, int co,
                     int k, int stride, int groups) {
    c->cv = (ts_g_conv2d){.Ci = ci, .H = H, .W = H, .Co = co, .k = k, .stride = stride,
                          .pad = k / 2, .groups = groups};
    c->w = T(n, "image_encoder.%s.c.weight", prefix);
    c->gamma = T(n, "image_encoder.%s.bn.weight", prefix);
    c->beta = T(n, "image_encoder.%s.bn.bias", prefix);
    c->mean = T(n, "image_encoder.%s.bn.running_mean", prefix);
    c->var = T(n, "image_encoder.%s.bn.running_var", prefix);
}

static size_t cbn_out(const ts_g_convbn *c) {
    return (size_t)c->cv.Co * ts_g_conv2d_out_h(&c->cv) * ts_g_conv2d_out_w(&c->cv);
}

/* y = BN(conv(x)) (raw: the conv output) */
static void cbn_fwd(const ts_g_convbn *c, const double *x, double *raw, double *y) {
    const int HW = ts_g_conv2d_out_h(&c->cv) * ts_g_conv2d_out_w(&c->cv);
    ts_g_conv2d_fwd(&c->cv, x, c->w, NULL, raw);
    ts_g_batchnorm_eval_fwd(raw, 1, c->cv.Co, HW, c->gamma, c->beta, c->mean, c->var, 1e-5, y);
}

static void cbn_bwd(const ts_g_convbn *c, const ts_g_convbn *g, const double *x,
                    const double *raw, const double *dy, double *dx) {
    const int HW = ts_g_conv2d_out_h(&c->cv) * ts_g_conv2d_out_w(&c->cv);
    double *dr = calloc(cbn_out(c), sizeof(double));
    ts_g_batchnorm_eval_bwd(raw, 1, c->cv.Co, HW, c->gamma, c->mean, c->var, 1e-5, dy, dr,
                            g->gamma, g->beta);
    ts_g_conv2d_bwd(&c->cv, x, c->w, dr, dx, g->w, NULL);
    free(dr);
}

static void tvb_bind(const dnet *n, ts_g_tvblock *b, int s, int k, int C, int heads, int ws,
                     int hidden) {
#define B(part) T(n, "image_encoder.layers.%d.blocks.%d.%s", s, k, part)
    b->attn = (ts_g_winattn){.C = C, .heads = heads, .ws = ws, .ln_w = B("attn.norm.weight"),
                             .ln_b = B("attn.norm.bias"), .qkv_w = B("attn.qkv.weight"),
                             .qkv_b = B("attn.qkv.bias"), .proj_w = B("attn.proj.weight"),
                             .proj_b = B("attn.proj.bias"), .bias = B("attn.attention_biases")};
    b->hidden = hidden;
    b->conv_w = B("local_conv.c.weight");
    b->bn_w = B("local_conv.bn.weight"), b->bn_b = B("local_conv.bn.bias");
    b->bn_mean = B("local_conv.bn.running_mean"), b->bn_var = B("local_conv.bn.running_var");
    b->ln_w = B("mlp.norm.weight"), b->ln_b = B("mlp.norm.bias");
    b->fc1_w = B("mlp.fc1.weight"), b->fc1_b = B("mlp.fc1.bias");
    b->fc2_w = B("mlp.fc2.weight"), b->fc2_b = B("mlp.fc2.bias");
#undef B
}

/* d[c][p] = s[p][c] */
static void tr_d(const double *s, int P, int C, double *d) {
    for (int p = 0; p < P; p++)
        for (int c = 0; c < C; c++) d[(size_t)c * P + p] = s[(size_t)p * C + c];
}

#define MAXM 64
/* The tiny encoder in double: forward keeps every module's input, backward from dout.
 * prm / grd: the layout's arrays in double. Returns 0 on success. */
static int ref_encoder(const ts_eg_layout *L, double *prm, double *grd, const double *img,
                       double *out, const double *dout) {
    const ts_eg_config *c = &L->c;
    dnet P = {L, prm}, G = {L, grd};
    double *keep[MAXM][12] = {{0}};
    int nk = 0, rc = 0;
    size_t big = 0;
    /* the largest tensor anywhere, generously */
    big = (size_t)c->img * c->img * 64 + 4096;
    double *x = malloc(sizeof(double) * big), *y = malloc(sizeof(double) * big);
    double *dx = calloc(big, sizeof(double)), *dy = calloc(big, sizeof(double));
    memcpy(x, img, sizeof(double) * 3 * c->img * c->img);
    int R = c->img;
    /* forward, module by module; keep[m] = {input, intermediates...}; x holds NCHW for the
     * convolutional modules, tokens for TinyViT blocks */
#define DUP(src, n) (keep[nk][kk] = malloc(sizeof(double) * (n)), \
                     memcpy(keep[nk][kk], (src), sizeof(double) * (n)), keep[nk][kk++])
#define NEW(n) (keep[nk][kk] = calloc((n), sizeof(double)), keep[nk][kk++])
    /* patch embed */
    ts_g_convbn pe[2];
    cbn_bind(&P, &pe[0], "patch_embed.seq.0", 3, R, c->dims[0] / 2, 3, 2, 1);
    cbn_bind(&P, &pe[1], "patch_embed.seq.2", c->dims[0] / 2, R / 2, c->dims[0], 3, 2, 1);
    {
        int kk = 0;
        double *in = DUP(x, 3 * (size_t)R * R), *r1 = NEW(cbn_out(&pe[0])),
               *b1 = NEW(cbn_out(&pe[0])), *h1 = NEW(cbn_out(&pe[0]));
        double *r2 = NEW(cbn_out(&pe[1]));
        cbn_fwd(&pe[0], in, r1, b1);
        ts_g_gelu_fwd(b1, cbn_out(&pe[0]), h1);
        cbn_fwd(&pe[1], h1, r2, x);
        nk++;
    }
    R /= 4;
    const int C0 = c->dims[0], Hd = C0 * c->mb_ratio;
    ts_g_convbn mb[TS_EG_MAX_MB][3];
    for (int b = 0; b < c->depths[0]; b++) {
        char p[64];
        snprintf(p, sizeof p, "layers.0.blocks.%d.conv1", b);
        cbn_bind(&P, &mb[b][0], p, C0, R, Hd, 1, 1, 1);
        snprintf(p, sizeof p, "layers.0.blocks.%d.conv2", b);
        cbn_bind(&P, &mb[b][1], p, Hd, R, Hd, 3, 1, Hd);
        snprintf(p, sizeof p, "layers.0.blocks.%d.conv3", b);
        cbn_bind(&P, &mb[b][2], p, Hd, R, C0, 1, 1, 1);
        int kk = 0;
        const size_t nx = (size_t)C0 * R * R, nh = (size_t)Hd * R * R;
        double *in = DUP(x, nx), *r1 = NEW(nh), *b1 = NEW(nh), *h1 = NEW(nh), *r2 = NEW(nh),
               *b2 = NEW(nh), *h2 = NEW(nh), *r3 = NEW(nx), *b3 = NEW(nx);
        cbn_fwd(&mb[b][0], in, r1, b1);
        ts_g_gelu_fwd(b1, nh, h1);
        cbn_fwd(&mb[b][1], h1, r2, b2);
        ts_g_gelu_fwd(b2, nh, h2);
        cbn_fwd(&mb[b][2], h2, r3, b3);
        for (size_t i = 0; i < nx; i++) b3[i] += in[i];
        ts_g_gelu_fwd(b3, nx, x);
        nk++;
    }
    ts_g_tvblock tb[TS_EG_MAX_VB];
    ts_g_convbn mg[3][3];
    int nvb = 0;
    for (int s = 0; s < 4; s++) {
        const int C = c->dims[s];
        for (int b = 0; s > 0 && b < c->depths[s]; b++, nvb++) {
            tvb_bind(&P, &tb[nvb], s, b, C, c->heads[s], c->windows[s], C * c->mlp_ratio);
            int kk = 0;
            double *in = DUP(x, (size_t)R * R * C);
            rc |= ts_g_tvblock_fwd(&tb[nvb], in, R, R, x);
            nk++;
        }
        if (s < 3) {
            const int co = c->dims[s + 1], st = c->merge_stride[s];
            char p[64];
            snprintf(p, sizeof p, "layers.%d.downsample.conv1", s);
            cbn_bind(&P, &mg[s][0], p, C, R, co, 1, 1, 1);
            snprintf(p, sizeof p, "layers.%d.downsample.conv2", s);
            cbn_bind(&P, &mg[s][1], p, co, R, co, 3, st, co);
            const int Ro = (R - 1) / st + 1;
            snprintf(p, sizeof p, "layers.%d.downsample.conv3", s);
            cbn_bind(&P, &mg[s][2], p, co, Ro, co, 1, 1, 1);
            int kk = 0;
            double *in = NEW((size_t)R * R * C);
            if (s == 0)
                memcpy(in, x, sizeof(double) * R * R * C);
            else
                tr_d(x, R * R, C, in); /* tokens -> NCHW */
            rc |= ts_g_patchmerge_fwd(mg[s], in, y);
            R = Ro;
            tr_d(y, co, R * R, x); /* NCHW -> tokens */
            nk++;
        }
    }
    /* neck: tokens -> NCHW, conv 1x1, LN2d, conv 3x3, LN2d */
    const int C3 = c->dims[3], E = c->neck, HW = R * R;
    ts_g_conv2d n0 = {.Ci = C3, .H = R, .W = R, .Co = E, .k = 1, .stride = 1, .pad = 0,
                      .groups = 1};
    ts_g_conv2d n2 = {.Ci = E, .H = R, .W = R, .Co = E, .k = 3, .stride = 1, .pad = 1,
                      .groups = 1};
    double *w0 = T(&P, "image_encoder.neck.0.weight"), *w2 = T(&P, "image_encoder.neck.2.weight");
    double *l1w = T(&P, "image_encoder.neck.1.weight"), *l1b = T(&P, "image_encoder.neck.1.bias");
    double *l3w = T(&P, "image_encoder.neck.3.weight"), *l3b = T(&P, "image_encoder.neck.3.bias");
    {
        int kk = 0;
        double *in = NEW((size_t)HW * C3), *a0 = NEW((size_t)E * HW), *a1 = NEW((size_t)E * HW),
               *a2 = NEW((size_t)E * HW);
        tr_d(x, HW, C3, in);
        ts_g_conv2d_fwd(&n0, in, w0, NULL, a0);
        ts_g_layernorm2d_fwd(a0, E, HW, l1w, l1b, 1e-6, a1);
        ts_g_conv2d_fwd(&n2, a1, w2, NULL, a2);
        ts_g_layernorm2d_fwd(a2, E, HW, l3w, l3b, 1e-6, out);
        nk++;
    }
    /* backward */
    {
        double **k = keep[--nk];
        memset(dx, 0, sizeof(double) * big);
        double *t1 = calloc((size_t)E * HW, sizeof(double)), *t2 = calloc((size_t)E * HW,
                                                                         sizeof(double));
        ts_g_layernorm2d_bwd(k[3], E, HW, l3w, 1e-6, dout, t1, T(&G, "image_encoder.neck.3.weight"),
                             T(&G, "image_encoder.neck.3.bias"));
        ts_g_conv2d_bwd(&n2, k[2], w2, t1, t2, T(&G, "image_encoder.neck.2.weight"), NULL);
        memset(t1, 0, sizeof(double) * E * HW);
        ts_g_layernorm2d_bwd(k[1], E, HW, l1w, 1e-6, t2, t1, T(&G, "image_encoder.neck.1.weight"),
                             T(&G, "image_encoder.neck.1.bias"));
        ts_g_conv2d_bwd(&n0, k[0], w0, t1, dx, T(&G, "image_encoder.neck.0.weight"), NULL);
        tr_d(dx, C3, HW, dy); /* NCHW -> tokens */
        free(t1), free(t2);
    }
    for (int s = 3; s >= 0; s--) {
        const int C = c->dims[s];
        if (s < 3) {
            /* dy: tokens of the merge output */
            double **k = keep[--nk];
            const int co = c->dims[s + 1], Ro = R;
            R = mg[s][0].cv.H;
            tr_d(dy, Ro * Ro, co, y);
            memset(dx, 0, sizeof(double) * big);
            ts_g_convbn gg[3];
            char p[64];
            for (int j = 0; j < 3; j++) {
                snprintf(p, sizeof p, "layers.%d.downsample.conv%d", s, j + 1);
                cbn_bind(&G, &gg[j], p, 1, 1, 1, 1, 1, 1);
            }
            rc |= ts_g_patchmerge_bwd(mg[s], k[0], y, dx, gg);
            if (s == 0)
                memcpy(dy, dx, sizeof(double) * R * R * C);
            else
                tr_d(dx, C, R * R, dy);
        }
        for (int b = (s > 0 ? c->depths[s] : 0) - 1; b >= 0; b--) {
            double **k = keep[--nk];
            nvb--;
            ts_g_tvblock g;
            tvb_bind(&G, &g, s, b, C, c->heads[s], c->windows[s], C * c->mlp_ratio);
            memset(dx, 0, sizeof(double) * big);
            rc |= ts_g_tvblock_bwd(&tb[nvb], k[0], R, R, dy, dx, &g);
            memcpy(dy, dx, sizeof(double) * R * R * C);
        }
    }
    for (int b = c->depths[0] - 1; b >= 0; b--) {
        double **k = keep[--nk];
        const size_t nx = (size_t)C0 * R * R, nh = (size_t)Hd * R * R;
        ts_g_convbn gg[3];
        char p[64];
        for (int j = 0; j < 3; j++) {
            snprintf(p, sizeof p, "layers.0.blocks.%d.conv%d", b, j + 1);
            cbn_bind(&G, &gg[j], p, 1, 1, 1, 1, 1, 1);
        }
        double *ds = calloc(nx, sizeof(double)), *dh = calloc(nh, sizeof(double));
        double *db = calloc(nh, sizeof(double));
        /* k: in r1 b1 h1 r2 b2 h2 r3 b3(sum) */
        ts_g_gelu_bwd(k[8], nx, dy, ds);
        memcpy(dx, ds, sizeof(double) * nx);
        cbn_bwd(&mb[b][2], &gg[2], k[6], k[7], ds, dh);
        ts_g_gelu_bwd(k[5], nh, dh, db);
        memset(dh, 0, sizeof(double) * nh);
        cbn_bwd(&mb[b][1], &gg[1], k[3], k[4], db, dh);
        memset(db, 0, sizeof(double) * nh);
        ts_g_gelu_bwd(k[2], nh, dh, db);
        cbn_bwd(&mb[b][0], &gg[0], k[0], k[1], db, dx);
        memcpy(dy, dx, sizeof(double) * nx);
        free(ds), free(dh), free(db);
    }
    {
        double **k = keep[--nk]; /* in r1 b1 h1 r2 */
        ts_g_convbn gg[2];
        cbn_bind(&G, &gg[0], "patch_embed.seq.0", 1, 1, 1, 1, 1, 1);
        cbn_bind(&G, &gg[1], "patch_embed.seq.2", 1, 1, 1, 1, 1, 1);
        double *dh = calloc(cbn_out(&pe[0]), sizeof(double));
        double *db = calloc(cbn_out(&pe[0]), sizeof(double));
        cbn_bwd(&pe[1], &gg[1], k[3], k[4], dy, dh);
        ts_g_gelu_bwd(k[2], cbn_out(&pe[0]), dh, db);
        memset(dx, 0, sizeof(double) * big);
        cbn_bwd(&pe[0], &gg[0], k[0], k[1], db, dx);
        free(dh), free(db);
    }
    for (int i = 0; i < MAXM; i++)
        for (int j = 0; j < 12; j++) free(keep[i][j]);
    free(x), free(y), free(dx), free(dy);
#undef DUP
#undef NEW
    return rc;
}

static const char *group_of(const char *name) {
    if (strstr(name, "patch_embed")) return "patch embed";
    if (strstr(name, "downsample")) return "PatchMerging";
    if (strstr(name, "layers.0.blocks")) return "MBConv";
    if (strstr(name, "neck")) return "neck";
    return "TinyViT block";
}

static void test_float_vs_double_tiny(void) {
    /* 48 -> 12 (stage 0, 1 MBConv) -> merge s2 -> 6 (ws 4: padded to 8, 4 windows) -> merge s2
     * -> 3 (ws 2: padded to 4, 2 blocks) -> merge s1 -> 3 (ws 3: one window, no padding) */
    ts_eg_config c = test_eg_tiny_config();
    static ts_eg_layout L;
    REQUIRE(ts_eg_layout_init(&L, &c) == 0, "layout: %s", tinysam_last_error());
    const int S = c.img, so = L.out_side, NO = c.neck * so * so;
    REQUIRE(so == 3, "output side %d", so);
    float *fp = malloc(sizeof(float) * L.total), *fg = calloc(L.total, sizeof(float));
    double *dp = malloc(sizeof(double) * L.total), *dg = calloc(L.total, sizeof(double));
    float *fimg = malloc(sizeof(float) * 3 * S * S), fout[16 * 9], fdo[16 * 9];
    double *dimg = malloc(sizeof(double) * 3 * S * S), dout[16 * 9], ddo[16 * 9];
    REQUIRE(fp && fg && dp && dg && fimg && dimg, "out of memory");
    test_eg_random_params(&L, 0.2, urand, fp);
    for (size_t i = 0; i < L.total; i++) dp[i] = fp[i];
    for (int i = 0; i < 3 * S * S; i++) fimg[i] = (float)urand(), dimg[i] = fimg[i];
    for (int i = 0; i < NO; i++) fdo[i] = (float)urand(), ddo[i] = fdo[i];
    ts_egf *e = NULL;
    REQUIRE(ts_egf_create(&L, fp, &e) == 0, "create: %s", tinysam_last_error());
    REQUIRE(ts_egf_forward(e, fimg, fout) == 0, "forward");
    REQUIRE(ts_egf_backward(e, fdo, fg) == 0, "backward");
    REQUIRE(ref_encoder(&L, dp, dg, dimg, dout, ddo) == 0, "double reference: %s",
            tinysam_last_error());
    double eo = 0, mo = 0;
    for (int i = 0; i < NO; i++) eo = fmax(eo, fabs(fout[i] - dout[i])), mo = fmax(mo, fabs(dout[i]));
    printf("  forward float vs double: max |diff| %.3g (of max %.3g)\n", eo, mo);
    CHECK(eo <= 1e-4 * mo, "forward differs");
    const char *groups[5] = {"patch embed", "MBConv", "PatchMerging", "TinyViT block", "neck"};
    double gw[5] = {0};
    const char *gn[5] = {"-", "-", "-", "-", "-"};
    int n_checked = 0;
    for (int i = 0; i < L.n; i++) {
        const ts_eg_tensor *t = &L.t[i];
        if (t->frozen) {
            for (size_t k = 0; k < t->numel; k++)
                CHECK(fg[t->off + k] == 0, "%s: frozen tensor got a gradient", t->name);
            continue;
        }
        double mx = 0, er = 0;
        for (size_t k = 0; k < t->numel; k++)
            mx = fmax(mx, fabs(dg[t->off + k])), er = fmax(er, fabs(fg[t->off + k] - dg[t->off + k]));
        double r = er / (1e-4 * mx + 1e-12);
        CHECK(mx > 0, "%s: no gradient", t->name);
        CHECK(r <= 1, "%s: float gradient off by %.3g of max %.3g", t->name, er, mx);
        for (int gi = 0; gi < 5; gi++)
            if (!strcmp(group_of(t->name), groups[gi]) && r > gw[gi]) gw[gi] = r, gn[gi] = t->name;
        n_checked++;
    }
    printf("  %d trainable tensors; worst |gf - gd| / (1e-4 max|gd|) per module kind:\n",
           n_checked);
    for (int gi = 0; gi < 5; gi++) printf("    %-14s %.3g (%s)\n", groups[gi], gw[gi], gn[gi]);
    /* the backward leaves the tape as it was and is deterministic: a second one gives the
     * same bits */
    float *fg2 = calloc(L.total, sizeof(float));
    REQUIRE(fg2, "out of memory");
    REQUIRE(ts_egf_backward(e, fdo, fg2) == 0, "second backward");
    CHECK(!memcmp(fg, fg2, sizeof(float) * L.total), "a second backward differs");
    free(fg2);
    ts_egf_free(e);
    free(fp), free(fg), free(dp), free(dg), free(fimg), free(dimg);
}

/* ---- (b) case A parity ------------------------------------------------------------------ */


static void test_case_a_encoder(void) {
    if (!dc_fixtures_present() || !fixture_exists("distill/case_a/grads.json"))
        SKIP("fixtures distill/ or the teacher model missing");
    dc_setup S;
    REQUIRE(dc_load(&S), "setup failed");
    dc_case_a A;
    ts_json *ex = NULL, *gj = NULL;
    ts_npy gi = {0}, gv = {0}, ei = {0}, ev = {0}, rs = {0};
    ts_tensor_map *sm = NULL;
    static ts_dg_layout DL;
    static ts_eg_layout EL;
    const int N = DC_NSET;
    const size_t C = TS_LOSS_CELLS, NE = TS_LOSS_EMB;
    float *zt = malloc(sizeof(float) * N * 4 * C), *tkt = malloc(sizeof(float) * N * TS_LOSS_TOK);
    float *zs = malloc(sizeof(float) * N * 4 * C), *tks = malloc(sizeof(float) * N * TS_LOSS_TOK);
    float *fdz = calloc((size_t)N * 4 * C, sizeof(float)), *fdemb = calloc(NE, sizeof(float));
    float *demb = calloc(NE, sizeof(float)), *emb = malloc(sizeof(float) * NE);
    float *input = malloc(sizeof(float) * 3 * DC_FR * DC_FR);
    float ut[4 * DC_NSET], us[4 * DC_NSET], fdu[4 * DC_NSET] = {0};
    float *fdt = calloc((size_t)N * TS_LOSS_TOK, sizeof(float));
    REQUIRE(zt && tkt && zs && tks && fdz && fdemb && demb && emb && input && fdt,
            "out of memory");
    REQUIRE(dc_case_a_load(&A), "case_a prompts");
    REQUIRE(ts_json_load(fixture("distill/case_a/expected.json"), &ex) == 0 &&
                ts_json_load(fixture("distill/case_a/grads.json"), &gj) == 0 &&
                ts_npy_load(fixture("distill/case_a/grad_idx.npy"), &gi) == 0 &&
                ts_npy_load(fixture("distill/case_a/grad_val.npy"), &gv) == 0 &&
                ts_npy_load(fixture("distill/case_a/grad_embedding_idx.npy"), &ei) == 0 &&
                ts_npy_load(fixture("distill/case_a/grad_embedding_val.npy"), &ev) == 0 &&
                ts_npy_load(fixture("reference/picture1/resized.npy"), &rs) == 0,
            "case_a fixture files");
    REQUIRE(gi.dtype == TS_DTYPE_I32 && gv.dtype == TS_DTYPE_F32 && gi.numel == gv.numel &&
                ei.dtype == TS_DTYPE_I32 && ev.dtype == TS_DTYPE_F32 && ei.numel == ev.numel,
            "sample arrays");
    REQUIRE(ts_map_load(fixture(DC_STUDENT), &sm) == 0, "student map: %s", tinysam_last_error());
    /* the encoder: forward on the normalised padded input, against the inference encoder */
    ts_eg_config ec;
    ts_eg_config_vit_t(&ec);
    REQUIRE(ts_eg_layout_init(&EL, &ec) == 0, "layout");
    float *ep = malloc(sizeof(float) * EL.total), *eg = calloc(EL.total, sizeof(float));
    REQUIRE(ep && eg, "out of memory");
    REQUIRE(ts_eg_load(&EL, sm, ep) == 0, "encoder load: %s", tinysam_last_error());
    ts_normalize_pad(rs.data, S.newh, S.neww, input);
    ts_egf *enc = NULL;
    REQUIRE(ts_egf_create(&EL, ep, &enc) == 0, "create: %s", tinysam_last_error());
    size_t tape_b, scr_b;
    ts_egf_memory(enc, &tape_b, &scr_b);
    double t0 = ts_now_ms();
    REQUIRE(ts_egf_forward(enc, input, emb) == 0, "forward: %s", tinysam_last_error());
    double t_fwd = ts_now_ms() - t0, ee = 0, me = 0;
    for (size_t i = 0; i < NE; i++)
        ee = fmax(ee, fabs(emb[i] - S.emb_s[i])), me = fmax(me, fabs(S.emb_s[i]));
    t0 = ts_now_ms(); /* the inference encoder on the same input, for scale */
    REQUIRE(ts_tiny_vit_forward(S.student->encoder, input, demb, NULL, NULL) == 0, "inference");
    const double t_inf = ts_now_ms() - t0;
    memset(demb, 0, sizeof(float) * NE);
    printf("  encoder forward %.0f ms (inference encoder %.0f ms; tape %.0f MB, scratch %.0f MB);"
           " vs the inference encoder: max |diff| %.3g (of max %.3g)\n", t_fwd, t_inf,
           tape_b / 1048576.0, scr_b / 1048576.0, ee, me);
    CHECK(ee <= 1e-4 * me, "training forward differs from the inference encoder");
    /* teacher outputs (inference decoder), student decoder (float, with grad) on our E_S */
    REQUIRE(ts_sam_decode_tokens(S.teacher->prompt_encoder, S.teacher->mask_decoder, S.emb_t, N,
                                 A.ps, zt, ut, tkt) == 0,
            "teacher decode: %s", tinysam_last_error());
    ts_dg_config dcfg;
    ts_dg_config_sam(&dcfg);
    REQUIRE(ts_dg_layout_init(&DL, &dcfg) == 0, "decoder layout");
    double *dprm = malloc(sizeof(double) * DL.total), dgauss[256];
    float *fprm = malloc(sizeof(float) * DL.total), *fgrd = calloc(DL.total, sizeof(float));
    float fgauss[256];
    REQUIRE(dprm && fprm && fgrd, "out of memory");
    REQUIRE(ts_dg_load(&DL, sm, dprm, dgauss) == 0, "decoder load: %s", tinysam_last_error());
    for (size_t i = 0; i < DL.total; i++) fprm[i] = (float)dprm[i];
    for (int i = 0; i < 256; i++) fgauss[i] = (float)dgauss[i];
    ts_dgf *df = NULL;
    REQUIRE(ts_dgf_create(&DL, fprm, fgauss, &df) == 0, "decoder create: %s",
            tinysam_last_error());
    REQUIRE(ts_dgf_forward(df, emb, N, A.ps, zs, us, tks) == 0, "decoder forward: %s",
            tinysam_last_error());
    const uint8_t *gp[DC_NSET];
    for (int i = 0; i < N; i++) gp[i] = S.glow + (size_t)A.gt[i] * C;
    ts_loss_inputs in = {.N = N, .emb_s = emb, .emb_t = S.emb_t, .tok_s = tks, .tok_t = tkt,
                         .z_s = zs, .z_t = zt, .u_s = us, .u_t = ut, .g = gp, .n_real = A.n_real};
    ts_loss_config lc;
    ts_loss_config_default(&lc);
    ts_loss_result r;
    REQUIRE(ts_loss_step(&lc, &in, &r, NULL) == 0, "loss step");
    /* 6.2: counts that differ only in near-zero cells -> the reference's H and selections */
    float H[DC_NSET];
    int ss[DC_NSET], st[DC_NSET];
    dc_check_counts(ex, &r, N, zt, zs, C, H, ss, st, &in);
    ts_loss_grads lg = {.emb = fdemb, .tok = fdt, .z = fdz, .u = fdu};
    REQUIRE(ts_loss_step(&lc, &in, &r, &lg) == 0, "loss step");
    printf("  L_total %.7f (reference %.7f)\n", r.L_total, ts_json_num(ex, "L_total", NAN));
    REQUIRE(ts_dgf_backward(df, emb, N, A.ps, fdz, fdu, fdt, fgrd, demb) == 0,
            "decoder backward: %s", tinysam_last_error());
    for (size_t i = 0; i < NE; i++) demb[i] += fdemb[i]; /* the L_emb term (5.1) */
    dc_crit ce = {.min_cos = 1.0};
    const ts_json *ej = ts_json_get(gj, "embedding");
    dc_grad_criteria(&ce, "dL/dE_S", NULL, demb, NE, ts_json_num(ej, "grad_norm", NAN),
                     ts_json_num(ej, "grad_max_abs", NAN), ei.data, ev.data, (int)ei.numel, 0, 0);
    printf("  dL/dE_S (input of the encoder backward): sampled %.3g, norm %.3g, max %.3g, "
           "cosine %.9f\n", ce.worst_sample, ce.worst_norm, ce.worst_max, ce.min_cos);
    /* the encoder backward */
    t0 = ts_now_ms();
    REQUIRE(ts_egf_backward(enc, demb, eg) == 0, "backward: %s", tinysam_last_error());
    printf("  encoder backward %.0f ms\n", ts_now_ms() - t0);
    const char *kinds[5] = {"patch embed", "MBConv", "PatchMerging", "TinyViT blocks", "neck"};
    double mf[5], mb[5];
    ts_egf_times(enc, 0, mf);
    ts_egf_times(enc, 1, mb);
    for (int k = 0; k < 5; k++)
        printf("    %-14s forward %6.0f ms, backward %6.0f ms\n", kinds[k], mf[k], mb[k]);
    dc_crit cr = {.min_cos = 1.0};
    const ts_json *ts = ts_json_get(gj, "tensors");
    const int32_t *idx = gi.data;
    const float *val = gv.data;
    int n_enc = 0, n_fail = 0;
    const int verbose = getenv("TINYSAM_VERBOSE") != NULL;
    for (int j = 0; ts && j < ts->n; j++) {
        const ts_json *e = ts_json_at(ts, j);
        const char *name = ts_json_get(e, "name")->string;
        if (strncmp(name, "image_encoder.", 14)) continue;
        n_enc++;
        int ti = ts_eg_find(&EL, name);
        CHECK(ti >= 0 && !EL.t[ti].frozen, "%s: not a trainable tensor of the layout", name);
        if (ti < 0) continue;
        const ts_eg_tensor *T = &EL.t[ti];
        const int off = (int)ts_json_num(e, "offset", -1), cnt = (int)ts_json_num(e, "count", -1);
        REQUIRE(off >= 0 && cnt > 0 && (int64_t)off + cnt <= gi.numel, "%s: samples", name);
        n_fail += !dc_grad_criteria(&cr, name, NULL, eg + T->off, T->numel,
                                    ts_json_num(e, "grad_norm", NAN),
                                    ts_json_num(e, "grad_max_abs", NAN), idx + off, val + off,
                                    cnt, 0, verbose);
    }
    {   /* fixed task splits and fixed-order sums: one thread gives the same bits */
        const int nt = tinysam_get_num_threads();
        float *eg1 = calloc(EL.total, sizeof(float)), *emb1 = malloc(sizeof(float) * NE);
        REQUIRE(eg1 && emb1, "out of memory");
        tinysam_set_num_threads(1);
        REQUIRE(ts_egf_forward(enc, input, emb1) == 0, "forward");
        REQUIRE(ts_egf_backward(enc, demb, eg1) == 0, "backward");
        tinysam_set_num_threads(0);
        CHECK(!memcmp(emb, emb1, sizeof(float) * NE), "forward at 1 thread differs from %d", nt);
        CHECK(!memcmp(eg, eg1, sizeof(float) * EL.total), "gradients at 1 thread differ from %d",
              nt);
        printf("  1 thread vs %d: embedding and gradients %s\n", nt,
               memcmp(eg, eg1, sizeof(float) * EL.total) ? "differ" : "bit-identical");
        free(eg1), free(emb1);
    }
    if (verbose) { /* steady-state timing: the tape's pages are touched now */
        float *eg2 = calloc(EL.total, sizeof(float));
        REQUIRE(eg2, "out of memory");
        t0 = ts_now_ms();
        REQUIRE(ts_egf_forward(enc, input, emb) == 0, "forward");
        const double t1 = ts_now_ms();
        REQUIRE(ts_egf_backward(enc, demb, eg2) == 0, "backward");
        printf("  second pass: forward %.0f ms, backward %.0f ms; gradients %s\n", t1 - t0,
               ts_now_ms() - t1, memcmp(eg, eg2, sizeof(float) * EL.total) ? "differ" : "identical");
        free(eg2);
    }
    int n_train = 0;
    for (int i = 0; i < EL.n; i++) n_train += !EL.t[i].frozen;
    printf("  %d image_encoder tensors in the fixture (%d trainable in the layout), %d failing\n",
           n_enc, n_train, n_fail);
    CHECK(n_enc == 217 && n_train == 217, "tensor counts");
    printf("  worst ratios to the allowed error (<= 1 passes):\n"
           "    sampled |g - g_ref|: %.3g (%s)\n    L2 norm: %.3g (%s)\n    max |g|: %.3g (%s)\n"
           "    lowest cosine %.9f (%s)\n", cr.worst_sample, cr.n_sample, cr.worst_norm,
           cr.n_norm, cr.worst_max, cr.n_max, cr.min_cos, cr.n_min_cos ? cr.n_min_cos : "-");
    ts_egf_free(enc);
    ts_dgf_free(df);
    ts_map_free(sm);
    free(ep), free(eg), free(dprm), free(fprm), free(fgrd);
    ts_npy_free(&gi), ts_npy_free(&gv), ts_npy_free(&ei), ts_npy_free(&ev), ts_npy_free(&rs);
    ts_json_free(ex), ts_json_free(gj);
    dc_case_a_free(&A);
    dc_free(&S);
    free(zt), free(tkt), free(zs), free(tks), free(fdz), free(fdemb), free(demb), free(emb);
    free(input), free(fdt);
}

int main(void) {
    RUN(test_float_vs_double_tiny);
    RUN(test_case_a_encoder);
    return test_summary();
}
