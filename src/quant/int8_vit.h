/* int8_vit.h - the W8A8 SAM ViT (B/L/H) image encoder: its linear layers as int8 GEMMs
 * (nn/gemm_i8.h), and the model file that stores them.
 *
 * Quantised layers, by id (depth = the encoder's block count, C its width):
 *   4 b + 0  image_encoder.blocks.b.attn.qkv    [3C][C]   input: norm1 output (symmetric)
 *   4 b + 1  image_encoder.blocks.b.attn.proj   [C][C]    input: attention output (symmetric)
 *   4 b + 2  image_encoder.blocks.b.mlp.lin1    [4C][C]   input: norm2 output (symmetric), GELU
 *   4 b + 3  image_encoder.blocks.b.mlp.lin2    [C][4C]   input: GELU output (asymmetric)
 *   4 depth     image_encoder.patch_embed.proj  [C][3][16][16]  input: the normalised image
 *   4 depth + 1 image_encoder.neck.0            [256][C][1][1]  input: the last block's output
 * The attention products (q k^T with the relative-position terms, softmax v) and the neck's
 * LayerNorm2d and 3x3 convolution stay float.
 *
 * File layout: the int8 safetensors format of quant/int8_model.h, unchanged: a layer P is
 *   P.weight            I8  the float weight's own shape, per-output-channel symmetric codes
 *   P.weight_scale      F32 [N]
 *   P.bias              F32 [N]  (the layers with a bias: not neck.0)
 *   P.input_step        F32 [1], P.input_zero_point F32 [1]  (u8 input: real = step (u8 - zp))
 * with the metadata "tinysam.quantization": "w8a8"; other large weights (the neck's 3x3, the
 * decoder's) are weight-only int8 and expanded at load (ts_int8_model_expand), and the
 * decoder's W8A8 layers are those of quant/int8_model.h. A layer without P.input_step loads as
 * float, so any subset of layers may be int8. */
#ifndef TS_INT8_VIT_H
#define TS_INT8_VIT_H

#include "io/tensor_map.h"

#include <stdint.h>

enum { TS_VIT_L_QKV = 0, TS_VIT_L_PROJ = 1, TS_VIT_L_FC1 = 2, TS_VIT_L_FC2 = 3 };
#define TS_VIT_L_PATCH(depth)  (4 * (depth))
#define TS_VIT_L_NECK0(depth)  (4 * (depth) + 1)
#define TS_VIT_N_LAYERS(depth) (4 * (depth) + 2)

typedef struct {
    char name[96]; /* the prefix P */
    int N, K;      /* output and input features (K = 768 for the patch embedding) */
    int has_bias;
    int post_gelu; /* the input follows a GELU: asymmetric quantiser */
} ts_vit_layer_desc;

/* Describes layer id of an encoder of the given depth and width; -1 for a bad id. */
int ts_vit_layer_describe(int depth, int C, int id, ts_vit_layer_desc *d);

typedef struct ts_vit_i8 ts_vit_i8;

/* Takes the W8A8 layers that m has (those with "P.input_step") and packs them; *out is NULL
 * when m has none (a float model). Errors name the offending tensor. */
int ts_vit_i8_load(ts_tensor_map *m, int depth, int C, ts_vit_i8 **out);
void ts_vit_i8_free(ts_vit_i8 *q);
/* Whether layer id runs in int8 (q may be NULL). */
int ts_vit_i8_has(const ts_vit_i8 *q, int id);
/* Number of int8 layers (0 for NULL). */
int ts_vit_i8_count(const ts_vit_i8 *q);
/* Y (ldy) = act(X W^T + b), or Y += that with accumulate, for X [M][K] (ldx) float, quantised
 * on the fly with the layer's input quantiser. act: TS_ACT_NONE or TS_ACT_GELU (nn/nn.h). */
void ts_vit_i8_linear(const ts_vit_i8 *q, int id, int M, const float *X, int ldx, float *Y,
                      int ldy, int accumulate, int act);

/* The MLP when both of its linears are int8: lin1's GELU output is requantised in its GEMM's
 * epilogue straight into lin2's u8 input codes H [M][N1] (never written as floats), then
 * Y += lin2(H). The same codes as ts_vit_i8_linear twice, up to ties of the rounding. */
void ts_vit_i8_mlp(const ts_vit_i8 *q, int id1, int id2, int M, const float *X, int ldx,
                   uint8_t *H, float *Y, int ldy);

/* Writes the W8A8 file: src (the float model's map, or a view of it with the decoder's int8
 * layers), the encoder's depth and width, step / zp[TS_VIT_N_LAYERS(depth)] (a step <= 0
 * leaves that layer float), n_meta metadata pairs after "tinysam.quantization". */
int ts_vit_i8_save(const char *path, const ts_tensor_map *src, int depth, int C,
                   const float *step, const int *zp, int n_meta, const char *const *keys,
                   const char *const *values);

#endif
