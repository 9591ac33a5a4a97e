/* gemm_i8_isa.h - the table of ISA-specific int8 GEMM kernels behind gemm_i8.h (internal to
 * src/nn): x86/gemm_i8_avx512.c (AVX-512 VNNI), x86/gemm_i8_avx2.c, the portable one in
 * gemm_i8.c.
 *
 * Packed B (weights), per sliver of nr columns, all of K (padded to Kp, a multiple of 4, with
 * zeros): groups of kg consecutive k, [Kp/kg][nr][kg] elements of bsize bytes (int8 for
 * kg 4, int16 for kg 2). Sliver j starts at j * nr * Kp * bsize; the K block from p0 (a
 * multiple of 4) at p0 * nr * bsize within it.
 * Packed A (activations), per panel of mr rows and K block: [kc/kg][mr][kg] elements of
 * asize bytes (uint8 or uint16), zero padded (rows >= m, k >= K). */
#ifndef TS_GEMM_I8_ISA_H
#define TS_GEMM_I8_ISA_H

#include <stddef.h>
#include <stdint.h>

#define TS_I8_MR_MAX 16
#define TS_I8_NR_MAX 32

typedef struct {
    const char *name;
    int mr, nr;       /* register tile */
    int kg;           /* k per group: 4 or 2 */
    int bsize, asize; /* bytes per packed element of B and of A */
    int a_inplace;    /* kernel reads uint8 A in place (rs = lda, gs = 4) when K % 4 == 0 */
    /* Ap <- rows [0, m) of A (lda) and k in [0, kc) (kc <= kcp; zero up to kcp, and rows up
     * to mr) */
    void (*pack_a)(int m, int kc, int kcp, const uint8_t *A, int lda, void *Ap);
    /* C[mr][nr] (ldc) = (acc ? C : 0) + sum over ng groups of A * B, where A's row r, group g
     * is at A + r*rs + g*gs (bytes) and Bp is the sliver's K block */
    void (*kernel)(int ng, const void *A, ptrdiff_t rs, ptrdiff_t gs, const void *Bp, int32_t *C,
                   int ldc, int acc);
    /* y[i] = (float)(acc[i] - zc[i]) * comb[i] + (bias ? bias[i] : 0), i < n */
    void (*epi_row)(const int32_t *acc, const int32_t *zc, const float *comb, const float *bias,
                    int n, float *y);
    /* q[i] = clamp(round(x[i] / step), lo, hi) + zp (quant.h ts_quant_u8_range), NaN -> zp */
    void (*quant_row)(const float *x, int n, float step, int zp, int lo, int hi, uint8_t *q);
    /* c[i] = a[i] + y[i], i < n (the accumulating epilogue: a = c, or a residual) */
    void (*add_row)(float *c, const float *a, const float *y, int n);
} ts_i8_isa;

extern const ts_i8_isa ts_i8_isa_scalar;
extern const ts_i8_isa ts_i8_isa_avx2;
extern const ts_i8_isa ts_i8_isa_avx512vnni;

#endif
