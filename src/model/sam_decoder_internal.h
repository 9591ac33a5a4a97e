/* sam_decoder_internal.h - the prompt encoder's and mask decoder's weights (shared by
 * prompt_encoder.c, mask_decoder.c and the tests). Pointers alias the tensor map. */
#ifndef TS_SAM_DECODER_INTERNAL_H
#define TS_SAM_DECODER_INTERNAL_H

#include "nn/nn.h"

#include <pthread.h>
#include <stdatomic.h>

typedef struct ts_decode_ctx ts_decode_ctx; /* per-call scratch (mask_decoder.c) */
typedef struct ts_i8pack ts_i8pack;         /* nn/gemm_i8.h */

/* The W8A8 output upscaling of an int8 model file (quant/int8_model.h, "decoder layers"):
 * ConvT(256->64) and ConvT(64->32) as int8 GEMMs (one output column per (sub-pixel, channel),
 * per-column weight scales) with static uint8 input quantisers, and the mask product (GELU
 * output x hypernetwork vectors) in int8 with the hypernetwork vectors quantised per prompt. */
typedef struct {
    ts_i8pack *up0, *up3;
    float up0_step, up3_step, mp_step; /* input steps: up0, up3, mask product */
    int up0_zp, up3_zp, mp_zp;
    /* the image side of the folded cross attentions: the keys + PE entering layer 0, 1 and the
     * final attention, quantised once per layer for the q.k products of both attentions */
    float kpe_step[3];
    int kpe_zp[3];
    /* the keys (values of token-to-image attention) entering layer 0, 1 and the final attention
     * (the last = up0's input: the same tensor) */
    float keys_step[3];
    int keys_zp[3];
} ts_up_i8;

/* Calibration probe (quant/calibrate_decoder.c): when set, the float upscaling hands it the
 * inputs of its three int8 sites (TS_DEC_SITE_*), rows x cols, row0 = index of the first row
 * in the image's sequence of that site. Called from pool threads: the callee locks. */
enum {
    TS_DEC_SITE_UP0 = 0,
    TS_DEC_SITE_UP3 = 1,
    TS_DEC_SITE_MASK = 2,
    TS_DEC_SITE_KPE0 = 3,  /* + layer: 3, 4, 5 (5 = the final attention) */
    TS_DEC_SITE_KEYS0 = 6, /* + layer: 6, 7 (the final attention's keys: TS_DEC_SITE_UP0) */
    TS_DEC_SITE_TOK0 = 8,  /* + i: the input of token-side Linear i (ts_dec_tok_layer) */
    TS_DEC_N_TOK = 37,
    TS_DEC_TOK_IOU0 = 34, /* the IoU head's first Linear */
    TS_DEC_N_SITES = TS_DEC_SITE_TOK0 + TS_DEC_N_TOK
};

/* The token-side Linears of the decoder that can be W8A8 (int8_model.h layers: codes,
 * weight_scale, bias, input_step, input_zero_point): per two-way layer L (10 each, i = 10 L +)
 * self_attn q/k/v/out (0-3), cross_attn_token_to_image q/out (4, 5), cross_attn_image_to_token
 * k/v (6, 7: their token side), mlp lin1/lin2 (8, 9); then the final attention's q/out (20, 21),
 * the hypernetwork MLPs (22 + 3 t + k) and the IoU head (34 + k). The image-side and folded
 * weights (t2i k/v, i2t q/out) stay float. Writes layer i's name prefix into P (n bytes) and its
 * shape N x K; *relu_in when its input follows a ReLU (asymmetric quantiser, zero point 0).
 * Returns -1 when i is out of range. */
int ts_dec_tok_layer(int i, char *P, size_t n, int *N, int *K, int *relu_in);
/* The int8 layer that site s feeds, named as above: the two ConvTranspose2d (UP0, UP3: N the
 * int8 layer's rows, 4 sub-pixels x out channels, K the input channels), the mask product
 * (MASK: N 4, K 32; its weight is per prompt) and the token-side Linears (TOK0 + i). Returns
 * -1 for the other sites (activation-only quantisers). */
int ts_dec_site_layer(int s, char *P, size_t n, int *N, int *K, int *relu_in);

/* Token-side Linears that ts_calib_decoder leaves float (weight-only in the file): layer 0's
 * self-attention q/k/v, whose input is the raw prompt tokens (label embeddings + PE: a
 * negative point's, never in the calibration prompts, lies outside the calibrated range; in
 * int8 they flipped the best-mask choice of the fixture case picture1/point_neg under the
 * hessian encoder), and the IoU head (three M = 1 layers that pick the best mask; 0.1% of the
 * time). The loader still takes any of them W8A8 when a file has its input step. */
static inline int ts_dec_tok_kept_float(int i) { return i <= 2 || i >= TS_DEC_TOK_IOU0; }

/* A token-side Linear in int8 (p NULL: it runs in float). */
typedef struct {
    ts_i8pack *p;
    float step;
    int zp;
    const float *bias;
    int site; /* its calibration probe site (TS_DEC_SITE_TOK0 + i), 0 for none */
} ts_lin_i8;
typedef void (*ts_decoder_probe_fn)(void *ctx, int site, const float *x, int rows, int cols,
                                    int row0);
extern ts_decoder_probe_fn ts_decoder_probe;
extern void *ts_decoder_probe_ctx;

struct ts_prompt_encoder {
    const float *gauss;        /* 2 x 128 */
    const float *point_emb[4]; /* 256 each: negative, positive, box corner 1, box corner 2 */
    const float *not_a_point, *no_mask;
    const float *c0_w, *c0_b, *n1_w, *n1_b, *c3_w, *c3_b, *n4_w, *n4_b, *c6_w, *c6_b;
    float *dense_pe_tok;       /* 4096 x 256 (token layout) */
    int dense_pe_cached;       /* read in place from the file's load cache: not ours */
    int dense_pe_pending;      /* being computed by pe_thread (ts_prompt_encoder_load_async) */
    pthread_t pe_thread;
};

typedef struct {
    const float *q_w, *q_b, *k_w, *k_b, *v_w, *v_b, *o_w, *o_b;
    int dim; /* internal dim: 256 (self) or 128 (cross) */
    ts_wpack *q_p, *k_p, *v_p, *o_p; /* the projections packed at load for the GEMM kernel */
    ts_lin_i8 q8, k8, v8, o8;        /* W8A8 forms (token side only), else p == NULL */
} ts_attn_w;

typedef struct {
    ts_attn_w self_attn, t2i, i2t;
    const float *n1_w, *n1_b, *n2_w, *n2_b, *n3_w, *n3_b, *n4_w, *n4_b;
    const float *l1_w, *l1_b, *l2_w, *l2_b; /* MLP 256 -> 2048 -> 256 */
    ts_wpack *l1_p, *l2_p;
    ts_lin_i8 l1_8, l2_8;
} ts_twoway_layer;

struct ts_mask_decoder {
    ts_twoway_layer layer[2];
    ts_attn_w final_attn;
    const float *nf_w, *nf_b;
    const float *iou_token, *mask_tokens; /* 1 x 256, 4 x 256 */
    float *up0_w;                         /* packed 256 x (4*64): column (a*2+b)*64+o */
    const float *up0_b, *upn_w, *upn_b;
    float *up3_w;                         /* packed 64 x (4*32) */
    const float *up0_src, *up3_src;       /* the ConvTranspose2d weights they are packed from */
    const float *up3_b;
    float up0_bias[256], up3_bias[128];   /* biases repeated per (a, b) sub-pixel */
    const float *hyper[4][6];             /* w0 b0 w1 b1 w2 b2 */
    const float *iou_head[6];
    ts_wpack *hyper_p[4][3], *iou_p[3]; /* packed w0 w1 w2 */
    ts_lin_i8 hyper_8[4][3], iou_8[3];  /* their W8A8 forms, when the file has them */
    int n_tok_i8;                       /* token-side Linears in int8 */
    ts_up_i8 *up_i8;                    /* int8 upscaling, or NULL (float) */
    pthread_mutex_t ctx_lock;
    ts_decode_ctx *ctx_cache; /* scratch of the last call, reused by the next */
    unsigned gen;             /* bumped by ts_mask_decoder_refresh (weights changed) */
    atomic_uint image_sides;  /* image sides made (an embedding's layer-0 projections): tests
                                 check that a prepared embedding's first decode makes none */
};

/* Prompt sets of up to this many tokens (5 + sparse) take the folded cross attentions;
 * tests set it to 0 to check the unfolded path against the same references. */
extern int ts_mask_decoder_fold_max;

#endif
