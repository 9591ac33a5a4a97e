/* test_sim_model.c - the whole Q-TinySAM-structured model (whole/qtinysam_like.pth: 121
 * layers of the official quantisation classes, read from a torch.save(model) pickle) against
 * the official predictor's outputs with it (whole/reference/picture1). The quantised model is
 * chaotic at quantisation boundaries (the fixture README measures the effect of a 1e-6 input
 * perturbation in PyTorch itself: embedding cosine 0.99969, 0.6-0.8% of mask pixels, IoU up
 * to 1.2e-2, low-res mean 0.08), so the bounds are the distances, not equality:
 * embedding cosine >= 0.9993, mean abs error <= 0.04; per prompt case masks >= 98.5% equal
 * (the case's three masks together; the worst single mask is printed beside it),
 * IoU within 3e-2, low-res mean abs error <= 0.2. Both paths: int8 GEMMs where the grids
 * allow (the default) and everything simulated in float (TINYSAM_QSIM_FLOAT=1). */
#include "io/npy.h"
#include "model/sam.h"
#include "prompt_case.h"
#include "quant/sim_model.h"
#include "test.h"
#include "tinysam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define QMODEL "whole/qtinysam_like.pth"
#define REF "whole/reference/picture1"

static const char *const cases[] = {"point", "box", "box_point", "corner", "five_points",
                                    "fractional", "point_neg", "point_mask"};

/* `tinysam convert`'s writer, then the safetensors file: the same layers on the same paths,
 * and identical outputs (embedding and every prompt case) to the pickle's. */
static void convert_roundtrip(tinysam_model *m, const tinysam_embedding *e, int n_cases) {
    const char *path = tmp_path("qtinysam_like.safetensors");
    REQUIRE(tinysam_model_save_safetensors(m, path) == 0, "save: %s", tinysam_last_error());
    tinysam_model *c = NULL;
    REQUIRE(tinysam_model_load(path, &c) == 0, "load converted: %s", tinysam_last_error());
    REQUIRE(c->sim, "converted model lost its quantisation layers");
    int p1[3], c1[4], p2[3], c2[4];
    ts_simq_model_counts(m->sim, p1, c1);
    ts_simq_model_counts(c->sim, p2, c2);
    CHECK(!memcmp(p1, p2, sizeof p1) && !memcmp(c1, c2, sizeof c1), "layer counts differ");
    tinysam_model_info inf;
    tinysam_model_get_info(c, &inf);
    CHECK(!strcmp(inf.source_dtype, "w8a8-sim") && !strcmp(inf.source_format, "safetensors"),
          "info %s %s", inf.source_dtype, inf.source_format);
    tinysam_embedding *ec = NULL;
    if (!test_sanitized()) { /* an encode more: ~10x slower under the sanitizers */
        tinysam_image img;
        REQUIRE(tinysam_image_load(fixture("images/picture1.jpg"), 0, &img) == 0, "image");
        REQUIRE(tinysam_encode(c, &img, &ec) == 0, "encode converted: %s", tinysam_last_error());
        tinysam_image_free(&img);
        CHECK(!memcmp(tinysam_embedding_data(ec), tinysam_embedding_data(e), 256 * 4096 * 4),
              "embedding from the converted file differs");
    }
    const tinysam_embedding *ecv = ec ? ec : e;
    int same = 0;
    for (int k = 0; k < n_cases; k++) {
        char dir[256];
        snprintf(dir, sizeof dir, REF "/prompts/%s", cases[k]);
        test_prompt_case pc;
        REQUIRE(test_prompt_case_load(dir, 1, &pc) == 0, "%s", tinysam_last_error());
        tinysam_prediction a, b;
        REQUIRE(tinysam_predict(m, e, &pc.prompt, TINYSAM_PREDICT_MASKS, &a) == 0, "predict");
        REQUIRE(tinysam_predict(c, ecv, &pc.prompt, TINYSAM_PREDICT_MASKS, &b) == 0, "predict");
        int eq = !memcmp(a.masks, b.masks, (size_t)3 * a.width * a.height) &&
                 !memcmp(a.iou, b.iou, sizeof a.iou) &&
                 !memcmp(a.low_res, b.low_res, 3 * 65536 * sizeof(float));
        CHECK(eq, "%s: converted model's outputs differ", cases[k]);
        same += eq;
        tinysam_prediction_free(&a);
        tinysam_prediction_free(&b);
        test_prompt_case_free(&pc);
    }
    printf("  converted to safetensors: embedding %s, %d of %d prompt cases identical\n",
           ec ? "identical" : "not recomputed", same, n_cases);
    tinysam_embedding_free(ec);
    tinysam_model_free(c);
}

static void run(int float_only, int n_cases) {
    if (!fixture_exists(QMODEL) || !fixture_exists(REF "/embedding.npy"))
        SKIP("whole/ fixtures missing");
    if (float_only) setenv("TINYSAM_QSIM_FLOAT", "1", 1);
    tinysam_model *m = NULL;
    int rc = tinysam_model_load(fixture(QMODEL), &m);
    unsetenv("TINYSAM_QSIM_FLOAT");
    REQUIRE(rc == 0, "load: %s", tinysam_last_error());
    REQUIRE(m->sim, "no quantised model");
    int paths[3], cls[4];
    ts_simq_model_counts(m->sim, paths, cls);
    CHECK(cls[0] == 77 && cls[1] == 10 && cls[2] == 32 && cls[3] == 2,
          "classes %d %d %d %d, fixture has 77 10 32 2", cls[0], cls[1], cls[2], cls[3]);
    /* int8: the 87 linears and the 12 pointwise convolutions (one step per row, n_a = 1) */
    CHECK(float_only ? paths[2] == 0 : paths[2] == 87 + 12, "int8 layers: %d", paths[2]);
    printf("  layers: raw %d, sim %d, int8 %d\n", paths[0], paths[1], paths[2]);
    tinysam_image img;
    REQUIRE(tinysam_image_load(fixture("images/picture1.jpg"), 0, &img) == 0, "image");
    tinysam_embedding *e = NULL;
    rc = tinysam_encode(m, &img, &e);
    tinysam_image_free(&img);
    REQUIRE(rc == 0, "encode: %s", tinysam_last_error());
    ts_npy ref;
    REQUIRE(ts_npy_load(fixture(REF "/embedding.npy"), &ref) == 0, "embedding.npy");
    const float *a = tinysam_embedding_data(e), *b = ref.data;
    double dot = 0, na = 0, nb = 0, mae = 0, mx = 0;
    for (int64_t i = 0; i < ref.numel; i++) {
        dot += (double)a[i] * b[i], na += (double)a[i] * a[i], nb += (double)b[i] * b[i];
        mae += fabs(a[i] - b[i]);
        mx = fmax(mx, fabs(a[i] - b[i]));
    }
    double cosv = dot / sqrt(na * nb);
    mae /= (double)ref.numel;
    printf("  embedding: cosine %.6f (bound 0.9993; noise floor 0.99969), mean abs %.4f (bound "
           "0.04), max abs %.3f\n",
           cosv, mae, mx);
    CHECK(cosv >= 0.9993, "embedding cosine %.6f < 0.9993", cosv);
    CHECK(mae <= 0.04, "embedding mean abs error %.4f > 0.04", mae);
    ts_npy_free(&ref);
    for (int c = 0; c < n_cases; c++) {
        char dir[256];
        snprintf(dir, sizeof dir, REF "/prompts/%s", cases[c]);
        test_prompt_case pc;
        REQUIRE(test_prompt_case_load(dir, 1, &pc) == 0, "%s: %s", cases[c], tinysam_last_error());
        tinysam_prediction p;
        rc = tinysam_predict(m, e, &pc.prompt, TINYSAM_PREDICT_MASKS, &p);
        REQUIRE(rc == 0, "%s: %s", cases[c], tinysam_last_error());
        test_case_outputs want;
        REQUIRE(test_case_outputs_load(dir, &want) == 0, "%s", tinysam_last_error());
        const ts_npy mk = want.masks, iou = want.iou, lr = want.low_res;
        REQUIRE(mk.numel == (int64_t)3 * p.width * p.height && lr.numel == 3 * 65536, "shapes");
        double worst_eq = 1, di = 0, lmae = 0;
        size_t plane = (size_t)p.width * p.height, all_eq = 0;
        for (int k = 0; k < 3; k++) {
            size_t eq = 0;
            for (size_t i = 0; i < plane; i++)
                eq += (p.masks[k * plane + i] != 0) == (((uint8_t *)mk.data)[k * plane + i] != 0);
            worst_eq = fmin(worst_eq, (double)eq / plane);
            all_eq += eq;
            di = fmax(di, fabs(p.iou[k] - ((float *)iou.data)[k]));
        }
        double case_eq = (double)all_eq / (3.0 * plane);
        for (int i = 0; i < 3 * 65536; i++) lmae += fabs(p.low_res[i] - ((float *)lr.data)[i]);
        lmae /= 3 * 65536.0;
        printf("  %-12s masks equal %.3f%% (bound 98.5; worst mask %.3f%%), IoU max abs %.4f "
               "(bound 0.03), low-res mean abs %.4f (bound 0.2)\n",
               cases[c], 100 * case_eq, 100 * worst_eq, di, lmae);
        CHECK(case_eq >= 0.985, "%s: masks %.4f equal", cases[c], case_eq);
        CHECK(di <= 3e-2, "%s: IoU error %.4f", cases[c], di);
        CHECK(lmae <= 0.2, "%s: low-res mean abs error %.4f", cases[c], lmae);
        test_case_outputs_free(&want);
        tinysam_prediction_free(&p);
        test_prompt_case_free(&pc);
    }
    if (!float_only) convert_roundtrip(m, e, n_cases);
    tinysam_embedding_free(e);
    tinysam_model_free(m);
}

static void test_whole_quantised_int8(void) {
    /* every case; under the sanitizers or the portable kernels (several times slower) the
     * first three */
    run(0, test_sanitized() || test_portable_kernels() ? 3 : (int)(sizeof cases / sizeof *cases));
}

static void test_whole_quantised_simulated(void) {
    if (test_sanitized() || test_portable_kernels()) SKIP("one path is enough in slow builds");
    run(1, 1); /* the embedding and one case: the time budget of the suite */
}

int main(void) {
    RUN(test_whole_quantised_int8);
    RUN(test_whole_quantised_simulated);
    return test_summary();
}
