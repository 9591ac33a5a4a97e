/* test_json_npy.c - the JSON reader and the .npy reader/writer. */
#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensor_map_internal.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void test_json_values(void) {
    const char *s = "{\"a\": [1, -2.5e3, true, false, null], \"b\": {\"c\": \"x\\\"y\\u00e9\\n\"},"
                    " \"d\": []}";
    ts_json *j;
    REQUIRE(ts_json_parse(s, strlen(s), &j) == 0, "parse: %s", tinysam_last_error());
    const ts_json *a = ts_json_get(j, "a");
    REQUIRE(a && a->type == TS_JSON_ARRAY && a->n == 5, "array a");
    CHECK(ts_json_at(a, 0)->number == 1.0, "a[0]");
    CHECK(ts_json_at(a, 1)->number == -2500.0, "a[1]");
    CHECK(ts_json_at(a, 2)->type == TS_JSON_BOOL && ts_json_at(a, 2)->number == 1, "a[2]");
    CHECK(ts_json_at(a, 4)->type == TS_JSON_NULL, "a[4]");
    CHECK(ts_json_at(a, 5) == NULL, "a[5] out of range");
    const ts_json *c = ts_json_get(ts_json_get(j, "b"), "c");
    CHECK(c && !strcmp(c->string, "x\"y\xc3\xa9\n"), "string escapes");
    CHECK(ts_json_get(j, "d")->n == 0, "empty array");
    CHECK(ts_json_get(j, "zz") == NULL, "absent key");
    ts_json_free(j);
}

static void test_json_rejects(void) {
    const char *bad[] = {"", "{", "[1,]", "{\"a\" 1}", "[1 2]", "\"abc", "[nan]", "[1e999]",
                         "{\"a\":1}x", "[\"\\q\"]", "[-]", "tru", "[\"\\ud800\\u0041\"]"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        ts_json *j = NULL;
        int rc = ts_json_parse(bad[i], strlen(bad[i]), &j);
        CHECK(rc == TINYSAM_E_FORMAT && j == NULL, "accepted bad json '%s'", bad[i]);
        CHECK(strlen(tinysam_last_error()) > 0, "no message for '%s'", bad[i]);
    }
    /* nesting beyond the limit is an error, not a stack overflow */
    size_t n = 100000;
    char *deep = malloc(n + 1);
    memset(deep, '[', n);
    deep[n] = 0;
    ts_json *j = NULL;
    CHECK(ts_json_parse(deep, n, &j) == TINYSAM_E_FORMAT, "deep nesting accepted");
    free(deep);
}

static void test_npy_roundtrip(void) {
    float v[6] = {1, -2, 3.5f, NAN, 1e-30f, 7};
    int64_t shape[2] = {2, 3};
    const char *p = tmp_path("a.npy");
    REQUIRE(ts_npy_save(p, TS_DTYPE_F32, 2, shape, v) == 0, "save: %s", tinysam_last_error());
    ts_npy a;
    REQUIRE(ts_npy_load(p, &a) == 0, "load: %s", tinysam_last_error());
    CHECK(a.dtype == TS_DTYPE_F32 && a.ndim == 2 && a.shape[0] == 2 && a.shape[1] == 3, "shape");
    CHECK(memcmp(a.data, v, sizeof v) == 0, "values");
    ts_npy_free(&a);
    remove(p);
}

static void test_npy_fixture(void) {
    if (!fixture_exists("reference/picture1/embedding.npy")) SKIP("fixtures missing");
    ts_npy a;
    REQUIRE(ts_npy_load(fixture("reference/picture1/embedding.npy"), &a) == 0, "%s",
            tinysam_last_error());
    CHECK(a.ndim == 4 && a.shape[0] == 1 && a.shape[1] == 256 && a.shape[2] == 64 &&
              a.shape[3] == 64 && a.numel == 1048576,
          "embedding shape");
    ts_npy_free(&a);
    REQUIRE(ts_npy_load(fixture("reference/picture1/stages/neck_idx.npy"), &a) == 0, "%s",
            tinysam_last_error());
    CHECK(a.dtype == TS_DTYPE_I64 && a.ndim == 1, "idx dtype");
    ts_npy_free(&a);
}

static void test_npy_rejects(void) {
    uint8_t *buf;
    size_t n;
    if (!fixture_exists("reference/picture1/iou.npy") &&
        !fixture_exists("reference/picture1/prompts/point/iou.npy"))
        SKIP("fixtures missing");
    REQUIRE(ts_read_file(fixture("reference/picture1/prompts/point/iou.npy"), 1 << 20, &buf, &n) == 0,
            "read");
    ts_npy a;
    for (size_t cut = 0; cut < n; cut += 7) {
        int rc = ts_npy_parse(buf, cut, &a);
        CHECK(rc == TINYSAM_E_FORMAT, "truncated at %zu accepted", cut);
        if (!rc) ts_npy_free(&a);
    }
    buf[6] = 9; /* version */
    CHECK(ts_npy_parse(buf, n, &a) == TINYSAM_E_FORMAT, "bad version accepted");
    free(buf);
    const char *hdr = "\x93NUMPY\x01\x00\x46\x00{'descr': '<f4', 'fortran_order': False, "
                      "'shape': (99999999999, 99999999999), }    \n";
    CHECK(ts_npy_parse((const uint8_t *)hdr, strlen(hdr), &a) == TINYSAM_E_FORMAT,
          "absurd shape accepted");
    CHECK(ts_npy_load("/nonexistent/x.npy", &a) == TINYSAM_E_IO, "missing file");
}

static uint16_t f2h(double v) {
    return ts_float_to_half((float)v);
}

static void test_float_to_half_values(void) {
    struct { double v; uint16_t h; } cases[] = {
        {1.0, 0x3c00},          {-2.0, 0xc000},         {65504.0, 0x7bff},
        {65520.0, 0x7c00},      {65519.0, 0x7bff},      {1e6, 0x7c00},
        {-1e6, 0xfc00},         {ldexp(1, -24), 0x0001}, {ldexp(1, -25), 0x0000},
        {ldexp(3, -25), 0x0002}, {ldexp(1, -26), 0x0000}, {ldexp(5, -26), 0x0001},
        {ldexp(1, -14), 0x0400}, {ldexp(1023, -24), 0x03ff}, {ldexp(2047, -25), 0x0400},
        {-0.0, 0x8000},         {0.0, 0x0000},          {1 + ldexp(1, -11), 0x3c00},
        {1 + ldexp(3, -11), 0x3c02}, {1 + ldexp(1, -10), 0x3c01}, {0.1, 0x2e66},
        {INFINITY, 0x7c00},     {-INFINITY, 0xfc00},    {ldexp(-3, -25), 0x8002},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = f2h(cases[i].v);
        CHECK(h == cases[i].h, "float_to_half(%a) = 0x%04x, expected 0x%04x", cases[i].v, h,
              cases[i].h);
    }
    uint16_t hn = ts_float_to_half(NAN);
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0, "NaN -> 0x%04x", hn);
    hn = ts_float_to_half(-NAN);
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0, "-NaN -> 0x%04x", hn);
    /* a NaN whose payload sits only in the low float bits must not become inf */
    uint32_t bits = 0x7f800001u;
    float f;
    memcpy(&f, &bits, 4);
    hn = ts_float_to_half(f);
    CHECK((hn & 0x7c00) == 0x7c00 && (hn & 0x3ff) != 0, "low-payload NaN -> 0x%04x", hn);
}

static void test_float_to_half_exhaustive(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) continue; /* NaN */
        uint16_t r = ts_float_to_half(ts_half_to_float((uint16_t)h));
        if (r != h && bad++ < 5) CHECK(0, "half 0x%04x -> 0x%04x", h, r);
    }
    CHECK(bad == 0, "%d halves do not round-trip", bad);
    /* midpoints between neighbouring finite halves of the same sign round to the even one */
    for (uint32_t h = 0; h < 0x7bff; h++) {
        double a = ts_half_to_float((uint16_t)h), b = ts_half_to_float((uint16_t)(h + 1));
        float mid = (float)((a + b) / 2); /* exact in float32 */
        uint16_t want = (h & 1) ? (uint16_t)(h + 1) : (uint16_t)h;
        uint16_t r = ts_float_to_half(mid);
        if (r != want && bad++ < 5) CHECK(0, "midpoint of 0x%04x: 0x%04x", h, r);
        /* just above / below the midpoint */
        float up = nextafterf(mid, INFINITY), dn = nextafterf(mid, 0);
        if ((ts_float_to_half(up) != h + 1 || ts_float_to_half(dn) != h) && bad++ < 5)
            CHECK(0, "around midpoint of 0x%04x", h);
    }
    CHECK(bad == 0, "%d rounding errors", bad);
}

static void test_npy_f16_roundtrip(void) {
    float v[6] = {1, -2, 0.1f, 65504, ldexpf(1, -24), -0.0f};
    uint16_t h[6];
    for (int i = 0; i < 6; i++) h[i] = ts_float_to_half(v[i]);
    int64_t shape[2] = {3, 2};
    const char *p = tmp_path("h.npy");
    REQUIRE(ts_npy_save(p, TS_DTYPE_F16, 2, shape, h) == 0, "save: %s", tinysam_last_error());
    /* the header says <f2 and the data are 12 bytes after a 64-byte-aligned header */
    uint8_t *buf;
    size_t n;
    REQUIRE(ts_read_file(p, 1 << 20, &buf, &n) == 0, "read");
    CHECK(n == 128 + 12 && memmem(buf, n, "'<f2'", 5) != NULL, "file layout (%zu bytes)", n);
    free(buf);
    ts_npy a;
    REQUIRE(ts_npy_load(p, &a) == 0, "load: %s", tinysam_last_error());
    CHECK(a.dtype == TS_DTYPE_F16 && a.ndim == 2 && a.shape[0] == 3 && a.shape[1] == 2 &&
              a.numel == 6,
          "header");
    CHECK(memcmp(a.data, h, sizeof h) == 0, "raw halves");
    REQUIRE(ts_npy_to_f32(&a) == 0, "to_f32: %s", tinysam_last_error());
    CHECK(a.dtype == TS_DTYPE_F32, "dtype after to_f32");
    const float *d = a.data;
    float want[6] = {1, -2, 0.0999755859375f, 65504, ldexpf(1, -24), -0.0f};
    CHECK(memcmp(d, want, sizeof want) == 0, "values %g %g %g %g %g %g", d[0], d[1], d[2], d[3],
          d[4], d[5]);
    ts_npy_free(&a);
    ts_npy info;
    CHECK(ts_npy_probe(p, &info) == 0 && info.dtype == TS_DTYPE_F16 && info.numel == 6 &&
              info.data == NULL,
          "probe: %s", tinysam_last_error());
    remove(p);

    /* float32 passes through unchanged; other dtypes are refused */
    float f[3] = {1.5f, NAN, -7};
    int64_t s1 = 3;
    REQUIRE(ts_npy_save(p, TS_DTYPE_F32, 1, &s1, f) == 0, "save f32");
    REQUIRE(ts_npy_load(p, &a) == 0, "load f32");
    CHECK(ts_npy_to_f32(&a) == 0 && a.dtype == TS_DTYPE_F32 && memcmp(a.data, f, sizeof f) == 0,
          "f32 unchanged");
    ts_npy_free(&a);
    uint8_t u[3] = {1, 2, 3};
    REQUIRE(ts_npy_save(p, TS_DTYPE_U8, 1, &s1, u) == 0, "save u8");
    REQUIRE(ts_npy_load(p, &a) == 0, "load u8");
    CHECK(ts_npy_to_f32(&a) == TINYSAM_E_FORMAT, "u8 converted");
    ts_npy_free(&a);
    remove(p);
}

static void test_npy_probe_rejects(void) {
    float v[8] = {0};
    int64_t s = 8;
    const char *p = tmp_path("probe.npy");
    REQUIRE(ts_npy_save(p, TS_DTYPE_F32, 1, &s, v) == 0, "save");
    ts_npy info;
    CHECK(ts_npy_probe(p, &info) == 0 && info.numel == 8, "probe good file");
    REQUIRE(truncate(p, 64 + 31) == 0, "truncate");
    CHECK(ts_npy_probe(p, &info) == TINYSAM_E_FORMAT, "truncated data accepted");
    REQUIRE(truncate(p, 40) == 0, "truncate");
    CHECK(ts_npy_probe(p, &info) == TINYSAM_E_FORMAT, "truncated header accepted");
    REQUIRE(truncate(p, 0) == 0, "truncate");
    CHECK(ts_npy_probe(p, &info) == TINYSAM_E_FORMAT, "empty file accepted");
    remove(p);
    CHECK(ts_npy_probe(p, &info) == TINYSAM_E_IO, "missing file");
}

int main(void) {
    RUN(test_json_values);
    RUN(test_json_rejects);
    RUN(test_npy_roundtrip);
    RUN(test_npy_fixture);
    RUN(test_npy_rejects);
    RUN(test_float_to_half_values);
    RUN(test_float_to_half_exhaustive);
    RUN(test_npy_f16_roundtrip);
    RUN(test_npy_probe_rejects);
    return test_summary();
}
