/* calibrate_vit.h - post-training W8A8 calibration of the SAM ViT (B/L/H) image encoder
 * (quant/int8_vit.h): runs the float encoder on the calibration images, samples the input of
 * every linear layer (whole token rows, spread by a hash of the row) and chooses one static u8
 * input quantiser per layer as calibrate.h does for TinyViT:
 *   - symmetric inputs (LayerNorm outputs, attention output, the image, the last block's
 *     output): zero point 128, the MSE step over codes [-128, 127] (method mse), or the
 *     layer-output-error step around it (method layer);
 *   - post-GELU inputs (mlp.lin2): asymmetric, ts_calib_search_asym.
 * Weights: symmetric int8 per output channel (max |w| / 127). */
#ifndef TS_CALIBRATE_VIT_H
#define TS_CALIBRATE_VIT_H

#include "model/sam.h"
#include "quant/calibrate.h"

/* Values sampled per layer over all images (bounds memory to 2 MB per layer). */
#define TS_CALIB_VIT_VALUES_MAX (512 * 1024)

/* ts_quantize_model_opts for a SAM ViT model (model->vit): method TS_CALIB_MSE or
 * TS_CALIB_LAYER; scope gemm or encoder: the encoder's linear layers, all: also the decoder's
 * int8 layers (calibrate_decoder.h). */
int ts_quantize_vit_model(const tinysam_model *model, const char *const *paths, int n_paths,
                          const ts_quant_opts *opts, const char *out_path, int verbose);

/* The steps alone: calibrates the encoder of model on the images and fills
 * step[TS_VIT_N_LAYERS(depth)], zp[...]. */
int ts_calib_vit(const tinysam_model *model, const char *const *paths, int n_paths, int method,
                 float *step, int *zp, int verbose);

#endif
