/* test_decoder.c - prompt encoder, mask decoder and predictor against the official outputs
 * for every prompt case of the fixtures, from the reference image embedding (so that this
 * test does not depend on the image encoder). Tolerances from the issue: sparse/dense
 * embeddings <= 1e-4, low-res logits <= 5e-3, IoU <= 1e-3, masks >= 99.9% equal. */
#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensor_map.h"
#include "model/sam.h"
#include "model/sam_decoder.h"
#include "model/sam_decoder_internal.h"
#include "model/transforms.h"
#include "test.h"
#include "compare.h"
#include "prompt_case.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MODEL "models/tinysam_vit_t_random.pth"

/* The model frame of a predictor coordinate (spec 3.5): apply_coords in double, float32,
 * then the prompt encoder's +0.5 and /1024 in float32. */
static float model_coord(float v, int new_len, int orig_len) {
    return ((float)ts_apply_coord(v, new_len, orig_len) + 0.5f) / 1024.0f;
}

static void run_image(const char *image, int W, int H) {
    char rel[512];
    snprintf(rel, sizeof rel, "reference/%s/embedding.npy", image);
    if (!fixture_exists(MODEL) || !fixture_exists(rel)) SKIP("fixtures missing");
    tinysam_model *m;
    REQUIRE(tinysam_model_load(fixture(MODEL), &m) == 0, "%s", tinysam_last_error());
    ts_npy emb;
    REQUIRE(ts_npy_load(fixture(rel), &emb) == 0, "%s", tinysam_last_error());
    tinysam_embedding e = {.data = emb.data, .orig_w = W, .orig_h = H};
    ts_preprocess_shape(H, W, 1024, &e.input_h, &e.input_w);
    snprintf(rel, sizeof rel, "reference/%s/prompts", image);
    DIR *dir = opendir(fixture(rel));
    REQUIRE(dir, "no prompts dir");
    struct dirent *de;
    double worst_sparse = 0, worst_dense = 0, worst_lr = 0, worst_iou = 0, worst_mask = 1;
    int n_cases = 0;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.') continue;
        char base[600], path[700];
        snprintf(base, sizeof base, "reference/%s/prompts/%s", image, de->d_name);
        static test_prompt_case pc;
        REQUIRE(test_prompt_case_load(base, 1, &pc) == 0, "%s", tinysam_last_error());
        const tinysam_prompt pr = pc.prompt;
        const float *points = pc.points;
        const int *labels = pc.labels, np = pr.n_points;
        /* sparse embeddings through the predictor's coordinate path */
        ts_npy sp;
        snprintf(path, sizeof path, "%s/sparse.npy", base);
        REQUIRE(ts_npy_load(fixture(path), &sp) == 0, "sparse");
        float coords[64], *mine = malloc(sizeof(float) * 256 * 40);
        for (int i = 0; i < np; i++) {
            coords[2 * i] = model_coord(points[2 * i], e.input_w, W);
            coords[2 * i + 1] = model_coord(points[2 * i + 1], e.input_h, H);
        }
        ts_prompt_set set = {
            .n_points = np, .coords = coords, .labels = labels, .has_box = pr.has_box};
        for (int k = 0; k < 4; k++)
            set.box[k] = model_coord(pr.box[k], k % 2 ? e.input_h : e.input_w, k % 2 ? H : W);
        int k;
        ts_prompt_sparse(m->prompt_encoder, &set, mine, &k);
        CHECK(k == sp.shape[1], "%s: %d sparse tokens, reference %lld", de->d_name, k,
              (long long)sp.shape[1]);
        double ds = test_max_abs_diff(mine, sp.data, (size_t)k * 256);
        CHECK(ds <= 1e-4, "%s: sparse max abs error %g", de->d_name, ds);
        if (ds > worst_sparse) worst_sparse = ds;
        free(mine);
        ts_npy_free(&sp);
        snprintf(path, sizeof path, "%s/dense.npy", base);
        if (fixture_exists(path)) {
            ts_npy dn;
            REQUIRE(ts_npy_load(fixture(path), &dn) == 0, "dense");
            float *dm = malloc(sizeof(float) * 256 * 4096);
            REQUIRE(ts_prompt_dense(m->prompt_encoder, pr.mask_input, dm) == 0, "dense");
            double dd = test_max_abs_diff(dm, dn.data, 256 * 4096);
            CHECK(dd <= 1e-4, "%s: dense max abs error %g", de->d_name, dd);
            if (dd > worst_dense) worst_dense = dd;
            free(dm);
            ts_npy_free(&dn);
        }
        /* decoder and post-processing through the public predictor */
        tinysam_prediction p;
        REQUIRE(tinysam_predict(m, &e, &pr, TINYSAM_PREDICT_MASKS, &p) == 0, "%s: %s", de->d_name,
                tinysam_last_error());
        test_case_outputs want;
        REQUIRE(test_case_outputs_load(base, &want) == 0, "%s", tinysam_last_error());
        double dl = test_max_abs_diff(p.low_res, want.low_res.data, 3 * 65536);
        double di = test_max_abs_diff(p.iou, want.iou.data, 3);
        CHECK(dl <= 5e-3, "%s: low-res max abs error %g", de->d_name, dl);
        CHECK(di <= 1e-3, "%s: IoU max abs error %g", de->d_name, di);
        double frac = test_mask_agreement(p.masks, want.masks.data, 3 * (size_t)W * H);
        CHECK(frac >= 0.999, "%s: masks agree on %.5f", de->d_name, frac);
        printf("  %s/%s: sparse %.2e  low-res %.2e  iou %.2e  masks %.5f%%\n", image, de->d_name,
               ds, dl, di, 100 * frac);
        if (dl > worst_lr) worst_lr = dl;
        if (di > worst_iou) worst_iou = di;
        if (frac < worst_mask) worst_mask = frac;
        n_cases++;
        tinysam_prediction_free(&p);
        test_case_outputs_free(&want);
        test_prompt_case_free(&pc);
    }
    closedir(dir);
    printf("  %s: %d cases; worst sparse %.2e dense %.2e low-res %.2e iou %.2e masks %.5f%%\n",
           image, n_cases, worst_sparse, worst_dense, worst_lr, worst_iou, 100 * worst_mask);
    CHECK(n_cases >= 3, "only %d cases", n_cases);
    ts_npy_free(&emb);
    tinysam_model_free(m);
}

static void test_picture1(void) {
    run_image("picture1", 769, 770);
}

static void test_shapes(void) {
    run_image("shapes", 640, 480);
}

/* Several prompt sets in one call (the everything-mode path, parallel over sets) give the
 * same outputs as one call per set. */
static void test_batch_equals_single(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    tinysam_model *m;
    REQUIRE(tinysam_model_load(fixture(MODEL), &m) == 0, "%s", tinysam_last_error());
    ts_npy emb;
    REQUIRE(ts_npy_load(fixture("reference/shapes/embedding.npy"), &emb) == 0, "emb");
    float coords[6] = {0.1f, 0.2f, 0.5f, 0.5f, 0.9f, 0.3f};
    int lab = 1;
    ts_prompt_set sets[3];
    for (int i = 0; i < 3; i++)
        sets[i] = (ts_prompt_set){.n_points = 1, .coords = coords + 2 * i, .labels = &lab};
    float *lr = malloc(sizeof(float) * 3 * 4 * 65536), iou[12], iou1[4];
    float *one = malloc(sizeof(float) * 4 * 65536);
    const ts_prompt_encoder *pe = m->prompt_encoder;
    const ts_mask_decoder *md = m->mask_decoder;
    REQUIRE(ts_sam_decode(pe, md, emb.data, 3, sets, lr, iou) == 0, "batch");
    for (int i = 0; i < 3; i++) {
        REQUIRE(ts_sam_decode(pe, md, emb.data, 1, &sets[i], one, iou1) == 0, "one");
        double d = test_max_abs_diff(one, lr + (size_t)i * 4 * 65536, 4 * 65536);
        CHECK(d <= 1e-4, "set %d: batch vs single %g", i, d);
        CHECK(fabs(iou1[0] - iou[4 * i]) <= 1e-5, "set %d iou", i);
    }
    free(lr);
    free(one);
    ts_npy_free(&emb);
    tinysam_model_free(m);
}


#define MAX_CASES 16

typedef struct {
    char name[320];
    float coords[64];
    int labels[32];
    ts_npy mask, low_res, iou;
} batch_case;

/* All of picture1's cases (points, boxes, mask inputs) in one call: the everything-mode path
 * (sets in parallel, shared layer-0 projections for the sets without a mask input) against
 * the official outputs. */
static void test_batch_fixtures(void) {
    if (!fixture_exists(MODEL) || !fixture_exists("reference/picture1/embedding.npy"))
        SKIP("fixtures missing");
    const int W = 769, H = 770;
    int ih, iw;
    ts_preprocess_shape(H, W, 1024, &ih, &iw);
    tinysam_model *m;
    REQUIRE(tinysam_model_load(fixture(MODEL), &m) == 0, "%s", tinysam_last_error());
    ts_npy emb;
    REQUIRE(ts_npy_load(fixture("reference/picture1/embedding.npy"), &emb) == 0, "emb");
    static batch_case cs[MAX_CASES];
    ts_prompt_set sets[MAX_CASES];
    int n = 0;
    DIR *dir = opendir(fixture("reference/picture1/prompts"));
    REQUIRE(dir, "no prompts dir");
    struct dirent *de;
    while ((de = readdir(dir)) && n < MAX_CASES) {
        if (de->d_name[0] == '.') continue;
        batch_case *c = &cs[n];
        memset(c, 0, sizeof *c);
        snprintf(c->name, sizeof c->name, "reference/picture1/prompts/%s", de->d_name);
        char path[400];
        snprintf(path, sizeof path, "%s/prompt.json", c->name);
        ts_json *pj;
        REQUIRE(ts_json_load(fixture(path), &pj) == 0, "%s", tinysam_last_error());
        const ts_json *pts = ts_json_get(pj, "points"), *lab = ts_json_get(pj, "labels"),
                      *box = ts_json_get(pj, "box");
        ts_prompt_set *s = &sets[n];
        memset(s, 0, sizeof *s);
        s->n_points = pts ? pts->n : 0;
        for (int i = 0; i < s->n_points; i++) {
            c->coords[2 * i] = model_coord((float)pts->items[i].items[0].number, iw, W);
            c->coords[2 * i + 1] = model_coord((float)pts->items[i].items[1].number, ih, H);
            c->labels[i] = (int)lab->items[i].number;
        }
        s->coords = c->coords;
        s->labels = c->labels;
        if (box && box->type == TS_JSON_ARRAY) {
            s->has_box = 1;
            for (int k = 0; k < 4; k++)
                s->box[k] = model_coord((float)box->items[k].number, k % 2 ? ih : iw,
                                        k % 2 ? H : W);
        }
        ts_json_free(pj);
        snprintf(path, sizeof path, "%s/mask_input.npy", c->name);
        if (fixture_exists(path)) {
            REQUIRE(ts_npy_load(fixture(path), &c->mask) == 0, "mask input");
            s->mask_input = c->mask.data;
        }
        snprintf(path, sizeof path, "%s/low_res.npy", c->name);
        REQUIRE(ts_npy_load(fixture(path), &c->low_res) == 0, "low_res");
        snprintf(path, sizeof path, "%s/iou.npy", c->name);
        REQUIRE(ts_npy_load(fixture(path), &c->iou) == 0, "iou");
        n++;
    }
    closedir(dir);
    REQUIRE(n >= 3, "only %d cases", n);
    float *lr = malloc(sizeof(float) * (size_t)n * 4 * 65536), iou[4 * MAX_CASES];
    REQUIRE(lr, "out of memory");
    REQUIRE(ts_sam_decode(m->prompt_encoder, m->mask_decoder, emb.data, n, sets, lr, iou) == 0,
            "%s", tinysam_last_error());
    double worst_lr = 0, worst_iou = 0;
    for (int s = 0; s < n; s++) {
        /* TinySAM's outputs are mask tokens 1..3 */
        double dl =
            test_max_abs_diff(lr + ((size_t)s * 4 + 1) * 65536, cs[s].low_res.data, 3 * 65536);
        double di = test_max_abs_diff(iou + 4 * s + 1, cs[s].iou.data, 3);
        CHECK(dl <= 5e-3, "%s: low-res max abs error %g", cs[s].name, dl);
        CHECK(di <= 1e-3, "%s: IoU max abs error %g", cs[s].name, di);
        if (dl > worst_lr) worst_lr = dl;
        if (di > worst_iou) worst_iou = di;
        ts_npy_free(&cs[s].mask);
        ts_npy_free(&cs[s].low_res);
        ts_npy_free(&cs[s].iou);
    }
    printf("  picture1, %d cases in one call: worst low-res %.2e iou %.2e\n", n, worst_lr,
           worst_iou);
    free(lr);
    ts_npy_free(&emb);
    tinysam_model_free(m);
}

/* The unfolded cross attentions (prompts of more than 16 tokens; no fixture case has that
 * many) against the same official outputs: forced for every case. */
static void test_unfolded(void) {
    int saved = ts_mask_decoder_fold_max;
    ts_mask_decoder_fold_max = 0;
    printf("  unfolded attentions:\n");
    run_image("picture1", 769, 770);
    run_image("shapes", 640, 480);
    ts_mask_decoder_fold_max = saved;
}

static void test_bad_prompts(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    tinysam_model *m;
    REQUIRE(tinysam_model_load(fixture(MODEL), &m) == 0, "%s", tinysam_last_error());
    static float data[256 * 4096];
    tinysam_embedding e = {
        .data = data, .orig_w = 100, .orig_h = 50, .input_w = 1024, .input_h = 512};
    float pt[2] = {10, 10}, nanpt[2] = {NAN, 1}, out[2] = {100, 10};
    int l1 = 1, l5 = 5;
    tinysam_prediction p;
    struct { tinysam_prompt pr; const char *needle; } cases[] = {
        {{.n_points = 1, .points = nanpt, .labels = &l1}, "finite"},
        {{.n_points = 1, .points = out, .labels = &l1}, "outside"},
        {{.n_points = 1, .points = pt, .labels = &l5}, "label"},
        {{.n_points = -1}, "points"},
        {{.n_points = 1, .points = pt, .labels = NULL}, "labels"},
        {{.has_box = 1, .box = {50, 10, 10, 40}}, "x1 < x0"},
        {{.n_points = 0}, "empty"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int rc = tinysam_predict(m, &e, &cases[i].pr, TINYSAM_PREDICT_MASKS, &p);
        CHECK(rc == TINYSAM_E_ARG && strstr(tinysam_last_error(), cases[i].needle),
              "case %zu: rc %d, '%s'", i, rc, tinysam_last_error());
    }
    tinysam_model_free(m);
}

/* ts_mask_decoder_refresh (the trainer changes the weights in place between steps): a decoder
 * refreshed after its weights changed computes exactly what one loaded from the new weights
 * does, and no longer what it computed before. */
static void test_refresh_after_weights_change(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    uint8_t *buf = NULL;
    size_t n = 0;
    ts_tensor_map *map = NULL;
    REQUIRE(ts_read_file(fixture(MODEL), (size_t)1 << 28, &buf, &n) == 0, "read");
    REQUIRE(ts_pth_load_memory(buf, n, &map) == 0, "load: %s", tinysam_last_error()); /* copies */
    free(buf);
    ts_npy emb;
    REQUIRE(ts_npy_load(fixture("reference/shapes/embedding.npy"), &emb) == 0, "emb");
    ts_prompt_encoder *pe = NULL;
    ts_mask_decoder *d1 = NULL, *d2 = NULL;
    REQUIRE(ts_prompt_encoder_load(map, &pe) == 0 && ts_mask_decoder_load(map, &d1) == 0, "dec");
    float coords[4] = {0.3f, 0.4f, 0.7f, 0.2f};
    int lab[2] = {1, 0};
    ts_prompt_set set = {.n_points = 2, .coords = coords, .labels = lab};
    const size_t Z = 4 * 65536;
    float *z0 = malloc(sizeof(float) * Z), *z1 = malloc(sizeof(float) * Z);
    float *z2 = malloc(sizeof(float) * Z), u0[4], u1[4], u2[4];
    REQUIRE(z0 && z1 && z2, "oom");
    REQUIRE(ts_sam_decode(pe, d1, emb.data, 1, &set, z0, u0) == 0, "decode");
    /* every mask_decoder tensor scaled in place by 1.05 */
    for (int i = 0; i < map->n; i++)
        if (!strncmp(map->t[i].name, "mask_decoder.", 13) && map->t[i].dtype == TS_DTYPE_F32)
            for (int64_t k = 0; k < map->t[i].numel; k++) ((float *)map->t[i].data)[k] *= 1.05f;
    ts_mask_decoder_refresh(d1);
    REQUIRE(ts_mask_decoder_load(map, &d2) == 0, "reload");
    REQUIRE(ts_sam_decode(pe, d1, emb.data, 1, &set, z1, u1) == 0 &&
                ts_sam_decode(pe, d2, emb.data, 1, &set, z2, u2) == 0,
            "decode");
    CHECK(!memcmp(z1, z2, sizeof(float) * Z) && !memcmp(u1, u2, sizeof u1),
          "refreshed decoder differs from a fresh one: %g", test_max_abs_diff(z1, z2, Z));
    CHECK(test_max_abs_diff(z0, z1, Z) > 1e-3, "the weights' change did not reach the output");
    free(z0), free(z1), free(z2);
    ts_mask_decoder_free(d1), ts_mask_decoder_free(d2);
    ts_prompt_encoder_free(pe);
    ts_npy_free(&emb);
    ts_map_free(map);
}

int main(void) {
    RUN(test_refresh_after_weights_change);
    RUN(test_picture1);
    RUN(test_shapes);
    RUN(test_batch_equals_single);
    RUN(test_batch_fixtures);
    RUN(test_bad_prompts);
    RUN(test_unfolded);
    return test_summary();
}
