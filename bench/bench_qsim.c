/* bench_qsim.c - the Q-TinySAM module-tree path (quant/sim_model.h) against the float encoder
 * on the same weights, in one run: median encode time of picture1 (resize, normalise, encoder)
 * for whole/whole_float_fp16.pth (the optimised float networks), whole/qtinysam_like.pth with
 * int8 GEMMs where exact (the default) and with every layer simulated in float
 * (TINYSAM_QSIM_FLOAT=1), interleaved run by run so that load changes hit all three; the ratios
 * to the float encoder are the figures to quote (the machine is shared).
 *   build/bench/bench_qsim [--runs N] [--json]      (fixtures: $TINYSAM_FIXTURES or
 *                                                     ../shared/fixtures) */
#include "tinysam.h"

#include "bench_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *fix(const char *rel) {
    static char buf[3][1024];
    static int k;
    const char *root = getenv("TINYSAM_FIXTURES");
    char *b = buf[k++ % 3];
    snprintf(b, sizeof buf[0], "%s/%s", root && *root ? root : "../shared/fixtures", rel);
    return b;
}

int main(int argc, char **argv) {
    int runs = 3, json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
    }
    if (runs < 1 || runs > 50) runs = 3;
    tinysam_model *m[3] = {NULL, NULL, NULL};
    const char *names[3] = {"float", "qsim_int8", "qsim_float"};
    tinysam_image img;
    if (tinysam_model_load(fix("whole/whole_float_fp16.pth"), &m[0]) ||
        tinysam_model_load(fix("whole/qtinysam_like.pth"), &m[1]) ||
        setenv("TINYSAM_QSIM_FLOAT", "1", 1) ||
        tinysam_model_load(fix("whole/qtinysam_like.pth"), &m[2]) ||
        tinysam_image_load(fix("images/picture1.jpg"), 0, &img)) {
        fprintf(stderr, "bench_qsim: %s\n", tinysam_last_error());
        return 1;
    }
    unsetenv("TINYSAM_QSIM_FLOAT");
    double *t = calloc((size_t)3 * runs, sizeof *t), med[3];
    for (int r = -1; r < runs; r++) /* r = -1: warm-up */
        for (int k = 0; k < 3; k++) {
            tinysam_embedding *e = NULL;
            double t0 = bench_now_s();
            if (tinysam_encode(m[k], &img, &e)) {
                fprintf(stderr, "bench_qsim: %s\n", tinysam_last_error());
                return 1;
            }
            if (r >= 0) t[k * runs + r] = bench_now_s() - t0;
            tinysam_embedding_free(e);
        }
    for (int k = 0; k < 3; k++) med[k] = bench_median(t + k * runs, runs);
    if (json) {
        printf("{\"float_ms\": %.1f, \"qsim_int8_ms\": %.1f, \"qsim_float_ms\": %.1f, "
               "\"qsim_int8_ratio\": %.3f, \"qsim_float_ratio\": %.3f, \"runs\": %d}\n",
               1e3 * med[0], 1e3 * med[1], 1e3 * med[2], med[1] / med[0], med[2] / med[0], runs);
    } else {
        printf("encode picture1, median of %d (interleaved):\n", runs);
        for (int k = 0; k < 3; k++)
            printf("  %-11s %8.1f ms  %.2fx the float encoder\n", names[k], 1e3 * med[k],
                   med[k] / med[0]);
    }
    for (int k = 0; k < 3; k++) tinysam_model_free(m[k]);
    tinysam_image_free(&img);
    free(t);
    return 0;
}
