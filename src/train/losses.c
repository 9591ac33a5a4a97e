/* losses.c - spec/DISTILL.md section 2 in float32 with the derivatives of section 2.8. */
#include "train/losses.h"

#include "core.h"
#include "train/sampling.h"

#include <math.h>
#include <string.h>

#define FOCAL_ALPHA 0.25f
#define FOCAL_WEIGHT 20.0f
#define HARD_EPS 1e-6

static float sign0f(float v) { return v > 0.0f ? 1.0f : (v < 0.0f ? -1.0f : 0.0f); }

/* Stable log(1 + e^z) and sigma(z) (no overflow for any finite z). */
static float softplusf(float z) { return fmaxf(z, 0.0f) + log1pf(expf(-fabsf(z))); }

static float sigmoidf(float z) {
    if (z >= 0.0f) return 1.0f / (1.0f + expf(-z));
    float e = expf(z);
    return e / (1.0f + e);
}

double ts_loss_l1(const float *a, const float *b, size_t n, float w, float *da) {
    if (!n) return 0.0;
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += fabsf(a[i] - b[i]);
    if (da && w != 0.0f) {
        float k = w / (float)n;
        for (size_t i = 0; i < n; i++) da[i] += k * sign0f(a[i] - b[i]);
    }
    return s / (double)n;
}

void ts_loss_iou_counts(const float *z, const uint8_t *g, size_t n, long long *inter,
                        long long *uni) {
    long long in = 0, un = 0;
    for (size_t i = 0; i < n; i++) {
        int a = z[i] > 0.0f, b = g[i] != 0;
        in += a & b;
        un += a | b;
    }
    *inter = in;
    *uni = un;
}

double ts_loss_iou(long long inter, long long uni) {
    return uni ? (double)inter / (double)uni : 1.0;
}

float ts_loss_hard_weight(long long t_inter, long long t_union, long long s_inter,
                          long long s_union) {
    double r = ts_loss_iou(t_inter, t_union) / (ts_loss_iou(s_inter, s_union) + HARD_EPS) - 1.0;
    return (float)(1.0 / (1.0 + exp(-r)));
}

double ts_loss_focal_dice(const float *z, const uint8_t *g, size_t n, float w, float *dz,
                          double *focal, double *dice) {
    double fs = 0.0, I = 0.0, P = 0.0, S = 0.0;
    for (size_t i = 0; i < n; i++) {
        float zi = z[i], p = sigmoidf(zi), q = sigmoidf(-zi); /* q = 1 - p without cancelling */
        int gi = g[i] != 0;
        /* ce = softplus(z) - z g; (1 - p_t) = q for g = 1, p for g = 0 */
        float ce = gi ? softplusf(-zi) : softplusf(zi);
        float m = gi ? q : p, at = gi ? FOCAL_ALPHA : 1.0f - FOCAL_ALPHA;
        fs += at * m * m * ce;
        P += p;
        if (gi) {
            I += p;
            S += 1.0;
        }
    }
    double fl = n ? fs / (double)n : 0.0, D = P + S + 1.0, dl = 1.0 - (2.0 * I + 1.0) / D;
    if (focal) *focal = fl;
    if (dice) *dice = dl;
    if (dz && w != 0.0f && n) {
        float kf = w * FOCAL_WEIGHT / (float)n;
        float d1 = (float)(2.0 * D / (D * D)), d0 = (float)((2.0 * I + 1.0) / (D * D));
        for (size_t i = 0; i < n; i++) {
            float zi = z[i], p = sigmoidf(zi), q = sigmoidf(-zi), df;
            int gi = g[i] != 0;
            if (gi) /* alpha (1-p)^2 (2 p log p - (1-p)), log p = -softplus(-z) */
                df = FOCAL_ALPHA * q * q * (-2.0f * p * softplusf(-zi) - q);
            else    /* (1-alpha) p^2 (p - 2 (1-p) log(1-p)), log(1-p) = -softplus(z) */
                df = (1.0f - FOCAL_ALPHA) * p * p * (p + 2.0f * q * softplusf(zi));
            float dd = -((gi ? d1 : 0.0f) - d0) * p * q;
            dz[i] += kf * df + w * dd;
        }
    }
    return FOCAL_WEIGHT * fl + dl;
}

void ts_loss_config_default(ts_loss_config *c) {
    c->alpha = c->beta = c->gamma = 1.0f;
    c->w_mask = c->w_iou = 1.0f;
    c->hard_weights = 1;
}

int ts_loss_step(const ts_loss_config *c, const ts_loss_inputs *in, ts_loss_result *out,
                 const ts_loss_grads *grads) {
    int N = in->N;
    if (N < 1 || N > TS_LOSS_MAX_SETS)
        return ts_error(TINYSAM_E_ARG, "losses: %d prompt sets (1 .. %d)", N, TS_LOSS_MAX_SETS);
    memset(out, 0, sizeof *out);
    ts_loss_grads none = {0};
    const ts_loss_grads *gr = grads ? grads : &none;
    const size_t C = TS_LOSS_CELLS;
    float invN = 1.0f / (float)N;

    out->L_emb = ts_loss_l1(in->emb_s, in->emb_t, TS_LOSS_EMB, c->alpha, gr->emb);
    double tok = 0.0, outw = 0.0, outm = 0.0, mask = 0.0, iou = 0.0;
    for (int i = 0; i < N; i++) {
        const float *zs = in->z_s + (size_t)i * 4 * C, *zt = in->z_t + (size_t)i * 4 * C;
        const float *us = in->u_s + 4 * i, *ut = in->u_t + 4 * i;
        const uint8_t *g = in->g[i];
        int *el = out->eligible[i];
        ts_sample_eligible(in->n_real[i], el);
        tok += ts_loss_l1(in->tok_s + (size_t)i * TS_LOSS_TOK, in->tok_t + (size_t)i * TS_LOSS_TOK,
                          TS_LOSS_TOK, c->beta * invN,
                          gr->tok ? gr->tok + (size_t)i * TS_LOSS_TOK : NULL);

        /* hard mask weight from each network's selected output (a constant) */
        int ss = in->given_sel_s ? in->given_sel_s[i] : ts_sample_select(us, el);
        int st = in->given_sel_t ? in->given_sel_t[i] : ts_sample_select(ut, el);
        out->sel_s[i] = ss;
        out->sel_t[i] = st;
        ts_loss_iou_counts(zt + (size_t)st * C, g, C, &out->t_inter[i], &out->t_union[i]);
        ts_loss_iou_counts(zs + (size_t)ss * C, g, C, &out->s_inter[i], &out->s_union[i]);
        float H = in->given_H ? in->given_H[i]
                              : ts_loss_hard_weight(out->t_inter[i], out->t_union[i],
                                                    out->s_inter[i], out->s_union[i]);
        out->H[i] = H;
        float Hw = c->hard_weights ? H : 1.0f;
        out->L_out[i] = ts_loss_l1(zs, zt, 4 * C, c->gamma * Hw * invN,
                                   gr->z ? gr->z + (size_t)i * 4 * C : NULL);
        outw += Hw * out->L_out[i];
        outm += out->L_out[i];

        /* mask loss: best eligible output; IoU loss against the binarised student masks */
        int kb = -1, nk = 0;
        double li = 0.0;
        for (int k = 0; k < 4; k++) {
            out->ell[i][k] = ts_loss_focal_dice(zs + (size_t)k * C, g, C, 0.0f, NULL, NULL, NULL);
            long long a, b;
            ts_loss_iou_counts(zs + (size_t)k * C, g, C, &a, &b);
            out->v[i][k] = ts_loss_iou(a, b);
            if (!el[k]) continue;
            if (kb < 0 || out->ell[i][k] < out->ell[i][kb]) kb = k; /* ties: smaller k */
            li += fabs((double)us[k] - out->v[i][k]);
            nk++;
        }
        out->k_min[i] = kb;
        mask += out->ell[i][kb];
        iou += li / nk;
        if (gr->z && c->w_mask != 0.0f)
            ts_loss_focal_dice(zs + (size_t)kb * C, g, C, c->w_mask * invN,
                               gr->z + ((size_t)i * 4 + kb) * C, NULL, NULL);
        if (gr->u && c->w_iou != 0.0f)
            for (int k = 0; k < 4; k++)
                if (el[k])
                    gr->u[4 * i + k] += c->w_iou * invN / (float)nk *
                                        sign0f((float)((double)us[k] - out->v[i][k]));
    }
    out->L_tok = tok / N;
    out->L_out_weighted = outw / N;
    out->L_out_mean = outm / N;
    out->L_mask = mask / N;
    out->L_iou = iou / N;
    out->L_total = c->alpha * out->L_emb + c->beta * out->L_tok + c->gamma * out->L_out_weighted +
                   c->w_mask * out->L_mask + c->w_iou * out->L_iou;
    return 0;
}
