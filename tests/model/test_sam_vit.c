/* test_sam_vit.c - SAM's ViT image encoder (src/model/image_encoder_vit.c): configuration
 * detection from shapes (the fixture's own config.json, and the real ViT-B/L/H shapes), loading
 * with exact shapes and errors naming the key, and parity of the embedding with the official
 * segment-anything code (reference/sam_vit_tiny, max abs error <= 1e-3). */
#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensor_map.h"
#include "model/image_encoder_vit.h"
#include "model/transforms.h"
#include "nn/nn.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MODEL "models/sam_vit_tiny_random_fp16.pth"
#define N_OUT ((size_t)256 * 64 * 64)

static ts_tensor_map *g_map;

static int setup(void) {
    if (g_map) return 1;
    return ts_map_load(fixture(MODEL), &g_map) == 0;
}

/* ---- detection -------------------------------------------------------------------------- */

static void test_detect_fixture(void) {
    if (!fixture_exists(MODEL)) SKIP("no model fixture");
    REQUIRE(setup(), "load: %s", tinysam_last_error());
    ts_json *js;
    REQUIRE(ts_json_load(fixture("reference/sam_vit_tiny/config.json"), &js) == 0, "config.json");
    ts_sam_vit_config c;
    REQUIRE(ts_sam_vit_detect(g_map, &c) == 0, "detect: %s", tinysam_last_error());
    CHECK(c.embed_dim == (int)ts_json_num(js, "encoder_embed_dim", -1), "width %d", c.embed_dim);
    CHECK(c.depth == (int)ts_json_num(js, "encoder_depth", -1), "depth %d", c.depth);
    CHECK(c.num_heads == (int)ts_json_num(js, "encoder_num_heads", -1), "heads %d", c.num_heads);
    CHECK(c.head_dim * c.num_heads == c.embed_dim, "head dim %d", c.head_dim);
    CHECK(c.window_size == (int)ts_json_num(js, "window_size", -1), "window %d", c.window_size);
    CHECK(c.patch == (int)ts_json_num(js, "patch_size", -1), "patch %d", c.patch);
    CHECK(c.out_chans == (int)ts_json_num(js, "out_chans", -1), "out chans %d", c.out_chans);
    const ts_json *g = ts_json_get(js, "encoder_global_attn_indexes");
    REQUIRE(g && g->type == TS_JSON_ARRAY, "global indexes");
    CHECK(c.n_global == g->n, "%d global blocks, expected %d", c.n_global, g->n);
    for (int i = 0; i < g->n && i < c.n_global; i++)
        CHECK(c.global_idx[i] == (int)ts_json_at(g, i)->number, "global[%d] = %d", i,
              c.global_idx[i]);
    ts_json_free(js);
}

/* A map holding only the shapes of an ImageEncoderViT (detection never reads data). */
typedef struct {
    ts_tensor_map m;
    ts_tensor t[40 * 20];
    char names[40 * 20][96];
} shape_map;

static void add(shape_map *s, const char *name, int ndim, int a, int b, int c, int d) {
    ts_tensor *t = &s->t[s->m.n];
    snprintf(s->names[s->m.n], sizeof s->names[0], "%s", name);
    memset(t, 0, sizeof(*t));
    t->name = s->names[s->m.n++];
    t->dtype = t->file_dtype = TS_DTYPE_F32;
    t->ndim = ndim;
    int v[4] = {a, b, c, d};
    t->numel = 1;
    for (int i = 0; i < ndim; i++)
        t->numel *= (t->shape[i] = v[i]);
}

static void build_shapes(shape_map *s, int C, int depth, int heads, const int *glob, int n_glob) {
    memset(&s->m, 0, sizeof(s->m));
    s->m.t = s->t;
    char n[96];
    add(s, "image_encoder.patch_embed.proj.weight", 4, C, 3, 16, 16);
    add(s, "image_encoder.patch_embed.proj.bias", 1, C, 0, 0, 0);
    add(s, "image_encoder.pos_embed", 4, 1, 64, 64, C);
    for (int b = 0; b < depth; b++) {
        int g = 0;
        for (int i = 0; i < n_glob; i++)
            g |= glob[i] == b;
        int len = g ? 127 : 27;
        snprintf(n, sizeof n, "image_encoder.blocks.%d.norm1.weight", b);
        add(s, n, 1, C, 0, 0, 0);
        snprintf(n, sizeof n, "image_encoder.blocks.%d.attn.rel_pos_h", b);
        add(s, n, 2, len, C / heads, 0, 0);
        snprintf(n, sizeof n, "image_encoder.blocks.%d.attn.rel_pos_w", b);
        add(s, n, 2, len, C / heads, 0, 0);
        snprintf(n, sizeof n, "image_encoder.blocks.%d.attn.qkv.weight", b);
        add(s, n, 2, 3 * C, C, 0, 0);
    }
    add(s, "image_encoder.neck.0.weight", 4, 256, C, 1, 1);
}

static void test_detect_real_shapes(void) {
    static const int gb[] = {2, 5, 8, 11}, gl[] = {5, 11, 17, 23}, gh[] = {7, 15, 23, 31};
    static const struct {
        const char *name;
        int C, depth, heads;
        const int *glob;
    } v[] = {{"B", 768, 12, 12, gb}, {"L", 1024, 24, 16, gl}, {"H", 1280, 32, 16, gh}};
    static shape_map s;
    for (int k = 0; k < 3; k++) {
        build_shapes(&s, v[k].C, v[k].depth, v[k].heads, v[k].glob, 4);
        ts_sam_vit_config c;
        int rc = ts_sam_vit_detect(&s.m, &c);
        REQUIRE(rc == 0, "ViT-%s: %s", v[k].name, tinysam_last_error());
        CHECK(c.embed_dim == v[k].C && c.depth == v[k].depth && c.num_heads == v[k].heads &&
                  c.head_dim == v[k].C / v[k].heads && c.window_size == 14 && c.out_chans == 256 &&
                  c.n_global == 4,
              "ViT-%s: %d/%d/%d hd %d ws %d globals %d", v[k].name, c.embed_dim, c.depth,
              c.num_heads, c.head_dim, c.window_size, c.n_global);
        for (int i = 0; i < 4 && i < c.n_global; i++)
            CHECK(c.global_idx[i] == v[k].glob[i], "ViT-%s global[%d] = %d", v[k].name, i,
                  c.global_idx[i]);
    }
    /* a block index past the contiguous run is named */
    build_shapes(&s, 768, 12, 12, gb, 4);
    add(&s, "image_encoder.blocks.13.norm2.bias", 1, 768, 0, 0, 0);
    ts_sam_vit_config c;
    CHECK(ts_sam_vit_detect(&s.m, &c) < 0, "stray block accepted");
    CHECK(strstr(tinysam_last_error(), "image_encoder.blocks.13.norm2.bias") != NULL, "message: %s",
          tinysam_last_error());
    /* head dim disagreeing between blocks */
    build_shapes(&s, 768, 12, 12, gb, 4);
    for (int i = 0; i < s.m.n; i++)
        if (!strcmp(s.t[i].name, "image_encoder.blocks.4.attn.rel_pos_h")) s.t[i].shape[1] = 48;
    CHECK(ts_sam_vit_detect(&s.m, &c) < 0, "mixed head dims accepted");
    CHECK(strstr(tinysam_last_error(), "image_encoder.blocks.4.attn.rel_pos_h") != NULL,
          "message: %s", tinysam_last_error());
}

/* ---- loading ------------------------------------------------------------------------------ */

static void test_load_takes_every_tensor(void) {
    if (!fixture_exists(MODEL)) SKIP("no model fixture");
    REQUIRE(setup(), "load: %s", tinysam_last_error());
    for (int i = 0; i < g_map->n; i++)
        g_map->t[i].used = 0;
    ts_sam_vit *e = NULL;
    REQUIRE(ts_sam_vit_load(g_map, &e) == 0, "load: %s", tinysam_last_error());
    int n_taken = 0;
    for (int i = 0; i < g_map->n; i++) {
        const ts_tensor *t = &g_map->t[i];
        int ours = !strncmp(t->name, "image_encoder.", 14);
        CHECK(t->used == ours, "%s %s", t->name, ours ? "not taken" : "taken");
        n_taken += ours && t->used;
    }
    /* patch embed 2 + pos 1 + 4 blocks x 14 + neck 6 */
    CHECK(n_taken == 3 + 4 * 14 + 6, "took %d tensors", n_taken);
    ts_sam_vit_free(e);
}

/* Loading fails, and the message names `key`. */
static void expect_rejected(const char *key, const char *what) {
    ts_sam_vit *e = NULL;
    int rc = ts_sam_vit_load(g_map, &e);
    CHECK(rc < 0 && e == NULL, "%s: accepted", what);
    CHECK(strstr(tinysam_last_error(), key) != NULL, "%s: message '%s' does not name %s", what,
          tinysam_last_error(), key);
}

static void test_load_rejects_bad_tensors(void) {
    if (!fixture_exists(MODEL)) SKIP("no model fixture");
    REQUIRE(setup(), "load: %s", tinysam_last_error());
    /* a wrong shape */
    const char *key = "image_encoder.blocks.2.attn.qkv.weight";
    ts_tensor *t = (ts_tensor *)ts_map_get(g_map, key);
    REQUIRE(t && t->ndim == 2, "no %s", key);
    int64_t saved = t->shape[0];
    t->shape[0] = 385;
    expect_rejected(key, "qkv shape");
    t->shape[0] = saved;
    /* a wrong key: the expected name is reported missing */
    key = "image_encoder.blocks.3.mlp.lin1.weight";
    REQUIRE((t = (ts_tensor *)ts_map_get(g_map, key)), "no %s", key);
    char *name = t->name;
    t->name = (char *)"image_encoder.blocks.3.mlp.fc1.weight";
    expect_rejected(key, "renamed lin1");
    t->name = name;
    /* a relative-position table whose head dim disagrees */
    key = "image_encoder.blocks.1.attn.rel_pos_w";
    REQUIRE((t = (ts_tensor *)ts_map_get(g_map, key)), "no %s", key);
    saved = t->shape[1];
    t->shape[1] = 16;
    expect_rejected(key, "rel_pos_w head dim");
    t->shape[1] = saved;
    /* a windowed table of a different length than the other windowed blocks */
    key = "image_encoder.blocks.2.attn.rel_pos_h";
    REQUIRE((t = (ts_tensor *)ts_map_get(g_map, key)), "no %s", key);
    saved = t->shape[0];
    t->shape[0] = 13;
    expect_rejected(key, "rel_pos_h length");
    t->shape[0] = saved;
    CHECK(ts_sam_vit_forward(NULL, NULL, NULL) == TINYSAM_E_ARG, "NULL forward");
    CHECK(ts_sam_vit_load(NULL, NULL) == TINYSAM_E_ARG, "NULL load");
}

/* ---- parity ------------------------------------------------------------------------------- */

static void test_parity_picture1(void) {
    if (!fixture_exists(MODEL) || !fixture_exists("reference/sam_vit_tiny/picture1/embedding.npy"))
        SKIP("no sam_vit_tiny fixtures");
    REQUIRE(setup(), "load: %s", tinysam_last_error());
    ts_sam_vit *e = NULL;
    REQUIRE(ts_sam_vit_load(g_map, &e) == 0, "load: %s", tinysam_last_error());
    ts_npy img, ref;
    REQUIRE(ts_npy_load(fixture("reference/picture1/resized.npy"), &img) == 0, "resized.npy");
    REQUIRE(img.dtype == TS_DTYPE_U8 && img.ndim == 3 && img.shape[2] == 3 &&
                img.shape[0] <= 1024 && img.shape[1] <= 1024,
            "resized.npy layout");
    REQUIRE(ts_npy_load(fixture("reference/sam_vit_tiny/picture1/embedding.npy"), &ref) == 0,
            "embedding.npy");
    REQUIRE(ref.dtype == TS_DTYPE_F32 && (size_t)ref.numel == N_OUT, "embedding layout");
    float *in = malloc(sizeof(float) * 3 * 1024 * 1024), *out = malloc(sizeof(float) * N_OUT);
    REQUIRE(in && out, "oom");
    ts_normalize_pad(img.data, (int)img.shape[0], (int)img.shape[1], in);
    const char *best = ts_nn_isa_name();
    static const char *const isas[] = {"best", "avx2"}; /* CI reruns all with ISA=scalar */
    for (int k = 0; k < 2; k++) {
        if (k && (!strcmp(best, isas[k]) || ts_nn_set_isa(isas[k]) != 0)) continue;
        for (size_t i = 0; i < N_OUT; i++)
            out[i] = NAN;
        CHECK(ts_sam_vit_forward(e, in, out) == 0, "forward: %s", tinysam_last_error());
        double err = 0;
        const float *r = ref.data;
        for (size_t i = 0; i < N_OUT; i++) {
            double d = fabs((double)out[i] - (double)r[i]);
            if (!(d <= err)) err = d; /* NaN sticks */
        }
        printf("  picture1 [%s] embedding max abs err %.3g\n", ts_nn_isa_name(), err);
        CHECK(err <= 1e-3, "[%s] embedding err %g", ts_nn_isa_name(), err);
    }
    ts_nn_set_isa(best);
    free(in);
    free(out);
    ts_npy_free(&img);
    ts_npy_free(&ref);
    ts_sam_vit_free(e);
}

/* get_rel_pos resamples a table that is not 2*size-1 rows long with F.interpolate(linear,
 * align_corners=False). For a table linear in the row index, a + b*i, that gives
 * a + b*clamp((o + 0.5) * len/out - 0.5, 0, len-1): an encoder given the short table must match
 * one given that 27-row table directly. */
static double max_diff(const float *a, const float *b) {
    double m = 0;
    for (size_t i = 0; i < N_OUT; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

static int forward_with_table(const char *key, float *tab, int len, const float *in, float *out) {
    ts_tensor *t = (ts_tensor *)ts_map_get(g_map, key);
    void *data = t->data;
    int64_t rows = t->shape[0], numel = t->numel;
    t->data = tab;
    t->shape[0] = len;
    t->numel = (int64_t)len * t->shape[1];
    ts_sam_vit *e = NULL;
    int rc = ts_sam_vit_load(g_map, &e);
    if (rc == 0) rc = ts_sam_vit_forward(e, in, out);
    ts_sam_vit_free(e);
    t->data = data;
    t->shape[0] = rows;
    t->numel = numel;
    return rc;
}

static void test_rel_pos_resampling(void) {
    if (!fixture_exists(MODEL)) SKIP("no model fixture");
    REQUIRE(setup(), "load: %s", tinysam_last_error());
    const char *key = "image_encoder.blocks.0.attn.rel_pos_w"; /* a windowed block: 27 rows */
    const ts_tensor *t = ts_map_get(g_map, key);
    REQUIRE(t && t->ndim == 2 && t->shape[0] == 27, "%s", key);
    const int hd = (int)t->shape[1];
    float *in = malloc(sizeof(float) * 3 * 1024 * 1024), *o_ref = malloc(sizeof(float) * N_OUT);
    float *o_short = malloc(sizeof(float) * N_OUT), *o_full = malloc(sizeof(float) * N_OUT);
    float *src = malloc(sizeof(float) * 41 * hd), *full = malloc(sizeof(float) * 27 * hd);
    REQUIRE(in && o_ref && o_short && o_full && src && full, "oom");
    for (size_t i = 0; i < (size_t)3 * 1024 * 1024; i++) /* smooth synthetic image */
        in[i] = sinf((float)(i % 1024) * 0.01f) + cosf((float)(i / 1024 % 1024) * 0.013f);
    ts_sam_vit *e = NULL;
    REQUIRE(ts_sam_vit_load(g_map, &e) == 0, "load: %s", tinysam_last_error());
    REQUIRE(ts_sam_vit_forward(e, in, o_ref) == 0, "forward: %s", tinysam_last_error());
    ts_sam_vit_free(e);
    static const int lens[] = {9, 41}; /* up- and down-sampling */
    for (int k = 0; k < 2; k++) {
        const int len = lens[k];
        for (int i = 0; i < len; i++)
            for (int d = 0; d < hd; d++)
                src[i * hd + d] =
                    0.1f * (float)(d % 7 - 3) + 0.4f * (float)(d % 3 + 1) * (float)i / (float)len;
        for (int o = 0; o < 27; o++) {
            double s = (o + 0.5) * ((double)len / 27.0) - 0.5;
            s = s < 0 ? 0 : s > len - 1 ? len - 1 : s;
            for (int d = 0; d < hd; d++)
                full[o * hd + d] = (float)(0.1 * (d % 7 - 3) + 0.4 * (d % 3 + 1) * s / len);
        }
        REQUIRE(forward_with_table(key, src, len, in, o_short) == 0, "len %d: %s", len,
                tinysam_last_error());
        REQUIRE(forward_with_table(key, full, 27, in, o_full) == 0, "27: %s", tinysam_last_error());
        double err = max_diff(o_short, o_full), moved = max_diff(o_full, o_ref);
        printf("  rel_pos_w %d -> 27 rows: max abs diff %.3g (the table moves the output by "
               "%.3g)\n",
               len, err, moved);
        CHECK(err <= 1e-4 && moved > 1e-2, "len %d: diff %g, effect %g", len, err, moved);
    }
    free(in);
    free(o_ref);
    free(o_short);
    free(o_full);
    free(src);
    free(full);
}

int main(void) {
    RUN(test_detect_fixture);
    RUN(test_detect_real_shapes);
    RUN(test_load_takes_every_tensor);
    RUN(test_load_rejects_bad_tensors);
    RUN(test_parity_picture1);
    RUN(test_rel_pos_resampling);
    ts_map_free(g_map);
    return test_summary();
}
