/* bench_everything.c - everything mode, hierarchical vs grid, in one run: with the network on
 * a photo (picture1) and on a 12-megapixel image, and with the scene oracle; points evaluated,
 * times, their ratios and peak RSS; grid mode on the photo again with the int8 model (encoder
 * GEMMs and decoder int8, quantised here on picture3).
 * Usage: bench_everything [--json] [--quick] [--threads T] */
#include "core.h"
#include "everything/mask_post.h"
#include "quant/calibrate.h"
#include "tinysam.h"

#include "bench_util.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

typedef struct {
    double ms;
    int points, masks;
} run_result;

static int run(tinysam_model *m, const tinysam_image *img, const char *scene, int mode,
               run_result *r) {
    tinysam_everything_options o;
    tinysam_everything_defaults(&o);
    o.mode = mode;
    tinysam_everything_result res;
    int rc = scene ? tinysam_everything_oracle(scene, &o, &res)
                   : tinysam_everything(m, img, NULL, &o, &res);
    if (rc) {
        fprintf(stderr, "bench_everything: %s\n", tinysam_last_error());
        return rc;
    }
    r->ms = res.ms_total;
    r->points = res.points_total;
    r->masks = res.n;
    tinysam_everything_free(&res);
    return 0;
}

int main(int argc, char **argv) {
    int json = 0, quick = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        if (!strcmp(argv[i], "--quick")) quick = 1;
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) tinysam_set_num_threads(atoi(argv[++i]));
    }
    const char *root = getenv("TINYSAM_FIXTURES");
    if (!root) root = "../shared/fixtures";
    char mp[512], ip[512], sp[512];
    snprintf(mp, sizeof mp, "%s/models/tinysam_vit_t_random.pth", root);
    snprintf(ip, sizeof ip, "%s/images/picture1.jpg", root);
    snprintf(sp, sizeof sp, "%s/oracle/scene_a/scene.json", root);
    tinysam_model *m;
    tinysam_image img;
    if (tinysam_model_load(mp, &m) || tinysam_image_load(ip, 0, &img)) {
        fprintf(stderr, "bench_everything: %s\n", tinysam_last_error());
        return 1;
    }
    run_result oh, og, nh, ng, big = {0}, big_dense = {0};
    if (run(NULL, NULL, sp, TINYSAM_EVERYTHING_HIERARCHICAL, &oh) ||
        run(NULL, NULL, sp, TINYSAM_EVERYTHING_GRID, &og))
        return 1;
    if (run(m, &img, NULL, TINYSAM_EVERYTHING_HIERARCHICAL, &nh) ||
        run(m, &img, NULL, TINYSAM_EVERYTHING_GRID, &ng))
        return 1;
    /* the int8 model: quantised on picture3 (written to a temporary file, loaded back) */
    run_result qg = {0};
    char qp[512], cp[512];
    snprintf(qp, sizeof qp, "/tmp/bench_everything_int8_%d.safetensors", (int)getpid());
    snprintf(cp, sizeof cp, "%s/images/picture3.jpg", root);
    const char *calib[1] = {cp};
    tinysam_model *mq = NULL;
    if (ts_quantize_model(m, calib, 1, TS_CALIB_MSE, qp, 0) || tinysam_model_load(qp, &mq)) {
        fprintf(stderr, "bench_everything: int8 model: %s\n", tinysam_last_error());
        return 1;
    }
    remove(qp);
    run_result fg2;
    /* float and int8 grid runs back to back, twice, the faster of each */
    if (run(mq, &img, NULL, TINYSAM_EVERYTHING_GRID, &qg) ||
        run(m, &img, NULL, TINYSAM_EVERYTHING_GRID, &fg2))
        return 1;
    if (fg2.ms < ng.ms) ng = fg2;
    run_result qg2;
    if (run(mq, &img, NULL, TINYSAM_EVERYTHING_GRID, &qg2)) return 1;
    if (qg2.ms < qg.ms) qg = qg2;
    tinysam_model_free(mq);
    double rss_photo = bench_peak_rss_mb();
    if (!quick) {
        /* a 4000x3000 photo (picture1 tiled): the memory bound of the issue */
        tinysam_image b = {4000, 3000, malloc((size_t)4000 * 3000 * 3)};
        for (int y = 0; y < 3000; y++)
            for (int x = 0; x < 4000; x++)
                memcpy(b.rgb + ((size_t)y * 4000 + x) * 3,
                       img.rgb + ((size_t)(y % img.height) * img.width + x % img.width) * 3, 3);
        if (run(m, &b, NULL, TINYSAM_EVERYTHING_HIERARCHICAL, &big)) return 1;
        /* the same with the dense post-processing (before issue 19): random weights' masks
         * are fine lattices, the spans path's worst case */
        ts_everything_set_dense(1);
        int rc = run(m, &b, NULL, TINYSAM_EVERYTHING_HIERARCHICAL, &big_dense);
        ts_everything_set_dense(0);
        if (rc) return 1;
        free(b.rgb);
    }
    double rss = bench_peak_rss_mb();
    if (json) {
        printf("{\"threads\": %d, \"oracle_hier_ms\": %.0f, \"oracle_grid_ms\": %.0f, "
               "\"oracle_hier_points\": %d, \"oracle_grid_points\": %d, \"net_hier_ms\": %.0f, "
               "\"net_grid_ms\": %.0f, \"net_hier_points\": %d, \"net_grid_points\": %d, "
               "\"net_12mp_hier_ms\": %.0f, \"net_12mp_hier_dense_ms\": %.0f, "
               "\"peak_rss_photo_mb\": %.0f, \"peak_rss_12mp_mb\": %.0f, "
               "\"net_grid_int8_ms\": %.0f, \"net_grid_int8_masks\": %d, \"net_grid_masks\": %d}\n",
               tinysam_get_num_threads(), oh.ms, og.ms, oh.points, og.points, nh.ms, ng.ms,
               nh.points, ng.points, big.ms, big_dense.ms, rss_photo, rss, qg.ms, qg.masks,
               ng.masks);
    } else {
        printf("everything mode, %d threads\n", tinysam_get_num_threads());
        printf("  oracle scene 1200x900:  hierarchical %6.0f ms, %4d points, %2d masks | "
               "grid %6.0f ms, %4d points, %2d masks | "
               "grid/hierarchical time %.2fx, points %.2fx\n",
               oh.ms, oh.points, oh.masks, og.ms, og.points, og.masks, og.ms / oh.ms,
               (double)og.points / oh.points);
        printf("  network, picture1:      hierarchical %6.0f ms, %4d points, %2d masks | "
               "grid %6.0f ms, %4d points, %2d masks | "
               "grid/hierarchical time %.2fx, points %.2fx\n",
               nh.ms, nh.points, nh.masks, ng.ms, ng.points, ng.masks, ng.ms / nh.ms,
               (double)ng.points / nh.points);
        printf("  network, picture1, grid: float %6.0f ms (%d masks), int8 model %6.0f ms (%d "
               "masks): float / int8 %.2fx\n",
               ng.ms, ng.masks, qg.ms, qg.masks, ng.ms / qg.ms);
        printf("  peak RSS after the photo runs: %.0f MB\n", rss_photo);
        if (!quick)
            printf("  network, 4000x3000 (12 MP) hierarchical: %.0f ms, %d points; "
                   "peak RSS %.0f MB; dense post-processing %.0f ms (%.3fx)\n",
                   big.ms, big.points, rss, big_dense.ms, big.ms / big_dense.ms);
    }
    tinysam_image_free(&img);
    tinysam_model_free(m);
    return 0;
}
