/* test_losses.c - the float32 losses of src/train/losses.c against the double reference
 * versions of grad_ops.c (themselves checked by finite differences in test_grad.c): values
 * within 1e-5 relative, gradients within 1e-5 of the largest reference entry; the hard mask
 * weight against the worked examples of spec/DISTILL.md 2.5; a whole step (all terms, every
 * switch) against a composition of the double references. */
#include "test.h"
#include "train/grad_ops.h"
#include "train/losses.h"
#include "train/sampling.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_x = 0x2545F4914F6CDD1Dull;
static double urand(double lo, double hi) {
    g_x ^= g_x << 13;
    g_x ^= g_x >> 7;
    g_x ^= g_x << 17;
    return lo + (hi - lo) * ((double)(g_x >> 11) * 0x1.0p-53);
}

static double rel(double a, double b) { return fabs(a - b) / fmax(fabs(b), 1e-30); }

/* max |a - b| over max |b| of a float gradient against a double one */
static double grad_err(const float *a, const double *b, size_t n) {
    double m = 0, d = 0;
    for (size_t i = 0; i < n; i++) {
        m = fmax(m, fabs(b[i]));
        d = fmax(d, fabs(a[i] - b[i]));
    }
    return m > 0 ? d / m : d;
}

static void test_l1(void) {
    size_t n = 5000;
    float *a = malloc(n * 4), *b = malloc(n * 4), *da = calloc(n, 4);
    double *ad = malloc(n * 8), *bd = malloc(n * 8), *dd = calloc(n, 8);
    REQUIRE(a && b && da && ad && bd && dd, "out of memory");
    for (size_t i = 0; i < n; i++) {
        a[i] = (float)urand(-3, 3);
        b[i] = i % 7 == 0 ? a[i] : (float)urand(-3, 3); /* exact ties: sign(0) = 0 */
        ad[i] = a[i];
        bd[i] = b[i];
        da[i] = dd[i] = 0.25f; /* += contract */
    }
    double v = ts_loss_l1(a, b, n, 0.7f, da), vr = ts_g_l1_fwd(ad, bd, n);
    ts_g_l1_bwd(ad, bd, n, 0.7f, dd);
    CHECK(rel(v, vr) < 1e-6, "l1 %.9g vs %.9g", v, vr);
    double e = grad_err(da, dd, n);
    CHECK(e < 1e-6, "l1 gradient error %g", e);
    int zeros = 0;
    for (size_t i = 0; i < n; i += 7) zeros += da[i] == 0.25f;
    CHECK(zeros == (int)((n + 6) / 7), "sign(0) must be 0 (%d)", zeros);
    printf("  l1: value rel %.2g, gradient %.2g\n", rel(v, vr), e);
    free(a), free(b), free(da), free(ad), free(bd), free(dd);
}

static void test_focal_dice(void) {
    size_t n = 65536;
    float *z = malloc(n * 4), *dz = malloc(n * 4);
    uint8_t *g = malloc(n);
    double *zd = malloc(n * 8), *gd = malloc(n * 8), *dd = malloc(n * 8);
    REQUIRE(z && dz && g && zd && gd && dd, "out of memory");
    double worst_v = 0, worst_g = 0;
    for (int trial = 0; trial < 4; trial++) {
        double scale = trial == 3 ? 40 : 3 + 4 * trial; /* the last one saturates */
        for (size_t i = 0; i < n; i++) {
            g[i] = urand(0, 1) < (trial == 2 ? 0.05 : 0.5);
            z[i] = (float)(urand(-1, 1) * scale + (g[i] ? 1.0 : -1.0) * (trial == 1));
            zd[i] = z[i];
            gd[i] = g[i];
            dz[i] = 0.0f;
            dd[i] = 0.0;
        }
        double fl, dl, v = ts_loss_focal_dice(z, g, n, 1.3f, dz, &fl, &dl);
        double flr = ts_g_focal_fwd(zd, gd, n), dlr = ts_g_dice_fwd(zd, gd, n);
        ts_g_focal_bwd(zd, gd, n, 20 * 1.3, dd);
        ts_g_dice_bwd(zd, gd, n, 1.3, dd);
        CHECK(rel(fl, flr) < 1e-5 && rel(dl, dlr) < 1e-5 && rel(v, 20 * flr + dlr) < 1e-5,
              "trial %d: focal %.9g vs %.9g, dice %.9g vs %.9g", trial, fl, flr, dl, dlr);
        double e = grad_err(dz, dd, n);
        CHECK(e < 1e-5, "trial %d: gradient error %g", trial, e);
        worst_v = fmax(worst_v, fmax(rel(fl, flr), rel(dl, dlr)));
        worst_g = fmax(worst_g, e);
    }
    printf("  focal/dice: value rel %.2g, gradient %.2g\n", worst_v, worst_g);
    free(z), free(dz), free(g), free(zd), free(gd), free(dd);
}

static void test_hard_weight(void) {
    /* spec 2.5 examples, IoUs built from counts */
    struct {
        long long ti, tu, si, su;
        double H;
    } ex[] = {{45, 100, 45, 100, 0.5},      {90, 100, 45, 100, 0.73106},
              {90, 100, 10, 100, 0.99966},  {50, 100, 90, 100, 0.39068},
              {0, 100, 0, 100, 0.26894},    {30, 100, 0, 100, 1.0},
              {7, 0, 7, 0, 0.5}};
    for (size_t i = 0; i < sizeof ex / sizeof ex[0]; i++) {
        float H = ts_loss_hard_weight(ex[i].ti, ex[i].tu, ex[i].si, ex[i].su);
        CHECK(fabs(H - ex[i].H) < 6e-6, "example %zu: H = %.6f, spec %.5f", i, H, ex[i].H);
    }
    float z[6] = {1, -1, 2, 0, 3, -2};
    uint8_t g[6] = {1, 1, 0, 1, 1, 0};
    long long a, b;
    ts_loss_iou_counts(z, g, 6, &a, &b);
    CHECK(a == 2 && b == 5, "counts %lld/%lld (z = 0 is outside)", a, b);
}

/* The whole step against the double references, for a few configurations. */
static void test_step(void) {
    enum { N = 3 };
    const size_t C = TS_LOSS_CELLS, E = TS_LOSS_EMB, T = TS_LOSS_TOK;
    float *es = malloc(E * 4), *et = malloc(E * 4);
    float *ts = malloc(N * T * 4), *tt = malloc(N * T * 4);
    float *zs = malloc(N * 4 * C * 4), *zt = malloc(N * 4 * C * 4), us[4 * N], ut[4 * N];
    uint8_t *gm = malloc(N * C);
    float *ge = malloc(E * 4), *gt = malloc(N * T * 4), *gz = malloc(N * 4 * C * 4), gu[4 * N];
    double *d1 = malloc(sizeof(double) * 4 * C), *d2 = malloc(sizeof(double) * 4 * C);
    double *dg = malloc(sizeof(double) * C), *dz = malloc(sizeof(double) * 4 * C);
    REQUIRE(es && et && ts && tt && zs && zt && gm && ge && gt && gz && d1 && d2 && dg && dz,
            "out of memory");
    for (size_t i = 0; i < E; i++) {
        es[i] = (float)urand(-1, 1);
        et[i] = es[i] + (float)urand(-0.3, 0.3);
    }
    for (size_t i = 0; i < N * T; i++) {
        ts[i] = (float)urand(-1, 1);
        tt[i] = ts[i] + (float)urand(-0.2, 0.2);
    }
    for (size_t i = 0; i < N * C; i++)
        gm[i] = (i % 256) < 100 + (i / C) * 40 && (i / 256) % 256 > 50;
    for (size_t i = 0; i < N * 4 * C; i++) {
        size_t s = i / (4 * C), cell = i % C;
        zs[i] = (float)(urand(-4, 4) + (gm[s * C + cell] ? 2.0 : -2.0));
        zt[i] = zs[i] + (float)urand(-1.5, 1.5);
    }
    for (int i = 0; i < 4 * N; i++) {
        us[i] = (float)urand(0.3, 1.0);
        ut[i] = (float)urand(0.3, 1.0);
    }
    const uint8_t *gp[N] = {gm, gm + C, gm + 2 * C};
    int n_real[N] = {1, 2, 3};
    ts_loss_inputs in = {.N = N, .emb_s = es, .emb_t = et, .tok_s = ts, .tok_t = tt, .z_s = zs,
                         .z_t = zt, .u_s = us, .u_t = ut, .g = gp, .n_real = n_real};
    for (int cfg = 0; cfg < 3; cfg++) {
        ts_loss_config c;
        ts_loss_config_default(&c);
        if (cfg == 1) {
            c.alpha = 0.5f, c.beta = 2.0f, c.gamma = 0.0f, c.w_mask = 3.0f, c.w_iou = 0.0f;
        } else if (cfg == 2) {
            c.hard_weights = 0, c.w_mask = 0.0f, c.w_iou = 2.0f;
        }
        memset(ge, 0, E * 4);
        memset(gt, 0, N * T * 4);
        memset(gz, 0, N * 4 * C * 4);
        memset(gu, 0, sizeof gu);
        ts_loss_grads gr = {ge, gt, gz, gu};
        ts_loss_result r;
        REQUIRE(ts_loss_step(&c, &in, &r, &gr) == 0, "step");
        /* the reference, term by term in double */
        double ref_tot = 0, emax = 0;
        {
            double *a = malloc(E * 8), *b = malloc(E * 8), *d = calloc(E, 8);
            REQUIRE(a && b && d, "out of memory");
            for (size_t i = 0; i < E; i++) a[i] = es[i], b[i] = et[i];
            double L = ts_g_l1_fwd(a, b, E);
            ts_g_l1_bwd(a, b, E, c.alpha, d);
            CHECK(rel(r.L_emb, L) < 1e-6, "L_emb %.9g vs %.9g", r.L_emb, L);
            emax = fmax(emax, grad_err(ge, d, E));
            ref_tot += c.alpha * L;
            free(a), free(b), free(d);
        }
        double Ltok = 0, Lout = 0, Lmask = 0, Liou = 0;
        for (int s = 0; s < N; s++) {
            double a[TS_LOSS_TOK], b[TS_LOSS_TOK], d[TS_LOSS_TOK] = {0};
            for (size_t i = 0; i < T; i++) a[i] = ts[s * T + i], b[i] = tt[s * T + i];
            Ltok += ts_g_l1_fwd(a, b, T) / N;
            ts_g_l1_bwd(a, b, T, (double)c.beta / N, d);
            emax = fmax(emax, grad_err(gt + s * T, d, T));
            int el[4];
            ts_sample_eligible(n_real[s], el);
            int ks = ts_sample_select(us + 4 * s, el), kt = ts_sample_select(ut + 4 * s, el);
            CHECK(r.sel_s[s] == ks && r.sel_t[s] == kt, "set %d selections", s);
            for (size_t i = 0; i < C; i++) dg[i] = gp[s][i];
            long long ti = 0, tu = 0, si = 0, su = 0;
            for (size_t i = 0; i < C; i++) {
                int gt1 = gp[s][i], a1 = zt[(s * 4 + kt) * C + i] > 0;
                int b1 = zs[(s * 4 + ks) * C + i] > 0;
                ti += gt1 && a1, tu += gt1 || a1, si += gt1 && b1, su += gt1 || b1;
            }
            double H = 1 / (1 + exp(-((double)ti / tu / ((double)si / su + 1e-6) - 1)));
            CHECK(fabs(r.H[s] - H) < 1e-7, "set %d: H %.8f vs %.8f", s, r.H[s], H);
            double Hw = c.hard_weights ? r.H[s] : 1.0;
            for (size_t i = 0; i < 4 * C; i++) {
                d1[i] = zs[s * 4 * C + i];
                d2[i] = zt[s * 4 * C + i];
                dz[i] = 0;
            }
            double lo = ts_g_l1_fwd(d1, d2, 4 * C);
            CHECK(rel(r.L_out[s], lo) < 1e-6, "set %d: L_out %.9g vs %.9g", s, r.L_out[s], lo);
            Lout += Hw * lo / N;
            ts_g_l1_bwd(d1, d2, 4 * C, c.gamma * Hw / N, dz);
            int kb;
            double lm = ts_g_mask_loss_fwd(d1, dg, 4, C, el, &kb);
            CHECK(kb == r.k_min[s], "set %d: k_min %d vs %d", s, r.k_min[s], kb);
            CHECK(rel(r.ell[s][kb], lm) < 1e-5, "set %d: mask loss %.9g vs %.9g", s,
                  r.ell[s][kb], lm);
            Lmask += lm / N;
            ts_g_mask_loss_bwd(d1, dg, 4, C, el, (double)c.w_mask / N, dz);
            emax = fmax(emax, grad_err(gz + (size_t)s * 4 * C, dz, 4 * C));
            double ua[4], va[4], du[4] = {0};
            int nk = 0;
            for (int k = 0; k < 4; k++)
                if (el[k]) {
                    long long x, y;
                    ts_loss_iou_counts(zs + (s * 4 + k) * C, gp[s], C, &x, &y);
                    ua[nk] = us[4 * s + k], va[nk++] = (double)x / y;
                }
            Liou += ts_g_l1_fwd(ua, va, nk) / N;
            ts_g_l1_bwd(ua, va, nk, (double)c.w_iou / N, du);
            for (int k = 0, j = 0; k < 4; k++)
                if (el[k]) emax = fmax(emax, fabs(gu[4 * s + k] - du[j++]));
                else CHECK(gu[4 * s + k] == 0, "ineligible IoU gradient");
        }
        ref_tot += c.beta * Ltok + c.gamma * Lout + c.w_mask * Lmask + c.w_iou * Liou;
        CHECK(rel(r.L_tok, Ltok) < 1e-6 && rel(r.L_mask, Lmask) < 1e-5 &&
                  rel(r.L_iou, Liou) < 1e-6 && rel(r.L_total, ref_tot) < 1e-5,
              "cfg %d: tok %.9g/%.9g mask %.9g/%.9g iou %.9g/%.9g total %.9g/%.9g", cfg, r.L_tok,
              Ltok, r.L_mask, Lmask, r.L_iou, Liou, r.L_total, ref_tot);
        CHECK(emax < 1e-5, "cfg %d: gradient error %g", cfg, emax);
        printf("  cfg %d: L_total %.6f (ref %.6f), worst gradient error %.2g\n", cfg, r.L_total,
               ref_tot, emax);
    }
    /* the "use given H and selections" switch (spec 6.2) */
    {
        float H[N] = {0.25f, 0.5f, 0.75f};
        int sel[N] = {3, 0, 0};
        in.given_H = H, in.given_sel_s = sel, in.given_sel_t = sel;
        ts_loss_config c;
        ts_loss_config_default(&c);
        ts_loss_result r;
        REQUIRE(ts_loss_step(&c, &in, &r, NULL) == 0, "step");
        double w = (0.25 * r.L_out[0] + 0.5 * r.L_out[1] + 0.75 * r.L_out[2]) / N;
        CHECK(rel(r.L_out_weighted, w) < 1e-12, "given H: %.9g vs %.9g", r.L_out_weighted, w);
        CHECK(r.sel_s[0] == 3 && r.sel_t[0] == 3 && r.H[2] == 0.75f, "given selections");
        long long a, b;
        ts_loss_iou_counts(zs + 3 * C, gm, C, &a, &b);
        CHECK(r.s_inter[0] == a && r.s_union[0] == b, "counts of the given selection");
        c.hard_weights = 0;
        REQUIRE(ts_loss_step(&c, &in, &r, NULL) == 0, "step");
        CHECK(rel(r.L_out_weighted, r.L_out_mean) < 1e-12, "hard weighting off: H = 1");
    }
    free(es), free(et), free(ts), free(tt), free(zs), free(zt), free(gm);
    free(ge), free(gt), free(gz), free(d1), free(d2), free(dg), free(dz);
}

int main(void) {
    RUN(test_l1);
    RUN(test_focal_dice);
    RUN(test_hard_weight);
    RUN(test_step);
    return test_summary();
}
