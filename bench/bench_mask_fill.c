/* bench_mask_fill.c - the prompted path's full-resolution byte mask (logit > 0) of one
 * low-res mask: ts_mask_fill (spans, mask_post.c) against the dense up-sampling and threshold
 * (ts_postprocess_mask, then every pixel compared), single-threaded, in one run: a smooth
 * mask (a trained model's) and a lattice (random weights': switched to the dense
 * computation) at 1200x900, 2000x1500 and 4000x3000. Best of N runs each (default 15); the
 * bytes are compared. Usage: bench_mask_fill [--json] [--runs N] */
#include "core.h"
#include "everything/mask_post.h"
#include "model/transforms.h"

#include "bench_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int one(int w, int h, int lattice, int runs, double *t_dense, double *t_fill, int *same) {
    int newh, neww;
    ts_preprocess_shape(h, w, 1024, &newh, &neww);
    ts_mask_geom g;
    if (ts_mask_geom_init(&g, newh, neww, h, w)) return 1;
    float *low = malloc(sizeof(float) * 65536);
    size_t n = (size_t)w * h;
    float *lg = malloc(sizeof(float) * n);
    float *tmp = malloc(sizeof(float) * (size_t)ts_postprocess_scratch_size(newh, neww, h, w));
    uint8_t *a = malloc(n), *b = malloc(n);
    if (!low || !lg || !tmp || !a || !b) return 1;
    uint32_t r = 12345;
    for (int i = 0; i < 256; i++)
        for (int j = 0; j < 256; j++) {
            double dx = (j - 100) / 60.0, dy = (i - 90) / 50.0;
            r = r * 1664525u + 1013904223u;
            float mag = 0.2f + 6.0f * (float)(r >> 8) / 16777216.0f;
            low[i * 256 + j] = lattice ? (((i + j) & 1) ? mag : -mag)
                                       : (float)(6 * (1 - dx * dx - dy * dy));
        }
    ts_mask_scratch s = {0};
    *t_dense = *t_fill = 1e30;
    for (int k = 0; k < runs; k++) {
        double t0 = ts_now_ms();
        if (ts_postprocess_mask(low, newh, neww, h, w, lg, tmp)) return 1;
        for (size_t q = 0; q < n; q++) a[q] = lg[q] > 0.0f;
        double t1 = ts_now_ms();
        if (ts_mask_fill(&g, low, &s, b)) return 1;
        double t2 = ts_now_ms();
        *t_dense = t1 - t0 < *t_dense ? t1 - t0 : *t_dense;
        *t_fill = t2 - t1 < *t_fill ? t2 - t1 : *t_fill;
    }
    *same = !memcmp(a, b, n);
    ts_mask_scratch_free(&s);
    ts_mask_geom_free(&g);
    free(low);
    free(lg);
    free(tmp);
    free(a);
    free(b);
    return 0;
}

int main(int argc, char **argv) {
    int json = 0, runs = 15;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    }
    if (runs < 1) runs = 1;
    static const int sz[3][2] = {{1200, 900}, {2000, 1500}, {4000, 3000}};
    int all_same = 1;
    if (json) printf("{\"runs\": %d", runs);
    else
        printf("prompted byte mask, spans (ts_mask_fill) vs dense up-sampling, 1 thread, "
               "best of %d\n",
               runs);
    for (int lat = 0; lat < 2; lat++)
        for (int k = 0; k < 3; k++) {
            double td, tf;
            int same;
            if (one(sz[k][0], sz[k][1], lat, runs, &td, &tf, &same)) {
                fprintf(stderr, "bench_mask_fill: %s\n", tinysam_last_error());
                return 1;
            }
            all_same &= same;
            const char *kind = lat ? "lattice" : "smooth";
            if (json)
                printf(", \"%s_%dx%d_dense_ms\": %.2f, \"%s_%dx%d_fill_ms\": %.2f", kind, sz[k][0],
                       sz[k][1], td, kind, sz[k][0], sz[k][1], tf);
            else
                printf("  %-7s %4dx%-4d dense %8.2f ms | spans %8.2f ms | dense / spans %.2fx%s\n",
                       kind, sz[k][0], sz[k][1], td, tf, td / tf, same ? "" : "  BYTES DIFFER");
        }
    if (json) printf(", \"identical\": %s}\n", all_same ? "true" : "false");
    return all_same ? 0 : 1;
}
