/* sim_layers.h - the four layer classes of the official Q-TinySAM release
 * (tinysam/quantization_layer/layers.py; spec TINYSAM.md section 7), read from a module-tree
 * pickle or its converted safetensors (io/module_tree.h): InferQuantLinear,
 * InferQuantLinearPost, InferQuantConv2d, InferQuantConvTranspose2d.
 *
 * mode "quant_forward" computes what layers.py computes, in float32 ("simulated"):
 *   weights  w_sim = clamp(round(w / w_interval), -128, 127) * w_interval, w_interval
 *            broadcast over the weight viewed as (n_V, crb_rows, n_H, crb_cols) for the
 *            linears, over the weight's own shape for the convolutions;
 *   inputs   Linear: the last axis cut in n_a chunks (torch.chunk), chunk c quantised
 *            symmetric clamp(round(x / a_interval[c]), -128, 127) * a_interval[c];
 *            LinearPost: clamp(round(x / a), 0, 127) * a + clamp(round(x / a_neg), -128, 0) *
 *            a_neg (twin uniform after GELU); convolutions: q = clamp(round((x - a_bias) /
 *            a_interval), -128, 127), x_sim = q * a_interval + a_bias (zero padding added
 *            after, as F.conv2d does);
 *   then the float operation with w_sim and the float bias. round = half to even, x / step a
 *   true division. mode "raw" is the float layer.
 * Where the grids allow it exactly (one weight step per output row, one input step per
 * layer: n_V = out, crb_rows = 1, n_H = 1, n_a = 1; for a convolution a 1x1 kernel, stride 1,
 * one group) the same codes run on the int8 GEMM (nn/gemm_i8.h): integers = the quantised
 * values, scales = the intervals; only the float rounding of the sums differs. */
#ifndef TS_SIM_LAYERS_H
#define TS_SIM_LAYERS_H

#include "io/tensor_map.h"
#include "nn/gemm_i8.h"

typedef enum {
    TS_SIMQ_LINEAR = 0,
    TS_SIMQ_LINEAR_POST,
    TS_SIMQ_CONV2D,
    TS_SIMQ_CONVT2D,
} ts_simq_kind;

/* Which path a layer runs: the float layer (mode raw), simulated quantisation in float, or
 * the int8 GEMM on the same codes. */
typedef enum { TS_SIMQ_RAW = 0, TS_SIMQ_SIM, TS_SIMQ_INT8 } ts_simq_path;

typedef struct {
    ts_simq_kind kind;
    ts_simq_path path;
    int n_out, n_in;        /* Linear: out/in features; Conv2d: Co, Ci per group; ConvT:
                             * Ci, Co (weight [Ci][Co][kh][kw]) */
    int kh, kw;             /* 1 for linears */
    const float *w;         /* the checkpoint's weight (the map's) */
    const float *b;         /* bias or NULL */
    float *w_sim;           /* owned: quantised-dequantised weight (NULL for raw) */
    const float *wk;        /* the weight the float kernels use: w_sim, or w for raw */
    int n_a;                /* input chunks (linears), 1 for convolutions */
    float *a_step;          /* owned: n_a input steps */
    float a_neg;            /* LinearPost: the negative part's step */
    float a_bias;           /* convolutions: the input offset */
    ts_i8pack *pack;        /* int8 path: codes and w_interval per row */
    float *fold_bias;       /* int8 conv path: bias + a_bias * w_scale * colsum */
} ts_simq_layer;

/* Kind of a class name (E_FORMAT if it is not one of the four). */
int ts_simq_kind_of(const char *cls, ts_simq_kind *out);
const char *ts_simq_class_name(ts_simq_kind k);
const char *ts_simq_path_name(ts_simq_path p);

/* Builds layer `path` (tensor prefix, e.g. "image_encoder.neck.2") of class kind from m:
 * P.weight, P.bias (optional), and for quant_forward P.w_interval, P.a_interval (Linear: and
 * P.n_V, P.n_H, P.n_a, P.crb_rows, P.crb_cols, P.crb_acts when present; Post: P.a_neg_interval;
 * convolutions: P.a_bias), all marked used. allow_int8: take the int8 path when the grids
 * allow it. */
int ts_simq_layer_load(ts_tensor_map *m, const char *path, ts_simq_kind kind, int quant,
                       int allow_int8, ts_simq_layer *out);
void ts_simq_layer_free(ts_simq_layer *l);

/* Linear / LinearPost: y[M][n_out] = layer(x[M][n_in]) (x is not modified). */
int ts_simq_linear(const ts_simq_layer *l, const float *x, int M, float *y);
/* Conv2d, batch 1, NCHW: x[Ci*groups][H][W] -> y[Co][Ho][Wo], zero padding pad, stride,
 * groups (Ci*groups input channels, Co divisible by groups). */
int ts_simq_conv2d(const ts_simq_layer *l, const float *x, int H, int W, int stride, int pad,
                   int groups, float *y, int *Ho, int *Wo);
/* ConvTranspose2d with stride = kernel, no padding (SAM's output upscaling): x[Ci][H][W] ->
 * y[Co][H*kh][W*kw]. */
int ts_simq_convt2d(const ts_simq_layer *l, const float *x, int H, int W, float *y);

#endif
