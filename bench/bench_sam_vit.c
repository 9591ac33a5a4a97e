/* bench_sam_vit.c - SAM's ViT image encoder at the real ViT-B shapes (768 wide, 12 blocks,
 * 12 heads, global attention at 2,5,8,11) with random weights generated here in memory (no
 * checkpoint needed): median wall time of N forward passes at 1 and 2 threads, and peak RSS.
 *   build/bench/bench_sam_vit [runs] [B|L|H]     (TINYSAM_ISA=avx512|avx2|scalar to force a path)
 * L and H need about 1.2 / 2.5 GB of memory for their weights. */
#include "io/tensor_map.h"
#include "model/image_encoder_vit.h"
#include "nn/nn.h"
#include "tinysam.h"

#include "bench_util.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float urand(void) { /* xorshift64*, uniform in [-1, 1) */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (float)((g_rng * 2685821657736338717ull) >> 40) / 8388608.0f - 1.0f;
}

typedef struct {
    ts_tensor_map m;
    int cap;
} bench_map;

/* Adds a tensor filled with center + scale * U(-1, 1). */
static int add(bench_map *b, const char *name, float center, float scale, int ndim, int d0, int d1,
               int d2, int d3) {
    if (b->m.n == b->cap) return -1;
    ts_tensor *t = &b->m.t[b->m.n];
    memset(t, 0, sizeof(*t));
    int d[4] = {d0, d1, d2, d3};
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++)
        t->numel *= (t->shape[i] = d[i]);
    t->dtype = t->file_dtype = TS_DTYPE_F32;
    t->name = strdup(name);
    float *p = malloc(sizeof(float) * (size_t)t->numel);
    if (!t->name || !p) return -1;
    for (int64_t i = 0; i < t->numel; i++)
        p[i] = center + scale * urand();
    t->data = p;
    b->m.n++;
    return 0;
}

static int build(bench_map *b, int C, int depth, const int *glob, int hd) {
    b->cap = 8 + depth * 16;
    b->m.t = calloc((size_t)b->cap, sizeof(ts_tensor));
    if (!b->m.t) return -1;
    const int H = 4 * C;
    const float sc = 1.0f / sqrtf((float)C), sh = 1.0f / sqrtf((float)H);
    char n[128];
    int rc = 0;
    rc |= add(b, "image_encoder.patch_embed.proj.weight", 0, 1.0f / sqrtf(768.0f), 4, C, 3, 16, 16);
    rc |= add(b, "image_encoder.patch_embed.proj.bias", 0, 0.02f, 1, C, 0, 0, 0);
    rc |= add(b, "image_encoder.pos_embed", 0, 0.02f, 4, 1, 64, 64, C);
    for (int k = 0; k < depth && !rc; k++) {
        int g = k == glob[0] || k == glob[1] || k == glob[2] || k == glob[3];
        int len = g ? 127 : 27;
#define P(s) (snprintf(n, sizeof n, "image_encoder.blocks.%d.%s", k, s), n)
        rc |= add(b, P("norm1.weight"), 1, 0.1f, 1, C, 0, 0, 0);
        rc |= add(b, P("norm1.bias"), 0, 0.1f, 1, C, 0, 0, 0);
        rc |= add(b, P("attn.rel_pos_h"), 0, 0.1f, 2, len, hd, 0, 0);
        rc |= add(b, P("attn.rel_pos_w"), 0, 0.1f, 2, len, hd, 0, 0);
        rc |= add(b, P("attn.qkv.weight"), 0, sc, 2, 3 * C, C, 0, 0);
        rc |= add(b, P("attn.qkv.bias"), 0, 0.02f, 1, 3 * C, 0, 0, 0);
        rc |= add(b, P("attn.proj.weight"), 0, sc, 2, C, C, 0, 0);
        rc |= add(b, P("attn.proj.bias"), 0, 0.02f, 1, C, 0, 0, 0);
        rc |= add(b, P("norm2.weight"), 1, 0.1f, 1, C, 0, 0, 0);
        rc |= add(b, P("norm2.bias"), 0, 0.1f, 1, C, 0, 0, 0);
        rc |= add(b, P("mlp.lin1.weight"), 0, sc, 2, H, C, 0, 0);
        rc |= add(b, P("mlp.lin1.bias"), 0, 0.02f, 1, H, 0, 0, 0);
        rc |= add(b, P("mlp.lin2.weight"), 0, sh, 2, C, H, 0, 0);
        rc |= add(b, P("mlp.lin2.bias"), 0, 0.02f, 1, C, 0, 0, 0);
#undef P
    }
    rc |= add(b, "image_encoder.neck.0.weight", 0, sc, 4, 256, C, 1, 1);
    rc |= add(b, "image_encoder.neck.1.weight", 1, 0.1f, 1, 256, 0, 0, 0);
    rc |= add(b, "image_encoder.neck.1.bias", 0, 0.1f, 1, 256, 0, 0, 0);
    rc |= add(b, "image_encoder.neck.2.weight", 0, 1.0f / 48.0f, 4, 256, 256, 3, 3);
    rc |= add(b, "image_encoder.neck.3.weight", 1, 0.1f, 1, 256, 0, 0, 0);
    rc |= add(b, "image_encoder.neck.3.bias", 0, 0.1f, 1, 256, 0, 0, 0);
    return rc;
}

static void free_map(bench_map *b) {
    for (int i = 0; i < b->m.n; i++) {
        free(b->m.t[i].name);
        free(b->m.t[i].data);
    }
    free(b->m.t);
}

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
    int runs = argc > 1 ? atoi(argv[1]) : 3;
    if (runs < 1) runs = 1;
    const char *which = argc > 2 ? argv[2] : "B";
    static const int gb[] = {2, 5, 8, 11}, gl[] = {5, 11, 17, 23}, gh[] = {7, 15, 23, 31};
    int C = 768, depth = 12, heads = 12;
    const int *glob = gb;
    if (!strcmp(which, "L")) C = 1024, depth = 24, heads = 16, glob = gl;
    if (!strcmp(which, "H")) C = 1280, depth = 32, heads = 16, glob = gh;
    bench_map b = {0};
    if (build(&b, C, depth, glob, C / heads)) {
        fprintf(stderr, "bench_sam_vit: out of memory building the weights\n");
        return 1;
    }
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
        in[i] = 2.0f * urand();
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
    free_map(&b);
    return 0;
}
