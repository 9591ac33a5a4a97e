/* calibrate_vit.c - W8A8 calibration of the SAM ViT image encoder (calibrate_vit.h). */
#include "quant/calibrate_vit.h"
#include "core.h"
#include "model/image_encoder_vit.h"
#include "quant/int8_vit.h"
#include "threads.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NTOK        4096

typedef struct {
    ts_vit_layer_desc d;
    const float *w; /* the float weight [N][K] */
    float *buf;     /* sampled rows of K */
    size_t n, cap, img_cap, img_n;
    long long stride; /* keep row r when hash(r) % stride == 0 */
} col_t;

typedef struct {
    int n;
    col_t *L;
    int image; /* rows of different images hash differently */
} vit_calib;

static uint64_t mix(uint64_t z) { /* splitmix64's finaliser */
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* The tap: called on the forward pass's thread, rows in order, so the sample is deterministic. */
static void tap(void *user, int layer, long long row0, const float *x, int rows, int ldx) {
    vit_calib *c = user;
    if (layer < 0 || layer >= c->n) return;
    col_t *l = &c->L[layer];
    const int K = l->d.K;
    for (int r = 0; r < rows; r++) {
        uint64_t id = (uint64_t)c->image * NTOK + (uint64_t)(row0 + r);
        if (mix(id) % (uint64_t)l->stride) continue;
        if (l->img_n + (size_t)K > l->img_cap || l->n + (size_t)K > l->cap) break;
        memcpy(l->buf + l->n, x + (size_t)r * ldx, sizeof(float) * K);
        l->n += (size_t)K;
        l->img_n += (size_t)K;
    }
}

typedef struct {
    vit_calib *c;
    int method;
    float *step;
    int *zp;
} solve_job;

static void solve_task(void *ctx, int i, int tid) {
    (void)tid;
    const solve_job *j = ctx;
    const col_t *l = &j->c->L[i];
    j->step[i] = ts_calib_input_step(l->buf, l->n, l->d.post_gelu,
                                     j->method == TS_CALIB_LAYER ? l->w : NULL, l->d.K, l->d.N,
                                     &j->zp[i]);
}

int ts_calib_vit(const tinysam_model *model, const char *const *paths, int n_paths, int method,
                 float *step, int *zp, int verbose) {
    if (!model || !model->vit || !paths || n_paths < 1 || !step || !zp ||
        (method != TS_CALIB_MSE && method != TS_CALIB_LAYER))
        return ts_error(TINYSAM_E_ARG, "ts_calib_vit: bad argument");
    if (ts_sam_vit_n_int8(model->vit))
        return ts_error(TINYSAM_E_ARG, "calibration needs the float model, not an int8 one");
    const ts_sam_vit_config *cf = ts_sam_vit_get_config(model->vit);
    vit_calib c = {TS_VIT_N_LAYERS(cf->depth), NULL, 0};
    float *emb = NULL;
    int rc = TINYSAM_E_NOMEM;
    if (!(c.L = ts_calloc((size_t)c.n, sizeof *c.L))) goto done;
    const size_t per_img = (size_t)TS_CALIB_VIT_VALUES_MAX / (size_t)n_paths;
    for (int i = 0; i < c.n; i++) {
        col_t *l = &c.L[i];
        ts_vit_layer_describe(cf->depth, cf->embed_dim, i, &l->d);
        char name[160];
        snprintf(name, sizeof name, "%s.weight", l->d.name);
        const ts_tensor *w = ts_map_get(model->map, name);
        if (!w || w->dtype != TS_DTYPE_F32 || w->numel != (int64_t)l->d.N * l->d.K) {
            rc = ts_error(TINYSAM_E_ARG, "%s: no float weight", name);
            goto done;
        }
        l->w = w->data;
        const size_t K = (size_t)l->d.K, rows = TS_MAX((size_t)1, per_img / K);
        l->stride = TS_MAX(1, (NTOK + (long long)rows - 1) / (long long)rows);
        /* the hash keeps about NTOK / stride rows: room for 25% more, then stop */
        l->img_cap = (rows * 5 / 4 + 1) * K;
        l->cap = l->img_cap * (size_t)n_paths;
        if (!(l->buf = ts_malloc(sizeof(float) * l->cap))) goto done;
    }
    rc = TINYSAM_E_NOMEM;
    if (!(emb = ts_malloc_aligned(sizeof(float) * 256 * 64 * 64))) goto done;
    rc = 0;
    for (int i = 0; i < n_paths && !rc; i++) {
        if (verbose) fprintf(stderr, "calibrating %d/%d %s\n", i + 1, n_paths, paths[i]);
        tinysam_image img;
        if ((rc = tinysam_image_load(paths[i], 0, &img))) break;
        ts_encoder_input in;
        rc = ts_encoder_input_make(&img, &in);
        tinysam_image_free(&img);
        if (rc) break;
        for (int k = 0; k < c.n; k++) c.L[k].img_n = 0;
        c.image = i;
        rc = ts_sam_vit_forward_tap(model->vit, in.input, emb, tap, &c);
        ts_encoder_input_free(&in);
    }
    if (rc) goto done;
    for (int i = 0; i < c.n; i++)
        if (!c.L[i].n) {
            rc = ts_error(TINYSAM_E_ARG, "%s: no calibration samples", c.L[i].d.name);
            goto done;
        }
    if (verbose)
        fprintf(stderr, "searching %d activation steps (%s)\n", c.n, ts_quant_method_name(method));
    solve_job j = {&c, method, step, zp};
    ts_parallel_for(c.n, solve_task, &j);
done:
    for (int i = 0; c.L && i < c.n; i++) free(c.L[i].buf);
    free(c.L);
    ts_free_aligned(emb);
    return rc;
}

int ts_quantize_vit_model(const tinysam_model *model, const char *const *paths, int n_paths,
                          const ts_quant_opts *opts, const char *out_path, int verbose) {
    if (!model || !model->vit || !paths || n_paths < 1 || !out_path || !opts ||
        opts->scope < TS_SCOPE_GEMM || opts->scope > TS_SCOPE_ALL)
        return ts_error(TINYSAM_E_ARG, "ts_quantize_vit_model: bad argument");
    if (opts->method != TS_CALIB_MSE && opts->method != TS_CALIB_LAYER)
        return ts_error(TINYSAM_E_UNSUPPORTED,
                        "SAM ViT models take --method mse or layer (the Hessian method needs a "
                        "backward pass of the ViT encoder)");
    const ts_sam_vit_config *cf = ts_sam_vit_get_config(model->vit);
    const int n = TS_VIT_N_LAYERS(cf->depth);
    float *step = ts_malloc(sizeof(float) * (size_t)n);
    int *zp = ts_malloc(sizeof(int) * (size_t)n);
    if (!step || !zp) {
        free(step);
        free(zp);
        return TINYSAM_E_NOMEM;
    }
    int rc = ts_calib_vit(model, paths, n_paths, opts->method, step, zp, verbose);
    ts_calib_out o;
    if (!rc && !(rc = ts_calib_out_begin(&o, model, paths, n_paths, opts->method, opts->scope, n,
                                         NULL, verbose))) {
        rc = ts_vit_i8_save(out_path, o.src, cf->depth, cf->embed_dim, step, zp, TS_CALIB_META_N,
                            o.keys, o.values);
        ts_calib_out_end(&o, rc, out_path, verbose);
    }
    free(step);
    free(zp);
    return rc;
}
