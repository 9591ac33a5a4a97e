/* test_int8_vit.c - the W8A8 SAM ViT encoder (quant/int8_vit.h, calibrate_vit.h) end to end on
 * the reduced SAM ViT fixture (width 128, depth 4, random weights): quantise its encoder's
 * linear layers (calibrated on picture3.jpg and shapes_grey.png), write the file, load it back
 * through tinysam_model_load, and compare with segment-anything's own float outputs
 * (reference/sam_vit_tiny/picture1): embedding cosine >= 0.99, IoU of the int8 model's best mask
 * against the float reference's best mask, mean >= 0.95 over the prompt cases. Also: the file's
 * codes / scales / steps, what info lists, file size against the float safetensors, the int8
 * linear against an independent fake-quantised float reference, damaged quantisers and a
 * re-quantisation refused, a partly int8 file, the layer method's steps. Random weights: the
 * accuracy of a released checkpoint must be measured by the user. */
#include "core.h"
#include "io/npy.h"
#include "io/tensor_map.h"
#include "model/image_encoder_vit.h"
#include "model/sam.h"
#include "nn/nn.h"
#include "quant/calibrate_vit.h"
#include "quant/int8_info.h"
#include "quant/int8_model.h"
#include "quant/int8_vit.h"
#include "quant/quant.h"
#include "accuracy.h"
#include "compare.h"
#include "prompt_case.h"
#include "test.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SAM "models/sam_vit_tiny_random_fp16.pth"
#define REF "reference/sam_vit_tiny/picture1"
#define DEPTH 4
#define WIDTH 128
#define NL TS_VIT_N_LAYERS(DEPTH)

static tinysam_model *fm, *qm;
static char qpath[512], fpath[512], p0[512], p1[512];
static float g_step[NL];
static int g_zp[NL];
static int setup_done, setup_ok;

static int setup(void) {
    if (setup_done) return setup_ok;
    setup_done = 1;
    if (!test_quant_fixtures(SAM, &fm, p0, p1)) return 0;
    snprintf(qpath, sizeof qpath, "%s", tmp_path("sam_vit_int8.safetensors"));
    snprintf(fpath, sizeof fpath, "%s", tmp_path("sam_vit_float.safetensors"));
    const char *paths[2] = {p0, p1};
    double t0 = ts_now_ms();
    if (ts_calib_vit(fm, paths, 2, TS_CALIB_MSE, g_step, g_zp, 0)) {
        printf("  calibrate: %s\n", tinysam_last_error());
        return 0;
    }
    static const char *keys[] = {"tinysam.family"};
    static const char *values[] = {"vit"};
    if (ts_vit_i8_save(qpath, fm->map, DEPTH, WIDTH, g_step, g_zp, 1, keys, values)) {
        printf("  save: %s\n", tinysam_last_error());
        return 0;
    }
    printf("  calibrated and written in %.0f ms\n", ts_now_ms() - t0);
    if (!test_quant_reload(fm, qpath, &qm, fpath)) return 0;
    setup_ok = 1;
    return 1;
}

/* The file: every linear layer int8 with the codes and scales of the float weight, steps as
 * calibrated, the model reports w8a8, info lists the layers; size against float. */
static void test_file(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    CHECK(ts_sam_vit_n_int8(qm->vit) == NL, "%d int8 layers, expected %d",
          ts_sam_vit_n_int8(qm->vit), NL);
    CHECK(ts_sam_vit_n_int8(fm->vit) == 0, "float model reports int8 layers");
    tinysam_model_info inf;
    tinysam_model_get_info(qm, &inf);
    CHECK(!strcmp(inf.source_dtype, "w8a8"), "dtype %s", inf.source_dtype);
    CHECK(!strcmp(inf.family, "vit"), "family %s", inf.family);
    for (int id = 0; id < NL; id++) {
        ts_vit_layer_desc d;
        REQUIRE(ts_vit_layer_describe(DEPTH, WIDTH, id, &d) == 0, "describe %d", id);
        char name[160];
        snprintf(name, sizeof name, "%s.weight", d.name);
        const ts_tensor *w = ts_map_get(qm->map, name), *fw = ts_map_get(fm->map, name);
        REQUIRE(w && fw && w->dtype == TS_DTYPE_I8 && w->numel == (int64_t)d.N * d.K &&
                    w->ndim == fw->ndim && w->shape[0] == d.N,
                "%s: not int8 of the float shape", name);
        int8_t *codes = malloc((size_t)d.N * d.K);
        float *sc = malloc(sizeof(float) * (size_t)d.N);
        REQUIRE(codes && sc, "alloc");
        ts_quant_weights(fw->data, d.N, d.K, d.K, codes, sc);
        CHECK(!memcmp(codes, w->data, (size_t)d.N * d.K), "%s: codes differ", name);
        snprintf(name, sizeof name, "%s.weight_scale", d.name);
        const ts_tensor *s = ts_map_get(qm->map, name);
        CHECK(s && s->numel == d.N && !memcmp(s->data, sc, sizeof(float) * (size_t)d.N),
              "%s differs", name);
        snprintf(name, sizeof name, "%s.bias", d.name);
        CHECK(!d.has_bias == !ts_map_get(qm->map, name), "%s present: %d", name, !d.has_bias);
        snprintf(name, sizeof name, "%s.input_step", d.name);
        s = ts_map_get(qm->map, name);
        CHECK(s && s->numel == 1 && *(float *)s->data == g_step[id] && g_step[id] > 0, "%s", name);
        snprintf(name, sizeof name, "%s.input_zero_point", d.name);
        s = ts_map_get(qm->map, name);
        CHECK(s && *(float *)s->data == (float)g_zp[id], "%s", name);
        CHECK(d.post_gelu || g_zp[id] == 128, "%s: symmetric input with zero point %d", d.name,
              g_zp[id]);
        free(codes);
        free(sc);
    }
    /* what `tinysam info` prints */
    char *txt = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&txt, &len);
    REQUIRE(f, "memstream");
    ts_int8_info_json(qm->map, f);
    fclose(f);
    CHECK(strstr(txt, "\"image_encoder.blocks.3.mlp.lin2\"") &&
              strstr(txt, "\"image_encoder.patch_embed.proj\"") &&
              strstr(txt, "\"image_encoder.neck.0\""),
          "info: %.300s", txt);
    free(txt);
    long long fs = test_file_size(fpath), qs = test_file_size(qpath);
    printf("  file: int8 %lld bytes, float32 safetensors %lld (ratio %.3f; the reduced model's "
           "pos_embed and decoder weigh more than in ViT-B)\n",
           qs, fs, (double)qs / (double)fs);
    CHECK(qs > 0 && fs > 0 && qs < fs / 2, "int8 file %lld vs float %lld", qs, fs);
}

/* ts_vit_i8_linear against a float reference of the same arithmetic: codes clamp(round(x /
 * step) + zp), real input step * (code - zp), weights scale * code, GEMM in double. */
static void test_linear_reference(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    /* layer fc1 of block 0 (GELU) and fc2 (asymmetric input, accumulate) of the int8 model */
    const int ids[2] = {TS_VIT_L_FC1, TS_VIT_L_FC2};
    const int M = 37; /* a tail of rows */
    for (int c = 0; c < 2; c++) {
        ts_vit_layer_desc d;
        ts_vit_layer_describe(DEPTH, WIDTH, ids[c], &d);
        ts_vit_i8 *q;
        REQUIRE(ts_vit_i8_load(qm->map, DEPTH, WIDTH, &q) == 0 && q, "%s", tinysam_last_error());
        float *X = malloc(sizeof(float) * (size_t)M * d.K);
        float *Y = malloc(sizeof(float) * (size_t)M * d.N);
        double *R = malloc(sizeof(double) * (size_t)M * d.N);
        REQUIRE(X && Y && R, "alloc");
        const float st = g_step[ids[c]];
        const int zp = g_zp[ids[c]];
        for (int i = 0; i < M * d.K; i++) /* beyond the clip range at both ends too */
            X[i] = st * (float)((i * 37 % 301) - 150 + (zp == 128 ? 0 : 140)) * 1.1347f;
        for (int i = 0; i < M * d.N; i++) Y[i] = c ? 0.25f * (float)(i % 7) : -1.0f;
        char name[160];
        snprintf(name, sizeof name, "%s.weight", d.name);
        const int8_t *W = ts_map_get(qm->map, name)->data;
        snprintf(name, sizeof name, "%s.weight_scale", d.name);
        const float *S = ts_map_get(qm->map, name)->data;
        snprintf(name, sizeof name, "%s.bias", d.name);
        const float *B = ts_map_get(qm->map, name)->data;
        for (int m = 0; m < M; m++)
            for (int n = 0; n < d.N; n++) {
                double acc = 0;
                for (int k = 0; k < d.K; k++) {
                    /* float division, round half even (gemm_i8.h) */
                    double u = (double)nearbyintf(X[(size_t)m * d.K + k] / st) + zp;
                    u = u < 0 ? 0 : u > 255 ? 255 : u;
                    acc += (u - zp) * W[(size_t)n * d.K + k];
                }
                double y = acc * st * S[n] + B[n];
                if (!c) y = 0.5 * y * (1.0 + erf(y / sqrt(2.0))); /* exact GELU */
                R[(size_t)m * d.N + n] = y + (c ? 0.25 * (double)((m * d.N + n) % 7) : 0.0);
            }
        ts_vit_i8_linear(q, ids[c], M, X, d.K, Y, d.N, c, c ? TS_ACT_NONE : TS_ACT_GELU);
        double worst = 0, scale = 0;
        for (int i = 0; i < M * d.N; i++) {
            worst = fmax(worst, fabs(Y[i] - R[i]));
            scale = fmax(scale, fabs(R[i]));
        }
        printf("  %s (%s): max abs error %.2e of %.2e\n", d.name, ts_gemm_i8_isa_name(), worst,
               scale);
        CHECK(worst <= 1e-4 * scale + 1e-5, "%s: error %g of %g", d.name, worst, scale);
        free(X);
        free(Y);
        free(R);
        ts_vit_i8_free(q);
    }
}

/* The fused int8 MLP (lin1's GELU output requantised in its epilogue) against the two linears
 * run one after the other, on the fixture's block 1. */
static void test_mlp_fused(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    ts_vit_i8 *q;
    REQUIRE(ts_vit_i8_load(qm->map, DEPTH, WIDTH, &q) == 0 && q, "%s", tinysam_last_error());
    const int M = 45, C = WIDTH, H = 4 * WIDTH, f1 = 4 + TS_VIT_L_FC1, f2 = 4 + TS_VIT_L_FC2;
    float *X = malloc(sizeof(float) * M * C), *hid = malloc(sizeof(float) * M * H);
    float *A = malloc(sizeof(float) * M * C), *B = malloc(sizeof(float) * M * C);
    uint8_t *codes = malloc((size_t)M * H);
    REQUIRE(X && hid && A && B && codes, "alloc");
    for (int i = 0; i < M * C; i++) {
        X[i] = 3.0f * sinf(0.37f * (float)i); /* LayerNorm-like range */
        A[i] = B[i] = 0.1f * (float)(i % 5);
    }
    ts_vit_i8_linear(q, f1, M, X, C, hid, H, 0, TS_ACT_GELU);
    ts_vit_i8_linear(q, f2, M, hid, H, A, C, 1, TS_ACT_NONE);
    ts_vit_i8_mlp(q, f1, f2, M, X, C, codes, B, C);
    double worst = 0, scale = 0;
    for (int i = 0; i < M * C; i++) {
        worst = fmax(worst, fabs(A[i] - B[i]));
        scale = fmax(scale, fabs(A[i]));
    }
    printf("  fused MLP vs two linears: max abs difference %.2e of %.2e\n", worst, scale);
    CHECK(worst <= 1e-3 * scale, "fused MLP differs by %g of %g", worst, scale);
    free(X);
    free(hid);
    free(A);
    free(B);
    free(codes);
    ts_vit_i8_free(q);
}

static int argmax(const float *v, int n) {
    int b = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[b]) b = i;
    return b;
}

/* The int8 model on picture1 against segment-anything's float outputs. */
static void test_accuracy(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    if (!fixture_exists(REF "/embedding.npy")) SKIP("reference missing");
    tinysam_image img;
    REQUIRE(tinysam_image_load(fixture("images/picture1.jpg"), 0, &img) == 0, "image");
    tinysam_embedding *e;
    REQUIRE(tinysam_encode(qm, &img, &e) == 0, "%s", tinysam_last_error());
    ts_npy ref;
    REQUIRE(ts_npy_load(fixture(REF "/embedding.npy"), &ref) == 0, "embedding");
    double cs = test_cosine(tinysam_embedding_data(e), ref.data, 256 * 4096);
    printf("  embedding cosine vs float reference %.5f\n", cs);
    CHECK(cs >= 0.99, "embedding cosine %.5f", cs);
    ts_npy_free(&ref);
    DIR *dir = opendir(fixture(REF "/prompts"));
    REQUIRE(dir, "prompts");
    struct dirent *de;
    int n = 0;
    double sum = 0, worst = 1;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.') continue;
        char base[512], path[600];
        snprintf(base, sizeof base, REF "/prompts/%s", de->d_name);
        static test_prompt_case pc;
        REQUIRE(test_prompt_case_load(base, 0, &pc) == 0, "%s", tinysam_last_error());
        const ts_json *mm = ts_json_get(pc.json, "multimask_output");
        const int single = mm && mm->number == 0;
        tinysam_prediction p;
        REQUIRE(tinysam_predict(qm, e, &pc.prompt,
                                TINYSAM_PREDICT_MASKS | (single ? TINYSAM_PREDICT_SINGLE : 0),
                                &p) == 0,
                "%s", tinysam_last_error());
        ts_npy io, mk;
        snprintf(path, sizeof path, "%s/iou.npy", base);
        REQUIRE(ts_npy_load(fixture(path), &io) == 0, "iou");
        snprintf(path, sizeof path, "%s/masks.npy", base);
        REQUIRE(ts_npy_load(fixture(path), &mk) == 0, "masks");
        const int K = (int)io.shape[0], bf = argmax(io.data, K), bq = argmax(p.iou, p.n_masks);
        REQUIRE(p.n_masks == K, "%s: %d masks, reference %d", de->d_name, p.n_masks, K);
        const size_t plane = (size_t)img.width * img.height;
        const uint8_t *a = (const uint8_t *)mk.data + (size_t)bf * plane;
        const uint8_t *b = p.masks + (size_t)bq * plane;
        double iou = test_mask_iou(a, b, plane);
        printf("  %s: best %d / %d, best-mask IoU %.4f\n", de->d_name, bf, bq, iou);
        sum += iou;
        worst = fmin(worst, iou);
        n++;
        tinysam_prediction_free(&p);
        ts_npy_free(&io);
        ts_npy_free(&mk);
        test_prompt_case_free(&pc);
    }
    closedir(dir);
    printf("  mean best-mask IoU over %d cases %.4f, worst %.4f\n", n, n ? sum / n : 0, worst);
    CHECK(n == 3, "%d cases", n);
    CHECK(n && sum / n >= 0.95, "mean best-mask IoU %.4f", n ? sum / n : 0);
    tinysam_embedding_free(e);
    tinysam_image_free(&img);
}

/* A damaged quantiser is rejected naming the tensor; an int8 model is not re-quantised; a
 * file with some layers float loads with just the others int8; --method hessian is refused
 * for SAM ViT. */
static void test_bad_and_partial(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    static const char *what[] = {"input_zero_point", "input_step"};
    static const float bad[] = {300.0f, -1.0f};
    for (int c = 0; c < 2; c++) {
        ts_tensor_map *m;
        REQUIRE(ts_map_load(qpath, &m) == 0, "%s", tinysam_last_error());
        char name[160];
        snprintf(name, sizeof name, "image_encoder.blocks.2.mlp.lin2.%s", what[c]);
        ts_tensor *t = (ts_tensor *)ts_map_get(m, name);
        REQUIRE(t, "%s", name);
        float *copy = malloc(sizeof(float)); /* the mapping is read-only */
        REQUIRE(copy, "alloc");
        *copy = bad[c];
        void *keep = t->data;
        t->data = copy;
        ts_sam_vit *enc = NULL;
        int rc = ts_int8_model_expand(m);
        if (!rc) rc = ts_sam_vit_load(m, &enc);
        CHECK(rc == TINYSAM_E_FORMAT && !enc, "%s %g: rc %d", what[c], (double)bad[c], rc);
        CHECK(strstr(tinysam_last_error(), name), "message '%s'", tinysam_last_error());
        t->data = keep;
        free(copy);
        ts_sam_vit_free(enc);
        ts_map_free(m);
    }
    CHECK(ts_vit_i8_save(tmp_path("x.safetensors"), qm->map, DEPTH, WIDTH, g_step, g_zp, 0, NULL,
                         NULL) == TINYSAM_E_ARG,
          "re-quantising an int8 model accepted");
    float step[NL];
    int zp[NL];
    for (int i = 0; i < NL; i++) step[i] = i % 3 ? g_step[i] : 0.0f, zp[i] = g_zp[i];
    const char *pp = tmp_path("sam_vit_partial.safetensors");
    REQUIRE(ts_vit_i8_save(pp, fm->map, DEPTH, WIDTH, step, zp, 0, NULL, NULL) == 0, "%s",
            tinysam_last_error());
    tinysam_model *pm = NULL;
    CHECK(tinysam_model_load(pp, &pm) == 0, "partial: %s", tinysam_last_error());
    if (pm) {
        int want = 0;
        for (int i = 0; i < NL; i++) want += step[i] > 0;
        CHECK(ts_sam_vit_n_int8(pm->vit) == want, "partial: %d int8 of %d",
              ts_sam_vit_n_int8(pm->vit), want);
        tinysam_model_free(pm);
    }
    remove(pp);
    zp[1] = 256;
    CHECK(ts_vit_i8_save(tmp_path("x.safetensors"), fm->map, DEPTH, WIDTH, g_step, zp, 0, NULL,
                         NULL) == TINYSAM_E_ARG,
          "zero point 256 accepted");
    const char *paths[1] = {p1};
    ts_quant_opts o = {TS_CALIB_HESSIAN /* not mse or layer */, TS_SCOPE_ENCODER, NULL};
    CHECK(ts_quantize_vit_model(fm, paths, 1, &o, tmp_path("x.safetensors"), 0) ==
              TINYSAM_E_UNSUPPORTED,
          "method 2 accepted for SAM ViT");
    CHECK(strstr(tinysam_last_error(), "mse or layer"), "message '%s'", tinysam_last_error());
}

/* The layer-output-error method: steps within its search range around the MSE steps of the
 * same (one-image) calibration, post-GELU layers the same as mse. */
static void test_layer_method(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    const char *paths[1] = {p1};
    float sm[NL], sl[NL];
    int zm[NL], zl[NL];
    REQUIRE(ts_calib_vit(fm, paths, 1, TS_CALIB_MSE, sm, zm, 0) == 0, "%s", tinysam_last_error());
    REQUIRE(ts_calib_vit(fm, paths, 1, TS_CALIB_LAYER, sl, zl, 0) == 0, "%s", tinysam_last_error());
    int moved = 0;
    for (int i = 0; i < NL; i++) {
        ts_vit_layer_desc d;
        ts_vit_layer_describe(DEPTH, WIDTH, i, &d);
        if (d.post_gelu) {
            CHECK(sl[i] == sm[i] && zl[i] == zm[i], "%s: post-GELU step changed", d.name);
            continue;
        }
        CHECK(zl[i] == 128 && sl[i] >= 0.5f * sm[i] * 0.999f && sl[i] <= 1.5f * sm[i] * 1.001f,
              "%s: layer step %g vs mse %g", d.name, (double)sl[i], (double)sm[i]);
        moved += sl[i] != sm[i];
    }
    printf("  layer method moved %d of %d symmetric steps\n", moved, NL - DEPTH);
}

int main(void) {
    RUN(test_file);
    RUN(test_linear_reference);
    RUN(test_mlp_fused);
    RUN(test_accuracy);
    RUN(test_bad_and_partial);
    RUN(test_layer_method);
    tinysam_model_free(fm);
    tinysam_model_free(qm);
    if (qpath[0]) remove(qpath);
    if (fpath[0]) remove(fpath);
    return test_summary();
}
