/* bench_everything_photo.c - everything mode at photo size (issue 19): the scene oracle's
 * scene_a scaled by 10/3 to 4000x3000 (12 MP), grid and hierarchical, with the spans path
 * (the default) against the dense reference (every candidate mask up-sampled to 12 MP, the
 * code before issue 19) in the same run; the 12-MP time against the fixture's 1200x900; where
 * the time goes (the oracle's "decoder" vs post-processing); the peak RSS of the spans runs
 * (measured before any dense run). Both paths' records are compared, bit for bit.
 * Then the network (random-weight checkpoint, picture1 tiled to 4000x3000, hierarchical): its
 * masks are fine lattices, a boundary everywhere, the spans path's worst case, where it must
 * switch each such mask to the dense computation; spans and dense runs alternate (best of each),
 * with the post-processing time (total - encoder - decoder) beside the totals.
 * Usage: bench_everything_photo [--json] [--runs N] [--dense-runs D] [--net-runs K]
 * [--no-net | --net-only] (medians of N timed runs per spans setting, default 3, and of D per
 * dense setting, default 1: the dense 12-MP grid run alone takes 20 s or more; the best of K
 * network runs of each path, default 2). */
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

typedef struct {
    double ms, post_ms; /* best of the runs */
    int masks, points;
    tinysam_everything_result keep;
} net_timing;

/* The network at 12 MP: K runs of each path, alternating (spans first, then dense). */
static int run_net(const char *root, int runs, net_timing *sp, net_timing *dn) {
    char mp[512], ip[512];
    snprintf(mp, sizeof mp, "%s/models/tinysam_vit_t_random.pth", root);
    snprintf(ip, sizeof ip, "%s/images/picture1.jpg", root);
    tinysam_model *m;
    tinysam_image img;
    if (tinysam_model_load(mp, &m) || tinysam_image_load(ip, 0, &img)) {
        fprintf(stderr, "bench_everything_photo: %s\n", tinysam_last_error());
        return 1;
    }
    tinysam_image b = {4000, 3000, malloc((size_t)4000 * 3000 * 3)};
    int rc = b.rgb ? 0 : 1;
    for (int y = 0; !rc && y < 3000; y++)
        for (int x = 0; x < 4000; x++)
            memcpy(b.rgb + ((size_t)y * 4000 + x) * 3,
                   img.rgb + ((size_t)(y % img.height) * img.width + x % img.width) * 3, 3);
    double ms[2][16], post[2][16];
    if (runs > 16) runs = 16;
    net_timing *t[2] = {sp, dn};
    memset(&sp->keep, 0, sizeof sp->keep);
    memset(&dn->keep, 0, sizeof dn->keep);
    tinysam_everything_options o;
    tinysam_everything_defaults(&o);
    o.mode = TINYSAM_EVERYTHING_HIERARCHICAL;
    for (int r = 0; !rc && r < runs; r++)
        for (int d = 0; !rc && d < 2; d++) {
            tinysam_everything_free(&t[d]->keep);
            ts_everything_set_dense(d);
            rc = tinysam_everything(m, &b, NULL, &o, &t[d]->keep);
            ts_everything_set_dense(0);
            if (rc) {
                fprintf(stderr, "bench_everything_photo: %s\n", tinysam_last_error());
                break;
            }
            const tinysam_everything_result *k = &t[d]->keep;
            ms[d][r] = k->ms_total;
            post[d][r] = k->ms_total - k->ms_decode - k->ms_encode;
            fprintf(stderr, "  [network 12 MP, hierarchical, %s: %.0f ms, post-processing %.0f ms]\n",
                    d ? "dense" : "spans", ms[d][r], post[d][r]);
        }
    for (int d = 0; !rc && d < 2; d++) { /* the best of the runs: the least disturbed */
        t[d]->ms = ms[d][0];
        t[d]->post_ms = post[d][0];
        for (int r = 1; r < runs; r++) {
            t[d]->ms = ms[d][r] < t[d]->ms ? ms[d][r] : t[d]->ms;
            t[d]->post_ms = post[d][r] < t[d]->post_ms ? post[d][r] : t[d]->post_ms;
        }
        t[d]->masks = t[d]->keep.n;
        t[d]->points = t[d]->keep.points_total;
    }
    free(b.rgb);
    tinysam_image_free(&img);
    tinysam_model_free(m);
    return rc;
}

int main(int argc, char **argv) {
    int json = 0, runs = 3, dense_runs = 1, net_runs = 2, net = 1, oracle = 1;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        if (!strcmp(argv[i], "--dense-runs") && i + 1 < argc) dense_runs = atoi(argv[++i]);
        if (!strcmp(argv[i], "--net-runs") && i + 1 < argc) net_runs = atoi(argv[++i]);
        if (!strcmp(argv[i], "--no-net")) net = 0;
        if (!strcmp(argv[i], "--net-only")) oracle = 0;
    }
    if (net_runs < 1) net_runs = 1;
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
    timing sh = {0}, sg = {0}, ph = {0}, pg = {0}, dh = {0}, dg = {0};
    double rss = 0;
    int rc = 0;
    if (oracle) {
        rc = run(sp, TINYSAM_EVERYTHING_HIERARCHICAL, 0, runs, &sh) ||
             run(sp, TINYSAM_EVERYTHING_GRID, 0, runs, &sg) ||
             run(big, TINYSAM_EVERYTHING_HIERARCHICAL, 0, runs, &ph) ||
             run(big, TINYSAM_EVERYTHING_GRID, 0, runs, &pg);
        rss = bench_peak_rss_mb(); /* spans runs only */
        rc = rc || run(big, TINYSAM_EVERYTHING_HIERARCHICAL, 1, dense_runs, &dh) ||
             run(big, TINYSAM_EVERYTHING_GRID, 1, dense_runs, &dg);
    }
    remove(big);
    net_timing ns = {0}, nd = {0};
    if (!rc && net) rc = run_net(root, net_runs, &ns, &nd);
    if (rc) return 1;
    int ident = !oracle || (same(&ph.keep, &dh.keep) && same(&pg.keep, &dg.keep));
    int net_ident = !net || same(&ns.keep, &nd.keep);
    if (json) {
        printf("{\"threads\": %d", tinysam_get_num_threads());
        if (oracle)
            printf(", \"runs\": %d, \"dense_runs\": %d, \"scene_hier_ms\": %.1f, \"scene_grid_ms\": %.1f, "
                   "\"photo_hier_ms\": %.1f, \"photo_grid_ms\": %.1f, \"photo_hier_dense_ms\": %.1f, "
                   "\"photo_grid_dense_ms\": %.1f, \"photo_hier_decode_ms\": %.1f, "
                   "\"photo_grid_decode_ms\": %.1f, \"photo_hier_dense_decode_ms\": %.1f, "
                   "\"photo_grid_dense_decode_ms\": %.1f, \"grid_speedup\": %.2f, "
                   "\"hier_speedup\": %.2f, \"photo_vs_scene_hier\": %.2f, "
                   "\"photo_vs_scene_grid\": %.2f, \"peak_rss_photo_mb\": %.0f, "
                   "\"identical\": %s",
                   runs, dense_runs, sh.ms, sg.ms, ph.ms, pg.ms, dh.ms, dg.ms, ph.ms_decode,
                   pg.ms_decode, dh.ms_decode, dg.ms_decode, dg.ms / pg.ms, dh.ms / ph.ms,
                   ph.ms / sh.ms, pg.ms / sg.ms, rss, ident ? "true" : "false");
        if (net)
            printf(", \"net_runs\": %d, \"net_12mp_spans_ms\": %.0f, \"net_12mp_dense_ms\": %.0f, "
                   "\"net_12mp_spans_post_ms\": %.0f, \"net_12mp_dense_post_ms\": %.0f, "
                   "\"net_12mp_spans_vs_dense\": %.3f, \"net_12mp_points\": %d, "
                   "\"net_identical\": %s",
                   net_runs, ns.ms, nd.ms, ns.post_ms, nd.post_ms, ns.ms / nd.ms, ns.points,
                   net_ident ? "true" : "false");
        printf("}\n");
    } else {
        if (oracle) {
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
        if (net)
            printf("network (random weights), picture1 tiled to 4000x3000, hierarchical, %d points, "
                   "best of %d alternating runs each:\n  spans %.0f ms (post-processing %.0f ms) | "
                   "dense %.0f ms (post-processing %.0f ms) | spans / dense %.3f; records identical: "
                   "%s\n",
                   ns.points, net_runs, ns.ms, ns.post_ms, nd.ms, nd.post_ms, ns.ms / nd.ms,
                   net_ident ? "yes" : "NO");
    }
    timing *all[] = {&sh, &sg, &ph, &pg, &dh, &dg};
    for (int i = 0; i < 6; i++) tinysam_everything_free(&all[i]->keep);
    tinysam_everything_free(&ns.keep);
    tinysam_everything_free(&nd.keep);
    return ident && net_ident ? 0 : 1;
}
