/* attn_i8.c - int8 attention products (attn_i8.h): quantisation into the packed layout, the
 * portable product and the selection of the AVX-512 VNNI one (x86/attn_i8_avx512.c). */
#include "nn/attn_i8.h"
#include "nn/gemm_i8_isa.h"
#include "nn/nn.h"

#include <string.h>

void ts_i8pk_gemm_avx512vnni(int M, int N, int K, const uint8_t *A, int lda, int a_zp,
                             const int8_t *Bp, const int32_t *bsum, int32_t *C, int ldc);

/* Looked up per call (once per task of the encoder), as gemm_i8.c: no shared cache. */
static int use_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512f") && !strcmp(ts_nn_isa_name(), "avx512");
}

const char *ts_i8pk_isa_name(void) {
    return use_vnni() ? "avx512vnni" : "scalar";
}

void ts_i8pk_to_float_avx512(const int32_t *c, int n, float scale, float *y);
float ts_i8pk_row_max_avx512(const float *x, int n);

static void to_float_scalar(const int32_t *c, int n, float scale, float *y) {
    for (int i = 0; i < n; i++) y[i] = (float)c[i] * scale;
}

static float row_max_scalar(const float *x, int n) {
    float m = x[0];
    for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* The quantiser row function is the int8 GEMM's (vectorised on x86). */
ts_i8pk_kernels ts_i8pk_get(void) {
    const char *isa = ts_nn_isa_name();
    const int vnni = use_vnni();
    const ts_i8_isa *t = !strcmp(isa, "avx512") ? (vnni ? &ts_i8_isa_avx512vnni : &ts_i8_isa_avx2)
                         : !strcmp(isa, "avx2") ? &ts_i8_isa_avx2
                                                : &ts_i8_isa_scalar;
    ts_i8pk_kernels k = {t->quant_row, vnni ? ts_i8pk_gemm_avx512vnni : ts_i8pk_gemm_scalar,
                         vnni ? ts_i8pk_to_float_avx512 : to_float_scalar,
                         vnni ? ts_i8pk_row_max_avx512 : row_max_scalar,
                         vnni ? "avx512vnni" : "scalar"};
    return k;
}

static const ts_i8pk_kernels *resolve(const ts_i8pk_kernels *kn, ts_i8pk_kernels *tmp) {
    if (kn) return kn;
    *tmp = ts_i8pk_get();
    return tmp;
}

void ts_i8pk_quant_a(const ts_i8pk_kernels *kn, const float *x, int n, int n_pad, float step,
                     int zp, uint8_t *q) {
    ts_i8pk_kernels tmp;
    kn = resolve(kn, &tmp);
    kn->quant_row(x, n, step, zp, -zp, 255 - zp, q);
    if (n_pad > n) memset(q + n, 0, (size_t)(n_pad - n));
}

void ts_i8pk_quant_rows(const ts_i8pk_kernels *kn, const float *X, int ldx, int N, int K,
                        float step, int8_t *Bp, int32_t *bsum) {
    ts_i8pk_kernels tmp;
    kn = resolve(kn, &tmp);
    const int Np = ts_i8pk_np(N), Kp = ts_i8pk_kp(K);
    uint8_t row[4096];
    for (int n = 0; n < Np; n++) {
        int32_t s = 0;
        for (int k0 = 0; k0 < Kp; k0 += 4096) { /* K is small here (32); chunks keep it general */
            const int kc = Kp - k0 < 4096 ? Kp - k0 : 4096;
            const int kr = n < N ? (K - k0 < kc ? K - k0 : kc) : 0; /* real values */
            if (kr > 0) kn->quant_row(X + (size_t)n * ldx + k0, kr, step, 128, -127, 127, row);
            for (int k = 0; k < kc; k++) { /* to int8, zero padded; groups of 4 to the pack */
                int8_t v = k < kr ? (int8_t)(row[k] - 128) : 0;
                row[k] = (uint8_t)v;
                s += v;
            }
            for (int g = 0; g < kc / 4; g++)
                memcpy(Bp + ((size_t)(k0 / 4 + g) * Np + n) * 4, row + 4 * g, 4);
        }
        bsum[n] = s;
    }
}

void ts_i8pk_quant_cols(const ts_i8pk_kernels *kn, const float *X, int ldx, int K, int N,
                        float step, int8_t *Bp, int32_t *bsum) {
    ts_i8pk_kernels tmp;
    kn = resolve(kn, &tmp);
    const int Np = ts_i8pk_np(N), Kp = ts_i8pk_kp(K);
    uint8_t row[4096];
    for (int n = 0; n < Np; n++) bsum[n] = 0;
    if (N != Np) memset(Bp, 0, ts_i8pk_bytes(N, K)); /* pad columns (rare) */
    for (int k = K; k < Kp; k++) /* pad rows of k: zero codes */
        for (int n = 0; n < Np; n++) Bp[((size_t)(k / 4) * Np + n) * 4 + k % 4] = 0;
    for (int k = 0; k < K; k++) {
        for (int n0 = 0; n0 < N; n0 += 4096) {
            int nn = N - n0 < 4096 ? N - n0 : 4096;
            kn->quant_row(X + (size_t)k * ldx + n0, nn, step, 128, -127, 127, row);
            int8_t *d = Bp + ((size_t)(k / 4) * Np) * 4 + k % 4;
            for (int n = 0; n < nn; n++) {
                int8_t v = (int8_t)(row[n] - 128);
                d[(size_t)(n0 + n) * 4] = v;
                bsum[n0 + n] += v;
            }
        }
    }
}

void ts_i8pk_gemm_scalar(int M, int N, int K, const uint8_t *A, int lda, int a_zp,
                         const int8_t *Bp, const int32_t *bsum, int32_t *C, int ldc) {
    const int Np = ts_i8pk_np(N), G = ts_i8pk_kp(K) / 4;
    for (int m = 0; m < M; m++) {
        const uint8_t *a = A + (size_t)m * lda;
        for (int n = 0; n < N; n++) {
            int32_t s = 0;
            for (int g = 0; g < G; g++) {
                const int8_t *b = Bp + ((size_t)g * Np + n) * 4;
                s += a[4 * g] * b[0] + a[4 * g + 1] * b[1] + a[4 * g + 2] * b[2] +
                     a[4 * g + 3] * b[3];
            }
            C[(size_t)m * ldc + n] = s - a_zp * bsum[n];
        }
    }
}

void ts_i8pk_gemm(const ts_i8pk_kernels *kn, int M, int N, int K, const uint8_t *A, int lda,
                  int a_zp, const int8_t *Bp, const int32_t *bsum, int32_t *C, int ldc) {
    ts_i8pk_kernels tmp;
    kn = resolve(kn, &tmp);
    kn->gemm(M, N, K, A, lda, a_zp, Bp, bsum, C, ldc);
}
