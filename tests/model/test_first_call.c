/* test_first_call.c - the first encode and decode of a freshly loaded model (scratch made at
 * load and faulted in by helper threads meanwhile, packs made in one batch) give, bit for bit,
 * what the next calls give; the first embedding also matches the official one (max abs error
 * <= 1e-3, as test_image_encoder). Both load paths: the .pth and a safetensors copy. */
#include "io/npy.h"
#include "prepared_check.h"
#include "test.h"
#include "tinysam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MODEL "models/tinysam_vit_t_random.pth"
#define IMAGE "images/picture1.jpg"
#define EMB_N ((size_t)256 * 64 * 64)

static void first_then_warm(const char *path, const char *what, const float *ref) {
    tinysam_image img;
    REQUIRE(tinysam_image_load(fixture(IMAGE), 0, &img) == 0, "%s", tinysam_last_error());
    tinysam_model *m = NULL;
    REQUIRE(tinysam_model_load(path, &m) == 0, "%s: %s", what, tinysam_last_error());
    /* straight after the load: the helper threads may still be faulting the scratch in */
    tinysam_embedding *e1 = NULL, *e2 = NULL;
    REQUIRE(tinysam_encode(m, &img, &e1) == 0, "%s: %s", what, tinysam_last_error());
    float pt[2] = {380, 300};
    int lab = 1;
    tinysam_prompt pr = {.n_points = 1, .points = pt, .labels = &lab};
    tinysam_prediction p1, p2;
    REQUIRE(tinysam_predict(m, e1, &pr, 0, &p1) == 0, "%s: %s", what, tinysam_last_error());
    REQUIRE(tinysam_predict(m, e1, &pr, 0, &p2) == 0, "%s: %s", what, tinysam_last_error());
    REQUIRE(tinysam_encode(m, &img, &e2) == 0, "%s: %s", what, tinysam_last_error());

    const float *a = tinysam_embedding_data(e1), *b = tinysam_embedding_data(e2);
    CHECK(!memcmp(a, b, EMB_N * sizeof(float)), "%s: first and second embedding differ", what);
    double err = 0;
    for (size_t i = 0; i < EMB_N; i++) err = fmax(err, fabs((double)a[i] - ref[i]));
    CHECK(err <= 1e-3, "%s: first embedding max abs error %g", what, err);
    CHECK(!memcmp(p1.low_res, p2.low_res, (size_t)3 * 256 * 256 * sizeof(float)) &&
              !memcmp(p1.iou, p2.iou, sizeof p1.iou),
          "%s: first and second decode differ", what);
    printf("  %s: first calls bit-identical to the next, embedding error %.2e\n", what, err);
    tinysam_prediction_free(&p1);
    tinysam_prediction_free(&p2);
    tinysam_embedding_free(e1);
    tinysam_embedding_free(e2);
    tinysam_model_free(m);
    tinysam_image_free(&img);
}

static void test_first_call_warm(void) {
    if (!fixture_exists(MODEL) || !fixture_exists("reference/picture1/embedding.npy"))
        SKIP("fixtures missing");
    ts_npy ref;
    REQUIRE(ts_npy_load(fixture("reference/picture1/embedding.npy"), &ref) == 0, "embedding.npy");
    first_then_warm(fixture(MODEL), "pth", ref.data);
    if (!test_sanitized()) { /* the same load code again: once is enough under ASan */
        tinysam_model *m = NULL;
        const char *st = tmp_path("first_call.safetensors");
        REQUIRE(tinysam_model_load(fixture(MODEL), &m) == 0, "%s", tinysam_last_error());
        int rc = tinysam_model_save_safetensors(m, st);
        tinysam_model_free(m);
        REQUIRE(rc == 0, "%s", tinysam_last_error());
        first_then_warm(st, "safetensors", ref.data);
        remove(st);
    }
    ts_npy_free(&ref);
}

/* tinysam_encode did the decoder's per-image work: the first decode makes none and equals a
 * decode that makes it (issue 20) */
static void test_prepared_embedding(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    check_prepared_decode(fixture(MODEL), "float");
}

int main(void) {
    RUN(test_first_call_warm);
    RUN(test_prepared_embedding);
    return test_summary();
}
