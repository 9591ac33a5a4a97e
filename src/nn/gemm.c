/* gemm.c - the packed, cache-blocked, threaded float32 GEMM behind ts_gemm, ts_gemm_ex,
 * ts_linear and ts_conv3x3_nhwc.
 *
 * Blocking (BLIS-style): op(B) is packed once per call (columns [jc, jc+nc), all of K) into
 * nr-wide slivers [kc][nr]; the output is cut into tasks of mc rows x ntc columns run by
 * ts_parallel_for; a task packs its A rows per K block into mr-tall slivers [kc][mr] (on its
 * stack) and runs the ISA's mr x nr micro-kernel with the B sliver hot in L1 and the A block
 * in L2. The epilogue (bias, GELU) is applied to each tile right after its last K block,
 * while it is still in cache. The A packer can gather an im2col row on the fly, which is how
 * the 3x3 convolutions run without an im2col buffer. */
#include "nn/nn.h"
#include "nn/nn_isa.h"
#include "core.h"
#include "threads.h"

#include <string.h>

#define KC_MAX      256            /* K block: B sliver kc x 32 floats = 32 KiB */
#define MC_MAX      160            /* rows per task (multiple of mr) */
#define BP_MAX      (1 << 20)      /* packed-B floats per column block (4 MiB) */
#define PAR_MIN_MAC (1 << 20)      /* below this many multiply-adds, stay on one thread */

/* Where A's rows come from: a plain matrix, or im2col of an NHWC image for a 3x3 conv. */
typedef struct {
    const float *A;
    int lda;
    const float *x; /* conv: x[H][W][Ci] */
    int H, W, Ci, stride, Wo;
} a_src;

typedef struct {
    const ts_nn_isa *isa;
    a_src a;
    int M, N, K;
    int kcb, nkb; /* K block size and count */
    const float *Bp;
    int jc, nc, ncp; /* column block and its padded width */
    float *C;
    int ldc, acc0;
    const float *bias;
    int act;
    int mc, ntc, n_mt, n_nt;
} gemm_job;

/* ---- packing ---------------------------------------------------------------------------- */

/* Ap[k][r] = A[i0 + r][p0 + k] for r < mv, zero rows below. */
static void pack_a(const a_src *s, int i0, int mv, int p0, int kc, int mr, float *Ap) {
    if (s->A) { /* k outer: contiguous writes, mr row streams read in step */
        const float *rows[TS_GEMM_MR_MAX];
        for (int r = 0; r < mv; r++) rows[r] = s->A + (size_t)(i0 + r) * s->lda + p0;
        for (int k = 0; k < kc; k++) {
            float *d = Ap + (size_t)k * mr;
            int r = 0;
            for (; r < mv; r++) d[r] = rows[r][k];
            for (; r < mr; r++) d[r] = 0.0f;
        }
        return;
    }
    for (int r = 0; r < mr; r++) {
        float *dst = Ap + r;
        if (r >= mv) {
            for (int k = 0; k < kc; k++) dst[(size_t)k * mr] = 0.0f;
            continue;
        }
        /* im2col row of output pixel (oy, ox): columns (ky, kx, ci) */
        int m = i0 + r;
        int oy = m / s->Wo, ox = m % s->Wo;
        int p = p0, pend = p0 + kc;
        while (p < pend) {
            int tap = p / s->Ci, ci = p % s->Ci;
            int run = TS_MIN(s->Ci - ci, pend - p);
            int iy = oy * s->stride - 1 + tap / 3, ix = ox * s->stride - 1 + tap % 3;
            float *d = dst + (size_t)(p - p0) * mr;
            if (iy < 0 || iy >= s->H || ix < 0 || ix >= s->W) {
                for (int j = 0; j < run; j++) d[(size_t)j * mr] = 0.0f;
            } else {
                const float *src = s->x + ((size_t)iy * s->W + ix) * s->Ci + ci;
                for (int j = 0; j < run; j++) d[(size_t)j * mr] = src[j];
            }
            p += run;
        }
    }
}

/* Packs op(B)[0..K)[jc..jc+nc) as, per K block, nr-wide slivers [kc][nr] (zero padded). */
static void pack_b(const gemm_job *g, const float *B, int ldb, int b_trans, float *Bp) {
    int nr = g->isa->nr;
    for (int pb = 0; pb < g->nkb; pb++) {
        int p0 = pb * g->kcb, kc = TS_MIN(g->kcb, g->K - p0);
        float *base = Bp + (size_t)p0 * g->ncp;
        for (int j = 0; j * nr < g->nc; j++) {
            float *d = base + (size_t)j * nr * kc;
            int n0 = g->jc + j * nr, nv = TS_MIN(nr, g->jc + g->nc - n0);
            if (!b_trans) {
                for (int k = 0; k < kc; k++) {
                    const float *src = B + (size_t)(p0 + k) * ldb + n0;
                    float *dk = d + (size_t)k * nr;
                    memcpy(dk, src, sizeof(float) * nv);
                    for (int r = nv; r < nr; r++) dk[r] = 0.0f;
                }
            } else {
                for (int r = 0; r < nr; r++) {
                    if (r < nv) {
                        const float *src = B + (size_t)(n0 + r) * ldb + p0;
                        for (int k = 0; k < kc; k++) d[(size_t)k * nr + r] = src[k];
                    } else {
                        for (int k = 0; k < kc; k++) d[(size_t)k * nr + r] = 0.0f;
                    }
                }
            }
        }
    }
}

/* ---- tasks ------------------------------------------------------------------------------ */

static void gemm_task(void *ctx, int t, int tid) {
    (void)tid;
    const gemm_job *g = ctx;
    const ts_nn_isa *isa = g->isa;
    const int mr = isa->mr, nr = isa->nr;
    _Alignas(64) float Ap[MC_MAX * KC_MAX];
    _Alignas(64) float tile[TS_GEMM_MR_MAX * TS_GEMM_NR_MAX];
    int mi = t / g->n_nt, ni = t % g->n_nt;
    int i0 = mi * g->mc, mrows = TS_MIN(g->mc, g->M - i0);
    int c0 = ni * g->ntc, c1 = TS_MIN(g->nc, c0 + g->ntc); /* relative to jc */
    int n_sl = (mrows + mr - 1) / mr;
    for (int pb = 0; pb < g->nkb; pb++) {
        int p0 = pb * g->kcb, kc = TS_MIN(g->kcb, g->K - p0);
        int acc = pb > 0 || g->acc0, last = pb == g->nkb - 1;
        for (int s = 0; s < n_sl; s++)
            pack_a(&g->a, i0 + s * mr, TS_MIN(mr, mrows - s * mr), p0, kc, mr,
                   Ap + (size_t)s * mr * kc);
        for (int col = c0; col < c1; col += nr) {
            int n0 = g->jc + col, nv = TS_MIN(nr, g->jc + g->nc - n0);
            const float *bs = g->Bp + (size_t)p0 * g->ncp + (size_t)col * kc;
            const float *bias = g->bias ? g->bias + n0 : NULL;
            for (int s = 0; s < n_sl; s++) {
                int m0 = i0 + s * mr, mv = TS_MIN(mr, mrows - s * mr);
                float *c = g->C + (size_t)m0 * g->ldc + n0;
                const float *as = Ap + (size_t)s * mr * kc;
                if (mv == mr && nv == nr) {
                    isa->ukernel(kc, as, bs, c, g->ldc, acc);
                } else {
                    isa->ukernel(kc, as, bs, tile, nr, 0);
                    for (int r = 0; r < mv; r++) {
                        float *cr = c + (size_t)r * g->ldc;
                        const float *tr = tile + r * nr;
                        if (acc)
                            for (int q = 0; q < nv; q++) cr[q] += tr[q];
                        else
                            for (int q = 0; q < nv; q++) cr[q] = tr[q];
                    }
                }
                if (last && (bias || g->act))
                    for (int r = 0; r < mv; r++)
                        isa->bias_act(c + (size_t)r * g->ldc, bias, nv, g->act);
            }
        }
    }
}

/* Grow-only per-thread buffer for packed B (64-byte aligned). */
static _Thread_local float *tl_bp;
static _Thread_local size_t tl_bp_cap;

static float *bp_buffer(size_t n) {
    if (n > tl_bp_cap) {
        ts_free_aligned(tl_bp);
        tl_bp = ts_malloc_aligned(n * sizeof(float));
        tl_bp_cap = tl_bp ? n : 0;
    }
    return tl_bp;
}

/* Returns 0, or TINYSAM_E_NOMEM (nothing computed) when the packing buffer is unavailable. */
static int gemm_run(const a_src *a, int M, int N, int K, const float *B, int ldb, int b_trans,
                    float *C, int ldc, float beta, const float *bias, int act) {
    const ts_nn_isa *isa = ts_nn_isa_get();
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) { /* C = act(beta*C + bias) */
        for (int m = 0; m < M; m++) {
            float *cr = C + (size_t)m * ldc;
            if (beta == 0.0f) memset(cr, 0, sizeof(float) * N);
            isa->bias_act(cr, bias, N, act);
        }
        return 0;
    }
    gemm_job g = {.isa = isa, .a = *a, .M = M, .N = N, .K = K, .C = C, .ldc = ldc,
                  .acc0 = beta != 0.0f, .bias = bias, .act = act};
    const int mr = isa->mr, nr = isa->nr;
    g.nkb = (K + KC_MAX - 1) / KC_MAX;
    g.kcb = (K + g.nkb - 1) / g.nkb;
    int nc_max = TS_MAX(nr, BP_MAX / K / nr * nr);
    int nthreads = ts_num_threads();
    double mac = (double)M * N * K;
    int par = nthreads > 1 && mac >= PAR_MIN_MAC;
    g.mc = TS_MIN(MC_MAX / mr * mr, (M + mr - 1) / mr * mr);
    if (par) { /* enough row tasks to balance; smaller mc for mid-sized M */
        int want = 4 * nthreads;
        int rows_per = (M + want - 1) / want;
        rows_per = (rows_per + mr - 1) / mr * mr;
        if (rows_per >= 4 * mr && rows_per < g.mc) g.mc = rows_per;
    }
    g.n_mt = (M + g.mc - 1) / g.mc;
    for (int jc = 0; jc < N; jc += nc_max) {
        g.jc = jc;
        g.nc = TS_MIN(nc_max, N - jc);
        g.ncp = (g.nc + nr - 1) / nr * nr;
        float *Bp = bp_buffer((size_t)K * g.ncp);
        if (!Bp) return TINYSAM_E_NOMEM;
        pack_b(&g, B, ldb, b_trans, Bp);
        g.Bp = Bp;
        g.ntc = g.ncp;
        g.n_nt = 1;
        if (par && g.n_mt < 4 * nthreads) { /* few row tasks: split the columns too */
            int want = (4 * nthreads + g.n_mt - 1) / g.n_mt;
            int sl = g.ncp / nr;
            int per = TS_MAX(1, (sl + want - 1) / want);
            g.ntc = per * nr;
            g.n_nt = (sl + per - 1) / per;
        }
        int n_tasks = g.n_mt * g.n_nt;
        if (par && n_tasks > 1)
            ts_parallel_for(n_tasks, gemm_task, &g);
        else
            for (int t = 0; t < n_tasks; t++) gemm_task(&g, t, 0);
    }
    return 0;
}

/* ---- public entry points ------------------------------------------------------------- */

void ts_gemm_ex(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                int b_trans, float *C, int ldc, float beta, const float *bias, int act) {
    a_src a = {.A = A, .lda = lda};
    if (gemm_run(&a, M, N, K, B, ldb, b_trans, C, ldc, beta, bias, act) == 0) return;
    /* out of memory for packing: the unpacked reference still gives the right answer */
    ts_gemm_ref(M, N, K, A, lda, B, ldb, b_trans, C, ldc, beta);
    const ts_nn_isa *isa = ts_nn_isa_get();
    if (bias || act)
        for (int m = 0; m < M; m++) isa->bias_act(C + (size_t)m * ldc, bias, N, act);
}

void ts_gemm(int M, int N, int K, const float *A, int lda, const float *B, int ldb, int b_trans,
             float *C, int ldc, float beta) {
    ts_gemm_ex(M, N, K, A, lda, B, ldb, b_trans, C, ldc, beta, NULL, TS_ACT_NONE);
}

void ts_linear(const float *x, int M, int K, const float *W, const float *bias, int N, float *y) {
    ts_gemm_ex(M, N, K, x, K, W, K, 1, y, N, 0.0f, bias, TS_ACT_NONE);
}

void ts_conv3x3_nhwc(const float *x, int H, int W, int Ci, int stride, const float *w,
                     const float *bias, int Co, int act, float *y) {
    int Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1;
    a_src a = {.x = x, .H = H, .W = W, .Ci = Ci, .stride = stride, .Wo = Wo};
    if (gemm_run(&a, Ho * Wo, Co, 9 * Ci, w, 9 * Ci, 1, y, Co, 0.0f, bias, act) == 0) return;
    ts_conv3x3_nhwc_ref(x, H, W, Ci, stride, w, bias, Co, act, y);
}
