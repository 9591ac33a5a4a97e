/* records_polygons.c - everything-mode records with polygon masks: SAM's
 * generator records with "segmentation" as COCO polygons (outer contours,
 * Douglas-Peucker), or YOLO segmentation labels (one line per polygon, class
 * 0). */
#include "core.h"
#include "everything/amg.h"
#include "everything/polygons.h"
#include "tinysam.h"

#include <stdio.h>
#include <stdlib.h>

/* The polygons of record m (decoded from its RLE). */
static int record_polygons(const tinysam_mask_record *m, double eps_factor, ts_polygon_set *ps) {
    uint8_t *mask = ts_malloc((size_t)m->width * m->height);
    if (!mask) return TINYSAM_E_NOMEM;
    int rc = ts_rle_decode(m->counts, m->n_counts, m->width, m->height, mask);
    if (!rc) rc = ts_mask_polygons(mask, m->width, m->height, eps_factor, 0, ps);
    free(mask);
    return rc;
}

int ts_everything_write_polygons(FILE *f, const tinysam_everything_result *r, double eps_factor,
                                 int yolo) {
    if (!yolo) fputc('[', f);
    for (int i = 0; i < r->n; i++) {
        const tinysam_mask_record *m = &r->records[i];
        ts_polygon_set ps;
        int rc = record_polygons(m, eps_factor, &ps);
        if (rc) return rc;
        if (yolo) {
            ts_polygons_write_yolo(f, &ps, 0, m->width, m->height);
        } else {
            fputs(i ? ",\n{\"segmentation\": " : "\n{\"segmentation\": ", f);
            ts_polygons_write_coco(f, &ps);
            fprintf(f,
                    ", \"size\": [%d, %d], \"area\": %lld, \"bbox\": [%d, %d, %d, %d], "
                    "\"predicted_iou\": %.17g, \"point_coords\": [[%.17g, %.17g]], "
                    "\"stability_score\": %.17g, \"crop_box\": [%d, %d, %d, %d]}",
                    m->height, m->width, m->area, m->bbox[0], m->bbox[1], m->bbox[2], m->bbox[3],
                    (double)m->predicted_iou, m->point[0], m->point[1], (double)m->stability_score,
                    m->crop_box[0], m->crop_box[1], m->crop_box[2], m->crop_box[3]);
        }
        ts_polygon_set_free(&ps);
    }
    if (!yolo) fputs(r->n ? "\n]\n" : "]\n", f);
    return ferror(f) ? ts_error(TINYSAM_E_IO, "write failed") : 0;
}

int ts_everything_write_polygon_lists(FILE *f, const tinysam_everything_result *r,
                                      double eps_factor) {
    fputc('[', f);
    for (int i = 0; i < r->n; i++) {
        ts_polygon_set ps;
        int rc = record_polygons(&r->records[i], eps_factor, &ps);
        if (rc) return rc;
        if (i) fputs(", ", f);
        ts_polygons_write_coco(f, &ps);
        ts_polygon_set_free(&ps);
    }
    fputc(']', f);
    return ferror(f) ? ts_error(TINYSAM_E_IO, "write failed") : 0;
}
