/* sam_decoder.h - SAM's prompt encoder and mask decoder (spec TINYSAM.md section 5).
 * ref: tinysam/modeling/prompt_encoder.py, mask_decoder.py, transformer.py */
#ifndef TS_SAM_DECODER_H
#define TS_SAM_DECODER_H

#include "io/tensor_map.h"

#include <stdatomic.h>

typedef struct ts_prompt_encoder ts_prompt_encoder; /* defined in prompt_encoder.c */
typedef struct ts_mask_decoder ts_mask_decoder;     /* defined in mask_decoder.c */

/* One prompt set, coordinates already in the prompt encoder's normalised frame:
 * (x_1024 + 0.5) / 1024 rounded to float32 by the caller (the caller decides whether the
 * arithmetic is float32, as SamPredictor.predict, or double, as the everything mode). */
typedef struct {
    int n_points;
    const float *coords;     /* n_points x 2 */
    const int *labels;       /* n_points: 1, 0 (or -1 = padding point) */
    int has_box;
    float box[4];            /* normalised corners (x0, y0, x1, y1) */
    const float *mask_input; /* 256 x 256 logits, or NULL */
} ts_prompt_set;

int ts_prompt_encoder_load(ts_tensor_map *m, ts_prompt_encoder **out);
/* The same, its dense PE table (when not in the file's load cache) computed on a thread of
 * its own meanwhile (the model load goes on with the other networks): call
 * ts_prompt_encoder_ready before any use. */
int ts_prompt_encoder_load_async(ts_tensor_map *m, ts_prompt_encoder **out);
void ts_prompt_encoder_ready(ts_prompt_encoder *pe);
void ts_prompt_encoder_free(ts_prompt_encoder *pe);
int ts_mask_decoder_load(ts_tensor_map *m, ts_mask_decoder **out);
void ts_mask_decoder_free(ts_mask_decoder *d);
/* Makes a one-prompt call's scratch now (the model load calls it last), so that the first
 * call does not allocate it (its pages are still faulted in by first use). */
void ts_mask_decoder_prepare(ts_mask_decoder *d);
/* The per-image share of a decode, done ahead (SamPredictor.set_image's work): the image side
 * of this embedding and its layer-0 projections (int8 operands too), kept as a call on the
 * same embedding would keep them, and the one-prompt scratch faulted in, so that the first
 * ts_sam_decode on it runs as a warm one. Results are unchanged, bit for bit. */
int ts_sam_decode_prepare(const ts_prompt_encoder *pe, const ts_mask_decoder *d,
                          const float *embedding);
/* Faults in the scratch ts_sam_decode_prepare would fault in, 1 MB at a time until *stop is
 * set (a helper task beside single-threaded work). Returns 1 when all of it is in. */
int ts_sam_decode_warm(const ts_mask_decoder *d, const atomic_int *stop);
/* After the weights the decoder was loaded from changed in place (a training step): packs its
 * copies again. Not concurrently with a decode. */
void ts_mask_decoder_refresh(ts_mask_decoder *d);

/* Sparse tokens of one set: k x 256 into out (k <= n_points + 2), count in *k. */
void ts_prompt_sparse(const ts_prompt_encoder *pe, const ts_prompt_set *s, float *out, int *k);
/* Dense embedding 256 x 64 x 64 (no_mask_embed broadcast when mask_input is NULL). */
int ts_prompt_dense(const ts_prompt_encoder *pe, const float *mask_input, float *out);
/* The same with caller-provided scratch of TS_PROMPT_DENSE_SCRATCH floats (no allocation). */
#define TS_PROMPT_DENSE_SCRATCH (128 * 128 * 4 + 64 * 64 * 16)
void ts_prompt_dense_ws(const ts_prompt_encoder *pe, const float *mask_input, float *out,
                        float *scratch);
/* Dense positional encoding in token layout, 4096 x 256 (64 x 64 cells, row-major). */
const float *ts_prompt_dense_pe(const ts_prompt_encoder *pe);

/* Runs prompt encoder + mask decoder for n sets against one image embedding
 * (256 x 64 x 64). Writes all 4 mask tokens: low_res n x 4 x 256 x 256 and iou n x 4.
 * Callers pick tokens 1..3 (TinySAM) or 0 (SAM single-mask). Safe to call concurrently on
 * one decoder; the decoder keeps the last call's scratch (about 20 MB per worker plus 18 MB)
 * for the next call, freed with the decoder, with the image side of the last embedding (its
 * layer-0 projections): a call on the same embedding values skips them. A set's results do
 * not depend on the other sets of the call: n sets give what n calls of one set give, bit
 * for bit. */
int ts_sam_decode(const ts_prompt_encoder *pe, const ts_mask_decoder *d, const float *embedding,
                  int n, const ts_prompt_set *sets, float *low_res, float *iou);
/* The same, also writing the transformer's output tokens after norm_final_attn, rows 0..4
 * (IoU token, 4 mask tokens: `hs` of predict_masks), n x 5 x 256 into tokens (may be NULL):
 * the token level of distillation (spec DISTILL.md 1.4). */
int ts_sam_decode_tokens(const ts_prompt_encoder *pe, const ts_mask_decoder *d,
                         const float *embedding, int n, const ts_prompt_set *sets, float *low_res,
                         float *iou, float *tokens);

#endif
