/* test_calib_determinism.c - `tinysam quantize` gives the same steps for the same checkpoint
 * and calibration images, bit for bit, run after run and at 1 or 2 threads (issue 17: three
 * hessian runs gave three different files).
 *
 * Both calibrations on the fixture checkpoint and one image, at 2 threads and at 1: every
 * step, zero point and searched weight scale must be identical (on main each case fails):
 *   - the encoder's (quant/calibrate.h), MSE steps plus the Hessian-guided search (channel
 *     weights G given: the search itself is tested by test_hessian.c; computing the task-loss
 *     gradients here would take a minute) of the first 1x1 convolution of each MBConv /
 *     PatchMerging, whose input rows the pipeline's bands (as many as a multiple of the
 *     thread count) recompute and tap twice;
 *   - the decoder's (quant/calibrate_decoder.h), with the search of the two transposed
 *     convolutions, whose rows come from the upscaling's chunks of one prompt on every pool
 *     thread in the order they finish; a search takes rows at fixed positions of its sample,
 *     so the sample's order matters.
 * Equal at 1 and 2 threads implies equal run to run (the order of a 1-thread run is fixed).
 * Default build only (about 17 s on 2 cores, quiet). */
#include "core.h"
#include "model/sam.h"
#include "quant/calibrate.h"
#include "quant/calibrate_decoder.h"
#include "quant/hessian.h"
#include "test.h"
#include "tinysam.h"

#include <stdlib.h>
#include <string.h>

#define MODEL "models/tinysam_vit_t_random.pth"

/* The decoder's calibration of fm on paths at nt threads; 0 on success. */
static int calib(tinysam_model *fm, const char *const *paths, int n, const ts_hessian *h, int nt,
                 ts_dec_quant *q) {
    const int t0 = tinysam_get_num_threads();
    tinysam_set_num_threads(nt);
    memset(q, 0, sizeof *q);
    double ms = ts_now_ms();
    int rc = ts_calib_decoder_hessian(fm, paths, n, h, q, 0);
    printf("  %d thread%s: %.1f s\n", nt, nt > 1 ? "s" : "", (ts_now_ms() - ms) / 1000);
    tinysam_set_num_threads(t0);
    return rc;
}

/* Sites whose steps, zero points or searched weight scales differ between a and b. */
static int differ(const ts_dec_quant *a, const ts_dec_quant *b, const char *what) {
    int bad = 0;
    for (int s = 0; s < TS_DEC_N_SITES; s++) {
        int n = 0;
        const size_t off = ts_dec_ws_offset(s, &n);
        const int d = memcmp(&a->step[s], &b->step[s], sizeof(float)) || a->zp[s] != b->zp[s] ||
                      a->ws_set[s] != b->ws_set[s] ||
                      (n && memcmp(a->ws + off, b->ws + off, sizeof(float) * (size_t)n));
        if (d) {
            if (bad < 4)
                printf("  %s: site %d: step %.9g / %.9g, zero point %d / %d\n", what, s,
                       a->step[s], b->step[s], a->zp[s], b->zp[s]);
            bad++;
        }
    }
    return bad;
}

static void test_decoder_calibration_reproducible(void) {
    if (!fixture_exists(MODEL) || !fixture_exists("images/picture3.jpg"))
        SKIP("fixtures missing");
    /* whole-model passes at 1024: minutes under the sanitizers or on the portable kernels
     * (the thread timing they test does not depend on the kernels) */
    if (test_sanitized() || test_portable_kernels())
        SKIP("the whole-model calibrations run in the default build");
    tinysam_model *fm = NULL;
    REQUIRE(tinysam_model_load(fixture(MODEL), &fm) == 0, "%s", tinysam_last_error());
    const char *paths[1] = {fixture("images/picture3.jpg")};
    static ts_hessian h;
    static ts_dec_quant q[2];
    if (ts_hessian_init(&h, fm->encoder)) {
        CHECK(0, "%s", tinysam_last_error());
        tinysam_model_free(fm);
        return;
    }
    /* channel weights that differ by channel (any positive G: the search is what is tested),
     * for the two transposed convolutions, whose samples come from the upscaling's chunks on
     * every pool thread (the token-side Linears' come from the calling thread in prompt
     * order; their searches would triple the time) */
    for (int s = 0; s < TS_DEC_N_SITES; s++) {
        if (s == TS_DEC_SITE_UP0 || s == TS_DEC_SITE_UP3) {
            for (int c = 0; c < h.dec_n[s]; c++) h.dec_g2[s][c] = 1.0 + (double)((c * 37) % 11);
            continue;
        }
        free(h.dec_g2[s]);
        h.dec_g2[s] = NULL;
    }
    int rc = calib(fm, paths, 1, &h, 2, &q[0]);
    if (!rc) rc = calib(fm, paths, 1, &h, 1, &q[1]);
    CHECK(rc == 0, "calibration: %s", tinysam_last_error());
    if (!rc) {
        int set = 0;
        for (int s = 0; s < TS_DEC_N_SITES; s++) set += q[0].ws_set[s];
        CHECK(set == 2, "%d layers took the Hessian-guided search, want 2", set);
        int d = differ(&q[0], &q[1], "2 threads against 1");
        CHECK(d == 0, "%d sites differ between 2 threads and 1", d);
    }
    ts_hessian_free(&h);
    tinysam_model_free(fm);
}

/* The encoder's calibration (quant/calibrate.h) of one image at nt threads: every layer's
 * MSE step, and the Hessian-guided search (G given) of the first 1x1 convolution of each
 * MBConv / PatchMerging (ws[i] not NULL), whose inputs the pipeline's bands recompute and tap
 * again above each band (the band count follows the thread count). */
static int enc_calib(tinysam_model *fm, const tinysam_image *img, const ts_hessian *h, int nt,
                     float *step, int *zp, float **ws) {
    const int t0 = tinysam_get_num_threads();
    tinysam_set_num_threads(nt);
    ts_calib *c = NULL;
    double ms = ts_now_ms();
    int rc = ts_calib_new(fm->encoder, 1, &c);
    if (!rc) rc = ts_calib_add_image(c, img);
    if (!rc) rc = ts_calib_solve_hessian(c, TS_CALIB_HESSIAN, h, step, zp, ws);
    ts_calib_free(c);
    printf("  %d thread%s: %.1f s\n", nt, nt > 1 ? "s" : "", (ts_now_ms() - ms) / 1000);
    tinysam_set_num_threads(t0);
    return rc;
}

static void test_encoder_calibration_reproducible(void) {
    if (!fixture_exists(MODEL) || !fixture_exists("images/picture3.jpg"))
        SKIP("fixtures missing");
    /* whole-model passes at 1024: minutes under the sanitizers or on the portable kernels
     * (the thread timing they test does not depend on the kernels) */
    if (test_sanitized() || test_portable_kernels())
        SKIP("the whole-model calibrations run in the default build");
    enum { NQ = TS_TINY_VIT_N_QLAYERS };
    tinysam_model *fm = NULL;
    REQUIRE(tinysam_model_load(fixture(MODEL), &fm) == 0, "%s", tinysam_last_error());
    tinysam_image img = {0};
    static ts_hessian h;
    static float step[2][NQ];
    static int zp[2][NQ];
    float *ws[2][NQ] = {{0}};
    int rc = tinysam_image_load(fixture("images/picture3.jpg"), 0, &img);
    if (!rc) rc = ts_hessian_init(&h, fm->encoder);
    int searched = 0;
    for (int i = 0; i < NQ && !rc; i++) {
        for (int k = 0; k < h.n[i]; k++) h.g2[i][k] = 1.0 + (double)((k * 37) % 11);
        if (!strstr(h.name[i], ".conv1.")) continue;
        searched++;
        for (int t = 0; t < 2 && !rc; t++)
            if (!(ws[t][i] = calloc((size_t)h.n[i], sizeof(float)))) rc = TINYSAM_E_NOMEM;
    }
    if (!rc) rc = enc_calib(fm, &img, &h, 2, step[0], zp[0], ws[0]);
    if (!rc) rc = enc_calib(fm, &img, &h, 1, step[1], zp[1], ws[1]);
    CHECK(rc == 0, "calibration: %s", tinysam_last_error());
    if (!rc) {
        printf("  %d layers, %d of them searched\n", NQ, searched);
        CHECK(searched >= 4, "%d first 1x1 convolutions found", searched);
        int bad = 0;
        for (int i = 0; i < NQ; i++) {
            int d = memcmp(&step[0][i], &step[1][i], sizeof(float)) || zp[0][i] != zp[1][i] ||
                    (ws[0][i] && memcmp(ws[0][i], ws[1][i], sizeof(float) * (size_t)h.n[i]));
            if (d && bad++ < 4)
                printf("  %s: step %.9g / %.9g, zero point %d / %d\n", h.name[i], step[0][i],
                       step[1][i], zp[0][i], zp[1][i]);
        }
        CHECK(bad == 0, "%d layers differ between 2 threads and 1", bad);
    }
    for (int t = 0; t < 2; t++)
        for (int i = 0; i < NQ; i++) free(ws[t][i]);
    ts_hessian_free(&h);
    tinysam_image_free(&img);
    tinysam_model_free(fm);
}

int main(void) {
    RUN(test_encoder_calibration_reproducible);
    RUN(test_decoder_calibration_reproducible);
    return test_summary();
}
