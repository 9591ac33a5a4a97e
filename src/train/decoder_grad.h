/* decoder_grad.h - the student's prompt encoder + mask decoder forward with a tape, and its
 * backward (spec/DISTILL.md 5.1, 5.3 P1-P3 and D1-D9), in double precision on the ts_g_* ops.
 *
 * This is the reference the trainer's float decoder backward is checked against. N prompt
 * sets share one image embedding E_S; the backward sums dE_S over the sets (D2) and
 * accumulates the gradient of every trainable prompt-encoder and mask-decoder tensor.
 *
 * Parameters live in one flat double array laid out by a ts_dg_layout: one entry per
 * checkpoint tensor (names as in the state_dict, e.g.
 * "mask_decoder.transformer.layers.0.self_attn.q_proj.weight"), in the model's parameter
 * order. Gradients use the same layout. The PE Gaussian matrix is not trainable and is held
 * apart (ts_dg_net.gauss).
 *
 * Memory: the tape holds ONE prompt set's activations and is allocated once, at
 * ts_dg_create. The forward runs the sets one after the other; the backward recomputes each
 * set's forward into the tape before back-propagating it (the sets are independent given
 * E_S), so memory does not grow with N. (The double ts_g_* blocks this version calls still
 * allocate their own scratch per call; the float version below allocates nothing itself per call.)
 * Single-threaded apart from what ts_gemm does; not safe to share one context between
 * threads. */
#ifndef TS_TRAIN_DECODER_GRAD_H
#define TS_TRAIN_DECODER_GRAD_H

#include "io/tensor_map.h"
#include "model/sam_decoder.h"

#include <stddef.h>

#define TS_DG_MAX_TENSORS 160
#define TS_DG_NAME 96

/* Decoder geometry. SAM / TinySAM: E 256, H = W = 64, mlp 2048, heads 8, cross_down 2,
 * iou_hidden 256, mask_chans 16. Mask outputs are (4H) x (4W), mask inputs the same. */
typedef struct {
    int E, H, W, mlp, heads, cross_down, iou_hidden, mask_chans;
} ts_dg_config;

void ts_dg_config_sam(ts_dg_config *c);

typedef struct {
    char name[TS_DG_NAME];
    int ndim;
    int shape[4];
    size_t off, numel;
} ts_dg_tensor;

typedef struct {
    ts_dg_config c;
    int n;
    ts_dg_tensor t[TS_DG_MAX_TENSORS];
    size_t total; /* doubles in a parameter (or gradient) array */
} ts_dg_layout;

/* Fills the layout for a configuration. Returns 0 or TINYSAM_E_ARG. */
int ts_dg_layout_init(ts_dg_layout *L, const ts_dg_config *c);
/* Index of a tensor by name, or -1. */
int ts_dg_find(const ts_dg_layout *L, const char *name);

/* Copies (float -> double) every trainable tensor from a checkpoint map into params
 * (L->total doubles) and the PE Gaussian matrix into gauss (2 x E/2). Checks the shapes.
 * Returns 0 or TINYSAM_E_FORMAT (ts_error names the tensor). */
int ts_dg_load(const ts_dg_layout *L, const ts_tensor_map *m, double *params, double *gauss);

typedef struct ts_dg ts_dg;

/* Binds the layout to the parameters (not copied: they must outlive the context and may be
 * changed between calls) and allocates the tape. Returns 0, TINYSAM_E_NOMEM or
 * TINYSAM_E_ARG. */
int ts_dg_create(const ts_dg_layout *L, const double *params, const double *gauss, ts_dg **out);
void ts_dg_free(ts_dg *d);

/* Forward of N sets on the embedding emb ([E][H][W]): low-res logits z (N x 4 x 4H x 4W, all
 * four mask tokens), IoU predictions u (N x 4), hs rows 0..4 tok (N x 5 x E). Any output may
 * be NULL. Prompt coordinates are normalised as in ts_prompt_set (the sparse-token layout of
 * ts_prompt_sparse: points, then a padding point unless there is a box, then the box
 * corners); mask inputs are (4H) x (4W). Returns 0 or a negative status. */
int ts_dg_forward(ts_dg *d, const double *emb, int N, const ts_prompt_set *sets, double *z,
                  double *u, double *tok);

/* Backward of the same N sets from upstream gradients dz, du, dtok (shapes as the forward's
 * outputs; any may be NULL = zero): ACCUMULATES into grads (L->total doubles, may be NULL) and
 * into demb ([E][H][W], may be NULL). */
int ts_dg_backward(ts_dg *d, const double *emb, int N, const ts_prompt_set *sets,
                   const double *dz, const double *du, const double *dtok, double *grads,
                   double *demb);

/* ---- float32 version on the nn.h kernels ------------------------------------------------
 * The same computation in float (GEMMs through ts_gemm), with the parameters, gradients and
 * tensors as float arrays in the same layout; checked against the double version above.
 * The sets run in parallel on the ts_parallel_for pool: ts_dgf_create allocates one one-set
 * tape per pool thread (about 230 MB each with SAM's shapes, gradient buffer included; more
 * are added if the pool has grown by the next call). The per-set gradients are summed in set
 * order, so results are bit-identical for any number of threads. Not safe to share one
 * context between application threads. */
typedef struct ts_dgf ts_dgf;

int ts_dgf_create(const ts_dg_layout *L, const float *params, const float *gauss,
                  ts_dgf **out);
void ts_dgf_free(ts_dgf *d);
int ts_dgf_forward(ts_dgf *d, const float *emb, int N, const ts_prompt_set *sets, float *z,
                   float *u, float *tok);
int ts_dgf_backward(ts_dgf *d, const float *emb, int N, const ts_prompt_set *sets,
                    const float *dz, const float *du, const float *dtok, float *grads,
                    float *demb);

/* Output-gradient hook of the float backward (quantisation: the Hessian-guided scale search
 * of the int8 decoder, quant/hessian.h): during ts_dgf_backward, for every token-side Linear
 * (the self-attention's q/k/v/out, token->image q/out, image->token k/v, the MLPs' lin1/lin2,
 * the final attention's q/out, the hypernetwork and IoU-head MLPs: the layers the int8 decoder
 * can run W8A8), both ConvTranspose2d of the output upscaling and the mask product,
 * fn(ctx, set, name, dy, rows, cols) with dy the gradient of the loss with respect to the
 * layer's output for prompt set `set`, rows x cols, channels last. name is the layer's
 * PyTorch prefix ("mask_decoder.transformer.layers.0.mlp.lin1"); for a ConvTranspose2d
 * (".output_upscaling.0" / ".3") the columns are (sub-pixel s = 2a + b) * out + o, the rows of
 * the int8 layer (quant/int8_model.h), and the bias is left out (dy is the gradient of the
 * per-sub-pixel GEMM output, rows = input pixels); for "mask_decoder.mask_product" dy is
 * dL/dz transposed, rows = output pixels, cols = the four mask tokens. The image-side
 * projections folded into the cross attentions (token->image k/v, image->token q/out) are not
 * formed, so not hooked. Called from the pool's threads, several sets at once (distinct
 * `set`s): the callee must not share unlocked state between sets; dy is only valid during the
 * call. fn NULL removes the hook. */
typedef void (*ts_dgf_grad_hook)(void *ctx, int set, const char *name, const float *dy,
                                 size_t rows, int cols);
void ts_dgf_set_grad_hook(ts_dgf *d, ts_dgf_grad_hook fn, void *ctx);

#endif
