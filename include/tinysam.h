/*
 * tinysam.h - TinySAM (and SAM-family) inference in C.
 *
 * Usage:
 *
 *     tinysam_model *model;
 *     if (tinysam_model_load("tinysam_42.3.pth", &model) != TINYSAM_OK) {
 *         fprintf(stderr, "%s\n", tinysam_last_error());
 *         return 1;
 *     }
 *     tinysam_image img;
 *     tinysam_image_load("photo.jpg", 0, &img);            // 0 = default pixel limit
 *     tinysam_embedding *emb;
 *     tinysam_encode(model, &img, &emb);                   // the expensive part, once
 *     float pt[2] = {380, 300}; int lab[1] = {1};
 *     tinysam_prompt p = {.n_points = 1, .points = pt, .labels = lab};
 *     tinysam_prediction pred;
 *     tinysam_predict(model, emb, &p, TINYSAM_PREDICT_MASKS, &pred);
 *     // pred.masks: 3 x H x W bytes (0/1); pred.iou[3]; pred.low_res: 3 x 256 x 256
 *     tinysam_prediction_free(&pred);
 *     tinysam_embedding_free(emb);
 *     tinysam_image_free(&img);
 *     tinysam_model_free(model);
 *
 * Errors: every function that can fail returns a tinysam_status (TINYSAM_OK = 0,
 * negative on failure) and leaves a one-line message for the calling thread in
 * tinysam_last_error(). No function exits or aborts on bad input.
 *
 * Threads: tinysam_set_num_threads() sets the size of the shared worker pool
 * (default: all online cores). Models and embeddings are read-only after
 * creation and may be shared between threads; each call allocates its own scratch.
 */
#ifndef TINYSAM_H
#define TINYSAM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TINYSAM_VERSION "0.1.0"

/* Limits. */
#define TINYSAM_DEFAULT_MAX_PIXELS 100000000LL /* images above this are rejected */
#define TINYSAM_MAX_POINTS 1024                /* points per prompt set */
#define TINYSAM_LOWRES 256                     /* low-res mask side */
#define TINYSAM_EMBED_DIM 256                  /* embedding channels */
#define TINYSAM_EMBED_SIDE 64                  /* embedding side */
#define TINYSAM_INPUT_SIDE 1024                /* model input side */

typedef enum {
    TINYSAM_OK = 0,
    TINYSAM_E_IO = -1,          /* file missing, unreadable, unwritable */
    TINYSAM_E_FORMAT = -2,      /* corrupt or unexpected file contents */
    TINYSAM_E_NOMEM = -3,       /* allocation failed */
    TINYSAM_E_ARG = -4,         /* invalid argument (NaN, out of range, bad shape) */
    TINYSAM_E_UNSUPPORTED = -5, /* valid but not supported (e.g. unknown model family) */
    TINYSAM_E_LIMIT = -6,       /* input exceeds a configured limit */
} tinysam_status;

const char *tinysam_status_str(tinysam_status s);
/* The message of the last failure on this thread ("" if none). */
const char *tinysam_last_error(void);

/* Worker pool size; n <= 0 means all online cores. */
void tinysam_set_num_threads(int n);
int tinysam_get_num_threads(void);

/* ---------------------------------------------------------------- images */

typedef struct {
    int width, height;
    uint8_t *rgb; /* height x width x 3, row-major, owned (free with tinysam_image_free) */
} tinysam_image;

/* Decodes a JPEG (EXIF orientation applied) or PNG file to 8-bit RGB.
 * max_pixels <= 0 means TINYSAM_DEFAULT_MAX_PIXELS. */
tinysam_status tinysam_image_load(const char *path, long long max_pixels, tinysam_image *out);
tinysam_status tinysam_image_decode(const void *data, size_t size, long long max_pixels,
                                    tinysam_image *out);
void tinysam_image_free(tinysam_image *img);

/* ---------------------------------------------------------------- model */

typedef struct tinysam_model tinysam_model;

typedef struct {
    char family[16];           /* "vit_t" or "vit" (SAM ViT) */
    int n_tensors;             /* tensors in the file */
    long long n_values;        /* values in the file (all tensors) */
    long long n_params_used;   /* parameters used for inference (buffers excluded) */
    char source_dtype[16];     /* storage dtype of the file: "float32", "float16", "mixed", or
                                  "w8a8" for a model written by tinysam quantize */
    char source_format[32];    /* "pth-zip", "pth-legacy", "safetensors" */
    char config[512];          /* detected architecture as a JSON object */
} tinysam_model_info;

/* Loads a checkpoint: PyTorch .pth (ZIP or legacy container; pickle read as data,
 * never executed) or .safetensors (memory-mapped). Detected by content. */
tinysam_status tinysam_model_load(const char *path, tinysam_model **out);
void tinysam_model_free(tinysam_model *m);
tinysam_status tinysam_model_get_info(const tinysam_model *m, tinysam_model_info *out);
/* Writes the model's tensors, as stored in the checkpoint (BatchNorm not folded), to a
 * safetensors file with the model config in its metadata. */
tinysam_status tinysam_model_save_safetensors(const tinysam_model *m, const char *path);

/* ---------------------------------------------------------------- encoding */

typedef struct tinysam_embedding tinysam_embedding;

/* Resizes (PIL bilinear, long side 1024), normalises, pads and runs the image encoder; then,
 * as SamPredictor.set_image does, the mask decoder's per-image work for this model (the
 * embedding's layer-0 projections, a few ms), so that the first tinysam_predict on it runs as
 * fast as the next ones. The model keeps that for its last embedding; predictions are the
 * same with or without it. */
tinysam_status tinysam_encode(tinysam_model *m, const tinysam_image *img,
                              tinysam_embedding **out);
void tinysam_embedding_free(tinysam_embedding *e);
/* 256 x 64 x 64 float32. */
const float *tinysam_embedding_data(const tinysam_embedding *e);
void tinysam_embedding_size(const tinysam_embedding *e, int *orig_w, int *orig_h,
                            int *input_w, int *input_h);

/* ---------------------------------------------------------------- prompts */

typedef struct {
    int n_points;
    const float *points;     /* n_points x 2, (x, y) in original image pixels */
    const int *labels;       /* n_points, 1 = foreground, 0 = background */
    int has_box;
    float box[4];            /* x0, y0, x1, y1 in original image pixels */
    const float *mask_input; /* 256 x 256 low-res logits of an earlier prediction, or NULL */
} tinysam_prompt;

enum {
    TINYSAM_PREDICT_MASKS = 1,  /* fill masks (3 x H x W, 0/1) */
    TINYSAM_PREDICT_LOGITS = 2, /* fill logits (3 x H x W float) */
    TINYSAM_PREDICT_SINGLE = 4, /* SAM's multimask_output=False: mask token 0 only */
    TINYSAM_PREDICT_BEST = 8,   /* tinysam_predict_batch: masks/logits of the best mask only
                                   (1 x H x W), low_res and iou still all n_masks */
};

typedef struct {
    int n_masks;      /* 3 (TinySAM), or 1 with TINYSAM_PREDICT_SINGLE */
    int width, height;/* original image size */
    float iou[3];     /* predicted IoU per mask */
    int best;         /* index of the highest predicted IoU */
    float *low_res;   /* n_masks x 256 x 256 logits */
    uint8_t *masks;   /* n_masks x height x width, 0/1, or NULL */
    float *logits;    /* n_masks x height x width, or NULL */
} tinysam_prediction;

tinysam_status tinysam_predict(tinysam_model *m, const tinysam_embedding *e,
                               const tinysam_prompt *p, int flags, tinysam_prediction *out);
void tinysam_prediction_free(tinysam_prediction *p);
/* n prompt sets against one embedding, decoded together (SamPredictor.predict_torch's
 * batch): out[i] is what tinysam_predict gives for p[i], bit for bit. On failure every
 * out[i] is empty. */
tinysam_status tinysam_predict_batch(tinysam_model *m, const tinysam_embedding *e, int n,
                                     const tinysam_prompt *p, int flags, tinysam_prediction *out);

/* ---------------------------------------------------------------- everything */

enum { TINYSAM_EVERYTHING_HIERARCHICAL = 0, TINYSAM_EVERYTHING_GRID = 1 };

/* SAM's generator options, same names and defaults (tinysam_everything_defaults). */
typedef struct {
    int mode;                           /* TINYSAM_EVERYTHING_HIERARCHICAL (default) or _GRID */
    int points_per_side;                /* 32 */
    int points_per_batch;               /* 64 */
    float pred_iou_thresh;              /* 0.88 */
    float stability_score_thresh;       /* 0.95 */
    float stability_score_offset;       /* 1.0 */
    float high_score_thresh;            /* 8.5 (hierarchical) */
    float box_nms_thresh;               /* 0.7 */
    int crop_n_layers;                  /* 0 (grid) */
    float crop_nms_thresh;              /* 0.7 */
    float crop_overlap_ratio;           /* 512/1500 */
    int crop_n_points_downscale_factor; /* 1 */
    int min_mask_region_area;           /* 0 */
    /* progress: called after each batch with points done / total of the current pass */
    void (*progress)(void *user, int pass, int done, int total);
    void *progress_user;
} tinysam_everything_options;

typedef struct {
    int height, width;       /* segmentation size */
    uint32_t *counts;        /* column-major run lengths starting with a zero run */
    int n_counts;
    long long area;
    int bbox[4];             /* x, y, w, h (w = x1 - x0 of the inclusive box) */
    float predicted_iou;
    double point[2];         /* the prompt point, image pixels */
    float stability_score;
    int crop_box[4];         /* x, y, w, h */
} tinysam_mask_record;

typedef struct {
    int n;
    tinysam_mask_record *records; /* in the generator's order */
    int n_passes;
    int points_per_pass[2];       /* hierarchical: two rounds; grid: one entry, all crops */
    int points_total;
    double ms_encode, ms_decode, ms_total;
} tinysam_everything_result;

void tinysam_everything_defaults(tinysam_everything_options *o);
/* Checks the options' ranges (clear message for each). */
tinysam_status tinysam_everything_check(const tinysam_everything_options *o);
/* Segments everything in img. emb may be a ready embedding of img (or NULL). */
tinysam_status tinysam_everything(tinysam_model *m, const tinysam_image *img,
                                  const tinysam_embedding *emb,
                                  const tinysam_everything_options *o,
                                  tinysam_everything_result *out);
/* The same pipeline with the scene oracle (spec ORACLE.md) in place of the network: a
 * testing aid. */
tinysam_status tinysam_everything_oracle(const char *scene_json,
                                         const tinysam_everything_options *o,
                                         tinysam_everything_result *out);
void tinysam_everything_free(tinysam_everything_result *r);
/* COCO compressed RLE string of a record (malloc'd), exactly as pycocotools writes it. */
char *tinysam_rle_to_coco_string(const uint32_t *counts, int n_counts);

#ifdef __cplusplus
}
#endif
#endif /* TINYSAM_H */
