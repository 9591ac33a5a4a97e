/* test_everything_net.c - everything mode with the network on picture1 against the official
 * generators (fixtures reference/everything/picture1): the relaxed setting, where masks pass,
 * and the default setting, where none does, each in both modes. Each run decodes ~1000
 * prompts, so the sanitizer and portable-kernel passes of .ci/run skip it (the oracle tests
 * cover the same pipeline there). */
#include "everything_check.h"
#include "io/npy.h"
#include "model/sam.h"
#include "model/transforms.h"

#include <stdio.h>

static tinysam_model *g_model;
static tinysam_image g_img;
static tinysam_embedding g_emb;
static ts_npy g_emb_npy;

static int setup(void) {
    if (g_model) return 1;
    if (tinysam_model_load(fixture("models/tinysam_vit_t_random.pth"), &g_model) ||
        tinysam_image_load(fixture("images/picture1.jpg"), 0, &g_img) ||
        ts_npy_load(fixture("reference/picture1/embedding.npy"), &g_emb_npy)) {
        printf("  setup: %s\n", tinysam_last_error());
        return 0;
    }
    /* the official embedding: isolates the everything pipeline from encoder rounding */
    g_emb = (tinysam_embedding){
        .data = g_emb_npy.data, .orig_w = g_img.width, .orig_h = g_img.height};
    ts_preprocess_shape(g_img.height, g_img.width, 1024, &g_emb.input_h, &g_emb.input_w);
    return 1;
}

static void run(const char *setting, const char *mode) {
    if (test_sanitized() || test_portable_kernels())
        SKIP("slow build: covered by the oracle tests");
    char rel[256];
    snprintf(rel, sizeof rel, "reference/everything/picture1/%s/%s.json", setting, mode);
    if (!fixture_exists(rel)) SKIP("fixture missing");
    REQUIRE(setup(), "setup failed");
    ts_json *ref;
    REQUIRE(ts_json_load(fixture(rel), &ref) == 0, "%s", tinysam_last_error());
    tinysam_everything_options o;
    options_from_json(ts_json_get(ref, "options"), &o);
    tinysam_everything_result res;
    REQUIRE(tinysam_everything(g_model, &g_img, &g_emb, &o, &res) == 0, "%s", tinysam_last_error());
    char label[128];
    snprintf(label, sizeof label, "picture1 %s/%s", setting, mode);
    printf("  %s: %d points in %.0f ms\n", label, res.points_total, res.ms_total);
    compare_with_reference(label, ref, &res, 1);
    tinysam_everything_free(&res);
    ts_json_free(ref);
}

static void test_relaxed_hierarchical(void) { run("relaxed", "hierarchical"); }
static void test_relaxed_grid(void) { run("relaxed", "grid"); }
static void test_default_hierarchical(void) { run("default", "hierarchical"); }
static void test_default_grid(void) { run("default", "grid"); }

int main(void) {
    RUN(test_relaxed_hierarchical);
    RUN(test_relaxed_grid);
    RUN(test_default_hierarchical);
    RUN(test_default_grid);
    tinysam_model_free(g_model);
    tinysam_image_free(&g_img);
    ts_npy_free(&g_emb_npy);
    return test_summary();
}
