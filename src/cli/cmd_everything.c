/* cmd_everything.c - `tinysam everything`: all masks of an image, SAM's generator records. */
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/draw.h"
#include "core.h"
#include "dist/folder_job.h"
#include "dist/shard.h"
#include "everything/amg.h"
#include "everything/polygons.h"
#include "io/image.h"
#include "model/sam.h"
#include "tinysam.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *help =
    "usage: tinysam everything --model M --image I --out masks.json [options]\n"
    "       tinysam everything --model M --images DIR --out-dir OUT [options]\n"
    "       tinysam everything --oracle-scene SCENE.json --out masks.json [options]\n"
    "\n"
    "Finds every object with point-grid prompts and writes SAM generator records\n"
    "(output_mode=\"coco_rle\"): segmentation {size, counts}, area, bbox (XYWH),\n"
    "predicted_iou, point_coords, stability_score, crop_box. Stdout gets a one-line JSON\n"
    "summary (masks, points evaluated per pass, timings).\n"
    "\n"
    "Folder mode (--images DIR --out-dir OUT): every .jpg/.jpeg/.png of DIR (sorted by name)\n"
    "into OUT/<stem>.json, SA-1B style: {\"image\": {image_id, width, height, file_name},\n"
    "\"annotations\": [{id, segmentation, area, bbox, predicted_iou, point_coords,\n"
    "stability_score, crop_box}]} (what distill --masks and eval --masks read; image_id is the\n"
    "number that ends the stem, as in SA-1B's sa_1234.jpg, else the image's position in the\n"
    "sorted folder). The model loads once, the next image is decoded while one runs, a line\n"
    "per image gives images/s, masks/s and the ETA. Crash-safe and resumable: outputs are\n"
    "written to <stem>.json.tmp, flushed and renamed, a rerun skips complete outputs; an image\n"
    "that fails is recorded in OUT/_failed/<stem>.txt and the run goes on (exit status 1 at the\n"
    "end); SIGTERM, SIGINT or SIGUSR1 finish the current image and exit with status 75.\n"
    "  --shard I/N                        image i of the sorted folder belongs to shard i mod N\n"
    "                                     (0-based); without it the shard comes from mpirun,\n"
    "                                     srun -n N, a Slurm array (--array=A-B) or, with\n"
    "                                     --shard-count N, a Kubernetes Indexed Job\n"
    "  --shard-count N                    the Indexed Job's completions (JOB_COMPLETION_INDEX)\n"
    "  --manifest FILE                    this shard's summary (images done, skipped, failed,\n"
    "                                     masks, seconds); \"{shard}\" becomes the shard index\n"
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
    "  --format png-dir DIR               also one PNG per mask (DIR/mask_0000.png, ...;\n"
    "                                     folder mode: DIR/<stem>/mask_0000.png, ...)\n"
    "  --format polygons                  --out gets the records with \"segmentation\" as COCO\n"
    "                                     polygons [[x1, y1, ...], ...] (outer contours,\n"
    "                                     Douglas-Peucker) and \"size\": [H, W]\n"
    "  --format yolo                      --out gets YOLO segmentation labels: \"0 x1 y1 ...\"\n"
    "                                     normalised to [0, 1], one line per polygon\n"
    "  --epsilon-factor F                 polygon simplification, eps = F x perimeter (0.001)\n"
    "  --threads N  --max-pixels P  --quiet (no progress on stderr)\n"
    "  --oracle-scene SCENE.json          testing aid: the scene oracle (spec ORACLE.md) in\n"
    "                                     place of the network; no model needed, the image\n"
    "                                     is optional (size from the scene)\n"
    "  --oracle-scenes DIR                the same for --images: DIR/<stem>.json per image\n";

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
        char path[4200];
        snprintf(path, sizeof path, "%s/mask_%04d.png", dir, i);
        if (!rc) rc = ts_png_write_mask(path, mask, m->width, m->height);
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

/* ---- folder mode ------------------------------------------------------------------------- */

typedef struct {
    const char *model_path;
    tinysam_model *m;
    tinysam_everything_options o;
    const char *png_dir;
    const char *scenes_dir; /* testing aid: the scene oracle in place of the network */
} folder_ctx;

static int folder_prepare(void *user) {
    folder_ctx *c = user;
    return c->scenes_dir ? 0 : tinysam_model_load(c->model_path, &c->m);
}

/* Complete: our header at the start and the closing "]}\n" at the end (written to a temporary
 * name and renamed, so anything else is a stranger's or a damaged file). */
static int folder_complete(void *user, const char *path) {
    (void)user;
    static const char head[] = "{\"image\": {";
    char buf[sizeof head], tail[3];
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    int ok = fread(buf, 1, sizeof head - 1, f) == sizeof head - 1 &&
             !memcmp(buf, head, sizeof head - 1) && fseek(f, -3, SEEK_END) == 0 &&
             fread(tail, 1, 3, f) == 3 && !memcmp(tail, "]}\n", 3);
    fclose(f);
    return ok;
}

/* SA-1B numbers its images by the digits that end the stem (sa_1234); other names get their
 * position in the sorted folder. */
static long long image_id_of(const char *stem, int index) {
    size_t n = strlen(stem), k = n;
    while (k > 0 && stem[k - 1] >= '0' && stem[k - 1] <= '9') k--;
    if (k == n || n - k > 15) return index;
    return strtoll(stem + k, NULL, 10);
}

/* rm -r of a directory holding files only (the PNG directories this command writes). */
static void remove_flat_dir(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *de;
    char path[4400];
    while ((de = readdir(d)))
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) {
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            unlink(path);
        }
    closedir(d);
    rmdir(dir);
}

/* The PNGs go to DIR/<stem>.tmp/ and are renamed to DIR/<stem>/ before the JSON is committed:
 * a complete JSON implies complete PNGs. */
static int folder_write_pngs(const char *png_dir, const char *stem,
                             const tinysam_everything_result *r) {
    char final[4200], tmp[4210];
    if ((size_t)snprintf(final, sizeof final, "%s/%s", png_dir, stem) >= sizeof final)
        return ts_error(TINYSAM_E_ARG, "--format png-dir: path too long");
    snprintf(tmp, sizeof tmp, "%s.tmp", final);
    remove_flat_dir(tmp);
    int rc = write_pngs(tmp, r);
    if (!rc) {
        remove_flat_dir(final);
        if (rename(tmp, final) != 0)
            rc = ts_error(TINYSAM_E_IO, "cannot rename '%s' to '%s': %s", tmp, final,
                          strerror(errno));
    }
    if (rc) remove_flat_dir(tmp);
    return rc;
}

static int folder_process(void *user, const ts_folder_item *it, const tinysam_image *img,
                          void *aux, long long *units) {
    folder_ctx *c = user;
    tinysam_everything_result res = {0};
    int rc;
    if (c->scenes_dir) {
        char scene[4200];
        snprintf(scene, sizeof scene, "%s/%s.json", c->scenes_dir, it->stem);
        rc = tinysam_everything_oracle(scene, &c->o, &res);
        if (!rc && res.n && (res.records[0].width != img->width ||
                             res.records[0].height != img->height))
            rc = ts_error(TINYSAM_E_ARG, "%s: the image is %dx%d but the scene is %dx%d",
                          it->name, img->width, img->height, res.records[0].width,
                          res.records[0].height);
    } else {
        /* the encoder's input was made on the loader thread */
        tinysam_embedding *emb = NULL;
        rc = ts_encode_input(c->m, aux, &emb);
        if (!rc) rc = tinysam_everything(c->m, img, emb, &c->o, &res);
        tinysam_embedding_free(emb);
    }
    if (!rc && c->png_dir) rc = folder_write_pngs(c->png_dir, it->stem, &res);
    if (!rc) {
        FILE *f = fopen(it->tmp_path, "wb");
        if (!f) rc = ts_error(TINYSAM_E_IO, "%s: cannot write: %s", it->tmp_path, strerror(errno));
        else {
            rc = ts_everything_write_sa1b(f, &res, image_id_of(it->stem, it->index), it->name,
                                          img->width, img->height);
            if (fclose(f) != 0 && !rc) rc = ts_error(TINYSAM_E_IO, "%s: write failed", it->tmp_path);
        }
    }
    *units = res.n;
    tinysam_everything_free(&res);
    return rc;
}

static int everything_folder(const char *model, const char *scenes, const char *images,
                             const char *out_dir, const char *png_dir, const char *manifest,
                             const ts_shard *shard, const tinysam_everything_options *o,
                             long long max_pixels, int quiet) {
    folder_ctx c = {.model_path = model, .o = *o, .png_dir = png_dir, .scenes_dir = scenes};
    c.o.progress = NULL;
    ts_folder_job job = {.what = "everything", .images_dir = images, .out_dir = out_dir,
                         .out_ext = ".json", .max_pixels = max_pixels, .shard = shard,
                         .quiet = quiet, .units = "masks", .manifest = manifest, .user = &c,
                         .prepare = folder_prepare, .complete = folder_complete,
                         .preprocess = scenes ? NULL : ts_encoder_input_new,
                         .aux_free = ts_encoder_input_delete, .process = folder_process};
    ts_folder_stats st;
    int rc = ts_folder_job_run(&job, &st);
    tinysam_model_free(c.m);
    if (rc) return ts_cli_fail();
    char extra[64];
    snprintf(extra, sizeof extra, "\"masks\": %lld, \"threads\": %d", st.units,
             tinysam_get_num_threads());
    return ts_folder_job_exit(&job, &st, extra);
}

int ts_cli_everything(int argc, char **argv) {
    tinysam_everything_options o;
    tinysam_everything_defaults(&o);
    const char *model = NULL, *image = NULL, *out = NULL, *overlay = NULL, *png_dir = NULL,
               *scene = NULL, *images = NULL, *out_dir = NULL, *shard_arg = NULL,
               *manifest = NULL, *scenes = NULL, *v;
    int threads = 0, quiet = 0, shard_count = 0, poly_format = 0; /* 1 polygons, 2 yolo */
    double eps_factor = 0.001;
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
        else if (!strcmp(a, "--images")) images = v;
        else if (!strcmp(a, "--out-dir")) out_dir = v;
        else if (!strcmp(a, "--shard")) shard_arg = v;
        else if (!strcmp(a, "--shard-count"))
            rc = ts_arg_int(a, v, 1, TS_SHARD_MAX_COUNT, &shard_count);
        else if (!strcmp(a, "--manifest")) manifest = v;
        else if (!strcmp(a, "--oracle-scenes")) scenes = v;
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--overlay")) overlay = v;
        else if (!strcmp(a, "--oracle-scene")) scene = v;
        else if (!strcmp(a, "--format")) {
            if (!strcmp(v, "polygons") || !strcmp(v, "yolo")) {
                poly_format = !strcmp(v, "yolo") ? 2 : 1;
            } else if (strcmp(v, "png-dir") || i + 1 >= argc) {
                ts_error(TINYSAM_E_ARG, "--format: 'png-dir DIR', 'polygons' or 'yolo'");
                return ts_cli_fail();
            } else {
                png_dir = argv[++i];
            }
        } else if (!strcmp(a, "--epsilon-factor"))
            rc = ts_arg_double_range(a, v, 0, 1, &eps_factor); else if (!strcmp(a, "--mode")) {
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
    const char *usage_err = NULL;
    if (images && (image || scene))
        usage_err = "--images goes without --image and --oracle-scene (see --oracle-scenes)";
    else if (scenes && !images) usage_err = "--oracle-scenes goes with --images";
    else if (images && !out_dir) usage_err = "--images needs --out-dir";
    else if (images && out) usage_err = "--out goes with --image; use --out-dir with --images";
    else if (images && overlay) usage_err = "--overlay goes with --image, not --images";
    else if (images && poly_format) usage_err = "--format polygons|yolo goes with --image";
    else if (images && !model && !scenes) usage_err = "--model is required";
    else if (!images && (out_dir || shard_arg || shard_count || manifest))
        usage_err = "--out-dir, --shard, --shard-count and --manifest go with --images";
    if (usage_err) {
        ts_error(TINYSAM_E_ARG, "everything: %s (see --help)", usage_err);
        return ts_cli_fail();
    }
    if (images) {
        ts_shard shard;
        if (tinysam_everything_check(&o) ||
            ts_shard_resolve(shard_arg, shard_count, NULL, &shard))
            return ts_cli_fail();
        tinysam_set_num_threads(threads);
        return everything_folder(model, scenes, images, out_dir, png_dir, manifest, &shard, &o,
                                 max_pixels, quiet);
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
            rc = poly_format ? ts_everything_write_polygons(f, &res, eps_factor, poly_format == 2)
                             : ts_everything_write_json(f, &res);
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
