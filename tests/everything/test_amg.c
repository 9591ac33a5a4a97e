/* test_amg.c - unit tests of the everything-mode building blocks against hand-computed
 * cases: RLE and COCO strings, NMS, stability score, crop boxes, grids, the hierarchical
 * point selection, small-region removal. */
#include "core.h"
#include "everything/amg.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void test_rle(void) {
    /* H=2, W=3, row-major:  0 1 1 / 1 1 0  -> column-major 0,1 | 1,1 | 1,0 */
    const uint8_t m[6] = {0, 1, 1, 1, 1, 0};
    ts_rle r = {0};
    REQUIRE(ts_rle_encode(m, 3, 2, 0, 0, 3, 2, &r) == 0, "encode");
    const uint32_t want[] = {1, 4, 1};
    CHECK(r.n == 3 && !memcmp(r.counts, want, sizeof want), "counts");
    CHECK(ts_rle_area(r.counts, r.n) == 4, "area");
    /* COCO string by hand: 1 -> '1', 4 -> '4', 1 (i<=2, no delta) -> '1' */
    char *s = ts_rle_to_string(r.counts, r.n);
    CHECK(s && !strcmp(s, "141"), "coco string '%s'", s ? s : "(null)");
    free(s);
    /* delta coding from i = 3 on: counts 0,40,10,30 -> '0'; 40: low 5 bits 8 + continue 32
     * = 'X', then 1 = '1'; 10 = ':'; 30-40 = -10: low bits 22, rest -1 and sign bit set, so
     * it ends: 22 + 48 = 'F' */
    const uint32_t c2[] = {0, 40, 10, 30};
    s = ts_rle_to_string(c2, 4);
    CHECK(s && !strcmp(s, "0X1:F"), "coco string 2 '%s'", s ? s : "(null)");
    ts_rle back = {0};
    CHECK(s && ts_rle_from_string(s, &back) == 0 && back.n == 4 &&
              !memcmp(back.counts, c2, sizeof c2),
          "decode string 2");
    free(s);
    uint8_t d[6];
    CHECK(ts_rle_decode(r.counts, r.n, 3, 2, d) == 0 && !memcmp(d, m, 6), "decode");
    const uint32_t bad[] = {3, 9};
    CHECK(ts_rle_decode(bad, 2, 3, 2, d) != 0, "overlong counts accepted");
    /* a region placed inside a larger image: padding columns and rows are zeros */
    REQUIRE(ts_rle_encode(m, 3, 2, 1, 1, 5, 4, &r) == 0, "encode placed");
    uint8_t big[20];
    REQUIRE(ts_rle_decode(r.counts, r.n, 5, 4, big) == 0, "decode placed");
    CHECK(big[1 * 5 + 2] == 1 && big[1 * 5 + 1] == 0 && big[2 * 5 + 1] == 1 && big[0] == 0 &&
              ts_rle_area(r.counts, r.n) == 4,
          "placed mask");
    ts_rle_free(&r);
    ts_rle_free(&back);
}

static void test_nms(void) {
    const float boxes[] = {
        0, 0, 10, 10,   /* 0: score .9, kept */
        1, 1, 10, 10,   /* 1: IoU 81/100 with 0 -> suppressed */
        20, 20, 30, 30, /* 2: score .8, kept (tie with 3, lower index first) */
        20, 20, 30, 30, /* 3: same box, same score -> suppressed by 2 */
        50, 50, 50, 50, /* 4: zero area: IoU with 5 is 0/0 = NaN, never suppresses */
        50, 50, 50, 50, /* 5 */
        0, 0, 10, 4,    /* 6: IoU 40/100 with 0 -> kept */
    };
    const float scores[] = {0.9f, 0.95f, 0.8f, 0.8f, 0.5f, 0.5f, 0.1f};
    int keep[7];
    int n = ts_nms(boxes, scores, 7, 0.7, keep);
    /* processing order: 1 (0.95) first; 0 has IoU .81 with 1 -> suppressed */
    const int want[] = {1, 2, 4, 5, 6};
    CHECK(n == 5 && !memcmp(keep, want, sizeof want), "nms kept %d: %d %d %d %d %d", n, keep[0],
          keep[1], keep[2], keep[3], keep[4]);
}

static void test_stability(void) {
    /* values: 2 > 1 (inter), 0.5, -0.5 > -1 (union only), -2 (neither): 1/4... plus exactly 1.0
     * (not > 1) and -1.0 (not > -1) */
    const float v[] = {2.0f, 0.5f, -0.5f, -2.0f, 1.0f, -1.0f, 3.0f};
    float s = ts_stability_score(v, 7, 1.0f);
    CHECK(s == 2.0f / 5.0f, "stability %g", (double)s);
    const float neg[] = {-5.0f, -5.0f};
    CHECK(isnan(ts_stability_score(neg, 2, 1.0f)), "0/0 must be NaN");
    /* 19/20 passes a 0.95 threshold in float32 */
    float t[20];
    for (int i = 0; i < 20; i++) t[i] = i < 19 ? 5.0f : 0.5f;
    CHECK(ts_stability_score(t, 20, 1.0f) >= 0.95f, "19/20 >= 0.95f");
}

static void test_crop_boxes(void) {
    ts_crop_box b[5];
    int n = ts_crop_boxes(1200, 900, 1, 512.0 / 1500.0, b);
    /* overlap = int(0.3413 * 900) = 307; cw = ceil(1507/2) = 754; ch = ceil(1207/2) = 604 */
    const int want[5][4] = {{0, 0, 1200, 900}, {0, 0, 754, 604}, {0, 297, 754, 900},
                            {447, 0, 1200, 604}, {447, 297, 1200, 900}};
    REQUIRE(n == 5 && ts_crop_box_count(1) == 5, "count %d", n);
    for (int i = 0; i < 5; i++)
        CHECK(b[i].x0 == want[i][0] && b[i].y0 == want[i][1] && b[i].x1 == want[i][2] &&
                  b[i].y1 == want[i][3] && b[i].layer == (i > 0),
              "box %d: %d %d %d %d", i, b[i].x0, b[i].y0, b[i].x1, b[i].y1);
    CHECK(ts_crop_box_count(2) == 21, "two layers");
}

static void test_point_grid(void) {
    double g[2 * 16];
    ts_point_grid(4, g);
    /* linspace(0.125, 0.875, 4) = .125 .375 .625 .875, x fastest */
    CHECK(g[0] == 0.125 && g[1] == 0.125 && g[2] == 0.375 && g[3] == 0.125, "first points");
    CHECK(g[30] == 0.875 && g[31] == 0.875, "last point exact");
    double one[2];
    ts_point_grid(1, one);
    CHECK(one[0] == 0.5 && one[1] == 0.5, "n = 1");
}

static void test_hierarchical_points(void) {
    double g1[2 * 64], *out = malloc(sizeof(double) * 2 * 15 * 64);
    ts_point_grid(8, g1);
    CHECK(ts_hierarchical_points(g1, 8, 2000, 1500, 32, NULL, out) == 960, "1500x2000: 960");
    CHECK(ts_hierarchical_points(g1, 8, 1024, 1024, 32, NULL, out) == 897, "1024x1024: 897");
    /* covering the left half removes exactly the candidates whose column lies there */
    uint8_t *cover = calloc(1024 * 1024, 1);
    for (int y = 0; y < 1024; y++) memset(cover + (size_t)y * 1024, 1, 512);
    int n = ts_hierarchical_points(g1, 8, 1024, 1024, 32, cover, out), want = 0;
    double *all = malloc(sizeof(double) * 2 * 15 * 64);
    int nall = ts_hierarchical_points(g1, 8, 1024, 1024, 32, NULL, all);
    for (int i = 0; i < nall; i++) want += (int)all[2 * i] >= 512;
    CHECK(n == want && n > 0 && n < 897, "covered half: %d vs %d", n, want);
    for (int i = 0; i < n; i++) CHECK(out[2 * i] >= 512, "covered point kept");
    /* first candidate of the first point: (-1, -1) strides from (64, 64) */
    CHECK(all[0] == 64 - 32 && all[1] == 64 - 32, "first candidate %g %g", all[0], all[1]);
    free(out);
    free(all);
    free(cover);
}

static void test_small_regions(void) {
    /* 12x12: a 8x8 square with a 2-pixel hole, and a 3-pixel island elsewhere */
    uint8_t m[144] = {0};
    for (int y = 1; y < 9; y++)
        for (int x = 1; x < 9; x++) m[y * 12 + x] = 1;
    m[4 * 12 + 4] = m[4 * 12 + 5] = 0;                  /* hole */
    m[11 * 12 + 9] = m[11 * 12 + 10] = m[10 * 12 + 11] = 1; /* island, 8-connected */
    int ch;
    REQUIRE(ts_remove_small_regions(m, 12, 12, 5, 0, &ch) == 0, "holes");
    CHECK(ch && m[4 * 12 + 4] && m[4 * 12 + 5], "hole filled");
    REQUIRE(ts_remove_small_regions(m, 12, 12, 5, 1, &ch) == 0, "islands");
    CHECK(ch && !m[11 * 12 + 9] && !m[10 * 12 + 11] && m[1 * 12 + 1], "island removed");
    REQUIRE(ts_remove_small_regions(m, 12, 12, 5, 1, &ch) == 0, "again");
    CHECK(!ch, "nothing small left");
    /* all islands small: the largest survives */
    uint8_t s[100] = {0};
    s[0] = 1;                        /* 1 px */
    s[55] = s[56] = s[66] = 1;       /* 3 px, diagonal-connected */
    REQUIRE(ts_remove_small_regions(s, 10, 10, 50, 1, &ch) == 0, "largest");
    CHECK(ch && !s[0] && s[55] && s[56] && s[66], "largest kept");
}

int main(void) {
    RUN(test_rle);
    RUN(test_nms);
    RUN(test_stability);
    RUN(test_crop_boxes);
    RUN(test_point_grid);
    RUN(test_hierarchical_points);
    RUN(test_small_regions);
    return test_summary();
}
