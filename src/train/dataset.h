/* dataset.h - training and evaluation data on disk: an image directory, per-image ground truth
 * in SA-1B's JSON (annotations[] with COCO RLE segmentations at the image size), stored teacher
 * embeddings (.npy per image, spec/DISTILL.md 4.4), and the conversion of a ground-truth mask
 * to the training grids of spec/DISTILL.md 4.3.
 *
 * One ts_train_example holds everything one training step needs for one image; it is loaded
 * from files (ts_example_load) or filled by a test. */
#ifndef TS_TRAIN_DATASET_H
#define TS_TRAIN_DATASET_H

#include "everything/amg.h"
#include "io/json.h"

#include <stdint.h>

#define TS_FRAME 1024          /* the padded model input */
#define TS_LOWRES 256          /* low-res mask grid */
#define TS_FRAME_BITS (TS_FRAME * TS_FRAME / 8)
#define TS_LOWRES_CELLS (TS_LOWRES * TS_LOWRES)

/* Sorted names (not paths) of the regular .jpg/.jpeg/.png files of dir (case-insensitive
 * extensions, links followed, hidden files skipped). */
int ts_dataset_list_images(const char *dir, char ***names, int *n);
/* TINYSAM_E_ARG naming both files when two names share a stem (a.jpg, a.png): their
 * embeddings or ground truths would be the same file. what prefixes the message. */
int ts_dataset_check_stems(char **names, int n, const char *what);
void ts_dataset_free_list(char **names, int n);
/* "name.jpg" -> "name" (the last extension dropped), into out (size cap). */
void ts_dataset_stem(const char *name, char *out, int cap);

/* Decodes one annotation's segmentation ({size: [h, w], counts: string or array}) into mask
 * (W x H row-major 0/1; size must match). Errors start with where. */
int ts_sa1b_decode_segmentation(const ts_json *seg, int W, int H, const char *where,
                                uint8_t *mask);
/* The same segmentation as run lengths (column-major, starting with a zero run; the runs
 * must cover W x H exactly). out is freed with ts_rle_free. */
int ts_sa1b_segmentation_rle(const ts_json *seg, int W, int H, const char *where,
                             ts_rle *out);

/* Section 4.3 from a W x H ground-truth mask and the resized size (newh, neww):
 * g1024_bits: the 1024-frame mask bit-packed by rows (np.packbits order: column 8j in the high
 * bit of byte j), nearest sampling G[min(H-1, floor((y+0.5) H/newh))][...]; zero padding.
 * glow: 256 x 256 0/1, a cell set when >= 8 of its 16 pixels are. Returns the 1024-frame
 * area. */
long long ts_gt_to_grids(const uint8_t *mask, int W, int H, int newh, int neww,
                         uint8_t *g1024_bits, uint8_t *glow);
/* valid[r][c] = (4r + 2 < newh) && (4c + 2 < neww). */
void ts_gt_valid(int newh, int neww, uint8_t *valid);
/* One packed 1024-frame mask unpacked to 0/1 bytes (1024 x 1024). */
void ts_gt_unpack(const uint8_t *bits, uint8_t *out);

/* One training image. */
typedef struct {
    char name[256];
    int newh, neww;
    float *input;        /* 3 x 1024 x 1024, normalised and zero-padded (TINYSAM.md 3) */
    float *emb_t;        /* 256 x 64 x 64 teacher embedding */
    int n_masks;
    uint8_t *g1024_bits; /* n_masks x TS_FRAME_BITS */
    uint8_t *glow;       /* n_masks x 65536 */
    long long *area1024; /* n_masks */
    uint8_t valid[TS_LOWRES_CELLS];
} ts_train_example;

/* Allocates the arrays of an example for n_masks masks (input and emb_t included). */
int ts_example_alloc(ts_train_example *ex, int n_masks);
void ts_example_free(ts_train_example *ex);
/* Loads an image (decoded, resized as the inference engine does, normalised, padded), its
 * teacher embedding (.npy, float32 or float16, 1x256x64x64 or 256x64x64) and its ground truth
 * (SA-1B JSON, or the list of records `tinysam everything` writes; masks at the image size). max_pixels 0: the library default. */
int ts_example_load(const char *image_path, const char *emb_path, const char *gt_path,
                    long long max_pixels, ts_train_example *ex);

/* Mask usable for training (DISTILL.md 3.2 step 1): non-empty low-res mask, 1024-frame area
 * <= 90% of newh * neww. */
int ts_example_usable(const ts_train_example *ex, int k);

#endif
