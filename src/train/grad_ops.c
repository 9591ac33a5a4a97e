/* grad_ops.c - double-precision reference forward/backward pairs of the primitive operations,
 * the losses and Adam (see grad_ops.h; the composite modules are in grad_blocks.c).
 * Straight loops on purpose: these define the functions, the fast float kernels are checked
 * against them. */
#include "train/grad_ops.h"

#include <math.h>
#include <string.h>

static double sign0(double v) { return v > 0 ? 1.0 : (v < 0 ? -1.0 : 0.0); }

/* Stable log(1 + e^z). */
static double softplus(double z) { return z > 0 ? z + log1p(exp(-z)) : log1p(exp(z)); }

static double sigmoid(double z)
{
    if (z >= 0) return 1.0 / (1.0 + exp(-z));
    double e = exp(z);
    return e / (1.0 + e);
}

/* ================================ element-wise ============================================ */

void ts_g_gelu_fwd(const double *x, size_t n, double *y)
{
    for (size_t i = 0; i < n; i++) y[i] = x[i] * 0.5 * (1.0 + erf(x[i] / sqrt(2.0)));
}

void ts_g_gelu_bwd(const double *x, size_t n, const double *dy, double *dx)
{
    if (!dx) return;
    const double inv_sqrt_2pi = 0.39894228040143267794;
    for (size_t i = 0; i < n; i++) {
        double cdf = 0.5 * (1.0 + erf(x[i] / sqrt(2.0)));
        double pdf = inv_sqrt_2pi * exp(-0.5 * x[i] * x[i]);
        dx[i] += dy[i] * (cdf + x[i] * pdf);
    }
}

void ts_g_relu_fwd(const double *x, size_t n, double *y)
{
    for (size_t i = 0; i < n; i++) y[i] = x[i] > 0 ? x[i] : 0.0;
}

void ts_g_relu_bwd(const double *x, size_t n, const double *dy, double *dx)
{
    if (!dx) return;
    for (size_t i = 0; i < n; i++)
        if (x[i] > 0) dx[i] += dy[i];
}

void ts_g_softmax_rows_fwd(const double *x, int M, int N, double *y)
{
    for (int m = 0; m < M; m++) {
        const double *xr = x + (size_t)m * N;
        double *yr = y + (size_t)m * N;
        double mx = xr[0];
        for (int j = 1; j < N; j++) mx = xr[j] > mx ? xr[j] : mx;
        double s = 0;
        for (int j = 0; j < N; j++) s += (yr[j] = exp(xr[j] - mx));
        for (int j = 0; j < N; j++) yr[j] /= s;
    }
}

void ts_g_softmax_rows_bwd(const double *y, int M, int N, const double *dy, double *dx)
{
    if (!dx) return;
    for (int m = 0; m < M; m++) {
        const double *yr = y + (size_t)m * N, *gr = dy + (size_t)m * N;
        double dot = 0;
        for (int j = 0; j < N; j++) dot += gr[j] * yr[j];
        for (int j = 0; j < N; j++) dx[(size_t)m * N + j] += yr[j] * (gr[j] - dot);
    }
}

/* ================================ normalisation =========================================== */

/* LayerNorm of M vectors of C values; element (m, c) at x[m*sm + c*sc]. One implementation
 * serves LayerNorm ([M][C]: sm = C, sc = 1) and LayerNorm2d ([C][HW]: sm = 1, sc = HW). */
static void ln_stats(const double *x, int C, size_t sc, double eps, double *mean, double *inv)
{
    double mu = 0, var = 0;
    for (int c = 0; c < C; c++) mu += x[c * sc];
    mu /= C;
    for (int c = 0; c < C; c++) var += (x[c * sc] - mu) * (x[c * sc] - mu);
    var /= C;
    *mean = mu;
    *inv = 1.0 / sqrt(var + eps);
}

static void ln_fwd(const double *x, int M, int C, size_t sm, size_t sc, const double *w,
                   const double *b, double eps, double *y)
{
    for (int m = 0; m < M; m++) {
        const double *xm = x + m * sm;
        double mu, inv;
        ln_stats(xm, C, sc, eps, &mu, &inv);
        for (int c = 0; c < C; c++) y[m * sm + c * sc] = (xm[c * sc] - mu) * inv * w[c] + b[c];
    }
}

/* dx = inv * (g - mean(g) - xhat * mean(g * xhat)), g = dy * w (spec E9). */
static void ln_bwd(const double *x, int M, int C, size_t sm, size_t sc, const double *w,
                   double eps, const double *dy, double *dx, double *dw, double *db)
{
    for (int m = 0; m < M; m++) {
        const double *xm = x + m * sm, *gm = dy + m * sm;
        double mu, inv, mg = 0, mgx = 0;
        ln_stats(xm, C, sc, eps, &mu, &inv);
        for (int c = 0; c < C; c++) {
            double xh = (xm[c * sc] - mu) * inv, g = gm[c * sc];
            if (dw) dw[c] += g * xh;
            if (db) db[c] += g;
            mg += g * w[c];
            mgx += g * w[c] * xh;
        }
        mg /= C;
        mgx /= C;
        if (!dx) continue;
        for (int c = 0; c < C; c++) {
            double xh = (xm[c * sc] - mu) * inv;
            dx[m * sm + c * sc] += inv * (gm[c * sc] * w[c] - mg - xh * mgx);
        }
    }
}

void ts_g_layernorm_fwd(const double *x, int M, int C, const double *w, const double *b,
                        double eps, double *y)
{
    ln_fwd(x, M, C, (size_t)C, 1, w, b, eps, y);
}

void ts_g_layernorm_bwd(const double *x, int M, int C, const double *w, double eps,
                        const double *dy, double *dx, double *dw, double *db)
{
    ln_bwd(x, M, C, (size_t)C, 1, w, eps, dy, dx, dw, db);
}

void ts_g_layernorm2d_fwd(const double *x, int C, int HW, const double *w, const double *b,
                          double eps, double *y)
{
    ln_fwd(x, HW, C, 1, (size_t)HW, w, b, eps, y);
}

void ts_g_layernorm2d_bwd(const double *x, int C, int HW, const double *w, double eps,
                          const double *dy, double *dx, double *dw, double *db)
{
    ln_bwd(x, HW, C, 1, (size_t)HW, w, eps, dy, dx, dw, db);
}

void ts_g_batchnorm_eval_fwd(const double *x, int N, int C, int HW, const double *gamma,
                             const double *beta, const double *mean, const double *var,
                             double eps, double *y)
{
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            double inv = 1.0 / sqrt(var[c] + eps);
            size_t o = ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) y[o + i] = (x[o + i] - mean[c]) * inv * gamma[c] + beta[c];
        }
}

void ts_g_batchnorm_eval_bwd(const double *x, int N, int C, int HW, const double *gamma,
                             const double *mean, const double *var, double eps,
                             const double *dy, double *dx, double *dgamma, double *dbeta)
{
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++) {
            double inv = 1.0 / sqrt(var[c] + eps);
            size_t o = ((size_t)n * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                if (dx) dx[o + i] += dy[o + i] * gamma[c] * inv;
                if (dgamma) dgamma[c] += dy[o + i] * (x[o + i] - mean[c]) * inv;
                if (dbeta) dbeta[c] += dy[o + i];
            }
        }
}

/* Batch mean and biased variance of channel c over N*HW. */
static void bn_batch_stats(const double *x, int N, int C, int HW, int c, double *mean,
                           double *var)
{
    double mu = 0, v = 0;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < HW; i++) mu += x[((size_t)n * C + c) * HW + i];
    mu /= (double)N * HW;
    for (int n = 0; n < N; n++)
        for (int i = 0; i < HW; i++) {
            double d = x[((size_t)n * C + c) * HW + i] - mu;
            v += d * d;
        }
    *mean = mu;
    *var = v / ((double)N * HW);
}

void ts_g_batchnorm_train_fwd(const double *x, int N, int C, int HW, const double *gamma,
                              const double *beta, double eps, double *y, double *bmean,
                              double *bvar)
{
    for (int c = 0; c < C; c++) {
        double mu, var;
        bn_batch_stats(x, N, C, HW, c, &mu, &var);
        if (bmean) bmean[c] = mu;
        if (bvar) bvar[c] = var;
        double inv = 1.0 / sqrt(var + eps);
        for (int n = 0; n < N; n++)
            for (int i = 0; i < HW; i++) {
                size_t o = ((size_t)n * C + c) * HW + i;
                y[o] = (x[o] - mu) * inv * gamma[c] + beta[c];
            }
    }
}

/* dx = (gamma / sigma_B) (dy - mean(dy) - xhat * mean(dy * xhat)) per channel (spec E2). */
void ts_g_batchnorm_train_bwd(const double *x, int N, int C, int HW, const double *gamma,
                              double eps, const double *dy, double *dx, double *dgamma,
                              double *dbeta)
{
    double cnt = (double)N * HW;
    for (int c = 0; c < C; c++) {
        double mu, var, sg = 0, sgx = 0;
        bn_batch_stats(x, N, C, HW, c, &mu, &var);
        double inv = 1.0 / sqrt(var + eps);
        for (int n = 0; n < N; n++)
            for (int i = 0; i < HW; i++) {
                size_t o = ((size_t)n * C + c) * HW + i;
                sg += dy[o];
                sgx += dy[o] * (x[o] - mu) * inv;
            }
        if (dgamma) dgamma[c] += sgx;
        if (dbeta) dbeta[c] += sg;
        if (!dx) continue;
        for (int n = 0; n < N; n++)
            for (int i = 0; i < HW; i++) {
                size_t o = ((size_t)n * C + c) * HW + i;
                double xh = (x[o] - mu) * inv;
                dx[o] += gamma[c] * inv * (dy[o] - sg / cnt - xh * sgx / cnt);
            }
    }
}

void ts_g_batchnorm_running_update(double *run_mean, double *run_var, const double *bmean,
                                   const double *bvar, int C, double count, double momentum)
{
    for (int c = 0; c < C; c++) {
        run_mean[c] = (1 - momentum) * run_mean[c] + momentum * bmean[c];
        run_var[c] = (1 - momentum) * run_var[c] + momentum * bvar[c] * count / (count - 1);
    }
}

/* ================================ linear and convolutions ================================= */

void ts_g_linear_fwd(const double *x, int M, int K, const double *W, const double *b, int N,
                     double *y)
{
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double s = b ? b[n] : 0.0;
            for (int k = 0; k < K; k++) s += x[(size_t)m * K + k] * W[(size_t)n * K + k];
            y[(size_t)m * N + n] = s;
        }
}

void ts_g_linear_bwd(const double *x, int M, int K, const double *W, int N, const double *dy,
                     double *dx, double *dW, double *db)
{
    for (int m = 0; m < M; m++)
        for (int n = 0; n < N; n++) {
            double g = dy[(size_t)m * N + n];
            if (db) db[n] += g;
            for (int k = 0; k < K; k++) {
                if (dx) dx[(size_t)m * K + k] += g * W[(size_t)n * K + k];
                if (dW) dW[(size_t)n * K + k] += g * x[(size_t)m * K + k];
            }
        }
}

int ts_g_conv2d_out_h(const ts_g_conv2d *c) { return (c->H + 2 * c->pad - c->k) / c->stride + 1; }
int ts_g_conv2d_out_w(const ts_g_conv2d *c) { return (c->W + 2 * c->pad - c->k) / c->stride + 1; }

/* Visits every (output, weight, input) triple of the convolution; fwd and bwd share it so the
 * index arithmetic exists once. With dy == NULL it runs the forward into y. */
static void conv2d_walk(const ts_g_conv2d *c, const double *x, const double *w, double *y,
                        const double *dy, double *dx, double *dw)
{
    const int Ho = ts_g_conv2d_out_h(c), Wo = ts_g_conv2d_out_w(c), k = c->k;
    const int cig = c->Ci / c->groups, cog = c->Co / c->groups;
    for (int o = 0; o < c->Co; o++) {
        const int grp = o / cog;
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++) {
                size_t yo = ((size_t)o * Ho + oy) * Wo + ox;
                double acc = 0, g = dy ? dy[yo] : 0.0;
                for (int ci = 0; ci < cig; ci++)
                    for (int ky = 0; ky < k; ky++) {
                        int iy = oy * c->stride - c->pad + ky;
                        if (iy < 0 || iy >= c->H) continue;
                        for (int kx = 0; kx < k; kx++) {
                            int ix = ox * c->stride - c->pad + kx;
                            if (ix < 0 || ix >= c->W) continue;
                            size_t xi = ((size_t)(grp * cig + ci) * c->H + iy) * c->W + ix;
                            size_t wi = (((size_t)o * cig + ci) * k + ky) * k + kx;
                            if (!dy) {
                                acc += w[wi] * x[xi];
                            } else {
                                if (dx) dx[xi] += g * w[wi];
                                if (dw) dw[wi] += g * x[xi];
                            }
                        }
                    }
                if (!dy) y[yo] += acc;
            }
    }
}

void ts_g_conv2d_fwd(const ts_g_conv2d *c, const double *x, const double *w, const double *b,
                     double *y)
{
    const size_t hw = (size_t)ts_g_conv2d_out_h(c) * ts_g_conv2d_out_w(c);
    for (int o = 0; o < c->Co; o++)
        for (size_t i = 0; i < hw; i++) y[o * hw + i] = b ? b[o] : 0.0;
    conv2d_walk(c, x, w, y, NULL, NULL, NULL);
}

void ts_g_conv2d_bwd(const ts_g_conv2d *c, const double *x, const double *w, const double *dy,
                     double *dx, double *dw, double *db)
{
    const size_t hw = (size_t)ts_g_conv2d_out_h(c) * ts_g_conv2d_out_w(c);
    if (db)
        for (int o = 0; o < c->Co; o++)
            for (size_t i = 0; i < hw; i++) db[o] += dy[o * hw + i];
    conv2d_walk(c, x, w, NULL, dy, dx, dw);
}

void ts_g_convt2d_fwd(const double *x, int Ci, int H, int W, const double *w, const double *b,
                      int Co, int k, int stride, double *y)
{
    const int Ho = (H - 1) * stride + k, Wo = (W - 1) * stride + k;
    for (int o = 0; o < Co; o++)
        for (int i = 0; i < Ho * Wo; i++) y[(size_t)o * Ho * Wo + i] = b ? b[o] : 0.0;
    for (int i = 0; i < Ci; i++)
        for (int o = 0; o < Co; o++)
            for (int iy = 0; iy < H; iy++)
                for (int ix = 0; ix < W; ix++) {
                    double v = x[((size_t)i * H + iy) * W + ix];
                    for (int a = 0; a < k; a++)
                        for (int c = 0; c < k; c++)
                            y[((size_t)o * Ho + iy * stride + a) * Wo + ix * stride + c] +=
                                v * w[(((size_t)i * Co + o) * k + a) * k + c];
                }
}

void ts_g_convt2d_bwd(const double *x, int Ci, int H, int W, const double *w, int Co, int k,
                      int stride, const double *dy, double *dx, double *dw, double *db)
{
    const int Ho = (H - 1) * stride + k, Wo = (W - 1) * stride + k;
    if (db)
        for (int o = 0; o < Co; o++)
            for (int i = 0; i < Ho * Wo; i++) db[o] += dy[(size_t)o * Ho * Wo + i];
    for (int i = 0; i < Ci; i++)
        for (int o = 0; o < Co; o++)
            for (int iy = 0; iy < H; iy++)
                for (int ix = 0; ix < W; ix++) {
                    size_t xi = ((size_t)i * H + iy) * W + ix;
                    for (int a = 0; a < k; a++)
                        for (int c = 0; c < k; c++) {
                            size_t wi = (((size_t)i * Co + o) * k + a) * k + c;
                            double g =
                                dy[((size_t)o * Ho + iy * stride + a) * Wo + ix * stride + c];
                            if (dx) dx[xi] += g * w[wi];
                            if (dw) dw[wi] += g * x[xi];
                        }
                }
}

/* ================================ mask decoder ============================================ */

void ts_g_repeat_fwd(const double *x, size_t n, int N, double *y)
{
    for (int s = 0; s < N; s++) memcpy(y + (size_t)s * n, x, n * sizeof(double));
}

void ts_g_repeat_bwd(size_t n, int N, const double *dy, double *dx)
{
    if (!dx) return;
    for (int s = 0; s < N; s++)
        for (size_t i = 0; i < n; i++) dx[i] += dy[(size_t)s * n + i];
}

void ts_g_hyper_fwd(const double *hyper, const double *up, int N, int T, int Cc, int P,
                    double *masks)
{
    for (int n = 0; n < N; n++)
        for (int t = 0; t < T; t++)
            for (int q = 0; q < P; q++) {
                double s = 0;
                for (int c = 0; c < Cc; c++)
                    s += hyper[((size_t)n * T + t) * Cc + c] * up[((size_t)n * Cc + c) * P + q];
                masks[((size_t)n * T + t) * P + q] = s;
            }
}

void ts_g_hyper_bwd(const double *hyper, const double *up, int N, int T, int Cc, int P,
                    const double *dmasks, double *dhyper, double *dup)
{
    for (int n = 0; n < N; n++)
        for (int t = 0; t < T; t++)
            for (int q = 0; q < P; q++) {
                double g = dmasks[((size_t)n * T + t) * P + q];
                for (int c = 0; c < Cc; c++) {
                    size_t hi = ((size_t)n * T + t) * Cc + c, ui = ((size_t)n * Cc + c) * P + q;
                    if (dhyper) dhyper[hi] += g * up[ui];
                    if (dup) dup[ui] += g * hyper[hi];
                }
            }
}

/* ================================ losses ================================================== */

double ts_g_l1_fwd(const double *a, const double *b, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) s += fabs(a[i] - b[i]);
    return n ? s / (double)n : 0.0;
}

void ts_g_l1_bwd(const double *a, const double *b, size_t n, double w, double *da)
{
    if (!da) return;
    for (size_t i = 0; i < n; i++) da[i] += w * sign0(a[i] - b[i]) / (double)n;
}

#define FOCAL_ALPHA 0.25

double ts_g_focal_fwd(const double *z, const double *g, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double p = sigmoid(z[i]);
        double ce = softplus(z[i]) - z[i] * g[i];
        double pt = p * g[i] + (1 - p) * (1 - g[i]);
        double at = FOCAL_ALPHA * g[i] + (1 - FOCAL_ALPHA) * (1 - g[i]);
        s += at * (1 - pt) * (1 - pt) * ce;
    }
    return n ? s / (double)n : 0.0;
}

/* Per-cell derivatives of spec section 2.8 (binary g). */
void ts_g_focal_bwd(const double *z, const double *g, size_t n, double w, double *dz)
{
    if (!dz) return;
    for (size_t i = 0; i < n; i++) {
        double p = sigmoid(z[i]), d;
        if (g[i] > 0.5) {
            double logp = -softplus(-z[i]);
            d = FOCAL_ALPHA * (1 - p) * (1 - p) * (2 * p * logp - (1 - p));
        } else {
            double log1mp = -softplus(z[i]);
            d = (1 - FOCAL_ALPHA) * p * p * (p - 2 * (1 - p) * log1mp);
        }
        dz[i] += w * d / (double)n;
    }
}

/* The sums of the dice loss: I = sum p*g, P = sum p, S = sum g, with p = sigmoid(z). */
static void dice_sums(const double *z, const double *g, size_t n, double *I, double *P, double *S)
{
    *I = *P = *S = 0;
    for (size_t i = 0; i < n; i++) {
        double p = sigmoid(z[i]);
        *I += p * g[i];
        *P += p;
        *S += g[i];
    }
}

double ts_g_dice_fwd(const double *z, const double *g, size_t n)
{
    double I, P, S;
    dice_sums(z, g, n, &I, &P, &S);
    return 1.0 - (2 * I + 1) / (P + S + 1);
}

void ts_g_dice_bwd(const double *z, const double *g, size_t n, double w, double *dz)
{
    if (!dz) return;
    double I, P, S;
    dice_sums(z, g, n, &I, &P, &S);
    double D = P + S + 1;
    for (size_t i = 0; i < n; i++) {
        double p = sigmoid(z[i]);
        dz[i] += -w * (2 * g[i] * D - (2 * I + 1)) / (D * D) * p * (1 - p);
    }
}

double ts_g_mask_loss_fwd(const double *z, const double *g, int K, size_t n,
                          const int *eligible, int *k_best)
{
    double best = 0;
    int kb = -1;
    for (int k = 0; k < K; k++) {
        if (!eligible[k]) continue;
        const double *zk = z + (size_t)k * n;
        double l = 20.0 * ts_g_focal_fwd(zk, g, n) + ts_g_dice_fwd(zk, g, n);
        if (kb < 0 || l < best) { /* strict <: ties keep the smaller k */
            best = l;
            kb = k;
        }
    }
    if (k_best) *k_best = kb;
    return kb < 0 ? 0.0 : best;
}

void ts_g_mask_loss_bwd(const double *z, const double *g, int K, size_t n, const int *eligible,
                        double w, double *dz)
{
    int kb;
    ts_g_mask_loss_fwd(z, g, K, n, eligible, &kb);
    if (kb < 0 || !dz) return;
    ts_g_focal_bwd(z + (size_t)kb * n, g, n, 20.0 * w, dz + (size_t)kb * n);
    ts_g_dice_bwd(z + (size_t)kb * n, g, n, w, dz + (size_t)kb * n);
}

/* ================================ optimiser =============================================== */

void ts_g_adam_step(double *p, const double *g, double *m, double *v, size_t n, int step,
                    double lr, double beta1, double beta2, double eps)
{
    const double bc1 = 1.0 - pow(beta1, step), bc2 = 1.0 - pow(beta2, step);
    const double step_size = lr / bc1, bc2_sqrt = sqrt(bc2);
    for (size_t i = 0; i < n; i++) {
        m[i] = beta1 * m[i] + (1 - beta1) * g[i];
        v[i] = beta2 * v[i] + (1 - beta2) * g[i] * g[i];
        double denom = sqrt(v[i]) / bc2_sqrt + eps;
        p[i] -= step_size * m[i] / denom;
    }
}
