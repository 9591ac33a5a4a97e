/* provider_net.c - the network as an everything-mode provider: one image embedding per
 * region (the whole image: computed once, or given), prompt encoder + mask decoder per batch. */
#include "core.h"
#include "everything/provider.h"
#include "model/sam.h"
#include "tinysam.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    ts_provider base;
    tinysam_model *model;
    const tinysam_image *img;
    const tinysam_embedding *given; /* embedding of the whole image, or NULL */
    tinysam_embedding *own;         /* embedding this provider computed */
    const tinysam_embedding *cur;
    float *lr4, *iou4;              /* decoder outputs, all 4 tokens */
    int cap;
    ts_prompt_set *sets;
    float *coords;
    int labels_one;
} net_provider;

static int net_begin(ts_provider *p, int x0, int y0, int x1, int y1) {
    net_provider *n = (net_provider *)p;
    int whole = x0 == 0 && y0 == 0 && x1 == p->width && y1 == p->height;
    if (whole && n->given) {
        n->cur = n->given;
        return 0;
    }
    tinysam_embedding_free(n->own);
    n->own = NULL;
    tinysam_image crop = {.width = x1 - x0, .height = y1 - y0};
    if (whole) {
        crop = *n->img;
    } else {
        crop.rgb = ts_malloc((size_t)crop.width * crop.height * 3);
        if (!crop.rgb) return TINYSAM_E_NOMEM;
        for (int y = 0; y < crop.height; y++)
            memcpy(crop.rgb + (size_t)y * crop.width * 3,
                   n->img->rgb + ((size_t)(y + y0) * n->img->width + x0) * 3,
                   (size_t)crop.width * 3);
    }
    int rc = tinysam_encode(n->model, &crop, &n->own);
    if (!whole) free(crop.rgb);
    n->cur = n->own;
    return rc;
}

/* Decodes in chunks so that the all-4-token output buffer stays small (memory on big images);
 * a chunk still has enough prompt sets to keep every worker busy. */
#define NET_CHUNK 8

static int net_predict_chunk(ts_provider *p, int cnt, const double *pts, float *low_res,
                             float *iou);

static int net_predict(ts_provider *p, int cnt, const double *pts, float *low_res, float *iou) {
    for (int s = 0; s < cnt; s += NET_CHUNK) {
        int m = cnt - s < NET_CHUNK ? cnt - s : NET_CHUNK;
        int rc = net_predict_chunk(p, m, pts + 2 * s, low_res + (size_t)s * 3 * 65536, iou + 3 * s);
        if (rc) return rc;
    }
    return 0;
}

static int net_predict_chunk(ts_provider *p, int cnt, const double *pts, float *low_res,
                             float *iou) {
    net_provider *n = (net_provider *)p;
    if (cnt > n->cap) {
        free(n->lr4);
        free(n->iou4);
        free(n->sets);
        free(n->coords);
        n->lr4 = malloc(sizeof(float) * 4 * 65536 * (size_t)cnt);
        n->iou4 = malloc(sizeof(float) * 4 * (size_t)cnt);
        n->sets = calloc((size_t)cnt, sizeof *n->sets);
        n->coords = malloc(sizeof(float) * 2 * (size_t)cnt);
        n->cap = cnt;
        if (!n->lr4 || !n->iou4 || !n->sets || !n->coords) {
            n->cap = 0;
            return ts_error(TINYSAM_E_NOMEM, "out of memory");
        }
    }
    for (int k = 0; k < cnt; k++) {
        /* everything-mode precision: shift and normalise in double, round once (spec 5.2) */
        n->coords[2 * k] = (float)((pts[2 * k] + 0.5) / 1024.0);
        n->coords[2 * k + 1] = (float)((pts[2 * k + 1] + 0.5) / 1024.0);
        n->sets[k] = (ts_prompt_set){.n_points = 1, .coords = n->coords + 2 * k,
                                     .labels = &n->labels_one};
    }
    int rc = ts_sam_decode(n->model->prompt_encoder, n->model->mask_decoder, n->cur->data, cnt,
                           n->sets, n->lr4, n->iou4);
    if (rc) return rc;
    for (int k = 0; k < cnt; k++) { /* TinySAM returns mask tokens 1..3 */
        memcpy(low_res + (size_t)k * 3 * 65536, n->lr4 + ((size_t)k * 4 + 1) * 65536,
               sizeof(float) * 3 * 65536);
        for (int m = 0; m < 3; m++) iou[3 * k + m] = n->iou4[4 * k + 1 + m];
    }
    return 0;
}

static void net_destroy(ts_provider *p) {
    net_provider *n = (net_provider *)p;
    tinysam_embedding_free(n->own);
    free(n->lr4);
    free(n->iou4);
    free(n->sets);
    free(n->coords);
    free(n);
}

tinysam_status tinysam_everything(tinysam_model *m, const tinysam_image *img,
                                  const tinysam_embedding *emb,
                                  const tinysam_everything_options *o,
                                  tinysam_everything_result *out) {
    if (!m || !img || !o || !out)
        return ts_error(TINYSAM_E_ARG, "tinysam_everything: NULL argument");
    memset(out, 0, sizeof *out);
    if (!img->rgb || img->width < 1 || img->height < 1)
        return ts_error(TINYSAM_E_ARG, "tinysam_everything: empty image");
    if (emb && (emb->orig_w != img->width || emb->orig_h != img->height))
        return ts_error(TINYSAM_E_ARG, "tinysam_everything: embedding is of another image");
    net_provider *n = ts_calloc(1, sizeof *n);
    if (!n) return TINYSAM_E_NOMEM;
    n->base = (ts_provider){net_begin, net_predict, net_destroy, img->width, img->height};
    n->model = m;
    n->img = img;
    n->given = emb;
    n->labels_one = 1;
    int rc = ts_everything_run(&n->base, o, out);
    net_destroy(&n->base);
    return rc;
}
