/* cmd_model.c - `tinysam convert`, `tinysam info` and `tinysam embed`. */
#include "cli/args.h"
#include "cli/commands.h"
#include "core.h"
#include "io/npy.h"
#include "tinysam.h"
#include "train/dataset.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *convert_help =
    "usage: tinysam convert IN.pth OUT.safetensors\n"
    "\n"
    "Reads a PyTorch checkpoint (ZIP or legacy container, float32/float16; the pickle is\n"
    "interpreted as data, never executed), checks that it is a complete model, and writes\n"
    "its tensors unchanged (BatchNorm not folded) to a safetensors file with the model\n"
    "config in the metadata. Safetensors files load by memory-mapping.\n";

int ts_cli_convert(int argc, char **argv) {
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(convert_help, stdout);
        return 0;
    }
    if (argc != 3) {
        fputs(convert_help, stderr);
        return 2;
    }
    tinysam_model *m;
    double t0 = ts_now_ms();
    if (tinysam_model_load(argv[1], &m)) return ts_cli_fail();
    int rc = tinysam_model_save_safetensors(m, argv[2]);
    tinysam_model_info inf;
    tinysam_model_get_info(m, &inf);
    tinysam_model_free(m);
    if (rc) return ts_cli_fail();
    printf("{\"in\": ");
    ts_json_write_string_stdout(argv[1]);
    printf(", \"out\": ");
    ts_json_write_string_stdout(argv[2]);
    printf(", \"family\": \"%s\", \"tensors\": %d, \"values\": %lld, \"ms\": %.1f}\n", inf.family,
           inf.n_tensors, inf.n_values, ts_now_ms() - t0);
    return 0;
}

static const char *info_help = "usage: tinysam info MODEL\n"
                               "\n"
                               "Prints the model family, container, storage dtype, tensor and\n"
                               "parameter counts as one JSON object.\n";

int ts_cli_info(int argc, char **argv) {
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(info_help, stdout);
        return 0;
    }
    if (argc != 2) {
        fputs(info_help, stderr);
        return 2;
    }
    tinysam_model *m;
    if (tinysam_model_load(argv[1], &m)) return ts_cli_fail();
    tinysam_model_info inf;
    tinysam_model_get_info(m, &inf);
    tinysam_model_free(m);
    printf("{\"model\": ");
    ts_json_write_string_stdout(argv[1]);
    printf(", \"family\": \"%s\", \"format\": \"%s\", \"dtype\": \"%s\", \"tensors\": %d, "
           "\"values\": %lld, \"parameters_used\": %lld",
           inf.family, inf.source_format, inf.source_dtype, inf.n_tensors, inf.n_values,
           inf.n_params_used);
    printf(", \"config\": %s", inf.config);
    printf("}\n");
    return 0;
}

static const char *embed_help =
    "usage: tinysam embed --model M --image I --out E.npy [--fp16] [--threads N]\n"
    "                     [--max-pixels P]\n"
    "       tinysam embed --model M --images DIR --out-dir E [--fp16] [--threads N]\n"
    "                     [--max-pixels P]\n"
    "\n"
    "Runs the image encoder and writes the 1x256x64x64 image embedding as .npy (float32, or\n"
    "float16 rounded to nearest even with --fp16).\n"
    "\n"
    "With --images, embeds every .jpg/.jpeg/.png in DIR (sorted by name, hidden files skipped)\n"
    "into E/<stem>.npy (E is created if missing), e.g. teacher embeddings for distillation.\n"
    "The model is loaded once and images are decoded one at a time. Resumable: an output that\n"
    "already exists with the right shape and dtype is skipped; each file is written to\n"
    "<stem>.npy.tmp and renamed into place, so an interrupted run leaves no half file.\n"
    "Progress goes to stderr, a JSON summary to stdout.\n";

static const int64_t embed_shape[4] = {1, TINYSAM_EMBED_DIM, TINYSAM_EMBED_SIDE,
                                       TINYSAM_EMBED_SIDE};
#define EMBED_NUMEL ((size_t)TINYSAM_EMBED_DIM * TINYSAM_EMBED_SIDE * TINYSAM_EMBED_SIDE)

/* Writes the embedding to path as float32 or float16 (RNE). */
static int embed_write(const char *path, const tinysam_embedding *e, int fp16) {
    const float *d = tinysam_embedding_data(e);
    if (!fp16) return ts_npy_save(path, TS_DTYPE_F32, 4, embed_shape, d);
    uint16_t *h = ts_malloc(EMBED_NUMEL * sizeof *h);
    if (!h) return TINYSAM_E_NOMEM;
    for (size_t i = 0; i < EMBED_NUMEL; i++) h[i] = ts_float_to_half(d[i]);
    int rc = ts_npy_save(path, TS_DTYPE_F16, 4, embed_shape, h);
    free(h);
    return rc;
}

/* 1 if path is a complete .npy of the embedding shape in the wanted dtype. */
static int embed_output_valid(const char *path, int fp16) {
    struct stat st;
    if (stat(path, &st) != 0) return 0;
    ts_npy info;
    if (ts_npy_probe(path, &info) != 0) return 0;
    if (info.dtype != (fp16 ? TS_DTYPE_F16 : TS_DTYPE_F32) || info.ndim != 4) return 0;
    for (int i = 0; i < 4; i++)
        if (info.shape[i] != embed_shape[i]) return 0;
    return 1;
}

static void embed_format_eta(double s, char *buf, size_t n) {
    long t = (long)(s + 0.5);
    if (t < 60) snprintf(buf, n, "%lds", t);
    else if (t < 3600) snprintf(buf, n, "%ldm %02lds", t / 60, t % 60);
    else snprintf(buf, n, "%ldh %02ldm", t / 3600, t / 60 % 60);
}

static int embed_batch(const char *model, const char *dir, const char *out_dir, int fp16,
                       long long max_pixels) {
    char **names = NULL;
    int n = 0;
    int rc = ts_dataset_list_images(dir, &names, &n);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tinysam_last_error());
        return ts_error(rc, "embed: %s", msg);
    }
    if (!n) rc = ts_error(TINYSAM_E_ARG, "embed: no .jpg/.jpeg/.png images in '%s'", dir);
    if (!rc) rc = ts_dataset_check_stems(names, n, "embed");
    if (!rc && mkdir(out_dir, 0755) != 0 && errno != EEXIST)
        rc = ts_error(TINYSAM_E_IO, "embed: cannot create '%s': %s", out_dir, strerror(errno));
    struct stat st;
    if (!rc && (stat(out_dir, &st) != 0 || !S_ISDIR(st.st_mode)))
        rc = ts_error(TINYSAM_E_IO, "embed: '%s' is not a directory", out_dir);
    size_t longest = 0;
    for (int i = 0; i < n; i++)
        if (strlen(names[i]) > longest) longest = strlen(names[i]);
    size_t cap = strlen(dir) + strlen(out_dir) + longest + 16; /* "/", ".npy.tmp", NUL */
    char *img_path = NULL, *out_path = NULL, *tmp_path = NULL;
    if (!rc && (!(img_path = malloc(cap)) || !(out_path = malloc(cap)) ||
                !(tmp_path = malloc(cap))))
        rc = ts_error(TINYSAM_E_NOMEM, "out of memory");

    tinysam_model *m = NULL;
    int n_done = 0, n_skip = 0;
    double t_start = ts_now_ms(), t_encode = 0;
    for (int i = 0; !rc && i < n; i++) {
        const char *dot = strrchr(names[i], '.');
        snprintf(img_path, cap, "%s/%s", dir, names[i]);
        snprintf(out_path, cap, "%s/%.*s.npy", out_dir, (int)(dot - names[i]), names[i]);
        snprintf(tmp_path, cap, "%s.tmp", out_path);
        if (embed_output_valid(out_path, fp16)) {
            n_skip++;
            fprintf(stderr, "embed [%d/%d] %s: skipped (exists)\n", i + 1, n, names[i]);
            continue;
        }
        /* loaded on first need, so that a finished run resumes without reading the model */
        if (!m && (rc = tinysam_model_load(model, &m)) != 0) break;
        double t0 = ts_now_ms();
        tinysam_image img = {0};
        tinysam_embedding *e = NULL;
        rc = tinysam_image_load(img_path, max_pixels, &img);
        if (!rc) rc = tinysam_encode(m, &img, &e);
        if (rc) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", tinysam_last_error());
            /* name the file unless the message already does */
            if (!strstr(msg, names[i])) rc = ts_error(rc, "embed: %s: %s", img_path, msg);
        }
        if (!rc) rc = embed_write(tmp_path, e, fp16);
        if (!rc && rename(tmp_path, out_path) != 0)
            rc = ts_error(TINYSAM_E_IO, "embed: cannot rename '%s' to '%s': %s", tmp_path,
                          out_path, strerror(errno));
        if (rc) remove(tmp_path);
        tinysam_embedding_free(e);
        tinysam_image_free(&img);
        if (rc) break;
        double ms = ts_now_ms() - t0;
        t_encode += ms;
        n_done++;
        char eta[32];
        embed_format_eta(t_encode / n_done * (n - 1 - i) / 1000.0, eta, sizeof eta);
        fprintf(stderr, "embed [%d/%d] %s: %.0f ms (eta %s)\n", i + 1, n, names[i], ms, eta);
    }
    tinysam_model_free(m);
    double secs = (ts_now_ms() - t_start) / 1000.0;
    if (!rc) {
        fprintf(stderr, "embed: %d images, %d computed, %d skipped, in %.1f s\n", n, n_done,
                n_skip, secs);
        printf("{\"out_dir\": ");
        ts_json_write_string_stdout(out_dir);
        printf(", \"images\": %d, \"computed\": %d, \"skipped\": %d, \"dtype\": \"%s\", "
               "\"seconds\": %.1f}\n",
               n, n_done, n_skip, fp16 ? "float16" : "float32", secs);
    }
    free(img_path);
    free(out_path);
    free(tmp_path);
    ts_dataset_free_list(names, n);
    return rc;
}

int ts_cli_embed(int argc, char **argv) {
    const char *model = NULL, *image = NULL, *images = NULL, *out = NULL, *out_dir = NULL, *v;
    long long max_pixels = TINYSAM_DEFAULT_MAX_PIXELS;
    int threads = 0, fp16 = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(embed_help, stdout);
            return 0;
        }
        if (!strcmp(a, "--fp16")) {
            fp16 = 1;
        } else if (!strcmp(a, "--model") || !strcmp(a, "--image") || !strcmp(a, "--out") ||
                   !strcmp(a, "--images") || !strcmp(a, "--out-dir") ||
                   !strcmp(a, "--threads") || !strcmp(a, "--max-pixels")) {
            if (ts_arg_value(argc, argv, &i, &v)) return ts_cli_fail();
            if (!strcmp(a, "--model")) model = v;
            else if (!strcmp(a, "--image")) image = v;
            else if (!strcmp(a, "--images")) images = v;
            else if (!strcmp(a, "--out")) out = v;
            else if (!strcmp(a, "--out-dir")) out_dir = v;
            else if (!strcmp(a, "--threads")) {
                if (ts_arg_int(a, v, 1, 256, &threads)) return ts_cli_fail();
            } else if (ts_arg_ll(a, v, 1, (long long)1 << 40, &max_pixels))
                return ts_cli_fail();
        } else {
            fprintf(stderr, "tinysam embed: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    const char *usage_err = NULL;
    if (image && images) usage_err = "--image and --images are mutually exclusive";
    else if (!model) usage_err = "--model is required";
    else if (!image && !images)
        usage_err = "--image (with --out) or --images (with --out-dir) is required";
    else if (image && out_dir) usage_err = "--out-dir goes with --images; use --out with --image";
    else if (images && out) usage_err = "--out goes with --image; use --out-dir with --images";
    else if (image && !out) usage_err = "--image needs --out";
    else if (images && !out_dir) usage_err = "--images needs --out-dir";
    if (usage_err) {
        fprintf(stderr, "tinysam embed: %s (see --help)\n", usage_err);
        return 2;
    }
    tinysam_set_num_threads(threads);
    if (images) return embed_batch(model, images, out_dir, fp16, max_pixels) ? ts_cli_fail() : 0;

    tinysam_model *m = NULL;
    tinysam_image img = {0};
    tinysam_embedding *e = NULL;
    double t0 = ts_now_ms(), t1, t2;
    int rc = tinysam_model_load(model, &m);
    if (!rc) rc = tinysam_image_load(image, max_pixels, &img);
    t1 = ts_now_ms();
    if (!rc) rc = tinysam_encode(m, &img, &e);
    t2 = ts_now_ms();
    if (!rc) rc = embed_write(out, e, fp16);
    if (!rc) {
        printf("{\"embedding\": ");
        ts_json_write_string_stdout(out);
        printf(", \"width\": %d, \"height\": %d, \"timings_ms\": {\"load\": %.1f, \"encode\": %.1f}}\n",
               img.width, img.height, t1 - t0, t2 - t1);
    }
    tinysam_embedding_free(e);
    tinysam_image_free(&img);
    tinysam_model_free(m);
    return rc ? ts_cli_fail() : 0;
}
