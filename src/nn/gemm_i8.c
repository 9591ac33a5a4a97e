/* gemm_i8.c - the int8 GEMM of gemm_i8.h: weight packing, the blocked and threaded driver,
 * the activation quantiser, ISA selection and the portable kernels.
 *
 * Blocking: the output is cut into tasks of mc rows x ntc columns (ts_parallel_for). A task
 * walks its rows in panels of mr; per panel and K block (KC_I8), A is read in place by the
 * micro-kernel (VNNI and portable paths, K % 4 == 0, full panel) or packed into the layout of
 * gemm_i8_isa.h; the int32 accumulators of the panel's ntc columns live in a task buffer until
 * the last K block, then the epilogue (zero-point correction, scale, bias, GELU, u8
 * requantisation) runs row by row while they are in L1. */
#include "nn/gemm_i8.h"
#include "nn/gemm_i8_isa.h"
#include "nn/nn.h"
#include "nn/nn_isa.h"
#include "quant/quant.h"
#include "core.h"
#include "threads.h"

#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define KC_I8       1024             /* K block (multiple of 4) */
#define NT_MAX      512              /* columns per task */
#define AP_BYTES    (16 * KC_I8)     /* packed A panel: mr * KC_I8 * asize */
#define PAR_MIN_MAC (1 << 20)        /* below this many multiply-adds, stay on one thread */
#define K_MAX_I8    65536            /* |acc| <= K * 255 * 128 < 2^31 */

/* ---- the portable table ----------------------------------------------------------------- */

#define SC_MR 4
#define SC_NR 16

static void sc_pack_a(int m, int kc, int kcp, const uint8_t *A, int lda, void *Ap) {
    uint8_t *d = Ap;
    for (int g = 0; g < kcp / 4; g++)
        for (int r = 0; r < SC_MR; r++)
            for (int e = 0; e < 4; e++) {
                int k = 4 * g + e;
                *d++ = r < m && k < kc ? A[(size_t)r * lda + k] : 0;
            }
}

static void sc_kernel(int ng, const void *A, ptrdiff_t rs, ptrdiff_t gs, const void *Bp,
                      int32_t *C, int ldc, int acc) {
    int32_t c[SC_MR][SC_NR] = {{0}};
    const uint8_t *a = A;
    const int8_t *b = Bp;
    for (int g = 0; g < ng; g++, a += gs, b += SC_NR * 4)
        for (int r = 0; r < SC_MR; r++) {
            const uint8_t *ar = a + r * rs;
            for (int n = 0; n < SC_NR; n++) {
                const int8_t *bn = b + n * 4;
                c[r][n] += ar[0] * bn[0] + ar[1] * bn[1] + ar[2] * bn[2] + ar[3] * bn[3];
            }
        }
    for (int r = 0; r < SC_MR; r++)
        for (int n = 0; n < SC_NR; n++)
            C[(size_t)r * ldc + n] = acc ? C[(size_t)r * ldc + n] + c[r][n] : c[r][n];
}

static void sc_epi_row(const int32_t *acc, const int32_t *zc, const float *comb,
                       const float *bias, int n, float *y) {
    for (int i = 0; i < n; i++) {
        /* wrapping subtraction: the difference is exact whenever it fits (K_MAX_I8) */
        int32_t v = (int32_t)((uint32_t)acc[i] - (uint32_t)zc[i]);
        float f = (float)v * comb[i];
        y[i] = bias ? f + bias[i] : f;
    }
}

static void sc_quant_row(const float *x, int n, float step, int zp, int lo, int hi,
                         uint8_t *q) {
    for (int i = 0; i < n; i++) q[i] = ts_quant_u8_range(x[i], step, zp, lo, hi);
}

static void sc_add_row(float *c, const float *a, const float *y, int n) {
    for (int i = 0; i < n; i++) c[i] = a[i] + y[i];
}

const ts_i8_isa ts_i8_isa_scalar = {
    .name = "scalar",
    .mr = SC_MR,
    .nr = SC_NR,
    .kg = 4,
    .bsize = 1,
    .asize = 1,
    .a_inplace = 1,
    .pack_a = sc_pack_a,
    .kernel = sc_kernel,
    .epi_row = sc_epi_row,
    .quant_row = sc_quant_row,
    .add_row = sc_add_row,
};

/* ---- selection: follows nn.h's ISA ------------------------------------------------------ */

static int has_vnni(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512f");
}

static const ts_i8_isa *i8_isa(void) {
    const char *n = ts_nn_isa_name();
    if (!strcmp(n, "avx512")) return has_vnni() ? &ts_i8_isa_avx512vnni : &ts_i8_isa_avx2;
    if (!strcmp(n, "avx2")) return &ts_i8_isa_avx2;
    return &ts_i8_isa_scalar;
}

const char *ts_gemm_i8_isa_name(void) {
    return i8_isa()->name;
}

/* ---- weights ---------------------------------------------------------------------------- */

struct ts_i8pack {
    const ts_i8_isa *isa; /* the layout of data */
    int N, K, Kp;
    const int8_t *Wq; /* N x K (for a run under another ISA): a copy, or the caller's */
    int8_t *Wq_own;   /* the copy, or NULL (ts_i8pack_new_borrowed) */
    int pending;      /* column sums and packing left to ts_i8pack_batch_end */
    float *scale;    /* [N] */
    int32_t *colsum; /* [N] */
    void *data;
};

static size_t packed_bytes(const ts_i8_isa *isa, int N, int Kp) {
    size_t ncp = (size_t)(N + isa->nr - 1) / isa->nr * isa->nr;
    return ncp * (size_t)Kp * (size_t)isa->bsize;
}

/* Per nr-column sliver j and k group g: nr columns of kg consecutive k each (zero padded),
 * int8 or int16 per the ISA's bsize. One row run per column and group, no test per byte. */
static void pack_b(const ts_i8_isa *isa, const int8_t *Wq, int N, int K, int Kp, void *out) {
    const int nr = isa->nr, kg = isa->kg, ng = Kp / kg;
    TS_ASSERT(kg <= 4);
    int8_t *d8 = out;
    int16_t *d16 = out;
    size_t o = 0;
    if (isa->bsize == 1 && kg == 4) {
        /* the common int8 layout: whole groups as 4-byte moves, padding zeroed apart
         * (run-time packs of the decoder's dynamic operands go through here per call) */
        const int kfull = K / 4;
        for (int j = 0; j * nr < N; j++) {
            const int nv = TS_MIN(nr, N - j * nr);
            int8_t *sl = d8 + (size_t)j * nr * Kp;
            if (nv < nr || kfull < ng) memset(sl, 0, (size_t)nr * Kp);
            for (int c = 0; c < nv; c++) {
                const int8_t *w = Wq + (size_t)(j * nr + c) * K;
                int8_t *d = sl + (size_t)c * 4;
                for (int g = 0; g < kfull; g++) memcpy(d + (size_t)g * nr * 4, w + 4 * g, 4);
                if (kfull < ng) memcpy(d + (size_t)kfull * nr * 4, w + 4 * kfull, (size_t)(K - 4 * kfull));
            }
        }
        return;
    }
    for (int j = 0; j * nr < N; j++)
        for (int g = 0; g < ng; g++) {
            const int k0 = g * kg, kv = TS_MAX(0, TS_MIN(kg, K - k0));
            for (int c = 0; c < nr; c++, o += (size_t)kg) {
                const int n = j * nr + c;
                int8_t v[4] = {0, 0, 0, 0}; /* kg <= 4 */
                if (n < N) memcpy(v, Wq + (size_t)n * K + k0, (size_t)kv);
                if (isa->bsize == 1)
                    memcpy(d8 + o, v, (size_t)kg);
                else
                    for (int e = 0; e < kg; e++) d16[o + (size_t)e] = v[e];
            }
        }
}

/* The open load batch of this thread (ts_i8pack_batch_begin): packs still to pack. */
typedef struct {
    ts_i8pack **p;
    int n, cap;
} i8_batch;
static _Thread_local i8_batch *g_i8_batch;

/* The column sums and the packed layout of p's codes. */
static void sum_and_pack(ts_i8pack *p) {
    p->pending = 0;
    for (int n = 0; n < p->N; n++) {
        const int8_t *w = p->Wq + (size_t)n * p->K;
        int32_t s[8] = {0}; /* eight lanes: the compiler vectorises it (integer: any order) */
        int k = 0;
        for (; k + 8 <= p->K; k += 8)
            for (int l = 0; l < 8; l++) s[l] += w[k + l];
        for (; k < p->K; k++) s[0] += w[k];
        p->colsum[n] = s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
    }
    pack_b(p->isa, p->Wq, p->N, p->K, p->Kp, p->data);
}

static void batch_pack_task(void *ctx, int i, int tid) {
    (void)tid;
    ts_i8pack *p = ((i8_batch *)ctx)->p[i];
    if (p->pending) sum_and_pack(p);
}

/* A pack of an open batch read before the batch's end (its sums): made now. */
static const ts_i8pack *ready(const ts_i8pack *p) {
    if (p->pending) sum_and_pack((ts_i8pack *)p);
    return p;
}

void ts_i8pack_batch_begin(void) {
    if (!g_i8_batch) g_i8_batch = ts_calloc(1, sizeof *g_i8_batch); /* NULL: pack one by one */
}

void ts_i8pack_batch_end(int pack) {
    i8_batch *b = g_i8_batch;
    if (!b) return;
    g_i8_batch = NULL;
    if (pack) ts_parallel_for(b->n, batch_pack_task, b);
    free(b->p);
    free(b);
}

static ts_i8pack *i8pack_new(const int8_t *Wq, int N, int K, int ldw, const float *w_scale,
                             int borrow) {
    if (!Wq || !w_scale || N <= 0 || K <= 0 || K > K_MAX_I8 || ldw < K || (borrow && ldw != K)) {
        ts_error(TINYSAM_E_ARG, "ts_i8pack_new: bad shape %d x %d (ld %d)", N, K, ldw);
        return NULL;
    }
    ts_i8pack *p = ts_calloc(1, sizeof(*p));
    if (!p) return NULL;
    p->isa = i8_isa();
    p->N = N;
    p->K = K;
    p->Kp = (K + 3) / 4 * 4;
    if (!borrow) p->Wq = p->Wq_own = ts_malloc((size_t)N * K);
    else p->Wq = Wq;
    p->scale = ts_malloc(sizeof(float) * N);
    p->colsum = ts_malloc(sizeof(int32_t) * N);
    p->data = ts_malloc_aligned(packed_bytes(p->isa, N, p->Kp));
    if (!p->Wq || !p->scale || !p->colsum || !p->data) {
        ts_i8pack_free(p);
        return NULL;
    }
    for (int n = 0; n < N; n++) {
        if (!borrow) memcpy(p->Wq_own + (size_t)n * K, Wq + (size_t)n * ldw, (size_t)K);
        p->scale[n] = w_scale[n];
    }
    i8_batch *b = g_i8_batch;
    if (b && b->n == b->cap) {
        int cap = b->cap ? 2 * b->cap : 128;
        ts_i8pack **q = realloc(b->p, sizeof(*q) * (size_t)cap);
        if (q) {
            b->p = q;
            b->cap = cap;
        }
    }
    p->pending = 1;
    if (b && b->n < b->cap) b->p[b->n++] = p; /* summed and packed by ts_i8pack_batch_end */
    else sum_and_pack(p);
    return p;
}

ts_i8pack *ts_i8pack_new(const int8_t *Wq, int N, int K, int ldw, const float *w_scale) {
    return i8pack_new(Wq, N, K, ldw, w_scale, 0);
}

ts_i8pack *ts_i8pack_new_borrowed(const int8_t *Wq, int N, int K, const float *w_scale) {
    return i8pack_new(Wq, N, K, K, w_scale, 1);
}

ts_i8pack *ts_i8pack_new_f32(const float *W, int N, int K, int ldw) {
    if (!W || N <= 0 || K <= 0 || ldw < K) {
        ts_error(TINYSAM_E_ARG, "ts_i8pack_new_f32: bad shape %d x %d (ld %d)", N, K, ldw);
        return NULL;
    }
    int8_t *q = ts_malloc((size_t)N * K);
    float *s = ts_malloc(sizeof(float) * N);
    ts_i8pack *p = NULL;
    if (q && s) {
        /* ts_quant_weights' codes with the ISA's quantiser (run-time packs of the decoder's
         * dynamic operands come here per call): scale max|w| / 127, codes round(w / scale) in
         * [-127, 127], as u8 with zero point 128 then shifted */
        const ts_i8_isa *isa = i8_isa();
        for (int n = 0; n < N; n++) {
            const float *w = W + (size_t)n * ldw;
            float mx = 0.0f;
            for (int k = 0; k < K; k++) {
                float a = fabsf(w[k]);
                mx = a > mx ? a : mx; /* fmaxf's result, NaN skipped */
            }
            s[n] = mx > 0.0f && isfinite(mx) ? mx / (float)TS_QW_MAX : 1.0f;
            uint8_t *u = (uint8_t *)q + (size_t)n * K;
            isa->quant_row(w, K, s[n], 128, -TS_QW_MAX, TS_QW_MAX, u);
            for (int k = 0; k < K; k++) q[(size_t)n * K + k] = (int8_t)((int)u[k] - 128);
        }
        p = ts_i8pack_new(q, N, K, K, s);
    }
    free(q);
    free(s);
    return p;
}

void ts_i8pack_free(ts_i8pack *p) {
    if (!p) return;
    free(p->Wq_own);
    free(p->scale);
    free(p->colsum);
    ts_free_aligned(p->data);
    free(p);
}

int ts_i8pack_n(const ts_i8pack *p) { return p->N; }
int ts_i8pack_k(const ts_i8pack *p) { return p->K; }
const float *ts_i8pack_scale(const ts_i8pack *p) { return p->scale; }
const int32_t *ts_i8pack_colsum(const ts_i8pack *p) { return ready(p)->colsum; }

void ts_i8pack_fold_abias(const ts_i8pack *p, float a_bias, const float *bias, float *out) {
    ready(p);
    for (int n = 0; n < p->N; n++)
        out[n] = (bias ? bias[n] : 0.0f) + a_bias * p->scale[n] * (float)p->colsum[n];
}

/* ---- the driver ------------------------------------------------------------------------- */

typedef struct {
    const ts_i8_isa *isa;
    const ts_nn_isa *nisa; /* GELU */
    const uint8_t *A;
    const float *X; /* float activations, quantised per panel and K block (A NULL) */
    int lda, ldx, M, N, K, Kp;
    int a_zp;
    float a_step;
    const uint8_t *Bp;
    const ts_i8pack *W;
    const ts_i8_out *out;
    int32_t *C32; /* raw output instead of out */
    int ldc32;
    int mc, ntc, n_mt, n_nt;
} i8_job;

static void i8_task(void *ctx, int t, int tid) {
    (void)tid;
    const i8_job *g = ctx;
    const ts_i8_isa *isa = g->isa;
    const int mr = isa->mr, nr = isa->nr, kg = isa->kg;
    _Alignas(64) uint8_t Ap[AP_BYTES];
    _Alignas(64) uint8_t Qa[TS_I8_MR_MAX * KC_I8]; /* X's panel block quantised, ld KC_I8 */
    _Alignas(64) int32_t acc[TS_I8_MR_MAX * NT_MAX];
    _Alignas(64) int32_t zc[NT_MAX];
    _Alignas(64) float comb[NT_MAX];
    _Alignas(64) float yrow[NT_MAX];
    int mi = t / g->n_nt, ni = t % g->n_nt;
    int i0 = mi * g->mc, mrows = TS_MIN(g->mc, g->M - i0);
    int c0 = ni * g->ntc, ncols = TS_MIN(g->ntc, g->N - c0);
    int ncp = (ncols + nr - 1) / nr * nr;
    const float *bias = g->out && g->out->bias ? g->out->bias + c0 : NULL;
    for (int i = 0; i < ncols; i++) {
        zc[i] = (int32_t)((uint32_t)g->a_zp * (uint32_t)g->W->colsum[c0 + i]);
        comb[i] = g->a_step * g->W->scale[c0 + i];
    }
    const size_t sliver = (size_t)nr * g->Kp * isa->bsize;
    for (int p = 0; p < mrows; p += mr) {
        int mv = TS_MIN(mr, mrows - p);
        const uint8_t *Ar = g->A ? g->A + (size_t)(i0 + p) * g->lda : NULL;
        for (int p0 = 0; p0 < g->K; p0 += KC_I8) {
            int kc = TS_MIN(KC_I8, g->K - p0), kcp = TS_MIN(KC_I8, g->Kp - p0);
            const void *a;
            ptrdiff_t rs, gs;
            if (!Ar) { /* quantise the block: rows padded to mr and k to kcp with zeros */
                for (int r = 0; r < mr; r++) {
                    uint8_t *qr = Qa + (size_t)r * KC_I8;
                    if (r < mv) {
                        isa->quant_row(g->X + (size_t)(i0 + p + r) * g->ldx + p0, kc, g->a_step,
                                       g->a_zp, -g->a_zp, 255 - g->a_zp, qr);
                        memset(qr + kc, 0, (size_t)(kcp - kc));
                    } else {
                        memset(qr, 0, (size_t)kcp);
                    }
                }
            }
            if (!Ar && isa->a_inplace) {
                a = Qa;
                rs = KC_I8;
                gs = 4;
            } else if (isa->a_inplace && g->K % 4 == 0 && mv == mr) {
                a = Ar + p0;
                rs = g->lda;
                gs = 4;
            } else if (isa->a_inplace && g->K % 4 == 0) {
                /* a partial panel: its rows copied whole (a byte-wise pack was the cost of
                 * the small-M products), the missing rows zero; read in place */
                for (int r = 0; r < mr; r++) {
                    uint8_t *qr = Qa + (size_t)r * KC_I8;
                    if (r < mv) memcpy(qr, Ar + (size_t)r * g->lda + p0, (size_t)kc);
                    else memset(qr, 0, (size_t)kc);
                }
                a = Qa;
                rs = KC_I8;
                gs = 4;
            } else {
                if (Ar)
                    isa->pack_a(mv, kc, kcp, Ar + p0, g->lda, Ap);
                else
                    isa->pack_a(mr, kcp, kcp, Qa, KC_I8, Ap);
                a = Ap;
                rs = (ptrdiff_t)kg * isa->asize;
                gs = (ptrdiff_t)mr * kg * isa->asize;
            }
            const uint8_t *bk = g->Bp + (size_t)c0 / nr * sliver + (size_t)p0 * nr * isa->bsize;
            for (int col = 0; col < ncols; col += nr, bk += sliver)
                isa->kernel(kcp / kg, a, rs, gs, bk, acc + col, ncp, p0 > 0);
        }
        for (int r = 0; r < mv; r++) {
            const int32_t *ar = acc + (size_t)r * ncp;
            size_t m = (size_t)(i0 + p + r);
            if (g->C32) {
                int32_t *cr = g->C32 + m * g->ldc32 + c0;
                for (int i = 0; i < ncols; i++)
                    cr[i] = (int32_t)((uint32_t)ar[i] - (uint32_t)zc[i]);
                continue;
            }
            const ts_i8_out *o = g->out;
            float *cr = o->C ? o->C + m * o->ldc + c0 : NULL;
            const float *res = o->res ? o->res + m * o->ldc + c0 : o->accumulate ? cr : NULL;
            float *y = cr && !res ? cr : yrow;
            isa->epi_row(ar, zc, comb, bias, ncols, y);
            if (o->act == TS_ACT_GELU) g->nisa->gelu(y, (size_t)ncols);
            if (!cr)
                isa->quant_row(y, ncols, o->out_step, o->out_zp, -o->out_zp, 255 - o->out_zp,
                               o->Cq + m * o->ldc + c0);
            else if (y != cr)
                isa->add_row(cr, res, y, ncols);
            if (cr && o->row_done) o->row_done(o->row_ctx, (int)m, cr);
        }
    }
}

static void i8_run(int M, const uint8_t *A, int lda, const float *X, int ldx, float a_step,
                   int a_zp, const ts_i8pack *W, const ts_i8_out *out, int32_t *C32, int ldc32,
                   int serial) {
    if (M <= 0) return;
    ready(W); /* a pack of a load's open batch used before its end: packed now */
    const ts_i8_isa *isa = i8_isa();
    i8_job g = {.isa = isa, .nisa = ts_nn_isa_get(), .A = A, .lda = lda, .X = X, .ldx = ldx,
                .M = M, .N = W->N, .K = W->K, .Kp = W->Kp, .a_zp = a_zp, .a_step = a_step,
                .W = W, .out = out, .C32 = C32, .ldc32 = ldc32};
    void *tmp = NULL;
    if (W->isa != isa) { /* packed under another ISA (tests switch ISAs): repack for this call */
        tmp = ts_malloc_aligned(packed_bytes(isa, W->N, W->Kp));
        if (tmp)
            pack_b(isa, W->Wq, W->N, W->K, W->Kp, tmp);
        else /* out of memory: the pack's own ISA, which this CPU has (it was chosen here) */
            g.isa = isa = W->isa;
    }
    g.Bp = tmp ? tmp : W->data;
    const int mr = isa->mr, nr = isa->nr, N = W->N;
    TS_ASSERT(!out || !out->row_done || N <= NT_MAX); /* one column task: whole rows */
    int nthreads = serial ? 1 : ts_num_threads();
    int par = nthreads > 1 && (double)M * N * W->K >= PAR_MIN_MAC;
    int n_ct = (N + NT_MAX - 1) / NT_MAX; /* column tasks, even widths */
    g.ntc = (N + n_ct - 1) / n_ct;
    g.ntc = TS_MIN((g.ntc + nr - 1) / nr * nr, NT_MAX / nr * nr);
    g.mc = TS_MIN((96 / mr) * mr, (M + mr - 1) / mr * mr);
    if (par) {
        int want = 4 * nthreads;
        int n_rt = (want + n_ct - 1) / n_ct; /* row tasks wanted */
        int rows_per = ((M + n_rt - 1) / n_rt + mr - 1) / mr * mr;
        if (rows_per < g.mc) g.mc = TS_MAX(mr, rows_per);
    }
    g.n_mt = (M + g.mc - 1) / g.mc;
    g.n_nt = (N + g.ntc - 1) / g.ntc;
    int n_tasks = g.n_mt * g.n_nt;
    if (par && n_tasks > 1)
        ts_parallel_for(n_tasks, i8_task, &g);
    else
        for (int t = 0; t < n_tasks; t++) i8_task(&g, t, 0);
    ts_free_aligned(tmp);
}

void ts_gemm_i8(int M, const uint8_t *A, int lda, float a_step, int a_zp, const ts_i8pack *W,
                const ts_i8_out *out) {
    i8_run(M, A, lda, NULL, 0, a_step, a_zp, W, out, NULL, 0, 0);
}

void ts_gemm_i8_serial(int M, const uint8_t *A, int lda, float a_step, int a_zp,
                       const ts_i8pack *W, const ts_i8_out *out) {
    i8_run(M, A, lda, NULL, 0, a_step, a_zp, W, out, NULL, 0, 1);
}

void ts_gemm_i8_f32(int M, const float *X, int ldx, float a_step, int a_zp, const ts_i8pack *W,
                    const ts_i8_out *out) {
    i8_run(M, NULL, 0, X, ldx, a_step, a_zp, W, out, NULL, 0, 0);
}

void ts_gemm_i8_f32_serial(int M, const float *X, int ldx, float a_step, int a_zp,
                           const ts_i8pack *W, const ts_i8_out *out) {
    i8_run(M, NULL, 0, X, ldx, a_step, a_zp, W, out, NULL, 0, 1);
}

void ts_gemm_i8_s32(int M, const uint8_t *A, int lda, int a_zp, const ts_i8pack *W,
                    int32_t *C32, int ldc) {
    i8_run(M, A, lda, NULL, 0, 1.0f, a_zp, W, NULL, C32, ldc, 0);
}

/* ---- activation quantisation ------------------------------------------------------------ */

typedef struct {
    const ts_i8_isa *isa;
    const float *x;
    uint8_t *q;
    int M, K, ldx, ldq, zp, lo, hi, chunks;
    float step;
} q_job;

static void q_task(void *ctx, int i, int tid) {
    (void)tid;
    const q_job *j = ctx;
    int r0 = (int)((long long)j->M * i / j->chunks),
        r1 = (int)((long long)j->M * (i + 1) / j->chunks);
    for (int r = r0; r < r1; r++)
        j->isa->quant_row(j->x + (size_t)r * j->ldx, j->K, j->step, j->zp, j->lo, j->hi,
                          j->q + (size_t)r * j->ldq);
}

void ts_quantize_u8_range(const float *x, int M, int K, int ldx, float step, int zp, int qlo,
                          int qhi, uint8_t *q, int ldq) {
    if (M <= 0 || K <= 0) return;
    q_job j = {.isa = i8_isa(), .x = x, .q = q, .M = M, .K = K, .ldx = ldx, .ldq = ldq,
               .zp = zp, .lo = qlo, .hi = qhi, .step = step, .chunks = 1};
    int nt = ts_num_threads();
    if (nt > 1 && (size_t)M * K >= (1 << 16)) j.chunks = TS_MIN(M, 4 * nt);
    if (j.chunks > 1)
        ts_parallel_for(j.chunks, q_task, &j);
    else
        q_task(&j, 0, 0);
}

void ts_quantize_u8(const float *x, int M, int K, int ldx, float step, int zp, uint8_t *q,
                    int ldq) {
    ts_quantize_u8_range(x, M, K, ldx, step, zp, -zp, 255 - zp, q, ldq);
}

/* ---- byte transpose ---------------------------------------------------------------------- */

/* 8 x 8 bytes: the three masked swaps of a recursive transpose on the rows as little-endian
 * 64-bit words (byte j of row i = element (i, j)). */
static void tr8_u8(const uint8_t *src, size_t lds, uint8_t *dst, size_t ldd) {
    uint64_t x[8], t;
    for (int i = 0; i < 8; i++) memcpy(&x[i], src + i * lds, 8);
    for (int i = 0; i < 8; i += 2) { /* 1-byte elements of 2 x 2 blocks */
        t = ((x[i] >> 8) ^ x[i + 1]) & 0x00FF00FF00FF00FFull;
        x[i + 1] ^= t;
        x[i] ^= t << 8;
    }
    for (int i = 0; i < 8; i += (i & 1) ? 3 : 1) { /* 2-byte: rows (0,2) (1,3) (4,6) (5,7) */
        t = ((x[i] >> 16) ^ x[i + 2]) & 0x0000FFFF0000FFFFull;
        x[i + 2] ^= t;
        x[i] ^= t << 16;
    }
    for (int i = 0; i < 4; i++) { /* 4-byte: rows (i, i + 4) */
        t = ((x[i] >> 32) ^ x[i + 4]) & 0x00000000FFFFFFFFull;
        x[i + 4] ^= t;
        x[i] ^= t << 32;
    }
    for (int i = 0; i < 8; i++) memcpy(dst + i * ldd, &x[i], 8);
}

#ifdef __SSE2__
#include <emmintrin.h>
/* 16 x 16 bytes: interleaves of rows, pairs, quads and octets (64 unpacks). After stage s,
 * a register holds 2^s rows for a run of columns. The loops unrolled: the arrays then live
 * in registers (rolled, -O2 kept them on the stack). */
static void tr16_u8_sse2(const uint8_t *src, size_t lds, uint8_t *dst, size_t ldd) {
    __m128i r[16], a[16], b[16], c[16];
#pragma GCC unroll 16
    for (int i = 0; i < 16; i++) r[i] = _mm_loadu_si128((const __m128i *)(src + i * lds));
#pragma GCC unroll 16
    for (int p = 0; p < 8; p++) { /* a[2p + h]: rows 2p, 2p+1, columns 8h .. 8h+7 */
        a[2 * p] = _mm_unpacklo_epi8(r[2 * p], r[2 * p + 1]);
        a[2 * p + 1] = _mm_unpackhi_epi8(r[2 * p], r[2 * p + 1]);
    }
#pragma GCC unroll 16
    for (int q = 0; q < 4; q++) /* b[4q + 2h + g]: rows 4q .. 4q+3, columns 8h + 4g .. +3 */
        for (int h = 0; h < 2; h++) {
            b[4 * q + 2 * h] = _mm_unpacklo_epi16(a[4 * q + h], a[4 * q + 2 + h]);
            b[4 * q + 2 * h + 1] = _mm_unpackhi_epi16(a[4 * q + h], a[4 * q + 2 + h]);
        }
#pragma GCC unroll 16
    for (int o = 0; o < 2; o++) /* c[8o + 2hg + e]: rows 8o .. 8o+7, columns 8h + 4g + 2e, +1 */
        for (int hg = 0; hg < 4; hg++) {
            c[8 * o + 2 * hg] = _mm_unpacklo_epi32(b[8 * o + hg], b[8 * o + 4 + hg]);
            c[8 * o + 2 * hg + 1] = _mm_unpackhi_epi32(b[8 * o + hg], b[8 * o + 4 + hg]);
        }
#pragma GCC unroll 16
    for (int k = 0; k < 8; k++) { /* columns 2k, 2k+1: all 16 rows */
        _mm_storeu_si128((__m128i *)(dst + (size_t)(2 * k) * ldd), _mm_unpacklo_epi64(c[k], c[8 + k]));
        _mm_storeu_si128((__m128i *)(dst + (size_t)(2 * k + 1) * ldd),
                         _mm_unpackhi_epi64(c[k], c[8 + k]));
    }
}
#endif

void ts_transpose_u8(const uint8_t *src, size_t lds, int rows, int cols, uint8_t *dst,
                     size_t ldd) {
    int bs = 8;
#ifdef __SSE2__
    if (i8_isa() != &ts_i8_isa_scalar) bs = 16;
#endif
    const int rows_full = rows - rows % bs, cols_full = cols - cols % bs;
    /* bands of 64 source rows, the column blocks inside: each 64-byte run of a destination row
     * is written whole while its line is in cache (the decoder's destination rows are 4 KiB
     * apart, all in one L1 set: a band of bs rows per pass thrashed it) */
    for (int r0 = 0; r0 < rows_full; r0 += 64) {
        const int r1 = TS_MIN(rows_full, r0 + 64);
        for (int c = 0; c < cols_full; c += bs)
            for (int r = r0; r < r1; r += bs) {
                const uint8_t *s = src + (size_t)r * lds + c;
                uint8_t *d = dst + (size_t)c * ldd + r;
#ifdef __SSE2__
                if (bs == 16) {
                    tr16_u8_sse2(s, lds, d, ldd);
                    continue;
                }
#endif
                tr8_u8(s, lds, d, ldd);
            }
        for (int c = cols_full; c < cols; c++)
            for (int i = r0; i < r1; i++) dst[(size_t)c * ldd + i] = src[(size_t)i * lds + c];
    }
    for (int r = rows_full; r < rows; r++)
        for (int c = 0; c < cols; c++) dst[(size_t)c * ldd + r] = src[(size_t)r * lds + c];
}

int ts_i8_check_layer_steps(const char *P, float step, float zero_point, const float *scale,
                            const float *bias, int N) {
    if (!(isfinite(step) && step > 0.0f))
        return ts_error(TINYSAM_E_FORMAT, "%s.input_step %g is not a positive number", P,
                        (double)step);
    if (!(zero_point >= 0.0f && zero_point <= 255.0f && zero_point == floorf(zero_point)))
        return ts_error(TINYSAM_E_FORMAT, "%s.input_zero_point %g is not an integer in [0, 255]",
                        P, (double)zero_point);
    for (int n = 0; n < N; n++)
        if (!(isfinite(scale[n]) && scale[n] >= 0.0f && (!bias || isfinite(bias[n]))))
            return ts_error(TINYSAM_E_FORMAT, "%s: weight_scale or bias %d is not finite", P, n);
    return 0;
}
