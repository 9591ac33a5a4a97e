/* bench_encoder.c - the TinyViT image encoder: median wall time of N forward passes at 1 and
 * 2 threads (77.5 GFLOP per image), the ISA path used, peak RSS and an output checksum; then
 * the same for the W8A8 (Q-TinySAM) encoder, quantised from the float one (calibrated on the
 * bench input, written to a temporary file and loaded back) and the ratio float / int8.
 *   build/bench/bench_encoder [runs] [--runs N] [--threads T] [--json]
 *     --threads T   measure only T threads (default: 1 and 2)
 *     --json        print one JSON object (medians) instead of the table
 *   TINYSAM_ISA=avx512|avx2|scalar forces a path. */
#include "io/tensor_map.h"
#include "model/image_encoder.h"
#include "nn/gemm_i8.h"
#include "nn/nn.h"
#include "quant/calibrate.h"
#include "quant/int8_model.h"
#include "tinysam.h"

#include "bench_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#define GFLOP_PER_IMAGE 77.5

static long minor_faults(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) ? 0 : ru.ru_minflt;
}

/* process CPU time (user + system): less disturbed than wall time on a busy machine */
static double cpu_s(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru)) return 0;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* Median times at 1 and 2 threads (or only `only`) into med[nt]. */
static int time_encoder(const ts_tiny_vit *enc, const char *what, const float *in, float *out,
                        size_t n_out, int runs, int only, int json, double *t, double *tc,
                        double *med) {
    /* one pass at the largest thread count first: the encoder keeps the activation arena of
     * its largest pass, so the peak RSS is that of one arena, as in an application */
    tinysam_set_num_threads(only ? only : 2);
    ts_tiny_vit_forward(enc, in, out, NULL, NULL);
    for (int nt = 1; nt <= 2; nt++) {
        if (only && nt != only) continue;
        tinysam_set_num_threads(nt);
        ts_tiny_vit_forward(enc, in, out, NULL, NULL); /* warm-up: pool, page faults */
        long flt0 = minor_faults();
        for (int r = 0; r < runs; r++) {
            double t0 = bench_now_s(), c0 = cpu_s();
            if (ts_tiny_vit_forward(enc, in, out, NULL, NULL)) {
                fprintf(stderr, "forward (%s): %s\n", what, tinysam_last_error());
                return 1;
            }
            t[r] = bench_now_s() - t0;
            tc[r] = cpu_s() - c0;
        }
        long flt = (minor_faults() - flt0) / runs;
        qsort(t, (size_t)runs, sizeof(double), bench_cmp_double);
        qsort(tc, (size_t)runs, sizeof(double), bench_cmp_double);
        double md = t[runs / 2];
        med[nt] = md;
        double sum = 0;
        for (size_t i = 0; i < n_out; i++) sum += out[i];
        if (!json)
            printf("  threads %d: median %.1f ms (min %.1f)  %.1f GFLOP/s  speedup %.2fx  "
                   "cpu %.1f ms  checksum %.6f  %ld page faults/run\n",
                   nt, md * 1e3, t[0] * 1e3, GFLOP_PER_IMAGE / md,
                   med[1] > 0 ? med[1] / md : 1.0, tc[runs / 2] * 1e3, sum, flt);
    }
    return 0;
}

/* The W8A8 encoder of float map m / encoder enc, calibrated on one input, through a file:
 * the whole encoder (full 1), or only the 1x1 convolutions and linears (the "gemm" scope). */
static int quantize(const ts_tensor_map *m, const ts_tiny_vit *enc, const float *in, int full,
                    ts_tensor_map **mq, ts_tiny_vit **encq) {
    float step[TS_TINY_VIT_N_QLAYERS], attn[4 * TS_TINY_VIT_N_ATTN];
    int zp[TS_TINY_VIT_N_QLAYERS];
    ts_calib *c;
    int rc = ts_calib_new(enc, 1, &c);
    if (rc) return rc;
    if (!(rc = ts_calib_add_input(c, in))) rc = ts_calib_solve(c, TS_CALIB_MSE, step, zp);
    if (!rc) rc = ts_calib_solve_attn(c, attn);
    ts_calib_free(c);
    if (rc) return rc;
    char path[64];
    snprintf(path, sizeof path, "/tmp/bench_encoder_int8_%d_%d.safetensors", (int)getpid(), full);
    rc = ts_int8_model_save_layers(path, m, enc, step, zp,
                                   full ? TS_TINY_VIT_N_ENCODER : TS_TINY_VIT_N_GEMM,
                                   full ? attn : NULL, 0, NULL, NULL);
    if (!rc) rc = ts_map_load(path, mq);
    remove(path); /* the mapping stays valid */
    if (!rc) rc = ts_int8_model_expand(*mq);
    if (!rc) rc = ts_tiny_vit_load(*mq, encq);
    return rc;
}

int main(int argc, char **argv) {
    int runs = 5, only = 0, json = 0, float_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json"))
            json = 1;
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
            runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            only = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--float-only")) /* for profiling the float pass alone */
            float_only = 1;
        else if (argv[i][0] != '-')
            runs = atoi(argv[i]);
        else {
            fprintf(stderr, "usage: %s [runs] [--runs N] [--threads T] [--float-only] [--json]\n", argv[0]);
            return 2;
        }
    }
    if (runs < 1) runs = 1;
    const char *root = getenv("TINYSAM_FIXTURES");
    char path[1024];
    snprintf(path, sizeof path, "%s/models/tinysam_vit_t_random.pth",
             root ? root : "../shared/fixtures");
    ts_tensor_map *m;
    ts_tiny_vit *enc;
    if (ts_map_load(path, &m) || ts_tiny_vit_load(m, &enc)) {
        fprintf(stderr, "bench_encoder: %s\n", tinysam_last_error());
        return 1;
    }
    size_t n_in = (size_t)3 * 1024 * 1024, n_out = (size_t)256 * 64 * 64;
    float *in = malloc(n_in * sizeof(float)), *out = malloc(n_out * sizeof(float));
    double *t = malloc(sizeof(double) * (size_t)runs), *tc = malloc(sizeof(double) * (size_t)runs);
    if (!in || !out || !t || !tc) return 1;
    unsigned s = 12345;
    for (size_t i = 0; i < n_in; i++) { /* deterministic input in the normalised range */
        s = s * 1103515245u + 12345u;
        in[i] = (float)((s >> 8) & 0xffff) / 16384.0f - 2.0f;
    }
    if (!json) printf("encoder: isa %s, %d runs per setting\n", ts_nn_isa_name(), runs);
    double med_t[3] = {0, 0, 0}, med_q[3] = {0, 0, 0}, med_g[3] = {0, 0, 0};
    if (time_encoder(enc, "float", in, out, n_out, runs, only, json, t, tc, med_t)) return 1;
    double rss = bench_peak_rss_mb();
    if (float_only) return 0;
    /* the int8 encoder: calibrated on the bench input (speed does not depend on it) */
    ts_tensor_map *mq = NULL, *mg = NULL;
    ts_tiny_vit *encq = NULL, *encg = NULL;
    if (quantize(m, enc, in, 1, &mq, &encq) || quantize(m, enc, in, 0, &mg, &encg)) {
        fprintf(stderr, "bench_encoder: int8 model: %s\n", tinysam_last_error());
        return 1;
    }
    if (!json)
        printf("encoder int8 (W8A8, whole encoder: GEMMs, 3x3 convs, attention products): int8 "
               "GEMM %s\n", ts_gemm_i8_isa_name());
    if (time_encoder(encq, "int8", in, out, n_out, runs, only, json, t, tc, med_q)) return 1;
    if (!json) printf("encoder int8, gemm scope (1x1 convs and linears only)\n");
    if (time_encoder(encg, "int8 gemm", in, out, n_out, runs, only, json, t, tc, med_g))
        return 1;
    if (json) {
        printf("{\"encoder_ms_1t\": %.1f, \"encoder_ms_2t\": %.1f, \"gflops_2t\": %.1f, "
               "\"isa\": \"%s\", \"peak_rss_mb\": %.1f, \"encoder_int8_ms_1t\": %.1f, "
               "\"encoder_int8_ms_2t\": %.1f, \"encoder_int8_gemm_ms_1t\": %.1f, "
               "\"encoder_int8_gemm_ms_2t\": %.1f, \"int8_isa\": \"%s\", \"runs\": %d}\n",
               med_t[1] * 1e3, med_t[2] * 1e3, med_t[2] > 0 ? GFLOP_PER_IMAGE / med_t[2] : 0.0,
               ts_nn_isa_name(), rss, med_q[1] * 1e3, med_q[2] * 1e3, med_g[1] * 1e3,
               med_g[2] * 1e3, ts_gemm_i8_isa_name(),
               runs);
    } else {
        printf("  peak RSS (float pass) %.1f MB\n", rss);
        for (int nt = 1; nt <= 2; nt++)
            if (med_t[nt] > 0 && med_q[nt] > 0)
                printf("  threads %d: float %.1f ms, int8 %.1f ms: float / int8 %.2fx "
                       "(gemm scope %.1f ms: %.2fx)\n",
                       nt, med_t[nt] * 1e3, med_q[nt] * 1e3, med_t[nt] / med_q[nt],
                       med_g[nt] * 1e3, med_g[nt] > 0 ? med_t[nt] / med_g[nt] : 0.0);
    }
    free(in);
    free(out);
    free(t);
    free(tc);
    ts_tiny_vit_free(encq);
    ts_map_free(mq);
    ts_tiny_vit_free(encg);
    ts_map_free(mg);
    ts_tiny_vit_free(enc);
    ts_map_free(m);
    return 0;
}
