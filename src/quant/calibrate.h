/* calibrate.h - post-training calibration of the W8A8 (Q-TinySAM) image encoder (spec §7):
 * runs the float encoder on calibration images, samples the input of every quantised GEMM
 * (model/image_encoder.h, TS_TINY_VIT_N_QLAYERS of them) and chooses one static uint8
 * quantiser (step, zero point) per GEMM input:
 *   - symmetric inputs (LayerNorm outputs, convolution and attention outputs): zero point
 *     128, step from ts_quant_search_step_mse over codes [-128, 127];
 *   - post-GELU inputs (fc2, the second 1x1 of MBConv / PatchMerging): asymmetric, the
 *     observed minimum maps near code 0 and the upper clip is searched by MSE (one GEMM per
 *     layer; the twin-uniform quantiser of quant.h would need two).
 * With TS_CALIB_LAYER the symmetric steps come from the layer-output-error search
 * (ts_quant_search_step_layer) on a subsample of rows instead; with TS_CALIB_HESSIAN the GEMM
 * layers' input steps and per-channel weight scales come from the Hessian-guided search
 * (quant/hessian.h). */
#ifndef TS_CALIBRATE_H
#define TS_CALIBRATE_H

#include "model/image_encoder.h"
#include "tinysam.h"

enum { TS_CALIB_MSE = 0, TS_CALIB_LAYER = 1, TS_CALIB_HESSIAN = 2 };

/* Samples kept per layer and image (at most; whole rows, spread by a hash of the row). */
#define TS_CALIB_VALUES_PER_IMAGE (256 * 1024)
/* ... and per layer over all images (bounds the memory to ~4 MB per layer). */
#define TS_CALIB_VALUES_MAX (1024 * 1024)

typedef struct ts_calib ts_calib;
struct ts_hessian; /* quant/hessian.h */

/* A collector for the float encoder enc (which must outlive it), for n_images images. */
int ts_calib_new(const ts_tiny_vit *enc, int n_images, ts_calib **out);
void ts_calib_free(ts_calib *c);
/* Puts the nr sampled rows buf[r0..r0+nr) (K floats each, row numbers ids[r0..]) that worker
 * threads appended in completion order back in row order, ties as appended, so that a sample
 * does not depend on thread timing; unique: one row per row number (equal numbers hold equal
 * rows: a pipeline that recomputes rows taps them again). Returns the rows kept (nr unless
 * unique), or -1 out of memory (error set). Shared by the encoder's and the decoder's
 * calibration. */
long ts_calib_sort_rows(float *buf, long long *ids, size_t r0, size_t nr, size_t K, int unique);
/* Runs the float encoder on one preprocessed input (3 x 1024 x 1024, as ts_normalize_pad
 * makes it) and collects the samples. */
int ts_calib_add_input(ts_calib *c, const float *input);
/* The same from an RGB image (resized, normalised, padded as tinysam_encode does). */
int ts_calib_add_image(ts_calib *c, const tinysam_image *img);
/* Chooses the quantisers: step[i], zp[i] for i < TS_TINY_VIT_N_QLAYERS. */
int ts_calib_solve(ts_calib *c, int method, float *step, int *zp);

/* ts_calib_solve for any method; TS_CALIB_HESSIAN (quant/hessian.h) needs h (the task-loss
 * gradients, ts_hessian_collect) and w_scale[i] (N floats per layer i < TS_TINY_VIT_N_QLAYERS):
 * the GEMM layers (taps 1) get their input step and per-channel weight scales from the
 * Hessian-guided search started at the MSE step; the 3x3 convolutions keep the MSE step and
 * get the abs-max scales of ts_quant_weights in w_scale[i]. */
int ts_calib_solve_hessian(ts_calib *c, int method, const struct ts_hessian *h, float *step,
                           int *zp, float **w_scale);

/* The steps of the attention products of the TS_TINY_VIT_N_ATTN blocks, steps[4 i + 0..3]:
 * q (codes [-128, 127]), k and v ([-127, 127]) by the MSE search on the qkv outputs sampled,
 * and 1/255 for exp(s - max) (model/image_encoder.h ts_tiny_vit_attn). */
int ts_calib_solve_attn(ts_calib *c, float *steps);

/* For post-GELU layer `layer` (ts_tiny_vit_qlayer post_gelu): the quantisation MSE of its
 * sampled inputs under the one-step asymmetric u8 quantiser that the int8 encoder uses (one
 * GEMM) and under the twin-uniform post-GELU quantiser (quant.h ts_twin_gelu_fq, two GEMMs),
 * each with its best step on the same grid. */
int ts_calib_gelu_compare(ts_calib *c, int layer, double *mse_asym, double *mse_twin);

/* The asymmetric MSE search: codes clamp(round(x / step) + zp, 0, 255) with the minimum of x
 * (or 0 when x >= 0) near code 0: candidates hi = r * max(x), step = (hi - lo) / 255,
 * zp = clamp(round(-lo / step), 0, 255), r on n_grid points of [lo_ratio, 1]. Returns the
 * step (1.0 for x all zero) and the zero point in *zp, the MSE in *mse when not NULL. */
float ts_calib_search_asym(const float *x, size_t n, int n_grid, float lo_ratio, int *zp,
                           double *mse);

/* The input quantiser of one layer from its sampled inputs buf (n values, whole rows of K):
 * after a GELU (post_gelu) the asymmetric search above; otherwise zero point 128 and the
 * symmetric MSE step over codes [-128, 127], refined when w is not NULL (the float weight
 * [N][K], method layer) by the layer-output-error search (ts_quant_search_step_layer) around
 * it on a subsample of rows. Returns the step, the zero point in *zp. */
float ts_calib_input_step(const float *buf, size_t n, int post_gelu, const float *w, int K, int N,
                          int *zp);

/* The whole `tinysam quantize`: calibrates model (a float vit_t model) on the images at
 * paths[0 .. n_paths-1] (progress lines on stderr when verbose) and writes the int8 model to
 * out_path. */
int ts_quantize_model(const tinysam_model *model, const char *const *paths, int n_paths,
                      int method, const char *out_path, int verbose);

/* What `tinysam quantize --scope` quantises: the encoder's 1x1 convolutions and linears (gemm,
 * TS_TINY_VIT_N_GEMM layers), the whole encoder (encoder: also the dense 3x3 convolutions), or
 * everything (all: the encoder, and the decoder where it has an int8 form; the default). */
enum { TS_SCOPE_GEMM = 0, TS_SCOPE_ENCODER = 1, TS_SCOPE_ALL = 2 };

typedef struct {
    int method; /* TS_CALIB_MSE, TS_CALIB_LAYER, TS_CALIB_HESSIAN */
    int scope;  /* TS_SCOPE_* */
    /* TS_CALIB_HESSIAN: task-loss gradients already collected on the same images
     * (quant/hessian.h ts_hessian_collect), e.g. shared by several scopes; NULL: collected */
    const struct ts_hessian *grads;
} ts_quant_opts;

/* ts_quantize_model with options (ts_quantize_model: method, scope all). */
int ts_quantize_model_opts(const tinysam_model *model, const char *const *paths, int n_paths,
                           const ts_quant_opts *opts, const char *out_path, int verbose);
const char *ts_quant_scope_name(int scope);
/* What every calibrated file is written with (the encoder's own saver does the writing):
 * metadata keys / values (tinysam.calibration: the images, method, scope and n_int8 encoder
 * layers) and src, the model's map or, for scope all, a view of it in which the decoder's int8
 * layers (calibrate_decoder.h, calibrated here) replace their float tensors. */
#define TS_CALIB_META_N 5
struct ts_int8_decoder_view;
typedef struct {
    const char *keys[TS_CALIB_META_N], *values[TS_CALIB_META_N];
    const ts_tensor_map *src;
    char calib[320]; /* the tinysam.calibration value */
    struct ts_int8_decoder_view *dv;
} ts_calib_out;
/* Fills o (which must not move until ts_calib_out_end); on failure there is nothing to end. */
int ts_calib_out_begin(ts_calib_out *o, const tinysam_model *model, const char *const *paths,
                       int n_paths, int method, int scope, int n_int8,
                       const struct ts_hessian *grads, int verbose);
/* Frees o after the save that returned rc; "wrote out_path" on stderr when verbose and rc is 0. */
void ts_calib_out_end(ts_calib_out *o, int rc, const char *out_path, int verbose);

const char *ts_quant_method_name(int method);

#endif
