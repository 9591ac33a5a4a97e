/* provider.h - where everything mode gets its masks: "point -> 3 low-res logit maps + 3 IoU
 * scores" for one region (the whole image, or a crop box) at a time. The network and the
 * scene oracle (spec ORACLE.md) both implement it; everything after is shared. */
#ifndef TS_PROVIDER_H
#define TS_PROVIDER_H

#include "tinysam.h"

typedef struct ts_provider ts_provider;
struct ts_provider {
    /* Prepares the region (x0, y0, x1, y1) in full-image pixels (e.g. encodes the crop). */
    int (*begin_region)(ts_provider *p, int x0, int y0, int x1, int y1);
    /* n points in the region's 1024 input frame (doubles, before the +0.5 shift) ->
     * low_res n x 3 x 256 x 256 logits and iou n x 3 (TinySAM's mask tokens 1..3). */
    int (*predict)(ts_provider *p, int n, const double *pts, float *low_res, float *iou);
    void (*destroy)(ts_provider *p);
    int width, height; /* full image size */
};

/* The scene oracle from a scene.json file. */
int ts_oracle_provider_create(const char *scene_path, ts_provider **out);

/* Runs the generator the options select over a provider (generator.c). */
int ts_everything_run(ts_provider *prov, const tinysam_everything_options *o,
                      tinysam_everything_result *out);

#endif
