/* cmd_model.c - `tinysam convert`, `tinysam info` and `tinysam embed`. */
#include "cli/args.h"
#include "cli/commands.h"
#include "core.h"
#include "io/npy.h"
#include "tinysam.h"

#include <stdio.h>
#include <string.h>

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
    "usage: tinysam embed --model M --image I --out E.npy [--threads N] [--max-pixels P]\n"
    "\n"
    "Runs the image encoder and writes the 1x256x64x64 float32 image embedding as .npy.\n";

int ts_cli_embed(int argc, char **argv) {
    const char *model = NULL, *image = NULL, *out = NULL, *v;
    long long max_pixels = TINYSAM_DEFAULT_MAX_PIXELS;
    int threads = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(embed_help, stdout);
            return 0;
        }
        if (!strcmp(a, "--model") || !strcmp(a, "--image") || !strcmp(a, "--out") ||
            !strcmp(a, "--threads") || !strcmp(a, "--max-pixels")) {
            if (ts_arg_value(argc, argv, &i, &v)) return ts_cli_fail();
            if (!strcmp(a, "--model")) model = v;
            else if (!strcmp(a, "--image")) image = v;
            else if (!strcmp(a, "--out")) out = v;
            else if (!strcmp(a, "--threads")) {
                if (ts_arg_int(a, v, 1, 256, &threads)) return ts_cli_fail();
            } else if (ts_arg_ll(a, v, 1, (long long)1 << 40, &max_pixels))
                return ts_cli_fail();
        } else {
            fprintf(stderr, "tinysam embed: unknown option '%s' (see --help)\n", a);
            return 2;
        }
    }
    if (!model || !image || !out) {
        fprintf(stderr, "tinysam embed: --model, --image and --out are required\n");
        return 2;
    }
    tinysam_set_num_threads(threads);
    tinysam_model *m = NULL;
    tinysam_image img = {0};
    tinysam_embedding *e = NULL;
    double t0 = ts_now_ms(), t1, t2;
    int rc = tinysam_model_load(model, &m);
    if (!rc) rc = tinysam_image_load(image, max_pixels, &img);
    t1 = ts_now_ms();
    if (!rc) rc = tinysam_encode(m, &img, &e);
    t2 = ts_now_ms();
    if (!rc) {
        int64_t shape[4] = {1, TINYSAM_EMBED_DIM, TINYSAM_EMBED_SIDE, TINYSAM_EMBED_SIDE};
        rc = ts_npy_save(out, TS_DTYPE_F32, 4, shape, tinysam_embedding_data(e));
    }
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
