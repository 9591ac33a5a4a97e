/* gemm_i8.h - int8 GEMM for the W8A8 (Q-TinySAM) model: uint8 activations (with a zero
 * point) times int8 weights packed at load, exact int32 accumulation, and a fused epilogue
 * (rescale to float, bias, GELU, or requantisation straight to uint8 for the next layer).
 *
 *   real A[m][k] = a_step * (A_u8[m][k] - a_zp)      (signed codes q: A_u8 = q + 128, zp 128)
 *   real W[n][k] = w_scale[n] * Wq[n][k]             (Wq in [-128, 127], per output channel)
 *   acc[m][n]    = sum_k (A_u8[m][k] - a_zp) * Wq[n][k]           (exact, int32)
 *                = sum_k A_u8 * Wq - a_zp * colsum[n]  (what the kernels compute)
 *   y[m][n]      = act((float)acc * (a_step * w_scale[n]) + bias[n])   (mul, then add)
 *   u8 output    = clamp(round(y / out_step) + out_zp, 0, 255)        (round half even)
 *
 * Exactness: |acc| <= K * 255 * 128 must fit in int32; packing rejects K > 65536.
 * Run-time ISA follows nn.h's selection (TINYSAM_ISA, ts_nn_set_isa): "avx512" uses AVX-512
 * VNNI (vpdpbusd) when the CPU has it, else the AVX2 kernel; "avx2" widens to 16 bit and uses
 * vpmaddwd; "scalar" is portable C. Multi-threaded over the ts_parallel_for pool. */
#ifndef TS_GEMM_I8_H
#define TS_GEMM_I8_H

#include <stddef.h>
#include <stdint.h>

/* Weights packed for the int8 micro-kernels: op(B) = Wq^T with Wq stored N x K (PyTorch
 * Linear [out][in]); the pack keeps its own copy of Wq (it may be freed after packing), the
 * per-column sums and scales. */
typedef struct ts_i8pack ts_i8pack;

/* Packs Wq[N][K] (ldw) with w_scale[N]. Returns NULL (ts_error set) on a bad shape or when
 * out of memory. */
ts_i8pack *ts_i8pack_new(const int8_t *Wq, int N, int K, int ldw, const float *w_scale);
/* The same without the copy of Wq[N][K] (dense): it must stay valid and unchanged while the
 * pack lives (a model file's tensor in its mapping). */
ts_i8pack *ts_i8pack_new_borrowed(const int8_t *Wq, int N, int K, const float *w_scale);
/* Quantises a float weight W[N][K] (ldw) per output channel (quant.h ts_quant_weights:
 * max|w|/127, codes in [-127, 127]) and packs it. */
ts_i8pack *ts_i8pack_new_f32(const float *W, int N, int K, int ldw);
void ts_i8pack_free(ts_i8pack *p);
/* A model load's int8 packs, packed together: between ts_i8pack_batch_begin and
 * ts_i8pack_batch_end (same thread), ts_i8pack_new copies the codes, sums and scales at once
 * but leaves the packing to ts_i8pack_batch_end(1), which packs them all in parallel (the
 * packs must not be used before); ts_i8pack_batch_end(0) closes a failed load's batch (its
 * packs may have been freed). Not nested. */
void ts_i8pack_batch_begin(void);
void ts_i8pack_batch_end(int pack);
int ts_i8pack_n(const ts_i8pack *p);
int ts_i8pack_k(const ts_i8pack *p);
const float *ts_i8pack_scale(const ts_i8pack *p);   /* w_scale[N] */
const int32_t *ts_i8pack_colsum(const ts_i8pack *p); /* sum_k Wq[n][k] */
/* Folds an asymmetric activation's offset (§7 Conv2d: x^ = q*step + a_bias) into a bias:
 * out[n] = (bias ? bias[n] : 0) + a_bias * w_scale[n] * colsum[n]. */
void ts_i8pack_fold_abias(const ts_i8pack *p, float a_bias, const float *bias, float *out);

/* Activation quantisation, vectorised and threaded: q[m][k] = clamp(round(x[m][k] / step) + zp,
 * 0, 255) for x[M][K] (ldx) into q (ldq); a true division, as quant.h's ts_quant_u8_zp. */
void ts_quantize_u8(const float *x, int M, int K, int ldx, float step, int zp, uint8_t *q,
                    int ldq);
/* The same with the signed code limited to [qlo, qhi] (quant.h ts_quant_u8_range):
 * q = clamp(round(x / step), qlo, qhi) + zp, -zp <= qlo <= 0 <= qhi <= 255 - zp. */
void ts_quantize_u8_range(const float *x, int M, int K, int ldx, float step, int zp, int qlo,
                          int qhi, uint8_t *q, int ldq);

/* Output of ts_gemm_i8: floats, or uint8 codes.
 * accumulate (float output): C += act(y) instead of C = act(y). A twin-uniform input (two
 * codes per value, two steps, quant.h) is two passes: e.g. post-GELU x^ = qp*a + qn*NEG_STEP
 * runs qp codes (step a, zp 0, with bias) then qn + 128 codes (NEG_STEP, zp 128, accumulate). */
typedef struct {
    const float *bias; /* [N] or NULL */
    int act;           /* TS_ACT_NONE or TS_ACT_GELU (nn.h) */
    int accumulate;    /* float output: add to C */
    float *C;          /* float output C[M][N] (ldc), or NULL when Cq is set */
    uint8_t *Cq;       /* u8 output (ldc), requantised with out_step, out_zp */
    int ldc;
    float out_step;
    int out_zp;
    const float *res; /* float output: C = res + act(y), res laid out as C (ldc), or NULL */
    /* float output, N <= 512: called with each finished row of C (all N columns), on the
     * thread that made it, while the row is in cache (e.g. a LayerNorm of the result) */
    void (*row_done)(void *ctx, int m, float *row);
    void *row_ctx;
} ts_i8_out;

/* C = epilogue(A_u8[M x K] (lda) * W), K and N those of the pack; see the top of the file. */
void ts_gemm_i8(int M, const uint8_t *A, int lda, float a_step, int a_zp, const ts_i8pack *W,
                const ts_i8_out *out);
/* The same on the calling thread only (inside a task of an outer ts_parallel_for). */
void ts_gemm_i8_serial(int M, const uint8_t *A, int lda, float a_step, int a_zp,
                       const ts_i8pack *W, const ts_i8_out *out);
/* ts_gemm_i8 with float activations X[M x K] (ldx) quantised on the fly, panel by panel, with
 * clamp(round(X / a_step) + a_zp, 0, 255): the same result as ts_quantize_u8 then ts_gemm_i8,
 * without the uint8 copy of X (one pass over X, while the GEMM uses it). */
void ts_gemm_i8_f32(int M, const float *X, int ldx, float a_step, int a_zp, const ts_i8pack *W,
                    const ts_i8_out *out);
void ts_gemm_i8_f32_serial(int M, const float *X, int ldx, float a_step, int a_zp,
                           const ts_i8pack *W, const ts_i8_out *out);
/* The raw exact accumulator acc[m][n] = sum_k (A[m][k] - a_zp) * Wq[n][k] into C32 (ldc):
 * for tests and for callers with their own epilogue. */
void ts_gemm_i8_s32(int M, const uint8_t *A, int lda, int a_zp, const ts_i8pack *W,
                    int32_t *C32, int ldc);

/* Checks a stored W8A8 layer's quantisers, read from a file: input step > 0, zero point an
 * integer in [0, 255], the N weight scales >= 0 and the biases (NULL: none) finite.
 * TINYSAM_E_FORMAT naming layer P, or 0. */
int ts_i8_check_layer_steps(const char *P, float step, float zero_point, const float *scale,
                            const float *bias, int N);

/* dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols: uint8 codes (e.g. a layer's
 * input codes as the A operand of the transposed product), on the calling thread. SSE2 16 x 16
 * blocks unless the int8 path is "scalar" (portable 8 x 8 blocks in 64-bit words). */
void ts_transpose_u8(const uint8_t *src, size_t lds, int rows, int cols, uint8_t *dst,
                     size_t ldd);

/* Name of the int8 kernel path that runs now: "avx512vnni", "avx2" or "scalar". */
const char *ts_gemm_i8_isa_name(void);

#endif
