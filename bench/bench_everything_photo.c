/* bench_everything_photo.c - everything mode at photo size (issue 19): the scene oracle's
 * scene_a scaled by 10/3 to 4000x3000 (12 MP), grid and hierarchical, with the spans path
 * (the default) against the dense reference (every candidate mask up-sampled to 12 MP, the
 * code before issue 19) in the same run; the 12-MP time against the fixture's 1200x900; where
 * the time goes (the oracle's "decoder" vs post-processing); the peak RSS of the spans runs
 * (measured before any dense run). Both paths' records are compared, bit for bit.
 * Usage: bench_everything_photo [--json] [--runs N] [--dense-runs D] (medians of N timed runs
 * per spans setting, default 3, and of D per dense setting, default 1: the dense 12-MP grid
 * run alone takes 20 s or more). */
#include "core.h"
#include "everything/mask_post.h"
#include "tinysam.h"

#include "../tests/everything/scene_gen.h"
#include "bench_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct {
    double ms, ms_decode; /* medians */
    int masks;
    tinysam_everything_result keep; /* the last run's records, for the comparison */
} timing;

static int run(const char *scene, int mode, int dense, int runs, timing *t) {
    double ms[16], dec[16];
    if (runs > 16) runs = 16;
    tinysam_everything_options o;
    tinysam_everything_defaults(&o);
    o.mode = mode;
    ts_everything_set_dense(dense);
    memset(&t->keep, 0, sizeof t->keep);
    for (int r = 0; r < runs; r++) {
        tinysam_everything_free(&t->keep);
        if (tinysam_everything_oracle(scene, &o, &t->keep)) {
            fprintf(stderr, "bench_everything_photo: %s\n", tinysam_last_error());
            ts_everything_set_dense(0);
            return 1;
        }
        ms[r] = t->keep.ms_total;
        fprintf(stderr, "  [%s, %s, %s: %.0f ms]\n", strstr(scene, "_12mp_") ? "12 MP" : "1200x900",
                mode == TINYSAM_EVERYTHING_GRID ? "grid" : "hierarchical", dense ? "dense" : "spans",
                ms[r]);
        dec[r] = t->keep.ms_decode + t->keep.ms_encode;
    }
    ts_everything_set_dense(0);
    t->ms = bench_median(ms, runs);
    t->ms_decode = bench_median(dec, runs);
    t->masks = t->keep.n;
    return 0;
}

static int same(const tinysam_everything_result *a, const tinysam_everything_result *b) {
    if (a->n != b->n) return 0;
    for (int i = 0; i < a->n; i++) {
        const tinysam_mask_record *p = &a->records[i], *q = &b->records[i];
        if (p->n_counts != q->n_counts || p->area != q->area ||
            memcmp(p->counts, q->counts, sizeof(uint32_t) * (size_t)p->n_counts) ||
            memcmp(p->bbox, q->bbox, sizeof p->bbox) ||
            memcmp(&p->stability_score, &q->stability_score, sizeof(float)))
            return 0;
    }
    return 1;
}

int main(int argc, char **argv) {
    int json = 0, runs = 3, dense_runs = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        if (!strcmp(argv[i], "--dense-runs") && i + 1 < argc) dense_runs = atoi(argv[++i]);
    }
    if (runs < 1) runs = 1;
    if (dense_runs < 1) dense_runs = 1;
    const char *root = getenv("TINYSAM_FIXTURES");
    if (!root) root = "../shared/fixtures";
    char sp[512], big[512];
    snprintf(sp, sizeof sp, "%s/oracle/scene_a/scene.json", root);
    snprintf(big, sizeof big, "/tmp/tinysam_bench_scene_12mp_%d.json", (int)getpid());
    if (sg_write_scaled(sp, big, 10.0 / 3.0)) {
        fprintf(stderr, "bench_everything_photo: cannot read %s or write %s\n", sp, big);
        return 1;
    }
    timing sh, sg, ph, pg, dh, dg;
    int rc = run(sp, TINYSAM_EVERYTHING_HIERARCHICAL, 0, runs, &sh) ||
             run(sp, TINYSAM_EVERYTHING_GRID, 0, runs, &sg) ||
             run(big, TINYSAM_EVERYTHING_HIERARCHICAL, 0, runs, &ph) ||
             run(big, TINYSAM_EVERYTHING_GRID, 0, runs, &pg);
    double rss = bench_peak_rss_mb(); /* spans runs only */
    rc = rc || run(big, TINYSAM_EVERYTHING_HIERARCHICAL, 1, dense_runs, &dh) ||
         run(big, TINYSAM_EVERYTHING_GRID, 1, dense_runs, &dg);
    remove(big);
    if (rc) return 1;
    int ident = same(&ph.keep, &dh.keep) && same(&pg.keep, &dg.keep);
    if (json) {
        printf("{\"threads\": %d, \"runs\": %d, \"dense_runs\": %d, \"scene_hier_ms\": %.1f, \"scene_grid_ms\": %.1f, "
               "\"photo_hier_ms\": %.1f, \"photo_grid_ms\": %.1f, \"photo_hier_dense_ms\": %.1f, "
               "\"photo_grid_dense_ms\": %.1f, \"photo_hier_decode_ms\": %.1f, "
               "\"photo_grid_decode_ms\": %.1f, \"photo_hier_dense_decode_ms\": %.1f, "
               "\"photo_grid_dense_decode_ms\": %.1f, \"grid_speedup\": %.2f, "
               "\"hier_speedup\": %.2f, \"photo_vs_scene_hier\": %.2f, "
               "\"photo_vs_scene_grid\": %.2f, \"peak_rss_photo_mb\": %.0f, "
               "\"identical\": %s}\n",
               tinysam_get_num_threads(), runs, dense_runs, sh.ms, sg.ms, ph.ms, pg.ms, dh.ms, dg.ms,
               ph.ms_decode, pg.ms_decode, dh.ms_decode, dg.ms_decode, dg.ms / pg.ms,
               dh.ms / ph.ms, ph.ms / sh.ms, pg.ms / sg.ms, rss, ident ? "true" : "false");
    } else {
        printf("everything mode at photo size (scene_a x 10/3, 4000x3000), %d threads, median "
               "of %d (spans) and %d (dense) runs\n",
               tinysam_get_num_threads(), runs, dense_runs);
        printf("  grid:         spans %8.0f ms (oracle %5.0f ms) | dense %8.0f ms (oracle %5.0f "
               "ms) | %.2fx\n",
               pg.ms, pg.ms_decode, dg.ms, dg.ms_decode, dg.ms / pg.ms);
        printf("  hierarchical: spans %8.0f ms (oracle %5.0f ms) | dense %8.0f ms (oracle %5.0f "
               "ms) | %.2fx\n",
               ph.ms, ph.ms_decode, dh.ms, dh.ms_decode, dh.ms / ph.ms);
        printf("  12 MP / 1200x900: hierarchical %.0f / %.0f ms = %.2fx, grid %.0f / %.0f ms = "
               "%.2fx\n",
               ph.ms, sh.ms, ph.ms / sh.ms, pg.ms, sg.ms, pg.ms / sg.ms);
        printf("  records identical (spans vs dense): %s; masks: grid %d, hierarchical %d\n",
               ident ? "yes" : "NO", pg.masks, ph.masks);
        printf("  peak RSS of the spans runs: %.0f MB\n", rss);
    }
    timing *all[] = {&sh, &sg, &ph, &pg, &dh, &dg};
    for (int i = 0; i < 6; i++) tinysam_everything_free(&all[i]->keep);
    return ident ? 0 : 1;
}
