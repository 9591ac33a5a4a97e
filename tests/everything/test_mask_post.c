/* test_mask_post.c - the spans path of everything mode (mask_post.c) against the dense
 * reference (today's code: every pixel up-sampled, thresholded, boxed, run-length encoded):
 * identical summaries, bit for bit, on random low-res logits near the thresholds (smooth,
 * noisy, thin lines, huge and subnormal magnitudes, non-finite, lattices that switch to the
 * dense computation at once or after the first columns), and identical records of the
 * whole generator on oracle scenes: scene_a x 10/3 (12 MP), holes, thin objects of 1-3 px,
 * objects cut by the border, in grid, hierarchical and crop modes, with and without
 * --min-mask-region-area (computed on the masks' runs; also against the pixel version on
 * random masks). */
#include "core.h"
#include "everything/mask_post.h"
#include "everything/provider.h"
#include "model/transforms.h"
#include "scene_gen.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng = 88172645463325252ULL;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 32);
}
static double rnd01(void) { return rnd() / 4294967296.0; }

/* LATTICE: random weights' masks (signs alternate cell by cell: a boundary everywhere);
 * BAND: such a lattice over the top tenth, smooth below; DOTS: single cells on the
 * thresholds every 4 cells in a background clearly below them. */
enum { SMOOTH, NOISY, LINES, HUGE_TINY, NONFINITE, LATTICE, BAND, DOTS, N_KINDS };

/* Low-res logits of one kind; lo/hi are the thresholds the values crowd around. */
static void make_logits(int kind, float *low, float off) {
    double cx = 40 + 170 * rnd01(), cy = 40 + 170 * rnd01(), r = 20 + 90 * rnd01();
    double gain = 0.5 + 4 * rnd01();
    const float near[] = {0.0f, off, -off, nextafterf(off, 9), nextafterf(-off, -9),
                          nextafterf(0, 1), nextafterf(0, -1), 1e-30f, -1e-30f};
    for (int i = 0; i < 256; i++)
        for (int j = 0; j < 256; j++) {
            double dx = (j - cx) / r, dy = (i - cy) / r;
            float v = (float)(gain * ((1 - dx * dx) - dy * dy));
            switch (kind) {
            case NOISY:
                if (rnd() % 3 == 0) v = near[rnd() % 9];
                else if (rnd() % 2) v += (float)(rnd01() - 0.5) * 2.0f;
                break;
            case LINES: /* one low-res row / column of a line: 4 to 16 output pixels wide */
                v = -3.0f;
                if (i == (int)cy || j == (int)cx) v = (rnd() % 2) ? 3.0f : off;
                if (i == (int)cx && j % 3 == 0) v = nextafterf(off, 9); /* dotted */
                break;
            case HUGE_TINY:
                if (rnd() % 4 == 0) v *= 1e30f;
                else if (rnd() % 3 == 0) v = (float)(v * 1e-40); /* subnormals */
                break;
            case NONFINITE:
                if (rnd() % 5000 == 0) v = (rnd() % 2) ? NAN : INFINITY;
                break;
            case LATTICE:
            case BAND:
                if (kind == LATTICE || i < 26)
                    v = (float)(((i + j) & 1) ? 1 : -1) * (float)(0.2 + 6 * rnd01());
                break;
            case DOTS:
                v = (i % 4 == 2 && j % 4 == 2 && j >= 8) ? near[rnd() % 9] : -5.0f;
                break;
            default:
                break;
            }
            low[i * 256 + j] = v;
        }
}

static int same_summary(const ts_mask_summary *a, const ts_mask_summary *b) {
    return a->n_hi == b->n_hi && a->n_lo == b->n_lo && !memcmp(a->box, b->box, sizeof a->box) &&
           a->rle.n == b->rle.n &&
           !memcmp(a->rle.counts, b->rle.counts, sizeof(uint32_t) * (size_t)a->rle.n);
}

static void check_geometry(int h, int w, int x0, int y0, int W, int H, int n_masks) {
    int newh, neww;
    ts_preprocess_shape(h, w, 1024, &newh, &neww);
    ts_mask_geom g;
    REQUIRE(ts_mask_geom_init(&g, newh, neww, h, w) == 0, "geometry");
    float *low = malloc(sizeof(float) * 65536);
    float *dense = malloc(sizeof(float) * (size_t)h * w);
    uint8_t *bytes = malloc((size_t)h * w);
    ts_mask_scratch sp = {.spans_only = 1}, sd = {0}, sf = {0};
    for (int m = 0; m < n_masks; m++) {
        int kind = m % N_KINDS;
        float off = (m / N_KINDS) % 3 == 2 ? 0.0f : 1.0f;
        make_logits(kind, low, off);
        ts_mask_frame f = {0.0f - off, 0.0f + off, x0, y0, W, H, 0.0f};
        ts_mask_summary a = {0}, b = {0}, c = {0};
        REQUIRE(ts_mask_summarize_dense(&g, low, &f, &sd, &b) == 0, "dense");
        REQUIRE(ts_mask_summarize(&g, low, &f, kind == NONFINITE ? &sf : &sp, &a) == 0, "spans");
        REQUIRE(ts_mask_summarize(&g, low, &f, &sf, &c) == 0, "spans with fallback");
        CHECK(same_summary(&a, &b), "%dx%d at (%d,%d) in %dx%d, kind %d, offset %g: spans %lld/%lld "
              "box %d %d %d %d, %d counts; dense %lld/%lld box %d %d %d %d, %d counts",
              w, h, x0, y0, W, H, kind, (double)off, a.n_hi, a.n_lo, a.box[0], a.box[1], a.box[2],
              a.box[3], a.rle.n, b.n_hi, b.n_lo, b.box[0], b.box[1], b.box[2], b.box[3], b.rle.n);
        CHECK(same_summary(&c, &b), "%dx%d kind %d: default path differs", w, h, kind);
        CHECK(kind == NONFINITE || !a.dense, "spans_only took the dense path");
        /* the switch to the dense computation, where spans would not pay: at once for a
         * lattice, after the first column windows for the dots, never for a band */
        if (w == 1200 && h == 900 && kind >= LATTICE) {
            int want = kind == LATTICE ? 1 : kind == DOTS ? 2 : 0;
            CHECK(c.switched == want && c.dense == (want != 0), "kind %d: switched %d (dense %d), want %d",
                  kind, c.switched, c.dense, want);
        }
        /* single pixels, as the hierarchical mode's cover reads them */
        REQUIRE(ts_postprocess_mask(low, newh, neww, h, w, dense, NULL) == 0, "postprocess");
        int bad = 0;
        for (int k = 0; k < 2000; k++) {
            int y = (int)(rnd() % (uint32_t)h), x = (int)(rnd() % (uint32_t)w);
            float p = ts_mask_pixel(&g, low, y, x), q = dense[(size_t)y * w + x];
            bad += memcmp(&p, &q, sizeof p) != 0;
        }
        CHECK(bad == 0, "%dx%d kind %d: %d single pixels differ", w, h, kind, bad);
        /* the byte mask of the prompted path, by spans */
        REQUIRE(ts_mask_fill(&g, low, &sf, bytes) == 0, "fill");
        size_t wrong = 0;
        for (size_t k = 0; k < (size_t)h * w; k++) wrong += bytes[k] != (dense[k] > 0.0f);
        CHECK(wrong == 0, "%dx%d kind %d: %zu bytes of the filled mask differ", w, h, kind, wrong);
        ts_rle_free(&a.rle);
        ts_rle_free(&b.rle);
        ts_rle_free(&c.rle);
    }
    ts_mask_scratch_free(&sp);
    ts_mask_scratch_free(&sd);
    ts_mask_scratch_free(&sf);
    ts_mask_geom_free(&g);
    free(low);
    free(dense);
    free(bytes);
}

static void test_random_logits(void) {
    check_geometry(900, 1200, 0, 0, 1200, 900, 30);
    check_geometry(1024, 1024, 0, 0, 1024, 1024, 10); /* stage 2 is the identity */
    check_geometry(333, 500, 17, 40, 600, 400, 15);   /* a crop placed in the image */
    check_geometry(5, 7, 1, 2, 9, 9, 15);             /* fewer pixels than low-res cells */
    check_geometry(1500, 37, 3, 0, 50, 1500, 10);     /* thin and tall */
    if (!test_sanitized()) check_geometry(3000, 4000, 0, 0, 4000, 3000, 3);
}

/* ------------------------------------------------------------------ small regions */

/* A random W x H mask: thresholded sums of blobs, speckled with single pixels and holes. */
static void random_mask(uint8_t *m, int W, int H) {
    int nb = 1 + (int)(rnd() % 6), speck = (int)(rnd() % 4);
    double bx[6], by[6], br[6];
    for (int b = 0; b < nb; b++) bx[b] = rnd01() * W, by[b] = rnd01() * H, br[b] = 1 + rnd01() * (W + H) / 4;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            double v = 0;
            for (int b = 0; b < nb; b++) {
                double dx = (x - bx[b]) / br[b], dy = (y - by[b]) / br[b];
                v += dx * dx + dy * dy < 1;
            }
            int on = v == 1 || (v > 2); /* overlaps of two blobs are holes */
            if (speck && rnd() % (40 / speck) == 0) on = !on;
            m[(size_t)y * W + x] = (uint8_t)on;
        }
}

/* The runs version against the pixel one on the decoded mask: changed flag, box, RLE. */
static void check_regions(const uint8_t *m, int W, int H, int min_area, int *n_changed) {
    size_t n = (size_t)W * H;
    uint8_t *d = malloc(n);
    ts_rle in = {0}, want = {0}, got = {0};
    REQUIRE(d && ts_rle_encode(m, W, H, 0, 0, W, H, &in) == 0, "encode");
    memcpy(d, m, n);
    int ch1, ch2, ch, box[4], wbox[4];
    REQUIRE(ts_remove_small_regions(d, W, H, min_area, 0, &ch1) == 0, "holes");
    REQUIRE(ts_remove_small_regions(d, W, H, min_area, 1, &ch2) == 0, "islands");
    ts_mask_box(d, W, H, wbox);
    REQUIRE(ts_rle_encode(d, W, H, 0, 0, W, H, &want) == 0, "encode");
    REQUIRE(ts_rle_remove_small_regions(in.counts, in.n, W, H, min_area, &ch, box, &got) == 0,
            "runs: %s", tinysam_last_error());
    int ok = ch == (ch1 || ch2) && !memcmp(box, wbox, sizeof box) &&
             (!ch || (got.n == want.n &&
                      !memcmp(got.counts, want.counts, sizeof(uint32_t) * (size_t)got.n)));
    CHECK(ok, "%dx%d min area %d: changed %d vs %d, box %d %d %d %d vs %d %d %d %d, %d vs %d counts",
          W, H, min_area, ch, ch1 || ch2, box[0], box[1], box[2], box[3], wbox[0], wbox[1],
          wbox[2], wbox[3], got.n, want.n);
    if (n_changed) *n_changed += ch1 || ch2;
    ts_rle_free(&in);
    ts_rle_free(&want);
    ts_rle_free(&got);
    free(d);
}

static void test_small_regions_runs(void) {
    /* hand-made: empty, full, diagonal neighbours, equal islands (the tie-break by OpenCV's
     * 2x2-block order), a hole touching the border */
    uint8_t m[8 * 6];
    memset(m, 0, sizeof m);
    check_regions(m, 8, 6, 3, NULL);
    memset(m, 1, sizeof m);
    check_regions(m, 8, 6, 3, NULL);
    memset(m, 0, sizeof m);
    m[0] = m[9] = m[18] = 1;    /* one diagonal island of 3 */
    m[5] = m[6] = m[13] = 1;    /* an L of 3 */
    m[40] = m[47] = 1;          /* two singles in the last row */
    for (int a = 1; a <= 5; a++) check_regions(m, 8, 6, a, NULL);
    memset(m, 1, sizeof m);
    m[0] = m[7] = m[47] = m[20] = m[21] = 0; /* holes at corners and inside */
    for (int a = 1; a <= 3; a++) check_regions(m, 8, 6, a, NULL);
    memset(m, 0, sizeof m);
    m[2] = m[3] = m[44] = m[45] = 1; /* two islands of 2: the first block in raster order */
    check_regions(m, 8, 6, 5, NULL);
    int changed = 0, runs = 0;
    uint8_t *r = malloc(64 * 64);
    for (int t = 0; t < 400; t++) {
        int W = 1 + (int)(rnd() % 64), H = 1 + (int)(rnd() % 64);
        random_mask(r, W, H);
        check_regions(r, W, H, 1 + (int)(rnd() % 60), &changed);
        runs++;
    }
    free(r);
    CHECK(changed > runs / 4 && changed < runs, "random masks: %d of %d changed", changed, runs);
}

/* ------------------------------------------------------------------ whole generator */

static int same_records(const tinysam_everything_result *a, const tinysam_everything_result *b,
                        const char *label) {
    if (a->n != b->n) {
        t_fail(__FILE__, __LINE__, "%s: %d records vs %d", label, a->n, b->n);
        return 0;
    }
    for (int i = 0; i < a->n; i++) {
        const tinysam_mask_record *p = &a->records[i], *q = &b->records[i];
        int same = p->n_counts == q->n_counts &&
                   !memcmp(p->counts, q->counts, sizeof(uint32_t) * (size_t)p->n_counts) &&
                   p->area == q->area && !memcmp(p->bbox, q->bbox, sizeof p->bbox) &&
                   !memcmp(&p->stability_score, &q->stability_score, sizeof(float)) &&
                   !memcmp(&p->predicted_iou, &q->predicted_iou, sizeof(float)) &&
                   !memcmp(p->point, q->point, sizeof p->point) &&
                   !memcmp(p->crop_box, q->crop_box, sizeof p->crop_box);
        if (!same) {
            t_fail(__FILE__, __LINE__, "%s: record %d differs (area %lld vs %lld)", label, i,
                   p->area, q->area);
            return 0;
        }
    }
    return 1;
}

static void compare_scene_area(const char *scene, const char *name, int pps, int crops, float iou,
                               int min_area) {
    tinysam_everything_options o;
    for (int mode = 0; mode < 2; mode++) {
        if (crops && mode == 0) continue;
        tinysam_everything_defaults(&o);
        o.mode = mode == 0 ? TINYSAM_EVERYTHING_HIERARCHICAL : TINYSAM_EVERYTHING_GRID;
        o.points_per_side = pps;
        o.crop_n_layers = crops;
        o.pred_iou_thresh = iou; /* below 0.6: the background's blobs too */
        o.stability_score_thresh = 0.5f;
        o.min_mask_region_area = min_area;
        tinysam_everything_result s, d;
        REQUIRE(tinysam_everything_oracle(scene, &o, &s) == 0, "%s", tinysam_last_error());
        ts_everything_set_dense(1);
        int rc = tinysam_everything_oracle(scene, &o, &d);
        ts_everything_set_dense(0);
        REQUIRE(rc == 0, "%s", tinysam_last_error());
        char label[128];
        snprintf(label, sizeof label, "%s %s%s%s", name, mode ? "grid" : "hierarchical",
                 crops ? " crops" : "", min_area ? " min-mask-region-area" : "");
        if (same_records(&s, &d, label))
            printf("  %s: %d records identical\n", label, s.n);
        CHECK(s.n > 0, "%s: no records", label);
        tinysam_everything_free(&s);
        tinysam_everything_free(&d);
    }
}

static void compare_scene(const char *scene, const char *name, int pps, int crops, float iou) {
    compare_scene_area(scene, name, pps, crops, iou, 0);
}

static void test_scaled_scene_a(void) {
    if (!fixture_exists("oracle/scene_a/scene.json")) SKIP("fixtures missing");
    /* the dense reference is ~10x slower under the sanitizers: half the side there */
    const char *p = tmp_path("scene_a_12mp.json");
    double s = test_sanitized() ? 5.0 / 3.0 : 10.0 / 3.0;
    REQUIRE(sg_write_scaled(fixture("oracle/scene_a/scene.json"), p, s) == 0, "write");
    compare_scene(p, test_sanitized() ? "scene_a x 5/3" : "scene_a x 10/3", 8, 0, 0.88f);
}

static void write_scene(const char *path, int W, int H, const char *objects) {
    FILE *f = fopen(path, "w");
    REQUIRE(f, "cannot write %s", path);
    fprintf(f,
            "{\"name\": \"t\", \"width\": %d, \"height\": %d, \"background\": {\"radius\": 20, "
            "\"gain\": 10, \"iou\": [0.6, 0.5, 0.4]}, \"duplicate_penalty\": 0.15, "
            "\"objects\": [%s]}\n",
            W, H, objects);
    fclose(f);
}

#define OBJ(id, par, iou, gain, shapes, holes)                                                    \
    "{\"id\": " #id ", \"name\": \"x\", \"parent\": " par ", \"iou\": " #iou ", \"gain\": " #gain \
    ", \"shapes\": [" shapes "], \"holes\": [" holes "]}"
#define ELL(cx, cy, rx, ry)                                                                       \
    "{\"type\": \"ellipse\", \"cx\": " #cx ", \"cy\": " #cy ", \"rx\": " #rx ", \"ry\": " #ry "}"
#define RECT(cx, cy, rx, ry)                                                                      \
    "{\"type\": \"rect\", \"cx\": " #cx ", \"cy\": " #cy ", \"rx\": " #rx ", \"ry\": " #ry "}"

static void test_holes_thin_border(void) {
    const char *holes = tmp_path("scene_holes.json");
    write_scene(holes, 2000, 1500,
                OBJ(1, "null", 0.95, 60, ELL(1000, 750, 800, 600),
                    ELL(700, 600, 150, 100) "," RECT(1300, 900, 120, 160) "," ELL(1000, 400, 6, 4)) ","
                OBJ(2, "1", 0.93, 3, ELL(700, 600, 140, 90), "") ","
                OBJ(3, "null", 0.92, 40, RECT(300, 1400, 250, 90), RECT(300, 1400, 240, 2)));
    compare_scene(holes, "holes", test_sanitized() ? 4 : 8, 0, 0.5f);
    /* --min-mask-region-area on the mask's runs: the small hole filled, islands dropped */
    compare_scene_area(holes, "holes", 4, 0, 0.5f, 400);
    /* thin objects: 1-3 pixels wide (rx 0.5 .. 1.5) at 256 x 192, where one low-res cell is
     * one pixel, and at 1600 x 1200 */
    const char *thin = tmp_path("scene_thin.json");
    write_scene(thin, 256, 192,
                OBJ(1, "null", 0.95, 200, RECT(64, 96, 0.5, 80), "") ","
                OBJ(2, "null", 0.95, 200, RECT(128, 96, 1.0, 80), "") ","
                OBJ(3, "null", 0.95, 200, RECT(192, 96, 1.5, 80), "") ","
                OBJ(4, "null", 0.95, 300, RECT(128, 40, 120, 1.0), ""));
    compare_scene(thin, "thin 256x192", 16, 0, 0.5f);
    write_scene(thin, 1600, 1200,
                OBJ(1, "null", 0.95, 900, RECT(400, 600, 1.5, 500), "") ","
                OBJ(2, "null", 0.95, 600, RECT(800, 300, 700, 1.0), "") ","
                OBJ(3, "null", 0.95, 900, ELL(1200, 700, 3, 300), ""));
    compare_scene(thin, "thin 1600x1200", 8, 0, 0.5f);
    const char *border = tmp_path("scene_border.json");
    write_scene(border, 1800, 1000,
                OBJ(1, "null", 0.95, 80, ELL(0, 300, 400, 250), "") ","
                OBJ(2, "null", 0.94, 80, RECT(1800, 500, 300, 600), "") ","
                OBJ(3, "null", 0.93, 5, ELL(900, 1000, 500, 200), "") ","
                OBJ(4, "null", 0.96, 50, RECT(900, 0, 900, 30), ""));
    compare_scene(border, "border", 8, 0, 0.5f);
    compare_scene(border, "border", 4, 1, 0.5f);
    compare_scene_area(border, "border", 4, 0, 0.5f, 5000);
}

int main(void) {
    RUN(test_random_logits);
    RUN(test_small_regions_runs);
    RUN(test_scaled_scene_a);
    RUN(test_holes_thin_border);
    return test_summary();
}
