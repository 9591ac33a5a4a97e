/* test_predict_batch.c - tinysam_predict_batch against tinysam_predict one set
 * at a time: the same IoUs, low-res logits and masks bit for bit, across a
 * chunk boundary, with boxes, points and both together, the best-mask-only
 * mode, and bad sets refused. The decoder keeps the image side of the last
 * embedding between calls: an embedding changed in place is not served from it. */
#include "core.h"
#include "model/sam.h"
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
        /* every set computes its values with the same operations whatever the sets beside
         * it: bit for bit */
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
                 !memcmp(b[i].low_res, s.low_res, sizeof(float) * 3 * 65536) &&
                 !memcmp(b[i].iou, s.iou, sizeof(float) * 3) &&
                 !memcmp(best[i].iou, s.iou, sizeof(float) * 3) &&
                 !memcmp(best[i].low_res, s.low_res, sizeof(float) * 3 * 65536) &&
                 !memcmp(b[i].masks, s.masks, 3 * plane) && px_best == 0;
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
    printf("  %d of %d sets match one-by-one predict bit for bit (%d with equal logits): "
           "logits within %.3g, at most %lld of %zu mask pixels differ\n",
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

/* The embedding changed in place (same pointer, one value) after a call: the next call
 * gives what a freshly loaded decoder gives, not the cached image side's answer. */
static void test_cached_image_side(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    tinysam_model *m = NULL, *m2 = NULL;
    tinysam_image img = {0};
    tinysam_embedding *e = NULL;
    REQUIRE(tinysam_model_load(fixture(MODEL), &m) == 0, "%s", tinysam_last_error());
    REQUIRE(tinysam_model_load(fixture(MODEL), &m2) == 0, "%s", tinysam_last_error());
    REQUIRE(tinysam_image_load(fixture("images/shapes.png"), 0, &img) == 0, "image");
    REQUIRE(tinysam_encode(m, &img, &e) == 0, "encode");
    tinysam_prompt pr = {.has_box = 1, .box = {100, 80, 380, 300}};
    tinysam_prediction a = {0}, b = {0}, c = {0};
    REQUIRE(tinysam_predict(m, e, &pr, 0, &a) == 0, "%s", tinysam_last_error());
    for (int k = 0; k < 64 * 64; k++) /* one channel of the embedding, in place */
        e->data[(size_t)77 * 4096 + k] += 0.5f;
    REQUIRE(tinysam_predict(m, e, &pr, 0, &b) == 0, "%s", tinysam_last_error());
    REQUIRE(tinysam_predict(m2, e, &pr, 0, &c) == 0, "%s", tinysam_last_error());
    CHECK(memcmp(a.low_res, b.low_res, sizeof(float) * 3 * 65536) != 0,
          "the changed embedding gave the old logits");
    CHECK(!memcmp(b.low_res, c.low_res, sizeof(float) * 3 * 65536) &&
              !memcmp(b.iou, c.iou, sizeof b.iou),
          "after an in-place change: not what a fresh decoder gives");
    tinysam_prediction_free(&a);
    tinysam_prediction_free(&b);
    tinysam_prediction_free(&c);
    tinysam_embedding_free(e);
    tinysam_image_free(&img);
    tinysam_model_free(m);
    tinysam_model_free(m2);
}

int main(void) {
    RUN(test_batch_equals_single);
    RUN(test_cached_image_side);
    return test_summary();
}
