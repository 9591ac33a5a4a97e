/* records_json.c - everything-mode records as SAM's generator writes them with
 * output_mode="coco_rle" (a JSON list, in the generator's order). */
#include "core.h"
#include "everything/amg.h"
#include "io/json.h"
#include "tinysam.h"

#include <stdio.h>
#include <stdlib.h>


int ts_everything_write_json(FILE *f, const tinysam_everything_result *r) {
    fputc('[', f);
    for (int i = 0; i < r->n; i++) {
        const tinysam_mask_record *m = &r->records[i];
        char *counts = ts_rle_to_string(m->counts, m->n_counts);
        if (!counts) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        fprintf(f, "%s\n{\"segmentation\": {\"size\": [%d, %d], \"counts\": ", i ? "," : "",
                m->height, m->width);
        ts_json_write_string(f, counts); /* COCO strings may hold '\\' */
        fprintf(f,
                "}, \"area\": %lld, "
                "\"bbox\": [%d, %d, %d, %d], \"predicted_iou\": %.17g, \"point_coords\": "
                "[[%.17g, %.17g]], \"stability_score\": %.17g, \"crop_box\": [%d, %d, %d, %d]}",
                m->area, m->bbox[0], m->bbox[1],
                m->bbox[2], m->bbox[3], (double)m->predicted_iou, m->point[0], m->point[1],
                (double)m->stability_score, m->crop_box[0], m->crop_box[1], m->crop_box[2],
                m->crop_box[3]);
        free(counts);
    }
    fputs(r->n ? "\n]\n" : "]\n", f);
    return ferror(f) ? ts_error(TINYSAM_E_IO, "write failed") : 0;
}
