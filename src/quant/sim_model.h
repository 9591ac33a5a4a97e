/* sim_model.h - a vit_t SAM whose layers include Q-TinySAM's quantisation classes
 * (quant/sim_layers.h), run as the official model code runs them: a straightforward forward
 * of the image encoder (TinyViT + neck) and of the mask decoder (with the prompt encoder's
 * mask down-scaling) in which every Linear / Conv2d / ConvTranspose2d is a ts_simq_layer
 * (quant_forward, raw, or plain torch layers as raw). The sparse prompt embedding and the
 * positional encodings have no quantised layer and come from model/prompt_encoder.c.
 *
 * This is the reference path for a quantised module tree (io/module_tree.h metadata
 * "tinysam.quant_layers" not empty); the optimised float networks of model/ are not used for
 * encode and predict with such a model. Environment TINYSAM_QSIM_FLOAT=1 keeps every layer
 * on the simulated float path (no int8 GEMM). */
#ifndef TS_SIM_MODEL_H
#define TS_SIM_MODEL_H

#include "io/tensor_map.h"
#include "model/sam_decoder.h"

typedef struct ts_simq_model ts_simq_model;

/* *out = NULL (and 0) when m holds no quantisation layer. Marks the layers' tensors used. */
int ts_simq_model_load(ts_tensor_map *m, ts_simq_model **out);
void ts_simq_model_free(ts_simq_model *s);
/* Layers per path: [0] raw float, [1] simulated in float, [2] int8 GEMM; and per class
 * (ts_simq_kind) the quantised ones. */
void ts_simq_model_counts(const ts_simq_model *s, int path[3], int per_class[4]);

/* input 3 x 1024 x 1024 (normalised, padded) -> embedding 256 x 64 x 64. */
int ts_simq_encode(const ts_simq_model *s, const float *input, float *out);
/* One prompt set (as ts_sam_decode's): low_res 4 x 256 x 256 and iou[4], all 4 tokens. */
int ts_simq_decode(const ts_simq_model *s, const ts_prompt_encoder *pe, const float *embedding,
                   const ts_prompt_set *set, float *low_res, float *iou);

#endif
