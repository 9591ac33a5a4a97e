/* test_predictor.c - tinysam_predict's contract (spec TINYSAM.md 5.5, 5.6, 3.6): the output
 * flags, best = argmax IoU against the official `best`, logits vs masks, prompts without
 * points, and input validation. The per-case numerical parity is in test_decoder.c. */
#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "model/sam.h"
#include "model/sam_decoder.h"
#include "model/transforms.h"
#include "prompt_case.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MODEL "models/tinysam_vit_t_random.pth"
#define W1 769
#define H1 770

static tinysam_model *model;
static ts_npy emb;
static tinysam_embedding pic; /* picture1, reference embedding */

static int setup(void) {
    if (model) return 1;
    if (!fixture_exists(MODEL) || !fixture_exists("reference/picture1/embedding.npy")) return 0;
    if (tinysam_model_load(fixture(MODEL), &model)) return 0;
    if (ts_npy_load(fixture("reference/picture1/embedding.npy"), &emb)) return 0;
    pic = (tinysam_embedding){.data = emb.data, .orig_w = W1, .orig_h = H1};
    ts_preprocess_shape(H1, W1, 1024, &pic.input_h, &pic.input_w);
    return 1;
}

/* MASKS|LOGITS: masks are exactly logits > 0, logits agree in sign with the official masks,
 * best and IoU match prompt.json / iou.npy. */
static void test_logits_masks_best(void) {
    if (!setup()) SKIP("fixtures missing");
    const char *cases[] = {"point", "box", "corner", "five_points"};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        char dir[256];
        snprintf(dir, sizeof dir, "reference/picture1/prompts/%s", cases[c]);
        static test_prompt_case pc; /* no mask input: the official run had none */
        REQUIRE(test_prompt_case_load(dir, 0, &pc) == 0, "%s: %s", cases[c], tinysam_last_error());
        const tinysam_prompt pr = pc.prompt;
        const ts_json *pj = pc.json;
        tinysam_prediction p;
        int rc = tinysam_predict(model, &pic, &pr, TINYSAM_PREDICT_MASKS | TINYSAM_PREDICT_LOGITS,
                                 &p);
        REQUIRE(rc == 0, "%s: %s", cases[c], tinysam_last_error());
        CHECK(p.n_masks == 3 && p.width == W1 && p.height == H1, "%s: %d masks %dx%d", cases[c],
              p.n_masks, p.width, p.height);
        REQUIRE(p.masks && p.logits && p.low_res, "%s: outputs missing", cases[c]);
        int best = (int)ts_json_num(pj, "best", -1);
        CHECK(p.best == best, "%s: best %d, official %d", cases[c], p.best, best);
        const ts_json *ious = ts_json_get(pj, "iou_predictions");
        double di = 0;
        for (int k = 0; k < 3; k++) di = fmax(di, fabs(p.iou[k] - ious->items[k].number));
        CHECK(di <= 1e-3, "%s: IoU max abs error %g", cases[c], di);
        size_t plane = (size_t)W1 * H1, bad = 0, agree = 0;
        char path[256];
        snprintf(path, sizeof path, "reference/picture1/prompts/%s/masks.npy", cases[c]);
        ts_npy mk;
        REQUIRE(ts_npy_load(fixture(path), &mk) == 0, "masks.npy");
        const uint8_t *ref = mk.data;
        for (size_t i = 0; i < 3 * plane; i++) {
            bad += p.masks[i] != (p.logits[i] > 0.0f);
            agree += (p.logits[i] > 0.0f) == (ref[i] != 0);
        }
        CHECK(bad == 0, "%s: %zu mask pixels differ from logits > 0", cases[c], bad);
        double frac = (double)agree / (3.0 * plane);
        CHECK(frac >= 0.999, "%s: logit signs agree on %.5f", cases[c], frac);
        printf("  %s: best %d, IoU error %.2e, logit signs agree on %.5f%%\n", cases[c], p.best,
               di, 100 * frac);
        ts_npy_free(&mk);
        tinysam_prediction_free(&p);
        CHECK(!p.masks && !p.logits && !p.low_res, "free leaves pointers set");
        tinysam_prediction_free(&p); /* twice is harmless */
        test_prompt_case_free(&pc);
    }
}

/* flags 0: only the low-res logits (which always come back); SINGLE: one mask, best 0. */
static void test_flags(void) {
    if (!setup()) SKIP("fixtures missing");
    float pt[2] = {380, 300};
    int lab = 1;
    tinysam_prompt pr = {.n_points = 1, .points = pt, .labels = &lab};
    tinysam_prediction p;
    REQUIRE(tinysam_predict(model, &pic, &pr, 0, &p) == 0, "%s", tinysam_last_error());
    CHECK(p.low_res && !p.masks && !p.logits && p.n_masks == 3, "flags 0 outputs");
    ts_npy lr;
    REQUIRE(ts_npy_load(fixture("reference/picture1/prompts/point/low_res.npy"), &lr) == 0, "lr");
    double d = 0;
    for (size_t i = 0; i < 3 * 65536; i++) d = fmax(d, fabs(p.low_res[i] - ((float *)lr.data)[i]));
    CHECK(d <= 5e-3, "low-res max abs error %g", d);
    ts_npy_free(&lr);
    tinysam_prediction_free(&p);

    REQUIRE(tinysam_predict(model, &pic, &pr, TINYSAM_PREDICT_SINGLE | TINYSAM_PREDICT_LOGITS,
                            &p) == 0, "%s", tinysam_last_error());
    CHECK(p.n_masks == 1 && p.best == 0 && p.low_res && p.logits && !p.masks, "single outputs");
    tinysam_prediction_free(&p);
}

/* A box or a mask input alone: no point tokens at all (spec 5.2: "with neither points nor
 * box, sparse has 0 tokens"; with a box, no padding point). */
static void test_no_points(void) {
    if (!setup()) SKIP("fixtures missing");
    float tokens[4 * 256];
    int k = -1;
    ts_prompt_set none = {0}, box = {.has_box = 1, .box = {0.1f, 0.1f, 0.5f, 0.5f}};
    ts_prompt_sparse(model->prompt_encoder, &none, tokens, &k);
    CHECK(k == 0, "no points, no box: %d sparse tokens", k);
    ts_prompt_sparse(model->prompt_encoder, &box, tokens, &k);
    CHECK(k == 2, "box only: %d sparse tokens", k);
    ts_npy mi;
    REQUIRE(ts_npy_load(fixture("reference/picture1/prompts/point_mask/mask_input.npy"), &mi) == 0,
            "mask_input");
    tinysam_prompt pr = {.mask_input = mi.data};
    tinysam_prediction p;
    int rc = tinysam_predict(model, &pic, &pr, TINYSAM_PREDICT_MASKS, &p);
    CHECK(rc == 0 && p.masks, "mask input only: %s", tinysam_last_error());
    int finite = 1;
    for (int i = 0; rc == 0 && i < 3 * 65536; i++) finite &= isfinite(p.low_res[i]) != 0;
    CHECK(finite, "mask input only: non-finite logits");
    tinysam_prediction_free(&p);
    ts_npy_free(&mi);
}

static void expect_arg(tinysam_model *m, const tinysam_embedding *e, const tinysam_prompt *pr,
                       tinysam_prediction *out, const char *needle, const char *what) {
    int rc = tinysam_predict(m, e, pr, TINYSAM_PREDICT_MASKS, out);
    CHECK(rc == TINYSAM_E_ARG, "%s: rc %d", what, rc);
    CHECK(strstr(tinysam_last_error(), needle), "%s: message '%s' lacks '%s'", what,
          tinysam_last_error(), needle);
    if (out) CHECK(!out->masks && !out->low_res && !out->logits, "%s: outputs left set", what);
}

static void test_bad_input(void) {
    if (!setup()) SKIP("fixtures missing");
    tinysam_prediction p;
    float pt[2] = {10, 10}, pts2[4] = {10, 10, 20, 20};
    int l1 = 1, lneg = -1, l2[2] = {1, 0};
    tinysam_prompt ok = {.n_points = 1, .points = pt, .labels = &l1}, pr;
    expect_arg(NULL, &pic, &ok, &p, "NULL", "NULL model");
    expect_arg(model, NULL, &ok, &p, "NULL", "NULL embedding");
    expect_arg(model, &pic, NULL, &p, "NULL", "NULL prompt");
    expect_arg(model, &pic, &ok, NULL, "NULL", "NULL output");

    float outside[][2] = {{769, 10}, {10, 770}, {-1, 10}, {10, -0.5f}};
    const char *msg[] = {"point (769, 10) is outside the 769x770 image",
                         "point (10, 770) is outside the 769x770 image",
                         "point (-1, 10) is outside the 769x770 image",
                         "point (10, -0.5) is outside the 769x770 image"};
    for (int i = 0; i < 4; i++) {
        pr = (tinysam_prompt){.n_points = 1, .points = outside[i], .labels = &l1};
        expect_arg(model, &pic, &pr, &p, msg[i], msg[i]);
    }
    float edge[2] = {768.99f, 769.99f}; /* last pixel: inside */
    pr = (tinysam_prompt){.n_points = 1, .points = edge, .labels = &l1};
    CHECK(tinysam_predict(model, &pic, &pr, 0, &p) == 0, "edge point: %s", tinysam_last_error());
    tinysam_prediction_free(&p);

    float nan_pt[2] = {NAN, 10}, inf_pt[2] = {10, INFINITY};
    pr = (tinysam_prompt){.n_points = 1, .points = nan_pt, .labels = &l1};
    expect_arg(model, &pic, &pr, &p, "finite", "NaN point");
    pr.points = inf_pt;
    expect_arg(model, &pic, &pr, &p, "finite", "inf point");
    pr = (tinysam_prompt){.n_points = 1, .points = pt, .labels = &lneg};
    expect_arg(model, &pic, &pr, &p, "label", "label -1");
    pr = (tinysam_prompt){.n_points = -1, .points = pt, .labels = &l1};
    expect_arg(model, &pic, &pr, &p, "points", "negative count");
    pr = (tinysam_prompt){.n_points = TINYSAM_MAX_POINTS + 1, .points = pt, .labels = &l1};
    expect_arg(model, &pic, &pr, &p, "at most", "too many points");
    pr = (tinysam_prompt){.n_points = 2, .points = NULL, .labels = l2};
    expect_arg(model, &pic, &pr, &p, "coordinates", "NULL points");
    pr = (tinysam_prompt){.n_points = 2, .points = pts2, .labels = NULL};
    expect_arg(model, &pic, &pr, &p, "labels", "NULL labels");
    pr = (tinysam_prompt){.has_box = 1, .box = {50, 10, 10, 40}};
    expect_arg(model, &pic, &pr, &p, "x1 < x0", "box x1 < x0");
    pr = (tinysam_prompt){.has_box = 1, .box = {10, 50, 40, 10}};
    expect_arg(model, &pic, &pr, &p, "y1 < y0", "box y1 < y0");
    pr = (tinysam_prompt){.has_box = 1, .box = {10, NAN, 40, 50}};
    expect_arg(model, &pic, &pr, &p, "finite", "NaN box");
    static float bad_mask[65536];
    bad_mask[1234] = NAN;
    pr = (tinysam_prompt){.n_points = 1, .points = pt, .labels = &l1, .mask_input = bad_mask};
    expect_arg(model, &pic, &pr, &p, "mask input", "NaN mask input");
    pr = (tinysam_prompt){0};
    expect_arg(model, &pic, &pr, &p, "empty", "empty prompt");
    /* a zero-area box (a single pixel) is a valid prompt */
    pr = (tinysam_prompt){.has_box = 1, .box = {100, 100, 100, 100}};
    CHECK(tinysam_predict(model, &pic, &pr, 0, &p) == 0, "point box: %s", tinysam_last_error());
    tinysam_prediction_free(&p);
}

int main(void) {
    RUN(test_logits_masks_best);
    RUN(test_flags);
    RUN(test_no_points);
    RUN(test_bad_input);
    if (model) tinysam_model_free(model);
    ts_npy_free(&emb);
    return test_summary();
}
