/* prepared_check.c - see prepared_check.h. */
#include "prepared_check.h"

#include "model/sam.h"
#include "model/sam_decoder_internal.h"
#include "test.h"
#include "tinysam.h"

#include <string.h>

static unsigned sides(const tinysam_model *m) { return atomic_load(&m->mask_decoder->image_sides); }

static int same(const tinysam_prediction *a, const tinysam_prediction *b) {
    size_t plane = (size_t)a->width * a->height * (size_t)a->n_masks;
    return a->n_masks == b->n_masks && a->best == b->best && !memcmp(a->iou, b->iou, sizeof a->iou) &&
           !memcmp(a->low_res, b->low_res, sizeof(float) * 65536 * (size_t)a->n_masks) &&
           !memcmp(a->masks, b->masks, plane);
}

void check_prepared_decode(const char *path, const char *what) {
    tinysam_model *m = NULL, *lazy = NULL; /* lazy: makes the image side in its calls */
    tinysam_image img = {0}, img2 = {0};
    tinysam_embedding *e = NULL, *e2 = NULL;
    tinysam_prediction a = {0}, b = {0}, bat[2] = {{0}}, one = {0};
    REQUIRE(tinysam_model_load(path, &m) == 0, "%s: %s", what, tinysam_last_error());
    REQUIRE(tinysam_model_load(path, &lazy) == 0, "%s: %s", what, tinysam_last_error());
    REQUIRE(tinysam_image_load(fixture("images/picture1.jpg"), 0, &img) == 0, "picture1");
    REQUIRE(tinysam_image_load(fixture("images/shapes.png"), 0, &img2) == 0, "shapes");
    REQUIRE(tinysam_encode(m, &img, &e) == 0, "%s: %s", what, tinysam_last_error());
    float pt[4] = {380, 300, 500, 420};
    int lab[2] = {1, 0};
    tinysam_prompt point = {.n_points = 1, .points = pt, .labels = lab};
    tinysam_prompt box = {.has_box = 1, .box = {100, 80, 380, 300}, .n_points = 2, .points = pt,
                          .labels = lab};

    /* the first decode of the prepared embedding, against the lazy model's */
    unsigned s0 = sides(m), l0 = sides(lazy);
    REQUIRE(tinysam_predict(m, e, &point, TINYSAM_PREDICT_MASKS, &a) == 0, "%s", tinysam_last_error());
    CHECK(sides(m) == s0, "%s: the first decode of a prepared embedding made its image side again",
          what);
    REQUIRE(tinysam_predict(lazy, e, &point, TINYSAM_PREDICT_MASKS, &b) == 0, "%s",
            tinysam_last_error());
    CHECK(sides(lazy) == l0 + 1, "%s: the unprepared model did not make the image side", what);
    CHECK(same(&a, &b), "%s: prepared and unprepared first decodes differ", what);
    tinysam_prediction_free(&a);
    tinysam_prediction_free(&b);

    /* another embedding prepared: a decode of the first one is not served from it */
    REQUIRE(tinysam_encode(m, &img2, &e2) == 0, "%s: %s", what, tinysam_last_error());
    REQUIRE(tinysam_predict(m, e, &box, TINYSAM_PREDICT_MASKS, &a) == 0, "%s", tinysam_last_error());
    REQUIRE(tinysam_predict(lazy, e, &box, TINYSAM_PREDICT_MASKS, &b) == 0, "%s",
            tinysam_last_error());
    CHECK(same(&a, &b), "%s: a decode after another embedding was prepared differs", what);

    /* a batch on a prepared embedding (a bigger context: the image side moves into it) */
    tinysam_embedding_free(e2); /* prepared again */
    e2 = NULL;
    REQUIRE(tinysam_encode(m, &img2, &e2) == 0, "%s: %s", what, tinysam_last_error());
    tinysam_prompt sets[2] = {point, box};
    s0 = sides(m);
    REQUIRE(tinysam_predict_batch(m, e2, 2, sets, TINYSAM_PREDICT_MASKS, bat) == 0, "%s",
            tinysam_last_error());
    CHECK(sides(m) == s0, "%s: a batch on a prepared embedding made its image side again", what);
    for (int i = 0; i < 2; i++) {
        REQUIRE(tinysam_predict(lazy, e2, &sets[i], TINYSAM_PREDICT_MASKS, &one) == 0, "%s",
                tinysam_last_error());
        CHECK(same(&bat[i], &one), "%s: batch set %d on a prepared embedding differs", what, i);
        tinysam_prediction_free(&one);
        tinysam_prediction_free(&bat[i]);
    }
    printf("  %s: prepared first decodes make no image side and equal unprepared ones\n", what);
    tinysam_prediction_free(&a);
    tinysam_prediction_free(&b);
    tinysam_embedding_free(e);
    tinysam_embedding_free(e2);
    tinysam_image_free(&img);
    tinysam_image_free(&img2);
    tinysam_model_free(m);
    tinysam_model_free(lazy);
}
