/* image_encoder.h - TinyViT (vit_t) image encoder with neck (spec TINYSAM.md section 4).
 * ref: tinysam/modeling/tiny_vit_sam.py */
#ifndef TS_IMAGE_ENCODER_H
#define TS_IMAGE_ENCODER_H

#include "io/tensor_map.h"

typedef struct ts_tiny_vit ts_tiny_vit; /* defined in image_encoder.c / tiny_vit_sam.c */

/* Called with each named intermediate output (names and layouts as in the fixtures'
 * stages.json: patch_embed, layers0_block0, layers0, layers1_block0_attn, layers1_block0,
 * layers1, layers2_block0, layers2, layers3, neck), in PyTorch's layout at that point. */
typedef void (*ts_stage_hook)(void *user, const char *name, const float *data, long long numel);

/* Takes the "image_encoder.*" tensors from m (checks shapes, marks them used; BatchNorm is
 * folded into private copies, the map itself is not modified). */
int ts_tiny_vit_load(ts_tensor_map *m, ts_tiny_vit **out);
void ts_tiny_vit_free(ts_tiny_vit *enc);
/* input: 3 x 1024 x 1024 normalised, padded; out: 256 x 64 x 64. hook may be NULL. */
int ts_tiny_vit_forward(const ts_tiny_vit *enc, const float *input, float *out,
                        ts_stage_hook hook, void *user);

#endif
