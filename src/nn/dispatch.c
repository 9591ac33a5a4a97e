/* dispatch.c - picks the kernel table (AVX-512, AVX2+FMA or portable C) once, from the CPU
 * and TINYSAM_ISA, and the threaded entry points of the row/element-wise kernels. */
#include "nn/nn.h"
#include "nn/nn_isa.h"
#include "core.h"
#include "threads.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* ---- the portable table ---------------------------------------------------------------- */

#define SC_MR 4
#define SC_NR 16

static void sc_ukernel(int kc, const float *Ap, const float *Bp, float *C, int ldc, int acc) {
    float c[SC_MR][SC_NR] = {{0}};
    for (int k = 0; k < kc; k++) {
        for (int r = 0; r < SC_MR; r++)
            for (int q = 0; q < SC_NR; q++) c[r][q] += Ap[r] * Bp[q];
        Ap += SC_MR;
        Bp += SC_NR;
    }
    for (int r = 0; r < SC_MR; r++)
        for (int q = 0; q < SC_NR; q++)
            C[(size_t)r * ldc + q] = acc ? C[(size_t)r * ldc + q] + c[r][q] : c[r][q];
}

static void sc_ukernel_da(int kc, const float *A, int lda, const float *Bp, int ldb, float *C,
                          int ldc, int acc) {
    float c[SC_MR][SC_NR] = {{0}};
    for (int k = 0; k < kc; k++) {
        for (int r = 0; r < SC_MR; r++)
            for (int q = 0; q < SC_NR; q++) c[r][q] += A[(size_t)r * lda + k] * Bp[q];
        Bp += ldb;
    }
    for (int r = 0; r < SC_MR; r++)
        for (int q = 0; q < SC_NR; q++)
            C[(size_t)r * ldc + q] = acc ? C[(size_t)r * ldc + q] + c[r][q] : c[r][q];
}

static void sc_ukernel_da_rows(int m, int kc, const float *A, int lda, const float *Bp, int ldb,
                               float *C, int ldc, int acc) {
    float c[SC_MR][SC_NR] = {{0}};
    for (int k = 0; k < kc; k++) {
        for (int r = 0; r < m; r++)
            for (int q = 0; q < SC_NR; q++) c[r][q] += A[(size_t)r * lda + k] * Bp[q];
        Bp += ldb;
    }
    for (int r = 0; r < m; r++)
        for (int q = 0; q < SC_NR; q++)
            C[(size_t)r * ldc + q] = acc ? C[(size_t)r * ldc + q] + c[r][q] : c[r][q];
}

static void sc_bias_act(float *c, int ldc, int m, const float *bias, int n, int act) {
    for (int r = 0; r < m; r++, c += ldc) {
        if (bias)
            for (int i = 0; i < n; i++) c[i] += bias[i];
        if (act == TS_ACT_GELU) ts_gelu_ref(c, (size_t)n);
    }
}

static void sc_dwconv_rows3(const float *const rows[3], int W, int C, int stride,
                            const float *w9, const float *bias, int act, float *y) {
    int Wo = (W - 1) / stride + 1;
    for (int ox = 0; ox < Wo; ox++) {
        float *yo = y + (size_t)ox * C;
        for (int c = 0; c < C; c++) yo[c] = bias ? bias[c] : 0.0f;
        for (int t = 0; t < 9; t++) {
            int ix = ox * stride - 1 + t % 3;
            if (!rows[t / 3] || ix < 0 || ix >= W) continue;
            const float *xp = rows[t / 3] + (size_t)ix * C, *wp = w9 + (size_t)t * C;
            for (int c = 0; c < C; c++) yo[c] = fmaf(xp[c], wp[c], yo[c]);
        }
        if (act == TS_ACT_GELU) ts_gelu_ref(yo, (size_t)C);
    }
}

static void sc_dwconv_row(const float *x, int H, int W, int C, int stride, const float *w9,
                          const float *bias, int act, float *y, int oy) {
    const float *rows[3];
    for (int ky = 0; ky < 3; ky++) {
        int iy = oy * stride - 1 + ky;
        rows[ky] = iy >= 0 && iy < H ? x + (size_t)iy * W * C : NULL;
    }
    sc_dwconv_rows3(rows, W, C, stride, w9, bias, act, y);
}

static void sc_transpose(const float *src, int lds, int rows, int cols, float *dst, int ldd) {
    for (int r0 = 0; r0 < rows; r0 += 16) /* 16 x 16 tiles: both sides stay in cache */
        for (int c0 = 0; c0 < cols; c0 += 16) {
            int r1 = TS_MIN(rows, r0 + 16), c1 = TS_MIN(cols, c0 + 16);
            for (int c = c0; c < c1; c++)
                for (int r = r0; r < r1; r++) dst[(size_t)c * ldd + r] = src[(size_t)r * lds + c];
        }
}

static void sc_scale_add(float *x, float s, const float *b, int n) {
    for (int i = 0; i < n; i++) x[i] = x[i] * s + b[i];
}

const ts_nn_isa ts_nn_isa_scalar = {
    .name = "scalar",
    .mr = SC_MR,
    .nr = SC_NR,
    .ukernel = sc_ukernel,
    .ukernel_da = sc_ukernel_da,
    .ukernel_da_rows = sc_ukernel_da_rows,
    .bias_act = sc_bias_act,
    .gelu = ts_gelu_ref,
    .layernorm = ts_layernorm_to_ref,
    .softmax = ts_softmax_rows_ref,
    .scale_add = sc_scale_add,
    .transpose = sc_transpose,
    .dwconv_row = sc_dwconv_row,
    .dwconv_rows3 = sc_dwconv_rows3,
};

/* ---- selection -------------------------------------------------------------------------- */

static _Atomic(const ts_nn_isa *) g_isa;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static const ts_nn_isa *isa_by_name(const char *name) {
    if (!strcmp(name, "avx512")) return &ts_nn_isa_avx512;
    if (!strcmp(name, "avx2")) return &ts_nn_isa_avx2;
    if (!strcmp(name, "scalar")) return &ts_nn_isa_scalar;
    return NULL;
}

int ts_nn_isa_available(const char *name) {
    __builtin_cpu_init();
    if (!strcmp(name, "avx512"))
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("fma");
    if (!strcmp(name, "avx2"))
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return !strcmp(name, "scalar");
}

static void isa_init(void) {
    const ts_nn_isa *isa = &ts_nn_isa_scalar;
    if (ts_nn_isa_available("avx512"))
        isa = &ts_nn_isa_avx512;
    else if (ts_nn_isa_available("avx2"))
        isa = &ts_nn_isa_avx2;
    const char *env = getenv("TINYSAM_ISA");
    if (env && *env && isa_by_name(env) && ts_nn_isa_available(env)) isa = isa_by_name(env);
    atomic_store(&g_isa, isa);
}

const ts_nn_isa *ts_nn_isa_get(void) {
    pthread_once(&g_once, isa_init);
    return atomic_load_explicit(&g_isa, memory_order_relaxed);
}

const char *ts_nn_isa_name(void) {
    return ts_nn_isa_get()->name;
}

int ts_nn_set_isa(const char *name) {
    pthread_once(&g_once, isa_init);
    const ts_nn_isa *isa = name ? isa_by_name(name) : NULL;
    if (!isa) return ts_error(TINYSAM_E_ARG, "unknown ISA '%s'", name ? name : "(null)");
    if (!ts_nn_isa_available(name))
        return ts_error(TINYSAM_E_UNSUPPORTED, "this CPU lacks %s", name);
    atomic_store(&g_isa, isa);
    return 0;
}

/* ---- threaded entry points -------------------------------------------------------------- */

#define ROWS_PER_TASK_MIN 64
#define PAR_MIN_ELEMS     (1 << 16)

typedef struct {
    const ts_nn_isa *isa;
    const float *x;
    float *y;
    int M, C, N, rows, act, H, W, stride;
    const float *w, *b;
    float eps;
    size_t n;
} row_job;

static int n_chunks(size_t elems, int rows) {
    int nt = ts_num_threads();
    if (nt <= 1 || elems < PAR_MIN_ELEMS || rows < 2) return 1;
    int n = 4 * nt;
    return n > rows ? rows : n;
}

static void ln_task(void *ctx, int i, int tid) {
    (void)tid;
    const row_job *j = ctx;
    int r0 = (int)((long long)j->M * i / j->rows), r1 = (int)((long long)j->M * (i + 1) / j->rows);
    j->isa->layernorm(j->x + (size_t)r0 * j->C, j->y + (size_t)r0 * j->C, r1 - r0, j->C, j->w,
                      j->b, j->eps);
}

void ts_layernorm_to(const float *x, float *y, int M, int C, const float *w, const float *b,
                     float eps) {
    row_job j = {.isa = ts_nn_isa_get(), .x = x, .y = y, .M = M, .C = C, .w = w, .b = b,
                 .eps = eps};
    j.rows = n_chunks((size_t)M * C, M);
    ts_parallel_for(j.rows, ln_task, &j);
}

void ts_layernorm(float *x, int M, int C, const float *w, const float *b, float eps) {
    ts_layernorm_to(x, x, M, C, w, b, eps);
}

static void sm_task(void *ctx, int i, int tid) {
    (void)tid;
    const row_job *j = ctx;
    int r0 = (int)((long long)j->M * i / j->rows), r1 = (int)((long long)j->M * (i + 1) / j->rows);
    j->isa->softmax(j->y + (size_t)r0 * j->N, r1 - r0, j->N);
}

void ts_softmax_rows(float *x, int M, int N) {
    row_job j = {.isa = ts_nn_isa_get(), .y = x, .M = M, .N = N};
    j.rows = n_chunks((size_t)M * N, M);
    ts_parallel_for(j.rows, sm_task, &j);
}

static void gelu_task(void *ctx, int i, int tid) {
    (void)tid;
    const row_job *j = ctx;
    size_t a = j->n * (size_t)i / (size_t)j->rows, b = j->n * (size_t)(i + 1) / (size_t)j->rows;
    j->isa->gelu(j->y + a, b - a);
}

void ts_gelu(float *x, size_t n) {
    row_job j = {.isa = ts_nn_isa_get(), .y = x, .n = n};
    j.rows = n_chunks(n, n > (size_t)1 << 30 ? 1 << 30 : (int)n);
    ts_parallel_for(j.rows, gelu_task, &j);
}

static void dw_task(void *ctx, int oy, int tid) {
    (void)tid;
    const row_job *j = ctx;
    int Wo = (j->W - 1) / j->stride + 1;
    j->isa->dwconv_row(j->x, j->H, j->W, j->C, j->stride, j->w, j->b, j->act,
                       j->y + (size_t)oy * Wo * j->C, oy);
}

void ts_dwconv3x3_nhwc(const float *x, int H, int W, int C, int stride, const float *w9,
                       const float *bias, int act, float *y) {
    row_job j = {.isa = ts_nn_isa_get(), .x = x, .y = y, .H = H, .W = W, .C = C,
                 .stride = stride, .w = w9, .b = bias, .act = act};
    int Ho = (H - 1) / stride + 1;
    if (n_chunks((size_t)H * W * C, Ho) == 1)
        for (int oy = 0; oy < Ho; oy++) dw_task(&j, oy, 0);
    else
        ts_parallel_for(Ho, dw_task, &j);
}

/* ---- single-thread entry points (for tasks of an outer ts_parallel_for) ------------------- */

void ts_layernorm_to_serial(const float *x, float *y, int M, int C, const float *w,
                            const float *b, float eps) {
    ts_nn_isa_get()->layernorm(x, y, M, C, w, b, eps);
}

void ts_softmax_rows_serial(float *x, int M, int N) {
    ts_nn_isa_get()->softmax(x, M, N);
}

void ts_gelu_serial(float *x, size_t n) {
    ts_nn_isa_get()->gelu(x, n);
}

void ts_transpose_serial(const float *src, int lds, int rows, int cols, float *dst, int ldd) {
    ts_nn_isa_get()->transpose(src, lds, rows, cols, dst, ldd);
}

void ts_scale_add(float *x, float s, const float *b, int n) {
    ts_nn_isa_get()->scale_add(x, s, b, n);
}

void ts_dwconv3x3_nhwc_row(const float *x, int H, int W, int C, int stride, const float *w9,
                           const float *bias, int act, float *y_row, int oy) {
    ts_nn_isa_get()->dwconv_row(x, H, W, C, stride, w9, bias, act, y_row, oy);
}

void ts_dwconv3x3_nhwc_rows3(const float *const rows[3], int W, int C, int stride,
                             const float *w9, const float *bias, int act, float *y_row) {
    ts_nn_isa_get()->dwconv_rows3(rows, W, C, stride, w9, bias, act, y_row);
}
