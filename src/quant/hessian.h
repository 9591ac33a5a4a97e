/* hessian.h - the Hessian-guided scale search of Q-TinySAM (`tinysam quantize --method
 * hessian`, issue 17; PTQ4ViT's metric): for a quantised layer with float output O and
 * quantised output Ô on the calibration data, the steps minimise E[ sum_i (Ô_i - O_i)^2 g_i^2 ]
 * where g = dL/dO is the gradient of a task loss at the float model.
 *
 * Task loss L (per calibration image): binary cross-entropy between the float model's low-res
 * mask logits (the three multimask tokens TinySAM returns) and its own binarised masks
 * (logit > 0), averaged over the image's prompts: a regular 4 x 4 grid of single points and the
 * box of each point's best mask (the prompts of calibrate_decoder.h). g comes from one backward
 * per image through the trainer's float decoder and encoder (train/decoder_grad.h
 * ts_dgf_set_grad_hook for the decoder's int8 layers, train/encoder_grad.h
 * ts_egf_set_grad_hook for the encoder's).
 *
 * What is kept: per layer and OUTPUT CHANNEL c, G[c] = sum of g^2 over the calibration rows
 * (pixels / tokens) and images, i.e. the diagonal of the Fisher approximation reduced over the
 * rows. The exact per-element form would hold one float per activation of every quantised layer
 * (about 1 GB per image for vit_t at 1024) and the search only sees a subsample of rows anyway;
 * the channel is where g^2 varies most (a channel feeding a residual branch or a LayerNorm
 * that scales it up). The objective becomes sum_c G[c] sum_rows (Ô_rc - O_rc)^2 on the sampled
 * rows. */
#ifndef TS_QUANT_HESSIAN_H
#define TS_QUANT_HESSIAN_H

#include "model/image_encoder.h"
#include "model/sam_decoder_internal.h"
#include "tinysam.h"

#include <stddef.h>

/* Per-channel squared output gradients of the encoder's quantised layers, and of the decoder's
 * int8 layers by calibration site (model/sam_decoder_internal.h TS_DEC_SITE_*): the two
 * ConvTranspose2d (UP0, UP3: N = 4 * out, the int8 layer's rows), the mask product (MASK: the
 * four mask tokens) and the token-side Linears (TOK0 + i); the attention-product sites (KPE*,
 * KEYS*) have none (dec_n 0, dec_g2 NULL). */
typedef struct ts_hessian {
    double *g2[TS_TINY_VIT_N_QLAYERS]; /* [N of the layer], NULL when no gradient was seen */
    int n[TS_TINY_VIT_N_QLAYERS];
    char name[TS_TINY_VIT_N_QLAYERS][96];
    double *dec_g2[TS_DEC_N_SITES]; /* [dec_n], from the decoder backward's hook */
    int dec_n[TS_DEC_N_SITES];
    char dec_name[TS_DEC_N_SITES][96];
    int images, prompts; /* what was accumulated */
} ts_hessian;

/* An empty accumulator for the layers of the float encoder enc. */
int ts_hessian_init(ts_hessian *h, const ts_tiny_vit *enc);
void ts_hessian_free(ts_hessian *h);

/* The ts_egf_grad_hook (train/encoder_grad.h) that accumulates into h (ctx): layers not among
 * the quantised ones are ignored. */
void ts_hessian_hook(void *ctx, const char *name, const float *dr, size_t rows, int cols,
                     const float *scale);

/* The decoder's hook (train/decoder_grad.h ts_dgf_grad_hook) accumulating into acc
 * (TS_DEC_N_SITES arrays as dec_g2, one per prompt set: acc[set * TS_DEC_N_SITES + site]);
 * ctx is a ts_hessian_dec_ctx. Sets are summed in set order afterwards (ts_hessian_collect),
 * so the result does not depend on the threads. */
typedef struct {
    const ts_hessian *h;
    double **acc;
    int n_sets;
} ts_hessian_dec_ctx;
void ts_hessian_dec_hook(void *ctx, int set, const char *name, const float *dy, size_t rows,
                         int cols);

/* Accumulates g^2 of the task loss over the calibration images paths[0 .. n-1] for the float
 * model (progress on stderr when verbose), the encoder's and the decoder's layers. Needs
 * about 2 GB (the trainer's tapes). */
int ts_hessian_collect(const tinysam_model *model, const char *const *paths, int n,
                       ts_hessian *h, int verbose);

/* The alternating search of one GEMM layer: X[n][K] sampled inputs, W[N][K] float weights
 * (BN folded), G[N] channel weights (NULL: all 1, the plain output error). The input quantiser
 * is symmetric (asym 0: codes [-128, 127], step = r * amax / 127, *zp = 128) or, after a GELU,
 * asymmetric (asym 1: lo = min(x_min, 0) near code 0, hi = r * x_max, step = (hi - lo) / 255);
 * amax / x_min / x_max are the observed ranges (over all calibration values, not only X's).
 * The weight scales are per output channel: s[c] = r_c * max_k |W[c][k]| / 127, codes
 * clamp(round(w / s), -127, 127). Candidates r: n_cand points of [lo_r, hi_r]. Starting from
 * *step / *zp (e.g. the MSE step) and the abs-max weight scales, `rounds` rounds of: the weight
 * scales given the quantised input (per channel: the objective separates), then the input step
 * given the quantised weights; each search also keeps what stands as a candidate (the objective
 * never rises), and the rounds stop early when one changed nothing. Writes *step, *zp, w_scale[N]; the objective of the result in
 * *err when not NULL. Returns 0 or a status. */
typedef struct {
    int n_cand;     /* 100 */
    float lo_r, hi_r; /* 0.5, 1.2 */
    int rounds;     /* 3 */
} ts_hessian_grid;
void ts_hessian_grid_default(ts_hessian_grid *g);
int ts_hessian_search_layer(const float *X, int n, int K, const float *W, int N,
                            const double *G, int asym, float x_min, float x_max,
                            const ts_hessian_grid *grid, float *step, int *zp, float *w_scale,
                            double *err);

#endif
