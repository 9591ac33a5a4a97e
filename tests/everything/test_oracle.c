/* test_oracle.c - everything mode against the official generators run with the scene oracle
 * (fixtures oracle/scene_a): the oracle itself (probes), then both modes in every setting. */
#include "everything/provider.h"
#include "everything_check.h"

static void test_probes(void) {
    if (!fixture_exists("oracle/scene_a/probes.json")) SKIP("fixtures missing");
    ts_provider *p;
    REQUIRE(ts_oracle_provider_create(fixture("oracle/scene_a/scene.json"), &p) == 0, "%s",
            tinysam_last_error());
    ts_json *pr;
    REQUIRE(ts_json_load(fixture("oracle/scene_a/probes.json"), &pr) == 0, "probes");
    REQUIRE(p->begin_region(p, 0, 0, p->width, p->height) == 0, "region");
    float *lr = malloc(sizeof(float) * 3 * 65536), iou[3];
    for (int i = 0; i < pr->n; i++) {
        const ts_json *e = &pr->items[i], *pt = ts_json_get(e, "point_1024");
        double xy[2] = {pt->items[0].number, pt->items[1].number};
        REQUIRE(p->predict(p, 1, xy, lr, iou) == 0, "predict");
        for (int m = 0; m < 3; m++) {
            const ts_json *ri = ts_json_get(e, "iou"), *pc = ts_json_get(e, "positive_cells"),
                          *ls = ts_json_get(e, "logit_sum");
            CHECK(iou[m] == (float)ri->items[m].number, "probe %d iou %d: %g vs %g", i, m,
                  (double)iou[m], ri->items[m].number);
            long pos = 0;
            double sum = 0;
            for (int k = 0; k < 65536; k++) {
                pos += lr[m * 65536 + k] > 0;
                sum += lr[m * 65536 + k];
            }
            CHECK(pos == (long)pc->items[m].number, "probe %d map %d: %ld positive cells vs %.0f",
                  i, m, pos, pc->items[m].number);
            double want = ls->items[m].number;
            CHECK(fabs(sum - want) <= 1e-6 * fabs(want), "probe %d map %d: sum %.9g vs %.9g", i, m,
                  sum, want);
        }
    }
    free(lr);
    ts_json_free(pr);
    p->destroy(p);
}

static void run_setting(const char *setting, const char *mode) {
    char rel[256];
    snprintf(rel, sizeof rel, "oracle/scene_a/%s/%s.json", setting, mode);
    if (!fixture_exists(rel)) SKIP("fixture missing");
    ts_json *ref;
    REQUIRE(ts_json_load(fixture(rel), &ref) == 0, "%s", tinysam_last_error());
    tinysam_everything_options o;
    options_from_json(ts_json_get(ref, "options"), &o);
    tinysam_everything_result res;
    REQUIRE(tinysam_everything_oracle(fixture("oracle/scene_a/scene.json"), &o, &res) == 0, "%s",
            tinysam_last_error());
    char label[128];
    snprintf(label, sizeof label, "%s/%s", setting, mode);
    compare_with_reference(label, ref, &res, 1);
    tinysam_everything_free(&res);
    ts_json_free(ref);
}

static void test_default_hierarchical(void) { run_setting("default", "hierarchical"); }
static void test_default_grid(void) { run_setting("default", "grid"); }
static void test_loose_hierarchical(void) { run_setting("loose", "hierarchical"); }
static void test_loose_grid(void) { run_setting("loose", "grid"); }
static void test_crops_grid(void) { run_setting("crops", "grid"); }

int main(void) {
    RUN(test_probes);
    RUN(test_default_hierarchical);
    RUN(test_default_grid);
    RUN(test_loose_hierarchical);
    RUN(test_loose_grid);
    RUN(test_crops_grid);
    return test_summary();
}
