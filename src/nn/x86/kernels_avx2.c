/* kernels_avx2.c - the AVX2+FMA instance of kernels_impl.h (8 lanes, 6x16 GEMM tile). */
#define TS_VEC_BITS 256
#include "nn/x86/kernels_impl.h"
