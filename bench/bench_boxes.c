/* bench_boxes.c - many boxes per call (tinysam segment --boxes, SamPredictor.predict_torch):
 * 100 boxes on one image through tinysam_predict_batch against one-box tinysam_predict calls,
 * the embedding computed once (decoder side only, full-resolution masks included). The batch
 * returns each box's best mask (what a record holds), the one-box call its three (as tinysam
 * segment --box does); the batch with all three masks is shown too.
 *   bench_boxes [--runs N] [--threads T] [--json]
 * (picture1, 769x770, the random-weight vit_t fixture; T = 1 gives the work ratio, the least
 * disturbed by a busy machine) */
#include "bench_util.h"
#include "test.h"
#include "tinysam.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NBOX 100

int main(int argc, char **argv) {
    int runs = 5, json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            tinysam_set_num_threads(atoi(argv[++i]));
    }
    if (runs < 1) runs = 1;
    tinysam_model *m = NULL;
    tinysam_image img = {0};
    tinysam_embedding *e = NULL;
    if (tinysam_model_load(fixture("models/tinysam_vit_t_random.pth"), &m) ||
        tinysam_image_load(fixture("images/picture1.jpg"), 0, &img) ||
        tinysam_encode(m, &img, &e)) {
        fprintf(stderr, "bench_boxes: %s\n", tinysam_last_error());
        return 1;
    }
    tinysam_prompt pr[NBOX];
    uint32_t r = 1;
    for (int i = 0; i < NBOX; i++) {
        r = r * 1664525u + 1013904223u;
        float x0 = (float)((r >> 8) % 600), y0 = (float)((r >> 4) % 600);
        pr[i] =
            (tinysam_prompt){.has_box = 1, .box = {x0, y0, x0 + 40 + i % 120, y0 + 30 + i % 150}};
    }
    static tinysam_prediction out[NBOX];
    double *one = malloc(sizeof(double) * (size_t)runs * 10), *b1 = malloc(sizeof(double) * runs),
           *b3 = malloc(sizeof(double) * runs);
    int n_one = 0;
    for (int k = 0; k < runs; k++) {
        for (int j = 0; j < 10; j++) { /* one-box calls: 10 of the boxes, each timed */
            tinysam_prediction p = {0};
            double t0 = bench_now_s();
            tinysam_predict(m, e, &pr[j * 7], TINYSAM_PREDICT_MASKS, &p);
            one[n_one++] = bench_now_s() - t0;
            tinysam_prediction_free(&p);
        }
        double t0 = bench_now_s();
        if (tinysam_predict_batch(m, e, NBOX, pr, TINYSAM_PREDICT_MASKS | TINYSAM_PREDICT_BEST,
                                  out))
            return 1;
        b1[k] = (bench_now_s() - t0) / NBOX;
        for (int i = 0; i < NBOX; i++)
            tinysam_prediction_free(&out[i]);
        t0 = bench_now_s();
        if (tinysam_predict_batch(m, e, NBOX, pr, TINYSAM_PREDICT_MASKS, out)) return 1;
        b3[k] = (bench_now_s() - t0) / NBOX;
        if (k + 1 < runs)
            for (int i = 0; i < NBOX; i++)
                tinysam_prediction_free(&out[i]);
    }
    /* the records against 100 separate calls: best index and best mask */
    size_t plane = (size_t)img.width * img.height;
    int same_best = 0, same_all = 0;
    long long px = 0;
    for (int i = 0; i < NBOX; i++) {
        tinysam_prediction p = {0};
        tinysam_predict(m, e, &pr[i], TINYSAM_PREDICT_MASKS, &p);
        same_best += p.best == out[i].best;
        same_all += p.best == out[i].best && !memcmp(p.iou, out[i].iou, sizeof p.iou) &&
                    !memcmp(p.low_res, out[i].low_res, sizeof(float) * 3 * 65536);
        for (size_t q = 0; q < plane; q++)
            px += p.masks[(size_t)p.best * plane + q] !=
                  out[i].masks[(size_t)out[i].best * plane + q];
        tinysam_prediction_free(&p);
        tinysam_prediction_free(&out[i]);
    }
    double t_one = bench_median(one, n_one) * 1e3, t_b1 = bench_median(b1, runs) * 1e3,
           t_b3 = bench_median(b3, runs) * 1e3;
    printf("one-box call (3 masks at %dx%d)         %8.2f ms\n", img.width, img.height, t_one);
    printf("100 boxes in one call, best mask, per box %8.2f ms  (%.2fx the "
           "one-box call)\n",
           t_b1, t_b1 / t_one);
    printf("100 boxes in one call, 3 masks, per box   %8.2f ms  (%.2fx)\n", t_b3, t_b3 / t_one);
    printf("records vs 100 separate calls: best index equal %d/100, best-mask "
           "pixels differing %lld of %lld, IoUs and low-res logits bit-equal %d/100\n",
           same_best, px, (long long)plane * NBOX, same_all);
    if (json)
        printf("{\"one_box_ms\": %.3f, \"batch100_best_ms_per_box\": %.3f, "
               "\"batch100_3masks_ms_per_box\": %.3f, \"ratio_best\": %.3f, "
               "\"ratio_3masks\": %.3f, "
               "\"same_best\": %d, \"pixels_differing\": %lld, \"bit_equal\": %d, "
               "\"threads\": %d}\n",
               t_one, t_b1, t_b3, t_b1 / t_one, t_b3 / t_one, same_best, px, same_all,
               tinysam_get_num_threads());
    free(one);
    free(b1);
    free(b3);
    tinysam_embedding_free(e);
    tinysam_image_free(&img);
    tinysam_model_free(m);
    return 0;
}
