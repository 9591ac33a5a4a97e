/* sampling.h - the deterministic generator (spec/DISTILL.md section 3.6) and the online hard
 * prompt sampling of sections 3.2-3.4, as pure functions over arrays: ground-truth masks,
 * decoder logits and IoU predictions come in, prompts and mask inputs go out. The trainer
 * (or a test) runs the decoder between the calls:
 *
 *     ts_rng r; ts_rng_seed(&r, seed);
 *     int chosen[64], N = ts_sample_choose_masks(&r, usable, U, 64, chosen);
 *     int t = ts_sample_rounds(&r);
 *     for i < N: ts_sample_init(&r, g1024[chosen[i]], newh, neww, &sets[i]);
 *     for j < t: decode(sets, mask inputs) -> Z, u;
 *                ts_sample_round(&r, N, Z, u, glow, valid, sets, mask_next, info);
 *     training round: decode(sets, mask_next) with the student and the teacher.
 *
 * Masks are uint8 0/1 maps: the 1024-frame ground truth 1024 x 1024 (row-major, zero in the
 * padding), the low-res ground truth and the valid-cell map 256 x 256 (section 4.3). Prompt
 * coordinates are 1024-frame pixel indices (the prompt encoder adds 0.5). */
#ifndef TS_TRAIN_SAMPLING_H
#define TS_TRAIN_SAMPLING_H

#include "model/sam_decoder.h"

#include <stdint.h>

/* ---- SplitMix64 (section 3.6) -------------------------------------------------------------- */

typedef struct {
    uint64_t s;      /* state */
    uint64_t draws;  /* next() calls so far (the fixtures count PRNG outputs) */
} ts_rng;

void ts_rng_seed(ts_rng *r, uint64_t seed);
uint64_t ts_rng_next(ts_rng *r);
double ts_rng_uniform(ts_rng *r);   /* (next >> 11) * 2^-53, in [0, 1) */
int ts_rng_randint(ts_rng *r, int n); /* 0 .. n-1 (n >= 1; one draw even when n = 1) */
double ts_rng_normal(ts_rng *r);    /* Box-Muller, cosine branch: two draws */
/* The epoch shuffle of an image list: for j = n-1 down to 1 swap(j, randint(j+1)). */
void ts_rng_shuffle(ts_rng *r, int *a, int n);

/* ---- one step's prompt sets ---------------------------------------------------------------- */

#define TS_SAMPLE_MAX_SETS 64   /* prompt sets per image and step */
#define TS_SAMPLE_MAX_T 9       /* rounds drawn from 0..9 */
#define TS_SAMPLE_MAX_POINTS (TS_SAMPLE_MAX_T + 1)

/* One prompt set in the 1024 frame. Layout of its sparse tokens (section 3.3): the points in
 * order, then the box corners when has_box, else the prompt encoder's own padding point. */
typedef struct {
    int init_box;                             /* initialised with a box (else a point) */
    int n_points;
    double points[TS_SAMPLE_MAX_POINTS][2];   /* (x, y) = (column, row) */
    int labels[TS_SAMPLE_MAX_POINTS];         /* 1, 0, or -1 (padding point) */
    int has_box;
    double box[4];                            /* x0, y0, x1, y1 after the noise */
    double tight_box[4];                      /* box init: the tight box before the noise */
    long long pixel_index;                    /* point init: index among the set pixels */
} ts_sample_set;

/* What one round did for one set (section 3.2 step 4; the fields of case_b/run.json). */
typedef struct {
    int selected;        /* k*: the selected output */
    long long error_cells;
    long long cell_index; /* -1 when the region was empty (padding point appended) */
    int row, col, label; /* label -1: padding point */
    float logit;         /* Z[k*] at the drawn cell (0 when none) */
} ts_sample_info;

/* Mask usable for training (section 3.2 step 1): non-empty low-res mask and 1024-frame area
 * at most 90% of newh * neww. */
int ts_sample_usable(const uint8_t *g1024, const uint8_t *glow, int newh, int neww);
/* Partial Fisher-Yates over usable[0..U) (copied to chosen, which holds U entries): for
 * j = 0 .. N-1 swap(j, j + randint(U - j)), N = min(max_n, U). Returns N. */
int ts_sample_choose_masks(ts_rng *r, const int *usable, int U, int max_n, int *chosen);
/* t = randint(10). */
int ts_sample_rounds(ts_rng *r);
/* Initial prompt of one set from its 1024-frame mask (section 3.2 step 3): coin, then a point
 * (one draw) or a noisy box (four normals). E_ARG when the mask is empty or sizes are bad. */
int ts_sample_init(ts_rng *r, const uint8_t *g1024, int newh, int neww, ts_sample_set *out);

/* Real sparse prompts: points with label 0 or 1, plus one for a box. */
int ts_sample_n_real(const ts_sample_set *s);
/* Eligible outputs (section 2.6): elig[k] = 1 for k in {1,2,3} when n_real == 1, else k = 0. */
void ts_sample_eligible(int n_real, int elig[4]);
/* Selected output (section 3.4): the eligible k with the highest u[k], ties to the smaller k. */
int ts_sample_select(const float u[4], const int elig[4]);
/* Sparse token count of a set as the prompt encoder builds it. */
int ts_sample_tokens(const ts_sample_set *s);

/* One sampling round over the N sets, in set order (section 3.2 step 4). z: N x 4 x 256 x 256
 * logits, u: N x 4 IoU predictions, glow[i]: set i's low-res ground truth, valid: 256 x 256.
 * Appends one point (or a padding point) to each set, writes the selected logits into
 * mask_next (N x 256 x 256; may be NULL) and what happened into info (N entries; may be
 * NULL). E_ARG when a set is full (more than TS_SAMPLE_MAX_POINTS points). */
int ts_sample_round(ts_rng *r, int N, const float *z, const float *u,
                    const uint8_t *const *glow, const uint8_t *valid, ts_sample_set *sets,
                    float *mask_next, ts_sample_info *info);

/* The decoder's view of a set: coordinates (x + 0.5) / 1024 in float32 (the official prompt
 * encoder's arithmetic on a float32 tensor). coords holds 2 * TS_SAMPLE_MAX_POINTS floats and
 * must outlive *out; mask_input may be NULL. */
void ts_sample_to_prompt(const ts_sample_set *s, const float *mask_input, float *coords,
                         ts_prompt_set *out);

#endif
