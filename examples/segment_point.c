/* segment_point.c - the smallest complete tinysam program: one point, the best mask.
 *
 *   cc segment_point.c $(pkg-config --cflags --libs tinysam) -o segment_point
 *   ./segment_point tinysam_42.3.pth photo.jpg 380 300
 */
#include <stdio.h>
#include <stdlib.h>
#include <tinysam.h>

static int fail(const char *what) {
    fprintf(stderr, "segment_point: %s: %s\n", what, tinysam_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 3 && argc != 5) {
        fprintf(stderr, "usage: segment_point MODEL IMAGE [X Y]   (default: the centre)\n");
        return 2;
    }
    tinysam_model *model;
    if (tinysam_model_load(argv[1], &model) != TINYSAM_OK) return fail(argv[1]);
    tinysam_image img;
    if (tinysam_image_load(argv[2], 0, &img) != TINYSAM_OK) {
        tinysam_model_free(model);
        return fail(argv[2]);
    }
    tinysam_embedding *emb;
    if (tinysam_encode(model, &img, &emb) != TINYSAM_OK) { /* the expensive part, once */
        tinysam_image_free(&img);
        tinysam_model_free(model);
        return fail("encode");
    }
    float pt[2] = {img.width / 2.0f, img.height / 2.0f};
    if (argc == 5) pt[0] = strtof(argv[3], NULL), pt[1] = strtof(argv[4], NULL);
    int lab[1] = {1};
    tinysam_prompt p = {.n_points = 1, .points = pt, .labels = lab};
    tinysam_prediction pred;
    int rc = 0;
    if (tinysam_predict(model, emb, &p, TINYSAM_PREDICT_MASKS, &pred) == TINYSAM_OK) {
        long long area = 0; /* pred.masks: n_masks x height x width bytes, 0/1 */
        const uint8_t *best = pred.masks + (size_t)pred.best * img.width * img.height;
        for (size_t i = 0; i < (size_t)img.width * img.height; i++) area += best[i];
        printf("point (%g, %g): best mask %d, predicted IoU %.6f, area %lld pixels\n", pt[0],
               pt[1], pred.best, pred.iou[pred.best], area);
        tinysam_prediction_free(&pred);
    } else {
        rc = fail("predict");
    }
    tinysam_embedding_free(emb);
    tinysam_image_free(&img);
    tinysam_model_free(model);
    return rc;
}
