/* amg.h - the shared pieces of segment-everything (spec TINYSAM.md section 6.0;
 * ref: segment_anything/utils/amg.py): point grids, crop boxes, stability score, boxes,
 * run-length encoding, NMS, small-region removal. */
#ifndef TS_AMG_H
#define TS_AMG_H

#include <stddef.h>
#include <stdint.h>

/* build_point_grid(n): n*n points (x fastest), normalised, double. out: 2*n*n. */
void ts_point_grid(int n, double *out);

typedef struct {
    int x0, y0, x1, y1, layer;
} ts_crop_box;
/* generate_crop_boxes: returns the count (1 + sum 4^i), fills out (caller sizes it with
 * ts_crop_box_count). */
int ts_crop_box_count(int n_layers);
int ts_crop_boxes(int w, int h, int n_layers, double overlap_ratio, ts_crop_box *out);

/* A growable run-length encoding (column-major counts, starting with a zero run). */
typedef struct {
    uint32_t *counts;
    int n, cap;
} ts_rle;
int ts_rle_push(ts_rle *r, uint32_t v);
void ts_rle_free(ts_rle *r);
/* RLE of a region mask (rh x rw, row-major 0/1) placed at (x0, y0) inside an H x W image. */
int ts_rle_encode(const uint8_t *mask, int rw, int rh, int x0, int y0, int W, int H, ts_rle *out);
/* Decodes counts into a row-major H x W 0/1 mask. Fails if the counts do not cover H*W. */
int ts_rle_decode(const uint32_t *counts, int n, int W, int H, uint8_t *mask);
long long ts_rle_area(const uint32_t *counts, int n);
/* COCO compressed string <-> counts. */
char *ts_rle_to_string(const uint32_t *counts, int n);
int ts_rle_from_string(const char *s, ts_rle *out);

/* calculate_stability_score: #(logit > offset) / #(logit > -offset), float32 division. */
float ts_stability_score(const float *logits, size_t n, float offset);

/* Greedy NMS (torchvision semantics): boxes n x 4 float32 (x0,y0,x1,y1), scores n; writes the
 * kept indices in processing order to keep and returns their count. */
int ts_nms(const float *boxes, const float *scores, int n, double iou_thresh, int *keep);

/* remove_small_regions: holes (mode 0) or islands (mode 1), 8-connectivity, in place on a
 * W x H 0/1 mask; *changed set when a small component existed. scratch: W*H ints. */
int ts_remove_small_regions(uint8_t *mask, int W, int H, int min_area, int islands, int *changed);

/* TinySAM's second-round points (spec 6.2): for each first-round grid point g1 (normalised,
 * n1 x n1), its neighbours at integer strides H/pps, W/pps not covered by cover (H x W, or
 * NULL). out (up to 15 * n1 * n1 points, image coordinates) gets them in order; returns the
 * count. */
int ts_hierarchical_points(const double *g1, int n1, int W, int H, int points_per_side,
                           const uint8_t *cover, double *out);

/* The pixels (row, col pairs, up to 15 * n1 * n1) whose cover ts_hierarchical_points reads:
 * only these of the round-1 high-confidence marks matter. Returns their count. */
int ts_hierarchical_cells(const double *g1, int n1, int W, int H, int points_per_side,
                          int *cells);

/* Inclusive bounding box of a W x H mask; (0,0,0,0) when empty. */
void ts_mask_box(const uint8_t *mask, int W, int H, int box[4]);

#include <stdio.h>
#include "tinysam.h"
/* Writes the records as SAM's generator's coco_rle output (records_json.c). */
int ts_everything_write_json(FILE *f, const tinysam_everything_result *r);
/* One image's records as an SA-1B file: {"image": {image_id, width, height, file_name},
 * "annotations": [records with "id" = their index]}, ending "]}\n". */
int ts_everything_write_sa1b(FILE *f, const tinysam_everything_result *r, long long image_id,
                             const char *file_name, int width, int height);

#endif
