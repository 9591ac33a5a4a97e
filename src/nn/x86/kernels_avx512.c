/* kernels_avx512.c - the AVX-512 instance of kernels_impl.h (16 lanes, 12x32 GEMM tile). */
#define TS_VEC_BITS 512
#include "nn/x86/kernels_impl.h"
