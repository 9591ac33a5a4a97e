/* encoder_grad.h - the student image encoder (vit_t TinyViT + SAM neck, spec/TINYSAM.md 4)
 * forward with a tape and its backward (spec/DISTILL.md 5.1-5.3, E1-E16), float32 on the nn.h
 * kernels.
 *
 * BatchNorm runs in eval mode (DISTILL.md 5.2): gamma/beta receive gradients, the running
 * statistics are frozen constants. norm_head/head are not part of the layout (never used).
 *
 * Parameters live in one flat float array laid out by a ts_eg_layout: one entry per checkpoint
 * tensor (names as in the state_dict, e.g. "image_encoder.layers.1.blocks.0.attn.qkv.weight"),
 * in the model's order, the BatchNorm running statistics included but marked frozen (their
 * gradient entries stay zero). Gradients use the same layout.
 *
 * Layout of activations: channels-last (tokens), as the inference encoder. The tape (inputs
 * of every module, raw convolution outputs, qkv / softmax / attention outputs, MLP
 * pre-activations; 1128 MB for vit_t at 1024) and the scratch (328 MB) are allocated once, at
 * ts_egf_create; nothing is allocated per step. BatchNorm and GELU outputs are recomputed in
 * the backward instead of stored. The GEMMs, the element-wise loops, the depthwise backward
 * and the window attention run on the ts_parallel_for pool; per-channel sums reduce in a
 * fixed order (gradients do not depend on the scheduling). Not safe to share
 * one context between threads. An optimiser must skip the frozen entries. */
#ifndef TS_TRAIN_ENCODER_GRAD_H
#define TS_TRAIN_ENCODER_GRAD_H

#include "io/tensor_map.h"

#include <stddef.h>

#define TS_EG_MAX_TENSORS 400
#define TS_EG_NAME 96
#define TS_EG_MAX_MB 8  /* MBConv blocks of stage 0 */
#define TS_EG_MAX_VB 32 /* TinyViT blocks of stages 1..3 */

/* Encoder geometry. vit_t: img 1024, dims 64/128/160/320, depths 2/2/6/2, heads -/4/5/10,
 * windows -/7/14/7, merge strides 2/2/1, MBConv and MLP ratio 4, neck 256. The stage-0 side is
 * img / 4; each merge maps side R to (R - 1) / stride + 1. */
typedef struct {
    int img;
    int dims[4], depths[4], heads[4], windows[4];
    int merge_stride[3];
    int mb_ratio, mlp_ratio, neck;
} ts_eg_config;

void ts_eg_config_vit_t(ts_eg_config *c);

typedef struct {
    char name[TS_EG_NAME];
    int ndim, frozen; /* frozen: BatchNorm running statistics */
    int shape[4];
    size_t off, numel;
} ts_eg_tensor;

typedef struct {
    ts_eg_config c;
    int n;
    ts_eg_tensor t[TS_EG_MAX_TENSORS];
    size_t total; /* floats in a parameter (or gradient) array */
    int out_side; /* side of the output embedding (64 for vit_t) */
} ts_eg_layout;

/* Fills the layout for a configuration. Returns 0 or TINYSAM_E_ARG. */
int ts_eg_layout_init(ts_eg_layout *L, const ts_eg_config *c);
/* Index of a tensor by name, or -1. */
int ts_eg_find(const ts_eg_layout *L, const char *name);
/* Copies every tensor of the layout from a checkpoint map into params (L->total floats),
 * checking shapes. Returns 0 or TINYSAM_E_FORMAT (ts_error names the tensor). */
int ts_eg_load(const ts_eg_layout *L, const ts_tensor_map *m, float *params);

typedef struct ts_egf ts_egf;

/* Binds the layout and the parameters (not copied: both must outlive the context; the
 * parameters may change between steps, not between a forward and its backward) and allocates
 * the tape and scratch. Returns 0, TINYSAM_E_NOMEM or TINYSAM_E_ARG. */
int ts_egf_create(const ts_eg_layout *L, const float *params, ts_egf **out);
void ts_egf_free(ts_egf *e);
/* Bytes held by the tape and by the scratch. */
void ts_egf_memory(const ts_egf *e, size_t *tape_bytes, size_t *scratch_bytes);
/* Milliseconds of the last forward (backward != 0: backward) per module kind: patch embed,
 * MBConv blocks, PatchMerging, TinyViT blocks, neck. */
void ts_egf_times(const ts_egf *e, int backward, double ms[5]);

/* Forward of the normalised padded image img ([3][S][S], S = c.img, NCHW) into emb
 * ([neck][s][s], s = out_side, NCHW), recording the tape. Returns 0 or a negative status. */
int ts_egf_forward(ts_egf *e, const float *img, float *emb);
/* Backward of the last forward from demb ([neck][s][s]): ACCUMULATES into grads (L->total
 * floats; frozen entries untouched). Reads the tape only: it may be repeated. Returns 0 or a
 * negative status. */
int ts_egf_backward(ts_egf *e, const float *demb, float *grads);

/* Output-gradient hook of the backward (quantisation: the Hessian-guided scale search,
 * quant/hessian.h): during ts_egf_backward, for every linear and dense (not depthwise)
 * convolution, fn(ctx, name, dr, rows, cols, scale) with the gradient of the loss with respect
 * to the layer's output, rows x cols (channels last; rows in the backward's own order: pixels,
 * or window tokens with padding for the attention's linears). name is the layer's prefix as
 * the inference encoder names its quantised layers (model/image_encoder.h ts_tiny_vit_qlayer),
 * e.g. "image_encoder.layers.1.blocks.0.mlp.fc1" or "image_encoder.layers.0.blocks.0.conv1.c".
 * For a convolution followed by a BatchNorm (folded into one layer at inference, output
 * BN(r) = scale * r + shift) dr is the gradient of the raw convolution output r and scale[cols]
 * is given: the folded layer's output gradient is dr[i][c] / scale[c]; else scale is NULL and
 * dr is the output gradient. Called on the calling thread; dr is only valid during the call.
 * fn NULL removes the hook. */
typedef void (*ts_egf_grad_hook)(void *ctx, const char *name, const float *dr, size_t rows,
                                 int cols, const float *scale);
void ts_egf_set_grad_hook(ts_egf *e, ts_egf_grad_hook fn, void *ctx);

#endif
