/* nn_isa.h - the table of ISA-specific kernels behind the dispatched nn.h entry points
 * (internal to src/nn). One table per path: x86/kernels_avx512.c, x86/kernels_avx2.c and the
 * portable one in dispatch.c. */
#ifndef TS_NN_ISA_H
#define TS_NN_ISA_H

#include <stddef.h>

#define TS_GEMM_MR_MAX 16
#define TS_GEMM_NR_MAX 32

typedef struct {
    const char *name;
    int mr, nr; /* micro-tile: mr rows x nr columns */
    /* C[mr x nr] (ldc) = (acc ? C : 0) + Ap * Bp; Ap packed [kc][mr], Bp packed [kc][nr],
     * both 64-byte aligned. */
    void (*ukernel)(int kc, const float *Ap, const float *Bp, float *C, int ldc, int acc);
    /* the same with A unpacked: row r of the mr-row panel at A + r*lda, k contiguous; and
     * row k of the nr-wide B sliver at Bp + k*ldb: ldb = nr for a packed sliver, or B read in
     * place (any ldb; unaligned) */
    void (*ukernel_da)(int kc, const float *A, int lda, const float *Bp, int ldb, float *C,
                       int ldc, int acc);
    /* ukernel_da for the first m (1..mr) rows of a panel; C rows beyond m are not touched */
    void (*ukernel_da_rows)(int m, int kc, const float *A, int lda, const float *Bp, int ldb,
                            float *C, int ldc, int acc);
    /* tile epilogue: c[r][i] = act(c[r][i] + bias[i]) for r < m, i < n (rows ldc apart);
     * bias may be NULL. */
    void (*bias_act)(float *c, int ldc, int m, const float *bias, int n, int act);
    void (*gelu)(float *x, size_t n);
    void (*layernorm)(const float *x, float *y, int M, int C, const float *w, const float *b,
                      float eps);
    void (*softmax)(float *x, int M, int N);
    /* dst[c*ldd + r] = src[r*lds + c] for r < rows, c < cols */
    void (*transpose)(const float *src, int lds, int rows, int cols, float *dst, int ldd);
    /* x[i] = x[i] * s + b[i]: a multiply then an add, rounded separately (no FMA) */
    void (*scale_add)(float *x, float s, const float *b, int n);
    /* output row oy of ts_dwconv3x3_nhwc (y points at that row) */
    void (*dwconv_row)(const float *x, int H, int W, int C, int stride, const float *w9,
                       const float *bias, int act, float *y, int oy);
    /* the same from the three input rows (rows[ky] NULL: zero padding), W wide */
    void (*dwconv_rows3)(const float *const rows[3], int W, int C, int stride, const float *w9,
                         const float *bias, int act, float *y);
} ts_nn_isa;

const ts_nn_isa *ts_nn_isa_get(void);

extern const ts_nn_isa ts_nn_isa_scalar;
extern const ts_nn_isa ts_nn_isa_avx2;
extern const ts_nn_isa ts_nn_isa_avx512;

#endif
