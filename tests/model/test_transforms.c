/* test_transforms.c - pre/post-processing (spec TINYSAM.md sections 3.2-3.6) against the
 * official pipeline's fixtures and against a direct transcription of the spec. */
#include "common/test.h"
#include "core.h"
#include "io/npy.h"
#include "model/transforms.h"
#include "nn/nn.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- 3.2 */

static void test_preprocess_shape(void) {
    static const int cases[][4] = {
        /* h, w -> newh, neww (spec examples, [verified]) */
        {1500, 2000, 768, 1024}, {1333, 2000, 682, 1024},  {771, 1023, 772, 1024},
        {1025, 600, 1024, 599},  {5, 7, 731, 1024},        {770, 769, 1024, 1023},
        {480, 640, 768, 1024},   {1024, 1024, 1024, 1024}, {2621, 3000, 895, 1024},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int nh, nw;
        ts_preprocess_shape(cases[i][0], cases[i][1], 1024, &nh, &nw);
        CHECK(nh == cases[i][2] && nw == cases[i][3], "%dx%d -> %dx%d, want %dx%d", cases[i][0],
              cases[i][1], nh, nw, cases[i][2], cases[i][3]);
    }
}

/* ---------------------------------------------------------------- 3.3 */

static const char *const IMAGES[] = {"picture1",     "picture3",          "shapes",
                                     "shapes_grey",  "shapes_grey_alpha", "shapes_palette",
                                     "shapes_rgb16", "shapes_rgba"};

static int load_image(const char *name, tinysam_image *img) {
    char rel[256];
    snprintf(rel, sizeof rel, "images/%s.jpg", name);
    if (!fixture_exists(rel)) snprintf(rel, sizeof rel, "images/%s.png", name);
    return tinysam_image_load(fixture(rel), 0, img);
}

static void test_resize_fixtures(void) {
    int n_checked = 0;
    for (size_t i = 0; i < sizeof IMAGES / sizeof *IMAGES; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "reference/%s/resized.npy", IMAGES[i]);
        if (!fixture_exists(rel)) continue;
        ts_npy ref;
        REQUIRE(ts_npy_load(fixture(rel), &ref) == 0, "%s", tinysam_last_error());
        tinysam_image img;
        int rc = load_image(IMAGES[i], &img);
        CHECK(rc == 0, "%s: %s", IMAGES[i], tinysam_last_error());
        if (rc) {
            ts_npy_free(&ref);
            continue;
        }
        int nh, nw;
        ts_preprocess_shape(img.height, img.width, 1024, &nh, &nw);
        CHECK(ref.dtype == TS_DTYPE_U8 && ref.ndim == 3 && ref.shape[0] == nh &&
                  ref.shape[1] == nw && ref.shape[2] == 3,
              "%s: reference shape %lldx%lldx%lld, ours %dx%d", IMAGES[i], (long long)ref.shape[0],
              (long long)ref.shape[1], (long long)ref.shape[2], nh, nw);
        if (ref.ndim == 3 && ref.shape[0] == nh && ref.shape[1] == nw) {
            uint8_t *out = malloc((size_t)nh * nw * 3);
            REQUIRE(out, "malloc");
            CHECK(ts_resize_rgb_pil(img.rgb, img.width, img.height, out, nw, nh) == 0, "resize");
            size_t n = (size_t)nh * nw * 3, diff = 0;
            const uint8_t *r = ref.data;
            for (size_t k = 0; k < n; k++)
                diff += out[k] != r[k];
            CHECK(diff == 0, "%s: %zu of %zu bytes differ", IMAGES[i], diff, n);
            printf("  %s %dx%d -> %dx%d: %zu bytes differ\n", IMAGES[i], img.width, img.height, nw,
                   nh, diff);
            free(out);
            n_checked++;
        }
        tinysam_image_free(&img);
        ts_npy_free(&ref);
    }
    if (!n_checked) SKIP("no reference/*/resized.npy fixtures");
}

/* Equal sizes copy; a pure width change runs the horizontal pass only. */
static void test_resize_identity_and_single_axis(void) {
    enum { W = 9, H = 5 };
    uint8_t src[W * H * 3], dst[W * H * 3];
    for (int i = 0; i < W * H * 3; i++)
        src[i] = (uint8_t)(i * 37 + 11);
    CHECK(ts_resize_rgb_pil(src, W, H, dst, W, H) == 0 && !memcmp(src, dst, sizeof src), "copy");
    /* Up-scaling a width of 1 by any factor replicates it (weights sum to 1). */
    uint8_t col[H * 3], wide[H * 4 * 3];
    for (int i = 0; i < H * 3; i++)
        col[i] = (uint8_t)(i * 29);
    CHECK(ts_resize_rgb_pil(col, 1, H, wide, 4, H) == 0, "1 -> 4");
    int bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < 4; x++)
            bad += memcmp(wide + (y * 4 + x) * 3, col + y * 3, 3) != 0;
    CHECK(!bad, "width-1 replicate: %d bad", bad);
    CHECK(ts_resize_rgb_pil(src, 0, H, dst, W, H) == TINYSAM_E_ARG, "zero size accepted");
}

/* ---------------------------------------------------------------- 3.4 */

static float f32_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void test_normalize_pad(void) {
    enum { NH = 3, NW = 5 };
    uint8_t img[NH * NW * 3];
    for (int i = 0; i < NH * NW * 3; i++)
        img[i] = (uint8_t)(i * 53 + 7);
    img[0] = 0;
    img[1] = 255;
    const size_t plane = 1024 * 1024;
    float *out = malloc(sizeof(float) * 3 * plane);
    REQUIRE(out, "malloc");
    for (size_t i = 0; i < 3 * plane; i++)
        out[i] = NAN; /* every value must be written */
    ts_normalize_pad(img, NH, NW, out);
    /* Constants from the spec's bit patterns, independent of the code's literals. */
    const float mean[3] = {f32_bits(0x42F7599A), f32_bits(0x42E88F5C), f32_bits(0x42CF0F5C)};
    const float stdv[3] = {f32_bits(0x4269947B), f32_bits(0x42647AE1), f32_bits(0x42658000)};
    int bad_val = 0, bad_pad = 0;
    for (int c = 0; c < 3; c++)
        for (int y = 0; y < 1024; y++)
            for (int x = 0; x < 1024; x++) {
                float v = out[c * plane + (size_t)y * 1024 + x];
                if (y < NH && x < NW) {
                    volatile float d = (float)img[(y * NW + x) * 3 + c] - mean[c];
                    volatile float want = d / stdv[c];
                    if (memcmp(&v, (const void *)&want, 4)) bad_val++;
                } else if (!(v == 0.0f && !signbit(v))) {
                    bad_pad++;
                }
            }
    CHECK(!bad_val, "%d normalised values differ", bad_val);
    CHECK(!bad_pad, "%d padding values not +0", bad_pad);
    /* One value by hand: u=0, channel 0: -123.675/58.395 = -2.1179039... */
    CHECK(fabsf(out[0] - (-2.1179039f)) < 1e-6f, "out[0] = %.9g", out[0]);
    /* (255 - 116.28) / 57.12 = 2.4285714... for channel 1 of pixel 0 */
    CHECK(fabsf(out[plane] - 2.4285714f) < 1e-6f, "out[plane] = %.9g", out[plane]);
    free(out);
}

/* ---------------------------------------------------------------- 3.5 */

static void test_apply_coord(void) {
    /* 1500x2000 (HxW) -> 768x1024: x' = x * (1024/2000), y' = y * (768/1500). */
    CHECK(ts_apply_coord(1000.0, 1024, 2000) == 1000.0 * (1024.0 / 2000.0), "x");
    CHECK(ts_apply_coord(333.0, 768, 1500) == 333.0 * (768.0 / 1500.0), "y");
    CHECK(ts_apply_coord(0.0, 768, 1500) == 0.0, "zero");
    /* Ratio first, then the product: for x = 5 this differs in the last bit from
     * (x * new) / orig (checked with Python floats). */
    double a = ts_apply_coord(5.0, 1023, 769), ratio = 1023.0 / 769.0;
    CHECK(a == 5.0 * ratio && a != 5.0 * 1023.0 / 769.0, "order of operations: %.17g", a);
}

/* ---------------------------------------------------------------- 3.6 */

/* A direct transcription of the spec: full 1024x1024 intermediate, crop, per-pixel
 * 2-D formula. Slow but obviously right. */
static void ref_taps(int in, int out, int o, int *i0, int *i1, float *l0, float *l1) {
    if (in == out) {
        *i0 = *i1 = o;
        *l0 = 1.0f;
        *l1 = 0.0f;
        return;
    }
    float s = (float)in / (float)out;
    double real = (double)s * (o + 0.5) - 0.5;
    if (real < 0) real = 0;
    long long a = (long long)real;
    if (a > in - 1) a = in - 1;
    *i0 = (int)a;
    *i1 = a < in - 1 ? (int)a + 1 : (int)a;
    *l1 = (float)fmin(fmax(real - (double)a, 0.0), 1.0);
    *l0 = 1.0f - *l1;
}

static void ref_resize(const float *x, int in_h, int in_w, int stride, float *y, int out_h,
                       int out_w) {
    for (int oy = 0; oy < out_h; oy++) {
        int iy0, iy1;
        float ly0, ly1;
        ref_taps(in_h, out_h, oy, &iy0, &iy1, &ly0, &ly1);
        for (int ox = 0; ox < out_w; ox++) {
            int ix0, ix1;
            float lx0, lx1;
            ref_taps(in_w, out_w, ox, &ix0, &ix1, &lx0, &lx1);
            float r0 = fmaf(x[iy0 * stride + ix0], lx0, x[iy0 * stride + ix1] * lx1);
            float r1 = fmaf(x[iy1 * stride + ix0], lx0, x[iy1 * stride + ix1] * lx1);
            y[(size_t)oy * out_w + ox] = fmaf(r0, ly0, r1 * ly1);
        }
    }
}

static void ref_postprocess(const float *low, int newh, int neww, int h, int w, float *out) {
    float *big = malloc(sizeof(float) * 1024 * 1024);
    if (!big) return;
    ref_resize(low, 256, 256, 256, big, 1024, 1024);
    ref_resize(big, newh, neww, 1024, out, h, w); /* the crop is a strided view */
    free(big);
}

static void test_postprocess_vs_spec(void) {
    /* Up, down, equal (h == newh) and odd sizes; random logits. */
    static const int cases[][4] = {
        {768, 1024, 1500, 2000}, {1024, 1023, 770, 769},   {768, 1024, 480, 640}, {731, 1024, 5, 7},
        {1024, 599, 1025, 600},  {1024, 1024, 1024, 1024}, {300, 1024, 301, 2999}};
    float *low = malloc(sizeof(float) * 256 * 256);
    REQUIRE(low, "malloc");
    uint32_t s = 1;
    for (int i = 0; i < 256 * 256; i++) {
        s = s * 1664525u + 1013904223u;
        low[i] = ((float)(s >> 8) / 16777216.0f - 0.5f) * 20.0f;
    }
    static const char *const isas[] = {"avx512", "avx2", "scalar"};
    for (size_t q = 0; q < 3 * (sizeof cases / sizeof *cases); q++) {
        size_t c = q % (sizeof cases / sizeof *cases);
        const char *isa = isas[q / (sizeof cases / sizeof *cases)];
        if (!ts_nn_isa_available(isa)) continue;
        ts_nn_set_isa(isa); /* the gathers of each path against the formula */
        int nh = cases[c][0], nw = cases[c][1], h = cases[c][2], w = cases[c][3];
        float *a = malloc(sizeof(float) * h * w), *b = malloc(sizeof(float) * h * w);
        REQUIRE(a && b, "malloc");
        ref_postprocess(low, nh, nw, h, w, a);
        long long ns = ts_postprocess_scratch_size(nh, nw, h, w);
        float *tmp = malloc(sizeof(float) * (size_t)ns);
        REQUIRE(tmp, "malloc");
        CHECK(ts_postprocess_mask(low, nh, nw, h, w, b, tmp) == 0, "%s", tinysam_last_error());
        size_t diff = 0;
        for (size_t i = 0; i < (size_t)h * w; i++)
            diff += memcmp(&a[i], &b[i], 4) != 0;
        CHECK(diff == 0, "%s, crop %dx%d -> %dx%d: %zu values differ from the spec formula", isa,
              nh, nw, h, w, diff);
        /* NULL scratch allocates its own. */
        CHECK(ts_postprocess_mask(low, nh, nw, h, w, b, NULL) == 0 && !memcmp(a, b, 4 * h * w),
              "NULL scratch");
        free(tmp);
        free(a);
        free(b);
    }
    ts_nn_set_isa(ts_nn_isa_available("avx512") ? "avx512" : "avx2");
    float o;
    CHECK(ts_postprocess_mask(low, 0, 10, 1, 1, &o, NULL) == TINYSAM_E_ARG, "bad size accepted");
    CHECK(ts_postprocess_mask(low, 1025, 10, 1, 1, &o, NULL) == TINYSAM_E_ARG, "1025 accepted");
    free(low);
}

static void postprocess_image(const char *image, int h, int w, const char *const *cases,
                              int n_cases, long long *tot_eq, long long *tot) {
    int nh, nw;
    ts_preprocess_shape(h, w, 1024, &nh, &nw);
    float *tmp = malloc(sizeof(float) * (size_t)ts_postprocess_scratch_size(nh, nw, h, w));
    float *logit = malloc(sizeof(float) * h * w);
    REQUIRE(tmp && logit, "malloc");
    for (int c = 0; c < n_cases; c++) {
        char rl[256], rm[256];
        snprintf(rl, sizeof rl, "reference/%s/prompts/%s/low_res.npy", image, cases[c]);
        snprintf(rm, sizeof rm, "reference/%s/prompts/%s/masks.npy", image, cases[c]);
        if (!fixture_exists(rl) || !fixture_exists(rm)) continue;
        ts_npy low, mask;
        REQUIRE(ts_npy_load(fixture(rl), &low) == 0, "%s", tinysam_last_error());
        REQUIRE(ts_npy_load(fixture(rm), &mask) == 0, "%s", tinysam_last_error());
        REQUIRE(low.dtype == TS_DTYPE_F32 && low.numel == 3 * 256 * 256, "%s shape", rl);
        REQUIRE(mask.dtype == TS_DTYPE_U8 && mask.ndim == 3 && mask.shape[0] == 3 &&
                    mask.shape[1] == h && mask.shape[2] == w,
                "%s shape", rm);
        long long eq = 0, n = 3LL * h * w;
        for (int k = 0; k < 3; k++) {
            CHECK(ts_postprocess_mask((const float *)low.data + k * 256 * 256, nh, nw, h, w, logit,
                                      tmp) == 0,
                  "%s", tinysam_last_error());
            const uint8_t *m = (const uint8_t *)mask.data + (size_t)k * h * w;
            for (size_t i = 0; i < (size_t)h * w; i++)
                eq += (logit[i] > 0.0f) == (m[i] != 0);
        }
        printf("  %s/%s: %lld of %lld mask pixels equal (%lld differ)\n", image, cases[c], eq, n,
               n - eq);
        CHECK((double)eq >= 0.9999 * (double)n, "%s/%s: only %lld of %lld equal", image, cases[c],
              eq, n);
        *tot_eq += eq;
        *tot += n;
        ts_npy_free(&low);
        ts_npy_free(&mask);
    }
    free(tmp);
    free(logit);
}

static void test_postprocess_fixtures(void) {
    static const char *const p1[] = {"box",        "box_point", "corner",     "five_points",
                                     "fractional", "point",     "point_mask", "point_neg"};
    static const char *const sh[] = {"box", "point", "points_box_mask"};
    long long eq = 0, n = 0;
    postprocess_image("picture1", 770, 769, p1, 8, &eq, &n);
    postprocess_image("shapes", 480, 640, sh, 3, &eq, &n);
    if (!n) SKIP("no prompt fixtures");
    printf("  total: %lld of %lld equal\n", eq, n);
}

int main(void) {
    RUN(test_preprocess_shape);
    RUN(test_resize_fixtures);
    RUN(test_resize_identity_and_single_axis);
    RUN(test_normalize_pad);
    RUN(test_apply_coord);
    RUN(test_postprocess_vs_spec);
    RUN(test_postprocess_fixtures);
    return test_summary();
}
