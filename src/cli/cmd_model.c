/* cmd_model.c - `tinysam convert`, `tinysam info` and `tinysam embed`. */
#include "cli/args.h"
#include "cli/commands.h"
#include "cli/embedding_file.h"
#include "core.h"
#include "dist/folder_job.h"
#include "dist/shard.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensor_map.h"
#include "model/sam.h"
#include "nn/gemm_i8.h"
#include "quant/int8_info.h"
#include "quant/sim_layers.h"
#include "quant/sim_model.h"
#include "tinysam.h"
#include "train/dataset.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *convert_help =
    "usage: tinysam convert [--no-load-cache] IN.pth OUT.safetensors\n"
    "\n"
    "Reads a PyTorch checkpoint (ZIP or legacy container, float32/float16; the pickle is\n"
    "interpreted as data, never executed), checks that it is a complete model, and writes\n"
    "its tensors unchanged (BatchNorm not folded) to a safetensors file with the model\n"
    "config in the metadata. Safetensors files load by memory-mapping.\n"
    "After the tensors comes a load cache (the weights folded and packed for this CPU's\n"
    "kernels, the dense positional table): loads read it in place, in milliseconds, and\n"
    "pack as before on another CPU. It about doubles the file; --no-load-cache writes the\n"
    "tensors only (e.g. for SAM ViT-H, 2.5 GB of weights).\n";

int ts_cli_convert(int argc, char **argv) {
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(convert_help, stdout);
        return 0;
    }
    int load_cache = 1;
    if (argc == 4 && !strcmp(argv[1], "--no-load-cache")) {
        load_cache = 0;
        argv++;
        argc--;
    }
    for (int i = 1; i < argc; i++)
        if (argv[i][0] == '-' && argv[i][1]) {
            ts_error(TINYSAM_E_ARG, "convert: unknown option '%s' (see tinysam convert --help)",
                     argv[i]);
            return ts_cli_fail();
        }
    if (argc != 3) {
        fputs(convert_help, stderr);
        return 2;
    }
    tinysam_model *m;
    double t0 = ts_now_ms();
    if (tinysam_model_load(argv[1], &m)) return ts_cli_fail();
    int rc = ts_model_save_safetensors_opts(m, argv[2], load_cache);
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

/* A module-tree pickle (or its conversion): the classes found, and for Q-TinySAM's
 * quantisation layers how many of each class and which path runs them. */
static void print_module_info(const tinysam_model *m) {
    ts_json *meta = NULL;
    if (!m->map->metadata_json ||
        ts_json_parse(m->map->metadata_json, strlen(m->map->metadata_json), &meta))
        return;
    const ts_json *cls = ts_json_get(meta, "tinysam.module_classes");
    if (cls && cls->type == TS_JSON_STRING) printf(", \"classes\": %s", cls->string);
    ts_json_free(meta);
    if (!m->sim) return;
    int path[3], per[4];
    ts_simq_model_counts(m->sim, path, per);
    printf(", \"quant_layers\": {");
    for (int k = 0; k < 4; k++) printf("%s\"%s\": %d", k ? ", " : "", ts_simq_class_name(k), per[k]);
    printf("}, \"quant_path\": {\"int8\": %d, \"simulated\": %d, \"raw\": %d, "
           "\"int8_kernel\": \"%s\"}",
           path[TS_SIMQ_INT8], path[TS_SIMQ_SIM], path[TS_SIMQ_RAW], ts_gemm_i8_isa_name());
}

static const char *info_help =
    "usage: tinysam info MODEL\n"
    "       tinysam info --verify MODEL\n"
    "\n"
    "Prints the model family, container, storage dtype, tensor and\n"
    "parameter counts as one JSON object. A torch.save(model) pickle\n"
    "(format \"pth-module\") also lists its module classes; one with\n"
    "Q-TinySAM's quantisation layers (dtype \"w8a8-sim\") how many of\n"
    "each class and how many run on the int8 GEMM or simulated.\n"
    "\n"
    "--verify checks the file's integrity without building the network: every record of a\n"
    ".pth (ZIP) against its CRC-32, a safetensors file written by tinysam against the XXH3\n"
    "digest of its data; the legacy .pth container and other safetensors carry no checksum\n"
    "(\"checked\": \"none\"). Every load makes the same checks.\n";

/* tinysam info --verify: the container's own checks (ts_map_load makes them), no network. */
static int info_verify(const char *path) {
    double t0 = ts_now_ms();
    ts_tensor_map *map = NULL;
    int rc = ts_map_load(path, &map);
    printf("{\"model\": ");
    ts_json_write_string_stdout(path);
    if (rc) {
        printf(", \"ok\": false, \"error\": ");
        ts_json_write_string_stdout(tinysam_last_error());
        printf("}\n");
        return ts_cli_fail();
    }
    printf(", \"ok\": true, \"format\": \"%s\", \"checked\": \"%s\", \"tensors\": %d, "
           "\"ms\": %.1f}\n",
           map->format, map->integrity[0] ? map->integrity : "none", map->n, ts_now_ms() - t0);
    ts_map_free(map);
    return 0;
}

int ts_cli_info(int argc, char **argv) {
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(info_help, stdout);
        return 0;
    }
    if (argc == 3 && !strcmp(argv[1], "--verify")) return info_verify(argv[2]);
    if (argc == 3 && !strcmp(argv[2], "--verify")) return info_verify(argv[1]);
    if (argc != 2) {
        fputs(info_help, stderr);
        return 2;
    }
    tinysam_model *m;
    if (tinysam_model_load(argv[1], &m)) return ts_cli_fail();
    tinysam_model_info inf;
    tinysam_model_get_info(m, &inf);
    printf("{\"model\": ");
    ts_json_write_string_stdout(argv[1]);
    printf(", \"family\": \"%s\", \"format\": \"%s\", \"dtype\": \"%s\", \"tensors\": %d, "
           "\"values\": %lld, \"parameters_used\": %lld",
           inf.family, inf.source_format, inf.source_dtype, inf.n_tensors, inf.n_values,
           inf.n_params_used);
    /* a DistributedDataParallel / torch.compile checkpoint: every key had this prefix */
    if (m->map->key_prefix[0]) printf(", \"key_prefix_stripped\": \"%s\"", m->map->key_prefix);
    print_module_info(m);
    printf(", \"config\": %s", inf.config);
    printf(", \"quantized\": "); /* the int8 file's layers (quant/int8_info.h) */
    fflush(stdout);
    ts_int8_info_json(m->map, stdout);
    tinysam_model_free(m);
    printf("}\n");
    return 0;
}

static const char *embed_help =
    "usage: tinysam embed --model M --image I --out E.npy [--fp16] [--threads N]\n"
    "                     [--max-pixels P]\n"
    "       tinysam embed --model M --images DIR --out-dir E [--fp16] [--threads N]\n"
    "                     [--max-pixels P] [--shard I/N] [--shard-count N]\n"
    "                     [--manifest FILE] [--quiet]\n"
    "\n"
    "Runs the image encoder and writes the 1x256x64x64 image embedding as .npy (float32, or\n"
    "float16 rounded to nearest even with --fp16), and beside it E.npy.json (the original\n"
    "image size and the model's SHA-256 fingerprint) for tinysam segment --embedding.\n"
    "\n"
    "With --images, embeds every .jpg/.jpeg/.png in DIR (sorted by name, hidden files skipped)\n"
    "into E/<stem>.npy (E is created if missing), e.g. teacher embeddings for distillation.\n"
    "The model is loaded once and the next image is decoded while one is encoded. Resumable\n"
    "and crash-safe: an output that already exists with the right shape and dtype is skipped;\n"
    "each file is written to <stem>.npy.tmp, flushed and renamed into place. An image that\n"
    "fails is recorded in E/_failed/<stem>.txt and the run goes on (exit status 1 at the end);\n"
    "SIGTERM, SIGINT or SIGUSR1 finish the current image and exit with status 75.\n"
    "--shard I/N takes image i of the sorted folder when i mod N = I; without it the shard\n"
    "comes from mpirun, srun -n N, a Slurm array, or a Kubernetes Indexed Job with\n"
    "--shard-count N (see `tinysam everything --help`). --manifest FILE: this shard's summary\n"
    "(\"{shard}\" becomes the shard index).\n"
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

typedef struct {
    const char *model_path;
    tinysam_model *m;
    int fp16;
} embed_ctx;

static int embed_prepare(void *user) {
    embed_ctx *c = user;
    return tinysam_model_load(c->model_path, &c->m);
}

static int embed_complete(void *user, const char *path) {
    return embed_output_valid(path, ((embed_ctx *)user)->fp16);
}

static int embed_process(void *user, const ts_folder_item *it, const tinysam_image *img,
                         void *aux, long long *units) {
    embed_ctx *c = user;
    tinysam_embedding *e = NULL;
    (void)img; /* aux: its encoder input, made on the loader thread */
    int rc = ts_encode_input(c->m, aux, &e);
    if (!rc) rc = embed_write(it->tmp_path, e, c->fp16);
    tinysam_embedding_free(e);
    *units = 0;
    return rc;
}

static int embed_batch(const char *model, const char *dir, const char *out_dir, int fp16,
                       long long max_pixels, const ts_shard *shard, const char *manifest,
                       int quiet) {
    embed_ctx c = {.model_path = model, .fp16 = fp16};
    ts_folder_job job = {.what = "embed", .images_dir = dir, .out_dir = out_dir,
                         .out_ext = ".npy", .max_pixels = max_pixels, .shard = shard,
                         .quiet = quiet, .manifest = manifest, .user = &c,
                         .prepare = embed_prepare, .complete = embed_complete,
                         .preprocess = ts_encoder_input_new,
                         .aux_free = ts_encoder_input_delete, .process = embed_process};
    ts_folder_stats st;
    int rc = ts_folder_job_run(&job, &st);
    tinysam_model_free(c.m);
    if (rc) return ts_cli_fail();
    return ts_folder_job_exit(&job, &st, fp16 ? "\"dtype\": \"float16\""
                                              : "\"dtype\": \"float32\"");
}

int ts_cli_embed(int argc, char **argv) {
    const char *model = NULL, *image = NULL, *images = NULL, *out = NULL, *out_dir = NULL, *v;
    const char *shard_arg = NULL, *manifest = NULL;
    long long max_pixels = TINYSAM_DEFAULT_MAX_PIXELS;
    int threads = 0, fp16 = 0, quiet = 0, shard_count = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(embed_help, stdout);
            return 0;
        }
        if (!strcmp(a, "--fp16")) {
            fp16 = 1;
        } else if (!strcmp(a, "--quiet")) {
            quiet = 1;
        } else if (!strcmp(a, "--model") || !strcmp(a, "--image") || !strcmp(a, "--out") ||
                   !strcmp(a, "--images") || !strcmp(a, "--out-dir") ||
                   !strcmp(a, "--threads") || !strcmp(a, "--max-pixels") ||
                   !strcmp(a, "--shard") || !strcmp(a, "--shard-count") ||
                   !strcmp(a, "--manifest")) {
            if (ts_arg_value(argc, argv, &i, &v)) return ts_cli_fail();
            if (!strcmp(a, "--model")) model = v;
            else if (!strcmp(a, "--shard")) shard_arg = v;
            else if (!strcmp(a, "--manifest")) manifest = v;
            else if (!strcmp(a, "--shard-count")) {
                if (ts_arg_int(a, v, 1, TS_SHARD_MAX_COUNT, &shard_count)) return ts_cli_fail();
            }
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
    else if (!images && (shard_arg || shard_count || manifest))
        usage_err = "--shard, --shard-count and --manifest go with --images";
    if (usage_err) {
        fprintf(stderr, "tinysam embed: %s (see --help)\n", usage_err);
        return 2;
    }
    tinysam_set_num_threads(threads);
    if (images) {
        ts_shard shard;
        if (ts_shard_resolve(shard_arg, shard_count, NULL, &shard)) return ts_cli_fail();
        return embed_batch(model, images, out_dir, fp16, max_pixels, &shard, manifest, quiet);
    }

    tinysam_model *m = NULL;
    tinysam_image img = {0};
    tinysam_embedding *e = NULL;
    double t0 = ts_now_ms(), t1, t2;
    int rc = tinysam_model_load(model, &m);
    if (!rc) rc = tinysam_image_load(image, max_pixels, &img);
    t1 = ts_now_ms();
    ts_encoder_input in = {0};
    /* the encoder alone: no decoder work for an embedding that is only written */
    if (!rc) rc = ts_encoder_input_make(&img, &in);
    if (!rc) rc = ts_encode_input(m, &in, &e);
    ts_encoder_input_free(&in);
    t2 = ts_now_ms();
    if (!rc) rc = embed_write(out, e, fp16);
    if (!rc) rc = ts_embedding_sidecar_write(out, e, m); /* for segment --embedding */
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
