/* test_int8_model.c - the W8A8 (Q-TinySAM) model end to end: quantise the fixture checkpoint
 * (calibrated on 2 fixture images), write it, load it back, and compare it with the float
 * model on every fixture image with reference prompt cases: embedding cosine similarity
 * >= 0.99, IoU of the best mask vs the float model's best mask, mean >= 0.95 and none below
 * 0.85 (the whole encoder in int8: GEMMs, 3x3 convolutions, attention products; random weights:
 * accuracy on the trained checkpoint must be measured by the user). Also: file size <= 0.27 x
 * the float safetensors, and the file's codes / scales are those of the float weights and load
 * back into the same packs. */
#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensor_map.h"
#include "model/sam.h"
#include "model/sam_decoder.h"
#include "model/sam_decoder_internal.h"
#include "nn/gemm_i8.h"
#include "quant/calibrate.h"
#include "quant/calibrate_decoder.h"
#include "quant/int8_model.h"
#include "quant/quant.h"
#include "accuracy.h"
#include "compare.h"
#include "prompt_case.h"
#include "prepared_check.h"
#include "test.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define MODEL "models/tinysam_vit_t_random.pth"

static tinysam_model *fm, *qm; /* float, int8 */
static char qpath[512], fpath[512];
static int setup_done, setup_ok;

static int setup(void) {
    if (setup_done) return setup_ok;
    setup_done = 1;
    char p0[512], p1[512]; /* calibration images other than the evaluated ones */
    if (!test_quant_fixtures(MODEL, &fm, p0, p1)) return 0;
    snprintf(qpath, sizeof qpath, "%s", tmp_path("tinysam_int8.safetensors"));
    snprintf(fpath, sizeof fpath, "%s", tmp_path("tinysam_float.safetensors"));
    const char *paths[2] = {p0, p1};
    if (ts_quantize_model(fm, paths, 2, TS_CALIB_MSE, qpath, 1)) {
        printf("  quantize: %s\n", tinysam_last_error());
        return 0;
    }
    if (!test_quant_reload(fm, qpath, &qm, fpath)) return 0;
    setup_ok = 1;
    return 1;
}

static void test_file(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    long long fs = test_file_size(fpath), qs = test_file_size(qpath);
    double r = (double)qs / (double)fs;
    printf("  float safetensors %lld bytes, int8 %lld bytes: %.3f x\n", fs, qs, r);
    CHECK(fs > 0 && qs > 0 && r <= 0.27, "int8 file is %.3f x the float one", r);
    tinysam_model_info inf;
    tinysam_model_get_info(qm, &inf);
    CHECK(!strcmp(inf.source_dtype, "w8a8"), "info dtype '%s'", inf.source_dtype);
    CHECK(ts_tiny_vit_n_int8(qm->encoder) == TS_TINY_VIT_N_ENCODER, "%d int8 layers",
          ts_tiny_vit_n_int8(qm->encoder));
    CHECK(ts_tiny_vit_n_int8(fm->encoder) == 0, "float model has int8 layers");
    for (int i = 0; i < TS_TINY_VIT_N_ATTN; i++) { /* the attention products, int8 steps */
        ts_tiny_vit_attn a;
        REQUIRE(ts_tiny_vit_attn_get(qm->encoder, i, &a) == 0, "attn %d", i);
        CHECK(a.int8 && a.step[0] > 0 && a.step[1] > 0 && a.step[2] > 0 &&
                  a.step[3] == 1.0f / 255.0f, "%s: products not int8", a.name);
    }
    CHECK(qm->map->metadata_json && strstr(qm->map->metadata_json, "\"w8a8\""),
          "metadata lacks w8a8");
}

/* The file holds ts_quant_weights of the float model's (BN-folded) weights, and the loaded
 * packs hold those codes and scales: their exact int32 products match a direct sum. */
static void test_round_trip(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    int bad_codes = 0, bad_scales = 0, bad_pack = 0, bad_q = 0;
    for (int i = 0; i < TS_TINY_VIT_N_ENCODER; i++) {
        ts_tiny_vit_qlayer f, q;
        REQUIRE(ts_tiny_vit_qlayer_get(fm->encoder, i, &f) == 0, "layer %d", i);
        REQUIRE(ts_tiny_vit_qlayer_get(qm->encoder, i, &q) == 0, "layer %d", i);
        REQUIRE(f.w && q.q && !strcmp(f.name, q.name), "layer %d: %s / %s", i, f.name, q.name);
        const int N = f.N, K = f.K;
        int8_t *codes = malloc((size_t)N * K);
        float *scale = malloc(sizeof(float) * N);
        REQUIRE(codes && scale, "oom");
        ts_quant_weights(f.w, N, K, K, codes, scale);
        char name[160];
        snprintf(name, sizeof name, "%s.weight", f.name);
        const ts_tensor *tw = ts_map_get(qm->map, name);
        snprintf(name, sizeof name, "%s.weight_scale", f.name);
        const ts_tensor *ts = ts_map_get(qm->map, name);
        REQUIRE(tw && ts && tw->dtype == TS_DTYPE_I8 && tw->numel == (int64_t)N * K &&
                    ts->numel == N && tw->ndim == (f.taps == 9 ? 4 : 2),
                "%s: tensors", f.name);
        /* a 3x3 conv's file codes are in PyTorch's [co][ci][ky][kx], the GEMM's [co][ky][kx][ci] */
        const int8_t *fc = tw->data;
        const int ci = K / f.taps;
        for (int n = 0; n < N; n++)
            for (int c = 0; c < ci; c++)
                for (int t = 0; t < f.taps; t++)
                    bad_codes += fc[((size_t)n * ci + c) * f.taps + t] !=
                                 codes[((size_t)n * f.taps + t) * ci + c];
        bad_scales += memcmp(ts->data, scale, sizeof(float) * N) != 0;
        bad_scales += memcmp(ts_i8pack_scale(q.q), scale, sizeof(float) * N) != 0;
        for (int n = 0; n < N; n++) /* bias carried over */
            bad_q += f.b ? q.b[n] != f.b[n] : q.b[n] != 0.0f;
        bad_q += !(q.in_step > 0.0f) || q.in_zp < 0 || q.in_zp > 255 ||
                 (!f.post_gelu && q.in_zp != 128);
        /* pack codes: 3 rows of u8 activations through the pack vs a direct integer sum */
        uint8_t *A = malloc((size_t)3 * K);
        int32_t *C = malloc(sizeof(int32_t) * 3 * N);
        REQUIRE(A && C, "oom");
        for (int k = 0; k < 3 * K; k++) A[k] = (uint8_t)((k * 37 + i * 11) & 255);
        ts_gemm_i8_s32(3, A, K, 100, q.q, C, N);
        for (int r = 0; r < 3; r++)
            for (int n = 0; n < N; n++) {
                int32_t s = 0;
                for (int k = 0; k < K; k++)
                    s += ((int32_t)A[(size_t)r * K + k] - 100) * codes[(size_t)n * K + k];
                bad_pack += s != C[(size_t)r * N + n];
            }
        free(A);
        free(C);
        free(codes);
        free(scale);
    }
    /* weight-only int8 tensors (the decoder's folded cross-attention weights) load back as
     * scale * code */
    const char *wo[] = {"mask_decoder.transformer.layers.0.cross_attn_token_to_image.k_proj.weight",
                        "mask_decoder.transformer.layers.1.cross_attn_image_to_token.out_proj.weight"};
    for (size_t i = 0; i < sizeof wo / sizeof wo[0]; i++) {
        const ts_tensor *tf = ts_map_get(fm->map, wo[i]), *tq = ts_map_get(qm->map, wo[i]);
        REQUIRE(tf && tq && tq->dtype == TS_DTYPE_F32 && tq->file_dtype == TS_DTYPE_I8 &&
                    tq->numel == tf->numel,
                "%s: not stored as int8", wo[i]);
        int rows = (int)tf->shape[0], cols = (int)(tf->numel / rows);
        int8_t *codes = malloc((size_t)tf->numel);
        float *scale = malloc(sizeof(float) * rows);
        REQUIRE(codes && scale, "oom");
        ts_quant_weights(tf->data, rows, cols, cols, codes, scale);
        int bad = 0;
        double maxrel = 0;
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < cols; c++) {
                float want = scale[r] * (float)codes[(size_t)r * cols + c];
                float got = ((const float *)tq->data)[(size_t)r * cols + c];
                float orig = ((const float *)tf->data)[(size_t)r * cols + c];
                bad += got != want;
                maxrel = fmax(maxrel, fabs(got - orig) / (scale[r] * 127));
            }
        printf("  %s: weight-only int8, max error %.4f of the row's range\n", wo[i], maxrel);
        CHECK(bad == 0 && maxrel <= 0.5 / 127 + 1e-6, "%s: %d values differ from scale * code",
              wo[i], bad);
        free(codes);
        free(scale);
    }
    CHECK(bad_codes == 0, "%d layers with codes != ts_quant_weights(float weight)", bad_codes);
    CHECK(bad_scales == 0, "%d scale mismatches", bad_scales);
    CHECK(bad_pack == 0, "%d pack products differ from the file's codes", bad_pack);
    CHECK(bad_q == 0, "%d bias / quantiser mismatches", bad_q);
}

static double iou_sum, iou_min;
static int n_iou;

static void run_image(const char *image, const char *file) {
    char rel[256];
    snprintf(rel, sizeof rel, "images/%s", file);
    tinysam_image img;
    REQUIRE(tinysam_image_load(fixture(rel), 0, &img) == 0, "%s: %s", file, tinysam_last_error());
    tinysam_embedding *ef, *eq;
    REQUIRE(tinysam_encode(fm, &img, &ef) == 0, "%s", tinysam_last_error());
    REQUIRE(tinysam_encode(qm, &img, &eq) == 0, "%s", tinysam_last_error());
    double cs = test_cosine(tinysam_embedding_data(ef), tinysam_embedding_data(eq), 256 * 64 * 64);
    printf("  %s: embedding cosine %.5f\n", image, cs);
    CHECK(cs >= 0.99, "%s: embedding cosine %.5f", image, cs);
    snprintf(rel, sizeof rel, "reference/%s/prompts", image);
    DIR *dir = opendir(fixture(rel));
    REQUIRE(dir, "%s", rel);
    struct dirent *de;
    int cases = 0;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.') continue;
        char base[512];
        snprintf(base, sizeof base, "reference/%s/prompts/%s", image, de->d_name);
        static test_prompt_case pc;
        REQUIRE(test_prompt_case_load(base, 1, &pc) == 0, "%s", tinysam_last_error());
        const tinysam_prompt pr = pc.prompt;
        tinysam_prediction pf, pq;
        REQUIRE(tinysam_predict(fm, ef, &pr, TINYSAM_PREDICT_MASKS, &pf) == 0, "%s",
                tinysam_last_error());
        REQUIRE(tinysam_predict(qm, eq, &pr, TINYSAM_PREDICT_MASKS, &pq) == 0, "%s",
                tinysam_last_error());
        size_t plane = (size_t)pf.width * pf.height;
        double iou = test_mask_iou(pf.masks + (size_t)pf.best * plane,
                                   pq.masks + (size_t)pq.best * plane, plane);
        printf("  %s/%s: best %d / %d, best-mask IoU %.4f\n", image, de->d_name, pf.best,
               pq.best, iou);
        CHECK(iou >= 0.85, "%s/%s: best-mask IoU %.4f < 0.85", image, de->d_name, iou);
        iou_sum += iou;
        iou_min = n_iou ? fmin(iou_min, iou) : iou;
        n_iou++;
        cases++;
        tinysam_prediction_free(&pf);
        tinysam_prediction_free(&pq);
        test_prompt_case_free(&pc);
    }
    closedir(dir);
    CHECK(cases >= 3, "%s: only %d cases", image, cases);
    tinysam_embedding_free(ef);
    tinysam_embedding_free(eq);
    tinysam_image_free(&img);
}

static void test_accuracy(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    if (!fixture_exists("reference/picture1/prompts") || !fixture_exists("images/picture1.jpg"))
        SKIP("reference prompts missing");
    iou_sum = 0;
    n_iou = 0;
    run_image("picture1", "picture1.jpg");
    if (fixture_exists("reference/shapes/prompts")) run_image("shapes", "shapes.png");
    double mean = n_iou ? iou_sum / n_iou : 0;
    printf("  mean best-mask IoU over %d cases: %.4f, worst %.4f\n", n_iou, mean, iou_min);
    CHECK(n_iou > 0 && iou_min >= 0.85, "worst best-mask IoU %.4f", iou_min);
    CHECK(n_iou > 0 && mean >= 0.95, "mean best-mask IoU %.4f over %d cases", mean, n_iou);
}

/* The decoder's W8A8 layers (int8_model.h): each ConvTranspose2d stored as the GEMM of its
 * 4 sub-pixels (row (a*2+b)*out + o, column = input channel) with per-row codes and scales
 * that are ts_quant_weights of the float weight in that layout, the bias repeated per
 * sub-pixel, valid input quantisers, loaded into the int8 upscaling (not expanded). */
static void test_decoder_layers(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    CHECK(qm->mask_decoder->up_i8 != NULL, "the int8 file's upscaling is not int8");
    CHECK(fm->mask_decoder->up_i8 == NULL, "the float model's upscaling is int8");
    const struct { const char *P; int in, out; } L[2] = {
        {"mask_decoder.output_upscaling.0", 256, 64}, {"mask_decoder.output_upscaling.3", 64, 32}};
    char n[192];
    for (int l = 0; l < 2; l++) {
        const int in = L[l].in, out = L[l].out, N = 4 * out;
        snprintf(n, sizeof n, "%s.weight", L[l].P);
        const ts_tensor *wf = ts_map_get(fm->map, n), *wq = ts_map_get(qm->map, n);
        snprintf(n, sizeof n, "%s.weight_scale", L[l].P);
        const ts_tensor *sq = ts_map_get(qm->map, n);
        snprintf(n, sizeof n, "%s.bias", L[l].P);
        const ts_tensor *bf = ts_map_get(fm->map, n), *bq = ts_map_get(qm->map, n);
        snprintf(n, sizeof n, "%s.input_step", L[l].P);
        const ts_tensor *st = ts_map_get(qm->map, n);
        snprintf(n, sizeof n, "%s.input_zero_point", L[l].P);
        const ts_tensor *zp = ts_map_get(qm->map, n);
        REQUIRE(wf && wq && sq && bf && bq && st && zp, "%s: tensors missing", L[l].P);
        REQUIRE(wq->dtype == TS_DTYPE_I8 && wq->ndim == 2 && wq->shape[0] == N &&
                    wq->shape[1] == in && sq->numel == N && bq->numel == N,
                "%s: shapes", L[l].P);
        float *g = malloc(sizeof(float) * N * in), *sc = malloc(sizeof(float) * N);
        int8_t *codes = malloc((size_t)N * in);
        REQUIRE(g && sc && codes, "oom");
        const float *w = wf->data;
        for (int c = 0; c < in; c++)
            for (int o = 0; o < out; o++)
                for (int ab = 0; ab < 4; ab++)
                    g[(size_t)(ab * out + o) * in + c] = w[((size_t)c * out + o) * 4 + ab];
        ts_quant_weights(g, N, in, in, codes, sc);
        CHECK(!memcmp(codes, wq->data, (size_t)N * in), "%s: codes", L[l].P);
        CHECK(!memcmp(sc, sq->data, sizeof(float) * N), "%s: scales", L[l].P);
        int bad = 0;
        for (int k = 0; k < N; k++)
            bad += ((const float *)bq->data)[k] != ((const float *)bf->data)[k % out];
        CHECK(bad == 0, "%s: %d bias values", L[l].P, bad);
        float s0 = *(const float *)st->data, z0 = *(const float *)zp->data;
        printf("  %s: input step %.5g zero point %g\n", L[l].P, (double)s0, (double)z0);
        CHECK(s0 > 0 && z0 >= 0 && z0 <= 255 && (l || z0 == 128), "%s: quantiser", L[l].P);
        free(g);
        free(sc);
        free(codes);
    }
    const ts_tensor *ms = ts_map_get(qm->map, "mask_decoder.mask_product.input_step");
    CHECK(ms && ms->dtype == TS_DTYPE_F32 && *(const float *)ms->data > 0, "mask product step");
    /* the token-side Linears: W8A8 in the file (codes of the float weight per output channel,
     * the float bias, a calibrated input quantiser) and loaded as int8 */
    int bad_tok = 0;
    for (int i = 0; i < TS_DEC_N_TOK; i++) {
        char P[128];
        int N, K, relu;
        REQUIRE(ts_dec_tok_layer(i, P, sizeof P, &N, &K, &relu) == 0, "layer %d", i);
        if (ts_dec_tok_kept_float(i)) { /* left float (weight-only in the file) */
            snprintf(n, sizeof n, "%s.input_step", P);
            bad_tok += ts_map_get(qm->map, n) != NULL;
            continue;
        }
        snprintf(n, sizeof n, "%s.weight", P);
        const ts_tensor *wf = ts_map_get(fm->map, n), *wq = ts_map_get(qm->map, n);
        snprintf(n, sizeof n, "%s.weight_scale", P);
        const ts_tensor *sq = ts_map_get(qm->map, n);
        snprintf(n, sizeof n, "%s.bias", P);
        const ts_tensor *bf = ts_map_get(fm->map, n), *bq = ts_map_get(qm->map, n);
        snprintf(n, sizeof n, "%s.input_step", P);
        const ts_tensor *st = ts_map_get(qm->map, n);
        snprintf(n, sizeof n, "%s.input_zero_point", P);
        const ts_tensor *zp = ts_map_get(qm->map, n);
        REQUIRE(wf && wq && sq && bf && bq && st && zp, "%s: tensors missing", P);
        REQUIRE(wq->dtype == TS_DTYPE_I8 && wq->ndim == 2 && wq->shape[0] == N &&
                    wq->shape[1] == K && sq->numel == N && bq->numel == N,
                "%s: shapes", P);
        int8_t *codes = malloc((size_t)N * K);
        float *sc = malloc(sizeof(float) * N);
        REQUIRE(codes && sc, "oom");
        ts_quant_weights(wf->data, N, K, K, codes, sc);
        float s0 = *(const float *)st->data, z0 = *(const float *)zp->data;
        int bad = memcmp(codes, wq->data, (size_t)N * K) != 0;
        bad += memcmp(sc, sq->data, sizeof(float) * N) != 0;
        bad += memcmp(bf->data, bq->data, sizeof(float) * N) != 0;
        bad += !(s0 > 0) || z0 < 0 || z0 > 255 || (!relu && z0 != 128);
        if (bad) printf("  %s: %d mismatches (step %g, zero point %g)\n", P, bad, (double)s0,
                        (double)z0);
        bad_tok += bad != 0;
        free(codes);
        free(sc);
    }
    CHECK(bad_tok == 0, "%d token-side Linears differ", bad_tok);
    int n_i8 = 0;
    for (int i = 0; i < TS_DEC_N_TOK; i++) n_i8 += !ts_dec_tok_kept_float(i);
    CHECK(qm->mask_decoder->n_tok_i8 == n_i8, "%d of %d token-side Linears loaded as int8",
          qm->mask_decoder->n_tok_i8, n_i8);
    CHECK(fm->mask_decoder->n_tok_i8 == 0, "the float model has int8 token-side Linears");
}

/* A file of the earlier format (decoder weight-only, expanded at load) still loads and runs:
 * written from the float map with the int8 file's encoder quantisers, its decoder runs in
 * float on the dequantised weights and agrees with the float model. */
static void test_weight_only_decoder_file(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    enum { NQ = TS_TINY_VIT_N_QLAYERS };
    float step[NQ];
    int zp[NQ];
    for (int i = 0; i < NQ; i++) {
        ts_tiny_vit_qlayer q;
        REQUIRE(ts_tiny_vit_qlayer_get(qm->encoder, i, &q) == 0, "layer %d", i);
        step[i] = q.in_step;
        zp[i] = q.in_zp;
    }
    char path[512];
    snprintf(path, sizeof path, "%s", tmp_path("tinysam_int8_wo.safetensors"));
    REQUIRE(ts_int8_model_save(path, fm->map, fm->encoder, step, zp, 0, NULL, NULL) == 0, "%s",
            tinysam_last_error());
    tinysam_model *om;
    REQUIRE(tinysam_model_load(path, &om) == 0, "%s", tinysam_last_error());
    CHECK(om->mask_decoder->up_i8 == NULL, "weight-only file loaded an int8 upscaling");
    tinysam_image img;
    REQUIRE(tinysam_image_load(fixture("images/shapes.png"), 0, &img) == 0, "%s",
            tinysam_last_error());
    tinysam_embedding *e;
    REQUIRE(tinysam_encode(fm, &img, &e) == 0, "%s", tinysam_last_error());
    float pt[2] = {(float)img.width / 3, (float)img.height / 2};
    int lab = 1;
    tinysam_prompt p = {.n_points = 1, .points = pt, .labels = &lab};
    tinysam_prediction a, b;
    REQUIRE(tinysam_predict(fm, e, &p, TINYSAM_PREDICT_MASKS, &a) == 0, "%s", tinysam_last_error());
    REQUIRE(tinysam_predict(om, e, &p, TINYSAM_PREDICT_MASKS, &b) == 0, "%s", tinysam_last_error());
    size_t plane = (size_t)a.width * a.height;
    double iou =
        test_mask_iou(a.masks + (size_t)a.best * plane, b.masks + (size_t)b.best * plane, plane);
    printf("  weight-only decoder file: best-mask IoU %.4f vs float\n", iou);
    CHECK(iou >= 0.95, "weight-only decoder: IoU %.4f", iou);
    tinysam_prediction_free(&a);
    tinysam_prediction_free(&b);
    tinysam_embedding_free(e);
    tinysam_image_free(&img);
    tinysam_model_free(om);
    remove(path);
}

/* A file of the previous int8 format (upscaling and cross-attention products int8, the
 * token-side Linears weight-only: no input steps) still loads: those Linears run in float on
 * the dequantised weights, the rest in int8, and the masks agree with the float model's. */
static void test_float_token_linears_file(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    enum { NQ = TS_TINY_VIT_N_QLAYERS };
    float step[NQ];
    int zp[NQ];
    for (int i = 0; i < NQ; i++) {
        ts_tiny_vit_qlayer q;
        REQUIRE(ts_tiny_vit_qlayer_get(qm->encoder, i, &q) == 0, "layer %d", i);
        step[i] = q.in_step;
        zp[i] = q.in_zp;
    }
    const ts_up_i8 *u = qm->mask_decoder->up_i8;
    REQUIRE(u, "no int8 upscaling");
    ts_dec_quant dq;
    memset(&dq, 0, sizeof dq); /* token-side steps 0: left float */
    dq.step[TS_DEC_SITE_UP0] = u->up0_step, dq.zp[TS_DEC_SITE_UP0] = u->up0_zp;
    dq.step[TS_DEC_SITE_UP3] = u->up3_step, dq.zp[TS_DEC_SITE_UP3] = u->up3_zp;
    dq.step[TS_DEC_SITE_MASK] = u->mp_step, dq.zp[TS_DEC_SITE_MASK] = u->mp_zp;
    for (int L = 0; L < 3; L++)
        dq.step[TS_DEC_SITE_KPE0 + L] = u->kpe_step[L], dq.zp[TS_DEC_SITE_KPE0 + L] = u->kpe_zp[L];
    for (int L = 0; L < 2; L++)
        dq.step[TS_DEC_SITE_KEYS0 + L] = u->keys_step[L],
        dq.zp[TS_DEC_SITE_KEYS0 + L] = u->keys_zp[L];
    ts_int8_decoder_view *v;
    REQUIRE(ts_int8_decoder_view_new(fm->map, &dq, &v) == 0, "%s", tinysam_last_error());
    char path[512];
    snprintf(path, sizeof path, "%s", tmp_path("tinysam_int8_ftok.safetensors"));
    int rc = ts_int8_model_save(path, ts_int8_decoder_view_map(v), fm->encoder, step, zp, 0, NULL,
                                NULL);
    ts_int8_decoder_view_free(v);
    REQUIRE(rc == 0, "%s", tinysam_last_error());
    tinysam_model *om;
    REQUIRE(tinysam_model_load(path, &om) == 0, "%s", tinysam_last_error());
    CHECK(om->mask_decoder->up_i8 != NULL, "the upscaling is not int8");
    CHECK(om->mask_decoder->n_tok_i8 == 0, "%d token-side Linears int8", om->mask_decoder->n_tok_i8);
    tinysam_image img;
    REQUIRE(tinysam_image_load(fixture("images/shapes.png"), 0, &img) == 0, "%s",
            tinysam_last_error());
    tinysam_embedding *e;
    REQUIRE(tinysam_encode(fm, &img, &e) == 0, "%s", tinysam_last_error());
    float pt[2] = {(float)img.width / 3, (float)img.height / 2};
    int lab = 1;
    tinysam_prompt p = {.n_points = 1, .points = pt, .labels = &lab};
    tinysam_prediction a, b;
    REQUIRE(tinysam_predict(fm, e, &p, TINYSAM_PREDICT_MASKS, &a) == 0, "%s", tinysam_last_error());
    REQUIRE(tinysam_predict(om, e, &p, TINYSAM_PREDICT_MASKS, &b) == 0, "%s", tinysam_last_error());
    size_t plane = (size_t)a.width * a.height;
    double iou =
        test_mask_iou(a.masks + (size_t)a.best * plane, b.masks + (size_t)b.best * plane, plane);
    printf("  float token-side Linears file: best-mask IoU %.4f vs float\n", iou);
    CHECK(iou >= 0.95, "float token-side Linears file: IoU %.4f", iou);
    tinysam_prediction_free(&a);
    tinysam_prediction_free(&b);
    tinysam_embedding_free(e);
    tinysam_image_free(&img);
    tinysam_model_free(om);
    remove(path);
}

/* Everything mode's path: a batch of prompts in one ts_sam_decode call (the shared layer-0
 * projections, int8 in the int8 model), 16 grid points on picture1 with each model's own
 * embedding: the best low-res mask (tokens 1..3) against the float model's, IoU of logits > 0,
 * mean >= 0.95 and none below 0.85. */
static void test_batched_decode(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    tinysam_image img;
    REQUIRE(tinysam_image_load(fixture("images/picture1.jpg"), 0, &img) == 0, "%s",
            tinysam_last_error());
    tinysam_embedding *ef, *eq;
    REQUIRE(tinysam_encode(fm, &img, &ef) == 0, "%s", tinysam_last_error());
    REQUIRE(tinysam_encode(qm, &img, &eq) == 0, "%s", tinysam_last_error());
    enum { BMAX = 16 };
    /* fewer points on the slow builds: still a batch (the shared layer-0 path) */
    const int B = test_sanitized() || test_portable_kernels() ? 4 : BMAX;
    float coords[2 * BMAX], iouf[4 * BMAX], iouq[4 * BMAX];
    int lab = 1;
    ts_prompt_set sets[BMAX];
    for (int i = 0; i < B; i++) {
        coords[2 * i] = ((float)(i % 4) * 192.0f + 96.0f + 0.5f) / 1024.0f;
        coords[2 * i + 1] = ((float)(i / 4) * 192.0f + 96.0f + 0.5f) / 1024.0f;
        sets[i] = (ts_prompt_set){.n_points = 1, .coords = coords + 2 * i, .labels = &lab};
    }
    float *lf = malloc(sizeof(float) * B * 4 * 65536), *lq = malloc(sizeof(float) * B * 4 * 65536);
    REQUIRE(lf && lq, "oom");
    REQUIRE(ts_sam_decode(fm->prompt_encoder, fm->mask_decoder, tinysam_embedding_data(ef), B,
                          sets, lf, iouf) == 0, "%s", tinysam_last_error());
    REQUIRE(ts_sam_decode(qm->prompt_encoder, qm->mask_decoder, tinysam_embedding_data(eq), B,
                          sets, lq, iouq) == 0, "%s", tinysam_last_error());
    double sum = 0, worst = 1;
    for (int i = 0; i < B; i++) {
        int bf = 1, bq = 1;
        for (int t = 2; t < 4; t++) {
            if (iouf[4 * i + t] > iouf[4 * i + bf]) bf = t;
            if (iouq[4 * i + t] > iouq[4 * i + bq]) bq = t;
        }
        const float *a = lf + ((size_t)i * 4 + bf) * 65536, *b = lq + ((size_t)i * 4 + bq) * 65536;
        size_t in = 0, un = 0;
        for (size_t p = 0; p < 65536; p++) {
            in += a[p] > 0 && b[p] > 0;
            un += a[p] > 0 || b[p] > 0;
        }
        double iou = un ? (double)in / (double)un : 1.0;
        sum += iou;
        worst = fmin(worst, iou);
    }
    printf("  batch of %d points: best low-res mask IoU mean %.4f, worst %.4f\n", B, sum / B,
           worst);
    CHECK(sum / B >= 0.95 && worst >= 0.85, "batched: mean %.4f worst %.4f", sum / B, worst);
    free(lf);
    free(lq);
    tinysam_embedding_free(ef);
    tinysam_embedding_free(eq);
    tinysam_image_free(&img);
}

/* The int8 decoder's batch path: boxes (and a box with points, a lone point) through
 * tinysam_predict_batch give the IoUs, low-res logits and masks of separate tinysam_predict
 * calls bit for bit. */
static void test_batch_equals_single_i8(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    tinysam_image img;
    REQUIRE(tinysam_image_load(fixture("images/picture1.jpg"), 0, &img) == 0, "%s",
            tinysam_last_error());
    tinysam_embedding *e;
    REQUIRE(tinysam_encode(qm, &img, &e) == 0, "%s", tinysam_last_error());
    enum { NMAX = 10 };
    const int n = test_sanitized() || test_portable_kernels() ? 4 : NMAX;
    tinysam_prompt pr[NMAX];
    tinysam_prediction b[NMAX];
    float pts[4] = {300, 320, 520, 410};
    int labels[2] = {1, 0};
    memset(pr, 0, sizeof pr);
    for (int i = 0; i < n; i++) {
        float x0 = (float)(37 * i % 400), y0 = (float)(53 * i % 380);
        pr[i].has_box = i != 1;
        pr[i].box[0] = x0;
        pr[i].box[1] = y0;
        pr[i].box[2] = x0 + 120 + 11 * i;
        pr[i].box[3] = y0 + 90 + 13 * i;
        if (i % 4 == 1) {
            pr[i].n_points = 1 + (i > 1);
            pr[i].points = pts;
            pr[i].labels = labels;
        }
    }
    REQUIRE(tinysam_predict_batch(qm, e, n, pr, TINYSAM_PREDICT_MASKS, b) == 0, "%s",
            tinysam_last_error());
    int same = 0;
    for (int i = 0; i < n; i++) {
        tinysam_prediction s;
        REQUIRE(tinysam_predict(qm, e, &pr[i], TINYSAM_PREDICT_MASKS, &s) == 0, "%s",
                tinysam_last_error());
        size_t plane = (size_t)s.width * s.height;
        int ok = b[i].best == s.best && !memcmp(b[i].iou, s.iou, sizeof s.iou) &&
                 !memcmp(b[i].low_res, s.low_res, sizeof(float) * 3 * 65536) &&
                 !memcmp(b[i].masks, s.masks, 3 * plane);
        CHECK(ok, "int8 set %d: the batch differs from a separate call", i);
        same += ok;
        tinysam_prediction_free(&s);
        tinysam_prediction_free(&b[i]);
    }
    printf("  int8: %d of %d batched sets equal separate calls bit for bit\n", same, n);
    tinysam_embedding_free(e);
    tinysam_image_free(&img);
}

/* An int8 embedding prepared by tinysam_encode (its int8 image-side operands made there): the
 * first decode makes none and equals a fresh model's decode (issue 20). */
static void test_prepared_embedding_i8(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    check_prepared_decode(qpath, "int8");
}

/* The asymmetric post-GELU search: the minimum maps near code 0, and on a skewed GELU-like
 * sample its error is below that of the symmetric search (half the codes unused there). */
static void test_search_asym(void) {
    enum { n = 4096 };
    static float x[n];
    for (int i = 0; i < n; i++) {
        float v = -4.0f + 8.0f * (float)i / (float)(n - 1);
        x[i] = 0.5f * v * (1.0f + erff(v / sqrtf(2.0f))); /* GELU: [-0.17, 4] */
    }
    int zp = -1;
    double e_asym, e_sym;
    float st = ts_calib_search_asym(x, n, 64, 0.25f, &zp, &e_asym);
    ts_quant_search_step_mse(x, n, -128, 127, 64, 0.25f, &e_sym);
    printf("  asym step %.5f zp %d mse %.3g; symmetric mse %.3g\n", (double)st, zp, e_asym,
           e_sym);
    CHECK(st > 0.0f && zp >= 1 && zp <= 20, "step %g zp %d", (double)st, zp);
    CHECK(fabsf(-0.17f / st + (float)zp) <= 1.0f, "min -0.17 maps to code %g",
          (double)(-0.17f / st + (float)zp));
    CHECK(e_asym < 0.5 * e_sym, "asym mse %g, symmetric %g", e_asym, e_sym);
    float z[4] = {0, 0, 0, 0};
    CHECK(ts_calib_search_asym(z, 4, 64, 0.25f, &zp, NULL) == 1.0f && zp == 0, "all zero");
}

/* A damaged quantiser in the file is rejected with a message naming the tensor. */
static void test_bad_file(void) {
    if (!setup()) SKIP("fixtures missing or setup failed");
    FILE *f = fopen(qpath, "rb");
    REQUIRE(f, "open %s", qpath);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *buf = malloc((size_t)size);
    REQUIRE(buf && fread(buf, 1, (size_t)size, f) == (size_t)size, "read");
    fclose(f);
    static const char *what[] = {"input_zero_point", "input_step"};
    static const float bad[] = {300.0f, -1.0f};
    for (int c = 0; c < 2; c++) {
        ts_tensor_map *m;
        REQUIRE(ts_safetensors_load_memory(buf, (size_t)size, &m) == 0, "%s",
                tinysam_last_error());
        char name[160];
        snprintf(name, sizeof name, "image_encoder.layers.2.blocks.3.mlp.fc2.%s", what[c]);
        const ts_tensor *t = ts_map_get(m, name);
        REQUIRE(t && (uint8_t *)t->data >= buf && (uint8_t *)t->data < buf + size, "%s", name);
        float keep = *(float *)t->data;
        *(float *)t->data = bad[c];
        ts_tiny_vit *enc = NULL;
        int rc = ts_int8_model_expand(m);
        if (!rc) rc = ts_tiny_vit_load(m, &enc);
        CHECK(rc == TINYSAM_E_FORMAT && !enc, "%s %g: rc %d", what[c], (double)bad[c], rc);
        CHECK(strstr(tinysam_last_error(), what[c]), "message '%s'", tinysam_last_error());
        *(float *)t->data = keep;
        ts_tiny_vit_free(enc);
        ts_map_free(m);
    }
    float step[TS_TINY_VIT_N_QLAYERS];
    int zp[TS_TINY_VIT_N_QLAYERS];
    for (int i = 0; i < TS_TINY_VIT_N_QLAYERS; i++) step[i] = 0.01f, zp[i] = 128;
    CHECK(ts_int8_model_save(tmp_path("x.safetensors"), qm->map, qm->encoder, step, zp, 0, NULL,
                             NULL) == TINYSAM_E_ARG,
          "re-quantising an int8 model accepted");
    /* a "gemm"-scope file (what quantize wrote before the 3x3 convolutions were int8): the
     * 3x3 convolutions weight-only, expanded to float at load; the 51 GEMMs int8 */
    const char *gp = tmp_path("tinysam_int8_gemm.safetensors");
    CHECK(ts_int8_model_save_layers(gp, fm->map, fm->encoder, step, zp, TS_TINY_VIT_N_GEMM, NULL, 0,
                                    NULL, NULL) == 0,
          "gemm scope: %s", tinysam_last_error());
    tinysam_model *gm = NULL;
    CHECK(tinysam_model_load(gp, &gm) == 0, "gemm-scope file: %s", tinysam_last_error());
    if (gm) {
        CHECK(ts_tiny_vit_n_int8(gm->encoder) == TS_TINY_VIT_N_GEMM, "gemm scope: %d int8",
              ts_tiny_vit_n_int8(gm->encoder));
        const ts_tensor *t = ts_map_get(gm->map, "image_encoder.neck.2.weight");
        CHECK(t && t->dtype == TS_DTYPE_F32 && t->file_dtype == TS_DTYPE_I8,
              "gemm scope: neck.2 not weight-only int8");
        tinysam_model_free(gm);
    }
    /* every layer, patch_embed.seq.0 included (quantize leaves it float: slower in int8),
     * loads and runs as int8 */
    CHECK(ts_int8_model_save_layers(gp, fm->map, fm->encoder, step, zp, TS_TINY_VIT_N_QLAYERS,
                                    NULL, 0, NULL, NULL) == 0,
          "all layers: %s", tinysam_last_error());
    gm = NULL;
    CHECK(tinysam_model_load(gp, &gm) == 0, "all layers: %s", tinysam_last_error());
    if (gm) {
        CHECK(ts_tiny_vit_n_int8(gm->encoder) == TS_TINY_VIT_N_QLAYERS, "all: %d int8",
              ts_tiny_vit_n_int8(gm->encoder));
        tinysam_embedding *em = NULL;
        tinysam_image im = {0};
        uint8_t px[3 * 32 * 32];
        for (int i = 0; i < 3 * 32 * 32; i++) px[i] = (uint8_t)(i * 7);
        im.rgb = px;
        im.width = im.height = 32;
        CHECK(tinysam_encode(gm, &im, &em) == 0, "all layers encode: %s", tinysam_last_error());
        tinysam_embedding_free(em);
        tinysam_model_free(gm);
    }
    remove(gp);
    zp[3] = 256;
    CHECK(ts_int8_model_save(tmp_path("x.safetensors"), fm->map, fm->encoder, step, zp, 0, NULL,
                             NULL) == TINYSAM_E_ARG,
          "zero point 256 accepted");
    free(buf);
}

int main(void) {
    RUN(test_search_asym);
    RUN(test_file);
    RUN(test_bad_file);
    RUN(test_round_trip);
    RUN(test_decoder_layers);
    RUN(test_weight_only_decoder_file);
    RUN(test_float_token_linears_file);
    RUN(test_accuracy);
    RUN(test_batched_decode);
    RUN(test_batch_equals_single_i8);
    RUN(test_prepared_embedding_i8);
    tinysam_model_free(fm);
    tinysam_model_free(qm);
    if (qpath[0]) remove(qpath);
    if (fpath[0]) remove(fpath);
    return test_summary();
}
