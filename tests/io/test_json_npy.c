/* test_json_npy.c - the JSON reader and the .npy reader/writer. */
#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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

int main(void) {
    RUN(test_json_values);
    RUN(test_json_rejects);
    RUN(test_npy_roundtrip);
    RUN(test_npy_fixture);
    RUN(test_npy_rejects);
    return test_summary();
}
