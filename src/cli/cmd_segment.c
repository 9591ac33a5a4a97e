/* cmd_segment.c - `tinysam segment`: prompted segmentation of one image. */
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/draw.h"
#include "cli/embedding_file.h"
#include "core.h"
#include "everything/amg.h"
#include "everything/polygons.h"
#include "io/image.h"
#include "io/json.h"
#include "io/npy.h"
#include "model/sam.h"
#include "tinysam.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *help =
    "usage: tinysam segment --model M (--image I | --embedding E.npy) [--point X,Y[,LABEL]]...\n"
    "                       [--box X0,Y0,X1,Y1]... [--boxes FILE]\n"
    "                       [--mask-input LOWRES.npy [--mask-index K]] [--out-dir D]\n"
    "                       [--low-res-out F.npy] [--single-mask] [--threads N]\n"
    "                       [--max-pixels P] [--format json|polygons|yolo]\n"
    "                       [--epsilon-factor F] [--class C]\n"
    "\n"
    "Encodes the image once and predicts masks for the prompt set:\n"
    "  --point X,Y[,LABEL]  a point in original image pixels; LABEL 1 = foreground (default),\n"
    "                       0 = background. Repeat for several points.\n"
    "  --box X0,Y0,X1,Y1    a box in original image pixels (X1 >= X0, Y1 >= Y0). Repeat it (or\n"
    "                       give --boxes) for one prediction per box, decoded together.\n"
    "  --boxes FILE         boxes from a detector: COCO detection results ([{\"bbox\": [x, y, w,\n"
    "                       h], \"category_id\": C, ...}]) or [[x0, y0, x1, y1], ...].\n"
    "  --embedding E.npy    the embedding `tinysam embed` wrote (with its E.npy.json) instead\n"
    "                       of --image: no encoder run; refused if another model made it.\n"
    "  --mask-input F.npy   low-res logits of an earlier prediction (--low-res-out): 256x256,\n"
    "                       1x256x256, 1x1x256x256, or 3x256x256 with --mask-index K (0..2).\n"
    "  --out-dir D          where mask_0.png .. mask_2.png (binary, original size) and\n"
    "                       overlay.png (best mask and prompts over the image) go (default: .)\n"
    "                       (several boxes: box_NNNN.png, the best mask of each, only when\n"
    "                       --out-dir is given)\n"
    "  --low-res-out F.npy  also write the 3x256x256 float32 low-res logits.\n"
    "  --single-mask        SAM's multimask_output=False: one mask (mask token 0).\n"
    "  --format json        (default) one JSON object; several boxes: one JSON record per box\n"
    "                       and line (index, box, iou_predictions, best, area, segmentation as\n"
    "                       COCO RLE of the best mask), then a summary line.\n"
    "  --format polygons    the same with \"segmentation\": COCO polygons [[x1, y1, ...], ...]\n"
    "                       of the best mask (outer contours, Douglas-Peucker).\n"
    "  --format yolo        YOLO segmentation labels of the best masks on stdout instead:\n"
    "                       \"class x1 y1 ...\" normalised to [0, 1], one line per polygon.\n"
    "  --epsilon-factor F   polygon simplification: eps = F x perimeter (default 0.001; 0\n"
    "                       keeps every border pixel).\n"
    "  --class C            YOLO class (default 0; --boxes' category_id when it has one).\n"
    "  --threads N          worker threads (default: all cores).\n"
    "  --max-pixels P       reject larger images (default 100000000).\n"
    "Prints one JSON object: iou_predictions, best, masks, overlay, timings in ms (with\n"
    "--embedding, decoder_prepare: the decoder's per-image preparation, part of encode).\n";

#define MAX_CLI_POINTS 256
#define MAX_CLI_BOXES 100000

enum { FORMAT_JSON, FORMAT_POLYGONS, FORMAT_YOLO };

typedef struct {
    const char *model, *image, *mask_input, *out_dir, *low_res_out, *boxes_file, *embedding;
    int mask_index, single, threads, format, cls, out_dir_given;
    double epsilon_factor;
    long long max_pixels;
    int n_points;
    float points[MAX_CLI_POINTS * 2];
    int labels[MAX_CLI_POINTS];
    int has_box;   /* the first box, for the one-prediction output */
    float box[4];
    int n_boxes, cap_boxes;
    float *boxes;  /* n_boxes x 4, XYXY */
    int *classes;  /* n_boxes: YOLO class of each box */
} options;

static int push_box(options *o, const float b[4], int cls, const char *where) {
    if (!(b[2] >= b[0] && b[3] >= b[1]))
        return ts_error(TINYSAM_E_ARG, "%s: box x1 < x0 or y1 < y0", where);
    if (o->n_boxes >= MAX_CLI_BOXES)
        return ts_error(TINYSAM_E_ARG, "too many boxes (at most %d)", MAX_CLI_BOXES);
    if (o->n_boxes == o->cap_boxes) {
        int nc = o->cap_boxes ? 2 * o->cap_boxes : 16;
        float *nb = realloc(o->boxes, sizeof(float) * 4 * (size_t)nc);
        if (nb) o->boxes = nb;
        int *ncl = nb ? realloc(o->classes, sizeof(int) * (size_t)nc) : NULL;
        if (!ncl) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        o->classes = ncl;
        o->cap_boxes = nc;
    }
    memcpy(o->boxes + 4 * (size_t)o->n_boxes, b, sizeof(float) * 4);
    o->classes[o->n_boxes++] = cls;
    if (!o->has_box) {
        memcpy(o->box, b, sizeof o->box);
        o->has_box = 1;
    }
    return 0;
}

/* --boxes: COCO detection results (bbox XYWH, category_id) or a list of XYXY boxes. */
static int load_boxes(options *o, const char *path) {
    ts_json *j = NULL;
    int rc = ts_json_load(path, &j);
    if (rc) return rc;
    if (j->type != TS_JSON_ARRAY)
        rc = ts_error(TINYSAM_E_FORMAT, "%s: --boxes wants a JSON list of boxes", path);
    for (int i = 0; !rc && i < j->n; i++) {
        const ts_json *d = &j->items[i], *bb = d;
        int coco = d->type == TS_JSON_OBJECT, cls = o->cls;
        if (coco) {
            bb = ts_json_get(d, "bbox");
            const ts_json *c = ts_json_get(d, "category_id");
            if (c && c->type == TS_JSON_NUMBER && c->number >= 0 && c->number <= 1e9)
                cls = (int)c->number;
        }
        float b[4];
        int ok = bb && bb->type == TS_JSON_ARRAY && bb->n == 4;
        for (int k = 0; ok && k < 4; k++) {
            ok = bb->items[k].type == TS_JSON_NUMBER && isfinite(bb->items[k].number) &&
                 fabs(bb->items[k].number) < 1e7;
            if (ok) b[k] = (float)bb->items[k].number;
        }
        if (!ok) {
            rc = ts_error(TINYSAM_E_FORMAT, "%s: entry %d: a box is %s of 4 numbers", path, i,
                          coco ? "\"bbox\": [x, y, w, h]" : "[x0, y0, x1, y1]");
            break;
        }
        if (coco) {
            if (b[2] < 0 || b[3] < 0) {
                rc = ts_error(TINYSAM_E_FORMAT, "%s: entry %d: negative width or height", path, i);
                break;
            }
            b[2] += b[0];
            b[3] += b[1];
        }
        char where[64];
        snprintf(where, sizeof where, "--boxes entry %d", i);
        rc = push_box(o, b, cls, where);
    }
    if (!rc && j->n == 0) rc = ts_error(TINYSAM_E_ARG, "%s: no boxes", path);
    ts_json_free(j);
    return rc;
}

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
        else if (!strcmp(a, "--embedding")) o->embedding = v;
        else if (!strcmp(a, "--boxes")) o->boxes_file = v;
        else if (!strcmp(a, "--format")) {
            if (!strcmp(v, "json")) o->format = FORMAT_JSON;
            else if (!strcmp(v, "polygons")) o->format = FORMAT_POLYGONS;
            else if (!strcmp(v, "yolo")) o->format = FORMAT_YOLO;
            else return ts_error(TINYSAM_E_ARG, "--format: '%s' is not json, polygons or yolo", v);
        } else if (!strcmp(a, "--epsilon-factor")) {
            if (ts_arg_double_range(a, v, 0, 1, &o->epsilon_factor)) return -1;
        } else if (!strcmp(a, "--class")) {
            if (ts_arg_int(a, v, 0, 1000000, &o->cls)) return -1;
        }
        else if (!strcmp(a, "--mask-input")) o->mask_input = v;
        else if (!strcmp(a, "--out-dir")) {
            o->out_dir = v;
            o->out_dir_given = 1;
        }
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
            float b[4];
            if (ts_arg_floats(a, v, 4, 4, b, &n)) return -1;
            if (b[2] < b[0] || b[3] < b[1])
                return ts_error(TINYSAM_E_ARG, "--box: x1 < x0 or y1 < y0 in '%s'", v);
            if (push_box(o, b, -1, "--box")) return -1;
        } else {
            return ts_error(TINYSAM_E_ARG, "unknown option '%s' (see --help)", a);
        }
    }
    if (o->boxes_file && load_boxes(o, o->boxes_file)) return -1;
    for (int i = 0; i < o->n_boxes; i++)
        if (o->classes[i] < 0) o->classes[i] = o->cls; /* --box: --class */
    if (!o->model || !(o->image || o->embedding))
        return ts_error(TINYSAM_E_ARG, "--model and --image (or --embedding) are required");
    if (o->image && o->embedding)
        return ts_error(TINYSAM_E_ARG, "--image and --embedding are mutually exclusive");
    if (!o->n_points && !o->has_box && !o->mask_input)
        return ts_error(TINYSAM_E_ARG, "no prompt: give --point, --box, --boxes or --mask-input");
    if (o->n_boxes > 1 && (o->mask_input || o->low_res_out))
        return ts_error(TINYSAM_E_ARG,
                        "--mask-input and --low-res-out go with one prompt set, not several boxes");
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

/* The overlay is drawn over img itself (its last use): no copy of the photo to fault in. The
 * masks (1-bit PNGs, straight from the 0/1 masks) and the overlay are deflated together. */
static int write_outputs(const options *o, tinysam_image *img, const tinysam_prediction *p,
                         char paths[4][4096]) {
    int rc = ts_mkdirs(o->out_dir);
    if (rc) return rc;
    size_t plane = (size_t)p->width * p->height;
    uint8_t *ov = img->rgb;
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
    ts_png_item items[4];
    for (int k = 0; k < p->n_masks; k++) {
        snprintf(paths[k], 4096, "%s/mask_%d.png", o->out_dir, k);
        items[k] = (ts_png_item){paths[k], p->masks + k * plane, p->width, p->height, 0};
    }
    snprintf(paths[3], 4096, "%s/overlay.png", o->out_dir);
    items[p->n_masks] = (ts_png_item){paths[3], ov, p->width, p->height, 3};
    return ts_png_write_many(p->n_masks + 1, items);
}

/* COCO polygons or YOLO lines of one 0/1 mask on stdout. */
static int print_polygons(const options *o, const uint8_t *mask, int W, int H, int cls) {
    ts_polygon_set ps;
    int rc = ts_mask_polygons(mask, W, H, o->epsilon_factor, 0, &ps);
    if (rc) return rc;
    if (o->format == FORMAT_YOLO) ts_polygons_write_yolo(stdout, &ps, cls, W, H);
    else ts_polygons_write_coco(stdout, &ps);
    ts_polygon_set_free(&ps);
    return 0;
}

/* Several boxes: one prediction each, decoded together, one JSON record (or YOLO lines) per
 * box. Only the best mask of each is brought to the original size. */
static int segment_boxes(const options *o, tinysam_model *m, const tinysam_embedding *e,
                         double *t_dec, double *t_out) {
    int n = o->n_boxes, rc = 0;
    tinysam_prompt *pr = ts_calloc((size_t)n, sizeof *pr);
    tinysam_prediction *pred = ts_calloc((size_t)n, sizeof *pred);
    if (!pr || !pred) {
        free(pr);
        free(pred);
        return TINYSAM_E_NOMEM;
    }
    for (int i = 0; i < n; i++) {
        pr[i] = (tinysam_prompt){.n_points = o->n_points, .points = o->points,
                                 .labels = o->labels, .has_box = 1};
        memcpy(pr[i].box, o->boxes + 4 * (size_t)i, sizeof pr[i].box);
    }
    double t0 = ts_now_ms();
    rc = tinysam_predict_batch(m, e, n, pr, TINYSAM_PREDICT_MASKS | TINYSAM_PREDICT_BEST |
                                                (o->single ? TINYSAM_PREDICT_SINGLE : 0),
                               pred);
    *t_dec = ts_now_ms() - t0;
    if (!rc && o->out_dir_given) rc = ts_mkdirs(o->out_dir);
    for (int i = 0; !rc && i < n; i++) {
        const tinysam_prediction *p = &pred[i];
        int W = p->width, H = p->height;
        char path[4200] = "";
        if (o->out_dir_given) {
            snprintf(path, sizeof path, "%s/box_%04d.png", o->out_dir, i);
            rc = ts_png_write_mask(path, p->masks, W, H);
            if (rc) break;
        }
        if (o->format == FORMAT_YOLO) {
            rc = print_polygons(o, p->masks, W, H, o->classes[i]);
            continue;
        }
        const float *b = o->boxes + 4 * (size_t)i;
        printf("{\"index\": %d, \"box\": [%.9g, %.9g, %.9g, %.9g], \"iou_predictions\": [", i,
               (double)b[0], (double)b[1], (double)b[2], (double)b[3]);
        for (int k = 0; k < p->n_masks; k++) printf("%s%.6f", k ? ", " : "", (double)p->iou[k]);
        long long area = 0;
        for (size_t k = 0; k < (size_t)W * H; k++) area += p->masks[k];
        printf("], \"best\": %d, \"area\": %lld, \"segmentation\": ", p->best, area);
        if (o->format == FORMAT_POLYGONS) {
            rc = print_polygons(o, p->masks, W, H, 0);
        } else {
            ts_rle r = {0};
            rc = ts_rle_encode(p->masks, W, H, 0, 0, W, H, &r);
            char *str = rc ? NULL : ts_rle_to_string(r.counts, r.n);
            ts_rle_free(&r);
            if (!rc && !str) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
            if (!rc) {
                printf("{\"size\": [%d, %d], \"counts\": ", H, W);
                ts_json_write_string_stdout(str);
                putchar('}');
            }
            free(str);
        }
        if (o->out_dir_given) {
            printf(", \"mask\": ");
            ts_json_write_string_stdout(path);
        }
        printf("}\n");
    }
    *t_out = ts_now_ms() - t0 - *t_dec;
    for (int i = 0; i < n; i++) tinysam_prediction_free(&pred[i]);
    free(pred);
    free(pr);
    return rc;
}

int ts_cli_segment(int argc, char **argv) {
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            fputs(help, stdout);
            return 0;
        }
    options o = {.out_dir = ".", .max_pixels = TINYSAM_DEFAULT_MAX_PIXELS,
                 .epsilon_factor = 0.001};
    if (parse(argc, argv, &o)) {
        free(o.boxes);
        free(o.classes);
        return ts_cli_fail();
    }
    tinysam_set_num_threads(o.threads);

    tinysam_model *m = NULL;
    tinysam_image img = {0};
    tinysam_embedding *e = NULL;
    tinysam_prediction p = {0};
    float *mask_in = NULL;
    char paths[4][4096];
    double t0 = ts_now_ms(), t_load, t_img, t_enc, t_dec, t_out;
    char prep[64] = ""; /* --embedding: the decoder's preparation, apart (inside encode else) */
    int rc = tinysam_model_load(o.model, &m);
    t_load = ts_now_ms();
    if (!rc && o.image) rc = tinysam_image_load(o.image, o.max_pixels, &img);
    if (!rc && o.mask_input) {
        mask_in = ts_malloc(65536 * sizeof(float));
        rc = mask_in ? load_mask_input(o.mask_input, o.mask_index, mask_in) : TINYSAM_E_NOMEM;
    }
    t_img = ts_now_ms();
    if (!rc && o.embedding) {
        rc = ts_embedding_load_checked(o.embedding, m, &e);
        double tp = ts_now_ms();
        if (!rc) rc = ts_embedding_prepare(m, e); /* as tinysam_encode does */
        snprintf(prep, sizeof prep, ", \"decoder_prepare\": %.1f", ts_now_ms() - tp);
    } else if (!rc)
        rc = tinysam_encode(m, &img, &e);
    if (!rc && !img.rgb) { /* --embedding: the overlay goes over a grey canvas */
        int W, H;
        tinysam_embedding_size(e, &W, &H, NULL, NULL);
        img.width = W;
        img.height = H;
        img.rgb = ts_malloc((size_t)W * H * 3);
        if (!img.rgb) rc = TINYSAM_E_NOMEM;
        else memset(img.rgb, 96, (size_t)W * H * 3);
    }
    t_enc = ts_now_ms();
    if (!rc && o.n_boxes > 1) {
        rc = segment_boxes(&o, m, e, &t_dec, &t_out);
        if (!rc && o.format != FORMAT_YOLO)
            printf("{\"boxes\": %d, \"threads\": %d, \"timings_ms\": {\"load_model\": %.1f, "
                   "\"load_image\": %.1f, \"encode\": %.1f, \"decode\": %.1f, \"write\": %.1f%s}}\n",
                   o.n_boxes, tinysam_get_num_threads(), t_load - t0, t_img - t_load,
                   t_enc - t_img, t_dec, t_out, prep);
        goto done;
    }
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
    if (!rc && o.format == FORMAT_YOLO) {
        rc = print_polygons(&o, p.masks + (size_t)p.best * p.width * p.height, p.width, p.height,
                            o.n_boxes ? o.classes[0] : o.cls);
    } else if (!rc) {
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
        if (o.format == FORMAT_POLYGONS) {
            printf(", \"segmentation\": ");
            rc = print_polygons(&o, p.masks + (size_t)p.best * p.width * p.height, p.width,
                                p.height, 0);
        }
        printf(", \"threads\": %d, \"timings_ms\": {\"load_model\": %.1f, \"load_image\": %.1f, "
               "\"encode\": %.1f, \"decode\": %.1f, \"write\": %.1f%s}}\n",
               tinysam_get_num_threads(), t_load - t0, t_img - t_load, t_enc - t_img,
               t_dec - t_enc, t_out - t_dec, prep);
    }
done:
    free(mask_in);
    free(o.boxes);
    free(o.classes);
    tinysam_prediction_free(&p);
    tinysam_embedding_free(e);
    tinysam_image_free(&img);
    tinysam_model_free(m);
    return rc ? ts_cli_fail() : 0;
}
