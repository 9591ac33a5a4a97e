/* cmd_quantize.c - `tinysam quantize`: the W8A8 (Q-TinySAM) model from a float one. */
#include "cli/args.h"
#include "cli/commands.h"
#include "core.h"
#include "model/sam.h"
#include "quant/calibrate.h"
#include "quant/calibrate_vit.h"
#include "tinysam.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *quantize_help =
    "usage: tinysam quantize --model M (--calib IMAGE... | --calib-dir DIR) [--num-images N]\n"
    "                        [--method mse|layer|hessian] [--scope gemm|encoder|all] [--threads N]\n"
    "                        --out M_int8.safetensors\n"
    "\n"
    "Post-training W8A8 quantisation of the TinySAM (vit_t) image encoder: runs the float\n"
    "model on the calibration images (JPEG/PNG; --calib-dir takes every .jpg/.jpeg/.png in\n"
    "DIR, sorted, the first N with --num-images, default 8), chooses one static uint8 input\n"
    "quantiser per quantised GEMM (--method hessian, the default: the layer-output error\n"
    "weighted by the squared gradient of the float model's mask loss, weight and input steps\n"
    "searched alternately; slower, a backward pass per image and about 2 GB more memory;\n"
    "mse: the step minimising the input's squared error; layer: the layer-output error), and\n"
    "writes a safetensors model with int8 per-channel weights. --scope: gemm quantises the encoder's 1x1 convolutions and\n"
    "linears only (what older versions wrote); encoder also its dense 3x3 convolutions and\n"
    "the attention products; all (the default) the encoder and whatever of the decoder has an\n"
    "int8 form. The rest stays float32. Every command loads the file like a float one.\n"
    "SAM ViT (B/L/H) checkpoints: the encoder's linear layers (gemm and encoder scopes),\n"
    "plus the decoder with all; --method mse (their default) or layer.\n";

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int is_image(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") ||
                   !strcasecmp(dot, ".png"));
}

/* Appends the images of dir (sorted) to list; returns the new count or -1. */
static int list_dir(const char *dir, char ***list, int n, int *cap) {
    DIR *d = opendir(dir);
    if (!d) {
        ts_error(TINYSAM_E_IO, "%s: cannot open directory", dir);
        return -1;
    }
    int first = n;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.' || !is_image(de->d_name)) continue;
        if (n == *cap) {
            int nc = *cap ? 2 * *cap : 16;
            char **p = realloc(*list, sizeof(char *) * (size_t)nc);
            if (!p) break;
            *list = p;
            *cap = nc;
        }
        size_t l = strlen(dir) + strlen(de->d_name) + 2;
        char *s = malloc(l);
        if (!s) break;
        snprintf(s, l, "%s/%s", dir, de->d_name);
        (*list)[n++] = s;
    }
    closedir(d);
    qsort(*list + first, (size_t)(n - first), sizeof(char *), cmp_str);
    return n;
}

int ts_cli_quantize(int argc, char **argv) {
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        fputs(quantize_help, stdout);
        return 0;
    }
    const char *model = NULL, *out = NULL, *v;
    int method_given = 0;
    int num = 0, method = TS_CALIB_HESSIAN, scope = TS_SCOPE_ALL, threads = 0, cap = 0, n = 0;
    int status = 1;
    char **list = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--model") || !strcmp(a, "--out") || !strcmp(a, "--calib-dir") ||
            !strcmp(a, "--num-images") || !strcmp(a, "--method") || !strcmp(a, "--threads") ||
            !strcmp(a, "--scope")) {
            if (ts_arg_value(argc, argv, &i, &v)) goto fail;
            if (!strcmp(a, "--model")) model = v;
            else if (!strcmp(a, "--out")) out = v;
            else if (!strcmp(a, "--num-images")) {
                if (ts_arg_int(a, v, 1, 1000, &num)) goto fail;
            } else if (!strcmp(a, "--threads")) {
                if (ts_arg_int(a, v, 1, 1024, &threads)) goto fail;
            } else if (!strcmp(a, "--method")) {
                method_given = 1;
                if (!strcmp(v, "mse")) method = TS_CALIB_MSE;
                else if (!strcmp(v, "layer")) method = TS_CALIB_LAYER;
                else if (!strcmp(v, "hessian")) method = TS_CALIB_HESSIAN;
                else {
                    ts_error(TINYSAM_E_ARG, "--method must be mse, layer or hessian, not '%s'",
                             v);
                    goto fail;
                }
            } else if (!strcmp(a, "--scope")) {
                if (!strcmp(v, "gemm")) scope = TS_SCOPE_GEMM;
                else if (!strcmp(v, "encoder")) scope = TS_SCOPE_ENCODER;
                else if (!strcmp(v, "all")) scope = TS_SCOPE_ALL;
                else {
                    ts_error(TINYSAM_E_ARG, "--scope must be gemm, encoder or all, not '%s'", v);
                    goto fail;
                }
            } else if ((n = list_dir(v, &list, n, &cap)) < 0) {
                n = 0;
                goto fail;
            }
        } else if (!strcmp(a, "--calib")) {
            /* every following argument up to the next option */
            while (i + 1 < argc && strncmp(argv[i + 1], "--", 2)) {
                if (n == cap) {
                    int nc = cap ? 2 * cap : 16;
                    char **p = realloc(list, sizeof(char *) * (size_t)nc);
                    if (!p) goto fail;
                    list = p;
                    cap = nc;
                }
                if (!(list[n] = strdup(argv[++i]))) goto fail;
                n++;
            }
        } else {
            fprintf(stderr, "tinysam: quantize: unknown argument '%s' (see tinysam quantize --help)\n",
                    a);
            goto usage;
        }
    }
    if (!model || !out || n == 0) {
        fputs("tinysam: quantize: --model, --out and calibration images (--calib or --calib-dir) "
              "are required\n", stderr);
        goto usage;
    }
    if (num == 0) num = TS_MIN(n, 8);
    if (num > n) num = n;
    if (threads) tinysam_set_num_threads(threads);
    tinysam_model *m;
    double t0 = ts_now_ms();
    if (tinysam_model_load(model, &m)) goto fail;
    /* the hessian default needs the trainer's backward, which SAM ViT lacks: mse there */
    if (m->vit && !method_given) method = TS_CALIB_MSE;
    ts_quant_opts qo = {method, scope, NULL};
    int rc = m->vit ? ts_quantize_vit_model(m, (const char *const *)list, num, &qo, out, 1)
                    : ts_quantize_model_opts(m, (const char *const *)list, num, &qo, out, 1);
    tinysam_model_free(m);
    if (rc) goto fail;
    printf("{\"model\": ");
    ts_json_write_string_stdout(model);
    printf(", \"out\": ");
    ts_json_write_string_stdout(out);
    printf(", \"images\": %d, \"method\": \"%s\", \"scope\": \"%s\", \"ms\": %.1f}\n", num,
           ts_quant_method_name(method), ts_quant_scope_name(scope), ts_now_ms() - t0);
    status = 0;
    goto done;
usage: /* the message is already out: one line, as every command */
    status = 2;
    goto done;
fail:
    status = ts_cli_fail();
done:
    for (int i = 0; i < n; i++) free(list[i]);
    free(list);
    return status;
}
