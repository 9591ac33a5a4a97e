/* gemm.c - dispatched float32 GEMM. (Placeholder: forwards to the reference until the
 * blocked SIMD kernels land.) */
#include "nn/nn.h"

void ts_gemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb, int b_trans,
             float *C, int ldc, float beta) {
    ts_gemm_ref(M, N, K, A, lda, B, ldb, b_trans, C, ldc, beta);
}
