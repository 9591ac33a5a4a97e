/* cmd_everything.c - `tinysam everything`: all masks of an image, SAM's generator records. */
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/draw.h"
#include "core.h"
#include "everything/amg.h"
#include "io/image.h"
#include "tinysam.h"

#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *help =
    "usage: tinysam everything --model M --image I --out masks.json [options]\n"
    "       tinysam everything --oracle-scene SCENE.json --out masks.json [options]\n"
    "\n"
    "Finds every object with point-grid prompts and writes SAM generator records\n"
    "(output_mode=\"coco_rle\"): segmentation {size, counts}, area, bbox (XYWH),\n"
    "predicted_iou, point_coords, stability_score, crop_box. Stdout gets a one-line JSON\n"
    "summary (masks, points evaluated per pass, timings).\n"
    "\n"
    "  --mode hierarchical|grid           TinySAM's hierarchical mode (default) or SAM's grid\n"
    "  --points-per-side N                32\n"
    "  --points-per-batch N               64\n"
    "  --pred-iou-thresh F                0.88\n"
    "  --stability-score-thresh F         0.95\n"
    "  --stability-score-offset F         1.0\n"
    "  --high-score-thresh F              8.5 (hierarchical: logit marking confident pixels)\n"
    "  --box-nms-thresh F                 0.7\n"
    "  --min-mask-region-area A           0 (remove holes/islands below A pixels, then re-NMS)\n"
    "  --crop-n-layers N                  0 (grid mode)\n"
    "  --crop-nms-thresh F                0.7\n"
    "  --crop-overlap-ratio F             0.3413 (512/1500)\n"
    "  --crop-n-points-downscale-factor N 1\n"
    "  --overlay out.png                  every mask in a distinct colour over the image\n"
    "  --format png-dir DIR               also one PNG per mask (DIR/mask_0000.png, ...)\n"
    "  --threads N  --max-pixels P  --quiet (no progress on stderr)\n"
    "  --oracle-scene SCENE.json          testing aid: the scene oracle (spec ORACLE.md) in\n"
    "                                     place of the network; no model needed, the image\n"
    "                                     is optional (size from the scene)\n";

typedef struct {
    int last;
    double t0;
} progress_state;

static void show_progress(void *user, int pass, int done, int total) {
    progress_state *ps = user;
    int pct = total ? (int)(100LL * done / total) : 100;
    fprintf(stderr, "\reverything: pass %d: %d/%d points (%d%%)   ", pass, done, total, pct);
    if (done >= total) fputc('\n', stderr);
    ps->last = pct;
}

static int write_pngs(const char *dir, const tinysam_everything_result *r) {
    int rc = ts_mkdirs(dir);
    for (int i = 0; !rc && i < r->n; i++) {
        const tinysam_mask_record *m = &r->records[i];
        uint8_t *mask = malloc((size_t)m->width * m->height);
        if (!mask) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        rc = ts_rle_decode(m->counts, m->n_counts, m->width, m->height, mask);
        for (size_t k = 0; !rc && k < (size_t)m->width * m->height; k++) mask[k] *= 255;
        char path[4200];
        snprintf(path, sizeof path, "%s/mask_%04d.png", dir, i);
        if (!rc) rc = ts_png_write(path, mask, m->width, m->height, 1);
        free(mask);
    }
    return rc;
}

static int write_overlay(const char *path, const tinysam_image *img, int W, int H,
                         const tinysam_everything_result *r) {
    size_t n = (size_t)W * H;
    uint8_t *rgb = malloc(n * 3), *mask = malloc(n);
    if (!rgb || !mask) {
        free(rgb);
        free(mask);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    if (img && img->rgb) memcpy(rgb, img->rgb, n * 3);
    else memset(rgb, 40, n * 3);
    int rc = 0;
    /* largest first so that small masks stay visible on top */
    int *order = malloc(sizeof(int) * (size_t)(r->n + 1));
    for (int i = 0; order && i < r->n; i++) order[i] = i;
    for (int i = 1; order && i < r->n; i++)
        for (int j = i; j > 0 && r->records[order[j]].area > r->records[order[j - 1]].area; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    for (int k = 0; order && !rc && k < r->n; k++) {
        const tinysam_mask_record *m = &r->records[order[k]];
        rc = ts_rle_decode(m->counts, m->n_counts, W, H, mask);
        uint8_t c[3];
        ts_draw_palette(order[k], c);
        if (!rc) ts_draw_mask(rgb, W, H, mask, c, 0.55f);
    }
    if (!order) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
    if (!rc) rc = ts_png_write(path, rgb, W, H, 3);
    free(order);
    free(rgb);
    free(mask);
    return rc;
}

int ts_cli_everything(int argc, char **argv) {
    tinysam_everything_options o;
    tinysam_everything_defaults(&o);
    const char *model = NULL, *image = NULL, *out = NULL, *overlay = NULL, *png_dir = NULL,
               *scene = NULL, *v;
    int threads = 0, quiet = 0;
    long long max_pixels = TINYSAM_DEFAULT_MAX_PIXELS;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(help, stdout);
            return 0;
        }
        if (!strcmp(a, "--quiet")) {
            quiet = 1;
            continue;
        }
        if (strncmp(a, "--", 2)) {
            ts_error(TINYSAM_E_ARG, "unexpected argument '%s' (see --help)", a);
            return ts_cli_fail();
        }
        if (ts_arg_value(argc, argv, &i, &v)) return ts_cli_fail();
        double d;
        int rc = 0;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--image")) image = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--overlay")) overlay = v;
        else if (!strcmp(a, "--oracle-scene")) scene = v;
        else if (!strcmp(a, "--format")) {
            if (strcmp(v, "png-dir") || i + 1 >= argc) {
                ts_error(TINYSAM_E_ARG, "--format: only 'png-dir DIR' is supported");
                return ts_cli_fail();
            }
            png_dir = argv[++i];
        } else if (!strcmp(a, "--mode")) {
            if (!strcmp(v, "hierarchical")) o.mode = TINYSAM_EVERYTHING_HIERARCHICAL;
            else if (!strcmp(v, "grid")) o.mode = TINYSAM_EVERYTHING_GRID;
            else rc = ts_error(TINYSAM_E_ARG, "--mode: '%s' is not hierarchical or grid", v);
        } else if (!strcmp(a, "--points-per-side"))
            rc = ts_arg_int(a, v, 1, 1024, &o.points_per_side);
        else if (!strcmp(a, "--points-per-batch"))
            rc = ts_arg_int(a, v, 1, 1024, &o.points_per_batch);
        else if (!strcmp(a, "--crop-n-layers")) rc = ts_arg_int(a, v, 0, 4, &o.crop_n_layers);
        else if (!strcmp(a, "--crop-n-points-downscale-factor"))
            rc = ts_arg_int(a, v, 1, 64, &o.crop_n_points_downscale_factor);
        else if (!strcmp(a, "--min-mask-region-area"))
            rc = ts_arg_int(a, v, 0, 1 << 30, &o.min_mask_region_area);
        else if (!strcmp(a, "--threads")) rc = ts_arg_int(a, v, 1, 256, &threads);
        else if (!strcmp(a, "--max-pixels"))
            rc = ts_arg_ll(a, v, 1, (long long)1 << 40, &max_pixels);
        else {
#define OPT(f) offsetof(tinysam_everything_options, f)
            static const struct { const char *name; double lo, hi; size_t off; } fl[] = {
                {"--pred-iou-thresh", -10, 10, OPT(pred_iou_thresh)},
                {"--stability-score-thresh", 0, 1, OPT(stability_score_thresh)},
                {"--stability-score-offset", 0, 1000, OPT(stability_score_offset)},
                {"--high-score-thresh", -1000, 1000, OPT(high_score_thresh)},
                {"--box-nms-thresh", 0, 1, OPT(box_nms_thresh)},
                {"--crop-nms-thresh", 0, 1, OPT(crop_nms_thresh)},
                {"--crop-overlap-ratio", 0, 0.99, OPT(crop_overlap_ratio)},
            };
#undef OPT
            size_t k = 0;
            while (k < sizeof fl / sizeof fl[0] && strcmp(a, fl[k].name)) k++;
            if (k == sizeof fl / sizeof fl[0]) {
                ts_error(TINYSAM_E_ARG, "unknown option '%s' (see --help)", a);
                return ts_cli_fail();
            }
            rc = ts_arg_double_range(a, v, fl[k].lo, fl[k].hi, &d);
            if (!rc) *(float *)((char *)&o + fl[k].off) = (float)d;
        }
        if (rc) return ts_cli_fail();
    }
    if (!out) {
        ts_error(TINYSAM_E_ARG, "--out is required");
        return ts_cli_fail();
    }
    if (!scene && (!model || !image)) {
        ts_error(TINYSAM_E_ARG, "--model and --image are required (or --oracle-scene)");
        return ts_cli_fail();
    }
    if (tinysam_everything_check(&o)) return ts_cli_fail();
    tinysam_set_num_threads(threads);
    progress_state ps = {0};
    if (!quiet && isatty(2)) {
        o.progress = show_progress;
        o.progress_user = &ps;
    }
    tinysam_model *m = NULL;
    tinysam_image img = {0};
    tinysam_everything_result res = {0};
    double t0 = ts_now_ms();
    int rc = 0;
    if (image) rc = tinysam_image_load(image, max_pixels, &img);
    if (!rc && scene) rc = tinysam_everything_oracle(scene, &o, &res);
    else if (!rc) {
        rc = tinysam_model_load(model, &m);
        if (!rc) rc = tinysam_everything(m, &img, NULL, &o, &res);
    }
    double t1 = ts_now_ms();
    int W = res.n ? res.records[0].width : img.width;
    int H = res.n ? res.records[0].height : img.height;
    if (!rc && scene && img.rgb && res.n && (img.width != W || img.height != H))
        rc = ts_error(TINYSAM_E_ARG, "the image is %dx%d but the scene is %dx%d", img.width,
                      img.height, W, H);
    if (!rc) {
        FILE *f = fopen(out, "w");
        if (!f) rc = ts_error(TINYSAM_E_IO, "%s: cannot write", out);
        else {
            rc = ts_everything_write_json(f, &res);
            if (fclose(f) != 0 && !rc) rc = ts_error(TINYSAM_E_IO, "%s: write failed", out);
        }
    }
    if (!rc && png_dir) rc = write_pngs(png_dir, &res);
    if (!rc && overlay && W > 0) rc = write_overlay(overlay, img.rgb ? &img : NULL, W, H, &res);
    if (!rc) {
        printf("{\"masks\": %d, \"out\": ", res.n);
        ts_json_write_string_stdout(out);
        printf(", \"mode\": \"%s\", \"points_evaluated\": {\"per_pass\": [",
               o.mode == TINYSAM_EVERYTHING_GRID ? "grid" : "hierarchical");
        for (int i = 0; i < res.n_passes; i++)
            printf("%s%d", i ? ", " : "", res.points_per_pass[i]);
        printf("], \"total\": %d}, \"threads\": %d, \"timings_ms\": {\"encode\": %.1f, "
               "\"decode\": %.1f, \"generate\": %.1f, \"total\": %.1f}}\n",
               res.points_total, tinysam_get_num_threads(), res.ms_encode, res.ms_decode,
               res.ms_total, ts_now_ms() - t0);
    }
    (void)t1;
    tinysam_everything_free(&res);
    tinysam_image_free(&img);
    tinysam_model_free(m);
    return rc ? ts_cli_fail() : 0;
}
