/* test_decoder_grad_threads.c - the float decoder backward (ts_dgf_*, src/train/decoder_grad.c)
 * runs its prompt sets in parallel, one tape per pool thread, and sums the per-set gradients
 * in set order: the outputs, parameter gradients and dL/dE must be bit-identical for 1, 2 and
 * 3 threads (3 also grows the workers after ts_dgf_create; 5 sets leave a partial round). */
#include "test.h"

#include "tinysam.h"
#include "train/decoder_grad.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t g_rng = 0x2545f4914f6cdd1dULL;
static float urand(void) { /* [-1, 1) */
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 11) / 4503599627370496.0 - 1.0);
}

#define NSET 5

static void test_bit_identical_across_threads(void) {
    ts_dg_config c = {.E = 16, .H = 4, .W = 4, .mlp = 32, .heads = 2, .cross_down = 2,
                      .iou_hidden = 16, .mask_chans = 16};
    static ts_dg_layout L;
    REQUIRE(ts_dg_layout_init(&L, &c) == 0, "layout");
    const int E = c.E, HW = c.H * c.W, P = 16 * HW;
    const size_t NZ = (size_t)NSET * 4 * P, NT = (size_t)NSET * 5 * E, NM = (size_t)E * HW;
    float *prm = malloc(sizeof(float) * L.total), *wz = malloc(sizeof(float) * NZ);
    float gauss[16], emb[256], wu[4 * NSET], wt[5 * 16 * NSET], mask_a[256], mask_b[256];
    float *grd[3], *demb[3], *z[3], u[3][4 * NSET], tok[3][5 * 16 * NSET];
    REQUIRE(prm && wz, "out of memory");
    for (int r = 0; r < 3; r++) {
        grd[r] = calloc(L.total, sizeof(float)), demb[r] = calloc(NM, sizeof(float));
        z[r] = malloc(sizeof(float) * NZ);
        REQUIRE(grd[r] && demb[r] && z[r], "out of memory");
    }
    for (int i = 0; i < L.n; i++) {
        const ts_dg_tensor *T = &L.t[i];
        int is_norm = T->ndim == 1 && strstr(T->name, "weight");
        float sc = T->ndim >= 2 ? 1.2f / sqrtf((float)(T->numel / (size_t)T->shape[0])) : 0.3f;
        for (size_t k = 0; k < T->numel; k++)
            prm[T->off + k] = is_norm ? 1.0f + 0.2f * urand() : sc * urand();
    }
    for (int i = 0; i < 16; i++) gauss[i] = urand();
    for (size_t i = 0; i < NM; i++) emb[i] = urand();
    for (size_t i = 0; i < NZ; i++) wz[i] = urand();
    for (int i = 0; i < 4 * NSET; i++) wu[i] = urand();
    for (size_t i = 0; i < NT; i++) wt[i] = urand();
    for (int i = 0; i < 256; i++) mask_a[i] = 3 * urand(), mask_b[i] = urand();
    float ca[2] = {0.3f, 0.6f}, cb[2] = {0.7f, 0.2f}, cc[4] = {0.5f, 0.5f, 0.1f, 0.9f};
    float cd[6] = {0.2f, 0.3f, 0.4f, 0.5f, 0.9f, 0.1f};
    int la[1] = {1}, lb[1] = {0}, lc[2] = {1, -1}, ld[3] = {1, 0, 1};
    ts_prompt_set sets[NSET] = {
        {.n_points = 1, .coords = ca, .labels = la},
        {.n_points = 1, .coords = cb, .labels = lb, .has_box = 1,
         .box = {0.1f, 0.2f, 0.8f, 0.7f}, .mask_input = mask_a},
        {.n_points = 2, .coords = cc, .labels = lc, .mask_input = mask_b},
        {.n_points = 3, .coords = cd, .labels = ld},
        {.n_points = 0, .has_box = 1, .box = {0.3f, 0.1f, 0.6f, 0.9f}},
    };
    const int threads0 = tinysam_get_num_threads();
    tinysam_set_num_threads(1);
    ts_dgf *df = NULL;
    REQUIRE(ts_dgf_create(&L, prm, gauss, &df) == 0, "create: %s", tinysam_last_error());
    const int nth[3] = {1, 2, 3};
    for (int r = 0; r < 3; r++) {
        tinysam_set_num_threads(nth[r]);
        CHECK(ts_dgf_forward(df, emb, NSET, sets, z[r], u[r], tok[r]) == 0, "forward: %s",
              tinysam_last_error());
        /* twice: the backward accumulates */
        for (int rep = 0; rep < 2; rep++)
            CHECK(ts_dgf_backward(df, emb, NSET, sets, wz, wu, wt, grd[r], demb[r]) == 0,
                  "backward: %s", tinysam_last_error());
    }
    tinysam_set_num_threads(threads0);
    double gmax = 0;
    for (size_t i = 0; i < L.total; i++) gmax = fmax(gmax, fabs(grd[0][i]));
    CHECK(gmax > 0 && isfinite(gmax), "gradients all zero or not finite (max %g)", gmax);
    int same = 1;
    for (int r = 1; r < 3; r++) {
        int fwd = !memcmp(z[0], z[r], sizeof(float) * NZ) && !memcmp(u[0], u[r], sizeof u[0]) &&
                  !memcmp(tok[0], tok[r], sizeof tok[0]);
        int g = !memcmp(grd[0], grd[r], sizeof(float) * L.total);
        int e = !memcmp(demb[0], demb[r], sizeof(float) * NM);
        CHECK(fwd, "forward outputs at %d threads differ from 1 thread", nth[r]);
        CHECK(g, "parameter gradients at %d threads differ from 1 thread", nth[r]);
        CHECK(e, "dL/dE at %d threads differs from 1 thread", nth[r]);
        same &= fwd && g && e;
    }
    printf("  %d sets at 1, 2, 3 threads: outputs and gradients %s (max |g| %.3g)\n", NSET,
           same ? "bit-identical" : "DIFFER", gmax);
    ts_dgf_free(df);
    for (int r = 0; r < 3; r++) free(grd[r]), free(demb[r]), free(z[r]);
    free(prm), free(wz);
}

int main(void) {
    RUN(test_bit_identical_across_threads);
    return test_summary();
}
