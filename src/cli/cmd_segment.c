/* cmd_segment.c - `tinysam segment`: prompted segmentation of one image. */
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/draw.h"
#include "core.h"
#include "io/image.h"
#include "io/npy.h"
#include "tinysam.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *help =
    "usage: tinysam segment --model M --image I [--point X,Y[,LABEL]]... [--box X0,Y0,X1,Y1]\n"
    "                       [--mask-input LOWRES.npy [--mask-index K]] [--out-dir D]\n"
    "                       [--low-res-out F.npy] [--single-mask] [--threads N]\n"
    "                       [--max-pixels P]\n"
    "\n"
    "Encodes the image once and predicts masks for the prompt set:\n"
    "  --point X,Y[,LABEL]  a point in original image pixels; LABEL 1 = foreground (default),\n"
    "                       0 = background. Repeat for several points.\n"
    "  --box X0,Y0,X1,Y1    a box in original image pixels (X1 >= X0, Y1 >= Y0).\n"
    "  --mask-input F.npy   low-res logits of an earlier prediction (--low-res-out): 256x256,\n"
    "                       1x256x256, 1x1x256x256, or 3x256x256 with --mask-index K (0..2).\n"
    "  --out-dir D          where mask_0.png .. mask_2.png (binary, original size) and\n"
    "                       overlay.png (best mask and prompts over the image) go (default: .)\n"
    "  --low-res-out F.npy  also write the 3x256x256 float32 low-res logits.\n"
    "  --single-mask        SAM's multimask_output=False: one mask (mask token 0).\n"
    "  --threads N          worker threads (default: all cores).\n"
    "  --max-pixels P       reject larger images (default 100000000).\n"
    "Prints one JSON object: iou_predictions, best, masks, overlay, timings in ms.\n";

#define MAX_CLI_POINTS 256

typedef struct {
    const char *model, *image, *mask_input, *out_dir, *low_res_out;
    int mask_index, single, threads;
    long long max_pixels;
    int n_points;
    float points[MAX_CLI_POINTS * 2];
    int labels[MAX_CLI_POINTS];
    int has_box;
    float box[4];
} options;

static int parse(int argc, char **argv, options *o) {
    const char *v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--single-mask")) {
            o->single = 1;
            continue;
        }
        if (!strncmp(a, "--", 2) && strcmp(a, "--help") && strcmp(a, "-h")) {
            if (ts_arg_value(argc, argv, &i, &v)) return -1;
        } else {
            return ts_error(TINYSAM_E_ARG, "unknown argument '%s' (see --help)", a);
        }
        if (!strcmp(a, "--model")) o->model = v;
        else if (!strcmp(a, "--image")) o->image = v;
        else if (!strcmp(a, "--mask-input")) o->mask_input = v;
        else if (!strcmp(a, "--out-dir")) o->out_dir = v;
        else if (!strcmp(a, "--low-res-out")) o->low_res_out = v;
        else if (!strcmp(a, "--mask-index")) {
            if (ts_arg_int(a, v, 0, 2, &o->mask_index)) return -1;
        } else if (!strcmp(a, "--threads")) {
            if (ts_arg_int(a, v, 1, 256, &o->threads)) return -1;
        } else if (!strcmp(a, "--max-pixels")) {
            if (ts_arg_ll(a, v, 1, (long long)1 << 40, &o->max_pixels)) return -1;
        } else if (!strcmp(a, "--point")) {
            float f[3];
            int n;
            if (o->n_points >= MAX_CLI_POINTS)
                return ts_error(TINYSAM_E_ARG, "too many points (at most %d)", MAX_CLI_POINTS);
            if (ts_arg_floats(a, v, 2, 3, f, &n)) return -1;
            int label = 1;
            if (n == 3) {
                if (f[2] != 0.0f && f[2] != 1.0f)
                    return ts_error(TINYSAM_E_ARG, "--point: label must be 0 or 1 in '%s'", v);
                label = (int)f[2];
            }
            o->points[2 * o->n_points] = f[0];
            o->points[2 * o->n_points + 1] = f[1];
            o->labels[o->n_points++] = label;
        } else if (!strcmp(a, "--box")) {
            int n;
            if (o->has_box) return ts_error(TINYSAM_E_ARG, "--box given twice (one box per prompt)");
            if (ts_arg_floats(a, v, 4, 4, o->box, &n)) return -1;
            if (o->box[2] < o->box[0] || o->box[3] < o->box[1])
                return ts_error(TINYSAM_E_ARG, "--box: x1 < x0 or y1 < y0 in '%s'", v);
            o->has_box = 1;
        } else {
            return ts_error(TINYSAM_E_ARG, "unknown option '%s' (see --help)", a);
        }
    }
    if (!o->model || !o->image) return ts_error(TINYSAM_E_ARG, "--model and --image are required");
    if (!o->n_points && !o->has_box && !o->mask_input)
        return ts_error(TINYSAM_E_ARG, "no prompt: give --point, --box or --mask-input");
    return 0;
}

/* Loads a low-res mask input, accepting the shapes --low-res-out writes. */
static int load_mask_input(const char *path, int index, float *out) {
    ts_npy a;
    int rc = ts_npy_load(path, &a);
    if (rc) return rc;
    int64_t lead = 1;
    for (int i = 0; i + 2 < a.ndim; i++) lead *= a.shape[i];
    int ok = a.dtype == TS_DTYPE_F32 && a.ndim >= 2 && a.shape[a.ndim - 1] == 256 &&
             a.shape[a.ndim - 2] == 256 && (lead == 1 || lead == 3);
    if (!ok) {
        char dims[128] = "";
        for (int i = 0; i < a.ndim; i++) {
            char t[24];
            snprintf(t, sizeof t, "%s%lld", i ? "x" : "", (long long)a.shape[i]);
            strncat(dims, t, sizeof dims - strlen(dims) - 1);
        }
        ts_npy_free(&a);
        return ts_error(TINYSAM_E_ARG,
                        "%s: mask input must be float32 256x256, 1x256x256 or 3x256x256 (got %s %s)",
                        path, a.dtype == TS_DTYPE_F32 ? "float32" : "non-float32", dims);
    }
    if (lead == 1 && index != 0) {
        ts_npy_free(&a);
        return ts_error(TINYSAM_E_ARG, "%s: holds one mask, --mask-index must be 0", path);
    }
    memcpy(out, (float *)a.data + (size_t)index * 65536, 65536 * sizeof(float));
    ts_npy_free(&a);
    return 0;
}

static int write_outputs(const options *o, const tinysam_image *img, const tinysam_prediction *p,
                         char paths[4][4096]) {
    int rc = ts_mkdirs(o->out_dir);
    if (rc) return rc;
    size_t plane = (size_t)p->width * p->height;
    uint8_t *grey = ts_malloc(plane);
    if (!grey) return TINYSAM_E_NOMEM;
    for (int k = 0; k < p->n_masks && !rc; k++) {
        for (size_t i = 0; i < plane; i++) grey[i] = p->masks[k * plane + i] ? 255 : 0;
        snprintf(paths[k], 4096, "%s/mask_%d.png", o->out_dir, k);
        rc = ts_png_write(paths[k], grey, p->width, p->height, 1);
    }
    free(grey);
    if (rc) return rc;
    uint8_t *ov = ts_malloc(plane * 3);
    if (!ov) return TINYSAM_E_NOMEM;
    memcpy(ov, img->rgb, plane * 3);
    static const uint8_t blue[3] = {30, 144, 255}, green[3] = {40, 220, 60}, red[3] = {235, 40, 40};
    ts_draw_mask(ov, p->width, p->height, p->masks + (size_t)p->best * plane, blue, 0.5f);
    float r = (float)TS_MAX(p->width, p->height) / 120.0f;
    if (r < 3.0f) r = 3.0f;
    if (o->has_box)
        ts_draw_box(ov, p->width, p->height, o->box[0], o->box[1], o->box[2], o->box[3],
                    (int)(r / 2.0f) + 1, green);
    for (int i = 0; i < o->n_points; i++)
        ts_draw_point(ov, p->width, p->height, o->points[2 * i], o->points[2 * i + 1], r,
                      o->labels[i] ? green : red);
    snprintf(paths[3], 4096, "%s/overlay.png", o->out_dir);
    rc = ts_png_write(paths[3], ov, p->width, p->height, 3);
    free(ov);
    return rc;
}

int ts_cli_segment(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(help, stdout);
            return 0;
        }
    options o = {.out_dir = ".", .max_pixels = TINYSAM_DEFAULT_MAX_PIXELS};
    if (parse(argc, argv, &o)) return ts_cli_fail();
    tinysam_set_num_threads(o.threads);

    tinysam_model *m = NULL;
    tinysam_image img = {0};
    tinysam_embedding *e = NULL;
    tinysam_prediction p = {0};
    float *mask_in = NULL;
    char paths[4][4096];
    double t0 = ts_now_ms(), t_load, t_img, t_enc, t_dec, t_out;
    int rc = tinysam_model_load(o.model, &m);
    t_load = ts_now_ms();
    if (!rc) rc = tinysam_image_load(o.image, o.max_pixels, &img);
    if (!rc && o.mask_input) {
        mask_in = ts_malloc(65536 * sizeof(float));
        rc = mask_in ? load_mask_input(o.mask_input, o.mask_index, mask_in) : TINYSAM_E_NOMEM;
    }
    t_img = ts_now_ms();
    if (!rc) rc = tinysam_encode(m, &img, &e);
    t_enc = ts_now_ms();
    if (!rc) {
        tinysam_prompt pr = {.n_points = o.n_points, .points = o.points, .labels = o.labels,
                             .has_box = o.has_box, .mask_input = mask_in};
        memcpy(pr.box, o.box, sizeof pr.box);
        rc = tinysam_predict(m, e, &pr, TINYSAM_PREDICT_MASKS | (o.single ? TINYSAM_PREDICT_SINGLE : 0), &p);
    }
    t_dec = ts_now_ms();
    if (!rc) rc = write_outputs(&o, &img, &p, paths);
    if (!rc && o.low_res_out) {
        int64_t shape[3] = {p.n_masks, 256, 256};
        rc = ts_npy_save(o.low_res_out, TS_DTYPE_F32, 3, shape, p.low_res);
    }
    t_out = ts_now_ms();
    if (!rc) {
        printf("{\"width\": %d, \"height\": %d, \"iou_predictions\": [", p.width, p.height);
        for (int k = 0; k < p.n_masks; k++) printf("%s%.6f", k ? ", " : "", (double)p.iou[k]);
        printf("], \"best\": %d, \"masks\": [", p.best);
        for (int k = 0; k < p.n_masks; k++) {
            if (k) printf(", ");
            ts_json_write_string_stdout(paths[k]);
        }
        printf("], \"overlay\": ");
        ts_json_write_string_stdout(paths[3]);
        if (o.low_res_out) {
            printf(", \"low_res\": ");
            ts_json_write_string_stdout(o.low_res_out);
        }
        printf(", \"threads\": %d, \"timings_ms\": {\"load_model\": %.1f, \"load_image\": %.1f, "
               "\"encode\": %.1f, \"decode\": %.1f, \"write\": %.1f}}\n",
               tinysam_get_num_threads(), t_load - t0, t_img - t_load, t_enc - t_img,
               t_dec - t_enc, t_out - t_dec);
    }
    free(mask_in);
    tinysam_prediction_free(&p);
    tinysam_embedding_free(e);
    tinysam_image_free(&img);
    tinysam_model_free(m);
    return rc ? ts_cli_fail() : 0;
}
