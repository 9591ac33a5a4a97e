/* bench_encoder.c - the TinyViT image encoder: median wall time of N forward passes at 1 and
 * 2 threads (77.5 GFLOP per image), the ISA path used, and an output checksum.
 *   build/bench/bench_encoder [runs]      (TINYSAM_ISA=avx512|avx2|scalar to force a path) */
#include "io/tensor_map.h"
#include "model/image_encoder.h"
#include "nn/nn.h"
#include "tinysam.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define GFLOP_PER_IMAGE 77.5

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    int runs = argc > 1 ? atoi(argv[1]) : 5;
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
    double *t = malloc(sizeof(double) * (size_t)runs);
    if (!in || !out || !t) return 1;
    unsigned s = 12345;
    for (size_t i = 0; i < n_in; i++) { /* deterministic input in the normalised range */
        s = s * 1103515245u + 12345u;
        in[i] = (float)((s >> 8) & 0xffff) / 16384.0f - 2.0f;
    }
    printf("encoder: isa %s, %d runs per setting\n", ts_nn_isa_name(), runs);
    double med1 = 0;
    for (int nt = 1; nt <= 2; nt++) {
        tinysam_set_num_threads(nt);
        ts_tiny_vit_forward(enc, in, out, NULL, NULL); /* warm-up: pool, page faults */
        for (int r = 0; r < runs; r++) {
            double t0 = now_s();
            if (ts_tiny_vit_forward(enc, in, out, NULL, NULL)) {
                fprintf(stderr, "forward: %s\n", tinysam_last_error());
                return 1;
            }
            t[r] = now_s() - t0;
        }
        qsort(t, (size_t)runs, sizeof(double), cmp_double);
        double med = t[runs / 2];
        if (nt == 1) med1 = med;
        double sum = 0;
        for (size_t i = 0; i < n_out; i++) sum += out[i];
        printf("  threads %d: median %.1f ms (min %.1f)  %.1f GFLOP/s  speedup %.2fx  "
               "checksum %.6f\n",
               nt, med * 1e3, t[0] * 1e3, GFLOP_PER_IMAGE / med, med1 / med, sum);
    }
    free(in);
    free(out);
    free(t);
    ts_tiny_vit_free(enc);
    ts_map_free(m);
    return 0;
}
