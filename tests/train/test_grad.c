/* test_grad.c - finite-difference checks of the double-precision backward operations
 * (src/train/grad_ops.c), spec/DISTILL.md section 6.1: f(x) = sum w * op(x) with random w,
 * central differences with h = 1e-6 on every element of every input and parameter, pass when
 * |num - ana| <= 1e-6 + 1e-5 * max(|num|, |ana|). Plus: each double forward against the
 * engine's float kernel (same function), the += contract, and Adam against its formula. */
#include "nn/nn.h"
#include "test.h"
#include "train/grad_ops.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define FD_H 1e-6

/* ---------------------------------------------------------------------------------------- */
/* helpers                                                                                  */

static uint64_t g_rng = 0x2545F4914F6CDD1Dull;
static double urand(double lo, double hi)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return lo + (hi - lo) * ((double)(g_rng >> 11) * (1.0 / 9007199254740992.0));
}

static double *rvec(size_t n, double lo, double hi)
{
    double *p = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) p[i] = urand(lo, hi);
    return p;
}
static double *zvec(size_t n) { return calloc(n ? n : 1, sizeof(double)); }

/* Moves values closer than 1e-3 to kink away from it (ReLU at 0, l1 at equality). */
static void avoid_kink(double *x, size_t n, const double *kink)
{
    for (size_t i = 0; i < n; i++) {
        double k = kink ? kink[i] : 0.0;
        if (fabs(x[i] - k) < 2e-3) x[i] = k + (x[i] >= k ? 2e-3 : -2e-3);
    }
}

static double dot(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

/* One differentiable variable: its values (perturbed in place) and its analytic gradient. */
typedef struct {
    const char *name;
    double *v;
    const double *ana;
    size_t n;
} fd_var;

static double g_worst_abs;   /* max |num - ana| over every check of the run */
static double g_worst_ratio; /* max |num - ana| / tolerance over every check of the run */

/* Central differences of f on every element of every variable against the analytic
 * gradients; reports the worst error of this op. */
static void fd_check(const char *op, double (*f)(void *), void *ctx, const fd_var *vars, int nv)
{
    double worst = 0, ratio = 0;
    size_t count = 0, fails = 0;
    for (int k = 0; k < nv; k++)
        for (size_t i = 0; i < vars[k].n; i++) {
            double x0 = vars[k].v[i];
            volatile double xp = x0 + FD_H, xm = x0 - FD_H;
            vars[k].v[i] = xp;
            double fp = f(ctx);
            vars[k].v[i] = xm;
            double fm = f(ctx);
            vars[k].v[i] = x0;
            double num = (fp - fm) / (xp - xm), ana = vars[k].ana[i];
            double err = fabs(num - ana), tol = 1e-6 + 1e-5 * fmax(fabs(num), fabs(ana));
            if (!(err <= tol) && fails++ < 4)
                CHECK(0, "%s: d/d%s[%zu] numeric %.12g analytic %.12g", op, vars[k].name, i,
                      num, ana);
            if (err > worst) worst = err;
            if (err / tol > ratio) ratio = err / tol;
            count++;
        }
    CHECK(fails == 0, "%s: %zu of %zu derivatives off", op, fails, count);
    printf("  %-28s %6zu derivatives, max |num-ana| %.2e (%.3f of tolerance)\n", op, count,
           worst, ratio);
    if (worst > g_worst_abs) g_worst_abs = worst;
    if (ratio > g_worst_ratio) g_worst_ratio = ratio;
}

/* ---------------------------------------------------------------------------------------- */
/* element-wise                                                                             */

typedef struct {
    double *x, *w, *y;
    size_t n;
    int M, N; /* softmax rows */
} ew_ctx;

static double f_gelu(void *p)
{
    ew_ctx *c = p;
    ts_g_gelu_fwd(c->x, c->n, c->y);
    return dot(c->w, c->y, c->n);
}
static double f_relu(void *p)
{
    ew_ctx *c = p;
    ts_g_relu_fwd(c->x, c->n, c->y);
    return dot(c->w, c->y, c->n);
}
static double f_softmax(void *p)
{
    ew_ctx *c = p;
    ts_g_softmax_rows_fwd(c->x, c->M, c->N, c->y);
    return dot(c->w, c->y, c->n);
}

static void test_gelu_fd(void)
{
    ew_ctx c = {rvec(1000, -4, 4), rvec(1000, -1, 1), zvec(1000), 1000, 0, 0};
    double *dx = zvec(1000);
    ts_g_gelu_bwd(c.x, c.n, c.w, dx);
    fd_var v[] = {{"x", c.x, dx, c.n}};
    fd_check("gelu", f_gelu, &c, v, 1);
    free(c.x), free(c.w), free(c.y), free(dx);
}

static void test_relu_fd(void)
{
    ew_ctx c = {rvec(1000, -4, 4), rvec(1000, -1, 1), zvec(1000), 1000, 0, 0};
    avoid_kink(c.x, c.n, NULL);
    double *dx = zvec(1000);
    ts_g_relu_bwd(c.x, c.n, c.w, dx);
    fd_var v[] = {{"x", c.x, dx, c.n}};
    fd_check("relu", f_relu, &c, v, 1);
    free(c.x), free(c.w), free(c.y), free(dx);
}

static void test_softmax_fd(void)
{
    static const int lens[] = {1, 2, 49};
    for (int t = 0; t < 3; t++) {
        int M = 4, N = lens[t];
        size_t n = (size_t)M * N;
        ew_ctx c = {rvec(n, -4, 4), rvec(n, -1, 1), zvec(n), n, M, N};
        double *dx = zvec(n);
        ts_g_softmax_rows_fwd(c.x, M, N, c.y);
        ts_g_softmax_rows_bwd(c.y, M, N, c.w, dx);
        char name[48];
        snprintf(name, sizeof name, "softmax rows of %d", N);
        fd_var v[] = {{"x", c.x, dx, n}};
        fd_check(name, f_softmax, &c, v, 1);
        free(c.x), free(c.w), free(c.y), free(dx);
    }
}

/* ---------------------------------------------------------------------------------------- */
/* LayerNorm, LayerNorm2d, BatchNorm2d                                                      */

typedef struct {
    double *x, *wt, *b, *w, *y, *mean, *var;
    int M, C, HW, N, kind; /* kind: 0 LN, 1 LN2d, 2 BN eval, 3 BN train */
    double eps;
} norm_ctx;

static double f_norm(void *p)
{
    norm_ctx *c = p;
    size_t n = 0;
    switch (c->kind) {
    case 0:
        ts_g_layernorm_fwd(c->x, c->M, c->C, c->wt, c->b, c->eps, c->y);
        n = (size_t)c->M * c->C;
        break;
    case 1:
        ts_g_layernorm2d_fwd(c->x, c->C, c->HW, c->wt, c->b, c->eps, c->y);
        n = (size_t)c->C * c->HW;
        break;
    case 2:
        ts_g_batchnorm_eval_fwd(c->x, c->N, c->C, c->HW, c->wt, c->b, c->mean, c->var, c->eps,
                                c->y);
        n = (size_t)c->N * c->C * c->HW;
        break;
    default:
        ts_g_batchnorm_train_fwd(c->x, c->N, c->C, c->HW, c->wt, c->b, c->eps, c->y, NULL, NULL);
        n = (size_t)c->N * c->C * c->HW;
        break;
    }
    return dot(c->w, c->y, n);
}

static void norm_case(int kind, int M_or_N, int C, int HW, double eps)
{
    norm_ctx c = {0};
    c.kind = kind, c.C = C, c.eps = eps;
    size_t n;
    if (kind == 0) c.M = M_or_N, n = (size_t)M_or_N * C;
    else if (kind == 1) c.HW = HW, n = (size_t)C * HW;
    else c.N = M_or_N, c.HW = HW, n = (size_t)M_or_N * C * HW;
    c.x = rvec(n, -2, 2), c.w = rvec(n, -1, 1), c.y = zvec(n);
    c.wt = rvec((size_t)C, 0.5, 1.5), c.b = rvec((size_t)C, -0.5, 0.5);
    c.mean = rvec((size_t)C, -0.5, 0.5), c.var = rvec((size_t)C, 0.2, 2);
    double *dx = zvec(n), *dw = zvec((size_t)C), *db = zvec((size_t)C);
    switch (kind) {
    case 0: ts_g_layernorm_bwd(c.x, c.M, C, c.wt, eps, c.w, dx, dw, db); break;
    case 1: ts_g_layernorm2d_bwd(c.x, C, HW, c.wt, eps, c.w, dx, dw, db); break;
    case 2:
        ts_g_batchnorm_eval_bwd(c.x, c.N, C, HW, c.wt, c.mean, c.var, eps, c.w, dx, dw, db);
        break;
    default: ts_g_batchnorm_train_bwd(c.x, c.N, C, HW, c.wt, eps, c.w, dx, dw, db); break;
    }
    static const char *const kinds[] = {"layernorm", "layernorm2d", "batchnorm eval",
                                        "batchnorm train"};
    char name[64];
    snprintf(name, sizeof name, "%s C=%d", kinds[kind], C);
    fd_var v[] = {{"x", c.x, dx, n}, {"weight", c.wt, dw, (size_t)C}, {"bias", c.b, db, (size_t)C}};
    fd_check(name, f_norm, &c, v, 3);
    free(c.x), free(c.w), free(c.y), free(c.wt), free(c.b), free(c.mean), free(c.var);
    free(dx), free(dw), free(db);
}

static void test_layernorm_fd(void)
{
    norm_case(0, 3, 1, 0, 1e-5);
    norm_case(0, 3, 5, 0, 1e-5);
    norm_case(0, 3, 256, 0, 1e-5);
}

static void test_layernorm2d_fd(void)
{
    norm_case(1, 0, 1, 6, 1e-6);
    norm_case(1, 0, 5, 6, 1e-6);
    norm_case(1, 0, 256, 3, 1e-6);
}

static void test_batchnorm_fd(void)
{
    norm_case(2, 2, 3, 20, 1e-5); /* batch 2, 3 channels, 4x5 */
    norm_case(3, 2, 3, 20, 1e-5);
}

/* ---------------------------------------------------------------------------------------- */
/* Linear, convolutions                                                                     */

typedef struct {
    double *x, *W, *b, *w, *y;
    int M, K, N;
    ts_g_conv2d cv;
    int kind; /* 0 linear, 1 conv2d, 2 conv transpose (cv.k, cv.stride used) */
    size_t ny;
} lin_ctx;

static double f_lin(void *p)
{
    lin_ctx *c = p;
    if (c->kind == 0) ts_g_linear_fwd(c->x, c->M, c->K, c->W, c->b, c->N, c->y);
    else if (c->kind == 1) ts_g_conv2d_fwd(&c->cv, c->x, c->W, c->b, c->y);
    else
        ts_g_convt2d_fwd(c->x, c->cv.Ci, c->cv.H, c->cv.W, c->W, c->b, c->cv.Co, c->cv.k,
                         c->cv.stride, c->y);
    return dot(c->w, c->y, c->ny);
}

static void test_linear_fd(void)
{
    lin_ctx c = {0};
    c.M = 3, c.K = 5, c.N = 4, c.ny = 12;
    c.x = rvec(15, -1, 1), c.W = rvec(20, -1, 1), c.b = rvec(4, -1, 1);
    c.w = rvec(12, -1, 1), c.y = zvec(12);
    double *dx = zvec(15), *dW = zvec(20), *db = zvec(4);
    ts_g_linear_bwd(c.x, 3, 5, c.W, 4, c.w, dx, dW, db);
    fd_var v[] = {{"x", c.x, dx, 15}, {"W", c.W, dW, 20}, {"b", c.b, db, 4}};
    fd_check("linear 5->4, 3 rows", f_lin, &c, v, 3);
    free(c.x), free(c.W), free(c.b), free(c.w), free(c.y), free(dx), free(dW), free(db);
}

static void conv_case(const char *name, int kind, ts_g_conv2d cv)
{
    lin_ctx c = {0};
    c.kind = kind, c.cv = cv;
    size_t nx = (size_t)cv.Ci * cv.H * cv.W, nw, ny;
    if (kind == 1) {
        nw = (size_t)cv.Co * (cv.Ci / cv.groups) * cv.k * cv.k;
        ny = (size_t)cv.Co * ts_g_conv2d_out_h(&cv) * ts_g_conv2d_out_w(&cv);
    } else {
        nw = (size_t)cv.Ci * cv.Co * cv.k * cv.k;
        ny = (size_t)cv.Co * ((cv.H - 1) * cv.stride + cv.k) * ((cv.W - 1) * cv.stride + cv.k);
    }
    c.ny = ny;
    c.x = rvec(nx, -1, 1), c.W = rvec(nw, -1, 1), c.b = rvec((size_t)cv.Co, -1, 1);
    c.w = rvec(ny, -1, 1), c.y = zvec(ny);
    double *dx = zvec(nx), *dW = zvec(nw), *db = zvec((size_t)cv.Co);
    if (kind == 1) ts_g_conv2d_bwd(&cv, c.x, c.W, c.w, dx, dW, db);
    else ts_g_convt2d_bwd(c.x, cv.Ci, cv.H, cv.W, c.W, cv.Co, cv.k, cv.stride, c.w, dx, dW, db);
    fd_var v[] = {{"x", c.x, dx, nx}, {"weight", c.W, dW, nw}, {"bias", c.b, db, (size_t)cv.Co}};
    fd_check(name, f_lin, &c, v, 3);
    free(c.x), free(c.W), free(c.b), free(c.w), free(c.y), free(dx), free(dW), free(db);
}

static void test_conv2d_fd(void)
{
    /*                          Ci H  W  Co k  s  p  g */
    conv_case("conv 3x3 s2 3->4 9x9", 1, (ts_g_conv2d){3, 9, 9, 4, 3, 2, 1, 1});
    conv_case("conv 3x3 s1 3->4 5x6", 1, (ts_g_conv2d){3, 5, 6, 4, 3, 1, 1, 1});
    conv_case("conv 1x1 5->6 4x3", 1, (ts_g_conv2d){5, 4, 3, 6, 1, 1, 0, 1});
}

static void test_dwconv_fd(void)
{
    conv_case("dwconv 3x3 s1 7x7", 1, (ts_g_conv2d){4, 7, 7, 4, 3, 1, 1, 4});
    conv_case("dwconv 3x3 s2 7x7", 1, (ts_g_conv2d){4, 7, 7, 4, 3, 2, 1, 4});
    conv_case("dwconv 3x3 s1 8x8", 1, (ts_g_conv2d){4, 8, 8, 4, 3, 1, 1, 4});
    conv_case("dwconv 3x3 s2 8x8", 1, (ts_g_conv2d){4, 8, 8, 4, 3, 2, 1, 4});
}

static void test_k2s2_fd(void)
{
    conv_case("conv k2 s2 4->3 3x3", 1, (ts_g_conv2d){4, 3, 3, 3, 2, 2, 0, 1});
    conv_case("conv k2 s2 4->3 6x4", 1, (ts_g_conv2d){4, 6, 4, 3, 2, 2, 0, 1});
    conv_case("convT k2 s2 4->3 3x3", 2, (ts_g_conv2d){4, 3, 3, 3, 2, 2, 0, 1});
}

/* ---------------------------------------------------------------------------------------- */
/* TinyViT window attention                                                                 */

typedef struct {
    ts_g_winattn p;
    double *x, *w, *y;
    int H, W;
} wa_ctx;

static double f_winattn(void *q)
{
    wa_ctx *c = q;
    if (ts_g_winattn_fwd(&c->p, c->x, c->H, c->W, c->y)) return NAN;
    return dot(c->w, c->y, (size_t)c->H * c->W * c->p.C);
}

static void winattn_case(int H, int W)
{
    const int C = 8, heads = 2, ws = 3;
    wa_ctx c = {0};
    c.H = H, c.W = W;
    c.p.C = C, c.p.heads = heads, c.p.ws = ws;
    size_t nx = (size_t)H * W * C;
    c.x = rvec(nx, -1, 1), c.w = rvec(nx, -1, 1), c.y = zvec(nx);
    c.p.ln_w = rvec(C, 0.5, 1.5), c.p.ln_b = rvec(C, -0.5, 0.5);
    c.p.qkv_w = rvec(3 * C * C, -0.5, 0.5), c.p.qkv_b = rvec(3 * C, -0.5, 0.5);
    c.p.proj_w = rvec(C * C, -0.5, 0.5), c.p.proj_b = rvec(C, -0.5, 0.5);
    c.p.bias = rvec(heads * ws * ws, -1, 1);
    ts_g_winattn g = c.p;
    g.ln_w = zvec(C), g.ln_b = zvec(C), g.qkv_w = zvec(3 * C * C), g.qkv_b = zvec(3 * C);
    g.proj_w = zvec(C * C), g.proj_b = zvec(C), g.bias = zvec(heads * ws * ws);
    double *dx = zvec(nx);
    CHECK(ts_g_winattn_bwd(&c.p, c.x, H, W, c.w, dx, &g) == 0, "winattn_bwd failed");
    fd_var v[] = {
        {"x", c.x, dx, nx},
        {"norm.weight", c.p.ln_w, g.ln_w, C},
        {"norm.bias", c.p.ln_b, g.ln_b, C},
        {"qkv.weight", c.p.qkv_w, g.qkv_w, 3 * C * C},
        {"qkv.bias", c.p.qkv_b, g.qkv_b, 3 * C},
        {"proj.weight", c.p.proj_w, g.proj_w, C * C},
        {"proj.bias", c.p.proj_b, g.proj_b, C},
        {"attention_biases", c.p.bias, g.bias, heads * ws * ws},
    };
    char name[64];
    snprintf(name, sizeof name, "window attention %dx%d", H, W);
    fd_check(name, f_winattn, &c, v, 8);
    /* the table gradient (scatter-add over all windows) is checked above; it must not be
     * trivially zero */
    double babs = 0;
    for (int i = 0; i < heads * ws * ws; i++) babs += fabs(g.bias[i]);
    CHECK(babs > 0, "bias table got no gradient");
    free(c.x), free(c.w), free(c.y), free(dx);
    free(c.p.ln_w), free(c.p.ln_b), free(c.p.qkv_w), free(c.p.qkv_b), free(c.p.proj_w);
    free(c.p.proj_b), free(c.p.bias);
    free(g.ln_w), free(g.ln_b), free(g.qkv_w), free(g.qkv_b), free(g.proj_w), free(g.proj_b);
    free(g.bias);
}

static void test_winattn_fd(void)
{
    winattn_case(5, 5); /* padded to 6x6 */
    winattn_case(6, 6); /* no padding */
    winattn_case(4, 7); /* padded rows and columns differently */
}

/* A window grid with one window equals plain attention written out independently here:
 * checks the head-major qkv split, the scale and the bias index |drow|*ws + |dcol|. */
static void test_winattn_forward(void)
{
    const int C = 4, heads = 2, ws = 2, T = 4, d = 2;
    ts_g_winattn p = {C, heads, ws, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    p.ln_w = rvec(C, 0.5, 1.5), p.ln_b = rvec(C, -0.5, 0.5);
    p.qkv_w = rvec(3 * C * C, -1, 1), p.qkv_b = rvec(3 * C, -1, 1);
    p.proj_w = rvec(C * C, -1, 1), p.proj_b = rvec(C, -1, 1), p.bias = rvec(heads * T, -1, 1);
    double *x = rvec(T * C, -1, 1), *y = zvec(T * C);
    REQUIRE(ts_g_winattn_fwd(&p, x, 2, 2, y) == 0, "fwd failed");
    double xn[16], qkv[48], o[16], want[16];
    ts_g_layernorm_fwd(x, T, C, p.ln_w, p.ln_b, 1e-5, xn);
    ts_g_linear_fwd(xn, T, C, p.qkv_w, p.qkv_b, 3 * C, qkv);
    /* token i at (i / 2, i % 2); bias index |dr| * 2 + |dc| */
    static const int idx[4][4] = {{0, 1, 2, 3}, {1, 0, 3, 2}, {2, 3, 0, 1}, {3, 2, 1, 0}};
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < T; i++) {
            double a[4], mx = -1e300, s = 0;
            for (int j = 0; j < T; j++) {
                a[j] = (qkv[i * 12 + h * 6] * qkv[j * 12 + h * 6 + 2] +
                        qkv[i * 12 + h * 6 + 1] * qkv[j * 12 + h * 6 + 3]) /
                           sqrt(2.0) +
                       p.bias[h * T + idx[i][j]];
                mx = fmax(mx, a[j]);
            }
            for (int j = 0; j < T; j++) s += (a[j] = exp(a[j] - mx));
            for (int e = 0; e < d; e++) {
                double acc = 0;
                for (int j = 0; j < T; j++) acc += a[j] / s * qkv[j * 12 + h * 6 + 4 + e];
                o[i * C + h * d + e] = acc;
            }
        }
    ts_g_linear_fwd(o, T, C, p.proj_w, p.proj_b, C, want);
    double err = 0;
    for (int i = 0; i < T * C; i++) err = fmax(err, fabs(y[i] - want[i]));
    CHECK(err < 1e-12, "window attention forward differs by %g", err);
    free(p.ln_w), free(p.ln_b), free(p.qkv_w), free(p.qkv_b), free(p.proj_w), free(p.proj_b);
    free(p.bias), free(x), free(y);
}

typedef struct {
    ts_g_tvblock p;
    double *x, *w, *y;
    int H, W;
} tb_ctx;

static double f_tvblock(void *q)
{
    tb_ctx *c = q;
    if (ts_g_tvblock_fwd(&c->p, c->x, c->H, c->W, c->y)) return NAN;
    return dot(c->w, c->y, (size_t)c->H * c->W * c->p.attn.C);
}

/* Full TinyViT block, spec 6.1: C = 8, 2 heads, window 3, grid 4x4 (padded to 6x6), MLP 4C. */
static void test_tvblock_fd(void)
{
    const int C = 8, heads = 2, ws = 3, H = 4, W = 4, hid = 32;
    tb_ctx c;
    memset(&c, 0, sizeof c);
    c.H = H, c.W = W;
    ts_g_tvblock *p = &c.p;
    p->attn.C = C, p->attn.heads = heads, p->attn.ws = ws, p->hidden = hid;
    ts_g_tvblock g; /* gradients; shape fields unused */
    memset(&g, 0, sizeof g);
    /* parameter table: member in p, same member in g, size, range */
    struct {
        const char *name;
        double **v, **gv;
        size_t n;
        double lo, hi;
    } t[] = {
        {"attn.norm.weight", &p->attn.ln_w, &g.attn.ln_w, C, 0.5, 1.5},
        {"attn.norm.bias", &p->attn.ln_b, &g.attn.ln_b, C, -0.5, 0.5},
        {"attn.qkv.weight", &p->attn.qkv_w, &g.attn.qkv_w, 3 * C * C, -0.5, 0.5},
        {"attn.qkv.bias", &p->attn.qkv_b, &g.attn.qkv_b, 3 * C, -0.5, 0.5},
        {"attn.proj.weight", &p->attn.proj_w, &g.attn.proj_w, C * C, -0.5, 0.5},
        {"attn.proj.bias", &p->attn.proj_b, &g.attn.proj_b, C, -0.5, 0.5},
        {"attn.attention_biases", &p->attn.bias, &g.attn.bias, heads * ws * ws, -1, 1},
        {"local_conv.c.weight", &p->conv_w, &g.conv_w, C * 9, -0.5, 0.5},
        {"local_conv.bn.weight", &p->bn_w, &g.bn_w, C, 0.5, 1.5},
        {"local_conv.bn.bias", &p->bn_b, &g.bn_b, C, -0.5, 0.5},
        {"mlp.norm.weight", &p->ln_w, &g.ln_w, C, 0.5, 1.5},
        {"mlp.norm.bias", &p->ln_b, &g.ln_b, C, -0.5, 0.5},
        {"mlp.fc1.weight", &p->fc1_w, &g.fc1_w, hid * C, -0.5, 0.5},
        {"mlp.fc1.bias", &p->fc1_b, &g.fc1_b, hid, -0.5, 0.5},
        {"mlp.fc2.weight", &p->fc2_w, &g.fc2_w, C * hid, -0.5, 0.5},
        {"mlp.fc2.bias", &p->fc2_b, &g.fc2_b, C, -0.5, 0.5},
    };
    enum { NT = sizeof t / sizeof t[0] };
    for (int i = 0; i < NT; i++) *t[i].v = rvec(t[i].n, t[i].lo, t[i].hi);
    p->bn_mean = rvec(C, -0.3, 0.3), p->bn_var = rvec(C, 0.3, 2);
    for (int i = 0; i < NT; i++) *t[i].gv = zvec(t[i].n);
    size_t nx = (size_t)H * W * C;
    c.x = rvec(nx, -1, 1), c.w = rvec(nx, -1, 1), c.y = zvec(nx);
    double *dx = zvec(nx);
    CHECK(ts_g_tvblock_bwd(p, c.x, H, W, c.w, dx, &g) == 0, "tvblock_bwd failed");
    fd_var v[NT + 1];
    v[0] = (fd_var){"x", c.x, dx, nx};
    for (int i = 0; i < NT; i++) v[i + 1] = (fd_var){t[i].name, *t[i].v, *t[i].gv, t[i].n};
    fd_check("TinyViT block 4x4", f_tvblock, &c, v, NT + 1);
    for (int i = 0; i < NT; i++) free(*t[i].v), free(*t[i].gv);
    free(p->bn_mean), free(p->bn_var), free(c.x), free(c.w), free(c.y), free(dx);
}

typedef struct {
    ts_g_convbn p[3];
    double *x, *w, *y;
    size_t ny;
} pm_ctx;

static double f_patchmerge(void *q)
{
    pm_ctx *c = q;
    if (ts_g_patchmerge_fwd(c->p, c->x, c->y)) return NAN;
    return dot(c->w, c->y, c->ny);
}

/* PatchMerging, spec 6.1: 4 -> 6 channels, 8x8, stride 2 and stride 1. */
static void test_patchmerge_fd(void)
{
    for (int s = 2; s >= 1; s--) {
        pm_ctx c;
        ts_g_convbn g[3];
        memset(&c, 0, sizeof c);
        memset(g, 0, sizeof g);
        const int Ho = (8 - 1) / s + 1;
        c.p[0].cv = (ts_g_conv2d){4, 8, 8, 6, 1, 1, 0, 1};
        c.p[1].cv = (ts_g_conv2d){6, 8, 8, 6, 3, s, 1, 6};
        c.p[2].cv = (ts_g_conv2d){6, Ho, Ho, 6, 1, 1, 0, 1};
        fd_var v[10];
        size_t nx = 4 * 8 * 8;
        c.ny = (size_t)6 * Ho * Ho;
        c.x = rvec(nx, -1, 1), c.w = rvec(c.ny, -1, 1), c.y = zvec(c.ny);
        double *dx = zvec(nx);
        for (int i = 0; i < 3; i++) {
            size_t nw = (size_t)6 * (c.p[i].cv.Ci / c.p[i].cv.groups) * c.p[i].cv.k * c.p[i].cv.k;
            c.p[i].w = rvec(nw, -0.8, 0.8), g[i].w = zvec(nw);
            c.p[i].gamma = rvec(6, 0.5, 1.5), g[i].gamma = zvec(6);
            c.p[i].beta = rvec(6, -0.5, 0.5), g[i].beta = zvec(6);
            c.p[i].mean = rvec(6, -0.3, 0.3), c.p[i].var = rvec(6, 0.3, 2);
            v[1 + 3 * i] = (fd_var){"conv.weight", c.p[i].w, g[i].w, nw};
            v[2 + 3 * i] = (fd_var){"bn.weight", c.p[i].gamma, g[i].gamma, 6};
            v[3 + 3 * i] = (fd_var){"bn.bias", c.p[i].beta, g[i].beta, 6};
        }
        v[0] = (fd_var){"x", c.x, dx, nx};
        CHECK(ts_g_patchmerge_bwd(c.p, c.x, c.w, dx, g) == 0, "patchmerge_bwd failed");
        fd_check(s == 2 ? "PatchMerging 4->6 s2" : "PatchMerging 4->6 s1", f_patchmerge, &c, v,
                 10);
        for (int i = 0; i < 3; i++) {
            free(c.p[i].w), free(c.p[i].gamma), free(c.p[i].beta), free(c.p[i].mean);
            free(c.p[i].var), free(g[i].w), free(g[i].gamma), free(g[i].beta);
        }
        free(c.x), free(c.w), free(c.y), free(dx);
    }
    /* a chain that does not fit is refused */
    ts_g_convbn bad[3];
    memset(bad, 0, sizeof bad);
    bad[0].cv = (ts_g_conv2d){4, 8, 8, 6, 1, 1, 0, 1};
    bad[1].cv = (ts_g_conv2d){5, 8, 8, 5, 3, 2, 1, 5};
    bad[2].cv = (ts_g_conv2d){5, 4, 4, 6, 1, 1, 0, 1};
    double x[256] = {0}, y[96];
    CHECK(ts_g_patchmerge_fwd(bad, x, y) < 0, "mismatched chain accepted");
}

static void test_batchnorm_running(void)
{
    /* batch statistics from the train forward, then PyTorch's update (momentum 0.1) */
    double x[2 * 3 * 20], y[2 * 3 * 20], g[3] = {1, 1, 1}, b[3] = {0, 0, 0};
    double bm[3], bv[3], rm[3] = {0.1, 0.2, 0.3}, rv[3] = {1, 2, 3};
    for (int i = 0; i < 120; i++) x[i] = urand(-2, 2);
    ts_g_batchnorm_train_fwd(x, 2, 3, 20, g, b, 1e-5, y, bm, bv);
    ts_g_batchnorm_running_update(rm, rv, bm, bv, 3, 40, 0.1);
    double err = 0;
    for (int c = 0; c < 3; c++) {
        double m = 0, ss = 0;
        for (int n = 0; n < 2; n++)
            for (int i = 0; i < 20; i++) m += x[(n * 3 + c) * 20 + i];
        m /= 40;
        for (int n = 0; n < 2; n++)
            for (int i = 0; i < 20; i++) ss += pow(x[(n * 3 + c) * 20 + i] - m, 2);
        err = fmax(err, fabs(rm[c] - (0.9 * 0.1 * (c + 1) + 0.1 * m)));
        err = fmax(err, fabs(rv[c] - (0.9 * (c + 1) + 0.1 * ss / 39)));
    }
    CHECK(err < 1e-14, "running statistics off by %g", err);
}

/* ---------------------------------------------------------------------------------------- */
/* decoder attention, repeat                                                                */

typedef struct {
    ts_g_attn p;
    double *q, *k, *v, *w, *y;
    int Nq, Nk;
} at_ctx;

static double f_attn(void *u)
{
    at_ctx *c = u;
    if (ts_g_attn_fwd(&c->p, c->q, c->Nq, c->k, c->v, c->Nk, c->y)) return NAN;
    return dot(c->w, c->y, (size_t)c->Nq * c->p.E);
}

/* shared = 1: q, k and v are one tensor (layer-0 self-attention), its gradient the sum. */
static void attn_case(int shared)
{
    const int E = 16, I = 8, heads = 2, Nq = shared ? 6 : 3, Nk = shared ? 6 : 10;
    at_ctx c = {{E, I, heads, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL}, NULL, NULL,
                NULL, NULL, NULL, Nq, Nk};
    double **pw[] = {&c.p.q_w, &c.p.k_w, &c.p.v_w};
    double **pb[] = {&c.p.q_b, &c.p.k_b, &c.p.v_b};
    for (int i = 0; i < 3; i++)
        *pw[i] = rvec((size_t)I * E, -0.5, 0.5), *pb[i] = rvec(I, -0.5, 0.5);
    c.p.o_w = rvec((size_t)E * I, -0.5, 0.5), c.p.o_b = rvec(E, -0.5, 0.5);
    c.q = rvec((size_t)Nq * E, -1, 1);
    c.k = shared ? c.q : rvec((size_t)Nk * E, -1, 1);
    c.v = shared ? c.q : rvec((size_t)Nk * E, -1, 1);
    c.w = rvec((size_t)Nq * E, -1, 1), c.y = zvec((size_t)Nq * E);
    ts_g_attn g = c.p;
    g.q_w = zvec(I * E), g.k_w = zvec(I * E), g.v_w = zvec(I * E), g.o_w = zvec(E * I);
    g.q_b = zvec(I), g.k_b = zvec(I), g.v_b = zvec(I), g.o_b = zvec(E);
    double *dq = zvec((size_t)Nq * E), *dk = shared ? dq : zvec((size_t)Nk * E);
    double *dv = shared ? dq : zvec((size_t)Nk * E);
    CHECK(ts_g_attn_bwd(&c.p, c.q, Nq, c.k, c.v, Nk, c.w, dq, dk, dv, &g) == 0, "attn_bwd");
    fd_var v[] = {
        {"q_proj.weight", c.p.q_w, g.q_w, I * E}, {"q_proj.bias", c.p.q_b, g.q_b, I},
        {"k_proj.weight", c.p.k_w, g.k_w, I * E}, {"k_proj.bias", c.p.k_b, g.k_b, I},
        {"v_proj.weight", c.p.v_w, g.v_w, I * E}, {"v_proj.bias", c.p.v_b, g.v_b, I},
        {"out_proj.weight", c.p.o_w, g.o_w, E * I}, {"out_proj.bias", c.p.o_b, g.o_b, E},
        {"q", c.q, dq, (size_t)Nq * E}, {"k", c.k, dk, (size_t)Nk * E},
        {"v", c.v, dv, (size_t)Nk * E},
    };
    fd_check(shared ? "decoder attention q=k=v 6" : "decoder attention 3q x 10k", f_attn, &c, v,
             shared ? 9 : 11);
    free(c.p.q_w), free(c.p.k_w), free(c.p.v_w), free(c.p.o_w);
    free(c.p.q_b), free(c.p.k_b), free(c.p.v_b), free(c.p.o_b);
    free(g.q_w), free(g.k_w), free(g.v_w), free(g.o_w), free(g.q_b), free(g.k_b), free(g.v_b);
    free(g.o_b), free(c.w), free(c.y), free(c.q), free(dq);
    if (!shared) free(c.k), free(c.v), free(dk), free(dv);
}

static void test_attn_fd(void)
{
    attn_case(0);
    attn_case(1);
}

/* The decoder attention forward against the formula written out here (heads = consecutive
 * channel blocks of the projections, scale 1/sqrt(d)). */
static void test_attn_forward(void)
{
    const int E = 6, I = 4, heads = 2, d = 2, Nq = 2, Nk = 3;
    ts_g_attn p = {E, I, heads, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    p.q_w = rvec(I * E, -1, 1), p.k_w = rvec(I * E, -1, 1), p.v_w = rvec(I * E, -1, 1);
    p.q_b = rvec(I, -1, 1), p.k_b = rvec(I, -1, 1), p.v_b = rvec(I, -1, 1);
    p.o_w = rvec(E * I, -1, 1), p.o_b = rvec(E, -1, 1);
    double *q = rvec(Nq * E, -1, 1), *k = rvec(Nk * E, -1, 1), *v = rvec(Nk * E, -1, 1);
    double y[12], qp[8], kp[12], vp[12], o[8], want[12];
    REQUIRE(ts_g_attn_fwd(&p, q, Nq, k, v, Nk, y) == 0, "fwd failed");
    for (int r = 0; r < Nk; r++)
        for (int c = 0; c < I; c++) {
            double a = p.k_b[c], b = p.v_b[c];
            for (int e = 0; e < E; e++) a += k[r * E + e] * p.k_w[c * E + e];
            for (int e = 0; e < E; e++) b += v[r * E + e] * p.v_w[c * E + e];
            kp[r * I + c] = a, vp[r * I + c] = b;
            if (r >= Nq) continue;
            a = p.q_b[c];
            for (int e = 0; e < E; e++) a += q[r * E + e] * p.q_w[c * E + e];
            qp[r * I + c] = a;
        }
    for (int h = 0; h < heads; h++)
        for (int i = 0; i < Nq; i++) {
            double a[3], s = 0;
            for (int j = 0; j < Nk; j++) {
                a[j] = exp((qp[i * I + 2 * h] * kp[j * I + 2 * h] +
                            qp[i * I + 2 * h + 1] * kp[j * I + 2 * h + 1]) / sqrt(2.0));
                s += a[j];
            }
            for (int e = 0; e < d; e++) {
                double acc = 0;
                for (int j = 0; j < Nk; j++) acc += a[j] / s * vp[j * I + h * d + e];
                o[i * I + h * d + e] = acc;
            }
        }
    for (int i = 0; i < Nq; i++)
        for (int c = 0; c < E; c++) {
            double a = p.o_b[c];
            for (int e = 0; e < I; e++) a += o[i * I + e] * p.o_w[c * I + e];
            want[i * E + c] = a;
        }
    double err = 0;
    for (int i = 0; i < Nq * E; i++) err = fmax(err, fabs(y[i] - want[i]));
    CHECK(err < 1e-12, "decoder attention forward differs by %g", err);
    free(p.q_w), free(p.k_w), free(p.v_w), free(p.q_b), free(p.k_b), free(p.v_b);
    free(p.o_w), free(p.o_b), free(q), free(k), free(v);
}

/* A randomly initialised attention module, its zeroed gradient, and their fd_vars (8). */
static void attn_init(ts_g_attn *p, ts_g_attn *g, int E, int I, int heads, fd_var *v)
{
    *p = (ts_g_attn){E, I, heads, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL};
    *g = *p;
    double **pp[] = {&p->q_w, &p->q_b, &p->k_w, &p->k_b, &p->v_w, &p->v_b, &p->o_w, &p->o_b};
    double **gp[] = {&g->q_w, &g->q_b, &g->k_w, &g->k_b, &g->v_w, &g->v_b, &g->o_w, &g->o_b};
    static const char *const names[] = {"q_proj.weight", "q_proj.bias", "k_proj.weight",
                                        "k_proj.bias",   "v_proj.weight", "v_proj.bias",
                                        "out_proj.weight", "out_proj.bias"};
    for (int i = 0; i < 8; i++) {
        size_t n = (i & 1) ? (size_t)(i == 7 ? E : I) : (size_t)E * I;
        *pp[i] = rvec(n, -0.5, 0.5), *gp[i] = zvec(n);
        v[i] = (fd_var){names[i], *pp[i], *gp[i], n};
    }
}

static void attn_free(ts_g_attn *p)
{
    free(p->q_w), free(p->q_b), free(p->k_w), free(p->k_b);
    free(p->v_w), free(p->v_b), free(p->o_w), free(p->o_b);
}

typedef struct {
    ts_g_twoway p;
    double *q, *k, *qpe, *kpe, *wq, *wk, *qo, *ko;
    int Nq, Nk;
} tw_ctx;

static double f_twoway(void *u)
{
    tw_ctx *c = u;
    if (ts_g_twoway_fwd(&c->p, c->q, c->Nq, c->k, c->Nk, c->qpe, c->kpe, c->qo, c->ko))
        return NAN;
    return dot(c->wq, c->qo, (size_t)c->Nq * c->p.E) + dot(c->wk, c->ko, (size_t)c->Nk * c->p.E);
}

/* SAM's TwoWayAttentionBlock.forward, step by step from the primitives; returns the max
 * difference to ts_g_twoway_fwd and the smallest |ReLU input| in *hmin. */
static double twoway_ref(tw_ctx *c, double *hmin)
{
    const ts_g_twoway *p = &c->p;
    const int E = p->E, M = p->mlp, Nq = c->Nq, Nk = c->Nk;
    const size_t qe = (size_t)Nq * E, ke = (size_t)Nk * E;
    double *Q = zvec(qe), *t = zvec(qe), *a = zvec(qe), *K = zvec(ke), *kk = zvec(ke);
    double *ka = zvec(ke), *h = zvec((size_t)Nq * M);
    if (p->skip_first_layer_pe) {
        ts_g_attn_fwd(&p->self_attn, c->q, Nq, c->q, c->q, Nq, a);
        memcpy(Q, a, qe * sizeof(double));
    } else {
        for (size_t i = 0; i < qe; i++) t[i] = c->q[i] + c->qpe[i];
        ts_g_attn_fwd(&p->self_attn, t, Nq, t, c->q, Nq, a);
        for (size_t i = 0; i < qe; i++) Q[i] = c->q[i] + a[i];
    }
    ts_g_layernorm_fwd(Q, Nq, E, p->n1_w, p->n1_b, 1e-5, Q);
    for (size_t i = 0; i < qe; i++) t[i] = Q[i] + c->qpe[i];
    for (size_t i = 0; i < ke; i++) kk[i] = c->k[i] + c->kpe[i];
    ts_g_attn_fwd(&p->t2i, t, Nq, kk, c->k, Nk, a);
    for (size_t i = 0; i < qe; i++) Q[i] += a[i];
    ts_g_layernorm_fwd(Q, Nq, E, p->n2_w, p->n2_b, 1e-5, Q);
    ts_g_linear_fwd(Q, Nq, E, p->l1_w, p->l1_b, M, h);
    *hmin = 1e300;
    for (size_t i = 0; i < (size_t)Nq * M; i++) {
        *hmin = fmin(*hmin, fabs(h[i]));
        h[i] = h[i] > 0 ? h[i] : 0;
    }
    ts_g_linear_fwd(h, Nq, M, p->l2_w, p->l2_b, E, a);
    for (size_t i = 0; i < qe; i++) Q[i] += a[i];
    ts_g_layernorm_fwd(Q, Nq, E, p->n3_w, p->n3_b, 1e-5, Q);
    for (size_t i = 0; i < qe; i++) t[i] = Q[i] + c->qpe[i];
    ts_g_attn_fwd(&p->i2t, kk, Nk, t, Q, Nq, ka);
    for (size_t i = 0; i < ke; i++) K[i] = c->k[i] + ka[i];
    ts_g_layernorm_fwd(K, Nk, E, p->n4_w, p->n4_b, 1e-5, K);
    ts_g_twoway_fwd(p, c->q, Nq, c->k, Nk, c->qpe, c->kpe, c->qo, c->ko);
    double err = 0;
    for (size_t i = 0; i < qe; i++) err = fmax(err, fabs(Q[i] - c->qo[i]));
    for (size_t i = 0; i < ke; i++) err = fmax(err, fabs(K[i] - c->ko[i]));
    free(Q), free(t), free(a), free(K), free(kk), free(ka), free(h);
    return err;
}

/* Two-way block, spec 6.1: embedding 16, 2 heads, MLP 32, 6 tokens, 4x4 image; with and
 * without the layer-0 rule. */
static void test_twoway_fd(void)
{
    for (int skip = 0; skip <= 1; skip++) {
        const int E = 16, M = 32, Nq = 6, Nk = 16;
        tw_ctx c;
        ts_g_twoway g;
        memset(&c, 0, sizeof c);
        memset(&g, 0, sizeof g);
        c.Nq = Nq, c.Nk = Nk;
        c.p.E = g.E = E, c.p.mlp = g.mlp = M, c.p.skip_first_layer_pe = skip;
        fd_var v[3 * 8 + 12 + 4];
        int nv = 0;
        attn_init(&c.p.self_attn, &g.self_attn, E, E, 2, v + nv), nv += 8;
        attn_init(&c.p.t2i, &g.t2i, E, E / 2, 2, v + nv), nv += 8;
        attn_init(&c.p.i2t, &g.i2t, E, E / 2, 2, v + nv), nv += 8;
        struct {
            const char *name;
            double **v, **gv;
            size_t n;
            double lo, hi;
        } t[] = {
            {"norm1.weight", &c.p.n1_w, &g.n1_w, E, 0.5, 1.5},
            {"norm1.bias", &c.p.n1_b, &g.n1_b, E, -0.5, 0.5},
            {"norm2.weight", &c.p.n2_w, &g.n2_w, E, 0.5, 1.5},
            {"norm2.bias", &c.p.n2_b, &g.n2_b, E, -0.5, 0.5},
            {"norm3.weight", &c.p.n3_w, &g.n3_w, E, 0.5, 1.5},
            {"norm3.bias", &c.p.n3_b, &g.n3_b, E, -0.5, 0.5},
            {"norm4.weight", &c.p.n4_w, &g.n4_w, E, 0.5, 1.5},
            {"norm4.bias", &c.p.n4_b, &g.n4_b, E, -0.5, 0.5},
            {"mlp.lin1.weight", &c.p.l1_w, &g.l1_w, M * E, -0.5, 0.5},
            {"mlp.lin1.bias", &c.p.l1_b, &g.l1_b, M, -0.5, 0.5},
            {"mlp.lin2.weight", &c.p.l2_w, &g.l2_w, E * M, -0.5, 0.5},
            {"mlp.lin2.bias", &c.p.l2_b, &g.l2_b, E, -0.5, 0.5},
        };
        for (int i = 0; i < 12; i++) {
            *t[i].v = rvec(t[i].n, t[i].lo, t[i].hi), *t[i].gv = zvec(t[i].n);
            v[nv++] = (fd_var){t[i].name, *t[i].v, *t[i].gv, t[i].n};
        }
        size_t qe = (size_t)Nq * E, ke = (size_t)Nk * E;
        c.q = rvec(qe, -1, 1), c.k = rvec(ke, -1, 1), c.qpe = rvec(qe, -1, 1);
        c.kpe = rvec(ke, -1, 1), c.wq = rvec(qe, -1, 1), c.wk = rvec(ke, -1, 1);
        c.qo = zvec(qe), c.ko = zvec(ke);
        /* the wiring against SAM's forward written out here; the MLP's ReLU inputs must
         * stay 1e-3 away from the kink (new lin1 values until they do) */
        double hmin = 0, err = 0;
        for (int tries = 0; tries < 20; tries++) {
            err = twoway_ref(&c, &hmin);
            if (hmin > 1e-3) break;
            for (int i = 0; i < M * E; i++) c.p.l1_w[i] = urand(-0.5, 0.5);
            for (int i = 0; i < M; i++) c.p.l1_b[i] = urand(-0.5, 0.5);
        }
        CHECK(err < 1e-12, "two-way forward differs from the reference by %g", err);
        REQUIRE(hmin > 1e-3, "a ReLU input is %g from the kink", hmin);
        double *dq = zvec(qe), *dk = zvec(ke), *dqpe = zvec(qe), *dkpe = zvec(ke);
        CHECK(ts_g_twoway_bwd(&c.p, c.q, Nq, c.k, Nk, c.qpe, c.kpe, c.wq, c.wk, dq, dk, dqpe,
                              dkpe, &g) == 0,
              "twoway_bwd failed");
        v[nv++] = (fd_var){"queries", c.q, dq, qe};
        v[nv++] = (fd_var){"keys", c.k, dk, ke};
        v[nv++] = (fd_var){"query_pe", c.qpe, dqpe, qe};
        v[nv++] = (fd_var){"key_pe", c.kpe, dkpe, ke};
        fd_check(skip ? "two-way block, layer 0" : "two-way block", f_twoway, &c, v, nv);
        attn_free(&c.p.self_attn), attn_free(&c.p.t2i), attn_free(&c.p.i2t);
        attn_free(&g.self_attn), attn_free(&g.t2i), attn_free(&g.i2t);
        for (int i = 0; i < 12; i++) free(*t[i].v), free(*t[i].gv);
        free(c.q), free(c.k), free(c.qpe), free(c.kpe), free(c.wq), free(c.wk), free(c.qo);
        free(c.ko), free(dq), free(dk), free(dqpe), free(dkpe);
    }
}

typedef struct {
    double *x, *w, *y;
} rp_ctx;

static double f_repeat(void *u)
{
    rp_ctx *c = u;
    ts_g_repeat_fwd(c->x, 10, 3, c->y);
    return dot(c->w, c->y, 30);
}

static void test_repeat_fd(void)
{
    rp_ctx c = {rvec(10, -1, 1), rvec(30, -1, 1), zvec(30)};
    double *dx = zvec(10);
    ts_g_repeat_bwd(10, 3, c.w, dx);
    fd_var v[] = {{"E", c.x, dx, 10}};
    fd_check("repeat to 3 sets + sum", f_repeat, &c, v, 1);
    free(c.x), free(c.w), free(c.y), free(dx);
}

/* ---------------------------------------------------------------------------------------- */
/* hypernetwork product                                                                     */

typedef struct {
    double *hyper, *up, *w, *y;
    int N, T, Cc, P;
} hy_ctx;

static double f_hyper(void *q)
{
    hy_ctx *c = q;
    ts_g_hyper_fwd(c->hyper, c->up, c->N, c->T, c->Cc, c->P, c->y);
    return dot(c->w, c->y, (size_t)c->N * c->T * c->P);
}

static void test_hyper_fd(void)
{
    hy_ctx c = {NULL, NULL, NULL, NULL, 2, 4, 3, 25};
    size_t nh = 2 * 4 * 3, nu = 2 * 3 * 25, ny = 2 * 4 * 25;
    c.hyper = rvec(nh, -1, 1), c.up = rvec(nu, -1, 1), c.w = rvec(ny, -1, 1), c.y = zvec(ny);
    double *dh = zvec(nh), *du = zvec(nu);
    ts_g_hyper_bwd(c.hyper, c.up, 2, 4, 3, 25, c.w, dh, du);
    fd_var v[] = {{"hyper", c.hyper, dh, nh}, {"upscaled", c.up, du, nu}};
    fd_check("hypernetwork product", f_hyper, &c, v, 2);
    free(c.hyper), free(c.up), free(c.w), free(c.y), free(dh), free(du);
}

/* ---------------------------------------------------------------------------------------- */
/* losses                                                                                   */

typedef struct {
    double *z, *g, *H;
    size_t n;
    int kind, K, N;
    int elig[4];
    double w;
} loss_ctx;

static double f_loss(void *q)
{
    loss_ctx *c = q;
    switch (c->kind) {
    case 0: return c->w * ts_g_l1_fwd(c->z, c->g, c->n);
    case 1: return c->w * ts_g_focal_fwd(c->z, c->g, c->n);
    case 2: return c->w * ts_g_dice_fwd(c->z, c->g, c->n);
    case 3: return c->w * ts_g_mask_loss_fwd(c->z, c->g, c->K, c->n, c->elig, NULL);
    default: { /* gamma * (1/N) sum_i H_i * L_out,i with H given (constants) */
        double s = 0;
        for (int i = 0; i < c->N; i++)
            s += c->H[i] * ts_g_l1_fwd(c->z + i * c->n, c->g + i * c->n, c->n);
        return c->w * s / c->N;
    }
    }
}

static double *binary_target(size_t n)
{
    double *g = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) g[i] = urand(0, 1) < 0.4 ? 1.0 : 0.0;
    return g;
}

static void test_l1_fd(void)
{
    loss_ctx c = {0};
    c.kind = 0, c.n = 64, c.w = 1.7;
    c.z = rvec(64, -2, 2), c.g = rvec(64, -2, 2);
    avoid_kink(c.z, 64, c.g);
    double *dz = zvec(64);
    ts_g_l1_bwd(c.z, c.g, 64, c.w, dz);
    fd_var v[] = {{"a", c.z, dz, 64}};
    fd_check("l1 mean 8x8", f_loss, &c, v, 1);
    /* sign(0) = 0: a tensor equal to its target gets no gradient */
    double a = 0.5, b = 0.5, da = 0;
    ts_g_l1_bwd(&a, &b, 1, 1.0, &da);
    CHECK(da == 0.0, "sign(0) must be 0, got %g", da);
    free(c.z), free(c.g), free(dz);
}

static void test_focal_dice_fd(void)
{
    for (int kind = 1; kind <= 2; kind++) {
        loss_ctx c = {0};
        c.kind = kind, c.n = 64, c.w = 0.9;
        c.z = rvec(64, -6, 6), c.g = binary_target(64);
        double *dz = zvec(64);
        if (kind == 1) ts_g_focal_bwd(c.z, c.g, 64, c.w, dz);
        else ts_g_dice_bwd(c.z, c.g, 64, c.w, dz);
        fd_var v[] = {{"z", c.z, dz, 64}};
        fd_check(kind == 1 ? "focal 8x8" : "dice 8x8", f_loss, &c, v, 1);
        free(c.z), free(c.g), free(dz);
    }
    /* the focal value against its definition with log-probabilities */
    double z = 1.3, g1 = 1, g0 = 0, p = 1 / (1 + exp(-z));
    CHECK(fabs(ts_g_focal_fwd(&z, &g1, 1) - 0.25 * (1 - p) * (1 - p) * -log(p)) < 1e-14,
          "focal g=1");
    CHECK(fabs(ts_g_focal_fwd(&z, &g0, 1) - 0.75 * p * p * -log(1 - p)) < 1e-14, "focal g=0");
}

static void test_mask_loss_fd(void)
{
    /* 4 outputs; single-prompt eligibility {1, 2, 3}; then multi-prompt {0} */
    for (int single = 1; single >= 0; single--) {
        loss_ctx c = {0};
        c.kind = 3, c.n = 64, c.K = 4, c.w = 1.3;
        c.z = rvec(4 * 64, -4, 4), c.g = binary_target(64);
        for (int k = 0; k < 4; k++) c.elig[k] = single ? k > 0 : k == 0;
        /* a margin between the two smallest eligible losses, so h never flips the choice */
        double l[4], lo1 = 1e300, lo2 = 1e300;
        for (int k = 0; k < 4; k++) {
            const double *zk = c.z + k * 64;
            l[k] = 20 * ts_g_focal_fwd(zk, c.g, 64) + ts_g_dice_fwd(zk, c.g, 64);
            if (!c.elig[k]) continue;
            if (l[k] < lo1) lo2 = lo1, lo1 = l[k];
            else if (l[k] < lo2) lo2 = l[k];
        }
        REQUIRE(!single || lo2 - lo1 > 1e-3, "no margin between the best two: %g", lo2 - lo1);
        int kb;
        double L = ts_g_mask_loss_fwd(c.z, c.g, 4, 64, c.elig, &kb);
        CHECK(kb >= 0 && c.elig[kb] && L == l[kb] && L == lo1, "selection k=%d", kb);
        double *dz = zvec(4 * 64);
        ts_g_mask_loss_bwd(c.z, c.g, 4, 64, c.elig, c.w, dz);
        fd_var v[] = {{"z", c.z, dz, 4 * 64}};
        fd_check(single ? "mask loss min of {1,2,3}" : "mask loss {0}", f_loss, &c, v, 1);
        free(c.z), free(c.g), free(dz);
    }
    /* exact tie: the smaller k wins */
    double z[2 * 4] = {1, -1, 2, 0, 1, -1, 2, 0}, g[4] = {1, 0, 1, 0};
    int el[2] = {1, 1}, kb = -1;
    ts_g_mask_loss_fwd(z, g, 2, 4, el, &kb);
    CHECK(kb == 0, "tie went to k=%d", kb);
}

static void test_iou_and_weighted_fd(void)
{
    /* IoU loss of one set: mean |u - v| over the eligible outputs (v constant) */
    loss_ctx c = {0};
    c.kind = 0, c.n = 3, c.w = 0.25;
    c.z = rvec(3, 0, 1), c.g = rvec(3, 0, 1);
    avoid_kink(c.z, 3, c.g);
    double *dz = zvec(3);
    ts_g_l1_bwd(c.z, c.g, 3, c.w, dz);
    fd_var v[] = {{"u", c.z, dz, 3}};
    fd_check("iou l1 (3 outputs)", f_loss, &c, v, 1);
    free(c.z), free(c.g), free(dz);

    /* output term weighted by H_i: 3 sets of 4x8x8 logits */
    loss_ctx w = {0};
    w.kind = 4, w.n = 256, w.N = 3, w.w = 1.0;
    w.z = rvec(768, -3, 3), w.g = rvec(768, -3, 3), w.H = rvec(3, 0.27, 1);
    avoid_kink(w.z, 768, w.g);
    double *dw = zvec(768);
    for (int i = 0; i < 3; i++)
        ts_g_l1_bwd(w.z + i * 256, w.g + i * 256, 256, w.w * w.H[i] / 3, dw + i * 256);
    fd_var vw[] = {{"Z_S", w.z, dw, 768}};
    fd_check("H-weighted output l1", f_loss, &w, vw, 1);
    free(w.z), free(w.g), free(w.H), free(dw);
}

/* ---------------------------------------------------------------------------------------- */
/* Adam, accumulation                                                                       */

static void test_adam(void)
{
    double p[5] = {0.5, -1.0, 2.0, 0.0, 3e-3}, m[5] = {0}, v[5] = {0};
    double pr[5], mr[5] = {0}, vr[5] = {0};
    memcpy(pr, p, sizeof p);
    const double lr = 1e-3, b1 = 0.9, b2 = 0.999, eps = 1e-8;
    double maxd = 0;
    for (int s = 1; s <= 3; s++) {
        double g[5];
        for (int i = 0; i < 5; i++) g[i] = urand(-1, 1) * (i + 1);
        double p0[5];
        memcpy(p0, p, sizeof p0);
        ts_g_adam_step(p, g, m, v, 5, s, lr, b1, b2, eps);
        /* step 1 in closed form: the bias corrections cancel, p -= lr * g / (|g| + eps) */
        for (int i = 0; i < 5 && s == 1; i++)
            CHECK(fabs(p[i] - (p0[i] - lr * g[i] / (fabs(g[i]) + eps))) < 1e-15,
                  "adam step 1, value %d: %.17g", i, p[i]);
        /* the formula of section 5.4, written out per element */
        for (int i = 0; i < 5; i++) {
            mr[i] = b1 * mr[i] + (1 - b1) * g[i];
            vr[i] = b2 * vr[i] + (1 - b2) * g[i] * g[i];
            double step = lr / (1 - pow(b1, s));
            double denom = sqrt(vr[i]) / sqrt(1 - pow(b2, s)) + eps;
            pr[i] = pr[i] - step * mr[i] / denom;
            maxd = fmax(maxd, fabs(p[i] - pr[i]));
        }
    }
    CHECK(maxd <= 1e-15, "adam differs from the formula by %g", maxd);
    printf("  adam: 3 steps on 5 values, max |step - formula| %.2e\n", maxd);
}

/* Backward calls add into their outputs (fan-out sums). */
static void test_accumulates(void)
{
    double x[6], W[8], dy[12], dx[6], dW[8], db[4], dx2[6], dW2[8], db2[4];
    for (int i = 0; i < 6; i++) x[i] = urand(-1, 1);
    for (int i = 0; i < 8; i++) W[i] = urand(-1, 1);
    for (int i = 0; i < 12; i++) dy[i] = urand(-1, 1);
    memset(dx, 0, sizeof dx), memset(dW, 0, sizeof dW), memset(db, 0, sizeof db);
    ts_g_linear_bwd(x, 3, 2, W, 4, dy, dx, dW, db);
    for (int i = 0; i < 6; i++) dx2[i] = 1.0;
    for (int i = 0; i < 8; i++) dW2[i] = 1.0;
    for (int i = 0; i < 4; i++) db2[i] = 1.0;
    ts_g_linear_bwd(x, 3, 2, W, 4, dy, dx2, dW2, db2);
    double err = 0;
    for (int i = 0; i < 6; i++) err = fmax(err, fabs(dx2[i] - 1.0 - dx[i]));
    for (int i = 0; i < 8; i++) err = fmax(err, fabs(dW2[i] - 1.0 - dW[i]));
    for (int i = 0; i < 4; i++) err = fmax(err, fabs(db2[i] - 1.0 - db[i]));
    CHECK(err < 1e-14, "linear backward does not accumulate (%g)", err);
    double g[6] = {1, 1, 1, 1, 1, 1};
    ts_g_gelu_bwd(x, 6, dy, g);
    double g1[6] = {0};
    ts_g_gelu_bwd(x, 6, dy, g1);
    err = 0;
    for (int i = 0; i < 6; i++) err = fmax(err, fabs(g[i] - 1.0 - g1[i]));
    CHECK(err < 1e-14, "gelu backward does not accumulate (%g)", err);
}

/* ---------------------------------------------------------------------------------------- */
/* double forward vs the engine's float kernels (the reference is the same function)        */

/* |float - double| / max(|double|, 1): relative, with a floor of 1 for values near zero
 * where the float kernels' absolute error (e.g. the SIMD erf, 1e-6) dominates. */
static double rel_err(const float *f, const double *d, size_t n)
{
    double e = 0;
    for (size_t i = 0; i < n; i++) e = fmax(e, fabs((double)f[i] - d[i]) / fmax(fabs(d[i]), 1.0));
    return e;
}

/* Random float values, also as doubles (so both see the same inputs). */
static float *fvec(size_t n, double lo, double hi, double **as_double)
{
    float *f = malloc(n * sizeof(float));
    double *d = malloc(n * sizeof(double));
    for (size_t i = 0; i < n; i++) d[i] = f[i] = (float)urand(lo, hi);
    *as_double = d;
    return f;
}

static void test_float_kernels(void)
{
    double *xd, *wd, *bd, *yd;
    float *xf, *wf, *bf;
    const double tol = 1e-5;

    xf = fvec(1000, -4, 4, &xd);
    yd = zvec(1000);
    ts_g_gelu_fwd(xd, 1000, yd);
    ts_gelu(xf, 1000);
    double e = rel_err(xf, yd, 1000);
    CHECK(e <= tol, "gelu vs ts_gelu %g", e);
    printf("  float kernels: gelu %.2e", e);
    free(xf), free(xd);
    xf = fvec(1000, -4, 4, &xd);
    ts_g_relu_fwd(xd, 1000, yd);
    ts_relu(xf, 1000);
    e = rel_err(xf, yd, 1000);
    CHECK(e <= tol, "relu vs ts_relu %g", e);
    printf(", relu %.2e", e);
    free(xf), free(xd), free(yd);

    xf = fvec(5 * 49, -4, 4, &xd);
    yd = zvec(5 * 49);
    ts_g_softmax_rows_fwd(xd, 5, 49, yd);
    ts_softmax_rows(xf, 5, 49);
    e = rel_err(xf, yd, 5 * 49);
    CHECK(e <= tol, "softmax vs ts_softmax_rows %g", e);
    printf(", softmax %.2e", e);
    free(xf), free(xd), free(yd);

    {
        const int M = 7, C = 256;
        xf = fvec((size_t)M * C, -2, 2, &xd);
        wf = fvec(C, 0.5, 1.5, &wd);
        bf = fvec(C, -0.5, 0.5, &bd);
        yd = zvec((size_t)M * C);
        float *yf = malloc(sizeof(float) * M * C);
        ts_g_layernorm_fwd(xd, M, C, wd, bd, 1e-5, yd);
        ts_layernorm_to(xf, yf, M, C, wf, bf, 1e-5f);
        e = rel_err(yf, yd, (size_t)M * C);
        CHECK(e <= tol, "layernorm vs ts_layernorm_to %g", e);
        printf(", layernorm %.2e", e);
        free(xf), free(xd), free(wf), free(wd), free(bf), free(bd), free(yd), free(yf);
    }
    {
        const int M = 9, K = 40, N = 24;
        xf = fvec((size_t)M * K, -1, 1, &xd);
        wf = fvec((size_t)N * K, -1, 1, &wd);
        bf = fvec(N, -1, 1, &bd);
        yd = zvec((size_t)M * N);
        float *yf = malloc(sizeof(float) * M * N);
        ts_g_linear_fwd(xd, M, K, wd, bd, N, yd);
        ts_linear(xf, M, K, wf, bf, N, yf);
        e = rel_err(yf, yd, (size_t)M * N);
        CHECK(e <= tol, "linear vs ts_linear %g", e);
        printf(", linear %.2e", e);
        free(xf), free(xd), free(wf), free(wd), free(bf), free(bd), free(yd), free(yf);
    }
    /* 3x3 convolution and depthwise, NHWC in the engine, NCHW here */
    for (int dw = 0; dw <= 1; dw++)
        for (int s = 1; s <= 2; s++) {
            const int H = 9, W = 8, Ci = 6, Co = dw ? 6 : 5;
            ts_g_conv2d cv = {Ci, H, W, Co, 3, s, 1, dw ? Ci : 1};
            const int Ho = ts_g_conv2d_out_h(&cv), Wo = ts_g_conv2d_out_w(&cv);
            size_t nw = (size_t)Co * (Ci / cv.groups) * 9;
            xf = fvec((size_t)H * W * Ci, -1, 1, &xd); /* NHWC */
            wf = fvec(nw, -1, 1, &wd);                 /* engine layout */
            bf = fvec(Co, -1, 1, &bd);
            double *xc = zvec((size_t)H * W * Ci), *wc = zvec(nw);
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++)
                    for (int c = 0; c < Ci; c++)
                        xc[((size_t)c * H + y) * W + x] = xd[((size_t)y * W + x) * Ci + c];
            for (int o = 0; o < Co; o++)
                for (int t = 0; t < 9; t++)
                    for (int c = 0; c < Ci / cv.groups; c++)
                        /* engine: [Co][ky][kx][Ci] or depthwise [9][C]; here [Co][Ci/g][ky][kx] */
                        wc[((size_t)o * (Ci / cv.groups) + c) * 9 + t] =
                            dw ? wd[(size_t)t * Co + o] : wd[((size_t)o * 9 + t) * Ci + c];
            size_t ny = (size_t)Co * Ho * Wo;
            double *yc = zvec(ny), *yd2 = zvec(ny);
            float *yf = malloc(sizeof(float) * ny);
            ts_g_conv2d_fwd(&cv, xc, wc, bd, yc);
            for (int o = 0; o < Co; o++)
                for (int i = 0; i < Ho * Wo; i++)
                    yd2[(size_t)i * Co + o] = yc[(size_t)o * Ho * Wo + i];
            if (dw) ts_dwconv3x3_nhwc(xf, H, W, Ci, s, wf, bf, TS_ACT_NONE, yf);
            else ts_conv3x3_nhwc(xf, H, W, Ci, s, wf, bf, Co, TS_ACT_NONE, yf);
            e = rel_err(yf, yd2, ny);
            CHECK(e <= tol, "%s s%d vs engine %g", dw ? "dwconv" : "conv3x3", s, e);
            printf(", %s s%d %.2e", dw ? "dwconv" : "conv3x3", s, e);
            free(xf), free(xd), free(wf), free(wd), free(bf), free(bd), free(xc), free(wc);
            free(yc), free(yd2), free(yf);
        }
    printf("\n");
}

static void test_report(void)
{
    printf("  all checks: max |num-ana| %.2e, worst %.3f of the tolerance\n", g_worst_abs,
           g_worst_ratio);
    CHECK(g_worst_ratio <= 1.0, "some derivative outside the tolerance");
}

int main(void)
{
    RUN(test_gelu_fd);
    RUN(test_relu_fd);
    RUN(test_softmax_fd);
    RUN(test_layernorm_fd);
    RUN(test_layernorm2d_fd);
    RUN(test_linear_fd);
    RUN(test_conv2d_fd);
    RUN(test_dwconv_fd);
    RUN(test_batchnorm_fd);
    RUN(test_k2s2_fd);
    RUN(test_winattn_forward);
    RUN(test_winattn_fd);
    RUN(test_batchnorm_running);
    RUN(test_patchmerge_fd);
    RUN(test_tvblock_fd);
    RUN(test_attn_forward);
    RUN(test_attn_fd);
    RUN(test_twoway_fd);
    RUN(test_repeat_fd);
    RUN(test_hyper_fd);
    RUN(test_l1_fd);
    RUN(test_focal_dice_fd);
    RUN(test_mask_loss_fd);
    RUN(test_iou_and_weighted_fd);
    RUN(test_adam);
    RUN(test_accumulates);
    RUN(test_float_kernels);
    RUN(test_report);
    return test_summary();
}
