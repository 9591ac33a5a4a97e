/* test_fuzz_limits.c - the limits every parser must enforce against hostile input (issue 10),
 * each checked with a crafted input: it must fail cleanly (a negative status and a message),
 * quickly, and without allocating what the input asks for. Inputs are built here, so the
 * test does not depend on the seed corpus. */
#include "test.h"

#include "core.h"
#include "io/image.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensor_map.h"
#include "tinysam.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------ byte builder */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int oom;
} buf;

static void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        size_t nc = b->cap ? b->cap : 4096;
        while (nc < b->n + n) nc *= 2;
        uint8_t *np = realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void puts_(buf *b, const char *s) { put(b, s, strlen(s)); }
/* a literal, embedded NULs included */
#define PUTL(b, lit) put(b, lit, sizeof(lit) - 1)
static void put_le(buf *b, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++) {
        uint8_t c = (uint8_t)(v >> (8 * i));
        put(b, &c, 1);
    }
}
/* pickle BINUNICODE */
static void p_str(buf *b, const char *s) {
    PUTL(b, "X");
    put_le(b, strlen(s), 4);
    puts_(b, s);
}
/* pickle BININT (32-bit) or LONG1 (8 bytes) */
static void p_int(buf *b, int64_t v) {
    if (v >= INT32_MIN && v <= INT32_MAX) {
        PUTL(b, "J");
        put_le(b, (uint64_t)v, 4);
    } else {
        PUTL(b, "\x8a\x08");
        put_le(b, (uint64_t)v, 8);
    }
}

/* The legacy container (torch.save(..., _use_new_zipfile_serialization=False)) around a
 * data pickle `data` (without PROTO/STOP) that uses storage key "0" with `numel` float32
 * values of which `have` are present in the file. */
static void legacy_file(buf *b, const buf *data, uint64_t numel, uint64_t have) {
    static const uint8_t magic[10] = {0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19};
    PUTL(b, "\x80\x02\x8a\x0a");
    put(b, magic, 10);
    PUTL(b, ".");
    PUTL(b, "\x80\x02M\xe9\x03.");           /* protocol version 1001 */
    PUTL(b, "\x80\x02}q\x00X\x0d\x00\x00\x00little_endian\x88s.");
    PUTL(b, "\x80\x02");
    put(b, data->p, data->n);
    PUTL(b, ".");
    PUTL(b, "\x80\x02]q\x00X\x01\x00\x00\x00" "0a.");   /* storage keys: ['0'] */
    put_le(b, numel, 8);
    for (uint64_t i = 0; i < have; i++) put_le(b, 0x3f800000u, 4);
}

/* _rebuild_tensor_v2(storage '0' of `numel` floats, offset, (size...), (stride...), False,
 * OrderedDict()) onto the pickle stack. */
static void p_tensor(buf *b, int64_t numel, int64_t offset, int ndim, const int64_t *size,
                     const int64_t *stride) {
    PUTL(b, "ctorch._utils\n_rebuild_tensor_v2\n(");
    PUTL(b, "(");
    p_str(b, "storage");
    PUTL(b, "ctorch\nFloatStorage\n");
    p_str(b, "0");
    p_str(b, "cpu");
    p_int(b, numel);
    PUTL(b, "tQ");
    p_int(b, offset);
    PUTL(b, "(");
    for (int i = 0; i < ndim; i++) p_int(b, size[i]);
    PUTL(b, "t(");
    for (int i = 0; i < ndim; i++) p_int(b, stride[i]);
    PUTL(b, "t\x89");
    PUTL(b, "ccollections\nOrderedDict\n)RtR");
}

static int load_pth(const buf *b, double *seconds) {
    ts_tensor_map *m = NULL;
    ts_error_clear();
    double t0 = now_s();
    int rc = ts_pth_load_memory(b->p, b->n, &m);
    *seconds = now_s() - t0;
    if (!rc) ts_map_free(m);
    return rc;
}

/* Seconds an input may take: 1 s as for fuzz inputs (libFuzzer -timeout=1); the two
 * multi-megabyte inputs (100001 tensors) get 5 s, for ASan builds on a busy machine. */
static double g_limit_s = 1.0;

#define CHECK_CLEAN_FAIL(rc, dt, what)                                                         \
    do {                                                                                       \
        CHECK((rc) < 0, "%s: accepted (rc %d)", what, rc);                                     \
        CHECK((rc) >= 0 || *tinysam_last_error(), "%s: failed without a message", what);       \
        CHECK((dt) < g_limit_s, "%s: took %.2f s", what, dt);                                  \
        printf("  %s -> %d %s\n", what, rc, tinysam_last_error());                             \
    } while (0)

/* The well-formed file the hostile ones are variations of: loads. */
static void test_pickle_baseline_loads(void) {
    buf d = {0}, f = {0};
    int64_t size[2] = {2, 3}, stride[2] = {3, 1};
    PUTL(&d, "}");
    p_str(&d, "w");
    p_tensor(&d, 6, 0, 2, size, stride);
    PUTL(&d, "s");
    legacy_file(&f, &d, 6, 6);
    ts_tensor_map *m = NULL;
    int rc = ts_pth_load_memory(f.p, f.n, &m);
    CHECK(rc == 0, "baseline legacy file: %s", tinysam_last_error());
    if (!rc) {
        const ts_tensor *t = ts_map_get(m, "w");
        CHECK(t && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 &&
                  ((const float *)t->data)[5] == 1.0f, "tensor w wrong");
        ts_map_free(m);
    }
    free(d.p);
    free(f.p);
}

static void test_pickle_mark_depth(void) {
    buf d = {0}, f = {0};
    for (int i = 0; i < 200000; i++) PUTL(&d, "(");
    legacy_file(&f, &d, 1, 1);
    double dt;
    int rc = load_pth(&f, &dt);
    CHECK_CLEAN_FAIL(rc, dt, "200000 nested MARKs");
    free(d.p);
    free(f.p);
}

/* A state dict with one good tensor "w" and, under key "x", the value that `build` writes. */
static void dict_with(buf *d, void (*build)(buf *d)) {
    int64_t size = 1, stride = 1;
    PUTL(d, "}");
    p_str(d, "w");
    p_tensor(d, 1, 0, 1, &size, &stride);
    PUTL(d, "s");
    p_str(d, "x");
    build(d);
    PUTL(d, "s");
}

/* Lists nested 300000 deep through the memo, with a bounded stack: whatever walks the
 * result must not recurse per level. */
static void deep_lists(buf *d) {
    PUTL(d, "]q\x00" "0");
    for (int i = 0; i < 300000; i++) PUTL(d, "]h\x00" "aq\x00" "0");
    PUTL(d, "h\x00");
}
static void self_list(buf *d) { PUTL(d, "]q\x00h\x00" "a"); }
static void self_dict(buf *d) { PUTL(d, "}q\x00X\x01\x00\x00\x00kh\x00s"); }

static void test_pickle_value_depth_and_cycles(void) {
    const struct { const char *what; void (*build)(buf *d); } cases[] = {
        {"lists nested 300000 deep", deep_lists},
        {"list containing itself", self_list},
        {"dict containing itself", self_dict},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        buf d = {0}, f = {0};
        dict_with(&d, cases[c].build);
        legacy_file(&f, &d, 1, 1);
        double dt;
        int rc = load_pth(&f, &dt);
        /* refusing is fine, so is loading "w" and ignoring "x": it must only end cleanly */
        CHECK(rc == 0 || *tinysam_last_error(), "%s: failed without a message", cases[c].what);
        CHECK(dt < 1.0, "%s: took %.2f s", cases[c].what, dt);
        printf("  %s -> %d %s\n", cases[c].what, rc, rc ? tinysam_last_error() : "");
        free(d.p);
        free(f.p);
    }
}

static void test_pickle_memo_limits(void) {
    const struct { const char *what, *ops; size_t n; } cases[] = {
        {"LONG_BINPUT 0xffffffff", "]r\xff\xff\xff\xff", 6},
        {"LONG_BINPUT 0x7fffffff", "]r\xff\xff\xff\x7f", 6},
        {"BINGET of an empty slot", "]h\x05", 3},
        {"LONG_BINGET past the memo", "]q\x00j\x00\x00\x00\x01", 8},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        buf d = {0}, f = {0};
        put(&d, cases[c].ops, cases[c].n);
        legacy_file(&f, &d, 1, 1);
        double dt;
        int rc = load_pth(&f, &dt);
        CHECK_CLEAN_FAIL(rc, dt, cases[c].what);
        free(d.p);
        free(f.p);
    }
}

/* More tensors than PTH_MAX_TENSORS (100000), all scalar views of one float. */
static void test_pickle_tensor_count(void) {
    buf d = {0}, f = {0};
    PUTL(&d, "}");
    /* memoize the pieces every tensor shares: rebuild function, storage, OrderedDict() */
    PUTL(&d, "ctorch._utils\n_rebuild_tensor_v2\nq\x01" "0(");
    p_str(&d, "storage");
    PUTL(&d, "ctorch\nFloatStorage\n");
    p_str(&d, "0");
    p_str(&d, "cpu");
    p_int(&d, 1);
    PUTL(&d, "tQq\x02" "0ccollections\nOrderedDict\n)Rq\x03" "0");
    char name[32];
    for (int i = 0; i < 100001; i++) {
        snprintf(name, sizeof name, "t%d", i);
        p_str(&d, name);
        PUTL(&d, "h\x01(h\x02K\x00))\x89h\x03tRs");
    }
    legacy_file(&f, &d, 1, 1);
    REQUIRE(!d.oom && !f.oom, "out of memory building the input");
    double dt;
    g_limit_s = 5.0;
    int rc = load_pth(&f, &dt);
    CHECK_CLEAN_FAIL(rc, dt, "100001 tensors");
    g_limit_s = 1.0;
    free(d.p);
    free(f.p);
}

/* Sizes against the file: a storage longer than the file, a view past its storage, and a
 * zero-stride view asking for 4 GiB out of a 4-byte storage. */
static void test_pickle_sizes_against_file(void) {
    const struct { const char *what; int64_t numel, have, offset, size, stride; } cases[] = {
        {"storage of 2^40 floats in a small file", (int64_t)1 << 40, 4, 0, 4, 1},
        {"view past the end of its storage", 4, 4, 2, 4, 1},
        {"negative offset", 4, 4, -1, 2, 1},
        {"negative size", 4, 4, 0, -2, 1},
        {"zero-stride view of 2^30 elements", 1, 1, 0, (int64_t)1 << 30, 0},
        {"view with a huge stride", 4, 4, 0, 2, (int64_t)1 << 62},
        {"size overflowing int64 products", 4, 4, 0, (int64_t)1 << 62, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        buf d = {0}, f = {0};
        PUTL(&d, "}");
        p_str(&d, "w");
        p_tensor(&d, cases[c].numel, cases[c].offset, 1, &cases[c].size, &cases[c].stride);
        PUTL(&d, "s");
        legacy_file(&f, &d, (uint64_t)cases[c].numel, (uint64_t)cases[c].have);
        double dt;
        int rc = load_pth(&f, &dt);
        CHECK_CLEAN_FAIL(rc, dt, cases[c].what);
        free(d.p);
        free(f.p);
    }
}

/* ------------------------------------------------------------------ safetensors */

static int load_st(const char *header, size_t data_bytes, double *dt) {
    buf b = {0};
    put_le(&b, strlen(header), 8);
    puts_(&b, header);
    for (size_t i = 0; i < data_bytes; i++) put(&b, "\0", 1);
    ts_tensor_map *m = NULL;
    ts_error_clear();
    double t0 = now_s();
    int rc = ts_safetensors_load_memory(b.p, b.n, &m);
    *dt = now_s() - t0;
    if (!rc) ts_map_free(m);
    free(b.p);
    return rc;
}

static void test_safetensors_limits(void) {
    const char *cases[] = {
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,16]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,1099511627776]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,0]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}",
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,16]}}",
        ("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}"),
        "{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}",
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double dt;
        int rc = load_st(cases[c], 16, &dt);
        CHECK_CLEAN_FAIL(rc, dt, cases[c]);
    }
    /* a header length beyond the file */
    uint8_t hdr[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    ts_tensor_map *m = NULL;
    int rc = ts_safetensors_load_memory(hdr, sizeof hdr, &m);
    CHECK_CLEAN_FAIL(rc, 0.0, "header length 2^63");
    /* more tensors than ST_MAX_TENSORS (100000), each one empty */
    buf h = {0};
    PUTL(&h, "{");
    char e[96];
    for (int i = 0; i < 100001; i++) {
        snprintf(e, sizeof e, "%s\"t%d\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}",
                 i ? "," : "", i);
        puts_(&h, e);
    }
    PUTL(&h, "}");
    put(&h, "", 1);
    REQUIRE(!h.oom, "out of memory building the input");
    double dt;
    g_limit_s = 5.0;
    rc = load_st((const char *)h.p, 0, &dt);
    CHECK_CLEAN_FAIL(rc, dt, "100001 tensors");
    g_limit_s = 1.0;
    free(h.p);
}

/* ------------------------------------------------------------------ npy */

static void test_npy_limits(void) {
    const char *shapes[] = {"(9223372036854775807, 2)", "(4294967296, 4294967296)", "(-1,)",
                            "(1, 1, 1, 1, 1, 1, 1, 1, 1)", "(1000000000,)"};
    for (size_t c = 0; c < sizeof shapes / sizeof shapes[0]; c++) {
        char hdr[128];
        int n = snprintf(hdr, sizeof hdr, "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }",
                         shapes[c]);
        buf b = {0};
        put(&b, "\x93NUMPY\x01\x00", 8);
        put_le(&b, (uint64_t)n + 1, 2);
        put(&b, hdr, (size_t)n);
        PUTL(&b, "\n");
        put_le(&b, 0, 8);
        ts_npy a;
        ts_error_clear();
        double t0 = now_s();
        int rc = ts_npy_parse(b.p, b.n, &a);
        double dt = now_s() - t0;
        if (!rc) ts_npy_free(&a);
        CHECK_CLEAN_FAIL(rc, dt, shapes[c]);
        free(b.p);
    }
}

/* ------------------------------------------------------------------ JSON */

static void test_json_depth(void) {
    char text[2 * (TS_JSON_MAX_DEPTH + 3) + 1];
    for (int depth = TS_JSON_MAX_DEPTH - 1; depth <= TS_JSON_MAX_DEPTH + 2; depth++) {
        int n = 0;
        for (int i = 0; i < depth; i++) text[n++] = '[';
        for (int i = 0; i < depth; i++) text[n++] = ']';
        ts_json *j = NULL;
        int rc = ts_json_parse(text, (size_t)n, &j);
        if (!rc) ts_json_free(j);
        printf("  depth %d -> %d\n", depth, rc);
        /* the exact boundary is json.c's business; bounded recursion is what matters */
        if (depth <= TS_JSON_MAX_DEPTH - 1) CHECK(rc == 0, "depth %d refused", depth);
        if (depth > TS_JSON_MAX_DEPTH + 1) CHECK(rc < 0, "depth %d accepted", depth);
    }
    /* a million nested arrays: refused at the limit, not by running out of stack */
    size_t big = 1000000;
    char *deep = malloc(big);
    REQUIRE(deep, "oom");
    memset(deep, '[', big);
    ts_json *j = NULL;
    double t0 = now_s();
    int rc = ts_json_parse(deep, big, &j);
    double dt = now_s() - t0;
    if (!rc) ts_json_free(j);
    CHECK_CLEAN_FAIL(rc, dt, "10^6 nested arrays");
    free(deep);
}

/* ------------------------------------------------------------------ images */

/* A PNG whose IHDR announces w x h; the rest of the file is a tiny valid IDAT of a 1x1
 * image, so only the header can stop the decode before it allocates w * h * 3. */
static void png_header(buf *b, uint32_t w, uint32_t h) {
    static const uint32_t crc_table_seed = 0xedb88320u;
    uint8_t ihdr[17] = {'I', 'H', 'D', 'R'};
    for (int i = 0; i < 4; i++) {
        ihdr[4 + i] = (uint8_t)(w >> (24 - 8 * i));
        ihdr[8 + i] = (uint8_t)(h >> (24 - 8 * i));
    }
    ihdr[12] = 8; /* depth */
    ihdr[13] = 2; /* RGB */
    uint32_t c = 0xffffffffu;
    for (int i = 0; i < 17; i++) {
        c ^= ihdr[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (crc_table_seed & (0u - (c & 1)));
    }
    c ^= 0xffffffffu;
    put(b, "\x89PNG\r\n\x1a\n\x00\x00\x00\x0d", 12);
    put(b, ihdr, 17);
    uint8_t cb[4] = {(uint8_t)(c >> 24), (uint8_t)(c >> 16), (uint8_t)(c >> 8), (uint8_t)c};
    put(b, cb, 4);
    put(b, "\x00\x00\x00\x00IEND\xae\x42\x60\x82", 12);
}

static void test_image_pixel_limits(void) {
    const struct { uint32_t w, h; long long max; int want; } cases[] = {
        {100000, 100000, 0, TINYSAM_E_LIMIT},      /* 10^10 pixels, default limit 10^8 */
        {65536, 1, 0, TINYSAM_E_LIMIT},            /* a side above TS_IMAGE_MAX_SIDE */
        {1, 65536, (long long)1 << 40, TINYSAM_E_LIMIT},
        {4, 1000000, 4000000, TINYSAM_E_LIMIT},    /* 4 MP as a sliver: 7M libpng rows */
        {2001, 2000, 4000000, TINYSAM_E_LIMIT},    /* 4,002,000 pixels, limit 4,000,000 */
        {0x7fffffff, 0x7fffffff, (long long)1 << 62, TINYSAM_E_LIMIT},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        buf b = {0};
        png_header(&b, cases[c].w, cases[c].h);
        tinysam_image img = {0};
        ts_error_clear();
        double t0 = now_s();
        int rc = tinysam_image_decode(b.p, b.n, cases[c].max, &img);
        double dt = now_s() - t0;
        if (!rc) tinysam_image_free(&img);
        char what[96];
        snprintf(what, sizeof what, "PNG %ux%u, max_pixels %lld", cases[c].w, cases[c].h,
                 cases[c].max);
        CHECK_CLEAN_FAIL(rc, dt, what);
        CHECK(rc == cases[c].want || rc == TINYSAM_E_FORMAT, "%s: status %d", what, rc);
        free(b.p);
    }
    /* the limit is inclusive: a 7x5 image passes at 35 pixels and fails at 34 */
    static const char *seed = "tests/fuzz/corpus/image/png_rgb8";
    FILE *f = fopen(seed, "rb");
    if (!f) SKIP("no seed corpus");
    uint8_t data[4096];
    size_t n = fread(data, 1, sizeof data, f);
    fclose(f);
    tinysam_image img = {0};
    int rc = tinysam_image_decode(data, n, 35, &img);
    CHECK(rc == 0 && img.width == 7 && img.height == 5, "7x5 at limit 35: %d", rc);
    if (!rc) tinysam_image_free(&img);
    rc = tinysam_image_decode(data, n, 34, &img);
    CHECK(rc == TINYSAM_E_LIMIT, "7x5 at limit 34: %d", rc);
    if (!rc) tinysam_image_free(&img);
}

/* A chunk whose header ends the file (no data, no CRC) still announces its length: libpng
 * would allocate and clear 1.6 GB for this 44-byte file before finding it truncated (found
 * by the CI fuzz smoke run as a 2 GB RSS failure). The pre-scan must name the chunk. */
static void test_png_chunk_past_end(void) {
    const uint32_t lens[] = {0x633fa063u, 0xffffffffu, 0u, 20u};
    for (size_t k = 0; k < sizeof lens / sizeof lens[0]; k++) {
        buf b = {0};
        png_header(&b, 7, 5);
        b.n -= 12; /* drop IEND */
        uint8_t hdr[11] = {(uint8_t)(lens[k] >> 24), (uint8_t)(lens[k] >> 16),
                           (uint8_t)(lens[k] >> 8), (uint8_t)lens[k], 's', 'P', 'L', 'T', 'E', 'c', 'c'};
        put(&b, hdr, sizeof hdr);
        tinysam_image img = {0};
        ts_error_clear();
        double t0 = now_s();
        int rc = tinysam_image_decode(b.p, b.n, 0, &img);
        double dt = now_s() - t0;
        if (!rc) tinysam_image_free(&img);
        char what[64];
        snprintf(what, sizeof what, "PNG ending in a %u-byte sPLT header", lens[k]);
        CHECK_CLEAN_FAIL(rc, dt, what);
        CHECK(rc == TINYSAM_E_FORMAT && strstr(tinysam_last_error(), "'sPLT'") &&
                  strstr(tinysam_last_error(), "runs past the end"),
              "%s: %d %s", what, rc, tinysam_last_error());
        free(b.p);
    }
}

int main(void) {
    RUN(test_pickle_baseline_loads);
    RUN(test_pickle_mark_depth);
    RUN(test_pickle_value_depth_and_cycles);
    RUN(test_pickle_memo_limits);
    RUN(test_pickle_tensor_count);
    RUN(test_pickle_sizes_against_file);
    RUN(test_safetensors_limits);
    RUN(test_npy_limits);
    RUN(test_json_depth);
    RUN(test_image_pixel_limits);
    RUN(test_png_chunk_past_end);
    return test_summary();
}
