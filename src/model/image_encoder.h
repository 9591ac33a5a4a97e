/* image_encoder.h - TinyViT (vit_t) image encoder with neck (spec TINYSAM.md section 4).
 * ref: tinysam/modeling/tiny_vit_sam.py */
#ifndef TS_IMAGE_ENCODER_H
#define TS_IMAGE_ENCODER_H

#include "io/tensor_map.h"

#include <stdatomic.h>

typedef struct ts_tiny_vit ts_tiny_vit; /* defined in image_encoder.c / tiny_vit_sam.c */

/* Called with each named intermediate output (names and layouts as in the fixtures'
 * stages.json: patch_embed, layers0_block0, layers0, layers1_block0_attn, layers1_block0,
 * layers1, layers2_block0, layers2, layers3, neck), in PyTorch's layout at that point. */
typedef void (*ts_stage_hook)(void *user, const char *name, const float *data, long long numel);

/* Takes the "image_encoder.*" tensors from m (checks shapes, marks them used; BatchNorm is
 * folded into private copies, the map itself is not modified). A layer of the quantised list
 * below whose "P.weight" is I8 [N][K] (a W8A8 file, §7) is loaded as int8 with
 * "P.weight_scale", "P.bias", "P.input_step", "P.input_zero_point". */
int ts_tiny_vit_load(ts_tensor_map *m, ts_tiny_vit **out);
void ts_tiny_vit_free(ts_tiny_vit *enc);
/* input: 3 x 1024 x 1024 normalised, padded; out: 256 x 64 x 64. hook may be NULL. */
/* Faults in the activation arena the load made, in the order a first pass writes it, 1 MB at
 * a time until *stop is set (a helper task beside single-threaded work: the first pass then
 * meets fewer fresh pages). Returns 1 when all of it is in. */
int ts_tiny_vit_warm(const ts_tiny_vit *enc, const atomic_int *stop);
int ts_tiny_vit_forward(const ts_tiny_vit *enc, const float *input, float *out,
                        ts_stage_hook hook, void *user);

/* ---- W8A8 (Q-TinySAM, spec §7) ------------------------------------------------------------ */

#include "nn/gemm_i8.h"

/* Layers 0 .. TS_TINY_VIT_N_GEMM-1: the 1x1 convs of MBConv (4) and PatchMerging (6), 10 x
 * (qkv, proj, fc1, fc2), neck.0 (the "gemm" scope, all that files before the full encoder
 * scope quantised); then the dense 3x3 convolutions patch_embed.seq.2, neck.2 (the "encoder"
 * scope: TS_TINY_VIT_N_ENCODER layers) and patch_embed.seq.0 (taps 9, nn/conv_i8.h). The
 * last one, 3->32 channels (K = 27), loads and runs in int8 when a file has it, but quantize
 * leaves it float: its int8 form measured slower (thread CPU time on Zen 4, TS_ENC_PROFILE:
 * 25-43 ms against 14-19 ms float; quantising 3 M inputs and unfolding them to 27 bytes per
 * pixel cost more than the GEMM saves). */
#define TS_TINY_VIT_N_GEMM    51
#define TS_TINY_VIT_N_ENCODER 53
#define TS_TINY_VIT_N_QLAYERS 54

/* One GEMM of the encoder that the int8 model quantises. */
typedef struct {
    char name[96];       /* official tensor prefix P, e.g. "image_encoder.layers.1.blocks.0.mlp.fc1"
                          * or "image_encoder.layers.0.blocks.0.conv1.c" (a conv with its BN) */
    int N, K;            /* weight [N][K]; a 3x3 conv: K = 9 * ci, columns [ky][kx][ci] */
    int taps;            /* 1 (GEMM on rows of K) or 9 (dense 3x3 conv on pixels of K / 9) */
    int stride;          /* the 3x3 conv's stride */
    int post_gelu;       /* the input is a GELU output (asymmetric quantiser) */
    long long rows;      /* input rows per image (before subsampling; recomputed rows aside) */
    const float *w;      /* float encoder: the weight as the GEMM uses it (BN folded), [N][K] */
    const float *b;      /* the bias as the GEMM uses it ([N], BN folded), or NULL */
    const ts_i8pack *q;  /* int8 encoder: the packed codes and scales, else NULL */
    float in_step;       /* int8: input quantiser, real = in_step * (u8 - in_zp) */
    int in_zp;
} ts_tiny_vit_qlayer;

/* The window attention of TinyViT block i (0 .. TS_TINY_VIT_N_ATTN-1, stages 1..3 in order):
 * its products q.k^T and softmax.v run in int8 (nn/attn_i8.h) when the file gives the steps
 * "P.product_steps" F32 [4] = {q step, k step, v step, exp step} (quant/int8_model.h). The
 * calibration tap sees its qkv output (rows of 3C, head-major [q k v] x 32 per head) as layer
 * TS_TINY_VIT_N_QLAYERS + i. */
#define TS_TINY_VIT_N_ATTN 10
typedef struct {
    char name[96];  /* P, e.g. "image_encoder.layers.1.blocks.0.attn" */
    int C, heads, tokens; /* channels, heads, tokens per window */
    long long rows; /* qkv rows per image (tokens) */
    int int8;       /* products in int8 */
    float step[4];  /* int8: q, k, v, exp(s - max) steps */
} ts_tiny_vit_attn;
int ts_tiny_vit_attn_get(const ts_tiny_vit *enc, int i, ts_tiny_vit_attn *out);

/* Layer i (0 .. TS_TINY_VIT_N_QLAYERS-1) into *out; E_ARG for a bad index. */
int ts_tiny_vit_qlayer_get(const ts_tiny_vit *enc, int i, ts_tiny_vit_qlayer *out);
/* Number of quantised (int8) layers the encoder runs: 0 for a float model. */
int ts_tiny_vit_n_int8(const ts_tiny_vit *enc);

/* Calibration tap: called with the float input X[rows][K] (ldx) of quantised layer `layer`
 * right before its GEMM runs (a 3x3 conv: its input pixels, rows of K / 9); row0 numbers the
 * first row among the layer's input rows of this pass (pixel or window-token index). Called
 * from worker threads, concurrently. */
typedef void (*ts_gemm_tap)(void *user, int layer, long long row0, const float *x, int rows,
                            int ldx);
/* ts_tiny_vit_forward with a tap (NULL: the same as ts_tiny_vit_forward). */
int ts_tiny_vit_forward_tap(const ts_tiny_vit *enc, const float *input, float *out,
                            ts_stage_hook hook, void *user, ts_gemm_tap tap, void *tap_user);

#endif
