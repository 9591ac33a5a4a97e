/* records_json.c - everything-mode records as SAM's generator writes them with
 * output_mode="coco_rle" (a JSON list, in the generator's order), and as one SA-1B-style file
 * per image (the folder mode's output, read back by distill --masks and eval --masks). */
#include "core.h"
#include "everything/amg.h"
#include "io/json.h"
#include "tinysam.h"

#include <stdio.h>
#include <stdlib.h>

/* One record as a JSON object; id < 0 leaves the "id" key out (SAM's list has none). */
static int write_record(FILE *f, const tinysam_mask_record *m, long long id) {
    char *counts = ts_rle_to_string(m->counts, m->n_counts);
    if (!counts) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    fputc('{', f);
    if (id >= 0) fprintf(f, "\"id\": %lld, ", id);
    fprintf(f, "\"segmentation\": {\"size\": [%d, %d], \"counts\": ", m->height, m->width);
    ts_json_write_string(f, counts); /* COCO strings may hold '\\' */
    fprintf(f,
            "}, \"area\": %lld, "
            "\"bbox\": [%d, %d, %d, %d], \"predicted_iou\": %.17g, \"point_coords\": "
            "[[%.17g, %.17g]], \"stability_score\": %.17g, \"crop_box\": [%d, %d, %d, %d]}",
            m->area, m->bbox[0], m->bbox[1], m->bbox[2], m->bbox[3], (double)m->predicted_iou,
            m->point[0], m->point[1], (double)m->stability_score, m->crop_box[0], m->crop_box[1],
            m->crop_box[2], m->crop_box[3]);
    free(counts);
    return 0;
}

int ts_everything_write_json(FILE *f, const tinysam_everything_result *r) {
    fputc('[', f);
    for (int i = 0; i < r->n; i++) {
        fputs(i ? ",\n" : "\n", f);
        if (write_record(f, &r->records[i], -1)) return TINYSAM_E_NOMEM;
    }
    fputs(r->n ? "\n]\n" : "]\n", f);
    return ferror(f) ? ts_error(TINYSAM_E_IO, "write failed") : 0;
}

int ts_everything_write_sa1b(FILE *f, const tinysam_everything_result *r, long long image_id,
                             const char *file_name, int width, int height) {
    fprintf(f, "{\"image\": {\"image_id\": %lld, \"width\": %d, \"height\": %d, \"file_name\": ",
            image_id, width, height);
    ts_json_write_string(f, file_name);
    fputs("},\n \"annotations\": [", f);
    for (int i = 0; i < r->n; i++) {
        fputs(i ? ",\n" : "\n", f);
        if (write_record(f, &r->records[i], i)) return TINYSAM_E_NOMEM;
    }
    fputs(r->n ? "\n]}\n" : "]}\n", f);
    return ferror(f) ? ts_error(TINYSAM_E_IO, "write failed") : 0;
}
