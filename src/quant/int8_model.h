/* int8_model.h - the W8A8 (Q-TinySAM) model file: safetensors, the float file's tensors with
 * every quantised GEMM of the image encoder (model/image_encoder.h ts_tiny_vit_qlayer) P
 * replaced by
 *   P.weight            I8  [N][K]  per-output-channel symmetric codes of the (BN-folded) weight
 *   P.weight_scale      F32 [N]     real weight = weight_scale[n] * code
 *   P.bias              F32 [N]     the (BN-folded) bias, zeros for a layer without one
 *   P.input_step        F32 [1]     input quantiser: real = step * (u8 - zero_point)
 *   P.input_zero_point  F32 [1]     an integer in [0, 255]
 * (a folded Conv2d_BN "X" has P = "X.c"; its "X.bn.*" tensors are not written), and the
 * metadata "tinysam.quantization": "w8a8". The dense 3x3 convolutions (patch_embed.seq.2.c,
 * neck.2, and patch_embed.seq.0.c when asked: layers with taps 9) are W8A8 layers of the same
 * five tensors,
 * with P.weight I8 [co][ci][3][3] in PyTorch's layout (per-output-channel scales over ci x 3 x
 * 3); the encoder runs them as int8 im2col GEMMs (nn/conv_i8.h). A file written before they
 * were quantised (the "gemm" scope) stores them weight-only and still loads.
 * The attention products of TinyViT block P = "image_encoder.layers.S.blocks.B.attn" run in
 * int8 when the file has "P.product_steps" F32 [4]: the steps of q (u8, zero point 128), k and
 * v (int8 codes in [-127, 127]) and of exp(s - max) (u8 in [0, 255], 1/255: each probability
 * row is quantised as p / max(p), then rescaled; model/tiny_vit_sam.c attn_head_i8). ts_tiny_vit_load reads such a file directly.
 *
 * Every other large weight (a float "X.weight" of >= 2 dimensions and >= TS_INT8_STORE_MIN
 * values: the mask decoder's linears and transposed convolutions, the 3x3 convolutions of the
 * encoder) is stored weight-only: "X.weight" I8 of its own shape with one symmetric scale per
 * index of the first dimension, "X.weight_scale" F32 [shape[0]] (and no "X.input_step");
 * ts_int8_model_expand turns it back into float32 at load, so that those layers run in float
 * as before. The rest (biases, norms, small tensors) stays float32. */
#ifndef TS_INT8_MODEL_H
#define TS_INT8_MODEL_H

#include "io/tensor_map.h"
#include "model/image_encoder.h"

/* Writes the int8 model: src is the float model's map, enc its float encoder, step / zp the
 * input quantisers (TS_TINY_VIT_N_QLAYERS each; layers 0 .. TS_TINY_VIT_N_ENCODER-1 are
 * written as int8, float attention products). n_meta key/value pairs are added to the
 * metadata (after "tinysam.quantization"). */
int ts_int8_model_save(const char *path, const ts_tensor_map *src, const ts_tiny_vit *enc,
                       const float *step, const int *zp, int n_meta, const char *const *keys,
                       const char *const *values);

/* The same with only layers 0 .. nq-1 of the encoder's list as W8A8 layers (nq
 * TS_TINY_VIT_N_GEMM: the 1x1 convolutions and linears only, the "gemm" scope); the others
 * are stored as the float file has them (weight-only int8 when large, as below); attn_steps
 * (4 per block, TS_TINY_VIT_N_ATTN blocks, calibrate.h ts_calib_solve_attn) or NULL (float
 * attention products). */
int ts_int8_model_save_layers(const char *path, const ts_tensor_map *src,
                              const ts_tiny_vit *enc, const float *step, const int *zp, int nq,
                              const float *attn_steps, int n_meta, const char *const *keys,
                              const char *const *values);

/* The same with searched per-channel weight scales: w_scale[i] (N floats, may be NULL as
 * w_scale itself: the abs-max scales of ts_quant_weights) for layer i < nq. */
int ts_int8_model_save_layers_ws(const char *path, const ts_tensor_map *src,
                                 const ts_tiny_vit *enc, const float *step, const int *zp,
                                 const float *const *w_scale, int nq, const float *attn_steps,
                                 int n_meta, const char *const *keys,
                                 const char *const *values);

#define TS_INT8_STORE_MIN 4096

/* Replaces every weight-only int8 tensor of m (an I8 "X.weight" with "X.weight_scale" and no
 * "X.input_step") by its float32 dequantisation scale[i] * code, in place (the scale is
 * marked used). A map without such tensors is left as it is. */
int ts_int8_model_expand(ts_tensor_map *m);

/* Writing an int8 file (shared by the TinyViT and SAM ViT writers): adds the tensor "P.suffix"
 * of shape [d0] (d1 = 0) or [d0][d1] over data to m; NULL when out of memory. */
ts_tensor *ts_int8_map_add(ts_tensor_map *m, const char *P, const char *suffix, ts_dtype dt,
                           void *data, int64_t d0, int64_t d1);
/* Copies the float file's tensor t into m, a large float weight as weight-only int8 (codes and
 * "P.weight_scale") in a block returned in *block (NULL when none) for the caller to free after
 * the save. 0, or nonzero when out of memory. */
int ts_int8_map_copy(ts_tensor_map *m, const ts_tensor *t, void **block);

/* The mask decoder's W8A8 layers (written since the int8 decoder; calibrate_decoder.h): the
 * output upscaling's ConvTranspose2d P = "mask_decoder.output_upscaling.0" / ".3" as the W8A8
 * layers above with P.weight I8 [4*out][in] (row (a*2+b)*out + o: output channel o of the
 * sub-pixel (a, b)), P.weight_scale / P.bias [4*out] (the bias repeated per sub-pixel); and
 * activation-only quantisers (P.input_step, P.input_zero_point, no P.weight) for
 * "mask_decoder.mask_product" (the upscaled GELU output), "mask_decoder.transformer.layers.L.keys"
 * and ".keys_pe" (L = 0, 1) and "mask_decoder.transformer.final_keys_pe" (the image-side operands
 * of the cross attentions). A file without them (the earlier weight-only decoder) loads with the
 * float decoder. The token-side Linears (model/sam_decoder_internal.h ts_dec_tok_layer: the
 * two-way layers' self-attention q/k/v/out, token->image q/out, image->token k/v, MLP lin1/lin2,
 * the final attention's q/out, the hypernetwork MLPs; layer 0's self-attention q/k/v and the
 * IoU head only when a file has their steps: quantize leaves them weight-only, see
 * ts_dec_tok_kept_float) are W8A8 layers under
 * their PyTorch names (weight I8 [out][in], weight_scale, bias, input_step, input_zero_point)
 * since the token-side int8 decoder; a file written before has them weight-only and they run in
 * float on the dequantised weights, layer by layer (a layer without an input step stays float). */

#endif
