/* predictor.c - SamPredictor.predict for one prompt set (spec TINYSAM.md 3.5, 5.6): prompt
 * coordinates into the model frame, the decoder, and masks at the original size. */
#include "core.h"
#include "model/sam.h"
#include "model/sam_decoder.h"
#include "model/transforms.h"
#include "quant/sim_model.h"

#include "threads.h"

#include <math.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* apply_coords in double, then float32; the prompt encoder's +0.5 and /1024 in float32. */
static float to_model(double v, int new_len, int orig_len) {
    float f = (float)ts_apply_coord(v, new_len, orig_len);
    return (f + 0.5f) / 1024.0f;
}

/* Up-sampling of the returned masks: task k * PP_BANDS + b computes rows band b of mask k
 * into the logits (when asked for) and the 0/1 mask (when asked for). */
#define PP_BANDS 8
typedef struct {
    const tinysam_embedding *e;
    const float *low_res;
    float *logits;
    uint8_t *masks;
    int W, H;
    atomic_int rc;
} pp_job;

static void pp_task(void *ctx, int t, int tid) {
    (void)tid;
    pp_job *j = ctx;
    int k = t / PP_BANDS, b = t % PP_BANDS, W = j->W, H = j->H;
    int y0 = (int)((long long)H * b / PP_BANDS), y1 = (int)((long long)H * (b + 1) / PP_BANDS);
    if (y0 == y1) return;
    size_t plane = (size_t)W * H;
    const tinysam_embedding *e = j->e;
    long long nscratch = ts_postprocess_scratch_size(e->input_h, e->input_w, H, W);
    /* without logits to return, the band's logits live in the scratch block */
    size_t band = j->logits ? 0 : (size_t)(y1 - y0) * W;
    float *tmp = ts_malloc(sizeof(float) * ((size_t)nscratch + band));
    if (!tmp) {
        atomic_store(&j->rc, TINYSAM_E_NOMEM);
        return;
    }
    size_t first = (size_t)k * plane + (size_t)y0 * W, n = (size_t)(y1 - y0) * W;
    float *dst = j->logits ? j->logits + first : tmp + nscratch;
    int rc = ts_postprocess_mask_rows(j->low_res + (size_t)k * 65536, e->input_h, e->input_w, H,
                                      W, dst, y0, y1, tmp);
    if (rc) atomic_store(&j->rc, rc);
    else if (j->masks)
        for (size_t i = 0; i < n; i++) j->masks[first + i] = dst[i] > 0.0f;
    free(tmp);
}

int ts_check_prompt(const tinysam_embedding *e, const tinysam_prompt *p) {
    int W = e->orig_w, H = e->orig_h;
    if (p->n_points < 0 || p->n_points > TINYSAM_MAX_POINTS)
        return ts_error(TINYSAM_E_ARG, "%d points (at most %d)", p->n_points, TINYSAM_MAX_POINTS);
    if (p->n_points && (!p->points || !p->labels))
        return ts_error(TINYSAM_E_ARG, "points given without coordinates or labels");
    for (int i = 0; i < p->n_points; i++) {
        float x = p->points[2 * i], y = p->points[2 * i + 1];
        if (!isfinite(x) || !isfinite(y))
            return ts_error(TINYSAM_E_ARG, "point %d is not a finite number", i);
        if (x < 0 || y < 0 || x >= W || y >= H)
            return ts_error(TINYSAM_E_ARG, "point (%g, %g) is outside the %dx%d image", (double)x,
                            (double)y, W, H);
        if (p->labels[i] != 0 && p->labels[i] != 1)
            return ts_error(TINYSAM_E_ARG, "point %d: label %d is not 0 or 1", i, p->labels[i]);
    }
    if (p->has_box) {
        for (int k = 0; k < 4; k++)
            if (!isfinite(p->box[k])) return ts_error(TINYSAM_E_ARG, "box is not finite");
        if (p->box[2] < p->box[0] || p->box[3] < p->box[1])
            return ts_error(TINYSAM_E_ARG, "box has x1 < x0 or y1 < y0");
        if (p->box[0] < 0 || p->box[1] < 0 || p->box[2] > W || p->box[3] > H)
            return ts_error(TINYSAM_E_ARG, "box (%g, %g, %g, %g) is outside the %dx%d image",
                            (double)p->box[0], (double)p->box[1], (double)p->box[2],
                            (double)p->box[3], W, H);
    }
    if (p->mask_input)
        for (int i = 0; i < 65536; i++)
            if (!isfinite(p->mask_input[i]))
                return ts_error(TINYSAM_E_ARG, "mask input holds a non-finite value");
    if (!p->n_points && !p->has_box && !p->mask_input)
        return ts_error(TINYSAM_E_ARG, "empty prompt: give points, a box or a mask input");
    return 0;
}

int ts_embedding_prepare(tinysam_model *m, const tinysam_embedding *e) {
    if (!m || !e || !e->data || m->sim || !m->prompt_encoder || !m->mask_decoder) return 0;
    return ts_sam_decode_prepare(m->prompt_encoder, m->mask_decoder, e->data);
}

tinysam_status tinysam_predict(tinysam_model *m, const tinysam_embedding *e,
                               const tinysam_prompt *p, int flags, tinysam_prediction *out) {
    if (!out) return ts_error(TINYSAM_E_ARG, "tinysam_predict: NULL output");
    memset(out, 0, sizeof *out);
    if (!m || !e || !p || !e->data)
        return ts_error(TINYSAM_E_ARG, "tinysam_predict: NULL argument");
    if (!m->prompt_encoder || !m->mask_decoder)
        return ts_error(TINYSAM_E_ARG, "tinysam_predict: the model has no mask decoder");
    int rc = ts_check_prompt(e, p);
    if (rc) return rc;
    int n = p->n_points, W = e->orig_w, H = e->orig_h;
    float *coords = ts_malloc(sizeof(float) * 2 * (size_t)(n + 1));
    float *lr4 = ts_malloc(sizeof(float) * 4 * 65536);
    if (!coords || !lr4) {
        free(coords);
        free(lr4);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    for (int i = 0; i < n; i++) {
        coords[2 * i] = to_model(p->points[2 * i], e->input_w, W);
        coords[2 * i + 1] = to_model(p->points[2 * i + 1], e->input_h, H);
    }
    ts_prompt_set set = {.n_points = n, .coords = coords, .labels = p->labels,
                         .has_box = p->has_box, .mask_input = p->mask_input};
    if (p->has_box)
        for (int k = 0; k < 4; k++)
            set.box[k] = to_model(p->box[k], k % 2 ? e->input_h : e->input_w, k % 2 ? H : W);
    float iou4[4];
    rc = m->sim ? ts_simq_decode(m->sim, m->prompt_encoder, e->data, &set, lr4, iou4)
                : ts_sam_decode(m->prompt_encoder, m->mask_decoder, e->data, 1, &set, lr4, iou4);
    free(coords);
    if (rc) {
        free(lr4);
        return rc;
    }
    /* TinySAM returns mask tokens 1..3; SAM's multimask_output=False returns token 0 */
    int first = flags & TINYSAM_PREDICT_SINGLE ? 0 : 1, nm = flags & TINYSAM_PREDICT_SINGLE ? 1 : 3;
    out->n_masks = nm;
    out->width = W;
    out->height = H;
    out->low_res = ts_malloc(sizeof(float) * (size_t)nm * 65536);
    if (!out->low_res) {
        free(lr4);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    memcpy(out->low_res, lr4 + (size_t)first * 65536, sizeof(float) * (size_t)nm * 65536);
    free(lr4);
    for (int k = 0; k < nm; k++) {
        out->iou[k] = iou4[first + k];
        if (out->iou[k] > out->iou[out->best]) out->best = k;
    }
    if (flags & (TINYSAM_PREDICT_MASKS | TINYSAM_PREDICT_LOGITS)) {
        size_t plane = (size_t)W * H;
        float *lg = NULL;
        if (flags & TINYSAM_PREDICT_LOGITS) lg = ts_malloc(sizeof(float) * plane * nm);
        if (flags & TINYSAM_PREDICT_MASKS) out->masks = ts_malloc(plane * (size_t)nm);
        if (((flags & TINYSAM_PREDICT_LOGITS) && !lg) ||
            ((flags & TINYSAM_PREDICT_MASKS) && !out->masks))
            rc = TINYSAM_E_NOMEM;
        if (!rc) { /* every mask in bands of rows, spread over the pool */
            pp_job pj = {.e = e, .low_res = out->low_res,
                         .logits = flags & TINYSAM_PREDICT_LOGITS ? lg : NULL,
                         .masks = out->masks, .W = W, .H = H};
            atomic_init(&pj.rc, 0);
            ts_parallel_for(nm * PP_BANDS, pp_task, &pj);
            rc = atomic_load(&pj.rc);
        }
        if (flags & TINYSAM_PREDICT_LOGITS) out->logits = lg;
        else free(lg);
        if (rc) {
            tinysam_prediction_free(out);
            return ts_error(rc, "out of memory for %dx%d masks", W, H);
        }
    }
    return 0;
}

void tinysam_prediction_free(tinysam_prediction *p) {
    if (!p) return;
    free(p->low_res);
    free(p->masks);
    free(p->logits);
    p->low_res = NULL;
    p->masks = NULL;
    p->logits = NULL;
}
