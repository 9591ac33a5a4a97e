/* nn.h - float32 kernels used by the model graphs. Row-major everywhere.
 * Every kernel has a plain-C reference (*_ref, nn/ref.c) that the tests compare the
 * dispatched (SIMD, threaded) version against. The dispatched versions pick an ISA path at
 * first use (AVX-512, AVX2+FMA or portable C; env TINYSAM_ISA=avx512|avx2|scalar forces
 * one) and spread big problems over the ts_parallel_for pool. */
#ifndef TS_NN_H
#define TS_NN_H

#include <stddef.h>
#include <stdint.h>

/* Activation fused into a kernel's epilogue. */
enum { TS_ACT_NONE = 0, TS_ACT_GELU = 1 };

/* C[M x N] (ldc) = beta*C + A[M x K] (lda) * op(B)
 * op(B) = B (K x N, ldb) when b_trans = 0, or B^T with B stored N x K (ldb) when 1.
 * beta is 0 (overwrite; C may hold garbage/NaN) or 1 (accumulate). */
void ts_gemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb, int b_trans,
             float *C, int ldc, float beta);
void ts_gemm_ref(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                 int b_trans, float *C, int ldc, float beta);
/* ts_gemm with a fused epilogue: C = act(beta*C + A*op(B) + bias[n]); bias may be NULL. */
void ts_gemm_ex(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                int b_trans, float *C, int ldc, float beta, const float *bias, int act);

/* Small GEMMs inside a task of an outer ts_parallel_for: as ts_gemm_ex, on the calling
 * thread only, without splitting the work into tasks. */
void ts_gemm_serial(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    int b_trans, float *C, int ldc, float beta, const float *bias, int act);

/* Model weights packed once (at load) for the GEMM micro-kernel of the current ISA:
 * op(B) = W^T with W stored N x K (ldw), i.e. a PyTorch Linear weight [out][in] or a
 * convolution weight [co][taps*ci]. W must stay valid while the pack is used: a GEMM run
 * under another ISA (ts_nn_set_isa after packing) packs from W per call instead. Returns NULL
 * (ts_error set) when out of memory. */
typedef struct ts_wpack ts_wpack;
ts_wpack *ts_wpack_new(const float *W, int N, int K, int ldw);
void ts_wpack_free(ts_wpack *p);
/* A model load's packs, made together: between ts_wpack_batch_begin and ts_wpack_batch_end
 * (same thread), ts_wpack_new* only record the shape and return a pack without data (it must
 * not be used yet); ts_wpack_batch_end(b, 1) then places them all in one block and
 * packs them in parallel (returns TINYSAM_E_NOMEM, the packs then still empty, when out of
 * memory); ts_wpack_batch_end(b, 0) closes a failed load's batch. The packs are freed one by
 * one as usual. Batches nest. */
typedef struct ts_wpack_batch ts_wpack_batch;
ts_wpack_batch *ts_wpack_batch_begin(void);
int ts_wpack_batch_end(ts_wpack_batch *b, int pack);
/* Pre-packed weights (a model file's packed section, io/tensor_map.h): the packs of a batch in
 * order, each a slice of K x ncp floats rounded up to 16 floats, dir holding N K kcb nkb ncp
 * per pack (int32, possibly unaligned), tag the layout it was written for. */
typedef struct {
    const char *tag;
    const int32_t *dir;
    int n;
    const float *data; /* 64-byte aligned, or the image is not used */
    size_t bytes;
    int used;          /* set by ts_wpack_batch_end when the packs were taken from it */
} ts_wpack_image;
/* ts_wpack_batch_end then points the packs into image (zero-copy, read-only) when its tag,
 * count and every pack's shape match this batch, else packs as usual. image must outlive the
 * packs. */
void ts_wpack_batch_use_image(ts_wpack_batch *b, ts_wpack_image *image);
/* ts_wpack_batch_end(b, 1) then hands the list of the batch's packs (malloc'd, in order) to
 * *packs / *n instead of freeing it: for ts_wpack_image_write. */
void ts_wpack_batch_keep_list(ts_wpack_batch *b, ts_wpack ***packs, int *n);
/* The layout tag of p's ISA (of the current ISA when p is NULL): layout version, ISA, nr, kc. */
void ts_wpack_layout_tag(const ts_wpack *p, char *out, size_t cap);
/* The image of packs (all made under one ISA): dir 5*n int32, data ts_wpack_image_bytes
 * bytes (64-byte aligned slices, zero padded). Returns -1 when a pack is empty or the ISAs
 * differ. */
size_t ts_wpack_image_bytes(ts_wpack *const *packs, int n);
int ts_wpack_image_write(ts_wpack *const *packs, int n, int32_t *dir, float *data);
/* Packs again from the weights W it was made from, after they changed in place (training). */
void ts_wpack_refresh(ts_wpack *p);
int ts_wpack_n(const ts_wpack *p); /* N (output columns) */
int ts_wpack_borrowed(const ts_wpack *p); /* 1 while its data is read from an image */
int ts_wpack_k(const ts_wpack *p); /* K (reduction length) */
/* C[M x N] (ldc) = act(beta*C + A[M x K] (lda) * W^T + bias[n]), N, K those of the pack. */
void ts_gemm_w(int M, const float *A, int lda, const ts_wpack *W, float *C, int ldc, float beta,
               const float *bias, int act);
void ts_gemm_w_serial(int M, const float *A, int lda, const ts_wpack *W, float *C, int ldc,
                      float beta, const float *bias, int act);
/* A 3x3 convolution weight [Co][9*Ci] packed with K blocks that follow the kernel rows
 * (ts_conv3x3_nhwc_w then reads interior pixels in place instead of gathering im2col rows). */
ts_wpack *ts_wpack_new_conv3x3(const float *w, int Co, int Ci);
/* ts_conv3x3_nhwc with the weight [Co][9*Ci] pre-packed (Co = its N; either kind of pack). */
void ts_conv3x3_nhwc_w(const float *x, int H, int W, int Ci, int stride, const ts_wpack *w,
                       const float *bias, int act, float *y);

/* PyTorch Linear: y[M x N] = x[M x K] * W^T + bias, W stored N x K, bias may be NULL. */
void ts_linear(const float *x, int M, int K, const float *W, const float *bias, int N, float *y);

/* 3x3 convolution, padding 1, stride 1 or 2, channels-last (NHWC, batch 1):
 * x[H][W][Ci], w[Co][3][3][Ci] (taps ky, kx, then input channel), bias[Co] (may be NULL),
 * y[Ho][Wo][Co] with Ho = (H - 1) / stride + 1. Computed as GEMM with the im2col done while
 * packing, so no im2col buffer is needed. */
void ts_conv3x3_nhwc(const float *x, int H, int W, int Ci, int stride, const float *w,
                     const float *bias, int Co, int act, float *y);
void ts_conv3x3_nhwc_ref(const float *x, int H, int W, int Ci, int stride, const float *w,
                         const float *bias, int Co, int act, float *y);

/* Depthwise 3x3 convolution, padding 1, stride 1 or 2, NHWC: x[H][W][C],
 * w9[9][C] (tap ky*3+kx major, channel minor), bias[C] (may be NULL), y[Ho][Wo][C]. */
void ts_dwconv3x3_nhwc(const float *x, int H, int W, int C, int stride, const float *w9,
                       const float *bias, int act, float *y);
void ts_dwconv3x3_nhwc_ref(const float *x, int H, int W, int C, int stride, const float *w9,
                           const float *bias, int act, float *y);

/* LayerNorm over the last axis of x[M x C] (in place), biased variance, then *w + b. */
void ts_layernorm(float *x, int M, int C, const float *w, const float *b, float eps);
/* Copying variant: y = LN(x). */
void ts_layernorm_to(const float *x, float *y, int M, int C, const float *w, const float *b,
                     float eps);
void ts_layernorm_to_ref(const float *x, float *y, int M, int C, const float *w, const float *b,
                         float eps);

/* Exact-erf GELU x * 0.5 * (1 + erf(x / sqrt(2))), in place over n values. The SIMD paths
 * use an erf approximation within 1e-6 absolute of the erff form (as PyTorch's own). */
void ts_gelu(float *x, size_t n);
void ts_gelu_ref(float *x, size_t n);
void ts_relu(float *x, size_t n);

/* Softmax over each row of x[M x N], in place (max-subtracted). */
void ts_softmax_rows(float *x, int M, int N);
void ts_softmax_rows_ref(float *x, int M, int N);

/* Single-thread variants for use inside a task of an outer ts_parallel_for (no task split,
 * no pool calls). ts_dwconv3x3_nhwc_row computes output row oy only (y_row: Wo x C). */
void ts_layernorm_to_serial(const float *x, float *y, int M, int C, const float *w,
                            const float *b, float eps);
void ts_softmax_rows_serial(float *x, int M, int N);
void ts_gelu_serial(float *x, size_t n);
/* x[i] = x[i] * s + b[i] (multiply, then add: two roundings, as PyTorch's two ops). */
void ts_scale_add(float *x, float s, const float *b, int n);
/* dst[c*ldd + r] = src[r*lds + c] for r < rows, c < cols (8 x 8 register blocks). */
void ts_transpose_serial(const float *src, int lds, int rows, int cols, float *dst, int ldd);
void ts_dwconv3x3_nhwc_row(const float *x, int H, int W, int C, int stride, const float *w9,
                           const float *bias, int act, float *y_row, int oy);
/* One output row from its three input rows (rows[ky] = input row oy*stride - 1 + ky, W x C,
 * or NULL for the zero padding): for pipelines that keep only a few rows of a map. */
void ts_dwconv3x3_nhwc_rows3(const float *const rows[3], int W, int C, int stride,
                             const float *w9, const float *bias, int act, float *y_row);

/* ISA selection (nn/dispatch.c). Names: "avx512", "avx2", "scalar". ts_nn_set_isa returns 0,
 * or TINYSAM_E_UNSUPPORTED when this CPU lacks it. Not thread-safe against running kernels:
 * call it between forward passes (tests, benchmarks). */
const char *ts_nn_isa_name(void);
int ts_nn_set_isa(const char *name);
int ts_nn_isa_available(const char *name);

#endif
