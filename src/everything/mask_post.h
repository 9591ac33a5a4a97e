/* mask_post.h - what everything mode needs of one candidate mask at full resolution (the
 * stability score's two counts, the box and the column-major RLE of logit > 0, chosen single
 * pixels), from its 256 x 256 low-res logits (spec TINYSAM.md sections 3.6, 6.1).
 *
 * Two implementations give identical results, bit for bit:
 * - ts_mask_summarize: by spans. Each output column is cut into runs whose side of each
 *   threshold is certain from the low-res logits it depends on (a full-resolution logit is a
 *   two-stage bilinear blend of at most 3 x 3 of them, so it lies in their range, widened by
 *   a bound on the float rounding); only the uncertain band is evaluated, pixel by pixel,
 *   with the same operations in the same order as ts_postprocess_mask. Time grows with the
 *   masks' boundaries, not the image's area. Switches a mask to the dense path when spans
 *   would not pay (an uncertain pixel costs about 3-4 dense ones): when over a quarter of the
 *   low-res 2 x 2 blocks straddle a threshold (a boundary everywhere, as with random
 *   weights), decided before any window, or when the unsure pixels found so far exceed a
 *   quarter of the mask. Either way the output is the same, bit for bit.
 * - ts_mask_summarize_dense: the reference, today's generator code: ts_postprocess_mask to
 *   an H x W float buffer, then every pixel thresholded, boxed and encoded. */
#ifndef TS_MASK_POST_H
#define TS_MASK_POST_H

#include "everything/amg.h"

#include <stddef.h>
#include <stdint.h>

/* One region's up-sampling geometry: the taps of both stages and, for each output row and
 * column, the low-res rows / columns it depends on (as runs of equal windows). */
typedef struct {
    int newh, neww, h, w;
    int *ay0, *ay1, *ax0, *ax1, *by0, *by1, *bx0, *bx1;
    float *ayl0, *ayl1, *axl0, *axl1, *byl0, *byl1, *bxl0, *bxl1;
    int n_rwin, n_cwin;
    int *rwin_start, *rwin_lo, *rwin_hi; /* n_rwin + 1 starts (the last is h) */
    int *cwin_start, *cwin_lo, *cwin_hi; /* n_cwin + 1 starts (the last is w) */
    int qlo_ge[257], qhi_le[256]; /* first window with lo >= r, last with hi <= r */
    void *mem;
} ts_mask_geom;

int ts_mask_geom_init(ts_mask_geom *g, int newh, int neww, int h, int w);
void ts_mask_geom_free(ts_mask_geom *g);

/* Thresholds and placement of one summary. lo < 0 < hi are the stability score's. */
typedef struct {
    float lo, hi;
    int x0, y0, W, H; /* the region's place in the full image (RLE frame) */
    float stab_thresh; /* > 0: the dense path skips box and RLE of a mask whose stability
                        * score n_hi / n_lo fails it (out->rejected) */
} ts_mask_frame;

typedef struct {
    long long n_hi, n_lo; /* #(logit > hi), #(logit > lo) */
    int box[4];           /* inclusive xyxy of logit > 0 in the region; zeros when empty */
    ts_rle rle;           /* logit > 0, column-major over the W x H image */
    int dense;            /* 1 when the dense path produced it */
    int switched;         /* ts_mask_summarize went dense: 1 from the low-res map's share of
                           * blocks straddling a threshold, 2 from the share of unsure pixels
                           * in the first column windows (0: it did not) */
    int rejected;         /* 1: failed stab_thresh; box and rle not filled */
} ts_mask_summary;

/* Per-thread scratch, grown on demand; zero-initialise, release with ts_mask_scratch_free. */
typedef struct {
    float *logits, *tmp; /* dense path: h*w floats, postprocess scratch */
    uint8_t *bin;
    size_t dense_px;
    float *cmin, *cmax, *rowmax, *colmax;
    uint64_t amask[256][4], bmask[256][4]; /* spans: low-res rows clearly above / below */
    int *seg; /* spans: (end row, code) pairs of every column window */
    size_t seg_cap;
    int *seg_off;
    int seg_off_cap;
    float *blk, *m2; /* spans: stage-1 values of a column window, stage-2 rows of a column */
    size_t blk_cap, m2_cap;
    int spans_only; /* tests: never fall back to the dense path (finite logits) */
    int bytes_only; /* set by ts_mask_fill: a switched mask makes only its byte mask */
} ts_mask_scratch;
void ts_mask_scratch_free(ts_mask_scratch *s);

int ts_mask_summarize(const ts_mask_geom *g, const float *low, const ts_mask_frame *f,
                      ts_mask_scratch *s, ts_mask_summary *out);
int ts_mask_summarize_dense(const ts_mask_geom *g, const float *low, const ts_mask_frame *f,
                            ts_mask_scratch *s, ts_mask_summary *out);

/* The full-resolution byte mask of one low-res mask: mask[y * w + x] = logit > 0, the same
 * bytes as thresholding ts_postprocess_mask's h x w output, from the spans (certain runs
 * written without their logits, only the band evaluated; lattices switch to the dense
 * computation as above). For the prompted masks when their logits are not returned. */
int ts_mask_fill(const ts_mask_geom *g, const float *low, ts_mask_scratch *s, uint8_t *mask);

/* The exact full-resolution logit at region pixel (y, x): ts_postprocess_mask's value. */
float ts_mask_pixel(const ts_mask_geom *g, const float *low, int y, int x);

/* remove_small_regions of segment_anything/utils/amg.py (holes filled, then islands dropped,
 * below min_area pixels, 8-connectivity) on a W x H mask given by its column-major RLE,
 * computed on the mask's column runs: the same result as ts_rle_decode,
 * ts_remove_small_regions (holes, then islands), ts_mask_box and, when changed,
 * ts_rle_encode of the whole mask, bit for bit, without a full-size mask. *changed is 1 when
 * either step found a small region; out (emptied first, caller frees) is filled only then. */
int ts_rle_remove_small_regions(const uint32_t *counts, int n_counts, int W, int H, int min_area,
                                int *changed, int box[4], ts_rle *out);

/* Everything mode's choice of path (generator.c): 0 spans (default), 1 the dense reference
 * (today's code, kept for tests and `make bench`). Not thread-safe; set it before a run. */
void ts_everything_set_dense(int on);
int ts_everything_dense(void);

#endif
