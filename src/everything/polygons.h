/* polygons.h - masks as polygons: outer contours (OpenCV's findContours with
 * RETR_EXTERNAL, CHAIN_APPROX_NONE), Douglas-Peucker simplification
 * (approxPolyDP), and the COCO polygon and YOLO segmentation label writers.
 * Internal to the library and the CLI/server. */
#ifndef TS_POLYGONS_H
#define TS_POLYGONS_H

#include <stdint.h>
#include <stdio.h>

/* A closed polygon of n integer pixel vertices (x, y), xy holds 2n values. */
typedef struct {
    int n;
    int *xy;
} ts_polygon;

typedef struct {
    int n;
    ts_polygon *p;
} ts_polygon_set;

/* The outer border of every outermost 8-connected component of a W x H mask
 * (nonzero = inside), traced like OpenCV's border following: one polygon per
 * component, holes ignored, components inside holes dropped (RETR_EXTERNAL),
 * every border pixel a vertex (CHAIN_APPROX_NONE), in raster order of the
 * components' first pixels. */
int ts_mask_contours(const uint8_t *mask, int W, int H, ts_polygon_set *out);

/* The closed polygon's perimeter (cv2.arcLength(c, True)). */
double ts_polygon_perimeter(const ts_polygon *p);

/* Douglas-Peucker on a closed polygon, as cv2.approxPolyDP(c, epsilon, True).
 */
int ts_polygon_simplify(const ts_polygon *in, double epsilon, ts_polygon *out);

/* Contours simplified each at epsilon = epsilon_factor x its perimeter
 * (X-AnyLabeling's rule); epsilon_factor <= 0 keeps every border pixel.
 * Polygons of fewer than 3 vertices (single pixels, lines) are kept only when
 * keep_degenerate is set. */
int ts_mask_polygons(const uint8_t *mask, int W, int H, double epsilon_factor, int keep_degenerate,
                     ts_polygon_set *out);

void ts_polygon_set_free(ts_polygon_set *s);

/* COCO segmentation: [[x1, y1, x2, y2, ...], ...]. */
void ts_polygons_write_coco(FILE *f, const ts_polygon_set *s);
/* YOLO segmentation labels: "class x1 y1 x2 y2 ..." normalised by W and H, one
 * line each. */
void ts_polygons_write_yolo(FILE *f, const ts_polygon_set *s, int cls, int W, int H);

/* Everything-mode records with polygons (records_polygons.c): a JSON list of
 * SAM's records with "segmentation" as COCO polygons (and "size": [H, W]), or
 * with yolo set, YOLO lines (class 0) of every record. */
#include "tinysam.h"
int ts_everything_write_polygons(FILE *f, const tinysam_everything_result *r, double eps_factor,
                                 int yolo);
/* The records' polygons alone, in record order: [[[x1, y1, ...], ...], ...] (the JSON API's
 * everything answer). */
int ts_everything_write_polygon_lists(FILE *f, const tinysam_everything_result *r,
                                      double eps_factor);

#endif
