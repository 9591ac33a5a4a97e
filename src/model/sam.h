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
    /* a module tree with Q-TinySAM's quantisation layers (quant/sim_model.h): encode and
     * predict run it instead of encoder / mask_decoder; NULL otherwise */
    struct ts_simq_model *sim;
    /* the GEMM weight packs of the load's batch, in order (for the pre-packed section that
     * tinysam_model_save_safetensors writes); owned by the networks, the list is ours */
    struct ts_wpack **packs;
    int n_packs;
    atomic_int warmed; /* the first encode's page warming has been done (api.c) */
};

struct tinysam_embedding {
    float *data;             /* 256 x 64 x 64 */
    int orig_w, orig_h;      /* original image size */
    int input_w, input_h;    /* resized size (long side 1024) */
};

/* The encoder's input: the image resized (long side 1024, PIL bilinear), normalised and
 * zero-padded to 3 x 1024 x 1024. Made apart from the encoder so that a folder job can make
 * the next image's on another thread (no model needed, no shared state). */
typedef struct {
    float *input;            /* 3 x 1024 x 1024, 64-byte aligned */
    int orig_w, orig_h, input_w, input_h;
} ts_encoder_input;

int ts_encoder_input_make(const tinysam_image *img, ts_encoder_input *out);
void ts_encoder_input_free(ts_encoder_input *in);
/* The same as a heap object, with the folder job's preprocess/aux_free signatures. */
int ts_encoder_input_new(const tinysam_image *img, void **out);
void ts_encoder_input_delete(void *in);
/* tinysam_predict's checks of one prompt set against the embedding's image (clear message). */
int ts_check_prompt(const tinysam_embedding *e, const tinysam_prompt *p);

/* tinysam_encode from a prepared input (bit-identical), without ts_embedding_prepare: for
 * callers that only write the embedding (tinysam embed). */
int ts_encode_input(tinysam_model *m, const ts_encoder_input *in, tinysam_embedding **out);
/* tinysam_model_save_safetensors with or without the load cache of a float model (packed
 * weights and the dense PE table after the tensors: about twice the file, loaded in place;
 * `convert --no-load-cache` for a file of the plain tensors only, e.g. SAM ViT-H). */
int ts_model_save_safetensors_opts(const tinysam_model *m, const char *path, int load_cache);
/* The decoder's per-image work for e, done now (SamPredictor.set_image's share): the first
 * tinysam_predict on e then runs at warm speed, with the same results. tinysam_encode calls
 * it; so does whatever installs an embedding made elsewhere (segment --embedding). A model
 * without a decoder (or a simulated one) has nothing to prepare. */
int ts_embedding_prepare(tinysam_model *m, const tinysam_embedding *e);

#endif
