/* test_checkpoint.c - the .pth (ZIP and legacy containers, float32/float16) and safetensors
 * loaders: identical tensors across containers, round trips, and hostile files rejected. */
#include "core.h"
#include "io/tensor_map.h"
#include "pickle_writer.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

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
    CHECK(t && t->ndim == 4 && t->shape[0] == 256 && t->shape[1] == 64 && t->shape[2] == 2,
          "shape");
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
    CHECK(ts_map_take(m, "nope", 1, 1) == NULL && strstr(tinysam_last_error(), "missing"),
          "missing");
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
        for (size_t c = 1; c < 40000 && nc < 20; c = c * 2 + 7) cuts[nc++] = c; /* the pickle */
        for (int k = 1; k <= 18; k++) cuts[nc++] = n / 19 * (size_t)k;          /* storages */
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
    /* flips inside the pickles (legacy: the first ~40 KB; ZIP: data.pkl spans bytes 64..58,887)
     * must never crash; a flip may hit a harmless byte (a digit of a key, a float payload) and
     * still load, otherwise the only acceptable answer is a format error with a message */
    static const struct { const char *file; size_t lo, hi; } targets[] = {
        {LEG16, 0, 40000}, {ZIP32, 64, 58887}};
    int rejected = 0;
    for (int f = 0; f < 2; f++) {
        uint8_t *buf;
        size_t n;
        REQUIRE(ts_read_file(fixture(targets[f].file), 1 << 28, &buf, &n) == 0, "read");
        uint32_t seed = 12345;
        uint8_t *copy = malloc(n);
        for (int it = 0; it < 60; it++) {
            memcpy(copy, buf, n);
            for (int k = 0; k < 4; k++) {
                seed = seed * 1103515245u + 12345u;
                size_t at = targets[f].lo + (seed >> 8) % (targets[f].hi - targets[f].lo);
                copy[at] ^= (uint8_t)(1u << (seed % 8));
            }
            ts_tensor_map *m = NULL;
            int rc = ts_pth_load_memory(copy, n, &m);
            CHECK(rc == 0 || (rc == TINYSAM_E_FORMAT && m == NULL && *tinysam_last_error()),
                  "%s flip %d: rc %d, message '%s'", targets[f].file, it, rc, tinysam_last_error());
            rejected += rc != 0;
            if (!rc) ts_map_free(m);
        }
        free(copy);
        free(buf);
    }
    CHECK(rejected >= 60, "only %d of 120 flipped files rejected", rejected);
}

static void test_hostile_pickles(void) {
    /* a call with arguments: os.system("echo pwned") (GLOBAL alone is an opaque name now; the
     * REDUCE with arguments is what is refused). "\x00" "echo": a hex escape would eat "ec". */
    const uint8_t evil[] = "\x80\x02" "cos\nsystem\n" "X\x0a\x00\x00\x00" "echo pwned" "\x85R.";
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
    put_st("huge shape",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[1e11,1e11],\"data_offsets\":[0,8]}}", 8);
    put_st("empty", "{}", 0);
    put_st("metadata value not a string",
           "{\"__metadata__\":{\"epoch\":3},"
           "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8);
    put_st("offsets not numbers",
           "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[\"0\",8]}}", 8);
    put_st("nine dims", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,2],"
                        "\"data_offsets\":[0,8]}}", 8);
    /* valid: empty tensors, one placed at the very end of the data (fuzzer find: its
     * zero-copy pointer lay one past the mapping and ts_map_free freed it) */
    const char hdr[] = "{\"e\":{\"dtype\":\"F32\",\"shape\":[0,0],\"data_offsets\":[0,0]},"
                       "\"x\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}   ";
    uint8_t st[8 + sizeof hdr - 1 + 4] = {sizeof hdr - 1};
    memcpy(st + 8, hdr, sizeof hdr - 1);
    ts_tensor_map *m = NULL;
    CHECK(ts_safetensors_load_memory(st, sizeof st, &m) == 0 && m->n == 2, "empty tensors: %s",
          tinysam_last_error());
    ts_map_free(m);
    /* header length larger than the file */
    uint8_t b[16] = {0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, '{', '}'};
    expect_reject("header length", b, sizeof b);
    CHECK(ts_map_load("/nonexistent/model.pth", &(ts_tensor_map *){0}) == TINYSAM_E_IO,
          "missing file");
}

/* ------------------------------------------------------------------ hand-built checkpoints
 * A tiny pickle writer builds files whose every value is known: views with offsets and
 * strides, shared and zero-stride storages, float16 special values, a wrapped state_dict,
 * and both containers (legacy stream, ZIP with and without ZIP64). */

static void pints(pk_buf *o, const int *v, int n) { /* a tuple of ints */
    pk_op(o, '(');
    for (int i = 0; i < n; i++) pk_int(o, v[i]);
    pk_op(o, 't');
}

typedef struct {
    const char *name, *key, *cls;
    int numel, offset, ndim, shape[4], stride[4];
} hand_tensor;

/* Appends `name: _rebuild_tensor_v2(persid(...), offset, shape, stride, False, OrderedDict())`. */
static void ptensor(pk_buf *o, const hand_tensor *t, int legacy) {
    pk_str(o, t->name);
    pk_global(o, "torch._utils", "_rebuild_tensor_v2");
    pk_op(o, '(');
    pk_op(o, '(');
    pk_str(o, "storage");
    pk_global(o, "torch", t->cls);
    pk_str(o, t->key);
    pk_str(o, "cpu");
    pk_int(o, t->numel);
    if (legacy) pk_op(o, 'N'); /* view descriptor */
    pk_op(o, 't');
    pk_op(o, 'Q');
    pk_int(o, t->offset);
    pints(o, t->shape, t->ndim);
    pints(o, t->stride, t->ndim);
    pk_op(o, 0x89);
    pk_global(o, "collections", "OrderedDict");
    pk_op(o, ')');
    pk_op(o, 'R');
    pk_op(o, 't');
    pk_op(o, 'R');
}

/* Storages: s0 float32 0..11, s1 float16 special values, s2 bfloat16, s3 float64, s4 int64. */
static const uint16_t HALF_BITS[8] = {0x0001, 0x03ff, 0x0400, 0x7bff,
                                      0x7c00, 0xfc00, 0x7e00, 0x8001};
static const uint32_t HALF_AS_F32[8] = {0x33800000, 0x387fc000, 0x38800000, 0x477fe000,
                                        0x7f800000, 0xff800000, 0x7fc00000, 0xb3800000};
static const hand_tensor HAND[] = {
    {"a", "s0", "FloatStorage", 12, 0, 2, {3, 4}, {4, 1}},
    {"t", "s0", "FloatStorage", 12, 0, 2, {4, 3}, {1, 4}},    /* transposed view */
    {"v", "s0", "FloatStorage", 12, 2, 2, {2, 2}, {6, 1}},    /* offset + row stride */
    {"z", "s0", "FloatStorage", 12, 5, 1, {3}, {0}},          /* zero stride */
    {"o", "s0", "FloatStorage", 12, 4, 2, {2, 4}, {4, 1}},    /* contiguous, offset */
    {"h", "s1", "HalfStorage", 8, 0, 1, {8}, {1}},
    {"b", "s2", "BFloat16Storage", 2, 0, 1, {2}, {1}},
    {"d", "s3", "DoubleStorage", 2, 0, 2, {1, 2}, {2, 1}},
    {"n", "s4", "LongStorage", 1, 0, 0, {0}, {0}},            /* 0-d int64 */
};
#define N_HAND ((int)(sizeof HAND / sizeof HAND[0]))

static void storage_bytes(int k, pk_buf *o) {
    if (k == 0)
        for (int i = 0; i < 12; i++) {
            float f = (float)i;
            pk_put(o, &f, 4);
        }
    if (k == 1)
        for (int i = 0; i < 8; i++) pk_le(o, HALF_BITS[i], 2);
    if (k == 2) {
        pk_le(o, 0x3f80, 2); /* 1.0 */
        pk_le(o, 0xc0a0, 2); /* -5.0 */
    }
    if (k == 3) {
        double d[2] = {0.1, -2.5};
        pk_put(o, d, 16);
    }
    if (k == 4) pk_le(o, (uint64_t)-7, 8);
}
static const int STORAGE_NUMEL[5] = {12, 8, 2, 2, 1};

/* The data pickle: {"model": OrderedDict(tensors), "epoch": 3} (wrapped) or the bare dict. */
static void data_pickle(pk_buf *o, int legacy, int wrapped, const hand_tensor *ts, int nt) {
    pk_op(o, 0x80);
    pk_op(o, 2);
    if (wrapped) {
        pk_op(o, '}');
        pk_op(o, '(');
        pk_str(o, "model");
    }
    pk_global(o, "collections", "OrderedDict");
    pk_op(o, ')');
    pk_op(o, 'R');
    pk_op(o, '(');
    for (int i = 0; i < nt; i++) ptensor(o, &ts[i], legacy);
    pk_op(o, 'u');
    if (wrapped) {
        pk_str(o, "epoch");
        pk_int(o, 3);
        pk_op(o, 'u');
    }
    pk_op(o, '.');
}

static pk_buf build_legacy(int wrapped) {
    pk_buf o = {0};
    pk_legacy_magic(&o);
    pk_op(&o, 0x80), pk_op(&o, 2), pk_op(&o, '}'), pk_op(&o, '(');
    pk_str(&o, "little_endian");
    pk_op(&o, 0x88);
    pk_op(&o, 'u'), pk_op(&o, '.');
    data_pickle(&o, 1, wrapped, HAND, N_HAND);
    pk_op(&o, 0x80), pk_op(&o, 2), pk_op(&o, ']'), pk_op(&o, '(');
    char key[16];
    for (int k = 0; k < 5; k++) snprintf(key, sizeof key, "s%d", k), pk_str(&o, key);
    pk_op(&o, 'e'), pk_op(&o, '.');
    for (int k = 0; k < 5; k++) {
        pk_le(&o, (uint64_t)STORAGE_NUMEL[k], 8);
        storage_bytes(k, &o);
    }
    return o;
}

typedef struct {
    char name[64];
    pk_buf data;
} zentry;

/* A stored ZIP as torch writes it (data 64-byte aligned through the local extra field). The
 * local headers carry zero CRC and sizes (bit 3) and a data descriptor follows each record's
 * data (signature, CRC-32, sizes; 8-byte sizes in ZIP64). zip64: sizes and offsets only in
 * ZIP64 extra fields and records. */
static pk_buf build_zip(zentry *e, int n, int zip64) {
    pk_buf o = {0}, cd = {0};
    for (int i = 0; i < n; i++) {
        size_t loff = o.n, nl = strlen(e[i].name);
        size_t pad = (64 - (loff + 30 + nl + 4) % 64) % 64;
        pk_le(&o, 0x04034b50, 4), pk_le(&o, 45, 2), pk_le(&o, 8, 2), pk_le(&o, 0, 2);
        pk_le(&o, 0, 4);
        pk_le(&o, 0, 4), pk_le(&o, 0, 4), pk_le(&o, 0, 4), pk_le(&o, nl, 2), pk_le(&o, pad + 4, 2);
        pk_put(&o, e[i].name, nl);
        pk_le(&o, 0xcafe, 2), pk_le(&o, pad, 2);
        for (size_t k = 0; k < pad; k++) pk_op(&o, 'Z');
        pk_put(&o, e[i].data.b, e[i].data.n);
        uint64_t sz = e[i].data.n;
        uint32_t crc = (uint32_t)crc32(0, e[i].data.b, (uInt)sz);
        pk_le(&o, 0x08074b50, 4), pk_le(&o, crc, 4), pk_le(&o, sz, zip64 ? 8 : 4);
        pk_le(&o, sz, zip64 ? 8 : 4);
        pk_le(&cd, 0x02014b50, 4), pk_le(&cd, 45, 2), pk_le(&cd, 45, 2), pk_le(&cd, 8, 2);
        pk_le(&cd, 0, 2);
        pk_le(&cd, 0, 4), pk_le(&cd, crc, 4);
        pk_le(&cd, zip64 ? 0xffffffffu : sz, 4), pk_le(&cd, zip64 ? 0xffffffffu : sz, 4);
        pk_le(&cd, nl, 2), pk_le(&cd, zip64 ? 28 : 0, 2), pk_le(&cd, 0, 2), pk_le(&cd, 0, 2);
        pk_le(&cd, 0, 2);
        pk_le(&cd, 0, 4), pk_le(&cd, zip64 ? 0xffffffffu : loff, 4);
        pk_put(&cd, e[i].name, nl);
        if (zip64) {
            pk_le(&cd, 1, 2), pk_le(&cd, 24, 2), pk_le(&cd, sz, 8), pk_le(&cd, sz, 8);
            pk_le(&cd, loff, 8);
        }
    }
    size_t cd_off = o.n;
    pk_put(&o, cd.b, cd.n);
    if (zip64) {
        size_t z64 = o.n;
        pk_le(&o, 0x06064b50, 4), pk_le(&o, 44, 8), pk_le(&o, 45, 2), pk_le(&o, 45, 2);
        pk_le(&o, 0, 4);
        pk_le(&o, 0, 4), pk_le(&o, (uint64_t)n, 8), pk_le(&o, (uint64_t)n, 8);
        pk_le(&o, cd.n, 8), pk_le(&o, cd_off, 8);
        pk_le(&o, 0x07064b50, 4), pk_le(&o, 0, 4), pk_le(&o, z64, 8), pk_le(&o, 1, 4);
    }
    pk_le(&o, 0x06054b50, 4), pk_le(&o, 0, 2), pk_le(&o, 0, 2);
    pk_le(&o, zip64 ? 0xffff : (uint64_t)n, 2), pk_le(&o, zip64 ? 0xffff : (uint64_t)n, 2);
    pk_le(&o, zip64 ? 0xffffffffu : cd.n, 4), pk_le(&o, zip64 ? 0xffffffffu : cd_off, 4);
    pk_le(&o, 0, 2);
    free(cd.b);
    return o;
}

static pk_buf build_torch_zip(int wrapped, int zip64, const char *byteorder) {
    zentry e[8];
    int n = 0;
    memset(e, 0, sizeof e);
    snprintf(e[n].name, sizeof e[n].name, "hand/data.pkl");
    data_pickle(&e[n++].data, 0, wrapped, HAND, N_HAND);
    if (byteorder) {
        snprintf(e[n].name, sizeof e[n].name, "hand/byteorder");
        pk_put(&e[n++].data, byteorder, strlen(byteorder));
    }
    for (int k = 0; k < 5; k++) {
        snprintf(e[n].name, sizeof e[n].name, "hand/data/s%d", k);
        storage_bytes(k, &e[n++].data);
    }
    snprintf(e[n].name, sizeof e[n].name, "hand/version");
    pk_put(&e[n++].data, "3\n", 2);
    pk_buf z = build_zip(e, n, zip64);
    for (int i = 0; i < n; i++) free(e[i].data.b);
    return z;
}

static int f32_bits_equal(const float *x, const uint32_t *bits, int n) {
    for (int i = 0; i < n; i++) {
        uint32_t b;
        memcpy(&b, &x[i], 4);
        if (b != bits[i]) return 0;
    }
    return 1;
}

/* Expected values written out by hand from the rebuild rule
 * element(i0..) = storage[offset + sum ik * stride_k]. */
/* from_pth: file dtypes are those of the hand-built storages (a safetensors copy holds F32). */
static void check_hand(const ts_tensor_map *m, const char *label, int from_pth) {
    static const float a[12] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11};
    static const float t[12] = {0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11};
    static const float v[4] = {2, 3, 8, 9}, z[3] = {5, 5, 5}, b[2] = {1, -5};
    static const float d[2] = {0.1f, -2.5f};
    CHECK(m->n == N_HAND, "%s: %d tensors", label, m->n);
    const ts_tensor *x = ts_map_get(m, "a");
    CHECK(x && x->ndim == 2 && x->shape[0] == 3 && x->shape[1] == 4 &&
              !memcmp(x->data, a, sizeof a),
          "%s: a", label);
    x = ts_map_get(m, "t");
    CHECK(x && x->shape[0] == 4 && x->shape[1] == 3 && !memcmp(x->data, t, sizeof t),
          "%s: transposed", label);
    x = ts_map_get(m, "v");
    CHECK(x && x->numel == 4 && !memcmp(x->data, v, sizeof v), "%s: offset view", label);
    x = ts_map_get(m, "z");
    CHECK(x && x->numel == 3 && !memcmp(x->data, z, sizeof z), "%s: zero stride", label);
    x = ts_map_get(m, "o");
    CHECK(x && x->numel == 8 && !memcmp(x->data, a + 4, 8 * sizeof(float)), "%s: offset", label);
    x = ts_map_get(m, "h");
    CHECK(x && x->dtype == TS_DTYPE_F32 && (!from_pth || x->file_dtype == TS_DTYPE_F16) &&
              f32_bits_equal(x->data, HALF_AS_F32, 8),
          "%s: float16 subnormal/inf/nan conversion", label);
    x = ts_map_get(m, "b");
    CHECK(x && (!from_pth || x->file_dtype == TS_DTYPE_BF16) && !memcmp(x->data, b, sizeof b),
          "%s: bfloat16", label);
    x = ts_map_get(m, "d");
    CHECK(x && (!from_pth || x->file_dtype == TS_DTYPE_F64) && x->ndim == 2 &&
              !memcmp(x->data, d, sizeof d),
          "%s: float64", label);
    x = ts_map_get(m, "n");
    CHECK(x && x->dtype == TS_DTYPE_I64 && x->ndim == 0 && x->numel == 1 &&
              *(int64_t *)x->data == -7,
          "%s: int64 scalar", label);
}

static int load_buf(const pk_buf *b, ts_tensor_map **m) {
    const char *p = tmp_path("hand.pth");
    write_file(p, b->b, b->n);
    int rc = ts_map_load(p, m);
    remove(p);
    return rc;
}

static void test_hand_built(void) {
    for (int variant = 0; variant < 6; variant++) {
        static const char *names[] = {"legacy bare",  "legacy wrapped", "zip bare",
                                      "zip wrapped",  "zip64",          "zip byteorder little"};
        pk_buf b = variant < 2 ? build_legacy(variant)
                              : build_torch_zip(variant == 3, variant == 4,
                                                variant == 5 ? "little" : NULL);
        ts_tensor_map *m = NULL;
        int rc = load_buf(&b, &m);
        CHECK(rc == 0, "%s: %s", names[variant], tinysam_last_error());
        if (!rc) {
            check_hand(m, names[variant], 1);
            ts_map_free(m);
        }
        /* the same bytes through the in-memory loader (always copies) */
        rc = ts_pth_load_memory(b.b, b.n, &m);
        CHECK(rc == 0, "%s (memory): %s", names[variant], tinysam_last_error());
        if (!rc) {
            check_hand(m, names[variant], 1);
            ts_map_free(m);
        }
        free(b.b);
    }
}

static void test_zip_zero_copy(void) {
    /* float32 storages of a ZIP file are used in place (torch aligns them to 64 bytes) */
    pk_buf b = build_torch_zip(0, 0, NULL);
    ts_tensor_map *m = NULL;
    REQUIRE(load_buf(&b, &m) == 0, "%s", tinysam_last_error());
    const uint8_t *lo = m->map_base, *hi = lo + m->map_size;
#define IN_MAP(name) ((const uint8_t *)ts_map_get(m, name)->data >= lo && \
                      (const uint8_t *)ts_map_get(m, name)->data < hi)
    CHECK(lo && IN_MAP("a") && IN_MAP("o"), "contiguous float32 tensors not in place");
    CHECK(!IN_MAP("t") && !IN_MAP("v") && !IN_MAP("z"), "strided views must be copies");
    CHECK(!IN_MAP("h") && !IN_MAP("d"), "converted tensors must be copies");
#undef IN_MAP
    const ts_tensor *a;
    ts_map_free(m);
    free(b.b);
    /* the real checkpoint too */
    if (!fixture_exists(ZIP32)) SKIP("fixtures missing");
    REQUIRE(ts_map_load(fixture(ZIP32), &m) == 0, "%s", tinysam_last_error());
    a = ts_map_get(m, "image_encoder.neck.0.weight");
    lo = m->map_base;
    CHECK(lo && (const uint8_t *)a->data >= lo && (const uint8_t *)a->data < lo + m->map_size,
          "fixture tensor not in place");
    ts_map_free(m);
}

static void expect_reject_mem(const char *label, const pk_buf *b, const char *needle) {
    ts_tensor_map *m = NULL;
    int rc = ts_pth_load_memory(b->b, b->n, &m);
    CHECK(rc == TINYSAM_E_FORMAT && m == NULL, "%s: rc %d", label, rc);
    CHECK(!needle || strstr(tinysam_last_error(), needle), "%s: message '%s'", label,
          tinysam_last_error());
    expect_reject(label, b->b, b->n); /* and through the file loader */
}

static void test_hand_built_rejects(void) {
    pk_buf b = build_torch_zip(0, 0, "big");
    expect_reject_mem("byteorder big", &b, "big-endian");
    free(b.b);
    b = build_legacy(0);
    /* sys_info little_endian True -> False */
    for (size_t i = 0; i + 14 < b.n; i++)
        if (!memcmp(b.b + i, "little_endian\x88", 14)) b.b[i + 13] = 0x89;
    expect_reject_mem("legacy big-endian", &b, "big-endian");
    free(b.b);

    /* a state_dict naming one tensor twice */
    hand_tensor two[2] = {HAND[0], HAND[0]};
    zentry e[2];
    memset(e, 0, sizeof e);
    snprintf(e[0].name, sizeof e[0].name, "x/data.pkl");
    data_pickle(&e[0].data, 0, 0, two, 2);
    snprintf(e[1].name, sizeof e[1].name, "x/data/s0");
    storage_bytes(0, &e[1].data);
    b = build_zip(e, 2, 0);
    expect_reject_mem("duplicate key", &b, "twice");
    free(b.b);

    /* a view reaching past its storage */
    hand_tensor past = HAND[0];
    past.offset = 1;
    free(e[0].data.b);
    e[0].data = (pk_buf){0};
    data_pickle(&e[0].data, 0, 0, &past, 1);
    b = build_zip(e, 2, 0);
    expect_reject_mem("view past storage", &b, "past the end");
    free(b.b);

    /* a tiny file asking for 64 MiB through a zero-stride view */
    hand_tensor bomb = {"big", "s0", "FloatStorage", 12, 0, 1, {1 << 24}, {0}};
    free(e[0].data.b);
    e[0].data = (pk_buf){0};
    data_pickle(&e[0].data, 0, 0, &bomb, 1);
    b = build_zip(e, 2, 0);
    expect_reject_mem("zero-stride bomb", &b, "times the file");
    free(b.b);

    /* forbidden global inside a well-formed ZIP checkpoint */
    free(e[0].data.b);
    e[0].data = (pk_buf){0};
    pk_op(&e[0].data, 0x80), pk_op(&e[0].data, 2);
    pk_global(&e[0].data, "builtins", "eval");
    pk_str(&e[0].data, "1+1");
    pk_op(&e[0].data, 0x85), pk_op(&e[0].data, 'R'), pk_op(&e[0].data, '.');
    b = build_zip(e, 2, 0);
    expect_reject_mem("builtins.eval", &b, "builtins.eval");
    free(b.b);

    /* a storage entry missing from the archive */
    hand_tensor other = HAND[0];
    other.key = "s9";
    free(e[0].data.b);
    e[0].data = (pk_buf){0};
    data_pickle(&e[0].data, 0, 0, &other, 1);
    b = build_zip(e, 2, 0);
    expect_reject_mem("missing storage", &b, "s9");
    free(b.b);

    /* the local header names another entry than the central directory */
    free(e[0].data.b);
    e[0].data = (pk_buf){0};
    data_pickle(&e[0].data, 0, 0, HAND, 1);
    b = build_zip(e, 2, 0);
    REQUIRE(!memcmp(b.b + 30, "x/data.pkl", 10), "layout");
    b.b[30] = 'y';
    expect_reject_mem("local header mismatch", &b, "local header");
    free(b.b);
    for (int i = 0; i < 2; i++) free(e[i].data.b);

    /* more values than any state_dict needs: [] then (None, APPEND) * 2.2M */
    b = (pk_buf){0};
    pk_op(&b, 0x80), pk_op(&b, 2), pk_op(&b, ']');
    for (int i = 0; i < 2200000; i++) pk_op(&b, 'N'), pk_op(&b, 'a');
    pk_op(&b, '.');
    expect_reject_mem("value flood", &b, "values");
    free(b.b);
}

static int ignore_n(const char *name) {
    return !strcmp(name, "n");
}

static void test_take_and_check_all_used(void) {
    pk_buf b = build_legacy(0);
    ts_tensor_map *m = NULL;
    REQUIRE(ts_pth_load_memory(b.b, b.n, &m) == 0, "%s", tinysam_last_error());
    free(b.b);
    const char *names[] = {"a", "t", "v", "z", "o", "h", "b"};
    for (int i = 0; i < 6; i++) {
        const ts_tensor *t = ts_map_get(m, names[i]);
        int s0 = (int)t->shape[0], s1 = (int)t->shape[1];
        const float *p = t->ndim == 2 ? ts_map_take(m, names[i], 2, s0, s1)
                                      : ts_map_take(m, names[i], 1, s0);
        CHECK(p == t->data, "take %s: %s", names[i], tinysam_last_error());
    }
    CHECK(ts_map_take(m, "d", 1, 2) == NULL && strstr(tinysam_last_error(), "[1,2]") &&
              strstr(tinysam_last_error(), "expected [2]"),
          "shape message: %s", tinysam_last_error());
    CHECK(ts_map_take(m, "n", 0) == NULL && strstr(tinysam_last_error(), "'n'"), "int64 taken");
    CHECK(ts_map_check_all_used(m, NULL) == TINYSAM_E_FORMAT &&
              strstr(tinysam_last_error(), "'b'"),
          "unused b: %s", tinysam_last_error());
    CHECK(ts_map_take(m, "b", 1, 2) != NULL, "take b");
    CHECK(ts_map_take(m, "d", 2, 1, 2) != NULL, "take d");
    CHECK(ts_map_check_all_used(m, NULL) == TINYSAM_E_FORMAT &&
              strstr(tinysam_last_error(), "'n'"),
          "unused n: %s", tinysam_last_error());
    CHECK(ts_map_check_all_used(m, ignore_n) == 0, "%s", tinysam_last_error());
    ts_map_free(m);
}

static void test_safetensors_hand(void) {
    /* every dtype conversion and the int64 scalar survive a safetensors round trip; the
     * header follows the format: names sorted, padded to 8 bytes with spaces */
    pk_buf b = build_legacy(1);
    ts_tensor_map *a = NULL, *c = NULL;
    REQUIRE(ts_pth_load_memory(b.b, b.n, &a) == 0, "%s", tinysam_last_error());
    free(b.b);
    const char *p = tmp_path("hand.safetensors");
    const char *k[] = {"format", "note"}, *v[] = {"pt", "quote \" and \\\\ backslash"};
    REQUIRE(ts_safetensors_save(p, a, 2, k, v) == 0, "%s", tinysam_last_error());
    uint8_t *raw;
    size_t n;
    REQUIRE(ts_read_file(p, 1 << 20, &raw, &n) == 0, "read back");
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = hl << 8 | raw[i];
    CHECK(hl % 8 == 0 && hl + 8 <= n && (raw[8 + hl - 1] == ' ' || raw[8 + hl - 1] == '}'),
          "header padding");
    const char *h = (const char *)raw + 8;
    const char *order[] = {"\"a\"", "\"b\"", "\"d\"", "\"h\"", "\"n\"", "\"o\"", "\"t\"", "\"v\"",
                           "\"z\""};
    const char *prev = h;
    for (int i = 0; i < 9; i++) {
        const char *at = strstr(h, order[i]);
        CHECK(at && at > prev, "tensor %s missing or out of order", order[i]);
        if (at) prev = at;
    }
    CHECK(strstr(h, "\"n\":{\"dtype\":\"I64\",\"shape\":[]"), "int64 scalar entry");
    free(raw);
    REQUIRE(ts_safetensors_load(p, &c) == 0, "%s", tinysam_last_error());
    check_hand(c, "safetensors", 0);
    CHECK(c->metadata_json &&
              strstr(c->metadata_json, "\"note\":\"quote \\\" and \\\\\\\\ backslash\""),
          "metadata %s", c->metadata_json ? c->metadata_json : "(null)");
    ts_map_free(c);
    ts_map_free(a);
    remove(p);
}

/* A safetensors file whose header length ends in the byte 0x80 (the raw pickle's first byte)
 * is still read as safetensors: the format is told by the '{' after the length. */
static void test_safetensors_0x80_length(void) {
    const char *path = tmp_path("hdr80.safetensors");
    char hdr[384];
    memset(hdr, ' ', sizeof hdr);
    const char *j = "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}";
    memcpy(hdr, j, strlen(j));
    uint8_t len[8] = {0x80, 0x01, 0, 0, 0, 0, 0, 0}; /* 384 */
    float v = 2.5f;
    FILE *f = fopen(path, "wb");
    REQUIRE(f, "create %s", path);
    fwrite(len, 1, 8, f);
    fwrite(hdr, 1, sizeof hdr, f);
    fwrite(&v, 4, 1, f);
    fclose(f);
    ts_tensor_map *m = NULL;
    CHECK(ts_map_load(path, &m) == 0, "header length 0x180: %s", tinysam_last_error());
    const ts_tensor *t = m ? ts_map_get(m, "a") : NULL;
    CHECK(t && t->numel == 1 && ((const float *)t->data)[0] == 2.5f, "tensor a");
    ts_map_free(m);
    remove(path);
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
    RUN(test_hand_built);
    RUN(test_zip_zero_copy);
    RUN(test_hand_built_rejects);
    RUN(test_take_and_check_all_used);
    RUN(test_safetensors_hand);
    RUN(test_safetensors_0x80_length);
    return test_summary();
}
