/* test_load_cache.c - the load cache of our float safetensors (io/tensor_map.h): written by
 * tinysam_model_save_safetensors (as `convert` does), read in place at load, and a model
 * loaded with it is, bit for bit, the model loaded from the same tensors without it (packs,
 * dense PE, an encode and a decode); a tag of another ISA or layout version, or a file
 * without a digest, fall back to computing (the same bytes); a corrupted cache is refused by
 * the data digest; the file stays a valid safetensors file (contiguous data, as the reference
 * library requires); ts_wpack_refresh on a pack read from the file copies it first. */
#include "core.h"
#include "io/json.h"
#include "io/tensor_map.h"
#include "model/sam.h"
#include "model/sam_decoder.h"
#include "model/sam_decoder_internal.h"
#include "nn/nn.h"
#include "test.h"
#include "tinysam.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL "models/tinysam_vit_t_random.pth"
#define IMAGE "images/picture1.jpg"
#define EMB_N ((size_t)256 * 64 * 64)

static char g_cached[4200], g_plain[4200];
static int g_ready;

/* The two files: the fixture converted (with its cache) and the same tensors without one. */
static void make_files(void) {
    if (g_ready || !fixture_exists(MODEL)) return;
    snprintf(g_cached, sizeof g_cached, "%s", tmp_path("load_cache.safetensors"));
    snprintf(g_plain, sizeof g_plain, "%s", tmp_path("load_cache_plain.safetensors"));
    tinysam_model *m = NULL;
    REQUIRE(tinysam_model_load(fixture(MODEL), &m) == 0, "%s", tinysam_last_error());
    int rc = tinysam_model_save_safetensors(m, g_cached);
    if (!rc) rc = ts_safetensors_save(g_plain, m->map, 0, NULL, NULL);
    tinysam_model_free(m);
    REQUIRE(rc == 0, "%s", tinysam_last_error());
    g_ready = 1;
}

static uint8_t *slurp(const char *path, size_t *n) {
    uint8_t *d = NULL;
    if (ts_read_file(path, (size_t)1 << 30, &d, n)) {
        fprintf(stderr, "%s\n", tinysam_last_error());
        abort();
    }
    return d;
}

static void spit(const char *path, const uint8_t *d, size_t n) {
    FILE *f = fopen(path, "wb");
    int ok = f && fwrite(d, 1, n, f) == n;
    if (f && fclose(f)) ok = 0;
    if (!ok) abort();
}

/* A copy of the cached file with the header string `from` replaced by `to` (same length). */
static const char *edited_copy(const char *name, const char *from, const char *to) {
    size_t n;
    uint8_t *d = slurp(g_cached, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | d[i];
    char *h = (char *)d + 8, *at = memmem(h, (size_t)hl, from, strlen(from));
    if (!at || strlen(from) != strlen(to)) abort(); /* the writer changed: fix the test */
    memcpy(at, to, strlen(to));
    const char *p = tmp_path(name);
    spit(p, d, n);
    free(d);
    return p;
}

/* The model's packs written out as an image (ts_wpack_image_write), for comparison. */
static float *pack_image(const tinysam_model *m, size_t *bytes) {
    *bytes = ts_wpack_image_bytes(m->packs, m->n_packs);
    float *d = malloc(*bytes + 1);
    int32_t *dir = malloc(sizeof(int32_t) * 5 * (size_t)m->n_packs + 1);
    if (!d || !dir || ts_wpack_image_write(m->packs, m->n_packs, dir, d)) abort();
    free(dir);
    return d;
}

static int n_borrowed(const tinysam_model *m) {
    int n = 0;
    for (int i = 0; i < m->n_packs; i++) n += ts_wpack_borrowed(m->packs[i]);
    return n;
}

/* The same packs and dense PE as ref (a model loaded from the plain file, same ISA). */
static void same_model(const tinysam_model *a, const tinysam_model *ref, const char *what) {
    size_t na, nr;
    float *ia = pack_image(a, &na), *ir = pack_image(ref, &nr);
    CHECK(a->n_packs == ref->n_packs && na == nr && !memcmp(ia, ir, na),
          "%s: packs differ from the plain file's", what);
    CHECK(!memcmp(ts_prompt_dense_pe(a->prompt_encoder), ts_prompt_dense_pe(ref->prompt_encoder),
                  sizeof(float) * 4096 * 256),
          "%s: dense PE differs from the plain file's", what);
    free(ia);
    free(ir);
}

static void test_cache_written_and_read_in_place(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    make_files();
    REQUIRE(g_ready, "files");
    ts_tensor_map *map = NULL;
    REQUIRE(ts_map_load(g_cached, &map) == 0, "%s", tinysam_last_error());
    CHECK(map->n_cache == 3 && !strcmp(map->integrity, "xxh3-64"), "cache of %d tensors",
          map->n_cache);
    for (int i = 0; i < map->n; i++)
        CHECK(strncmp(map->t[i].name, TS_CACHE_PREFIX, strlen(TS_CACHE_PREFIX)),
              "cache tensor %s in the tensor list", map->t[i].name);
    char tag[64];
    ts_wpack_layout_tag(NULL, tag, sizeof tag);
    CHECK(!strcmp(map->cache_tag, tag), "tag '%s', running '%s'", map->cache_tag, tag);
    /* valid for the reference library: data offsets contiguous from 0 to the end */
    size_t n;
    uint8_t *d = slurp(g_cached, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | d[i];
    ts_json *h = NULL;
    REQUIRE(ts_json_parse((const char *)d + 8, (size_t)hl, &h) == 0, "header");
    uint64_t covered = 0;
    int spans = 0;
    for (int i = 0; i < h->n; i++) {
        const ts_json *of = ts_json_get(&h->items[i], "data_offsets");
        if (!of) continue;
        covered += (uint64_t)(of->items[1].number - of->items[0].number);
        spans++;
    }
    CHECK(covered == n - 8 - hl && spans == 439 + 3, "data: %llu of %llu bytes in %d tensors",
          (unsigned long long)covered, (unsigned long long)(n - 8 - hl), spans);
    ts_json_free(h);
    free(d);
    ts_map_free(map);

    tinysam_model *a = NULL, *b = NULL;
    REQUIRE(tinysam_model_load(g_cached, &a) == 0, "%s", tinysam_last_error());
    REQUIRE(tinysam_model_load(g_plain, &b) == 0, "%s", tinysam_last_error());
    CHECK(a->map->cache_ok && a->prompt_encoder->dense_pe_cached, "cache not used");
    CHECK(n_borrowed(a) == a->n_packs && a->n_packs > 50 && n_borrowed(b) == 0,
          "%d of %d packs read in place", n_borrowed(a), a->n_packs);
    same_model(a, b, "cached");
    /* outputs: one encode and one decode each, bit for bit (not under ASan or the portable
     * kernels, both slow: the same packs and tables, checked above, run the same code) */
    if (test_sanitized() || test_portable_kernels()) goto refresh;
    tinysam_image img;
    REQUIRE(tinysam_image_load(fixture(IMAGE), 0, &img) == 0, "%s", tinysam_last_error());
    tinysam_embedding *ea = NULL, *eb = NULL;
    REQUIRE(tinysam_encode(a, &img, &ea) == 0 && tinysam_encode(b, &img, &eb) == 0, "%s",
            tinysam_last_error());
    CHECK(!memcmp(tinysam_embedding_data(ea), tinysam_embedding_data(eb), EMB_N * sizeof(float)),
          "embeddings differ");
    float pt[2] = {380, 300};
    int lab = 1;
    tinysam_prompt pr = {.n_points = 1, .points = pt, .labels = &lab};
    tinysam_prediction pa, pb;
    REQUIRE(tinysam_predict(a, ea, &pr, 0, &pa) == 0 && tinysam_predict(b, eb, &pr, 0, &pb) == 0,
            "%s", tinysam_last_error());
    CHECK(!memcmp(pa.low_res, pb.low_res, (size_t)3 * 256 * 256 * sizeof(float)) &&
              !memcmp(pa.iou, pb.iou, sizeof pa.iou),
          "decodes differ");
    tinysam_prediction_free(&pa);
    tinysam_prediction_free(&pb);
    tinysam_embedding_free(ea);
    tinysam_embedding_free(eb);
    tinysam_image_free(&img);
refresh:
    /* the trainer's refresh of a pack read from the file: a private copy, same bytes */
    ts_mask_decoder_refresh(a->mask_decoder);
    CHECK(n_borrowed(a) < a->n_packs, "refresh left the decoder's packs in the file");
    same_model(a, b, "refreshed");
    tinysam_model_free(a);
    tinysam_model_free(b);
}

/* Another layout version or ISA in the tag, another running ISA, no digest: computed at load,
 * the same bytes as from the plain file. */
static void test_cache_fallbacks(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    make_files();
    REQUIRE(g_ready, "files");
    tinysam_model *b = NULL, *m = NULL;
    REQUIRE(tinysam_model_load(g_plain, &b) == 0, "%s", tinysam_last_error());
    const char *cases[2][3] = {
        {"load_cache_v9.safetensors", "\"wpack-v1;", "\"wpack-v9;"},
        {"load_cache_nodigest.safetensors", "\"tinysam.digest\"", "\"tinysam.digesX\""},
    };
    for (int c = 0; c < 2; c++) {
        const char *p = edited_copy(cases[c][0], cases[c][1], cases[c][2]);
        REQUIRE(tinysam_model_load(p, &m) == 0, "%s: %s", cases[c][0], tinysam_last_error());
        CHECK(!m->map->cache_ok && n_borrowed(m) == 0 && !m->prompt_encoder->dense_pe_cached,
              "%s: cache used", cases[c][0]);
        same_model(m, b, cases[c][0]);
        tinysam_model_free(m);
        remove(p);
    }
    tinysam_model_free(b);
    /* a file packed for this ISA loaded under another one (TINYSAM_ISA=avx2 / scalar) */
    const char *isa = ts_nn_isa_name(), *other = strcmp(isa, "scalar") ? "scalar" : NULL;
    if (!strcmp(isa, "avx512") && ts_nn_isa_available("avx2")) other = "avx2";
    if (other) {
        REQUIRE(ts_nn_set_isa(other) == 0, "set %s", other);
        REQUIRE(tinysam_model_load(g_cached, &m) == 0 && tinysam_model_load(g_plain, &b) == 0,
                "%s", tinysam_last_error());
        CHECK(!m->map->cache_ok && n_borrowed(m) == 0, "%s: cache of %s used", other, isa);
        same_model(m, b, other);
        tinysam_model_free(m);
        tinysam_model_free(b);
        ts_nn_set_isa(isa);
    }
}

/* One flipped byte inside the cache: refused by the data digest, naming the file. */
static void test_cache_corrupted_refused(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    make_files();
    REQUIRE(g_ready, "files");
    ts_tensor_map *map = NULL;
    REQUIRE(ts_map_load(g_cached, &map) == 0, "%s", tinysam_last_error());
    size_t at[2] = {map->cache_begin + 12345, map->cache_end - 3};
    ts_map_free(map);
    for (int k = 0; k < 2; k++) {
        size_t n;
        uint8_t *d = slurp(g_cached, &n);
        d[at[k]] ^= 0x10;
        const char *p = tmp_path("load_cache_bad.safetensors");
        spit(p, d, n);
        free(d);
        tinysam_model *m = NULL;
        CHECK(tinysam_model_load(p, &m) != 0 && strstr(tinysam_last_error(), "digest"),
              "flipped cache byte %zu: %s", at[k], m ? "loaded" : tinysam_last_error());
        tinysam_model_free(m);
        remove(p);
    }
}

int main(void) {
    RUN(test_cache_written_and_read_in_place);
    RUN(test_cache_fallbacks);
    RUN(test_cache_corrupted_refused);
    if (g_ready) {
        remove(g_cached);
        remove(g_plain);
    }
    return test_summary();
}
