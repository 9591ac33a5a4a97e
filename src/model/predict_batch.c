/* predict_batch.c - many prompt sets against one embedding
 * (SamPredictor.predict_torch's batch): the decoder runs over chunks of sets at
 * once, then every returned mask is brought to the original size in bands of
 * rows over the pool, as tinysam_predict does for one. */
#include "core.h"
#include "model/sam.h"
#include "model/sam_decoder.h"
#include "model/transforms.h"
#include "threads.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Sets per decoder call: each call recomputes the image-side projections the
 * sets share, and each set holds 1 MB of low-res logits until its masks are
 * made. */
#define BATCH_CHUNK 32
#define PP_BANDS    8

/* The same float32 steps as tinysam_predict's to_model. */
static float to_model(double v, int new_len, int orig_len) {
    float f = (float)ts_apply_coord(v, new_len, orig_len);
    return (f + 0.5f) / 1024.0f;
}

typedef struct {
    const tinysam_embedding *e;
    tinysam_prediction *out;
    int n_sets, per_set, best_only;
    float *scratch; /* per pool thread: stride floats (post-processing scratch + a band) */
    size_t stride;
    atomic_int rc;
} pp_job;

/* Task (set, mask, band): rows of one mask at the original size. */
static void pp_task(void *ctx, int t, int tid) {
    pp_job *j = ctx;
    int b = t % PP_BANDS, km = (t / PP_BANDS) % j->per_set, i = t / PP_BANDS / j->per_set;
    tinysam_prediction *o = &j->out[i];
    int W = o->width, H = o->height, src = j->best_only ? o->best : km;
    int y0 = (int)((long long)H * b / PP_BANDS), y1 = (int)((long long)H * (b + 1) / PP_BANDS);
    if (y0 == y1) return;
    size_t plane = (size_t)W * H;
    long long nscratch = ts_postprocess_scratch_size(j->e->input_h, j->e->input_w, H, W);
    float *tmp = j->scratch + j->stride * (size_t)tid; /* no allocation per band */
    size_t first = (size_t)km * plane + (size_t)y0 * W, n = (size_t)(y1 - y0) * W;
    float *dst = o->logits ? o->logits + first : tmp + nscratch;
    int rc = ts_postprocess_mask_rows(o->low_res + (size_t)src * 65536, j->e->input_h,
                                      j->e->input_w, H, W, dst, y0, y1, tmp);
    if (rc)
        atomic_store(&j->rc, rc);
    else if (o->masks)
        for (size_t q = 0; q < n; q++)
            o->masks[first + q] = dst[q] > 0.0f;
}

/* Decodes sets [i0, i1) into out[i0..i1). */
/* lr4 (BATCH_CHUNK x 4 x 65536) and pp_scratch (ts_num_threads() x pp_stride) are the
 * call's, reused by every chunk. */
static int decode_chunk(tinysam_model *m, const tinysam_embedding *e, int i0, int i1,
                        const tinysam_prompt *p, int flags, tinysam_prediction *out, float *lr4,
                        float *pp_scratch, size_t pp_stride) {
    int n = i1 - i0, W = e->orig_w, H = e->orig_h, rc = 0, total_pts = 0;
    for (int i = i0; i < i1; i++)
        total_pts += p[i].n_points;
    ts_prompt_set *sets = ts_calloc((size_t)n, sizeof *sets);
    float *coords = ts_malloc(sizeof(float) * 2 * (size_t)(total_pts + 1));
    float *iou4 = ts_malloc(sizeof(float) * 4 * (size_t)n);
    if (!sets || !coords || !iou4) {
        rc = ts_error(TINYSAM_E_NOMEM, "out of memory for %d prompt sets", n);
        goto done;
    }
    float *c = coords;
    for (int i = 0; i < n; i++) {
        const tinysam_prompt *q = &p[i0 + i];
        for (int k = 0; k < q->n_points; k++) {
            c[2 * k] = to_model(q->points[2 * k], e->input_w, W);
            c[2 * k + 1] = to_model(q->points[2 * k + 1], e->input_h, H);
        }
        sets[i] = (ts_prompt_set){.n_points = q->n_points,
                                  .coords = c,
                                  .labels = q->labels,
                                  .has_box = q->has_box,
                                  .mask_input = q->mask_input};
        if (q->has_box)
            for (int k = 0; k < 4; k++)
                sets[i].box[k] =
                    to_model(q->box[k], k % 2 ? e->input_h : e->input_w, k % 2 ? H : W);
        c += 2 * q->n_points;
    }
    if ((rc = ts_sam_decode(m->prompt_encoder, m->mask_decoder, e->data, n, sets, lr4, iou4)))
        goto done;
    int first = flags & TINYSAM_PREDICT_SINGLE ? 0 : 1, nm = flags & TINYSAM_PREDICT_SINGLE ? 1 : 3;
    int per_set = flags & TINYSAM_PREDICT_BEST ? 1 : nm;
    size_t plane = (size_t)W * H;
    for (int i = 0; i < n && !rc; i++) {
        tinysam_prediction *o = &out[i0 + i];
        o->n_masks = nm;
        o->width = W;
        o->height = H;
        o->low_res = ts_malloc(sizeof(float) * (size_t)nm * 65536);
        if (flags & TINYSAM_PREDICT_LOGITS) o->logits = ts_malloc(sizeof(float) * plane * per_set);
        if (flags & TINYSAM_PREDICT_MASKS) o->masks = ts_malloc(plane * (size_t)per_set);
        if (!o->low_res || ((flags & TINYSAM_PREDICT_LOGITS) && !o->logits) ||
            ((flags & TINYSAM_PREDICT_MASKS) && !o->masks)) {
            rc = ts_error(TINYSAM_E_NOMEM, "out of memory for %dx%d masks", W, H);
            break;
        }
        memcpy(o->low_res, lr4 + ((size_t)i * 4 + first) * 65536,
               sizeof(float) * (size_t)nm * 65536);
        for (int k = 0; k < nm; k++) {
            o->iou[k] = iou4[4 * i + first + k];
            if (o->iou[k] > o->iou[o->best]) o->best = k;
        }
    }
    if (!rc && (flags & (TINYSAM_PREDICT_MASKS | TINYSAM_PREDICT_LOGITS))) {
        pp_job pj = {.e = e,
                     .out = out + i0,
                     .n_sets = n,
                     .per_set = per_set,
                     .best_only = (flags & TINYSAM_PREDICT_BEST) != 0,
                     .scratch = pp_scratch,
                     .stride = pp_stride};
        atomic_init(&pj.rc, 0);
        ts_parallel_for(n * per_set * PP_BANDS, pp_task, &pj);
        if ((rc = atomic_load(&pj.rc))) rc = ts_error(rc, "out of memory for %dx%d masks", W, H);
    }
done:
    free(sets);
    free(coords);
    free(iou4);
    return rc;
}

tinysam_status tinysam_predict_batch(tinysam_model *m, const tinysam_embedding *e, int n,
                                     const tinysam_prompt *p, int flags, tinysam_prediction *out) {
    if (n < 0 || (n && (!p || !out)))
        return ts_error(TINYSAM_E_ARG, "tinysam_predict_batch: bad arguments");
    if (n) memset(out, 0, sizeof *out * (size_t)n);
    if (!m || !e || !e->data)
        return ts_error(TINYSAM_E_ARG, "tinysam_predict_batch: NULL argument");
    if (!m->prompt_encoder || !m->mask_decoder)
        return ts_error(TINYSAM_E_ARG, "tinysam_predict_batch: the model has no mask decoder");
    for (int i = 0; i < n; i++) {
        int rc = ts_check_prompt(e, &p[i]);
        if (rc) return ts_error_prefix(rc, "prompt set %d", i);
    }
    if (!n) return 0;
    int rc = 0;
    /* post-processing scratch per pool thread: the taps and rows, plus one band of float
     * logits when only masks are asked for */
    int H = e->orig_h, W = e->orig_w, threads = ts_num_threads();
    size_t band = ((size_t)H + PP_BANDS - 1) / PP_BANDS + 1;
    size_t stride = (size_t)ts_postprocess_scratch_size(e->input_h, e->input_w, H, W) +
                    band * (size_t)W;
    stride = (stride + 15) / 16 * 16;
    float *lr4 = ts_malloc(sizeof(float) * 4 * 65536 * (size_t)TS_MIN(n, BATCH_CHUNK));
    float *pp = ts_malloc(sizeof(float) * stride * (size_t)threads);
    if (!lr4 || !pp)
        rc = ts_error(TINYSAM_E_NOMEM, "out of memory for %d prompt sets", n);
    for (int i0 = 0; i0 < n && !rc; i0 += BATCH_CHUNK)
        rc = decode_chunk(m, e, i0, TS_MIN(n, i0 + BATCH_CHUNK), p, flags, out, lr4, pp, stride);
    free(lr4);
    free(pp);
    if (rc)
        for (int i = 0; i < n; i++)
            tinysam_prediction_free(&out[i]);
    return rc;
}
