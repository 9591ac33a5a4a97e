/* generator.c - segment-everything: SAM's automatic mask generator (grid, with crops) and
 * TinySAM's hierarchical generator, over any provider (spec TINYSAM.md sections 6.1, 6.2).
 * Each candidate mask is summarised by spans along its boundaries (mask_post.c), never
 * up-sampled to full resolution as a whole; kept masks are RLE. */
#include "core.h"
#include "everything/amg.h"
#include "everything/mask_post.h"
#include "everything/provider.h"
#include "model/transforms.h"
#include "threads.h"
#include "tinysam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MAX_POINTS_PER_SIDE 1024
#define MAX_POINTS_PER_BATCH 1024
#define MAX_CROP_LAYERS 4

void tinysam_everything_defaults(tinysam_everything_options *o) {
    memset(o, 0, sizeof *o);
    o->mode = TINYSAM_EVERYTHING_HIERARCHICAL;
    o->points_per_side = 32;
    o->points_per_batch = 64;
    o->pred_iou_thresh = 0.88f;
    o->stability_score_thresh = 0.95f;
    o->stability_score_offset = 1.0f;
    o->high_score_thresh = 8.5f;
    o->box_nms_thresh = 0.7f;
    o->crop_n_layers = 0;
    o->crop_nms_thresh = 0.7f;
    o->crop_overlap_ratio = (float)(512.0 / 1500.0);
    o->crop_n_points_downscale_factor = 1;
    o->min_mask_region_area = 0;
}

tinysam_status tinysam_everything_check(const tinysam_everything_options *o) {
    if (o->mode != TINYSAM_EVERYTHING_HIERARCHICAL && o->mode != TINYSAM_EVERYTHING_GRID)
        return ts_error(TINYSAM_E_ARG, "mode must be hierarchical or grid");
    if (o->points_per_side < 1 || o->points_per_side > MAX_POINTS_PER_SIDE)
        return ts_error(TINYSAM_E_ARG, "points_per_side must be in [1, %d]", MAX_POINTS_PER_SIDE);
    if (o->mode == TINYSAM_EVERYTHING_HIERARCHICAL && o->points_per_side < 4)
        return ts_error(TINYSAM_E_ARG, "hierarchical mode needs points_per_side >= 4");
    if (o->points_per_batch < 1 || o->points_per_batch > MAX_POINTS_PER_BATCH)
        return ts_error(TINYSAM_E_ARG, "points_per_batch must be in [1, %d]", MAX_POINTS_PER_BATCH);
    struct { const char *name; float v, lo, hi; } r[] = {
        {"pred_iou_thresh", o->pred_iou_thresh, -10.0f, 10.0f},
        {"stability_score_thresh", o->stability_score_thresh, 0.0f, 1.0f},
        {"stability_score_offset", o->stability_score_offset, 0.0f, 1000.0f},
        {"high_score_thresh", o->high_score_thresh, -1000.0f, 1000.0f},
        {"box_nms_thresh", o->box_nms_thresh, 0.0f, 1.0f},
        {"crop_nms_thresh", o->crop_nms_thresh, 0.0f, 1.0f},
        {"crop_overlap_ratio", o->crop_overlap_ratio, 0.0f, 0.99f},
    };
    for (size_t i = 0; i < sizeof r / sizeof r[0]; i++)
        if (!(r[i].v >= r[i].lo && r[i].v <= r[i].hi))
            return ts_error(TINYSAM_E_ARG, "%s must be in [%g, %g]", r[i].name, (double)r[i].lo,
                            (double)r[i].hi);
    if (o->crop_n_layers < 0 || o->crop_n_layers > MAX_CROP_LAYERS)
        return ts_error(TINYSAM_E_ARG, "crop_n_layers must be in [0, %d]", MAX_CROP_LAYERS);
    if (o->crop_n_points_downscale_factor < 1 || o->crop_n_points_downscale_factor > 64)
        return ts_error(TINYSAM_E_ARG, "crop_n_points_downscale_factor must be in [1, 64]");
    if (o->min_mask_region_area < 0)
        return ts_error(TINYSAM_E_ARG, "min_mask_region_area must be >= 0");
    return 0;
}

/* ------------------------------------------------------------------ record lists */

typedef struct {
    tinysam_mask_record *r;
    float (*box)[4]; /* inclusive xyxy, full-image frame, for NMS */
    int n, cap;
} rec_list;

static int rec_push(rec_list *l, const tinysam_mask_record *r, const int box[4]) {
    if (l->n == l->cap) {
        int nc = l->cap ? l->cap * 2 : 64;
        tinysam_mask_record *nr = realloc(l->r, sizeof *nr * (size_t)nc);
        if (!nr) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        l->r = nr;
        float (*nb)[4] = realloc(l->box, sizeof *nb * (size_t)nc);
        if (!nb) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        l->box = nb;
        l->cap = nc;
    }
    l->r[l->n] = *r;
    for (int k = 0; k < 4; k++) l->box[l->n][k] = (float)box[k];
    l->n++;
    return 0;
}

static void rec_list_free(rec_list *l) {
    for (int i = 0; i < l->n; i++) free(l->r[i].counts);
    free(l->r);
    free(l->box);
    memset(l, 0, sizeof *l);
}

/* Keeps the records at keep[0..nk) in that order; frees the others. */
static int rec_select(rec_list *l, const int *keep, int nk) {
    rec_list out = {0};
    uint8_t *used = calloc((size_t)l->n + 1, 1);
    if (!used) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    for (int i = 0; i < nk; i++) {
        int b[4] = {(int)l->box[keep[i]][0], (int)l->box[keep[i]][1], (int)l->box[keep[i]][2],
                    (int)l->box[keep[i]][3]};
        if (rec_push(&out, &l->r[keep[i]], b)) {
            free(used);
            free(out.r);
            free(out.box);
            return TINYSAM_E_NOMEM;
        }
        used[keep[i]] = 1;
    }
    for (int i = 0; i < l->n; i++)
        if (!used[i]) free(l->r[i].counts);
    free(used);
    free(l->r);
    free(l->box);
    *l = out;
    return 0;
}

static int rec_nms(rec_list *l, const float *scores, double thresh) {
    if (l->n == 0) return 0;
    int *keep = malloc(sizeof(int) * (size_t)l->n);
    if (!keep) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    int nk = ts_nms(&l->box[0][0], scores, l->n, thresh, keep);
    int rc = nk < 0 ? ts_error(TINYSAM_E_NOMEM, "out of memory") : rec_select(l, keep, nk);
    free(keep);
    return rc;
}

/* ------------------------------------------------------------------ one region */

typedef struct {
    const tinysam_everything_options *o;
    ts_provider *prov;
    int W, H;                 /* full image */
    int x0, y0, rw, rh;       /* region */
    int newh, neww;           /* region's resized size */
    int need_high;
    /* batch */
    int n;                    /* points in the batch */
    const double *pts;        /* region-frame image coordinates, n x 2 */
    float *low_res, *iou;     /* n x 3 x 65536, n x 3 */
    /* per mask results (3n) */
    tinysam_mask_record *res;
    int (*res_box)[4];
    int *res_ok;              /* 1 kept, 0 filtered, <0 error */
    /* per thread scratch */
    int n_threads;
    float **logits;
    float **tmp;
    uint8_t **bin;
    uint8_t **cover;          /* per-thread coverage (hierarchical round 1) */
    /* spans path (the default; the fields above serve the dense reference) */
    int dense;
    ts_mask_geom geom;
    ts_mask_scratch *scratch;
    const int *cells;         /* hierarchical round 1: the pixels whose cover is read */
    int n_cells;
    uint8_t **hits;           /* per thread: cells marked high-confidence */
} region_ctx;

/* The spans path: the same filters and record as mask_task_dense, from the summary. */
static void mask_task_spans(region_ctx *c, int i, int tid, float iou) {
    const tinysam_everything_options *o = c->o;
    const float *low = c->low_res + (size_t)i * 65536;
    ts_mask_frame fr = {0.0f - o->stability_score_offset, 0.0f + o->stability_score_offset,
                        c->x0, c->y0, c->W, c->H, o->stability_score_thresh};
    ts_mask_summary sm = {0};
    if (ts_mask_summarize(&c->geom, low, &fr, &c->scratch[tid], &sm)) {
        ts_rle_free(&sm.rle);
        c->res_ok[i] = -1;
        return;
    }
    float stab = (float)sm.n_hi / (float)sm.n_lo;
    if (sm.rejected || (o->stability_score_thresh > 0.0f && !(stab >= o->stability_score_thresh))) {
        ts_rle_free(&sm.rle);
        return;
    }
    if (c->need_high) {
        uint8_t *h = c->hits[tid];
        for (int k = 0; k < c->n_cells; k++)
            if (!h[k])
                h[k] = ts_mask_pixel(&c->geom, low, c->cells[2 * k] - c->y0,
                                     c->cells[2 * k + 1] - c->x0) > o->high_score_thresh;
    }
    const int *box = sm.box;
    if (c->rw != c->W || c->rh != c->H) {
        int cb[4] = {c->x0, c->y0, c->x0 + c->rw, c->y0 + c->rh}, ib[4] = {0, 0, c->W, c->H};
        int ub[4] = {box[0] + c->x0, box[1] + c->y0, box[2] + c->x0, box[3] + c->y0};
        for (int k = 0; k < 4; k++)
            if (abs(ub[k] - cb[k]) <= 20 && !(abs(ub[k] - ib[k]) <= 20)) {
                ts_rle_free(&sm.rle);
                return;
            }
    }
    int pt = i / 3;
    tinysam_mask_record *r = &c->res[i];
    memset(r, 0, sizeof *r);
    r->height = c->H;
    r->width = c->W;
    r->counts = sm.rle.counts;
    r->n_counts = sm.rle.n;
    r->area = ts_rle_area(sm.rle.counts, sm.rle.n);
    r->predicted_iou = iou;
    r->stability_score = stab;
    r->point[0] = c->pts[2 * pt] + c->x0;
    r->point[1] = c->pts[2 * pt + 1] + c->y0;
    r->crop_box[0] = c->x0;
    r->crop_box[1] = c->y0;
    r->crop_box[2] = c->rw;
    r->crop_box[3] = c->rh;
    for (int k = 0; k < 4; k++) c->res_box[i][k] = box[k] + (k % 2 ? c->y0 : c->x0);
    c->res_ok[i] = 1;
}

static void mask_task(void *vctx, int i, int tid) {
    region_ctx *c = vctx;
    const tinysam_everything_options *o = c->o;
    int pt = i / 3;
    float iou = c->iou[i];
    c->res_ok[i] = 0;
    if (o->pred_iou_thresh > 0.0f && !(iou > o->pred_iou_thresh)) return;
    if (!c->dense) {
        mask_task_spans(c, i, tid, iou);
        return;
    }
    /* the dense reference (ts_everything_set_dense): every pixel up-sampled */
    float *lg = c->logits[tid];
    if (ts_postprocess_mask(c->low_res + (size_t)i * 65536, c->newh, c->neww, c->rh, c->rw, lg,
                            c->tmp[tid])) {
        c->res_ok[i] = -1;
        return;
    }
    size_t npx = (size_t)c->rw * c->rh;
    float hi = 0.0f + o->stability_score_offset, lo = 0.0f - o->stability_score_offset;
    long long inter = 0, uni = 0;
    uint8_t *b = c->bin[tid];
    for (size_t k = 0; k < npx; k++) {
        float v = lg[k];
        inter += v > hi;
        uni += v > lo;
        b[k] = v > 0.0f;
    }
    float stab = (float)inter / (float)uni;
    if (o->stability_score_thresh > 0.0f && !(stab >= o->stability_score_thresh)) return;
    if (c->need_high) {
        uint8_t *cv = c->cover[tid];
        for (size_t k = 0; k < npx; k++) cv[k] |= lg[k] > o->high_score_thresh;
    }
    int box[4];
    ts_mask_box(b, c->rw, c->rh, box);
    /* crop-edge filter (a no-op when the region is the whole image) */
    if (c->rw != c->W || c->rh != c->H) {
        int cb[4] = {c->x0, c->y0, c->x0 + c->rw, c->y0 + c->rh}, ib[4] = {0, 0, c->W, c->H};
        int ub[4] = {box[0] + c->x0, box[1] + c->y0, box[2] + c->x0, box[3] + c->y0};
        for (int k = 0; k < 4; k++)
            if (abs(ub[k] - cb[k]) <= 20 && !(abs(ub[k] - ib[k]) <= 20)) return;
    }
    ts_rle rle = {0};
    if (ts_rle_encode(b, c->rw, c->rh, c->x0, c->y0, c->W, c->H, &rle)) {
        ts_rle_free(&rle);
        c->res_ok[i] = -1;
        return;
    }
    tinysam_mask_record *r = &c->res[i];
    memset(r, 0, sizeof *r);
    r->height = c->H;
    r->width = c->W;
    r->counts = rle.counts;
    r->n_counts = rle.n;
    r->area = ts_rle_area(rle.counts, rle.n);
    r->predicted_iou = iou;
    r->stability_score = stab;
    r->point[0] = c->pts[2 * pt] + c->x0;
    r->point[1] = c->pts[2 * pt + 1] + c->y0;
    r->crop_box[0] = c->x0;
    r->crop_box[1] = c->y0;
    r->crop_box[2] = c->rw;
    r->crop_box[3] = c->rh;
    for (int k = 0; k < 4; k++) c->res_box[i][k] = box[k] + (k % 2 ? c->y0 : c->x0);
    c->res_ok[i] = 1;
}

typedef struct {
    double ms_encode, ms_decode;
    int pass;
} run_stats;

/* Runs the points (region-frame image coordinates, n x 2) through the provider in batches
 * and appends the masks that pass the filters to out, in data order. With need_high, ORs
 * the high-confidence pixels into cover (W x H). */
static int run_points(const tinysam_everything_options *o, ts_provider *prov, int W, int H,
                      const ts_crop_box *cb, const double *pts, int n, int need_high,
                      uint8_t *cover, const int *cells, int n_cells, rec_list *out,
                      run_stats *st, int done0, int total) {
    region_ctx c = {.o = o, .prov = prov, .W = W, .H = H, .x0 = cb->x0, .y0 = cb->y0,
                    .rw = cb->x1 - cb->x0, .rh = cb->y1 - cb->y0, .need_high = need_high,
                    .dense = ts_everything_dense(), .cells = cells, .n_cells = n_cells};
    ts_preprocess_shape(c.rh, c.rw, 1024, &c.newh, &c.neww);
    int bs = o->points_per_batch, rc = 0;
    c.n_threads = ts_num_threads();
    size_t npx = c.dense ? (size_t)c.rw * c.rh : 1; /* full-size buffers: dense only */
    long long tmpn = c.dense ? ts_postprocess_scratch_size(c.newh, c.neww, c.rh, c.rw) : 1;
    double *p1024 = malloc(sizeof(double) * 2 * (size_t)bs);
    c.low_res = malloc(sizeof(float) * 3 * 65536 * (size_t)bs);
    c.iou = malloc(sizeof(float) * 3 * (size_t)bs);
    c.res = calloc((size_t)bs * 3, sizeof *c.res);
    c.res_box = calloc((size_t)bs * 3, sizeof *c.res_box);
    c.res_ok = calloc((size_t)bs * 3, sizeof *c.res_ok);
    c.logits = calloc((size_t)c.n_threads, sizeof *c.logits);
    c.tmp = calloc((size_t)c.n_threads, sizeof *c.tmp);
    c.bin = calloc((size_t)c.n_threads, sizeof *c.bin);
    c.cover = calloc((size_t)c.n_threads, sizeof *c.cover);
    c.scratch = calloc((size_t)c.n_threads, sizeof *c.scratch);
    c.hits = calloc((size_t)c.n_threads, sizeof *c.hits);
    int ok = p1024 && c.low_res && c.iou && c.res && c.res_box && c.res_ok && c.logits && c.tmp &&
             c.bin && c.cover && c.scratch && c.hits;
    for (int t = 0; ok && t < c.n_threads; t++) {
        c.logits[t] = malloc(sizeof(float) * npx);
        c.tmp[t] = malloc(sizeof(float) * (size_t)(tmpn > 0 ? tmpn : 1));
        c.bin[t] = malloc(npx);
        if (need_high && c.dense) c.cover[t] = calloc(npx, 1);
        if (need_high && !c.dense) c.hits[t] = calloc((size_t)n_cells + 1, 1);
        ok = c.logits[t] && c.tmp[t] && c.bin[t] && (!need_high || c.cover[t] || c.hits[t]);
    }
    if (!ok) rc = ts_error(TINYSAM_E_NOMEM, "out of memory for everything-mode buffers");
    if (!rc && !c.dense) rc = ts_mask_geom_init(&c.geom, c.newh, c.neww, c.rh, c.rw);
    for (int s = 0; !rc && s < n; s += bs) {
        int m = TS_MIN(bs, n - s);
        for (int k = 0; k < m; k++) {
            p1024[2 * k] = ts_apply_coord(pts[2 * (s + k)], c.neww, c.rw);
            p1024[2 * k + 1] = ts_apply_coord(pts[2 * (s + k) + 1], c.newh, c.rh);
        }
        double t0 = ts_now_ms();
        if ((rc = prov->predict(prov, m, p1024, c.low_res, c.iou))) break;
        st->ms_decode += ts_now_ms() - t0;
        c.n = m;
        c.pts = pts + 2 * s;
        ts_parallel_for(3 * m, mask_task, &c);
        for (int i = 0; i < 3 * m; i++) {
            if (c.res_ok[i] < 0 && !rc) {
                rc = ts_error(TINYSAM_E_NOMEM, "out of memory in mask processing");
            } else if (c.res_ok[i] > 0) { /* the record's RLE moves into out, or is freed */
                if (!rc) rc = rec_push(out, &c.res[i], c.res_box[i]);
                if (rc) free(c.res[i].counts);
            }
        }
        if (o->progress) o->progress(o->progress_user, st->pass, done0 + s + m, total);
    }
    if (need_high && cover && !rc && !c.dense)
        for (int t = 0; t < c.n_threads; t++)
            for (int k = 0; k < n_cells; k++)
                if (c.hits[t][k])
                    cover[(size_t)(cells[2 * k]) * W + cells[2 * k + 1]] = 1;
    if (need_high && cover && !rc && c.dense)
        for (int t = 0; t < c.n_threads; t++)
            for (int y = 0; y < c.rh; y++)
                for (int x = 0; x < c.rw; x++)
                    cover[(size_t)(y + c.y0) * W + x + c.x0] |= c.cover[t][(size_t)y * c.rw + x];
    for (int t = 0; c.logits && t < c.n_threads; t++) {
        free(c.logits[t]);
        if (c.tmp) free(c.tmp[t]);
        if (c.bin) free(c.bin[t]);
        if (c.cover) free(c.cover[t]);
        if (c.hits) free(c.hits[t]);
        if (c.scratch) ts_mask_scratch_free(&c.scratch[t]);
    }
    free(c.hits);
    free(c.scratch);
    ts_mask_geom_free(&c.geom);
    free(c.logits);
    free(c.tmp);
    free(c.bin);
    free(c.cover);
    free(p1024);
    free(c.low_res);
    free(c.iou);
    free(c.res);
    free(c.res_box);
    free(c.res_ok);
    return rc;
}

/* ------------------------------------------------------------------ small regions */

static int small_regions(rec_list *l, int W, int H, int min_area, double thresh) {
    if (l->n == 0) return 0;
    int dense = ts_everything_dense();
    size_t npx = dense ? (size_t)W * H : 1;
    uint8_t *mask = malloc(npx);
    float *scores = malloc(sizeof(float) * (size_t)l->n);
    ts_rle *newr = calloc((size_t)l->n, sizeof *newr);
    int (*nbox)[4] = calloc((size_t)l->n, sizeof *nbox);
    int rc = mask && scores && newr && nbox ? 0 : ts_error(TINYSAM_E_NOMEM, "out of memory");
    for (int i = 0; !rc && i < l->n && !dense; i++) { /* on the masks' column runs */
        int ch;
        rc = ts_rle_remove_small_regions(l->r[i].counts, l->r[i].n_counts, W, H, min_area, &ch,
                                         nbox[i], &newr[i]);
        scores[i] = ch ? 0.0f : 1.0f;
        for (int k = 0; k < 4; k++) l->box[i][k] = (float)nbox[i][k];
    }
    for (int i = 0; !rc && i < l->n && dense; i++) { /* the reference: full-size masks */
        int ch1, ch2;
        if ((rc = ts_rle_decode(l->r[i].counts, l->r[i].n_counts, W, H, mask))) break;
        if ((rc = ts_remove_small_regions(mask, W, H, min_area, 0, &ch1))) break;
        if ((rc = ts_remove_small_regions(mask, W, H, min_area, 1, &ch2))) break;
        scores[i] = (ch1 || ch2) ? 0.0f : 1.0f;
        ts_mask_box(mask, W, H, nbox[i]);
        for (int k = 0; k < 4; k++) l->box[i][k] = (float)nbox[i][k];
        if (scores[i] == 0.0f) rc = ts_rle_encode(mask, W, H, 0, 0, W, H, &newr[i]);
    }
    if (!rc) {
        /* unchanged masks win the NMS; changed ones that survive take their new mask */
        for (int i = 0; i < l->n; i++)
            if (scores[i] == 0.0f) {
                free(l->r[i].counts);
                l->r[i].counts = newr[i].counts;
                l->r[i].n_counts = newr[i].n;
                l->r[i].area = ts_rle_area(newr[i].counts, newr[i].n);
                newr[i].counts = NULL;
            }
        rc = rec_nms(l, scores, thresh);
    }
    for (int i = 0; newr && i < l->n; i++) free(newr[i].counts);
    free(mask);
    free(scores);
    free(newr);
    free(nbox);
    return rc;
}

/* ------------------------------------------------------------------ generators */

static int finish(rec_list *all, const tinysam_everything_options *o, int W, int H,
                  tinysam_everything_result *out) {
    int rc = 0;
    if (o->min_mask_region_area > 0)
        rc = small_regions(all, W, H, o->min_mask_region_area,
                           (double)fmaxf(o->box_nms_thresh, o->crop_nms_thresh));
    if (rc) return rc;
    for (int i = 0; i < all->n; i++) {
        tinysam_mask_record *r = &all->r[i];
        const float *b = all->box[i];
        r->bbox[0] = (int)b[0];
        r->bbox[1] = (int)b[1];
        r->bbox[2] = (int)b[2] - (int)b[0];
        r->bbox[3] = (int)b[3] - (int)b[1];
    }
    out->n = all->n;
    out->records = all->r;
    free(all->box);
    memset(all, 0, sizeof *all);
    return 0;
}

static int generate_grid(const tinysam_everything_options *o, ts_provider *prov,
                         tinysam_everything_result *out, run_stats *st) {
    int W = prov->width, H = prov->height;
    int n_crops = ts_crop_box_count(o->crop_n_layers);
    ts_crop_box *crops = malloc(sizeof *crops * (size_t)n_crops);
    rec_list all = {0};
    int rc = crops ? 0 : ts_error(TINYSAM_E_NOMEM, "out of memory");
    if (!rc) n_crops = ts_crop_boxes(W, H, o->crop_n_layers, (double)o->crop_overlap_ratio, crops);
    int total = 0;
    for (int c = 0; !rc && c < n_crops; c++) {
        int np = (int)(o->points_per_side / pow(o->crop_n_points_downscale_factor, crops[c].layer));
        total += np * np;
    }
    int done = 0;
    st->pass = 1;
    for (int c = 0; !rc && c < n_crops; c++) {
        const ts_crop_box *cb = &crops[c];
        int np = (int)(o->points_per_side / pow(o->crop_n_points_downscale_factor, cb->layer));
        if (np < 1) continue;
        double *pts = malloc(sizeof(double) * 2 * (size_t)np * np);
        if (!pts) {
            rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
            break;
        }
        ts_point_grid(np, pts);
        int cw = cb->x1 - cb->x0, ch = cb->y1 - cb->y0;
        for (int k = 0; k < np * np; k++) {
            pts[2 * k] *= cw;
            pts[2 * k + 1] *= ch;
        }
        double t0 = ts_now_ms();
        rc = prov->begin_region(prov, cb->x0, cb->y0, cb->x1, cb->y1);
        st->ms_encode += ts_now_ms() - t0;
        rec_list crop = {0};
        if (!rc) rc = run_points(o, prov, W, H, cb, pts, np * np, 0, NULL, NULL, 0, &crop, st, done,
                                 total);
        done += np * np;
        free(pts);
        if (!rc) {
            float *sc = malloc(sizeof(float) * (size_t)(crop.n + 1));
            if (!sc) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
            for (int i = 0; !rc && i < crop.n; i++) sc[i] = crop.r[i].predicted_iou;
            if (!rc) rc = rec_nms(&crop, sc, (double)o->box_nms_thresh);
            free(sc);
        }
        for (int i = 0; !rc && i < crop.n; i++) {
            int b[4] = {(int)crop.box[i][0], (int)crop.box[i][1], (int)crop.box[i][2],
                        (int)crop.box[i][3]};
            rc = rec_push(&all, &crop.r[i], b);
            if (!rc) crop.r[i].counts = NULL;
        }
        rec_list_free(&crop);
    }
    out->n_passes = 1;
    out->points_per_pass[0] = total;
    out->points_total = total;
    if (!rc && n_crops > 1 && all.n) {
        float *sc = malloc(sizeof(float) * (size_t)all.n);
        if (!sc) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
        for (int i = 0; !rc && i < all.n; i++)
            sc[i] = 1.0f / (float)((long long)all.r[i].crop_box[2] * all.r[i].crop_box[3]);
        if (!rc) rc = rec_nms(&all, sc, (double)o->crop_nms_thresh);
        free(sc);
    }
    if (!rc) rc = finish(&all, o, W, H, out);
    rec_list_free(&all);
    free(crops);
    return rc;
}

static int generate_hierarchical(const tinysam_everything_options *o, ts_provider *prov,
                                 tinysam_everything_result *out, run_stats *st) {
    int W = prov->width, H = prov->height;
    ts_crop_box whole = {0, 0, W, H, 0};
    int n1 = o->points_per_side / 4;
    double *g1 = malloc(sizeof(double) * 2 * (size_t)n1 * n1);
    double *p1 = malloc(sizeof(double) * 2 * (size_t)n1 * n1);
    double *p2 = malloc(sizeof(double) * 2 * 16 * (size_t)n1 * n1);
    uint8_t *cover = calloc((size_t)W * H, 1); /* only the cells are written (spans path) */
    int *cells = malloc(sizeof(int) * 2 * 16 * (size_t)n1 * n1), n_cells = 0;
    rec_list r1 = {0}, r2 = {0};
    int rc = g1 && p1 && p2 && cover && cells ? 0 : ts_error(TINYSAM_E_NOMEM, "out of memory");
    if (!rc) {
        ts_point_grid(n1, g1);
        n_cells = ts_hierarchical_cells(g1, n1, W, H, o->points_per_side, cells);
        for (int k = 0; k < n1 * n1; k++) {
            p1[2 * k] = g1[2 * k] * W;
            p1[2 * k + 1] = g1[2 * k + 1] * H;
        }
        double t0 = ts_now_ms();
        rc = prov->begin_region(prov, 0, 0, W, H);
        st->ms_encode += ts_now_ms() - t0;
    }
    st->pass = 1;
    if (!rc)
        rc = run_points(o, prov, W, H, &whole, p1, n1 * n1, 1, cover, cells, n_cells, &r1, st, 0,
                        n1 * n1);
    int n2 = 0;
    if (!rc) {
        n2 = ts_hierarchical_points(g1, n1, W, H, o->points_per_side, cover, p2);
    }
    st->pass = 2;
    if (!rc && n2 > 0) rc = run_points(o, prov, W, H, &whole, p2, n2, 0, NULL, NULL, 0, &r2, st, 0, n2);
    out->n_passes = 2;
    out->points_per_pass[0] = n1 * n1;
    out->points_per_pass[1] = n2;
    out->points_total = n1 * n1 + n2;
    /* round-2 records first, then round 1; one NMS over both */
    for (int i = 0; !rc && i < r1.n; i++) {
        int b[4] = {(int)r1.box[i][0], (int)r1.box[i][1], (int)r1.box[i][2], (int)r1.box[i][3]};
        rc = rec_push(&r2, &r1.r[i], b);
        if (!rc) r1.r[i].counts = NULL;
    }
    if (!rc && r2.n) {
        float *sc = malloc(sizeof(float) * (size_t)r2.n);
        if (!sc) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
        for (int i = 0; !rc && i < r2.n; i++) sc[i] = r2.r[i].predicted_iou;
        if (!rc) rc = rec_nms(&r2, sc, (double)o->box_nms_thresh);
        free(sc);
    }
    if (!rc) rc = finish(&r2, o, W, H, out);
    rec_list_free(&r1);
    rec_list_free(&r2);
    free(g1);
    free(p1);
    free(p2);
    free(cover);
    free(cells);
    return rc;
}

int ts_everything_run(ts_provider *prov, const tinysam_everything_options *o,
                      tinysam_everything_result *out) {
    memset(out, 0, sizeof *out);
    int rc = tinysam_everything_check(o);
    if (rc) return rc;
    run_stats st = {0};
    double t0 = ts_now_ms();
    rc = o->mode == TINYSAM_EVERYTHING_GRID ? generate_grid(o, prov, out, &st)
                                            : generate_hierarchical(o, prov, out, &st);
    out->ms_encode = st.ms_encode;
    out->ms_decode = st.ms_decode;
    out->ms_total = ts_now_ms() - t0;
    if (rc) tinysam_everything_free(out);
    return rc;
}

void tinysam_everything_free(tinysam_everything_result *r) {
    if (!r) return;
    for (int i = 0; i < r->n; i++) free(r->records[i].counts);
    free(r->records);
    r->records = NULL;
    r->n = 0;
}

tinysam_status tinysam_everything_oracle(const char *scene_json,
                                         const tinysam_everything_options *o,
                                         tinysam_everything_result *out) {
    ts_provider *p;
    memset(out, 0, sizeof *out);
    int rc = ts_oracle_provider_create(scene_json, &p);
    if (rc) return rc;
    rc = ts_everything_run(p, o, out);
    p->destroy(p);
    return rc;
}
