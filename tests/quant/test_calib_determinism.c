/* test_calib_determinism.c - `tinysam quantize` gives the same steps for the same checkpoint
 * and calibration images, bit for bit, run after run and at 1 or 2 threads (issue 17: three
 * hessian runs gave three different files).
 *
 * The decoder's calibration (quant/calibrate_decoder.h) on the fixture checkpoint and one
 * image, with the Hessian-guided search on (channel weights G given: the search itself is
 * tested by test_hessian.c; computing the task-loss gradients here would take a minute): its
 * searched layers take rows at fixed positions of the sample, so the sample's order matters,
 * and the upscaling's chunks of one prompt run on every pool thread. Three runs, two threads
 * twice and one thread, must give identical steps, zero points and weight scales. The
 * encoder's sample is put in row order as it is collected (calibrate.c sort_rows); the search
 * of every layer is a function of its sample. */
#include "core.h"
#include "model/sam.h"
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
    int rc = ts_calib_decoder_hessian(fm, paths, n, h, q, 1);
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

int main(void) {
    RUN(test_decoder_calibration_reproducible);
    return test_summary();
}
