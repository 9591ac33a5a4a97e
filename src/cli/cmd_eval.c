/* cmd_eval.c - `tinysam eval`: mean IoU of the model's masks against SA-1B-style ground truth
 * (per-image JSON, COCO RLE segmentation), with a box prompt (single mask, SAM's convention
 * for boxes) and a point prompt (multimask, highest predicted IoU) per object. */
#include "cli/args.h"
#include "cli/commands.h"
#include "core.h"
#include "dist/folder_job.h"
#include "dist/shard.h"
#include "everything/amg.h"
#include "io/json.h"
#include "tinysam.h"
#include "train/dataset.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *eval_usage =
    "usage: tinysam eval --model M --images DIR --masks DIR [--boxes FILE] [--threads N]\n"
    "                    [--shard I/N] [--shard-count N] [--out REPORT.json]\n"
    "       tinysam eval [--out REPORT.json] --merge REPORT.json...\n"
    "\n"
    "For every image in DIR (.jpg/.jpeg/.png) with a ground-truth file MASKS/<stem>.json\n"
    "(SA-1B format: annotations[] with segmentation {size, counts} in COCO RLE, bbox xywh,\n"
    "optional point_coords), encodes the image once, then per object predicts a mask from\n"
    "its box (single mask) and from one point (point_coords[0], else the mask pixel nearest\n"
    "the box centre; multimask, highest predicted IoU) and measures the IoU with the ground\n"
    "truth. Writes a JSON report on stdout, progress and a summary line on stderr.\n"
    "\n"
    "--boxes FILE: boxes from a detector (the paper's COCO protocol prompts with ViTDet boxes):\n"
    "COCO results [{\"image_id\", \"bbox\": [x, y, w, h], ...}] with image_id the file stem or the\n"
    "ground truth's image.image_id, or {\"<stem>\": [[x, y, w, h], ...]}. Each box gives one mask\n"
    "(single mask); every ground-truth object scores the best IoU among its image's box masks\n"
    "(0 when none overlaps): mean_detector_iou.\n"
    "\n"
    "Every value is written with 17 significant digits. --shard I/N (or the launcher's\n"
    "variables, as for `tinysam everything --images`) evaluates image i of the sorted folder\n"
    "when i mod N = I and marks the report as a shard; --merge re-sums the shards' per-image\n"
    "values in name order and writes the report of the unsharded run, value for value.\n"
    "--out writes the report to a file (\"{shard}\" becomes the shard index) instead of stdout.\n";

/* IoU of two 0/1 masks; two empty masks agree perfectly. */
static double eval_iou(const uint8_t *a, const uint8_t *b, size_t n) {
    size_t inter = 0, uni = 0;
    for (size_t i = 0; i < n; i++) {
        inter += a[i] & b[i];
        uni += a[i] | b[i];
    }
    return uni ? (double)inter / (double)uni : 1.0;
}

/* The point prompt: point_coords[0] when given, else the mask pixel nearest the box centre. */
static int pick_point(const ts_json *ann, const uint8_t *mask, int W, int H, const float box[4],
                      float pt[2]) {
    const ts_json *pc = ts_json_get(ann, "point_coords");
    const ts_json *p0 = pc ? ts_json_at(pc, 0) : NULL;
    if (p0 && p0->type == TS_JSON_ARRAY && p0->n >= 2 && p0->items[0].type == TS_JSON_NUMBER &&
        p0->items[1].type == TS_JSON_NUMBER && isfinite(p0->items[0].number) &&
        isfinite(p0->items[1].number)) {
        pt[0] = (float)p0->items[0].number;
        pt[1] = (float)p0->items[1].number;
        return 1;
    }
    double cx = 0.5 * (box[0] + box[2]), cy = 0.5 * (box[1] + box[3]), best = INFINITY;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            if (mask[(size_t)y * W + x]) {
                double d = (x + 0.5 - cx) * (x + 0.5 - cx) + (y + 0.5 - cy) * (y + 0.5 - cy);
                if (d < best) {
                    best = d;
                    pt[0] = (float)x + 0.5f;
                    pt[1] = (float)y + 0.5f;
                }
            }
    return best < INFINITY;
}

/* ---- detector boxes (--boxes) ------------------------------------------------------------- */

/* Appends [x, y, w, h] from a JSON array to *v (4 floats each). */
static int push_box(const ts_json *bb, const char *file, float **v, int *n, int *cap) {
    if (!bb || bb->type != TS_JSON_ARRAY || bb->n != 4)
        return ts_error(TINYSAM_E_FORMAT, "%s: a box is [x, y, w, h]", file);
    float b[4];
    for (int k = 0; k < 4; k++) {
        double x = bb->items[k].number;
        if (bb->items[k].type != TS_JSON_NUMBER || !isfinite(x) || fabs(x) > 1e7 ||
            (k >= 2 && x < 0))
            return ts_error(TINYSAM_E_FORMAT, "%s: a box is [x, y, w, h] (finite, w, h >= 0)",
                            file);
        b[k] = (float)x;
    }
    if (*n == *cap) {
        int nc = *cap ? *cap * 2 : 16;
        float *nv = realloc(*v, sizeof(float) * 4 * (size_t)nc);
        if (!nv) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        *v = nv;
        *cap = nc;
    }
    memcpy(*v + 4 * (size_t)*n, b, sizeof b);
    (*n)++;
    return 0;
}

/* The boxes of one image (stem, and the ground truth's numeric image id when it has one). */
static int image_boxes(const ts_json *boxes, const char *file, const char *stem, double gt_id,
                       float **v, int *n) {
    int cap = 0, rc = 0;
    *v = NULL;
    *n = 0;
    if (boxes->type == TS_JSON_OBJECT) {
        const ts_json *l = ts_json_get(boxes, stem);
        if (!l) return 0;
        if (l->type != TS_JSON_ARRAY)
            return ts_error(TINYSAM_E_FORMAT, "%s: \"%s\" must be a list of boxes", file, stem);
        for (int i = 0; !rc && i < l->n; i++) {
            const ts_json *b = &l->items[i];
            rc = push_box(b->type == TS_JSON_OBJECT ? ts_json_get(b, "bbox") : b, file, v, n, &cap);
        }
        return rc;
    }
    for (int i = 0; !rc && i < boxes->n; i++) {
        const ts_json *d = &boxes->items[i];
        const ts_json *id = d->type == TS_JSON_OBJECT ? ts_json_get(d, "image_id") : NULL;
        if (!id) return ts_error(TINYSAM_E_FORMAT, "%s: entry %d has no image_id", file, i);
        int mine = id->type == TS_JSON_STRING ? !strcmp(id->string, stem)
                   : id->type == TS_JSON_NUMBER ? id->number == gt_id : 0;
        if (mine) rc = push_box(ts_json_get(d, "bbox"), file, v, n, &cap);
    }
    return rc;
}

/* Intersection of a mask given by column-major prefix sums (P[k] = set pixels among the first
 * k in column-major order) with an RLE (column-major runs, the first one of zeros). */
static long long rle_intersection(const uint32_t *P, const ts_rle *r) {
    long long inter = 0;
    unsigned long long pos = 0;
    for (int i = 0; i < r->n; i++) {
        if (i & 1) inter += (long long)P[pos + r->counts[i]] - P[pos];
        pos += r->counts[i];
    }
    return inter;
}

typedef struct {
    double box_sum, point_sum, det_sum;
    int n_box, n_point, n_det_obj, n_det_boxes;
} eval_totals;

/* One image's values: what the report holds, and all that a merge needs to re-sum. */
typedef struct {
    const char *name;
    int n;          /* objects */
    double *box;    /* n box-prompt IoUs */
    double *point;  /* n point-prompt IoUs, NaN where no point prompt was possible */
    int has_det;    /* --boxes given */
    int n_det;      /* detector boxes of this image */
    double *det;    /* n best detector-box IoUs */
} image_result;

/* The image's sums, in object order (the same operations in a run and in a merge). */
static void result_sums(const image_result *r, double *bsum, double *psum, int *np,
                        double *dsum) {
    *bsum = *psum = *dsum = 0;
    *np = 0;
    for (int i = 0; i < r->n; i++) {
        *bsum += r->box[i];
        if (!isnan(r->point[i])) {
            *psum += r->point[i];
            (*np)++;
        }
        if (r->has_det) *dsum += r->det[i];
    }
}

static void totals_add(eval_totals *tot, const image_result *r) {
    double bsum, psum, dsum;
    int np;
    result_sums(r, &bsum, &psum, &np, &dsum);
    tot->box_sum += bsum;
    tot->point_sum += psum;
    tot->n_box += r->n;
    tot->n_point += np;
    if (r->has_det) {
        tot->det_sum += dsum;
        tot->n_det_obj += r->n;
        tot->n_det_boxes += r->n_det;
    }
}

/* The image's JSON object; every value %.17g, so that a merge reads back the exact doubles. */
static void result_write(FILE *out, const image_result *r) {
    double bsum, psum, dsum;
    int np;
    result_sums(r, &bsum, &psum, &np, &dsum);
    fprintf(out, "    {\"image\": ");
    ts_json_write_string(out, r->name);
    fprintf(out, ", \"objects\": %d, \"mean_box_iou\": %.17g, \"mean_point_iou\": %.17g,\n",
            r->n, r->n ? bsum / r->n : 0.0, np ? psum / np : 0.0);
    fprintf(out, "     \"box_iou\": [");
    for (int i = 0; i < r->n; i++) fprintf(out, "%s%.17g", i ? ", " : "", r->box[i]);
    fprintf(out, "],\n     \"point_iou\": [");
    for (int i = 0; i < r->n; i++) {
        if (isnan(r->point[i])) fprintf(out, "%snull", i ? ", " : "");
        else fprintf(out, "%s%.17g", i ? ", " : "", r->point[i]);
    }
    fprintf(out, "]");
    if (r->has_det) {
        fprintf(out, ",\n     \"detector_boxes\": %d, \"mean_detector_iou\": %.17g, "
                     "\"detector_iou\": [", r->n_det, r->n ? dsum / r->n : 0.0);
        for (int j = 0; j < r->n; j++) fprintf(out, "%s%.17g", j ? ", " : "", r->det[j]);
        fprintf(out, "]");
    }
    fprintf(out, "}");
}

/* The report's closing totals (the same for a run and a merge). */
static void totals_write(FILE *out, int n_images, const eval_totals *tot, int has_det) {
    double mb = tot->n_box ? tot->box_sum / tot->n_box : 0.0;
    double mp = tot->n_point ? tot->point_sum / tot->n_point : 0.0;
    fprintf(out, "\n  ],\n  \"n_images\": %d, \"n_objects\": %d, \"n_point_prompts\": %d,\n",
            n_images, tot->n_box, tot->n_point);
    fprintf(out, "  \"mean_box_iou\": %.17g, \"mean_point_iou\": %.17g", mb, mp);
    if (has_det)
        fprintf(out, ",\n  \"detector_boxes\": %d, \"mean_detector_iou\": %.17g",
                tot->n_det_boxes, tot->n_det_obj ? tot->det_sum / tot->n_det_obj : 0.0);
}

static void totals_stderr(const char *what, int n_images, const eval_totals *tot, int has_det) {
    fprintf(stderr, "%s: %d images, %d objects: mean box IoU %.4f, mean point IoU %.4f",
            what, n_images, tot->n_box, tot->n_box ? tot->box_sum / tot->n_box : 0.0,
            tot->n_point ? tot->point_sum / tot->n_point : 0.0);
    if (has_det)
        fprintf(stderr, ", mean detector-box IoU %.4f (%d boxes)",
                tot->n_det_obj ? tot->det_sum / tot->n_det_obj : 0.0, tot->n_det_boxes);
    fprintf(stderr, "\n");
}

/* Detector boxes of one image against its ground truth: best[j] = the best IoU of object j
 * with any box's mask. */
static int eval_detector(tinysam_model *m, const tinysam_embedding *emb, const ts_json *anns,
                         int W, int H, const char *gt_path, const float *boxes, int nbox,
                         double *best) {
    const int n = anns->n;
    const size_t npix = (size_t)W * H;
    ts_rle *rles = calloc((size_t)(n ? n : 1), sizeof *rles);
    long long *area = malloc(sizeof(long long) * (size_t)(n ? n : 1));
    uint32_t *P = malloc(sizeof(uint32_t) * (npix + 1));
    int rc = 0;
    if (!rles || !area || !P) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
    for (int j = 0; !rc && j < n; j++) {
        char where[600];
        snprintf(where, sizeof where, "%s: annotation %d", gt_path, j);
        rc = ts_sa1b_segmentation_rle(ts_json_get(&anns->items[j], "segmentation"), W, H, where,
                                      &rles[j]);
        if (!rc) area[j] = ts_rle_area(rles[j].counts, rles[j].n);
        best[j] = 0;
    }
    for (int b = 0; !rc && b < nbox; b++) {
        const float *q = boxes + 4 * (size_t)b;
        tinysam_prompt pb = {.has_box = 1, .box = {q[0], q[1], q[0] + q[2], q[1] + q[3]}};
        tinysam_prediction pr = {0};
        if ((rc = tinysam_predict(m, emb, &pb, TINYSAM_PREDICT_MASKS | TINYSAM_PREDICT_SINGLE,
                                  &pr)))
            break;
        size_t k = 0;
        P[0] = 0;
        for (int x = 0; x < W; x++) /* column-major, as RLE runs */
            for (int y = 0; y < H; y++, k++) P[k + 1] = P[k] + (pr.masks[(size_t)y * W + x] != 0);
        tinysam_prediction_free(&pr);
        for (int j = 0; j < n; j++) {
            long long inter = rle_intersection(P, &rles[j]);
            long long uni = (long long)P[npix] + area[j] - inter;
            double iou = uni ? (double)inter / (double)uni : 1.0;
            if (iou > best[j]) best[j] = iou;
        }
    }
    for (int j = 0; rles && j < n; j++) ts_rle_free(&rles[j]);
    free(rles), free(area), free(P);
    return rc;
}

/* Evaluates one image; writes its JSON object (no trailing separator) to out. */
static int eval_image(tinysam_model *m, const char *img_path, const char *gt_path,
                      const char *name, const ts_json *boxes, const char *boxes_file,
                      eval_totals *tot, FILE *out) {
    ts_json *gt = NULL;
    tinysam_image img = {0};
    tinysam_embedding *emb = NULL;
    uint8_t *mask = NULL;
    double *det = NULL, *box_v = NULL, *point_v = NULL;
    float *dboxes = NULL;
    int ndet = 0;
    int rc = ts_json_load(gt_path, &gt);
    if (rc) return rc; /* ts_json_load names the file */
    const ts_json *anns = gt->type == TS_JSON_OBJECT ? ts_json_get(gt, "annotations") : NULL;
    if (!anns || anns->type != TS_JSON_ARRAY) {
        rc = ts_error(TINYSAM_E_FORMAT, "%s: no 'annotations' array", gt_path);
        goto done;
    }
    if ((rc = tinysam_image_load(img_path, 0, &img))) goto done;
    int W = img.width, H = img.height, n = anns->n;
    size_t npix = (size_t)W * H;
    mask = malloc(npix);
    box_v = malloc(2 * (size_t)(n ? n : 1) * sizeof *box_v);
    point_v = box_v ? box_v + n : NULL;
    if (!mask || !box_v) {
        rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
        goto done;
    }
    if ((rc = tinysam_encode(m, &img, &emb))) goto done;
    for (int i = 0; i < n; i++) {
        char where[600];
        snprintf(where, sizeof where, "%s: annotation %d", gt_path, i);
        const ts_json *a = &anns->items[i];
        const ts_json *bb = a->type == TS_JSON_OBJECT ? ts_json_get(a, "bbox") : NULL;
        if (!bb || bb->type != TS_JSON_ARRAY || bb->n != 4) {
            rc = ts_error(TINYSAM_E_FORMAT, "%s: bbox must be [x, y, w, h]", where);
            goto done;
        }
        float box[4];
        for (int k = 0; k < 4; k++) {
            double v = bb->items[k].number;
            if (bb->items[k].type != TS_JSON_NUMBER || !isfinite(v) || fabs(v) > 1e7 ||
                (k >= 2 && v < 0)) {
                rc = ts_error(TINYSAM_E_FORMAT, "%s: bbox must be [x, y, w, h]", where);
                goto done;
            }
            box[k] = (float)v;
        }
        box[2] += box[0]; /* xywh -> xyxy */
        box[3] += box[1];
        if ((rc = ts_sa1b_decode_segmentation(ts_json_get(a, "segmentation"), W, H, where, mask)))
            goto done;

        tinysam_prompt pb = {.has_box = 1, .box = {box[0], box[1], box[2], box[3]}};
        tinysam_prediction pr = {0};
        if ((rc = tinysam_predict(m, emb, &pb, TINYSAM_PREDICT_MASKS | TINYSAM_PREDICT_SINGLE,
                                  &pr)))
            goto done;
        box_v[i] = eval_iou(pr.masks, mask, npix);
        tinysam_prediction_free(&pr);

        float pt[2];
        int lab = 1;
        point_v[i] = NAN; /* empty mask without point_coords: no point prompt */
        if (pick_point(a, mask, W, H, box, pt)) {
            tinysam_prompt pp = {.n_points = 1, .points = pt, .labels = &lab};
            if ((rc = tinysam_predict(m, emb, &pp, TINYSAM_PREDICT_MASKS, &pr))) goto done;
            point_v[i] = eval_iou(pr.masks + (size_t)pr.best * npix, mask, npix);
            tinysam_prediction_free(&pr);
        }
    }
    if (boxes) {
        char stem[256];
        ts_dataset_stem(name, stem, sizeof stem);
        const ts_json *im = ts_json_get(gt, "image");
        double gid = im ? ts_json_num(im, "image_id", ts_json_num(im, "id", NAN)) : NAN;
        if ((rc = image_boxes(boxes, boxes_file, stem, gid, &dboxes, &ndet))) goto done;
        if (!(det = malloc(sizeof(double) * (size_t)(n ? n : 1)))) {
            rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
            goto done;
        }
        if ((rc = eval_detector(m, emb, anns, W, H, gt_path, dboxes, ndet, det))) goto done;
    }
    image_result r = {.name = name, .n = n, .box = box_v, .point = point_v,
                      .has_det = boxes != NULL, .n_det = ndet, .det = det};
    result_write(out, &r);
    totals_add(tot, &r);
    {
        double b, p, d;
        int k;
        result_sums(&r, &b, &p, &k, &d);
        fprintf(stderr, "eval: %s: %d objects, box IoU %.4f, point IoU %.4f", name, n,
                n ? b / n : 0.0, k ? p / k : 0.0);
        if (boxes) fprintf(stderr, ", %d detector boxes: IoU %.4f", ndet, n ? d / n : 0.0);
        fprintf(stderr, "\n");
    }
done:
    free(box_v);
    free(det);
    free(dboxes);
    free(mask);
    tinysam_embedding_free(emb);
    tinysam_image_free(&img);
    ts_json_free(gt);
    return rc;
}

/* ---- --merge ------------------------------------------------------------------------------ */

typedef struct {
    image_result r;
    double *vals; /* box, point and det arrays, one block */
} merged_image;

static int cmp_merged(const void *a, const void *b) {
    return strcmp(((const merged_image *)a)->r.name, ((const merged_image *)b)->r.name);
}

/* Reads n numbers (nulls allowed when nullable: NaN) from a report's array. */
static int read_values(const ts_json *arr, int n, int nullable, double *out, const char *where,
                       const char *key) {
    if (!arr || arr->type != TS_JSON_ARRAY || arr->n != n)
        return ts_error(TINYSAM_E_FORMAT, "%s: '%s' must be a list of %d values", where, key, n);
    for (int i = 0; i < n; i++) {
        const ts_json *v = &arr->items[i];
        if (v->type == TS_JSON_NUMBER) out[i] = v->number;
        else if (nullable && v->type == TS_JSON_NULL) out[i] = NAN;
        else return ts_error(TINYSAM_E_FORMAT, "%s: '%s'[%d] is not a number", where, key, i);
    }
    return 0;
}

static int eval_merge(char **files, int n_files, const char *out_path) {
    ts_json **reps = calloc((size_t)n_files, sizeof *reps);
    merged_image *imgs = NULL;
    int n_imgs = 0, cap = 0, rc = reps ? 0 : ts_error(TINYSAM_E_NOMEM, "out of memory");
    int has_det = -1, shard_count = 0, in_folder = -1;
    unsigned char *seen = NULL;
    for (int f = 0; !rc && f < n_files; f++) {
        if ((rc = ts_json_load(files[f], &reps[f]))) break;
        const ts_json *rep = reps[f];
        const ts_json *list = rep->type == TS_JSON_OBJECT ? ts_json_get(rep, "images") : NULL;
        if (!list || list->type != TS_JSON_ARRAY) {
            rc = ts_error(TINYSAM_E_FORMAT, "--merge: %s is not an eval report (no 'images')",
                          files[f]);
            break;
        }
        int det = ts_json_get(rep, "detector_boxes") != NULL;
        if (has_det >= 0 && det != has_det) {
            rc = ts_error(TINYSAM_E_ARG, "--merge: %s %s detector boxes, %s does%s", files[f],
                          det ? "has" : "has no", files[0], has_det ? "" : " not");
            break;
        }
        has_det = det;
        /* the shards of one run: same count, each index once, none missing */
        const ts_json *sh = ts_json_get(rep, "shard");
        int idx = 0, cnt = 1, inf = -1;
        if (sh) {
            double di = ts_json_num(sh, "index", -1), dc = ts_json_num(sh, "count", -1);
            inf = (int)ts_json_num(sh, "images_in_folder", -1);
            if (!(dc >= 1 && dc <= TS_SHARD_MAX_COUNT && di >= 0 && di < dc && di == (int)di &&
                  dc == (int)dc)) {
                rc = ts_error(TINYSAM_E_FORMAT, "--merge: %s: malformed 'shard'", files[f]);
                break;
            }
            idx = (int)di;
            cnt = (int)dc;
        }
        if (f == 0) {
            shard_count = cnt;
            in_folder = inf;
            if (!(seen = calloc((size_t)cnt, 1))) {
                rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
                break;
            }
        } else if (cnt != shard_count || inf != in_folder) {
            rc = ts_error(TINYSAM_E_ARG,
                          "--merge: %s is shard %d of %d over %d images, %s of %d over %d: not "
                          "the same run",
                          files[f], idx, cnt, inf, files[0], shard_count, in_folder);
            break;
        }
        if (seen[idx]++) {
            rc = ts_error(TINYSAM_E_ARG, "--merge: shard %d/%d given twice (%s)", idx, cnt,
                          files[f]);
            break;
        }
        for (int i = 0; !rc && i < list->n; i++) {
            const ts_json *im = &list->items[i];
            const ts_json *name = im->type == TS_JSON_OBJECT ? ts_json_get(im, "image") : NULL;
            double dn = ts_json_num(im, "objects", -1);
            char where[700];
            snprintf(where, sizeof where, "--merge: %s: image %d", files[f], i);
            if (!name || name->type != TS_JSON_STRING || !(dn >= 0 && dn <= 1e8) ||
                dn != (int)dn) {
                rc = ts_error(TINYSAM_E_FORMAT, "%s: needs 'image' and 'objects'", where);
                break;
            }
            if (n_imgs == cap) {
                int nc = cap ? 2 * cap : 64;
                merged_image *nv = realloc(imgs, sizeof *nv * (size_t)nc);
                if (!nv) {
                    rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
                    break;
                }
                imgs = nv;
                cap = nc;
            }
            merged_image *mi = &imgs[n_imgs];
            memset(mi, 0, sizeof *mi);
            int n = (int)dn;
            if (!(mi->vals = malloc(sizeof(double) * 3 * (size_t)(n ? n : 1)))) {
                rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
                break;
            }
            n_imgs++;
            mi->r = (image_result){.name = name->string, .n = n, .box = mi->vals,
                                   .point = mi->vals + n, .det = mi->vals + 2 * n,
                                   .has_det = has_det};
            rc = read_values(ts_json_get(im, "box_iou"), n, 0, mi->r.box, where, "box_iou");
            if (!rc)
                rc = read_values(ts_json_get(im, "point_iou"), n, 1, mi->r.point, where,
                                 "point_iou");
            if (!rc && has_det) {
                double nd = ts_json_num(im, "detector_boxes", -1);
                if (!(nd >= 0 && nd <= 1e8 && nd == (int)nd))
                    rc = ts_error(TINYSAM_E_FORMAT, "%s: needs 'detector_boxes'", where);
                mi->r.n_det = (int)nd;
                if (!rc)
                    rc = read_values(ts_json_get(im, "detector_iou"), n, 0, mi->r.det, where,
                                     "detector_iou");
            }
        }
    }
    for (int k = 0; !rc && k < shard_count; k++)
        if (!seen[k])
            rc = ts_error(TINYSAM_E_ARG, "--merge: shard %d of %d is missing", k, shard_count);
    /* the unsharded run's order: names sorted as the folder listing sorts them */
    if (!rc && n_imgs) qsort(imgs, (size_t)n_imgs, sizeof *imgs, cmp_merged);
    for (int i = 1; !rc && i < n_imgs; i++)
        if (!strcmp(imgs[i - 1].r.name, imgs[i].r.name))
            rc = ts_error(TINYSAM_E_ARG, "--merge: image '%s' is in two reports", imgs[i].r.name);
    if (!rc && !n_imgs) rc = ts_error(TINYSAM_E_ARG, "--merge: the reports hold no image");
    char *rep = NULL;
    size_t rep_len = 0;
    FILE *out = rc ? NULL : open_memstream(&rep, &rep_len);
    if (!rc && !out) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
    eval_totals tot = {0};
    if (!rc) {
        fprintf(out, "{\n  \"images\": [\n");
        for (int i = 0; i < n_imgs; i++) {
            if (i) fprintf(out, ",\n");
            result_write(out, &imgs[i].r);
            totals_add(&tot, &imgs[i].r);
        }
        totals_write(out, n_imgs, &tot, has_det > 0);
        fprintf(out, "\n}\n");
        fclose(out);
        if (out_path) rc = ts_write_file_atomic(out_path, rep, rep_len);
        else if (fwrite(rep, 1, rep_len, stdout) != rep_len || fflush(stdout))
            rc = ts_error(TINYSAM_E_IO, "eval: cannot write the report");
        if (!rc) {
            totals_stderr("eval --merge", n_imgs, &tot, has_det > 0);
        }
    }
    free(rep);
    for (int i = 0; i < n_imgs; i++) free(imgs[i].vals);
    free(imgs);
    free(seen);
    for (int f = 0; reps && f < n_files; f++) ts_json_free(reps[f]);
    free(reps);
    return rc ? ts_cli_fail() : 0;
}

int ts_cli_eval(int argc, char **argv) {
    const char *model = NULL, *images = NULL, *masks = NULL, *boxes_file = NULL, *v;
    const char *shard_arg = NULL, *out_arg = NULL;
    int threads = 0, shard_count = 0, merge_from = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(eval_usage, stdout);
            return 0;
        } else if (!strcmp(a, "--merge")) {
            merge_from = i + 1; /* every argument after --merge is a report */
            break;
        } else if (!strcmp(a, "--model")) {
            if (ts_arg_value(argc, argv, &i, &model)) return ts_cli_fail();
        } else if (!strcmp(a, "--images")) {
            if (ts_arg_value(argc, argv, &i, &images)) return ts_cli_fail();
        } else if (!strcmp(a, "--masks")) {
            if (ts_arg_value(argc, argv, &i, &masks)) return ts_cli_fail();
        } else if (!strcmp(a, "--out")) {
            if (ts_arg_value(argc, argv, &i, &out_arg)) return ts_cli_fail();
        } else if (!strcmp(a, "--shard")) {
            if (ts_arg_value(argc, argv, &i, &shard_arg)) return ts_cli_fail();
        } else if (!strcmp(a, "--shard-count")) {
            if (ts_arg_value(argc, argv, &i, &v) ||
                ts_arg_int(a, v, 1, TS_SHARD_MAX_COUNT, &shard_count))
                return ts_cli_fail();
        } else if (!strcmp(a, "--threads")) {
            if (ts_arg_value(argc, argv, &i, &v) || ts_arg_int("--threads", v, 1, 1024, &threads))
                return ts_cli_fail();
        } else if (!strcmp(a, "--boxes")) {
            if (ts_arg_value(argc, argv, &i, &boxes_file)) return ts_cli_fail();
        } else {
            ts_error(TINYSAM_E_ARG, "eval: unknown option '%s' (see tinysam eval --help)", a);
            return ts_cli_fail();
        }
    }
    if (merge_from) {
        if (model || images || masks || boxes_file || shard_arg || shard_count) {
            ts_error(TINYSAM_E_ARG, "eval --merge takes reports only (and --out before it)");
            return ts_cli_fail();
        }
        if (merge_from >= argc) {
            ts_error(TINYSAM_E_ARG, "eval --merge needs at least one report");
            return ts_cli_fail();
        }
        return eval_merge(argv + merge_from, argc - merge_from, out_arg);
    }
    if (!model || !images || !masks) {
        ts_error(TINYSAM_E_ARG, "eval: --model, --images and --masks are required");
        return ts_cli_fail();
    }
    struct stat st;
    if (stat(masks, &st) || !S_ISDIR(st.st_mode)) {
        ts_error(TINYSAM_E_IO, "--masks: '%s' is not a directory", masks);
        return ts_cli_fail();
    }
    ts_shard shard;
    if (ts_shard_resolve(shard_arg, shard_count, NULL, &shard)) return ts_cli_fail();
    char out_path[4096];
    if (out_arg && ts_shard_expand(out_arg, &shard, out_path, sizeof out_path))
        return ts_cli_fail();
    if (threads) tinysam_set_num_threads(threads);
    ts_json *boxes = NULL;
    if (boxes_file) {
        if (ts_json_load(boxes_file, &boxes)) return ts_cli_fail();
        if (boxes->type != TS_JSON_ARRAY && boxes->type != TS_JSON_OBJECT) {
            ts_json_free(boxes);
            ts_error(TINYSAM_E_FORMAT, "--boxes: %s is neither a list of detections nor an "
                                       "object of box lists", boxes_file);
            return ts_cli_fail();
        }
    }
    char **names = NULL;
    int n_names = 0;
    if (ts_dataset_list_images(images, &names, &n_names)) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tinysam_last_error());
        ts_error(TINYSAM_E_IO, "--images: %s", msg);
        ts_json_free(boxes);
        return ts_cli_fail();
    }
    if (shard.found)
        fprintf(stderr, "eval: shard %d/%d (%s)\n", shard.index, shard.count, shard.how);
    tinysam_model *m = NULL;
    int rc = tinysam_model_load(model, &m);
    eval_totals tot = {0};
    int n_done = 0;
    char *img_path = NULL, *gt_path = NULL;
    size_t cap = strlen(images) + strlen(masks) + 512;
    if (!rc && (!(img_path = malloc(cap)) || !(gt_path = malloc(cap))))
        rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
    /* the report is kept in memory so that a failure leaves stdout empty */
    char *rep = NULL;
    size_t rep_len = 0;
    FILE *out = rc ? NULL : open_memstream(&rep, &rep_len);
    if (!rc && !out) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
    if (!rc) fprintf(out, "{\n  \"images\": [\n");
    for (int i = 0; !rc && i < n_names; i++) {
        size_t len = strlen(names[i]);
        const char *dot = strrchr(names[i], '.');
        if (len > 400 || !ts_shard_owns(&shard, i)) continue;
        snprintf(img_path, cap, "%s/%s", images, names[i]);
        snprintf(gt_path, cap, "%s/%.*s.json", masks, (int)(dot - names[i]), names[i]);
        if (stat(gt_path, &st)) continue; /* no ground truth for this image */
        fprintf(stderr, "eval: [%d/%d] %s\n", i + 1, n_names, names[i]);
        if (n_done) fprintf(out, ",\n");
        rc = eval_image(m, img_path, gt_path, names[i], boxes, boxes_file, &tot, out);
        n_done++;
    }
    /* a shard may hold no image with ground truth; a whole run may not */
    if (!rc && !n_done && !shard.found)
        rc = ts_error(TINYSAM_E_ARG, "eval: no image in '%s' has a ground-truth file in '%s'",
                      images, masks);
    if (!rc) {
        totals_write(out, n_done, &tot, boxes != NULL);
        if (shard.found)
            fprintf(out, ",\n  \"shard\": {\"index\": %d, \"count\": %d, \"images_in_folder\": %d}",
                    shard.index, shard.count, n_names);
        fprintf(out, "\n}\n");
        if (fflush(out)) rc = ts_error(TINYSAM_E_IO, "eval: cannot write the report");
        else if (out_arg) rc = ts_write_file_atomic(out_path, rep, rep_len);
        else if (fwrite(rep, 1, rep_len, stdout) != rep_len || fflush(stdout))
            rc = ts_error(TINYSAM_E_IO, "eval: cannot write the report");
        totals_stderr("eval", n_done, &tot, boxes != NULL);
    }
    if (out) fclose(out);
    free(rep);
    free(img_path);
    free(gt_path);
    ts_dataset_free_list(names, n_names);
    ts_json_free(boxes);
    tinysam_model_free(m);
    return rc ? ts_cli_fail() : 0;
}
