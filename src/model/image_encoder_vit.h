/* image_encoder_vit.h - SAM's ViT image encoder (ViT-B/L/H and any other width, depth and head
 * count) with its neck. ref: segment_anything/modeling/image_encoder.py (ImageEncoderViT)
 *
 * The configuration is read from the checkpoint's tensor shapes, never from a file name:
 * width from patch_embed.proj.weight, depth from the block count, head dim from the
 * relative-position tables (heads = width / head dim), global-attention blocks from the table
 * length (2*64-1 = 127 rows; the windowed blocks' 2*ws-1 gives the window size).
 * The encoder keeps pointers into the map (a memory-mapped safetensors file stays the only copy
 * of the weights); only the 3x3 neck weight (256x256x9) is repacked. The map must outlive it. */
#ifndef TS_IMAGE_ENCODER_VIT_H
#define TS_IMAGE_ENCODER_VIT_H

#include "io/tensor_map.h"

#define TS_SAM_VIT_MAX_GLOBAL 64

typedef struct {
    int embed_dim, depth, num_heads, head_dim;
    int window_size; /* 0 when every block is global */
    int n_global, global_idx[TS_SAM_VIT_MAX_GLOBAL];
    int out_chans, patch;
} ts_sam_vit_config;

typedef struct ts_sam_vit ts_sam_vit;

/* Infers the configuration from the "image_encoder.*" shapes. Returns 0, or a negative status
 * with an error naming the first offending key. */
int ts_sam_vit_detect(const ts_tensor_map *m, ts_sam_vit_config *cfg);
/* Detects, then ts_map_take's every image_encoder.* tensor with its exact shape. */
int ts_sam_vit_load(ts_tensor_map *m, ts_sam_vit **out);
void ts_sam_vit_free(ts_sam_vit *e);
const ts_sam_vit_config *ts_sam_vit_get_config(const ts_sam_vit *e);
/* input: 3 x 1024 x 1024 normalised, padded (CHW); out: 256 x 64 x 64 (CHW). Thread-safe for
 * concurrent calls on one encoder (activations are per call). */
int ts_sam_vit_forward(const ts_sam_vit *e, const float *input, float *out);

/* Calibration's view of the forward pass: tap(user, layer, row0, x, rows, ldx) receives the
 * input of every linear layer (layer ids of quant/int8_vit.h; rows row0 .. row0+rows-1 of its
 * 4096 token rows) before the layer runs, on the calling thread. */
typedef void (*ts_sam_vit_tap)(void *user, int layer, long long row0, const float *x, int rows,
                               int ldx);
int ts_sam_vit_forward_tap(const ts_sam_vit *e, const float *input, float *out,
                           ts_sam_vit_tap tap, void *user);
/* Number of linear layers that run in int8 (a W8A8 file, quant/int8_vit.h); 0 for a float one. */
int ts_sam_vit_n_int8(const ts_sam_vit *e);

#endif
