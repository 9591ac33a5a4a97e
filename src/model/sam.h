/* sam.h - the loaded model and image embedding behind the public handles. */
#ifndef TS_SAM_H
#define TS_SAM_H

#include "tinysam.h"
#include "io/tensor_map.h"
#include "model/image_encoder.h"
#include "model/image_encoder_vit.h"
#include "model/sam_decoder.h"

struct tinysam_model {
    ts_tensor_map *map;      /* tensors as stored in the checkpoint (for convert) */
    ts_tiny_vit *encoder;    /* vit_t (TinySAM, MobileSAM), or NULL */
    ts_sam_vit *vit;         /* SAM ViT-B/L/H, or NULL */
    ts_prompt_encoder *prompt_encoder;
    ts_mask_decoder *mask_decoder;
    tinysam_model_info info;
};

struct tinysam_embedding {
    float *data;             /* 256 x 64 x 64 */
    int orig_w, orig_h;      /* original image size */
    int input_w, input_h;    /* resized size (long side 1024) */
};

#endif
