/* test_sim_layers.c - the four Q-TinySAM layer classes (quant/sim_layers.h) against the
 * official run: for each layer of ../shared/fixtures/whole/layer_io (at least one of each
 * class), its exact input and output recorded from layers.py in PyTorch; our output from that
 * input must be within 1e-5 of the output's maximum magnitude, on the simulated path and,
 * where the layer's grids allow it, on the int8 path. Plus hand-computed quantiser cases. */
#include "io/npy.h"
#include "io/tensor_map.h"
#include "quant/sim_layers.h"
#include "test.h"
#include "tinysam.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ts_tensor_map *g_map;

static ts_tensor_map *qmap(void) {
    if (!g_map && fixture_exists("whole/qtinysam_like.pth"))
        ts_map_load(fixture("whole/qtinysam_like.pth"), &g_map);
    return g_map;
}

/* max |ours - ref| / max |ref| over the first n values */
static double rel_err(const float *ours, const float *ref, size_t n) {
    double m = 0, d = 0;
    for (size_t i = 0; i < n; i++) {
        m = fmax(m, fabs(ref[i]));
        d = fmax(d, fabs((double)ours[i] - ref[i]));
    }
    return m > 0 ? d / m : d;
}

/* ts_npy_load, also for a 2-d Fortran-order file (one fixture input is one: numpy saved a
 * transposed view), which is read and transposed to C order here. */
static int load_npy(const char *path, ts_npy *out) {
    if (ts_npy_load(path, out) == 0) return 0;
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n);
    int rc = b && fread(b, 1, (size_t)n, f) == (size_t)n ? 0 : -1;
    fclose(f);
    char *t = NULL; /* the header starts after magic, version (with a NUL) and length */
    for (long i = 10; !rc && !t && i + 21 < n && i < 4096; i++)
        if (!memcmp(b + i, "'fortran_order': True", 21)) t = b + i;
    char *nl = t ? memchr(t, '\n', 200) : NULL;
    if (!t || !nl || nl[-1] != ' ') {
        free(b);
        return -1;
    }
    /* "True" -> "False", one padding space less */
    memmove(t + 22, t + 21, (size_t)(nl - 1 - (t + 21)));
    memcpy(t + 17, "False", 5);
    rc = ts_npy_parse((const uint8_t *)b, (size_t)n, out);
    free(b);
    if (rc || out->ndim != 2 || out->dtype != TS_DTYPE_F32) return -1;
    int64_t R = out->shape[0], C = out->shape[1];
    float *d = malloc((size_t)(R * C) * sizeof(float)), *s = out->data;
    for (int64_t i = 0; i < R; i++)
        for (int64_t j = 0; j < C; j++) d[i * C + j] = s[j * R + i];
    free(out->data);
    out->data = d;
    return 0;
}

typedef struct {
    const char *module;
    ts_simq_kind kind;
} layer_case;

static const layer_case cases[] = {
    {"image_encoder.layers.3.blocks.0.attn.qkv", TS_SIMQ_LINEAR},
    {"image_encoder.layers.3.blocks.0.mlp.fc2", TS_SIMQ_LINEAR_POST},
    {"image_encoder.neck.2", TS_SIMQ_CONV2D},
    {"mask_decoder.transformer.layers.0.cross_attn_token_to_image.k_proj", TS_SIMQ_LINEAR},
    {"mask_decoder.output_upscaling.0", TS_SIMQ_CONVT2D},
};

static void run_case(const layer_case *c, int allow_int8, double *err, ts_simq_path *path) {
    char rel[256];
    ts_npy in = {0}, want = {0};
    snprintf(rel, sizeof rel, "whole/layer_io/%s.in.npy", c->module);
    int rc = load_npy(fixture(rel), &in);
    snprintf(rel, sizeof rel, "whole/layer_io/%s.out.npy", c->module);
    if (!rc) rc = load_npy(fixture(rel), &want);
    *err = 1e30;
    ts_simq_layer l;
    if (rc || ts_simq_layer_load(qmap(), c->module, c->kind, 1, allow_int8, &l)) {
        ts_npy_free(&in), ts_npy_free(&want);
        return;
    }
    *path = l.path;
    float *y = calloc((size_t)want.numel * 2 + 64 * 1024 * 16, sizeof(float));
    if (c->kind <= TS_SIMQ_LINEAR_POST) {
        ts_simq_linear(&l, in.data, (int)in.shape[0], y);
        *err = rel_err(y, want.data, (size_t)want.numel);
    } else if (c->kind == TS_SIMQ_CONV2D) {
        int Ho, Wo, H = (int)in.shape[2], W = (int)in.shape[3];
        ts_simq_conv2d(&l, in.data, H, W, 1, 1, 1, y, &Ho, &Wo);
        /* output rows 0..15 of each channel (row 16 would need input row 17) */
        int Hw = (int)want.shape[2], C = (int)want.shape[1];
        float *crop = malloc((size_t)want.numel * sizeof(float));
        for (int ch = 0; ch < C; ch++)
            memcpy(crop + (size_t)ch * Hw * W, y + (size_t)ch * Ho * Wo, (size_t)Hw * W * sizeof(float));
        *err = rel_err(crop, want.data, (size_t)want.numel);
        free(crop);
    } else {
        ts_simq_convt2d(&l, in.data, (int)in.shape[2], (int)in.shape[3], y);
        *err = rel_err(y, want.data, (size_t)want.numel);
    }
    free(y);
    ts_simq_layer_free(&l);
    ts_npy_free(&in), ts_npy_free(&want);
}

static void test_layer_io(void) {
    if (!qmap()) SKIP("whole/qtinysam_like.pth fixture missing");
    int kinds[4] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        for (int int8 = 0; int8 < 2; int8++) {
            double err;
            ts_simq_path path = TS_SIMQ_RAW;
            run_case(&cases[i], int8, &err, &path);
            printf("  %-70s %-5s max|diff|/max|out| = %.3g\n", cases[i].module,
                   ts_simq_path_name(path), err);
            CHECK(err <= 1e-5, "%s (%s path): relative error %.3g > 1e-5", cases[i].module,
                  ts_simq_path_name(path), err);
            if (!int8) CHECK(path == TS_SIMQ_SIM, "%s: simulated path expected", cases[i].module);
            /* the fixture's linears have one step per row and n_a = 1: int8 applies */
            if (int8 && cases[i].kind <= TS_SIMQ_LINEAR_POST)
                CHECK(path == TS_SIMQ_INT8, "%s: int8 path expected", cases[i].module);
        }
        kinds[cases[i].kind]++;
    }
    for (int k = 0; k < 4; k++) CHECK(kinds[k] > 0, "no case of %s", ts_simq_class_name(k));
}

/* mode "raw": the float layer, x W^T + b with the checkpoint's weight (a naive double sum as
 * the reference), and the convolution raw path against a naive convolution. */
static void test_raw_mode(void) {
    if (!qmap()) SKIP("whole/qtinysam_like.pth fixture missing");
    ts_simq_layer l;
    const char *P = "mask_decoder.transformer.layers.0.cross_attn_token_to_image.k_proj";
    REQUIRE(ts_simq_layer_load(qmap(), P, TS_SIMQ_LINEAR, 0, 1, &l) == 0, "%s", tinysam_last_error());
    CHECK(l.path == TS_SIMQ_RAW && l.wk == l.w, "raw path uses the weight as stored");
    enum { M = 7 };
    float x[M * 256], y[M * 128];
    for (int i = 0; i < M * 256; i++) x[i] = sinf(0.37f * (float)i);
    ts_simq_linear(&l, x, M, y);
    double worst = 0;
    for (int r = 0; r < M; r++)
        for (int n = 0; n < 128; n++) {
            double acc = l.b ? l.b[n] : 0;
            for (int k = 0; k < 256; k++) acc += (double)x[r * 256 + k] * l.w[n * 256 + k];
            worst = fmax(worst, fabs(acc - y[r * 128 + n]));
        }
    CHECK(worst < 1e-4, "raw linear differs by %g", worst);
    ts_simq_layer_free(&l);
    /* a raw 3x3 convolution (neck.2, no bias), stride 2, pad 1, on a 5x6 input */
    REQUIRE(ts_simq_layer_load(qmap(), "image_encoder.neck.2", TS_SIMQ_CONV2D, 0, 1, &l) == 0, "neck.2");
    int H = 5, W = 6, Ho, Wo;
    float *cx = malloc(sizeof(float) * 256 * H * W), *cy = malloc(sizeof(float) * 256 * 3 * 3);
    for (int i = 0; i < 256 * H * W; i++) cx[i] = cosf(0.11f * (float)i);
    ts_simq_conv2d(&l, cx, H, W, 2, 1, 1, cy, &Ho, &Wo);
    CHECK(Ho == 3 && Wo == 3, "output %dx%d", Ho, Wo);
    worst = 0;
    for (int o = 0; o < 256; o++)
        for (int oy = 0; oy < Ho; oy++)
            for (int ox = 0; ox < Wo; ox++) {
                double acc = 0;
                for (int c = 0; c < 256; c++)
                    for (int ky = 0; ky < 3; ky++)
                        for (int kx = 0; kx < 3; kx++) {
                            int iy = oy * 2 - 1 + ky, ix = ox * 2 - 1 + kx;
                            if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                            acc += (double)cx[(c * H + iy) * W + ix] * l.w[((o * 256 + c) * 3 + ky) * 3 + kx];
                        }
                worst = fmax(worst, fabs(acc - cy[(o * Ho + oy) * Wo + ox]));
            }
    CHECK(worst < 1e-4, "raw conv differs by %g", worst);
    free(cx), free(cy);
    ts_simq_layer_free(&l);
}

/* A pointwise convolution (asymmetric input, a_bias folded into the bias) on the int8 path
 * against the simulated path: the same codes, so the same output up to float rounding. */
static void test_pointwise_conv_int8(void) {
    if (!qmap()) SKIP("whole/qtinysam_like.pth fixture missing");
    ts_simq_layer a, b;
    REQUIRE(ts_simq_layer_load(qmap(), "image_encoder.neck.0", TS_SIMQ_CONV2D, 1, 0, &a) == 0 &&
                ts_simq_layer_load(qmap(), "image_encoder.neck.0", TS_SIMQ_CONV2D, 1, 1, &b) == 0,
            "neck.0: %s", tinysam_last_error());
    CHECK(a.path == TS_SIMQ_SIM && b.path == TS_SIMQ_INT8, "paths %d %d", a.path, b.path);
    CHECK(a.a_bias != 0.0f, "the fixture's layer has an input offset");
    int H = 9, W = 11, Ho, Wo, C = a.n_in;
    float *x = malloc(sizeof(float) * C * H * W), *ya = malloc(sizeof(float) * 256 * H * W),
          *yb = malloc(sizeof(float) * 256 * H * W);
    for (int i = 0; i < C * H * W; i++) x[i] = 3.0f * sinf(0.013f * (float)i * (float)(i % 7));
    ts_simq_conv2d(&a, x, H, W, 1, 0, 1, ya, &Ho, &Wo);
    ts_simq_conv2d(&b, x, H, W, 1, 0, 1, yb, &Ho, &Wo);
    double e = rel_err(yb, ya, (size_t)256 * H * W);
    printf("  neck.0 int8 vs simulated: %.3g of the max\n", e);
    CHECK(e <= 1e-5, "int8 vs simulated: %.3g", e);
    free(x), free(ya), free(yb);
    ts_simq_layer_free(&a);
    ts_simq_layer_free(&b);
}

/* A hand-built layer: 2 x 4 Linear, n_V = 2 row blocks, n_H = 2 column blocks, n_a = 2. */
static void test_blocked_linear_by_hand(void) {
    ts_tensor_map *m = calloc(1, sizeof *m);
    float w[8] = {0.30f, -0.25f, 1.0f, 2.0f, 0.05f, 0.15f, -3.0f, 0.5f};
    float wi[4] = {0.1f, 1.0f, 0.1f, 0.5f}; /* [n_V=2,1,n_H=2,1] */
    float ai[2] = {0.5f, 0.25f};
    int32_t nv = 2, nh = 2, na = 2, cr = 1, cc = 2;
    struct { const char *n; ts_dtype t; int nd; int64_t s0, s1, s2, s3; void *d; } ts[] = {
        {"L.weight", TS_DTYPE_F32, 2, 2, 4, 0, 0, w}, {"L.w_interval", TS_DTYPE_F32, 4, 2, 1, 2, 1, wi},
        {"L.a_interval", TS_DTYPE_F32, 2, 2, 1, 0, 0, ai}, {"L.n_V", TS_DTYPE_I32, 0, 0, 0, 0, 0, &nv},
        {"L.n_H", TS_DTYPE_I32, 0, 0, 0, 0, 0, &nh}, {"L.n_a", TS_DTYPE_I32, 0, 0, 0, 0, 0, &na},
        {"L.crb_rows", TS_DTYPE_I32, 0, 0, 0, 0, 0, &cr}, {"L.crb_cols", TS_DTYPE_I32, 0, 0, 0, 0, 0, &cc},
    };
    m->cap = 16;
    m->t = calloc(16, sizeof *m->t);
    for (size_t i = 0; i < sizeof ts / sizeof *ts; i++) {
        ts_tensor *t = &m->t[m->n++];
        t->name = (char *)ts[i].n;
        t->dtype = t->file_dtype = ts[i].t;
        t->ndim = ts[i].nd;
        int64_t s[4] = {ts[i].s0, ts[i].s1, ts[i].s2, ts[i].s3};
        t->numel = 1;
        for (int d = 0; d < t->ndim; d++) t->shape[d] = s[d], t->numel *= s[d];
        t->data = ts[i].d;
    }
    ts_simq_layer l;
    REQUIRE(ts_simq_layer_load(m, "L", TS_SIMQ_LINEAR, 1, 1, &l) == 0, "load");
    CHECK(l.path == TS_SIMQ_SIM, "blocked grids are not int8");
    /* weights by hand: row 0 cols 0-1 step 0.1: 3, -2 (-2.5 -> -2); cols 2-3 step 1: 1, 2;
     * row 1 cols 0-1 step 0.1: 0 (0.5 -> 0), 2 (1.5 -> 2); cols 2-3 step 0.5: -6, 1 */
    const float ws[8] = {0.3f, -0.2f, 1.0f, 2.0f, 0.0f, 0.2f, -3.0f, 0.5f};
    for (int i = 0; i < 8; i++)
        CHECK(fabsf(l.w_sim[i] - ws[i]) < 1e-6f, "w_sim[%d] = %g, want %g", i, l.w_sim[i], ws[i]);
    /* input: chunk 0 (cols 0-1) step 0.5: 0.75 -> 2 (1.5 -> 2) * 0.5 = 1, 100 -> 127 * 0.5;
     * chunk 1 step 0.25: 0.125 -> 0 (0.5 -> 0), -0.375 -> -2 (-1.5 -> -2) * 0.25 = -0.5 */
    float x[4] = {0.75f, 100.0f, 0.125f, -0.375f}, y[2];
    ts_simq_linear(&l, x, 1, y);
    float xs[4] = {1.0f, 63.5f, 0.0f, -0.5f};
    for (int n = 0; n < 2; n++) {
        float want = 0;
        for (int k = 0; k < 4; k++) want += xs[k] * ws[n * 4 + k];
        CHECK(fabsf(y[n] - want) < 1e-4f, "y[%d] = %g, want %g", n, y[n], want);
    }
    ts_simq_layer_free(&l);
    free(m->t);
    free(m);
}

int main(void) {
    RUN(test_layer_io);
    RUN(test_raw_mode);
    RUN(test_pointwise_conv_int8);
    RUN(test_blocked_linear_by_hand);
    ts_map_free(g_map);
    return test_summary();
}
