/* quant.h - the quantisers of Q-TinySAM (spec §7) and the scale searches of post-training
 * calibration. Pure functions on float data; the integer GEMM that consumes the codes is
 * nn/gemm_i8.h.
 *
 * Conventions (all of them):
 *   - a "step" (the official code's `*_interval`) is the real value of one integer unit;
 *   - rounding is round-half-to-even of x / step (nearbyintf in the default rounding mode, as
 *     torch.round), computed as a true division, not x * (1/step), so that codes match the
 *     official fake-quantisation bit for bit;
 *   - weights are symmetric, per output channel, clamped to [-127, 127] (not -128: with a
 *     symmetric range the quantised weight sum stays symmetric and |w| = max maps to exactly
 *     127 either sign; the official layers use [-128, 127], which only differs for weights
 *     that a caller-given step puts below -127.5 steps);
 *   - activations in the integer GEMM are uint8 with a zero point: real = step * (u8 - zp);
 *     a signed code q in [-128, 127] is stored as u8 = q + 128 (zp 128). */
#ifndef TS_QUANT_H
#define TS_QUANT_H

#include <stddef.h>
#include <stdint.h>

#define TS_QW_MAX 127 /* weight codes are in [-TS_QW_MAX, TS_QW_MAX] */

/* §7 InferQuantLinearPost: the step of the negative part of a post-GELU activation,
 * |min GELU| / 128. */
#define TS_TWIN_GELU_NEG_STEP (0.16997124254703522f / 128.0f)

/* ---- weights ---------------------------------------------------------------------------- */

/* Per-output-channel symmetric quantisation of W[N][K] (row n = output channel n, ldw):
 * scale[n] = max_k |W[n][k]| / 127 (1.0 for an all-zero row, so that it stays usable as a
 * divisor), Wq[n][k] = clamp(round(W[n][k] / scale[n]), -127, 127), Wq dense (ld K). */
void ts_quant_weights(const float *W, int N, int K, int ldw, int8_t *Wq, float *scale);
/* The same with given scales (e.g. from a search); non-positive scales give zero codes. */
void ts_quant_weights_scaled(const float *W, int N, int K, int ldw, const float *scale,
                             int8_t *Wq);

/* ---- element quantisers ----------------------------------------------------------------- */

/* Symmetric signed: clamp(round(x / step), qmin, qmax) (qmin -128 / -127, qmax 127). */
int ts_quant_sym(float x, float step, int qmin, int qmax);
/* §7 Conv2d activations: q = clamp(round((x - bias) / step), -128, 127), x^ = q*step + bias. */
int ts_quant_asym(float x, float step, float bias);
float ts_dequant_asym(int q, float step, float bias);
/* Unsigned (post-softmax, x >= 0): clamp(round(x / step), 0, 255). */
int ts_quant_u8(float x, float step);
/* The uint8 code of the integer GEMM: clamp(round(x / step) + zp, 0, 255). */
uint8_t ts_quant_u8_zp(float x, float step, int zp);
/* The same with the signed code limited to [qlo, qhi] (-zp <= qlo <= 0 <= qhi <= 255 - zp):
 * clamp(round(x / step), qlo, qhi) + zp; NaN gives zp. E.g. the twin-uniform post-GELU codes
 * as GEMM inputs: qp = (x, step_pos, 0, 0, 127), qn + 128 = (x, NEG_STEP, 128, -128, 0). */
uint8_t ts_quant_u8_range(float x, float step, int zp, int qlo, int qhi);

/* Twin-uniform, post-GELU (§7 InferQuantLinearPost): x^ = qp*step_pos + qn*TS_TWIN_GELU_NEG_STEP
 * with qp = clamp(round(x / step_pos), 0, 127), qn = clamp(round(x / neg_step), -128, 0). As
 * written in §7 both terms are always added; one of them is zero for any x, so the literal and
 * the intended twin-uniform value agree. */
void ts_twin_gelu_quant(float x, float step_pos, int *qp, int *qn);
float ts_twin_gelu_dequant(int qp, int qn, float step_pos);
float ts_twin_gelu_fq(float x, float step_pos); /* quantise + dequantise */

/* Twin-uniform, post-softmax (x in [0, 1]) with the large region [split, 1] on step 1/127 and
 * the small region [0, split) on step_lo. Value = q_hi / 127 + q_lo * step_lo.
 * Literal (§7 InferQuantMatMulPost, reproduced as written):
 *   q_hi = clamp(round(clamp(x, split, 1) * 127), 0, 127),
 *   q_lo = clamp(round(clamp(x, 0, split) / step_lo), 0, 127)
 * (both terms always added: below split q_hi is round(split*127), above it q_lo is
 * round(split/step_lo), so the value is the intended one only when those round to zero).
 * Intended (ts_twin_softmax_quant_region): only the term of x's own region is non-zero. */
void ts_twin_softmax_quant(float x, float split, float step_lo, int *q_hi, int *q_lo);
void ts_twin_softmax_quant_region(float x, float split, float step_lo, int *q_hi, int *q_lo);
float ts_twin_softmax_dequant(int q_hi, int q_lo, float step_lo);
float ts_twin_softmax_fq(float x, float split, float step_lo); /* literal q + dq */

/* ---- arrays: quantise + dequantise in place (fake quantisation, for calibration) ---------- */

void ts_fq_sym(float *x, size_t n, float step, int qmin, int qmax);
void ts_fq_asym(float *x, size_t n, float step, float bias);
void ts_fq_u8(float *x, size_t n, float step);
void ts_fq_twin_gelu(float *x, size_t n, float step_pos);
void ts_fq_twin_softmax(float *x, size_t n, float split, float step_lo);

/* ---- scale searches ---------------------------------------------------------------------- */

/* The step minimising the mean squared quantise -> dequantise error of x[n] under
 * clamp(round(x/step), qmin, qmax)*step. Candidates: clip = r * range, step = clip / qmax,
 * with range = max|x| when qmin < 0, else max(x, 0), and r = lo_ratio + (1 - lo_ratio) * i /
 * (n_grid - 1), i = 0 .. n_grid - 1 (n_grid 1: r = 1). The first best candidate wins a tie.
 * Returns the step (1.0 when x is all zero), and its MSE in *mse when not NULL. */
float ts_quant_search_step_mse(const float *x, size_t n, int qmin, int qmax, int n_grid,
                               float lo_ratio, double *mse);

/* Layer-output-error search of an activation step: X[n x k] (the layer's input samples),
 * W[k x m] (the layer as X*W), W quantised per output column with w_scale[m] (NULL: max|col|/127)
 * and codes clamped to [-127, 127]; for each candidate step, X is fake-quantised with
 * clamp(round(x/step), qmin, qmax)*step and the error is the sum over the n x m outputs of
 * (X*W - deq(q(X)) * deq(q(W)))^2. Returns the index of the first best candidate (err in
 * *err when not NULL), or a negative tinysam_status (bad argument, out of memory). */
int ts_quant_search_step_layer(const float *X, int n, int k, const float *W, int m,
                               const float *w_scale, const float *cand, int n_cand, int qmin,
                               int qmax, double *err);

#endif
