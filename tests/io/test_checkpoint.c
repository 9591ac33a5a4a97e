/* test_checkpoint.c - the .pth (ZIP and legacy containers, float32/float16) and safetensors
 * loaders: identical tensors across containers, round trips, and hostile files rejected. */
#include "core.h"
#include "io/tensor_map.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>

#define ZIP32 "models/tinysam_vit_t_random.pth"
#define LEG16 "models/tinysam_vit_t_random_fp16_legacy.pth"
#define SAM16 "models/sam_vit_tiny_random_fp16.pth"

static int same_maps(const ts_tensor_map *a, const ts_tensor_map *b) {
    if (a->n != b->n) return 0;
    for (int i = 0; i < a->n; i++) {
        const ts_tensor *x = &a->t[i], *y = ts_map_get(b, x->name);
        if (!y || x->dtype != y->dtype || x->ndim != y->ndim || x->numel != y->numel) return 0;
        if (memcmp(x->shape, y->shape, sizeof x->shape[0] * (size_t)x->ndim)) return 0;
        size_t es = x->dtype == TS_DTYPE_I64 ? 8 : 4;
        if (memcmp(x->data, y->data, (size_t)x->numel * es)) return 0;
    }
    return 1;
}

static void test_zip_fp32(void) {
    if (!fixture_exists(ZIP32)) SKIP("fixtures missing");
    ts_tensor_map *m;
    REQUIRE(ts_map_load(fixture(ZIP32), &m) == 0, "%s", tinysam_last_error());
    long long values = 0;
    int n_i64 = 0;
    for (int i = 0; i < m->n; i++) {
        values += m->t[i].numel;
        n_i64 += m->t[i].dtype == TS_DTYPE_I64;
    }
    CHECK(m->n == 439, "%d tensors", m->n);
    CHECK(values == 10140231, "%lld values", values);
    CHECK(n_i64 == 27, "%d int64 tensors (num_batches_tracked)", n_i64);
    CHECK(!strcmp(m->format, "pth-zip"), "format %s", m->format);
    const ts_tensor *t = ts_map_get(m, "mask_decoder.output_upscaling.0.weight");
    CHECK(t && t->ndim == 4 && t->shape[0] == 256 && t->shape[1] == 64 && t->shape[2] == 2, "shape");
    t = ts_map_get(m, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix");
    CHECK(t && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 128, "gaussian matrix");
    t = ts_map_get(m, "image_encoder.layers.2.blocks.0.attn.attention_biases");
    CHECK(t && t->shape[0] == 5 && t->shape[1] == 196, "attention biases");
    t = ts_map_get(m, "image_encoder.patch_embed.seq.0.bn.num_batches_tracked");
    CHECK(t && t->ndim == 0 && t->numel == 1 && t->dtype == TS_DTYPE_I64, "scalar int64");
    /* take: shape check and message */
    CHECK(ts_map_take(m, "mask_decoder.iou_token.weight", 2, 1, 256) != NULL, "take");
    CHECK(ts_map_take(m, "mask_decoder.iou_token.weight", 2, 256, 1) == NULL &&
              strstr(tinysam_last_error(), "mask_decoder.iou_token.weight"),
          "wrong shape accepted: %s", tinysam_last_error());
    CHECK(ts_map_take(m, "nope", 1, 1) == NULL && strstr(tinysam_last_error(), "missing"), "missing");
    ts_map_free(m);
}

static void test_legacy_fp16_identical(void) {
    if (!fixture_exists(LEG16)) SKIP("fixtures missing");
    ts_tensor_map *a, *b;
    REQUIRE(ts_map_load(fixture(ZIP32), &a) == 0, "%s", tinysam_last_error());
    REQUIRE(ts_map_load(fixture(LEG16), &b) == 0, "%s", tinysam_last_error());
    CHECK(!strcmp(b->format, "pth-legacy"), "format %s", b->format);
    CHECK(b->t[0].file_dtype == TS_DTYPE_F16 || b->t[1].file_dtype == TS_DTYPE_F16, "fp16 storage");
    CHECK(same_maps(a, b), "legacy fp16 and ZIP fp32 differ");
    ts_map_free(a);
    ts_map_free(b);
}

static void test_sam_fp16_zip(void) {
    if (!fixture_exists(SAM16)) SKIP("fixtures missing");
    ts_tensor_map *m;
    REQUIRE(ts_map_load(fixture(SAM16), &m) == 0, "%s", tinysam_last_error());
    const ts_tensor *t = ts_map_get(m, "image_encoder.patch_embed.proj.weight");
    CHECK(t && t->shape[0] == 128 && t->shape[1] == 3 && t->shape[2] == 16, "patch embed");
    CHECK(t && t->file_dtype == TS_DTYPE_F16 && t->dtype == TS_DTYPE_F32, "fp16 -> f32");
    ts_map_free(m);
}

static void test_safetensors_roundtrip(void) {
    if (!fixture_exists(ZIP32)) SKIP("fixtures missing");
    ts_tensor_map *a, *b;
    REQUIRE(ts_map_load(fixture(LEG16), &a) == 0, "%s", tinysam_last_error());
    const char *p = tmp_path("rt.safetensors");
    const char *k[] = {"tinysam.family"}, *v[] = {"vit_t"};
    REQUIRE(ts_safetensors_save(p, a, 1, k, v) == 0, "%s", tinysam_last_error());
    REQUIRE(ts_map_load(p, &b) == 0, "%s", tinysam_last_error());
    CHECK(!strcmp(b->format, "safetensors"), "format");
    CHECK(same_maps(a, b), "safetensors round trip differs");
    CHECK(b->metadata_json && strstr(b->metadata_json, "\"tinysam.family\":\"vit_t\""), "metadata");
    const ts_tensor *t = ts_map_get(b, "mask_decoder.mask_tokens.weight");
    const uint8_t *base = b->map_base;
    CHECK(t && (const uint8_t *)t->data >= base && (const uint8_t *)t->data < base + b->map_size,
          "float32 tensor not memory-mapped in place");
    ts_map_free(a);
    ts_map_free(b);
    remove(p);
}

static int write_file(const char *p, const uint8_t *d, size_t n) {
    FILE *f = fopen(p, "wb");
    if (!f) return -1;
    fwrite(d, 1, n, f);
    fclose(f);
    return 0;
}

/* Every corrupted copy must fail cleanly (the sanitizer build checks "cleanly"). */
static void expect_reject(const char *label, const uint8_t *d, size_t n) {
    const char *p = tmp_path("bad.bin");
    write_file(p, d, n);
    ts_tensor_map *m = NULL;
    int rc = ts_map_load(p, &m);
    CHECK(rc != 0 && m == NULL, "%s accepted", label);
    CHECK(rc == 0 || strlen(tinysam_last_error()) > 0, "%s: no message", label);
    if (!rc) ts_map_free(m);
    remove(p);
}

static void test_truncated(void) {
    if (!fixture_exists(ZIP32)) SKIP("fixtures missing");
    const char *files[] = {ZIP32, LEG16};
    for (int f = 0; f < 2; f++) {
        uint8_t *buf;
        size_t n;
        REQUIRE(ts_read_file(fixture(files[f]), 1 << 28, &buf, &n) == 0, "read");
        size_t cuts[40];
        int nc = 0;
        for (size_t c = 1; c < 40000 && nc < 20; c = c * 2 + 7) cuts[nc++] = c; /* inside the pickle */
        for (int k = 1; k <= 18; k++) cuts[nc++] = n / 19 * (size_t)k;          /* inside storages */
        cuts[nc++] = n - 1;
        for (int i = 0; i < nc; i++) {
            char label[64];
            snprintf(label, sizeof label, "%s cut at %zu", files[f], cuts[i]);
            expect_reject(label, buf, cuts[i]);
        }
        free(buf);
    }
}

static void test_flipped_bytes(void) {
    if (!fixture_exists(LEG16)) SKIP("fixtures missing");
    uint8_t *buf;
    size_t n;
    REQUIRE(ts_read_file(fixture(LEG16), 1 << 28, &buf, &n) == 0, "read");
    /* the legacy data pickle sits in the first ~40 KB; flips there must never crash (they may
     * still load when they hit a harmless byte, so only safety is asserted) */
    uint32_t seed = 12345;
    uint8_t *copy = malloc(n);
    for (int it = 0; it < 60; it++) {
        memcpy(copy, buf, n);
        for (int k = 0; k < 4; k++) {
            seed = seed * 1103515245u + 12345u;
            copy[(seed >> 8) % 40000] ^= (uint8_t)(1u << (seed % 8));
        }
        ts_tensor_map *m = NULL;
        if (ts_pth_load_memory(copy, n, &m) == 0) ts_map_free(m);
    }
    free(copy);
    free(buf);
}

static void test_hostile_pickles(void) {
    /* a forbidden global: os.system("echo pwned") */
    const uint8_t evil[] = "\x80\x02" "cos\nsystem\n" "X\x0a\x00\x00\x00echo pwned" "\x85R.";
    expect_reject("os.system pickle", evil, sizeof evil - 1);
    CHECK(strstr(tinysam_last_error(), "os.system") != NULL, "message: %s", tinysam_last_error());
    /* MARK bomb, memo abuse, stack underflow, unknown opcode */
    uint8_t bomb[20002];
    bomb[0] = 0x80;
    bomb[1] = 2;
    memset(bomb + 2, '(', 20000);
    expect_reject("mark bomb", bomb, sizeof bomb);
    const uint8_t memo[] = "\x80\x02N\x72\xff\xff\xff\x7f.";
    expect_reject("huge memo index", memo, sizeof memo - 1);
    const uint8_t getmiss[] = "\x80\x02h\x05.";
    expect_reject("empty memo get", getmiss, sizeof getmiss - 1);
    const uint8_t under[] = "\x80\x02s.";
    expect_reject("stack underflow", under, sizeof under - 1);
    const uint8_t unk[] = "\x80\x02\xff.";
    expect_reject("unknown opcode", unk, sizeof unk - 1);
    const uint8_t bigstr[] = "\x80\x02X\xff\xff\xff\x7f";
    expect_reject("huge string", bigstr, sizeof bigstr - 1);
    const uint8_t notdict[] = "\x80\x02K\x05.";
    expect_reject("not a dict", notdict, sizeof notdict - 1);
}

static void put_st(const char *label, const char *hdr, size_t data_bytes) {
    size_t hl = strlen(hdr), n = 8 + hl + data_bytes;
    uint8_t *b = calloc(1, n);
    for (int i = 0; i < 8; i++) b[i] = (uint8_t)((uint64_t)hl >> (8 * i));
    memcpy(b + 8, hdr, hl);
    expect_reject(label, b, n);
    free(b);
}

static void test_hostile_safetensors(void) {
    put_st("bad json", "{\"a\":{\"dtype\":\"F32\",", 16);
    put_st("unknown dtype", "{\"a\":{\"dtype\":\"Q7\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    put_st("out of range", "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", 8);
    put_st("size mismatch", "{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16);
    put_st("overlap", "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 16);
    put_st("negative", "{\"a\":{\"dtype\":\"F32\",\"shape\":[-2],\"data_offsets\":[0,8]}}", 8);
    put_st("huge shape", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e11,1e11],\"data_offsets\":[0,8]}}", 8);
    put_st("empty", "{}", 0);
    /* header length larger than the file */
    uint8_t b[16] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, '{', '}'};
    expect_reject("header length", b, sizeof b);
    CHECK(ts_map_load("/nonexistent/model.pth", &(ts_tensor_map *){0}) == TINYSAM_E_IO, "missing file");
}

int main(void) {
    RUN(test_zip_fp32);
    RUN(test_legacy_fp16_identical);
    RUN(test_sam_fp16_zip);
    RUN(test_safetensors_roundtrip);
    RUN(test_truncated);
    RUN(test_flipped_bytes);
    RUN(test_hostile_pickles);
    RUN(test_hostile_safetensors);
    return test_summary();
}
