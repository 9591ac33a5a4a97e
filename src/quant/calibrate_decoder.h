/* calibrate_decoder.h - post-training calibration of the mask decoder's int8 layers (the
 * output upscaling's two transposed convolutions and the mask product, quant/int8_model.h
 * "decoder layers"), and the tensors that store them in the int8 model file.
 *
 * Prompts (issue 17): per calibration image, a regular 4 x 4 grid of single foreground points
 * (cell centres) and, for each, the box of the float model's best mask for that point. The
 * embeddings are the float model's. Input quantisers: the keys entering ConvT(256->64) are
 * LayerNorm outputs (symmetric, zero point 128, MSE step over codes [-128, 127]); the inputs of
 * ConvT(64->32) and of the mask product follow a GELU (asymmetric: the MSE search of
 * ts_calib_search_asym). */
#ifndef TS_CALIBRATE_DECODER_H
#define TS_CALIBRATE_DECODER_H

#include "io/tensor_map.h"
#include "model/sam.h"
#include "model/sam_decoder_internal.h"

/* Token-side Linears (TS_DEC_SITE_TOK0 + i, ts_dec_tok_layer): inputs after a ReLU take the
 * asymmetric search (zero point 0 in practice), the others (LayerNorm outputs + PE, attention
 * contexts) the symmetric one, zero point 128. Their samples are every row of every calibration
 * prompt (a few hundred rows); a step of 0 in ts_int8_decoder_view_new leaves a layer float. */
/* Rows of the weight scales of every site (ts_dec_ws_offset): the two ConvTranspose2d
 * (4 * 64 + 4 * 32) and the token-side Linears' output channels. */
#define TS_DEC_WS_TOTAL 11396

typedef struct {
    float step[TS_DEC_N_SITES]; /* TS_DEC_SITE_* (model/sam_decoder_internal.h) */
    int zp[TS_DEC_N_SITES];
    /* searched per-row weight scales (the Hessian method) of site s at ws + ts_dec_ws_offset(s)
     * when ws_set[s]; else (zero-initialised) the abs-max scales of ts_quant_weights */
    int ws_set[TS_DEC_N_SITES];
    float ws[TS_DEC_WS_TOTAL];
} ts_dec_quant;

/* Where site s's weight scales start in ts_dec_quant.ws, and their count in *n (0 for the
 * activation-only sites). */
size_t ts_dec_ws_offset(int s, int *n);

struct ts_hessian; /* quant/hessian.h */

/* Calibrates the decoder of the float model on the images paths[0 .. n-1] (MSE steps). */
int ts_calib_decoder(tinysam_model *model, const char *const *paths, int n, ts_dec_quant *q,
                     int verbose);

/* The same with h (task-loss gradients of the same images, ts_hessian_collect) not NULL: the
 * layers with a fixed weight and a hooked output gradient (both ConvTranspose2d, the int8
 * token-side Linears) take the Hessian-guided search of quant/hessian.h (input step and
 * per-row weight scales into q->ws, alternating, from the MSE step), on up to 128 of their
 * sampled rows (a layer whose G is all zero, mask token 0's hypernetwork, whose mask is not in
 * the task loss, takes the plain output error instead). The mask product and the attention
 * products (an operand that changes with the prompt, quantised per call: no fixed weight to
 * search against) keep their MSE steps. */
int ts_calib_decoder_hessian(tinysam_model *model, const char *const *paths, int n,
                             const struct ts_hessian *h, ts_dec_quant *q, int verbose);

/* A view of src in which the decoder's int8 layers replace their float tensors, for
 * ts_int8_model_save (which copies I8 tensors as they are): tensor data is src's or owned by
 * the view. Free with ts_int8_decoder_view_free. */
typedef struct ts_int8_decoder_view ts_int8_decoder_view;
int ts_int8_decoder_view_new(const ts_tensor_map *src, const ts_dec_quant *q,
                             ts_int8_decoder_view **out);
const ts_tensor_map *ts_int8_decoder_view_map(const ts_int8_decoder_view *v);
void ts_int8_decoder_view_free(ts_int8_decoder_view *v);

#endif
