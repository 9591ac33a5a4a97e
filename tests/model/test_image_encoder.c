/* test_image_encoder.c - the TinyViT encoder (src/model/tiny_vit_sam.c) against the official
 * code's outputs: sampled intermediate stages (reference/picture1/stages, tolerance 1e-4 x the
 * stage's max_abs_sample) and whole embeddings (max abs error <= 1e-3). */
#include "compare.h"
#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensor_map.h"
#include "model/image_encoder.h"
#include "nn/nn.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SIDE 1024

static ts_tensor_map *g_map;
static ts_tiny_vit *g_enc;

/* Spec §3.4: float32 (u - mean) / std, zero padding bottom/right, CHW. (A local copy so that
 * this test does not depend on the transforms module.) */
static void normalize_pad(const uint8_t *rgb, int h, int w, float *out) {
    static const float mean[3] = {123.675f, 116.28f, 103.53f}, std[3] = {58.395f, 57.12f, 57.375f};
    memset(out, 0, sizeof(float) * 3 * SIDE * SIDE);
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < h; y++)
            for (int x = 0; x < w; x++)
                out[((size_t)c * SIDE + y) * SIDE + x] =
                    ((float)rgb[((size_t)y * w + x) * 3 + c] - mean[c]) / std[c];
}

static float *load_input(const char *img) {
    char rel[128];
    snprintf(rel, sizeof rel, "reference/%s/resized.npy", img);
    ts_npy a;
    if (ts_npy_load(fixture(rel), &a) != 0) return NULL;
    float *in = NULL;
    if (a.dtype == TS_DTYPE_U8 && a.ndim == 3 && a.shape[2] == 3 && a.shape[0] <= SIDE &&
        a.shape[1] <= SIDE) {
        in = malloc(sizeof(float) * 3 * SIDE * SIDE);
        if (in) normalize_pad(a.data, (int)a.shape[0], (int)a.shape[1], in);
    }
    ts_npy_free(&a);
    return in;
}

static int ignore_unused(const char *name) {
    return strncmp(name, "image_encoder.", 14) != 0 || strstr(name, "num_batches_tracked") ||
           !strncmp(name, "image_encoder.norm_head.", 24) || !strncmp(name, "image_encoder.head.", 19);
}

static int setup(void) {
    if (g_enc) return 1;
    if (!fixture_exists("models/tinysam_vit_t_random.pth")) return 0;
    if (ts_map_load(fixture("models/tinysam_vit_t_random.pth"), &g_map) != 0) return 0;
    if (ts_tiny_vit_load(g_map, &g_enc) != 0) return 0;
    return 1;
}

static void test_load_takes_every_tensor(void) {
    if (!fixture_exists("models/tinysam_vit_t_random.pth")) SKIP("no model fixture");
    REQUIRE(setup(), "load: %s", tinysam_last_error());
    int n_taken = 0;
    for (int i = 0; i < g_map->n; i++) {
        const ts_tensor *t = &g_map->t[i];
        if (ignore_unused(t->name)) {
            CHECK(!t->used || strncmp(t->name, "image_encoder.", 14) != 0,
                  "%s should stay untaken", t->name);
            continue;
        }
        CHECK(t->used, "%s not taken", t->name);
        n_taken++;
    }
    /* spec §2.5: 27 Conv2d_BN x 5 (weight + BN without num_batches_tracked), 10 TinyViT
     * blocks x 13 (norms, linears, attention_biases), neck 6 */
    CHECK(n_taken == 27 * 5 + 10 * 13 + 6, "took %d image_encoder tensors", n_taken);
}

static void test_load_rejects_bad_shape(void) {
    if (!fixture_exists("models/tinysam_vit_t_random.pth")) SKIP("no model fixture");
    REQUIRE(setup(), "load: %s", tinysam_last_error());
    const char *key = "image_encoder.layers.2.blocks.3.attn.qkv.weight";
    ts_tensor *t = (ts_tensor *)ts_map_get(g_map, key);
    REQUIRE(t && t->ndim == 2, "no %s", key);
    int64_t saved = t->shape[0];
    t->shape[0] = 481;
    ts_tiny_vit *e = NULL;
    int rc = ts_tiny_vit_load(g_map, &e);
    t->shape[0] = saved;
    CHECK(rc < 0 && e == NULL, "bad shape accepted");
    CHECK(strstr(tinysam_last_error(), "qkv.weight") != NULL, "message: %s", tinysam_last_error());
    CHECK(ts_tiny_vit_forward(NULL, NULL, NULL, NULL, NULL) == TINYSAM_E_ARG, "NULL forward");
}

/* ---- stages ------------------------------------------------------------------------------ */

#define MAX_STAGES 16
typedef struct {
    char name[40];
    long long numel;
    double max_abs, err; /* err: max |ours - ref| over the samples */
    int seen, n_samples;
} stage_rec;

typedef struct {
    stage_rec st[MAX_STAGES];
    int n;
    int bad_numel;
} hook_state;

static void stage_hook(void *user, const char *name, const float *data, long long numel) {
    hook_state *hs = user;
    for (int i = 0; i < hs->n; i++) {
        stage_rec *s = &hs->st[i];
        if (strcmp(s->name, name)) continue;
        s->seen++;
        if (numel != s->numel) {
            hs->bad_numel++;
            return;
        }
        char rel[160];
        ts_npy idx, val;
        snprintf(rel, sizeof rel, "reference/picture1/stages/%s_idx.npy", name);
        if (ts_npy_load(fixture(rel), &idx)) return;
        snprintf(rel, sizeof rel, "reference/picture1/stages/%s_val.npy", name);
        if (ts_npy_load(fixture(rel), &val)) {
            ts_npy_free(&idx);
            return;
        }
        const int64_t *ix = idx.data;
        const float *v = val.data;
        s->err = 0;
        for (int64_t k = 0; k < idx.numel && k < val.numel; k++) {
            if (ix[k] < 0 || ix[k] >= numel) {
                s->err = INFINITY;
                break;
            }
            double d = fabs((double)data[ix[k]] - v[k]);
            if (!(d <= s->err)) s->err = d; /* NaN sticks */
        }
        s->n_samples = (int)idx.numel;
        ts_npy_free(&idx);
        ts_npy_free(&val);
        return;
    }
}

static float *load_embedding(const char *img) {
    char rel[128];
    snprintf(rel, sizeof rel, "reference/%s/embedding.npy", img);
    ts_npy a;
    if (ts_npy_load(fixture(rel), &a)) return NULL;
    float *e = NULL;
    if (a.dtype == TS_DTYPE_F32 && a.numel == 256 * 64 * 64) {
        e = malloc(sizeof(float) * a.numel);
        memcpy(e, a.data, sizeof(float) * a.numel);
    }
    ts_npy_free(&a);
    return e;
}

static void test_stages_picture1(void) {
    if (!fixture_exists("reference/picture1/stages/stages.json")) SKIP("no stage fixtures");
    REQUIRE(setup(), "load: %s", tinysam_last_error());
    ts_json *js;
    REQUIRE(ts_json_load(fixture("reference/picture1/stages/stages.json"), &js) == 0, "json");
    hook_state hs = {0};
    for (int i = 0; i < MAX_STAGES; i++) {
        const ts_json *e = ts_json_at(js, i), *nm, *sh;
        if (!e) break;
        nm = ts_json_get(e, "name");
        sh = ts_json_get(e, "shape");
        REQUIRE(nm && nm->type == TS_JSON_STRING && sh, "stages.json entry %d", i);
        stage_rec *s = &hs.st[hs.n++];
        snprintf(s->name, sizeof s->name, "%s", nm->string);
        s->numel = 1;
        for (int d = 0; ts_json_at(sh, d); d++) s->numel *= (long long)ts_json_at(sh, d)->number;
        s->max_abs = ts_json_num(e, "max_abs_sample", NAN);
    }
    ts_json_free(js);
    REQUIRE(hs.n == 10, "%d stages listed", hs.n);
    float *in = load_input("picture1"), *out = malloc(sizeof(float) * 256 * 64 * 64);
    REQUIRE(in, "picture1 input");
    REQUIRE(ts_tiny_vit_forward(g_enc, in, out, stage_hook, &hs) == 0, "forward: %s",
            tinysam_last_error());
    CHECK(hs.bad_numel == 0, "%d stages with a wrong element count", hs.bad_numel);
    for (int i = 0; i < hs.n; i++) {
        stage_rec *s = &hs.st[i];
        CHECK(s->seen == 1, "stage %s reported %d times", s->name, s->seen);
        double rel = s->err / s->max_abs;
        printf("  %-20s %5d samples  max err %.3g  (%.3g x max_abs_sample)\n", s->name,
               s->n_samples, s->err, rel);
        CHECK(s->n_samples > 0 && rel <= 1e-4, "stage %s: err %g > 1e-4 x %g", s->name, s->err,
              s->max_abs);
    }
    float *ref = load_embedding("picture1");
    REQUIRE(ref, "embedding.npy");
    double err = test_max_abs_diff(out, ref, (size_t)256 * 64 * 64);
    printf("  embedding (hooked run) max abs err %.3g\n", err);
    CHECK(err <= 1e-3, "picture1 embedding err %g", err);
    free(ref);
    free(in);
    free(out);
}

static void embedding_case(const char *img, const char *isa) {
    if (ts_nn_set_isa(isa) != 0) {
        printf("  %s: ISA %s not available here\n", img, isa);
        return;
    }
    float *in = load_input(img), *out = malloc(sizeof(float) * 256 * 64 * 64);
    float *ref = load_embedding(img);
    REQUIRE(in && ref, "%s fixtures", img);
    for (size_t i = 0; i < (size_t)256 * 64 * 64; i++) out[i] = NAN;
    REQUIRE(ts_tiny_vit_forward(g_enc, in, out, NULL, NULL) == 0, "forward: %s",
            tinysam_last_error());
    double err = test_max_abs_diff(out, ref, (size_t)256 * 64 * 64);
    printf("  %s [%s] embedding max abs err %.3g\n", img, isa, err);
    CHECK(err <= 1e-3, "%s [%s] embedding err %g", img, isa, err);
    free(in);
    free(out);
    free(ref);
}

static void test_embeddings(void) {
    if (!fixture_exists("reference/shapes/embedding.npy")) SKIP("no embedding fixtures");
    REQUIRE(setup(), "load: %s", tinysam_last_error());
    const char *best = ts_nn_isa_name();
    embedding_case("picture1", best);
    embedding_case("shapes", best);
    if (strcmp(best, "avx2")) embedding_case("picture1", "avx2");
    ts_nn_set_isa(best);
}

int main(void) {
    RUN(test_load_takes_every_tensor);
    RUN(test_load_rejects_bad_shape);
    RUN(test_stages_picture1);
    RUN(test_embeddings);
    ts_tiny_vit_free(g_enc);
    ts_map_free(g_map);
    return test_summary();
}
