/* grad_ops.h - double-precision forward and backward of the student's operations
 * (spec/DISTILL.md section 5.3), the losses of section 2 and Adam (section 5.4).
 *
 * These are the reference implementations the trainer's float kernels are checked against:
 * plain loops, clear rather than fast. Every pair is ts_g_<op>_fwd / ts_g_<op>_bwd. A backward
 * takes the upstream gradient dy and ACCUMULATES (+=) into dx and into the parameter gradients,
 * so a tensor read by several operations sums its gradients by calling each backward in turn.
 * Any gradient output may be NULL when it is not wanted. Backwards recompute what they need
 * from the forward inputs (nothing is cached between the two calls).
 *
 * Layouts: token tensors are row-major [M][C]; image tensors are NCHW with batch 1
 * (x[C][H][W]) unless a function says otherwise.
 * Primitives, losses and Adam: grad_ops.c; composite modules (PatchMerging, window attention,
 * TinyViT block, decoder attention, two-way block): grad_blocks.c. */
#ifndef TS_TRAIN_GRAD_OPS_H
#define TS_TRAIN_GRAD_OPS_H

#include <stddef.h>

/* ---- element-wise ------------------------------------------------------------------------ */

/* GELU, erf form: y = x * Phi(x); dx = dy * (Phi(x) + x * phi(x)). */
void ts_g_gelu_fwd(const double *x, size_t n, double *y);
void ts_g_gelu_bwd(const double *x, size_t n, const double *dy, double *dx);

/* ReLU: dx = dy * [x > 0]. */
void ts_g_relu_fwd(const double *x, size_t n, double *y);
void ts_g_relu_bwd(const double *x, size_t n, const double *dy, double *dx);

/* Softmax over each row of x[M][N] (max-subtracted; y may be x). The backward takes the forward's
 * OUTPUT y: dx = y * (dy - sum(dy * y)) per row. */
void ts_g_softmax_rows_fwd(const double *x, int M, int N, double *y);
void ts_g_softmax_rows_bwd(const double *y, int M, int N, const double *dy, double *dx);

/* ---- normalisation ----------------------------------------------------------------------- */

/* LayerNorm over the last axis of x[M][C], biased variance: y = (x - mean) / sqrt(var + eps)
 * * w + b (w, b: [C]); y may be x. */
void ts_g_layernorm_fwd(const double *x, int M, int C, const double *w, const double *b,
                        double eps, double *y);
void ts_g_layernorm_bwd(const double *x, int M, int C, const double *w, double eps,
                        const double *dy, double *dx, double *dw, double *db);

/* LayerNorm2d (SAM): over the channels of each pixel of x[C][HW], w, b: [C]. */
void ts_g_layernorm2d_fwd(const double *x, int C, int HW, const double *w, const double *b,
                          double eps, double *y);
void ts_g_layernorm2d_bwd(const double *x, int C, int HW, const double *w, double eps,
                          const double *dy, double *dx, double *dw, double *db);

/* BatchNorm2d on x[N][C][HW], gamma/beta [C].
 * Eval mode: the stored statistics mean/var [C] are constants.
 * Train mode: batch statistics over N*HW (biased variance in the normalisation); the forward
 * optionally returns them (bmean, bvar, biased; may be NULL); the running-statistics update is
 * the caller's (momentum, unbiased variance). */
void ts_g_batchnorm_eval_fwd(const double *x, int N, int C, int HW, const double *gamma,
                             const double *beta, const double *mean, const double *var,
                             double eps, double *y);
void ts_g_batchnorm_eval_bwd(const double *x, int N, int C, int HW, const double *gamma,
                             const double *mean, const double *var, double eps,
                             const double *dy, double *dx, double *dgamma, double *dbeta);
void ts_g_batchnorm_train_fwd(const double *x, int N, int C, int HW, const double *gamma,
                              const double *beta, double eps, double *y, double *bmean,
                              double *bvar);
void ts_g_batchnorm_train_bwd(const double *x, int N, int C, int HW, const double *gamma,
                              double eps, const double *dy, double *dx, double *dgamma,
                              double *dbeta);
/* The running-statistics update of a train-mode step (PyTorch): r = (1 - momentum) r +
 * momentum * batch, with the unbiased batch variance bvar * count / (count - 1),
 * count = N*HW. */
void ts_g_batchnorm_running_update(double *run_mean, double *run_var, const double *bmean,
                                   const double *bvar, int C, double count, double momentum);

/* ---- linear and convolutions ------------------------------------------------------------- */

/* PyTorch Linear: y[M][N] = x[M][K] W^T + b, W [N][K], b [N] (may be NULL). */
void ts_g_linear_fwd(const double *x, int M, int K, const double *W, const double *b, int N,
                     double *y);
void ts_g_linear_bwd(const double *x, int M, int K, const double *W, int N, const double *dy,
                     double *dx, double *dW, double *db);

/* Conv2d, NCHW batch 1: x[Ci][H][W], w[Co][Ci/groups][k][k], b[Co] (may be NULL), square
 * kernel k, stride, zero padding pad, groups (1, or Ci = Co for depthwise).
 * y[Co][Ho][Wo], Ho = (H + 2 pad - k) / stride + 1. Covers 3x3 s1/s2 p1, 1x1, depthwise 3x3
 * and the non-overlapping k2 s2 of the mask down-scaling. */
typedef struct {
    int Ci, H, W;  /* input channels and size */
    int Co, k;     /* output channels, kernel side */
    int stride, pad, groups;
} ts_g_conv2d;
int ts_g_conv2d_out_h(const ts_g_conv2d *c);
int ts_g_conv2d_out_w(const ts_g_conv2d *c);
void ts_g_conv2d_fwd(const ts_g_conv2d *c, const double *x, const double *w, const double *b,
                     double *y);
void ts_g_conv2d_bwd(const ts_g_conv2d *c, const double *x, const double *w, const double *dy,
                     double *dx, double *dw, double *db);

/* ConvTranspose2d without padding, NCHW batch 1: x[Ci][H][W], w[Ci][Co][k][k] (PyTorch's
 * layout), b[Co] (may be NULL), y[Co][(H-1)*stride+k][(W-1)*stride+k]:
 * y[o][y*s+a][x*s+c] += x[i][y][x] * w[i][o][a][c]. */
void ts_g_convt2d_fwd(const double *x, int Ci, int H, int W, const double *w, const double *b,
                      int Co, int k, int stride, double *y);
void ts_g_convt2d_bwd(const double *x, int Ci, int H, int W, const double *w, int Co, int k,
                      int stride, const double *dy, double *dx, double *dw, double *db);

/* Conv2d_BN (TinyViT): convolution without bias, then BatchNorm2d in eval mode (eps 1e-5). */
typedef struct {
    ts_g_conv2d cv;
    double *w;             /* [Co][Ci/groups][k][k] */
    double *gamma, *beta;  /* [Co] */
    double *mean, *var;    /* [Co] running statistics (constants; ignored in gradients) */
} ts_g_convbn;

/* TinyViT PatchMerging on x[Ci][H][W]: Conv2d_BN 1x1 Ci->Co, GELU, Conv2d_BN 3x3 depthwise
 * (stride 2, or 1 for the 320-channel stage), GELU, Conv2d_BN 1x1 Co->Co; y[Co][Ho][Wo]
 * (the token form is its transpose). p[0..2] are the three Conv2d_BN, their cv filled in
 * consistently by the caller. Return 0, TINYSAM_E_NOMEM or TINYSAM_E_ARG. */
int ts_g_patchmerge_fwd(const ts_g_convbn p[3], const double *x, double *y);
int ts_g_patchmerge_bwd(const ts_g_convbn p[3], const double *x, const double *dy, double *dx,
                        const ts_g_convbn g[3]);

/* ---- TinyViT window attention (E8, E9-E13) ------------------------------------------------ */

/* The official Attention module run over windows of a token grid, as in TinyViTBlock:
 * x[H*W][C] is zero-padded to multiples of ws, partitioned into ws x ws windows; in each
 * window: LayerNorm(C, eps 1e-5) -> qkv Linear C->3C (head-major: per head q, k, v of
 * d = C/heads each) -> A = q k^T / sqrt(d) + bias[h][|drow|*ws + |dcol|] -> softmax -> P v ->
 * heads merged -> proj Linear C->C; windows reversed and cropped to y[H*W][C]. No residual. */
typedef struct {
    int C, heads, ws;
    double *ln_w, *ln_b;     /* [C] */
    double *qkv_w, *qkv_b;   /* [3C][C], [3C] */
    double *proj_w, *proj_b; /* [C][C], [C] */
    double *bias;            /* [heads][ws*ws] attention_biases */
} ts_g_winattn;
/* Both return 0, or TINYSAM_E_NOMEM / TINYSAM_E_ARG (ts_error set). The gradient struct g has
 * the same shape as p; its NULL members are skipped. */
int ts_g_winattn_fwd(const ts_g_winattn *p, const double *x, int H, int W, double *y);
int ts_g_winattn_bwd(const ts_g_winattn *p, const double *x, int H, int W, const double *dy,
                     double *dx, const ts_g_winattn *g);

/* A whole TinyViTBlock (spec/TINYSAM.md 4.6), BatchNorm in eval mode, tokens x[H*W][C]:
 *   t = x + winattn(x); t = BN(dwconv3x3(t as NCHW)) as tokens (no residual);
 *   y = t + fc2(GELU(fc1(LayerNorm(t)))), fc1 C -> hidden, fc2 hidden -> C.
 * Composed from the operations above; the bn_mean/bn_var members of a gradient struct are
 * ignored (running statistics are constants). */
typedef struct {
    ts_g_winattn attn;                /* attn.C, attn.heads, attn.ws give the shape */
    int hidden;                       /* MLP width (4C) */
    double *conv_w;                   /* local_conv.c.weight [C][1][3][3] */
    double *bn_w, *bn_b;              /* local_conv.bn weight, bias [C] */
    double *bn_mean, *bn_var;         /* running statistics [C] (constants) */
    double *ln_w, *ln_b;              /* mlp.norm [C] */
    double *fc1_w, *fc1_b;            /* [hidden][C], [hidden] */
    double *fc2_w, *fc2_b;            /* [C][hidden], [C] */
} ts_g_tvblock;
/* Return 0, or TINYSAM_E_NOMEM / TINYSAM_E_ARG (ts_error set). */
int ts_g_tvblock_fwd(const ts_g_tvblock *p, const double *x, int H, int W, double *y);
int ts_g_tvblock_bwd(const ts_g_tvblock *p, const double *x, int H, int W, const double *dy,
                     double *dx, const ts_g_tvblock *g);

/* ---- mask decoder ------------------------------------------------------------------------ */

/* src = repeat(E, N) (D2): y[s][i] = x[i] for the N sets; dx[i] += sum over s of dy[s][i]. */
void ts_g_repeat_fwd(const double *x, size_t n, int N, double *y);
void ts_g_repeat_bwd(size_t n, int N, const double *dy, double *dx);

/* SAM's decoder Attention (D3): q_proj, k_proj, v_proj E -> I (I = E / downsample rate), heads
 * of d = I / heads consecutive channels, softmax(q k^T / sqrt(d)) v, heads merged, out_proj
 * I -> E. q[Nq][E], k[Nk][E], v[Nk][E] (k and v may be the same tensor: their gradients then
 * go to two buffers the caller adds, or to the same buffer, since backwards accumulate). */
typedef struct {
    int E, I, heads;
    double *q_w, *q_b; /* [I][E], [I] */
    double *k_w, *k_b;
    double *v_w, *v_b;
    double *o_w, *o_b; /* [E][I], [E] */
} ts_g_attn;
/* Return 0, or TINYSAM_E_NOMEM / TINYSAM_E_ARG (ts_error set); g: like p, NULL members skipped. */
int ts_g_attn_fwd(const ts_g_attn *p, const double *q, int Nq, const double *k, const double *v,
                  int Nk, double *y);
int ts_g_attn_bwd(const ts_g_attn *p, const double *q, int Nq, const double *k, const double *v,
                  int Nk, const double *dy, double *dq, double *dk, double *dv,
                  const ts_g_attn *g);

/* SAM's TwoWayAttentionBlock (D4) on queries q[Nq][E] (tokens) and keys k[Nk][E] (image),
 * with query_pe qpe[Nq][E] and key_pe kpe[Nk][E]:
 *   self-attention (layer 0 with skip_first_layer_pe: q = self_attn(q, q, q), replacing q;
 *   otherwise q = q + self_attn(q + qpe, q + qpe, q)), norm1;
 *   q = norm2(q + t2i(q + qpe, k + kpe, k)); q = norm3(q + lin2(ReLU(lin1(q))));
 *   k = norm4(k + i2t(k + kpe, q + qpe, q)). LayerNorms eps 1e-5.
 * The backward returns gradients for q, k, qpe and kpe (any may be NULL); in the decoder qpe is
 * the original token tensor, so its caller adds dqpe to that tensor's gradient. */
typedef struct {
    int E, mlp, skip_first_layer_pe;
    ts_g_attn self_attn, t2i, i2t;     /* t2i: cross_attn_token_to_image, i2t: image_to_token */
    double *n1_w, *n1_b, *n2_w, *n2_b; /* norm1..norm4 [E] */
    double *n3_w, *n3_b, *n4_w, *n4_b;
    double *l1_w, *l1_b;               /* mlp.lin1 [mlp][E], [mlp] */
    double *l2_w, *l2_b;               /* mlp.lin2 [E][mlp], [E] */
} ts_g_twoway;
/* Return 0, or TINYSAM_E_NOMEM / TINYSAM_E_ARG (ts_error set); g: like p, NULL members skipped. */
int ts_g_twoway_fwd(const ts_g_twoway *p, const double *q, int Nq, const double *k, int Nk,
                    const double *qpe, const double *kpe, double *q_out, double *k_out);
int ts_g_twoway_bwd(const ts_g_twoway *p, const double *q, int Nq, const double *k, int Nk,
                    const double *qpe, const double *kpe, const double *dq_out,
                    const double *dk_out, double *dq, double *dk, double *dqpe, double *dkpe,
                    const ts_g_twoway *g);

/* Hypernetwork product (D8): masks[n][t][P] = sum_c hyper[n][t][c] * up[n][c][P]. */
void ts_g_hyper_fwd(const double *hyper, const double *up, int N, int T, int Cc, int P,
                    double *masks);
void ts_g_hyper_bwd(const double *hyper, const double *up, int N, int T, int Cc, int P,
                    const double *dmasks, double *dhyper, double *dup);

/* ---- losses (section 2; their backward takes the upstream scalar weight w) ------------------ */

/* mean |a - b| over n; da += w * sign(a - b) / n, sign(0) = 0. Also the IoU loss of one
 * prompt set (a = predicted IoUs of the eligible outputs, b = their targets). */
double ts_g_l1_fwd(const double *a, const double *b, size_t n);
void ts_g_l1_bwd(const double *a, const double *b, size_t n, double w, double *da);

/* Focal loss (alpha 0.25, exponent 2), mean over the n cells of logits z, binary target g. */
double ts_g_focal_fwd(const double *z, const double *g, size_t n);
void ts_g_focal_bwd(const double *z, const double *g, size_t n, double w, double *dz);

/* Dice loss with smoothing 1 over the n cells. */
double ts_g_dice_fwd(const double *z, const double *g, size_t n);
void ts_g_dice_bwd(const double *z, const double *g, size_t n, double w, double *dz);

/* Mask loss of one prompt set: min over the eligible outputs k (eligible[k] != 0, k < K) of
 * 20 * focal(z[k]) + dice(z[k]), z: [K][n]; ties go to the smallest k. Returns the loss and
 * the chosen k in *k_best (-1 and 0 when none is eligible). The backward sends w times the
 * gradient to z[k_best] only. */
double ts_g_mask_loss_fwd(const double *z, const double *g, int K, size_t n,
                          const int *eligible, int *k_best);
void ts_g_mask_loss_bwd(const double *z, const double *g, int K, size_t n, const int *eligible,
                        double w, double *dz);

/* ---- optimiser --------------------------------------------------------------------------- */

/* One Adam step (PyTorch 1.13 order) on n values; step is the 1-based step count after this
 * update. m and v are the moment buffers (start at zero). */
void ts_g_adam_step(double *p, const double *g, double *m, double *v, size_t n, int step,
                    double lr, double beta1, double beta2, double eps);

#endif
