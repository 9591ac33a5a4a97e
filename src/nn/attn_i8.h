/* attn_i8.h - int8 attention products for the W8A8 (Q-TinySAM) encoder: q.k^T and softmax.v
 * of one window and head, as small exact-int32 products against a right operand quantised
 * straight into a packed layout.
 *
 *   A  uint8 [M][>= Kp] (lda), real = a_step * (A - a_zp)   (queries; probabilities, zp 0)
 *   B  int8 codes [N][K] of the other operand, stored packed: [Kp/4][Np][4] (Np = N rounded
 *      up to 16, Kp = K rounded up to 4, zero padded), with bsum[n] = sum_k B[n][k]
 *   C[m][n] = sum_k (A[m][k] - a_zp) * B[n][k]      (exact int32: |C| <= K * 255 * 127)
 * q.k^T: A = q codes (M queries x 32), B = k codes (N keys x 32 dims);
 * P.v:   A = probability codes (M x N keys), B = v^T codes (32 dims x N keys).
 * AVX-512 VNNI when nn.h's ISA is "avx512" and the CPU has it (vpdpbusd), else portable C
 * ("avx2" and "scalar": this product has no AVX2 kernel of its own). */
#ifndef TS_ATTN_I8_H
#define TS_ATTN_I8_H

#include <stddef.h>
#include <stdint.h>

#define TS_I8PK_NB 16 /* the packed columns' block */

static inline int ts_i8pk_np(int N) { return (N + TS_I8PK_NB - 1) / TS_I8PK_NB * TS_I8PK_NB; }
static inline int ts_i8pk_kp(int K) { return (K + 3) / 4 * 4; }
/* Bytes of a packed B of N x K. */
static inline size_t ts_i8pk_bytes(int N, int K) { return (size_t)ts_i8pk_np(N) * ts_i8pk_kp(K); }

/* The kernels of the ISA path that runs now, resolved once for a batch of calls (the calls
 * are small: per-call ISA look-ups cost more than the products). Every function below takes
 * one (NULL: resolved for that call). */
typedef struct {
    void (*quant_row)(const float *x, int n, float step, int zp, int lo, int hi, uint8_t *q);
    void (*gemm)(int M, int N, int K, const uint8_t *A, int lda, int a_zp, const int8_t *Bp,
                 const int32_t *bsum, int32_t *C, int ldc);
    /* y[i] = (float)c[i] * scale, i < n */
    void (*to_float)(const int32_t *c, int n, float scale, float *y);
    /* the largest of x[0 .. n-1] (n >= 1; no NaN expected) */
    float (*row_max)(const float *x, int n);
    const char *name;
} ts_i8pk_kernels;
ts_i8pk_kernels ts_i8pk_get(void);

/* B[n][k] = clamp(round(X[n][k] / step), -127, 127) (X[N][K], ldx), packed into Bp, bsum[n]. */
void ts_i8pk_quant_rows(const ts_i8pk_kernels *kn, const float *X, int ldx, int N, int K,
                        float step, int8_t *Bp,
                        int32_t *bsum);
/* B[n][k] = clamp(round(X[k][n] / step), -127, 127) (X[K][N], ldx: B = X^T), packed, bsum. */
void ts_i8pk_quant_cols(const ts_i8pk_kernels *kn, const float *X, int ldx, int K, int N, float step, int8_t *Bp,
                        int32_t *bsum);
/* q[i] = clamp(round(x[i] / step) + zp, 0, 255) for i < n (quant.h ts_quant_u8_zp), then
 * zeros up to n_pad (> n: the A padding a packed K needs). */
void ts_i8pk_quant_a(const ts_i8pk_kernels *kn, const float *x, int n, int n_pad, float step, int zp, uint8_t *q);
/* C[m][n] (ldc) = sum_k (A[m][k] - a_zp) * B[n][k]; A rows readable up to Kp. */
void ts_i8pk_gemm(const ts_i8pk_kernels *kn, int M, int N, int K, const uint8_t *A, int lda,
                  int a_zp, const int8_t *Bp, const int32_t *bsum, int32_t *C, int ldc);
/* The portable product (the reference path), whatever the ISA. */
void ts_i8pk_gemm_scalar(int M, int N, int K, const uint8_t *A, int lda, int a_zp,
                         const int8_t *Bp, const int32_t *bsum, int32_t *C, int ldc);
/* "avx512vnni" or "scalar": the path ts_i8pk_gemm takes now. */
const char *ts_i8pk_isa_name(void);

#endif
