/* everything_check.h - compares everything-mode results with the official generator's
 * records (one-to-one matching by mask IoU and predicted IoU), for the parity tests. */
#ifndef TS_EVERYTHING_CHECK_H
#define TS_EVERYTHING_CHECK_H

#include "core.h"
#include "everything/amg.h"
#include "io/json.h"
#include "test.h"
#include "tinysam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Reads the options object of a reference file into o. */
static void options_from_json(const ts_json *j, tinysam_everything_options *o) {
    tinysam_everything_defaults(o);
    const ts_json *mode = ts_json_get(j, "mode");
    if (mode && mode->type == TS_JSON_STRING && !strcmp(mode->string, "grid"))
        o->mode = TINYSAM_EVERYTHING_GRID;
    o->points_per_side = (int)ts_json_num(j, "points_per_side", o->points_per_side);
    o->points_per_batch = (int)ts_json_num(j, "points_per_batch", o->points_per_batch);
    o->pred_iou_thresh = (float)ts_json_num(j, "pred_iou_thresh", o->pred_iou_thresh);
    o->stability_score_thresh =
        (float)ts_json_num(j, "stability_score_thresh", o->stability_score_thresh);
    o->stability_score_offset =
        (float)ts_json_num(j, "stability_score_offset", o->stability_score_offset);
    o->high_score_thresh = (float)ts_json_num(j, "high_score_thresh", o->high_score_thresh);
    o->box_nms_thresh = (float)ts_json_num(j, "box_nms_thresh", o->box_nms_thresh);
    o->crop_n_layers = (int)ts_json_num(j, "crop_n_layers", o->crop_n_layers);
    o->crop_nms_thresh = (float)ts_json_num(j, "crop_nms_thresh", o->crop_nms_thresh);
    o->crop_overlap_ratio = (float)ts_json_num(j, "crop_overlap_ratio", o->crop_overlap_ratio);
    o->crop_n_points_downscale_factor =
        (int)ts_json_num(j, "crop_n_points_downscale_factor", o->crop_n_points_downscale_factor);
    o->min_mask_region_area = (int)ts_json_num(j, "min_mask_region_area", o->min_mask_region_area);
}

static double mask_iou(const uint8_t *a, const uint8_t *b, size_t n) {
    size_t inter = 0, uni = 0;
    for (size_t i = 0; i < n; i++) {
        inter += a[i] & b[i];
        uni += a[i] | b[i];
    }
    return uni ? (double)inter / uni : 1.0;
}

/* Matches produced records with the reference file's records; asserts the criteria:
 * >= 97% of reference masks matched one-to-one (mask IoU >= 0.95, predicted_iou within
 * 1e-3), >= 97% of produced masks matched back, and (if check_points) equal point counts. */
static void compare_with_reference(const char *label, const ts_json *ref,
                                   const tinysam_everything_result *res, int check_points) {
    const ts_json *recs = ts_json_get(ref, "records"), *pe = ts_json_get(ref, "points_evaluated");
    REQUIRE(recs && recs->type == TS_JSON_ARRAY, "%s: no records", label);
    if (check_points) {
        double total = ts_json_num(pe, "total", -1);
        CHECK(total == res->points_total, "%s: points evaluated %d, reference %.0f", label,
              res->points_total, total);
        const ts_json *pp = ts_json_get(pe, "per_pass");
        for (int i = 0; pp && i < pp->n && i < 2; i++)
            CHECK(pp->items[i].number == res->points_per_pass[i], "%s: pass %d points %d vs %.0f",
                  label, i, res->points_per_pass[i], pp->items[i].number);
    }
    int nr = recs->n, np = res->n;
    uint8_t **rm = calloc((size_t)nr + 1, sizeof *rm), **pm = calloc((size_t)np + 1, sizeof *pm);
    int W = 0, H = 0;
    for (int i = 0; i < nr; i++) {
        const ts_json *seg = ts_json_get(&recs->items[i], "segmentation");
        const ts_json *size = ts_json_get(seg, "size"), *counts = ts_json_get(seg, "counts");
        H = (int)size->items[0].number;
        W = (int)size->items[1].number;
        ts_rle r = {0};
        REQUIRE(ts_rle_from_string(counts->string, &r) == 0, "%s: reference RLE", label);
        rm[i] = malloc((size_t)W * H);
        REQUIRE(ts_rle_decode(r.counts, r.n, W, H, rm[i]) == 0, "%s: decode ref", label);
        /* our encoder reproduces the reference string exactly */
        char *again = ts_rle_to_string(r.counts, r.n);
        CHECK(again && !strcmp(again, counts->string), "%s: RLE string round trip", label);
        free(again);
        ts_rle_free(&r);
    }
    for (int i = 0; i < np; i++) {
        const tinysam_mask_record *m = &res->records[i];
        if (nr) CHECK(m->width == W && m->height == H, "%s: size", label);
        pm[i] = malloc((size_t)m->width * m->height);
        ts_rle_decode(m->counts, m->n_counts, m->width, m->height, pm[i]);
    }
    int *ref_match = malloc(sizeof(int) * (size_t)(nr + 1));
    int *prod_used = calloc((size_t)np + 1, sizeof(int));
    int matched = 0, exact_fields = 0;
    for (int i = 0; i < nr; i++) {
        ref_match[i] = -1;
        double riou = ts_json_num(&recs->items[i], "predicted_iou", NAN);
        for (int j = 0; j < np; j++) {
            if (prod_used[j] || fabs(riou - res->records[j].predicted_iou) > 1e-3) continue;
            if (mask_iou(rm[i], pm[j], (size_t)W * H) >= 0.95) {
                ref_match[i] = j;
                prod_used[j] = 1;
                matched++;
                const ts_json *bb = ts_json_get(&recs->items[i], "bbox");
                const tinysam_mask_record *pr = &res->records[j];
                int same = (long long)ts_json_num(&recs->items[i], "area", -1) == pr->area;
                for (int k = 0; k < 4; k++) same &= (int)bb->items[k].number == pr->bbox[k];
                exact_fields += same;
                break;
            }
        }
    }
    printf("  %s: %d reference, %d produced, %d matched (%d with identical area and bbox)\n", label,
           nr, np, matched, exact_fields);
    CHECK(matched >= 0.97 * nr, "%s: only %d of %d reference masks matched", label, matched, nr);
    CHECK(matched >= 0.97 * np, "%s: only %d of %d produced masks matched back", label, matched,
          np);
    for (int i = 0; i < nr; i++) free(rm[i]);
    for (int i = 0; i < np; i++) free(pm[i]);
    free(rm);
    free(pm);
    free(ref_match);
    free(prod_used);
}

#endif
