/* test_predict_batch.c - tinysam_predict_batch against tinysam_predict one set
 * at a time: the same IoUs, low-res logits and masks bit for bit, across a
 * chunk boundary, with boxes, points and both together, the best-mask-only
 * mode, and bad sets refused. */
#include "core.h"
#include "test.h"
#include "tinysam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MODEL "models/tinysam_vit_t_random.pth"

static void test_batch_equals_single(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    tinysam_model *m = NULL;
    tinysam_image img = {0};
    tinysam_embedding *e = NULL;
    REQUIRE(tinysam_model_load(fixture(MODEL), &m) == 0, "%s", tinysam_last_error());
    REQUIRE(tinysam_image_load(fixture("images/shapes.png"), 0, &img) == 0, "image");
    REQUIRE(tinysam_encode(m, &img, &e) == 0, "encode");
    const int n = 34; /* > 32: two decoder chunks */
    tinysam_prompt *pr = calloc((size_t)n, sizeof *pr);
    tinysam_prediction *b = calloc((size_t)n, sizeof *b), *best = calloc((size_t)n, sizeof *best);
    float pts[2 * 2] = {200, 150, 420, 300};
    int labels[2] = {1, 0};
    REQUIRE(pr && b && best, "alloc");
    uint32_t r = 7;
    for (int i = 0; i < n; i++) {
        r = r * 1664525u + 1013904223u;
        float x0 = (float)(r >> 8) / (1 << 24) * 500, y0 = (float)((r >> 3) % 360);
        pr[i].has_box = i % 3 != 2;
        pr[i].box[0] = x0;
        pr[i].box[1] = y0;
        pr[i].box[2] = fminf(x0 + 20 + (float)(i * 5), 639);
        pr[i].box[3] = fminf(y0 + 10 + (float)(i * 4), 479);
        if (i % 3) { /* points too, or points alone */
            pr[i].n_points = 1 + i % 2;
            pr[i].points = pts;
            pr[i].labels = labels;
        }
    }
    REQUIRE(tinysam_predict_batch(m, e, n, pr, TINYSAM_PREDICT_MASKS, b) == 0, "batch: %s",
            tinysam_last_error());
    REQUIRE(
        tinysam_predict_batch(m, e, n, pr, TINYSAM_PREDICT_MASKS | TINYSAM_PREDICT_BEST, best) == 0,
        "batch best: %s", tinysam_last_error());
    size_t plane = (size_t)img.width * img.height;
    int same = 0, exact = 0;
    double worst_logit = 0;
    long long worst_px = 0;
    for (int i = 0; i < n; i++) {
        tinysam_prediction s = {0};
        REQUIRE(tinysam_predict(m, e, &pr[i], TINYSAM_PREDICT_MASKS, &s) == 0, "single");
        /* ts_sam_decode shares the first layer's image-side projections between the
         * sets of one call (a different summation order than a lone set's): logits
         * agree to ~1e-5, not bit for bit, so a pixel whose logit sits at 0 may
         * flip */
        double md = 0, mi = 0;
        long long px = 0, px_best = 0;
        for (int k = 0; k < 3 * 65536; k++)
            md = fmax(md, fabs(b[i].low_res[k] - s.low_res[k]));
        for (int k = 0; k < 3; k++)
            mi = fmax(mi, fabs((double)b[i].iou[k] - s.iou[k]));
        for (size_t k = 0; k < 3 * plane; k++)
            px += b[i].masks[k] != s.masks[k];
        for (size_t k = 0; k < plane; k++)
            px_best += best[i].masks[k] != s.masks[(size_t)s.best * plane + k];
        int ok = b[i].n_masks == s.n_masks && b[i].best == s.best && best[i].best == s.best &&
                 md <= 1e-4 && mi <= 1e-6 && px <= (long long)(3 * plane / 10000) &&
                 px_best <= (long long)(plane / 10000);
        CHECK(ok,
              "set %d: logits off by %.3g, IoU by %.3g, %lld mask pixels (best: "
              "%lld)",
              i, md, mi, px, px_best);
        worst_logit = fmax(worst_logit, md);
        worst_px = px > worst_px ? px : worst_px;
        exact += md == 0 && px == 0;
        same += ok;
        tinysam_prediction_free(&s);
        tinysam_prediction_free(&b[i]);
        tinysam_prediction_free(&best[i]);
    }
    printf("  %d of %d sets match one-by-one predict (%d bit for bit): logits "
           "within %.3g, at most "
           "%lld of %zu mask pixels differ\n",
           same, n, exact, worst_logit, worst_px, 3 * plane);
    /* a bad set anywhere refuses the whole batch, naming the set */
    pr[5].box[2] = 5000;
    pr[5].has_box = 1;
    CHECK(tinysam_predict_batch(m, e, n, pr, TINYSAM_PREDICT_MASKS, b) != 0 &&
              strstr(tinysam_last_error(), "prompt set 5") && !b[0].masks,
          "bad set accepted: %s", tinysam_last_error());
    CHECK(tinysam_predict_batch(m, e, 0, pr, TINYSAM_PREDICT_MASKS, b) == 0, "empty batch");
    free(pr);
    free(b);
    free(best);
    tinysam_embedding_free(e);
    tinysam_image_free(&img);
    tinysam_model_free(m);
}

int main(void) {
    RUN(test_batch_equals_single);
    return test_summary();
}
