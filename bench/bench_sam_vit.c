/* bench_sam_vit.c - SAM's ViT image encoder at the real ViT-B shapes (768 wide, 12 blocks,
 * 12 heads, global attention at 2,5,8,11) with random weights generated in memory
 * (bench_vit_weights.h, no checkpoint needed): median wall time of N forward passes at 1 and 2
 * threads, and peak RSS.
 *   build/bench/bench_sam_vit [runs] [B|L|H]     (TINYSAM_ISA=avx512|avx2|scalar to force a path)
 * L and H need about 1.2 / 2.5 GB of memory for their weights. */
#include "io/tensor_map.h"
#include "model/image_encoder_vit.h"
#include "nn/nn.h"
#include "tinysam.h"

#include "bench_util.h"
#include "bench_vit_weights.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

/* Multiply-adds x 2 of one forward pass as computed (windowed attention includes the padded
 * query rows of the 5x5 windows of 14). */
static double gflop(const ts_sam_vit_config *c) {
    const double T = 4096, C = c->embed_dim;
    double f = T * 768 * C + T * c->out_chans * (C + 9.0 * c->out_chans);
    for (int b = 0; b < c->depth; b++) {
        int g = 0;
        for (int i = 0; i < c->n_global; i++)
            g |= c->global_idx[i] == b;
        int ws = g ? 64 : c->window_size, nw = (64 + ws - 1) / ws;
        double N = (double)ws * ws, rows = (double)nw * nw * N, R = 2.0 * ws - 1;
        f += T * 12 * C * C;                      /* qkv, proj, lin1, lin2 */
        f += rows * N * C * 2 + rows * 2 * R * C; /* q k^T, attn v, rel-pos tables */
    }
    return 2 * f * 1e-9;
}

int main(int argc, char **argv) {
    int runs;
    const char *which;
    bench_vit_map b = {0};
    if (bench_vit_setup(argc, argv, "bench_sam_vit", &runs, &which, &b)) return 1;
    double rss_weights = bench_peak_rss_mb();
    ts_sam_vit *enc;
    if (ts_sam_vit_load(&b.m, &enc)) {
        fprintf(stderr, "bench_sam_vit: %s\n", tinysam_last_error());
        return 1;
    }
    const ts_sam_vit_config *cf = ts_sam_vit_get_config(enc);
    size_t n_in = (size_t)3 * 1024 * 1024, n_out = (size_t)256 * 64 * 64;
    float *in = malloc(n_in * sizeof(float)), *out = malloc(n_out * sizeof(float));
    double *t = malloc(sizeof(double) * (size_t)runs);
    if (!in || !out || !t) return 1;
    for (size_t i = 0; i < n_in; i++)
        in[i] = 2.0f * bench_urand();
    double gf = gflop(cf);
    printf("SAM ViT-%s (%d wide, %d blocks, %d heads, window %d, %d global): isa %s, %.0f GFLOP, "
           "%d runs per setting\n",
           which, cf->embed_dim, cf->depth, cf->num_heads, cf->window_size, cf->n_global,
           ts_nn_isa_name(), gf, runs);
    printf("  RSS with weights: %.0f MB\n", rss_weights);
    double med1 = 0;
    for (int nt = 1; nt <= 2; nt++) {
        tinysam_set_num_threads(nt);
        for (int r = 0; r < runs; r++) {
            double t0 = bench_now_s();
            if (ts_sam_vit_forward(enc, in, out)) {
                fprintf(stderr, "forward: %s\n", tinysam_last_error());
                return 1;
            }
            t[r] = bench_now_s() - t0;
        }
        qsort(t, (size_t)runs, sizeof(double), bench_cmp_double);
        double med = t[runs / 2];
        if (nt == 1) med1 = med;
        double sum = 0;
        for (size_t i = 0; i < n_out; i++)
            sum += (double)out[i];
        printf("  threads %d: median %.0f ms (min %.0f)  %.1f GFLOP/s  speedup %.2fx  "
               "checksum %.6f\n",
               nt, med * 1e3, t[0] * 1e3, gf / med, med1 / med, sum);
    }
    double peak = bench_peak_rss_mb();
    printf("  peak RSS %.0f MB (%.0f MB beyond the weights)\n", peak, peak - rss_weights);
    free(in);
    free(out);
    free(t);
    ts_sam_vit_free(enc);
    bench_vit_free(&b);
    return 0;
}
