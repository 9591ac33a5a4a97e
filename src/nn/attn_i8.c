/* attn_i8.c - int8 attention products (attn_i8.h): quantisation into the packed layout, the
 * portable product and the selection of the AVX-512 VNNI one (x86/attn_i8_avx512.c). */
#include "nn/attn_i8.h"
#include "nn/gemm_i8_isa.h"
#include "nn/nn.h"

#include <string.h>

void ts_i8pk_gemm_avx512vnni(int M, int N, int K, const uint8_t *A, int lda, int a_zp,
                             const int8_t *Bp, const int32_t *bsum, int32_t *C, int ldc);

static int use_vnni(void) {
    static int has = -1;
    if (has < 0) {
        __builtin_cpu_init();
        has = __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
              __builtin_cpu_supports("avx512f");
    }
    return has && !strcmp(ts_nn_isa_name(), "avx512");
}

const char *ts_i8pk_isa_name(void) {
    return use_vnni() ? "avx512vnni" : "scalar";
}

/* The quantiser row function is the int8 GEMM's (vectorised on x86). */
ts_i8pk_kernels ts_i8pk_get(void) {
    const char *isa = ts_nn_isa_name();
    const int vnni = use_vnni();
    const ts_i8_isa *t = !strcmp(isa, "avx512") ? (vnni ? &ts_i8_isa_avx512vnni : &ts_i8_isa_avx2)
                         : !strcmp(isa, "avx2") ? &ts_i8_isa_avx2
                                                : &ts_i8_isa_scalar;
    ts_i8pk_kernels k = {t->quant_row, vnni ? ts_i8pk_gemm_avx512vnni : ts_i8pk_gemm_scalar,
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
    memset(Bp, 0, ts_i8pk_bytes(N, K));
    for (int n = 0; n < N; n++) {
        for (int k0 = 0; k0 < K; k0 += 4096) { /* K is small here (32); chunks keep it general */
            int kc = K - k0 < 4096 ? K - k0 : 4096;
            kn->quant_row(X + (size_t)n * ldx + k0, kc, step, 128, -127, 127, row);
            for (int k = 0; k < kc; k++) {
                int kk = k0 + k;
                Bp[((size_t)(kk / 4) * Np + n) * 4 + kk % 4] = (int8_t)(row[k] - 128);
            }
        }
        int32_t s = 0;
        for (int g = 0; g < Kp / 4; g++)
            for (int e = 0; e < 4; e++) s += Bp[((size_t)g * Np + n) * 4 + e];
        bsum[n] = s;
    }
    for (int n = N; n < Np; n++) bsum[n] = 0;
}

void ts_i8pk_quant_cols(const ts_i8pk_kernels *kn, const float *X, int ldx, int K, int N,
                        float step, int8_t *Bp, int32_t *bsum) {
    ts_i8pk_kernels tmp;
    kn = resolve(kn, &tmp);
    const int Np = ts_i8pk_np(N);
    uint8_t row[4096];
    memset(Bp, 0, ts_i8pk_bytes(N, K));
    for (int n = 0; n < Np; n++) bsum[n] = 0;
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
