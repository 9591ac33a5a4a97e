/* losses.h - the distillation and ground-truth losses of spec/DISTILL.md section 2 in float32,
 * as the trainer uses them, with the derivatives of section 2.8 for the backward pass.
 *
 * Values are per-cell float32 arithmetic summed in double (the sums run over up to 2^20
 * cells). Every gradient output ACCUMULATES (+=) w times the derivative, as the double
 * reference versions in grad_ops.h do, and may be NULL. Masks are uint8 0/1 maps on the
 * 256 x 256 grid; logits z > 0 is "in the mask". */
#ifndef TS_TRAIN_LOSSES_H
#define TS_TRAIN_LOSSES_H

#include <stddef.h>
#include <stdint.h>

#define TS_LOSS_MAX_SETS 64
#define TS_LOSS_CELLS 65536     /* one low-res map */
#define TS_LOSS_EMB 1048576     /* 256 x 64 x 64 */
#define TS_LOSS_TOK 1280        /* rows 0..4 of hs: 5 x 256 */

/* ---- single terms -------------------------------------------------------------------------- */

/* mean |a - b| over n; da += w * sign(a - b) / n with sign(0) = 0. */
double ts_loss_l1(const float *a, const float *b, size_t n, float w, float *da);

/* |z > 0 AND g| and |z > 0 OR g| over n cells. */
void ts_loss_iou_counts(const float *z, const uint8_t *g, size_t n, long long *inter,
                        long long *uni);
/* inter / uni, 1 when uni = 0. */
double ts_loss_iou(long long inter, long long uni);
/* H = sigma(IoU_T / (IoU_S + 1e-6) - 1) in double, rounded to float32 (section 2.5). */
float ts_loss_hard_weight(long long t_inter, long long t_union, long long s_inter,
                          long long s_union);

/* 20 * focal + dice of one map (section 2.6) into *focal and *dice (may be NULL); returns
 * 20 * focal + dice. dz += w * its derivative (dz may be NULL). */
double ts_loss_focal_dice(const float *z, const uint8_t *g, size_t n, float w, float *dz,
                          double *focal, double *dice);

/* ---- one step ------------------------------------------------------------------------------ */

typedef struct {
    float alpha, beta, gamma; /* embedding, token, output terms (0 switches a term off) */
    float w_mask, w_iou;      /* ground-truth terms */
    int hard_weights;         /* hard mask weighting; off: H_i = 1 */
} ts_loss_config;

/* alpha = beta = gamma = 1, unit ground-truth weights, hard mask weighting on. */
void ts_loss_config_default(ts_loss_config *c);

typedef struct {
    int N;                          /* prompt sets, 1 .. TS_LOSS_MAX_SETS */
    const float *emb_s, *emb_t;     /* 256 x 64 x 64 */
    const float *tok_s, *tok_t;     /* N x 5 x 256: hs rows 0..4 */
    const float *z_s, *z_t;         /* N x 4 x 256 x 256 low-res logits of all mask tokens */
    const float *u_s, *u_t;         /* N x 4 IoU predictions */
    const uint8_t *const *g;        /* N low-res ground truths */
    const int *n_real;              /* N: real sparse prompts of each set (gives K_i) */
    /* The "use given H and selections" switch of section 6.2 (NULL: computed). */
    const float *given_H;
    const int *given_sel_s, *given_sel_t;
} ts_loss_inputs;

typedef struct {
    double L_emb, L_tok, L_out_weighted, L_out_mean, L_mask, L_iou, L_total;
    int eligible[TS_LOSS_MAX_SETS][4];
    int sel_s[TS_LOSS_MAX_SETS], sel_t[TS_LOSS_MAX_SETS]; /* selected outputs */
    long long t_inter[TS_LOSS_MAX_SETS], t_union[TS_LOSS_MAX_SETS];
    long long s_inter[TS_LOSS_MAX_SETS], s_union[TS_LOSS_MAX_SETS];
    float H[TS_LOSS_MAX_SETS];
    double L_out[TS_LOSS_MAX_SETS];
    double ell[TS_LOSS_MAX_SETS][4]; /* 20 FL + DL of every k (the loss uses k in K_i) */
    int k_min[TS_LOSS_MAX_SETS];
    double v[TS_LOSS_MAX_SETS][4];   /* IoU targets of every k */
} ts_loss_result;

/* Gradients of L_total with respect to the student tensors, accumulated; NULL members are
 * skipped. Shapes as in ts_loss_inputs. */
typedef struct {
    float *emb, *tok, *z, *u;
} ts_loss_grads;

/* All the terms of section 2.7 for one image: L_total = alpha L_emb + beta L_tok +
 * gamma (1/N) sum H_i L_out,i + w_mask L_mask + w_iou L_iou (L_out_weighted is reported
 * without gamma). grads may be NULL. Returns 0 or TINYSAM_E_ARG. */
int ts_loss_step(const ts_loss_config *c, const ts_loss_inputs *in, ts_loss_result *out,
                 const ts_loss_grads *grads);

#endif
