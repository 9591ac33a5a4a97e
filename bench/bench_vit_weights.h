/* bench_vit_weights.h - random SAM ViT image-encoder weights (B, L or H shapes) generated in
 * memory, so that the ViT benchmarks need no checkpoint, and the generator that makes them and
 * the benchmarks' inputs (one xorshift sequence: weights first, then the input, so every
 * benchmark sees the same numbers), and the command line they share. Header-only, as
 * bench_util.h. */
#ifndef TS_BENCH_VIT_WEIGHTS_H
#define TS_BENCH_VIT_WEIGHTS_H

#include "io/tensor_map.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t bench_rng = 0x9e3779b97f4a7c15ull;
static inline float bench_urand(void) { /* xorshift64*, uniform in [-1, 1) */
    bench_rng ^= bench_rng >> 12;
    bench_rng ^= bench_rng << 25;
    bench_rng ^= bench_rng >> 27;
    return (float)((bench_rng * 2685821657736338717ull) >> 40) / 8388608.0f - 1.0f;
}

typedef struct {
    ts_tensor_map m;
    int cap;
    int embed_dim, depth; /* of the encoder built */
} bench_vit_map;

/* Adds a tensor filled with center + scale * U(-1, 1). */
static inline int bench_vit_add(bench_vit_map *b, const char *name, float center, float scale,
                                int ndim, int d0, int d1, int d2, int d3) {
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
        p[i] = center + scale * bench_urand();
    t->data = p;
    b->m.n++;
    return 0;
}

/* The map of a SAM ViT-B, -L or -H encoder (which: "B", "L", "H"; anything else is B) with
 * random weights of sensible scale. Returns 0 or -1 (out of memory); free with
 * bench_vit_free either way. */
static inline int bench_vit_build(bench_vit_map *b, const char *which) {
    static const int gb[] = {2, 5, 8, 11}, gl[] = {5, 11, 17, 23}, gh[] = {7, 15, 23, 31};
    int C = 768, depth = 12, heads = 12;
    const int *glob = gb;
    if (!strcmp(which, "L")) C = 1024, depth = 24, heads = 16, glob = gl;
    if (!strcmp(which, "H")) C = 1280, depth = 32, heads = 16, glob = gh;
    const int hd = C / heads;
    b->embed_dim = C;
    b->depth = depth;
    b->cap = 8 + depth * 16;
    b->m.t = calloc((size_t)b->cap, sizeof(ts_tensor));
    if (!b->m.t) return -1;
    const int H = 4 * C;
    const float sc = 1.0f / sqrtf((float)C), sh = 1.0f / sqrtf((float)H);
    char n[128];
    int rc = 0;
    rc |= bench_vit_add(b, "image_encoder.patch_embed.proj.weight", 0, 1.0f / sqrtf(768.0f), 4,
                        C, 3, 16, 16);
    rc |= bench_vit_add(b, "image_encoder.patch_embed.proj.bias", 0, 0.02f, 1, C, 0, 0, 0);
    rc |= bench_vit_add(b, "image_encoder.pos_embed", 0, 0.02f, 4, 1, 64, 64, C);
    for (int k = 0; k < depth && !rc; k++) {
        int g = k == glob[0] || k == glob[1] || k == glob[2] || k == glob[3];
        int len = g ? 127 : 27;
#define P(s) (snprintf(n, sizeof n, "image_encoder.blocks.%d.%s", k, s), n)
        rc |= bench_vit_add(b, P("norm1.weight"), 1, 0.1f, 1, C, 0, 0, 0);
        rc |= bench_vit_add(b, P("norm1.bias"), 0, 0.1f, 1, C, 0, 0, 0);
        rc |= bench_vit_add(b, P("attn.rel_pos_h"), 0, 0.1f, 2, len, hd, 0, 0);
        rc |= bench_vit_add(b, P("attn.rel_pos_w"), 0, 0.1f, 2, len, hd, 0, 0);
        rc |= bench_vit_add(b, P("attn.qkv.weight"), 0, sc, 2, 3 * C, C, 0, 0);
        rc |= bench_vit_add(b, P("attn.qkv.bias"), 0, 0.02f, 1, 3 * C, 0, 0, 0);
        rc |= bench_vit_add(b, P("attn.proj.weight"), 0, sc, 2, C, C, 0, 0);
        rc |= bench_vit_add(b, P("attn.proj.bias"), 0, 0.02f, 1, C, 0, 0, 0);
        rc |= bench_vit_add(b, P("norm2.weight"), 1, 0.1f, 1, C, 0, 0, 0);
        rc |= bench_vit_add(b, P("norm2.bias"), 0, 0.1f, 1, C, 0, 0, 0);
        rc |= bench_vit_add(b, P("mlp.lin1.weight"), 0, sc, 2, H, C, 0, 0);
        rc |= bench_vit_add(b, P("mlp.lin1.bias"), 0, 0.02f, 1, H, 0, 0, 0);
        rc |= bench_vit_add(b, P("mlp.lin2.weight"), 0, sh, 2, C, H, 0, 0);
        rc |= bench_vit_add(b, P("mlp.lin2.bias"), 0, 0.02f, 1, C, 0, 0, 0);
#undef P
    }
    rc |= bench_vit_add(b, "image_encoder.neck.0.weight", 0, sc, 4, 256, C, 1, 1);
    rc |= bench_vit_add(b, "image_encoder.neck.1.weight", 1, 0.1f, 1, 256, 0, 0, 0);
    rc |= bench_vit_add(b, "image_encoder.neck.1.bias", 0, 0.1f, 1, 256, 0, 0, 0);
    rc |= bench_vit_add(b, "image_encoder.neck.2.weight", 0, 1.0f / 48.0f, 4, 256, 256, 3, 3);
    rc |= bench_vit_add(b, "image_encoder.neck.3.weight", 1, 0.1f, 1, 256, 0, 0, 0);
    rc |= bench_vit_add(b, "image_encoder.neck.3.bias", 0, 0.1f, 1, 256, 0, 0, 0);
    return rc;
}

/* The ViT benchmarks' command line, [runs] [B|L|H] (3 and B by default), and their weights
 * built; 1 after printing "prog: out of memory building the weights", else 0. */
static inline int bench_vit_setup(int argc, char **argv, const char *prog, int *runs,
                                  const char **which, bench_vit_map *b) {
    *runs = argc > 1 ? atoi(argv[1]) : 3;
    if (*runs < 1) *runs = 1;
    *which = argc > 2 ? argv[2] : "B";
    if (bench_vit_build(b, *which)) {
        fprintf(stderr, "%s: out of memory building the weights\n", prog);
        return 1;
    }
    return 0;
}

static inline void bench_vit_free(bench_vit_map *b) {
    for (int i = 0; i < b->m.n; i++) {
        free(b->m.t[i].name);
        free(b->m.t[i].data);
    }
    free(b->m.t);
}

#endif
