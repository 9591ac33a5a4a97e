/* bench_dataset.c - `tinysam everything --images` (one process: the model loaded once, the
 * next image decoded while one runs) against one `tinysam everything --image` process per
 * image, same options, on 8 photos of about 1 MP (crops of the official example photo,
 * written as JPEG); then the folder run's peak RSS on 12-megapixel photos.
 *
 *   bench_dataset [--json] [--quick] [--rounds N]   (BUILD: where tinysam is, default build)
 *
 * Each side runs N rounds (default 2), alternating, and keeps its fastest: a busy host slows
 * a round, never speeds one up. --quick skips the 12-megapixel run. */
#include "bench_util.h"
#include "cli_run.h"
#include "tinysam.h"

#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <jpeglib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *g_build, *g_model;

static int write_jpeg(const char *path, const uint8_t *rgb, int w, int h) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 90, TRUE);
    jpeg_start_compress(&c, TRUE);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return fclose(f) ? -1 : 0;
}

/* A w x h photo cut from src at (x0, y0), mirrored where it runs past the edge. */
static uint8_t *cut(const tinysam_image *src, int x0, int y0, int w, int h) {
    uint8_t *p = malloc((size_t)w * h * 3);
    if (!p) return NULL;
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            int sx = (x0 + x) % (2 * src->width), sy = (y0 + y) % (2 * src->height);
            if (sx >= src->width) sx = 2 * src->width - 1 - sx;
            if (sy >= src->height) sy = 2 * src->height - 1 - sy;
            memcpy(p + 3 * ((size_t)y * w + x), src->rgb + 3 * ((size_t)sy * src->width + sx), 3);
        }
    return p;
}

/* Runs `tinysam ARGS` (output discarded); returns wall seconds, *rss_mb the child's peak. */
static double run_timed(const char *args, double *rss_mb) {
    static char cmd[16384];
    snprintf(cmd, sizeof cmd, "exec %s/tinysam %s >/dev/null 2>/dev/null", g_build, args);
    double t0 = bench_now_s();
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    struct rusage ru;
    if (pid < 0 || wait4(pid, &st, 0, &ru) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
        fprintf(stderr, "bench_dataset: '%s' failed\n", cmd);
        return -1;
    }
    if (rss_mb) *rss_mb = ru.ru_maxrss / 1024.0;
    return bench_now_s() - t0;
}

int main(int argc, char **argv) {
    int json = 0, quick = 0, rounds = 2;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
    }
    if (rounds < 1) rounds = 1;
    g_build = getenv("BUILD");
    if (!g_build || !*g_build) g_build = "build";
    const char *root = getenv("TINYSAM_FIXTURES");
    if (!root) root = "../shared/fixtures";
    static char model[1024], photo[1024], dir[1024], p[1400], args[8192];
    snprintf(model, sizeof model, "%s/models/tinysam_vit_t_random.pth", root);
    snprintf(photo, sizeof photo, "%s/images/picture3.jpg", root);
    g_model = model;
    tinysam_image src;
    if (tinysam_image_load(photo, 0, &src)) {
        fprintf(stderr, "bench_dataset: %s\n", tinysam_last_error());
        return 1;
    }
    snprintf(dir, sizeof dir, "%s/tmp/bench_dataset_%d", g_build, (int)getpid());
    cli_rm_rf(dir);
    snprintf(p, sizeof p, "%s/photos", dir);
    if (ts_mkdirs(p)) return 1;
    /* 8 photos of about 1 MP: 1200 x 860 cuts of the 3000 x 2621 photo */
    for (int i = 0; i < 8; i++) {
        uint8_t *c = cut(&src, (i * 331) % 1800, (i * 227) % 1760, 1200, 860);
        snprintf(p, sizeof p, "%s/photos/photo_%d.jpg", dir, i);
        if (!c || write_jpeg(p, c, 1200, 860)) return 1;
        free(c);
    }
    const char *opts = "--points-per-side 8 --quiet";
    double best_sep = 1e30, best_folder = 1e30, rss_1mp = 0;
    for (int r = 0; r < rounds; r++) {
        double sep = 0;
        for (int i = 0; i < 8 && sep >= 0; i++) {
            snprintf(args, sizeof args,
                     "everything --model %s --image %s/photos/photo_%d.jpg --out %s/sep_%d.json %s",
                     model, dir, i, dir, i, opts);
            double t = run_timed(args, NULL);
            sep = t < 0 ? -1 : sep + t;
        }
        snprintf(args, sizeof args, "everything --model %s --images %s/photos --out-dir %s/folder_%d %s",
                 model, dir, dir, r, opts);
        double fo = run_timed(args, &rss_1mp);
        if (sep < 0 || fo < 0) return 1;
        if (sep < best_sep) best_sep = sep;
        if (fo < best_folder) best_folder = fo;
    }
    double rss_12mp = -1, t_12mp = -1;
    if (!quick) {
        snprintf(p, sizeof p, "%s/photos12", dir);
        if (ts_mkdirs(p)) return 1;
        for (int i = 0; i < 3; i++) {
            uint8_t *c = cut(&src, i * 500, i * 300, 4000, 3000);
            snprintf(p, sizeof p, "%s/photos12/photo12_%d.jpg", dir, i);
            if (!c || write_jpeg(p, c, 4000, 3000)) return 1;
            free(c);
        }
        snprintf(args, sizeof args, "everything --model %s --images %s/photos12 --out-dir %s/out12 %s",
                 model, dir, dir, opts);
        t_12mp = run_timed(args, &rss_12mp);
        if (t_12mp < 0) return 1;
    }
    tinysam_image_free(&src);
    cli_rm_rf(dir);
    const double ratio = best_sep / best_folder;
    if (json) {
        printf("{\"threads\": %d, \"photos\": 8, \"separate_s\": %.2f, \"folder_s\": %.2f, "
               "\"folder_speedup\": %.3f, \"separate_images_per_s\": %.3f, "
               "\"folder_images_per_s\": %.3f, \"peak_rss_1mp_mb\": %.0f, \"folder_12mp_s\": %.2f, "
               "\"peak_rss_12mp_mb\": %.0f}\n",
               tinysam_get_num_threads(), best_sep, best_folder, ratio, 8 / best_sep,
               8 / best_folder, rss_1mp, t_12mp, rss_12mp);
    } else {
        printf("dataset job, 8 photos of 1200x860, --points-per-side 8, %d threads (best of %d)\n",
               tinysam_get_num_threads(), rounds);
        printf("  8 separate processes: %.2f s (%.3f images/s)\n", best_sep, 8 / best_sep);
        printf("  one folder process:   %.2f s (%.3f images/s): %.2fx, peak RSS %.0f MB\n",
               best_folder, 8 / best_folder, ratio, rss_1mp);
        if (!quick)
            printf("  3 photos of 4000x3000 (12 MP), folder: %.2f s, peak RSS %.0f MB\n", t_12mp,
                   rss_12mp);
    }
    return 0;
}
