/* gemm.c - the packed, cache-blocked, threaded float32 GEMM behind ts_gemm, ts_gemm_ex,
 * ts_linear and ts_conv3x3_nhwc.
 *
 * Blocking (BLIS-style): op(B) is packed into nr-wide slivers [kc][nr] per K block, either once
 * at load (ts_wpack: the weights of a model) or per call (columns [jc, jc+nc), all of K); the
 * output is cut into tasks of mc rows x ntc columns run by ts_parallel_for. A plain A is read
 * in place by the micro-kernel (ukernel_da: no packing); an im2col A (3x3 convolutions, no
 * im2col buffer) and partial row panels are packed per K block into mr-tall slivers [kc][mr]
 * on the task's stack. The epilogue (bias, GELU) is applied to each tile right after its last
 * K block, while it is still in cache. The *_serial entry points run on the calling thread
 * (for small GEMMs inside a task of an outer ts_parallel_for). */
#include "nn/nn.h"
#include "nn/nn_isa.h"
#include "core.h"
#include "threads.h"

#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#define KC_MAX      256            /* K block: B sliver kc x 32 floats = 32 KiB */
#define MC_MAX      160            /* rows per task (multiple of mr) */
#define BP_MAX      (1 << 20)      /* packed-B floats per column block (4 MiB) */
#define PAR_MIN_MAC (1 << 20)      /* below this many multiply-adds, stay on one thread */
#define PACK_PAR_MIN (1 << 18)     /* B floats from which the packing is spread over the pool */
#define BD_MAX_M    96             /* up to this many rows of A, a plain B is read in place */

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
    const float *Bd; /* or B read in place (row k at Bd + k*ldbd), Bp then unused */
    int ldbd;
    int jc, nc, ncp; /* column block and its padded width */
    float *C;
    int ldc, acc0;
    const float *bias;
    int act;
    int mc, ntc, n_mt, n_nt;
} gemm_job;

/* Weights op(B) = W^T (W stored N x K, ldw) packed once for one ISA's nr (see ts_wpack_new).
 * The raw W is kept for a GEMM run under another ISA (tests switch ISAs between passes). */
struct ts_wpack {
    const ts_nn_isa *isa;
    const float *W;
    int ldw, N, K, kcb, nkb, ncp;
    float *data; /* per K block p0: slivers j at data + p0*ncp + j*nr*kc */
    struct wpack_store *store; /* data lies in a batch's shared block (else owned) */
    int borrowed;              /* data lies in a pre-packed image (read-only): not ours */
};

/* The pack layout's version: bump it whenever pack_b_blocks, k_blocks or the slicing of a
 * batch's block changes, so that images written before are packed again at load. */
#define WPACK_LAYOUT 1

/* A model load's packs in one block (ts_wpack_batch_begin/end): one allocation instead of
 * hundreds, filled in parallel; freed with its last pack. */
typedef struct wpack_store {
    atomic_int refs;
    void *mem;
} wpack_store;

struct ts_wpack_batch {
    ts_wpack **p;
    int n, cap, failed;
    struct ts_wpack_batch *outer;
    ts_wpack_image *image;       /* packs to take in place of packing, if they match */
    ts_wpack ***keep;            /* where ts_wpack_batch_end hands over the list, or NULL */
    int *keep_n;
};

static _Thread_local ts_wpack_batch *g_batch; /* the open batch of this thread, if any */

/* K blocks of at most KC_MAX, as even as possible (the pack layout depends only on K, and on
 * Ci for a 3x3 convolution: there a block stays inside one kernel row ky, 3*Ci long, or one
 * tap, Ci long, so that interior pixels read their block in place, see conv_rows). */
static void k_blocks(int K, int conv_ci, int *kcb, int *nkb) {
    int seg = conv_ci >= 22 && 3 * conv_ci <= KC_MAX ? 3 * conv_ci
              : conv_ci >= 64 && conv_ci <= KC_MAX  ? conv_ci
                                                    : 0;
    if (seg && K == 9 * conv_ci) {
        *kcb = seg;
        *nkb = K / seg;
        return;
    }
    *nkb = (K + KC_MAX - 1) / KC_MAX;
    *kcb = (K + *nkb - 1) / *nkb;
}

/* For a 3x3 convolution's im2col A and a K block [p0, p0 + kc) inside one kernel row ky:
 * when the panel's mv pixels from m0 lie in one output row and all their taps of the block are
 * inside the image, the panel is a strided matrix in x (row r at + r*lda, k contiguous):
 * returns its address, else NULL (the panel is packed). */
static const float *conv_rows(const a_src *s, int m0, int mv, int p0, int kc, int *lda) {
    int seg = 3 * s->Ci, ky = p0 / seg, q0 = p0 - ky * seg;
    int oy = m0 / s->Wo, ox0 = m0 % s->Wo;
    if (q0 + kc > seg || ox0 + mv > s->Wo) return NULL;
    int iy = oy * s->stride - 1 + ky;
    int ixa = ox0 * s->stride - 1 + q0 / s->Ci;
    int ixb = (ox0 + mv - 1) * s->stride - 1 + (q0 + kc - 1) / s->Ci;
    if (iy < 0 || iy >= s->H || ixa < 0 || ixb >= s->W) return NULL;
    *lda = s->stride * s->Ci;
    return s->x + ((ptrdiff_t)iy * s->W + ox0 * s->stride - 1) * s->Ci + q0;
}

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
    /* the block's first tap and channel are the same for every row: no division per run */
    const int Ci = s->Ci, tap0 = p0 / Ci, ci0 = p0 - tap0 * Ci, pend = p0 + kc;
    for (int r = 0; r < mr; r++) {
        float *dst = Ap + r;
        if (r >= mv) {
            for (int k = 0; k < kc; k++) dst[(size_t)k * mr] = 0.0f;
            continue;
        }
        /* im2col row of output pixel (oy, ox): columns (ky, kx, ci) */
        int m = i0 + r;
        int oy = m / s->Wo, ox = m % s->Wo;
        int ix0 = ox * s->stride - 1;
        int p = p0, tap = tap0, ci = ci0;
        while (p < pend) {
            int ky = tap / 3, kx = tap - 3 * ky, iy = oy * s->stride - 1 + ky, ix = ix0 + kx;
            int run = TS_MIN(Ci - ci, pend - p), taps = 1;
            /* a whole kernel row inside the image: its 3 pixels are 3*Ci contiguous floats */
            if (kx == 0 && ci == 0 && p + 3 * Ci <= pend && ix0 >= 0 && ix0 + 2 < s->W) {
                run = 3 * Ci;
                taps = 3;
            }
            float *d = dst + (size_t)(p - p0) * mr;
            if (iy < 0 || iy >= s->H || ix < 0 || ix >= s->W) {
                for (int j = 0; j < run; j++) d[(size_t)j * mr] = 0.0f;
            } else {
                const float *src = s->x + ((size_t)iy * s->W + ix) * Ci + ci;
                for (int j = 0; j < run; j++) d[(size_t)j * mr] = src[j];
            }
            p += run;
            tap += taps;
            ci = 0;
        }
    }
}

/* Packs op(B)[0..K)[jc..jc+nc) as, per K block, nr-wide slivers [kc][nr] (zero padded):
 * K blocks [pb0, pb1). */
static void pack_b_blocks(const gemm_job *g, const float *B, int ldb, int b_trans, float *Bp,
                          int pb0, int pb1) {
    int nr = g->isa->nr;
    for (int pb = pb0; pb < pb1; pb++) {
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
            } else { /* k outer: contiguous writes, nv row streams read in step */
                const float *rows[TS_GEMM_NR_MAX];
                for (int r = 0; r < nv; r++) rows[r] = B + (size_t)(n0 + r) * ldb + p0;
                for (int k = 0; k < kc; k++) {
                    float *dk = d + (size_t)k * nr;
                    int r = 0;
                    for (; r < nv; r++) dk[r] = rows[r][k];
                    for (; r < nr; r++) dk[r] = 0.0f;
                }
            }
        }
    }
}

static void pack_b(const gemm_job *g, const float *B, int ldb, int b_trans, float *Bp) {
    pack_b_blocks(g, B, ldb, b_trans, Bp, 0, g->nkb);
}

typedef struct {
    const gemm_job *g;
    const float *B;
    int ldb, b_trans;
    float *Bp;
} pack_job;

static void pack_task(void *ctx, int pb, int tid) {
    (void)tid;
    const pack_job *j = ctx;
    pack_b_blocks(j->g, j->B, j->ldb, j->b_trans, j->Bp, pb, pb + 1);
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
    const float *A = g->a.A; /* plain A: read in place, no packing */
    /* Row panels: mr rows each; with A in place, a short tail (< mr/2 rows: few accumulators,
     * latency-bound) is merged with the panel before it and the pair split evenly. */
    int pm0[MC_MAX / 4 + 2], pmv[MC_MAX / 4 + 2];
    for (int s = 0; s < n_sl; s++) {
        pm0[s] = s * mr;
        pmv[s] = TS_MIN(mr, mrows - s * mr);
    }
    if (A && n_sl >= 2 && pmv[n_sl - 1] < mr / 2) {
        int both = mr + pmv[n_sl - 1];
        pmv[n_sl - 2] = (both + 1) / 2;
        pmv[n_sl - 1] = both / 2;
        pm0[n_sl - 1] = pm0[n_sl - 2] + pmv[n_sl - 2];
    }
    for (int pb = 0; pb < g->nkb; pb++) {
        int p0 = pb * g->kcb, kc = TS_MIN(g->kcb, g->K - p0);
        int acc = pb > 0 || g->acc0, last = pb == g->nkb - 1;
        const float *cad[MC_MAX / 4 + 2]; /* conv: panels read in place, or NULL */
        int clda[MC_MAX / 4 + 2];
        for (int s = 0; s < n_sl && !A; s++) {
            cad[s] = conv_rows(&g->a, i0 + pm0[s], pmv[s], p0, kc, &clda[s]);
            if (!cad[s]) pack_a(&g->a, i0 + pm0[s], pmv[s], p0, kc, mr, Ap + (size_t)s * mr * kc);
        }
        for (int col = c0; col < c1; col += nr) {
            int n0 = g->jc + col, nv = TS_MIN(nr, g->jc + g->nc - n0);
            const float *bs = g->Bd ? g->Bd + (size_t)p0 * g->ldbd + n0
                                    : g->Bp + (size_t)p0 * g->ncp + (size_t)col * kc;
            const int ldb = g->Bd ? g->ldbd : nr;
            const float *bias = g->bias ? g->bias + n0 : NULL;
            for (int s = 0; s < n_sl; s++) {
                int m0 = i0 + pm0[s], mv = pmv[s];
                float *c = g->C + (size_t)m0 * g->ldc + n0;
                const float *as = Ap + (size_t)s * mr * kc;
                const float *ad = A ? A + (size_t)m0 * g->a.lda + p0 : cad[s];
                int lda = A ? g->a.lda : clda[s];
                if (ad && nv == nr) {
                    isa->ukernel_da_rows(mv, kc, ad, lda, bs, ldb, c, g->ldc, acc);
                } else if (mv == mr && nv == nr) {
                    isa->ukernel(kc, as, bs, c, g->ldc, acc);
                } else {
                    if (ad)
                        isa->ukernel_da_rows(mv, kc, ad, lda, bs, ldb, tile, nr, 0);
                    else
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
                    isa->bias_act(c, g->ldc, mv, bias, nv, g->act);
            }
        }
    }
}

/* Grow-only per-thread buffer for packed B (64-byte aligned), freed when its thread exits
 * (a server calls the library from short-lived connection threads). */
static _Thread_local float *tl_bp;
static _Thread_local size_t tl_bp_cap;
static pthread_key_t bp_key;
static pthread_once_t bp_once = PTHREAD_ONCE_INIT;

static void bp_free(void *p) { ts_free_aligned(p); }
static void bp_key_init(void) { pthread_key_create(&bp_key, bp_free); }

static float *bp_buffer(size_t n) {
    if (n > tl_bp_cap) {
        ts_free_aligned(tl_bp);
        tl_bp = ts_malloc_aligned(n * sizeof(float));
        tl_bp_cap = tl_bp ? n : 0;
        pthread_once(&bp_once, bp_key_init);
        pthread_setspecific(bp_key, tl_bp);
    }
    return tl_bp;
}

/* Returns 0, or TINYSAM_E_NOMEM (nothing computed) when the packing buffer is unavailable.
 * wp: pre-packed op(B) (used when packed for the current ISA; else B is packed here). */
static int gemm_run(const a_src *a, int M, int N, int K, const float *B, int ldb, int b_trans,
                    float *C, int ldc, float beta, const float *bias, int act,
                    const ts_wpack *wp, int serial) {
    const ts_nn_isa *isa = ts_nn_isa_get();
    if (M <= 0 || N <= 0) return 0;
    if (K <= 0) { /* C = act(beta*C + bias) */
        for (int m = 0; m < M; m++) {
            float *cr = C + (size_t)m * ldc;
            if (beta == 0.0f) memset(cr, 0, sizeof(float) * N);
            isa->bias_act(cr, ldc, 1, bias, N, act);
        }
        return 0;
    }
    gemm_job g = {.isa = isa, .a = *a, .M = M, .N = N, .K = K, .C = C, .ldc = ldc,
                  .acc0 = beta != 0.0f, .bias = bias, .act = act};
    const int mr = isa->mr, nr = isa->nr;
    int use_wp = wp && wp->isa == isa;
    if (use_wp) {
        g.kcb = wp->kcb;
        g.nkb = wp->nkb;
    } else {
        k_blocks(K, a->A ? 0 : a->Ci, &g.kcb, &g.nkb);
    }
    /* Few rows of A (a handful of tokens against an image operand): packing B would cost as
     * much as the product, so whole nr-wide slivers of a plain B are read in place. */
    int b_direct = !use_wp && !b_trans && a->A && M <= BD_MAX_M && N % nr == 0;
    int nc_max = use_wp || b_direct ? N : TS_MAX(nr, BP_MAX / K / nr * nr);
    int nthreads = serial ? 1 : ts_num_threads();
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
        if (use_wp) {
            g.Bp = wp->data;
        } else if (b_direct) {
            g.Bd = B;
            g.ldbd = ldb;
        } else {
            float *Bp = bp_buffer((size_t)K * g.ncp);
            if (!Bp) return TINYSAM_E_NOMEM;
            /* a big B (a 4096-row image operand) is packed by the pool: done on the calling
             * thread alone it would leave the others idle */
            if (par && g.nkb > 1 && (size_t)K * g.nc >= PACK_PAR_MIN) {
                pack_job pj = {&g, B, ldb, b_trans, Bp};
                ts_parallel_for(g.nkb, pack_task, &pj);
            } else {
                pack_b(&g, B, ldb, b_trans, Bp);
            }
            g.Bp = Bp;
        }
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

static void gemm_any(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                     int b_trans, float *C, int ldc, float beta, const float *bias, int act,
                     const ts_wpack *wp, int serial) {
    a_src a = {.A = A, .lda = lda};
    if (gemm_run(&a, M, N, K, B, ldb, b_trans, C, ldc, beta, bias, act, wp, serial) == 0) return;
    /* out of memory for packing: the unpacked reference still gives the right answer */
    ts_gemm_ref(M, N, K, A, lda, B, ldb, b_trans, C, ldc, beta);
    const ts_nn_isa *isa = ts_nn_isa_get();
    if (bias || act)
        isa->bias_act(C, ldc, M, bias, N, act);
}

void ts_gemm_ex(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                int b_trans, float *C, int ldc, float beta, const float *bias, int act) {
    gemm_any(M, N, K, A, lda, B, ldb, b_trans, C, ldc, beta, bias, act, NULL, 0);
}

void ts_gemm_serial(int M, int N, int K, const float *A, int lda, const float *B, int ldb,
                    int b_trans, float *C, int ldc, float beta, const float *bias, int act) {
    gemm_any(M, N, K, A, lda, B, ldb, b_trans, C, ldc, beta, bias, act, NULL, 1);
}

void ts_gemm_w(int M, const float *A, int lda, const ts_wpack *W, float *C, int ldc, float beta,
               const float *bias, int act) {
    gemm_any(M, W->N, W->K, A, lda, W->W, W->ldw, 1, C, ldc, beta, bias, act, W, 0);
}

void ts_gemm_w_serial(int M, const float *A, int lda, const ts_wpack *W, float *C, int ldc,
                      float beta, const float *bias, int act) {
    gemm_any(M, W->N, W->K, A, lda, W->W, W->ldw, 1, C, ldc, beta, bias, act, W, 1);
}

static ts_wpack *wpack_new(const float *W, int N, int K, int ldw, int conv_ci) {
    if (!W || N <= 0 || K <= 0 || ldw < K) {
        ts_error(TINYSAM_E_ARG, "ts_wpack_new: bad shape %d x %d (ld %d)", N, K, ldw);
        return NULL;
    }
    ts_wpack *p = ts_calloc(1, sizeof(*p));
    if (!p) return NULL;
    const ts_nn_isa *isa = ts_nn_isa_get();
    int nr = isa->nr;
    *p = (ts_wpack){.isa = isa, .W = W, .ldw = ldw, .N = N, .K = K};
    k_blocks(K, conv_ci, &p->kcb, &p->nkb);
    p->ncp = (N + nr - 1) / nr * nr;
    ts_wpack_batch *b = g_batch;
    if (b) { /* packed by ts_wpack_batch_end */
        if (b->n == b->cap) {
            int cap = b->cap ? 2 * b->cap : 256;
            ts_wpack **q = realloc(b->p, sizeof(*q) * (size_t)cap);
            if (!q) {
                free(p);
                ts_error(TINYSAM_E_NOMEM, "out of memory");
                return NULL;
            }
            b->p = q;
            b->cap = cap;
        }
        b->p[b->n++] = p;
        return p;
    }
    p->data = ts_malloc_aligned(sizeof(float) * (size_t)K * p->ncp);
    if (!p->data) {
        free(p);
        return NULL;
    }
    ts_wpack_refresh(p);
    return p;
}

ts_wpack_batch *ts_wpack_batch_begin(void) {
    ts_wpack_batch *b = ts_calloc(1, sizeof(*b));
    if (!b) return NULL;
    b->outer = g_batch;
    g_batch = b;
    return b;
}

static void batch_pack_task(void *ctx, int i, int tid) {
    (void)tid;
    ts_wpack_refresh(((ts_wpack_batch *)ctx)->p[i]);
}

/* A pack's floats in a batch's block: its K x ncp, rounded up to 64 bytes. */
static size_t slice_floats(const ts_wpack *p) { return ((size_t)p->K * p->ncp + 15) / 16 * 16; }

void ts_wpack_layout_tag(const ts_wpack *p, char *out, size_t cap) {
    const ts_nn_isa *isa = p ? p->isa : ts_nn_isa_get();
    snprintf(out, cap, "wpack-v%d;isa=%s;nr=%d;kc=%d", WPACK_LAYOUT, isa->name, isa->nr, KC_MAX);
}

/* Points every pack of b into the image when it was made for this ISA and layout and lists
 * the very same packs (shapes, in order, sizes); returns 0 when it does not match. */
static int take_image(ts_wpack_batch *b, ts_wpack_image *im) {
    char tag[64];
    ts_wpack_layout_tag(b->n ? b->p[0] : NULL, tag, sizeof tag);
    if (!im->tag || strcmp(im->tag, tag) || im->n != b->n || !im->data ||
        ((uintptr_t)im->data & 63))
        return 0;
    size_t total = 0;
    for (int i = 0; i < b->n; i++) {
        const ts_wpack *p = b->p[i];
        int32_t d[5];
        memcpy(d, im->dir + 5 * (size_t)i, sizeof d); /* the file's bytes: maybe unaligned */
        if (d[0] != p->N || d[1] != p->K || d[2] != p->kcb || d[3] != p->nkb || d[4] != p->ncp)
            return 0;
        total += slice_floats(p);
    }
    if (total * sizeof(float) != im->bytes) return 0;
    const float *mem = im->data;
    for (int i = 0; i < b->n; i++) {
        b->p[i]->data = (float *)mem; /* read-only: ts_wpack_refresh copies first */
        b->p[i]->borrowed = 1;
        mem += slice_floats(b->p[i]);
    }
    im->used = 1;
    return 1;
}

void ts_wpack_batch_use_image(ts_wpack_batch *b, ts_wpack_image *image) {
    if (b) b->image = image;
}

void ts_wpack_batch_keep_list(ts_wpack_batch *b, ts_wpack ***packs, int *n) {
    *packs = NULL;
    *n = 0;
    if (!b) return;
    b->keep = packs;
    b->keep_n = n;
}

int ts_wpack_batch_end(ts_wpack_batch *b, int pack) {
    if (!b) return 0; /* ts_wpack_batch_begin failed: the packs were made one by one */
    g_batch = b->outer;
    int rc = 0;
    if (pack && b->n && !(b->image && take_image(b, b->image))) {
        /* (a failed load may have freed its packs already) */
        size_t total = 0;
        for (int i = 0; i < b->n; i++) total += slice_floats(b->p[i]);
        wpack_store *st = ts_calloc(1, sizeof(*st));
        float *mem = st ? ts_malloc_aligned(sizeof(float) * total) : NULL;
        if (!mem) {
            free(st);
            rc = TINYSAM_E_NOMEM;
        } else {
            st->mem = mem;
            atomic_init(&st->refs, b->n);
            for (int i = 0; i < b->n; i++) { /* 64-byte aligned slices (ncp is a multiple of nr) */
                b->p[i]->data = mem;
                b->p[i]->store = st;
                mem += slice_floats(b->p[i]);
            }
            ts_parallel_for(b->n, batch_pack_task, b);
        }
    }
    if (pack && !rc && b->keep) {
        *b->keep = b->p;
        *b->keep_n = b->n;
    } else {
        free(b->p);
    }
    free(b);
    return rc;
}

size_t ts_wpack_image_bytes(ts_wpack *const *packs, int n) {
    size_t total = 0;
    for (int i = 0; i < n; i++) total += slice_floats(packs[i]);
    return total * sizeof(float);
}

int ts_wpack_image_write(ts_wpack *const *packs, int n, int32_t *dir, float *data) {
    size_t at = 0;
    for (int i = 0; i < n; i++) {
        const ts_wpack *p = packs[i];
        if (!p->data || p->isa != packs[0]->isa) return -1;
        int32_t d[5] = {p->N, p->K, p->kcb, p->nkb, p->ncp};
        memcpy(dir + 5 * (size_t)i, d, sizeof d);
        size_t nf = (size_t)p->K * p->ncp, sf = slice_floats(p);
        memcpy(data + at, p->data, sizeof(float) * nf);
        memset(data + at + nf, 0, sizeof(float) * (sf - nf)); /* the padding, not garbage */
        at += sf;
    }
    return 0;
}

ts_wpack *ts_wpack_new(const float *W, int N, int K, int ldw) {
    return wpack_new(W, N, K, ldw, 0);
}

ts_wpack *ts_wpack_new_conv3x3(const float *w, int Co, int Ci) {
    return wpack_new(w, Co, 9 * Ci, 9 * Ci, Ci);
}

void ts_wpack_refresh(ts_wpack *p) {
    if (p->borrowed) { /* the image is read-only: from now on a private copy */
        float *mine = ts_malloc_aligned(sizeof(float) * (size_t)p->K * p->ncp);
        p->data = mine;
        p->borrowed = 0;
        if (!mine) { /* out of memory: GEMMs then pack from W per call (see gemm_run) */
            p->isa = NULL;
            return;
        }
    }
    gemm_job g = {.isa = p->isa, .N = p->N, .K = p->K, .kcb = p->kcb, .nkb = p->nkb, .jc = 0,
                  .nc = p->N, .ncp = p->ncp};
    pack_b(&g, p->W, p->ldw, 1, p->data);
}

int ts_wpack_n(const ts_wpack *p) { return p->N; }
int ts_wpack_borrowed(const ts_wpack *p) { return p->borrowed; }
int ts_wpack_k(const ts_wpack *p) { return p->K; }

void ts_wpack_free(ts_wpack *p) {
    if (!p) return;
    if (p->borrowed) ; /* the image's: nothing to free */
    else if (!p->store) ts_free_aligned(p->data);
    else if (atomic_fetch_sub(&p->store->refs, 1) == 1) {
        ts_free_aligned(p->store->mem);
        free(p->store);
    }
    free(p);
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
    if (gemm_run(&a, Ho * Wo, Co, 9 * Ci, w, 9 * Ci, 1, y, Co, 0.0f, bias, act, NULL, 0) == 0)
        return;
    ts_conv3x3_nhwc_ref(x, H, W, Ci, stride, w, bias, Co, act, y);
}

void ts_conv3x3_nhwc_w(const float *x, int H, int W, int Ci, int stride, const ts_wpack *w,
                       const float *bias, int act, float *y) {
    int Ho = (H - 1) / stride + 1, Wo = (W - 1) / stride + 1, Co = w->N;
    a_src a = {.x = x, .H = H, .W = W, .Ci = Ci, .stride = stride, .Wo = Wo};
    TS_ASSERT(w->K == 9 * Ci);
    if (gemm_run(&a, Ho * Wo, Co, 9 * Ci, w->W, w->ldw, 1, y, Co, 0.0f, bias, act, w, 0) == 0)
        return;
    ts_conv3x3_nhwc_ref(x, H, W, Ci, stride, w->W, bias, Co, act, y);
}
