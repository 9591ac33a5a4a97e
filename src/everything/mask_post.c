/* mask_post.c - one candidate mask's stability counts, box and RLE at full resolution, by
 * spans along the output columns (the RLE's order) or densely (the reference). See
 * mask_post.h. Built with -ffp-contract=off: every a*b+c below is written as fmaf or not. */
#include "everything/mask_post.h"
#include "core.h"
#include "model/transforms.h"
#include "tinysam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LOW TINYSAM_LOWRES
#define CODE_UNSURE 8 /* a span whose side of some threshold needs the exact values */

static int dense_reference;
void ts_everything_set_dense(int on) { dense_reference = on != 0; }
int ts_everything_dense(void) { return dense_reference; }

/* ------------------------------------------------------------------ geometry */

void ts_mask_geom_free(ts_mask_geom *g) {
    free(g->mem);
    memset(g, 0, sizeof *g);
}

/* Runs of outputs whose low-res window [lo, hi] is the same: stage 2 output o reads stage-2
 * inputs b0[o], b1[o], which read low-res a0[b0[o]] .. a1[b1[o]]. Returns the run count. */
static int windows(int n, const int *b0, const int *b1, const int *a0, const int *a1, int *start,
                   int *lo, int *hi) {
    int k = 0;
    for (int o = 0; o < n; o++) {
        int l = a0[b0[o]], h = a1[b1[o]];
        if (k == 0 || l != lo[k - 1] || h != hi[k - 1]) {
            start[k] = o;
            lo[k] = l;
            hi[k] = h;
            k++;
        }
    }
    start[k] = n;
    return k;
}

int ts_mask_geom_init(ts_mask_geom *g, int newh, int neww, int h, int w) {
    memset(g, 0, sizeof *g);
    if (newh <= 0 || neww <= 0 || newh > TINYSAM_INPUT_SIDE || neww > TINYSAM_INPUT_SIDE || h <= 0 ||
        w <= 0)
        return ts_error(TINYSAM_E_ARG, "mask geometry: bad sizes %dx%d -> %dx%d", neww, newh, w, h);
    size_t n = (size_t)newh + neww + h + w;
    size_t words = 4 * n + 3 * ((size_t)h + 1) + 3 * ((size_t)w + 1);
    g->mem = malloc(words * 4);
    if (!g->mem) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    int *p = g->mem;
    g->ay0 = p, p += newh, g->ay1 = p, p += newh, g->ax0 = p, p += neww, g->ax1 = p, p += neww;
    g->by0 = p, p += h, g->by1 = p, p += h, g->bx0 = p, p += w, g->bx1 = p, p += w;
    float *q = (float *)p;
    g->ayl0 = q, q += newh, g->ayl1 = q, q += newh, g->axl0 = q, q += neww, g->axl1 = q, q += neww;
    g->byl0 = q, q += h, g->byl1 = q, q += h, g->bxl0 = q, q += w, g->bxl1 = q, q += w;
    p = (int *)q;
    g->rwin_start = p, p += h + 1, g->rwin_lo = p, p += h + 1, g->rwin_hi = p, p += h + 1;
    g->cwin_start = p, p += w + 1, g->cwin_lo = p, p += w + 1, g->cwin_hi = p;
    g->newh = newh, g->neww = neww, g->h = h, g->w = w;
    ts_upsample_taps(LOW, TINYSAM_INPUT_SIDE, newh, g->ay0, g->ay1, g->ayl0, g->ayl1);
    ts_upsample_taps(LOW, TINYSAM_INPUT_SIDE, neww, g->ax0, g->ax1, g->axl0, g->axl1);
    ts_upsample_taps(newh, h, h, g->by0, g->by1, g->byl0, g->byl1);
    ts_upsample_taps(neww, w, w, g->bx0, g->bx1, g->bxl0, g->bxl1);
    g->n_rwin = windows(h, g->by0, g->by1, g->ay0, g->ay1, g->rwin_start, g->rwin_lo, g->rwin_hi);
    g->n_cwin = windows(w, g->bx0, g->bx1, g->ax0, g->ax1, g->cwin_start, g->cwin_lo, g->cwin_hi);
    /* windows are monotone: those within low-res rows r1..r2 are qlo_ge[r1] .. qhi_le[r2] */
    for (int r = 0, qq = 0; r <= LOW; r++) {
        while (qq < g->n_rwin && g->rwin_lo[qq] < r) qq++;
        g->qlo_ge[r] = qq;
    }
    for (int r = 0, qq = -1; r < LOW; r++) {
        while (qq + 1 < g->n_rwin && g->rwin_hi[qq + 1] <= r) qq++;
        g->qhi_le[r] = qq;
    }
    return 0;
}

/* ------------------------------------------------------------------ exact pixels */

/* The four passes of ts_postprocess_mask, one value at a time, same operations. */
static inline float stage1_row(const ts_mask_geom *g, const float *low, int r, int c) {
    const float *row = low + (size_t)r * LOW;
    return fmaf(row[g->ax0[c]], g->axl0[c], row[g->ax1[c]] * g->axl1[c]);
}

static inline float stage1(const ts_mask_geom *g, const float *low, int R, int c) {
    return fmaf(stage1_row(g, low, g->ay0[R], c), g->ayl0[R],
                stage1_row(g, low, g->ay1[R], c) * g->ayl1[R]);
}

static float stage2_row(const ts_mask_geom *g, const float *low, int R, int x) {
    return fmaf(stage1(g, low, R, g->bx0[x]), g->bxl0[x], stage1(g, low, R, g->bx1[x]) * g->bxl1[x]);
}

float ts_mask_pixel(const ts_mask_geom *g, const float *low, int y, int x) {
    return fmaf(stage2_row(g, low, g->by0[y], x), g->byl0[y],
                stage2_row(g, low, g->by1[y], x) * g->byl1[y]);
}

/* ------------------------------------------------------------------ dense reference */

void ts_mask_scratch_free(ts_mask_scratch *s) {
    free(s->logits);
    free(s->tmp);
    free(s->bin);
    free(s->cmin);
    free(s->cmax);
    free(s->rowmax);
    free(s->colmax);
    free(s->seg);
    free(s->seg_off);
    free(s->blk);
    free(s->m2);
    memset(s, 0, sizeof *s);
}

static int dense_buffers(const ts_mask_geom *g, ts_mask_scratch *s) {
    size_t npx = (size_t)g->w * g->h;
    if (s->dense_px < npx) {
        free(s->logits);
        free(s->tmp);
        free(s->bin);
        long long tn = ts_postprocess_scratch_size(g->newh, g->neww, g->h, g->w);
        s->logits = malloc(sizeof(float) * npx);
        s->tmp = malloc(sizeof(float) * (size_t)tn);
        s->bin = malloc(npx);
        s->dense_px = s->logits && s->tmp && s->bin ? npx : 0;
        if (!s->dense_px) return ts_error(TINYSAM_E_NOMEM, "out of memory for a full-size mask");
    }
    return 0;
}

int ts_mask_summarize_dense(const ts_mask_geom *g, const float *low, const ts_mask_frame *f,
                            ts_mask_scratch *s, ts_mask_summary *out) {
    size_t npx = (size_t)g->w * g->h;
    int rc = dense_buffers(g, s);
    if (!rc) rc = ts_postprocess_mask(low, g->newh, g->neww, g->h, g->w, s->logits, s->tmp);
    if (rc) return rc;
    long long inter = 0, uni = 0;
    const float *lg = s->logits;
    uint8_t *b = s->bin;
    for (size_t k = 0; k < npx; k++) {
        float v = lg[k];
        inter += v > f->hi;
        uni += v > f->lo;
        b[k] = v > 0.0f;
    }
    out->n_hi = inter;
    out->n_lo = uni;
    out->dense = 1;
    out->switched = 0;
    float stab = (float)inter / (float)uni;
    if (f->stab_thresh > 0.0f && !(stab >= f->stab_thresh)) { /* as the generator decides */
        out->rejected = 1;
        return 0;
    }
    ts_mask_box(b, g->w, g->h, out->box);
    return ts_rle_encode(b, g->w, g->h, f->x0, f->y0, f->W, f->H, &out->rle);
}

/* The dense computation that ts_mask_summarize switches to, same values and results as
 * ts_mask_summarize_dense: the counts first, in blocks of a fixed length (which the compiler
 * vectorises), and the byte mask, box and RLE only for a mask the stability filter keeps, so
 * that a rejected one (most lattices) costs the up-sampling and one read. */
#define COUNT_BLOCK 1024
static int summarize_switched(const ts_mask_geom *g, const float *low, const ts_mask_frame *f,
                              ts_mask_scratch *s, ts_mask_summary *out, int why) {
    size_t npx = (size_t)g->w * g->h, k0 = 0;
    int rc = dense_buffers(g, s);
    if (!rc) rc = ts_postprocess_mask(low, g->newh, g->neww, g->h, g->w, s->logits, s->tmp);
    if (rc) return rc;
    const float *lg = s->logits;
    out->dense = 1;
    out->switched = why;
    if (s->bytes_only) { /* ts_mask_fill: the byte mask is the answer, no counts */
        uint8_t *b = s->bin;
        for (size_t k = 0; k < npx; k++) b[k] = lg[k] > 0.0f;
        return 0;
    }
    const float lo = f->lo, hi = f->hi;
    long long inter = 0, uni = 0;
    for (; k0 + COUNT_BLOCK <= npx; k0 += COUNT_BLOCK) {
        const float *p = lg + k0;
        int ci = 0, cu = 0;
        for (int k = 0; k < COUNT_BLOCK; k++) {
            ci += p[k] > hi;
            cu += p[k] > lo;
        }
        inter += ci;
        uni += cu;
    }
    for (; k0 < npx; k0++) {
        inter += lg[k0] > hi;
        uni += lg[k0] > lo;
    }
    out->n_hi = inter;
    out->n_lo = uni;
    float stab = (float)inter / (float)uni;
    if (f->stab_thresh > 0.0f && !(stab >= f->stab_thresh)) { /* as the generator decides */
        out->rejected = 1;
        return 0;
    }
    uint8_t *b = s->bin;
    for (size_t k = 0; k < npx; k++) b[k] = lg[k] > 0.0f;
    ts_mask_box(b, g->w, g->h, out->box);
    return ts_rle_encode(b, g->w, g->h, f->x0, f->y0, f->W, f->H, &out->rle);
}

/* ------------------------------------------------------------------ spans */

/* The summary being built, column by column in RLE order. */
typedef struct {
    ts_rle *rle;
    uint32_t run;
    int cur, err;
    long long n_lo, n_hi;
    int first, last; /* this column's first and last row with logit > 0 */
    int x0, y0, x1, y1;
} acc;

static inline void acc_run(acc *a, int v, uint32_t len) {
    if (len == 0) return; /* the encoder pushes runs only at value changes */
    if (v != a->cur) {
        a->err |= ts_rle_push(a->rle, a->run);
        a->run = 0;
        a->cur = v;
    }
    a->run += len;
}

/* A certain span: code bit k = above threshold k (lo, 0, hi). */
static inline void acc_span(acc *a, int code, int y, int len) {
    if (code & 1) a->n_lo += len;
    if (code & 4) a->n_hi += len;
    if (code & 2) {
        if (a->first < 0) a->first = y;
        a->last = y + len - 1;
    }
    acc_run(a, (code >> 1) & 1, (uint32_t)len);
}

static inline void acc_pixel(acc *a, const ts_mask_frame *f, float v, int y) {
    a->n_lo += v > f->lo;
    a->n_hi += v > f->hi;
    int b = v > 0.0f;
    if (b) {
        if (a->first < 0) a->first = y;
        a->last = y;
    }
    if (b != a->cur) {
        a->err |= ts_rle_push(a->rle, a->run);
        a->run = 0;
        a->cur = b;
    }
    a->run++;
}

/* Bound on how far float rounding can move a full-resolution logit outside the range of the
 * low-res logits it blends: four passes, each fmaf(a, l0, fl(b * l1)) with l0, l1 >= 0 and
 * l0 + l1 within 2^-24 of 1, so each adds at most 3 * 2^-24 of the largest magnitude (plus
 * subnormal rounding); 2^-19 is a margin of more than 2x over the 4 passes. */
static inline double round_bound(double mabs) { return mabs * 0x1p-19 + 0x1p-120; }

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t nc = *cap ? *cap : 1024;
    while (nc < need) nc *= 2;
    void *q = realloc(*p, nc * elem);
    if (!q) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    *p = q;
    *cap = nc;
    return 0;
}

/* The first row at or after r whose bit differs from want (rows when none). */
static int next_change(const uint64_t *m, int r, int want, int rows) {
    while (r < rows) {
        int w = r >> 6, b = r & 63;
        uint64_t x = (want ? ~m[w] : m[w]) >> b;
        if (x) {
            r += __builtin_ctzll(x);
            return r < rows ? r : rows;
        }
        r = (w + 1) << 6;
    }
    return rows;
}

/* Appends a span ending at end (merging it with the last one of the same code). */
static inline int seg_add(int *sg, int k, int end, int code) {
    if (k > 0 && sg[2 * (k - 1) + 1] == code) sg[2 * (k - 1)] = end;
    else sg[2 * k] = end, sg[2 * k + 1] = code, k++;
    return k;
}

/* The code of output rows with low-res window rows lo..hi, columns clo..chi: bit i set when
 * certainly above threshold t[i], CODE_UNSURE when some threshold is within the rounding
 * bound of the window's range. Rows outside ra..rb are below every threshold (dead). */
static int classify_window(const float *low, int lo, int hi, int clo, int chi, int ra, int rb,
                           float gabs, const double *t) {
    if (hi < ra || lo > rb) return 0;
    int a = lo < ra ? ra : lo, b = hi > rb ? rb : hi;
    float mn = low[(size_t)a * LOW + clo], mx = mn;
    for (int r = a; r <= b; r++)
        for (int c = clo; c <= chi; c++) {
            float v = low[(size_t)r * LOW + c];
            mn = v < mn ? v : mn;
            mx = v > mx ? v : mx;
        }
    double mabs = gabs;
    if (a != lo || b != hi) mn = -INFINITY; /* dead rows below every threshold */
    else mabs = fabsf(mn) > fabsf(mx) ? fabsf(mn) : fabsf(mx);
    double e = round_bound(mabs);
    if ((double)mn > t[2] + e) return 7;
    if ((double)mx < t[0] - e) return 0;
    int code = 0;
    for (int i = 0; i < 3; i++) {
        if ((double)mn > t[i] + e) code |= 1 << i;
        else if (!((double)mx < t[i] - e)) return CODE_UNSURE;
    }
    return code;
}

int ts_mask_summarize(const ts_mask_geom *g, const float *low, const ts_mask_frame *f,
                      ts_mask_scratch *s, ts_mask_summary *out) {
    if (!s->cmin) {
        s->cmin = malloc(sizeof(float) * LOW);
        s->cmax = malloc(sizeof(float) * LOW);
        s->rowmax = malloc(sizeof(float) * LOW);
        s->colmax = malloc(sizeof(float) * LOW);
        if (!s->cmin || !s->cmax || !s->rowmax || !s->colmax)
            return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    /* Rows and columns of the low-res map that only reach the output's rows / columns... */
    int rows = g->ay1[g->newh - 1] + 1, cols = g->ax1[g->neww - 1] + 1;
    float gabs = 0.0f;
    for (int c = 0; c < cols; c++) s->colmax[c] = -INFINITY;
    for (int r = 0; r < rows; r++) {
        const float *row = low + (size_t)r * LOW;
        float rm = -INFINITY;
        for (int c = 0; c < cols; c++) {
            float v = row[c];
            if (!isfinite(v)) return ts_mask_summarize_dense(g, low, f, s, out);
            rm = v > rm ? v : rm;
            s->colmax[c] = v > s->colmax[c] ? v : s->colmax[c];
            float a = fabsf(v);
            gabs = a > gabs ? a : gabs;
        }
        s->rowmax[r] = rm;
    }
    /* ...and those whose every value is certainly below the lowest threshold. */
    double dead = (double)f->lo - round_bound(gabs);
    int ra = 0, rb = rows - 1;
    while (ra < rows && s->rowmax[ra] < dead) ra++;
    while (rb >= ra && s->rowmax[rb] < dead) rb--;
    double t[3] = {f->lo, 0.0, f->hi};

    /* Pass 1: each column window's spans as (end row, code) pairs; count the unsure pixels.
     * Low-res rows whose window columns are all clearly above the highest threshold (A) or
     * below the lowest (B), by the whole map's rounding bound, are found with bit masks;
     * output rows whose windows lie in one such run are decided at once, the rest one
     * window at a time. */
    if (s->seg_off_cap < g->n_cwin + 1) {
        free(s->seg_off);
        s->seg_off = malloc(sizeof(int) * ((size_t)g->n_cwin + 1));
        s->seg_off_cap = s->seg_off ? g->n_cwin + 1 : 0;
        if (!s->seg_off) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    double thr_a = (double)f->hi + round_bound(gabs), thr_b = dead;
    uint64_t (*am)[4] = s->amask, (*bm)[4] = s->bmask;
    memset(am, 0, sizeof s->amask);
    memset(bm, 0, sizeof s->bmask);
    for (int r = 0; r < rows; r++) {
        const float *row = low + (size_t)r * LOW;
        uint64_t bit = 1ULL << (r & 63);
        for (int c = 0; c < cols; c++) {
            double v = row[c];
            if (v > thr_a) am[c][r >> 6] |= bit;
            if (v < thr_b) bm[c][r >> 6] |= bit;
        }
    }
    /* Boundary nearly everywhere (random weights' lattices): when more than a quarter of
     * the low-res 2 x 2 blocks straddle some threshold (their range is within the rounding
     * bound of it), most output pixels would be evaluated one by one, which costs more than
     * the dense pass; decide that here, before any window, from the low-res map alone. A
     * block wholly between two thresholds is certain and does not count. */
    if (!s->spans_only && rows > 1 && cols > 1) {
        double e = round_bound(gabs);
        double t0 = t[0] - e, t2 = t[2] + e;
        long long mixed = 0;
        for (int r = 0; r + 1 < rows; r++) {
            const float *p = low + (size_t)r * LOW, *q = p + LOW;
            for (int c = 0; c + 1 < cols; c++) {
                float u = p[c] < p[c + 1] ? p[c] : p[c + 1], v = q[c] < q[c + 1] ? q[c] : q[c + 1];
                float U = p[c] < p[c + 1] ? p[c + 1] : p[c], V = q[c] < q[c + 1] ? q[c + 1] : q[c];
                double mn = u < v ? u : v, mx = U < V ? V : U;
                if (mn > t2 || mx < t0) continue;
                for (int i = 0; i < 3; i++)
                    if (!(mn > t[i] + e || mx < t[i] - e)) {
                        mixed++;
                        break;
                    }
            }
        }
        if (mixed * 4 > (long long)(rows - 1) * (cols - 1))
            return summarize_switched(g, low, f, s, out, 1);
    }
    size_t nseg = 0;
    long long unsure = 0;
    for (int j = 0; j < g->n_cwin; j++) {
        s->seg_off[j] = (int)nseg;
        int clo = g->cwin_lo[j], chi = g->cwin_hi[j];
        if (grow((void **)&s->seg, &s->seg_cap, 2 * (nseg + (size_t)g->n_rwin + 1), sizeof(int)))
            return TINYSAM_E_NOMEM;
        int *sg = s->seg + 2 * nseg;
        int k = 0;
        uint64_t ar[4], br[4], ab[4];
        for (int w = 0; w < 4; w++) {
            ar[w] = am[clo][w];
            br[w] = bm[clo][w];
            for (int c = clo + 1; c <= chi; c++) ar[w] &= am[c][w], br[w] &= bm[c][w];
            ab[w] = ar[w] | br[w];
        }
        int q = 0;
        for (int r = 0; r < rows;) {
            int st = (ar[r >> 6] >> (r & 63)) & 1 ? 7 : (br[r >> 6] >> (r & 63)) & 1 ? 0 : -1;
            int r2 = st == 7 ? next_change(ar, r, 1, rows)
                   : st == 0 ? next_change(br, r, 1, rows)
                             : next_change(ab, r, 0, rows);
            if (st >= 0) {
                int qa = g->qlo_ge[r], qb = g->qhi_le[r2 - 1];
                if (qa <= qb) {
                    for (; q < qa; q++)
                        k = seg_add(sg, k, g->rwin_start[q + 1],
                                    classify_window(low, g->rwin_lo[q], g->rwin_hi[q], clo, chi, ra,
                                                    rb, gabs, t));
                    k = seg_add(sg, k, g->rwin_start[qb + 1], st);
                    q = qb + 1;
                }
            }
            r = r2;
        }
        for (; q < g->n_rwin; q++)
            k = seg_add(sg, k, g->rwin_start[q + 1],
                        classify_window(low, g->rwin_lo[q], g->rwin_hi[q], clo, chi, ra, rb, gabs,
                                        t));
        int width = g->cwin_start[j + 1] - g->cwin_start[j];
        for (int i = 0, y = 0; i < k; y = sg[2 * i], i++)
            if (sg[2 * i + 1] == CODE_UNSURE) unsure += (long long)width * (sg[2 * i] - y);
        nseg += (size_t)k;
        if (!s->spans_only && unsure * 4 > (long long)g->w * g->h) break; /* see below */
    }
    s->seg_off[g->n_cwin] = (int)nseg;
    /* Mostly boundary (e.g. random weights' lattices): the dense pass is as fast. */
    if (!s->spans_only && unsure * 4 > (long long)g->w * g->h)
        return summarize_switched(g, low, f, s, out, 2);

    /* Pass 2: the columns in RLE order. In a column window's unsure spans, the stage-1
     * values (low-res rows, then 1024-frame rows, at the window's 1024-frame columns) are
     * computed once for all its output columns; per column, the stage-2 rows; per group of
     * output rows between the same two stage-2 rows, their range decides the group's side
     * unless it is within the last blend's rounding of a threshold: only then each pixel. */
    acc a = {.rle = &out->rle, .x0 = g->w, .y0 = g->h, .x1 = -1, .y1 = -1};
    out->rle.n = 0;
    out->dense = 0;
    out->switched = 0;
    acc_run(&a, 0, (uint32_t)f->H * (uint32_t)f->x0);
    if (grow((void **)&s->m2, &s->m2_cap, (size_t)g->newh, sizeof(float))) return TINYSAM_E_NOMEM;
    for (int j = 0; j < g->n_cwin; j++) {
        const int *sg = s->seg + 2 * (size_t)s->seg_off[j];
        int k = s->seg_off[j + 1] - s->seg_off[j];
        int xs = g->cwin_start[j], xe = g->cwin_start[j + 1];
        int cA = g->bx0[xs], nc = g->bx1[xe - 1] - cA + 1;
        float *l1 = NULL, *mid = NULL, *m2 = s->m2;
        for (int i = 0, y = 0; i < k; y = sg[2 * i], i++) {
            if (sg[2 * i + 1] != CODE_UNSURE) continue;
            if (!l1) {
                if (grow((void **)&s->blk, &s->blk_cap, (size_t)(LOW + g->newh) * nc,
                         sizeof(float)))
                    return TINYSAM_E_NOMEM;
                l1 = s->blk;
                mid = l1 + (size_t)LOW * nc;
            }
            int Ra = g->by0[y], Rb = g->by1[sg[2 * i] - 1];
            for (int r = g->ay0[Ra]; r <= g->ay1[Rb]; r++)
                for (int c = 0; c < nc; c++) l1[r * nc + c] = stage1_row(g, low, r, cA + c);
            for (int R = Ra; R <= Rb; R++) {
                const float *p0 = l1 + g->ay0[R] * nc, *p1 = l1 + g->ay1[R] * nc;
                for (int c = 0; c < nc; c++)
                    mid[R * nc + c] = fmaf(p0[c], g->ayl0[R], p1[c] * g->ayl1[R]);
            }
        }
        for (int x = xs; x < xe; x++) {
            acc_run(&a, 0, (uint32_t)f->y0);
            a.first = -1;
            int c0 = g->bx0[x] - cA, c1 = g->bx1[x] - cA;
            float w0 = g->bxl0[x], w1 = g->bxl1[x];
            for (int i = 0, y = 0; i < k; y = sg[2 * i], i++) {
                int end = sg[2 * i], code = sg[2 * i + 1];
                if (code != CODE_UNSURE) {
                    acc_span(&a, code, y, end - y);
                    continue;
                }
                int Ra = g->by0[y], Rb = g->by1[end - 1];
                for (int R = Ra; R <= Rb; R++)
                    m2[R] = fmaf(mid[R * nc + c0], w0, mid[R * nc + c1] * w1);
                for (int yy = y; yy < end;) {
                    int R0 = g->by0[yy], R1 = g->by1[yy], ye = yy + 1;
                    while (ye < end && g->by0[ye] == R0 && g->by1[ye] == R1) ye++;
                    float A = m2[R0], B = m2[R1];
                    float mn = A < B ? A : B, mx = A < B ? B : A;
                    /* one blend: within 3 * 2^-24 of the larger magnitude of its range */
                    double e = (double)(fabsf(mn) > fabsf(mx) ? fabsf(mn) : fabsf(mx)) * 0x1p-21 +
                               0x1p-120;
                    int gc = 0;
                    if ((double)mn > t[2] + e) gc = 7; /* the common cases first */
                    else if (!((double)mx < t[0] - e))
                        for (int q = 0; q < 3 && gc != CODE_UNSURE; q++) {
                            if ((double)mn > t[q] + e) gc |= 1 << q;
                            else if (!((double)mx < t[q] - e)) gc = CODE_UNSURE;
                        }
                    if (gc != CODE_UNSURE) acc_span(&a, gc, yy, ye - yy);
                    else
                        for (int u = yy; u < ye; u++)
                            acc_pixel(&a, f, fmaf(A, g->byl0[u], B * g->byl1[u]), u);
                    yy = ye;
                }
            }
            if (a.first >= 0) {
                if (x < a.x0) a.x0 = x;
                a.x1 = x;
                if (a.first < a.y0) a.y0 = a.first;
                if (a.last > a.y1) a.y1 = a.last;
            }
            acc_run(&a, 0, (uint32_t)(f->H - f->y0 - g->h));
        }
    }
    acc_run(&a, 0, (uint32_t)f->H * (uint32_t)(f->W - f->x0 - g->w));
    a.err |= ts_rle_push(a.rle, a.run);
    if (a.err) return TINYSAM_E_NOMEM;
    out->n_lo = a.n_lo;
    out->n_hi = a.n_hi;
    if (a.x1 < 0) out->box[0] = out->box[1] = out->box[2] = out->box[3] = 0;
    else out->box[0] = a.x0, out->box[1] = a.y0, out->box[2] = a.x1, out->box[3] = a.y1;
    return 0;
}

/* ------------------------------------------------------------------ byte masks */

int ts_mask_fill(const ts_mask_geom *g, const float *low, ts_mask_scratch *s, uint8_t *mask) {
    ts_mask_frame f = {-1.0f, 1.0f, 0, 0, g->w, g->h, 0.0f}; /* only the 0 threshold is used */
    ts_mask_summary sm = {0};
    s->bytes_only = 1;
    int rc = ts_mask_summarize(g, low, &f, s, &sm);
    s->bytes_only = 0;
    size_t npx = (size_t)g->w * g->h, pos = 0, H = (size_t)g->h, W = (size_t)g->w;
    if (!rc && sm.dense) memcpy(mask, s->bin, npx); /* the switch made the byte mask */
    else if (!rc) {
        /* the RLE's runs of ones, column by column: neighbouring columns write the same
         * rows' cache lines, which stay cached while a run is written */
        memset(mask, 0, npx);
        for (int i = 0; i < sm.rle.n; i++) {
            size_t end = pos + sm.rle.counts[i];
            if (i & 1)
                while (pos < end) {
                    size_t x = pos / H, y = pos % H, ye = H - y < end - pos ? H : y + (end - pos);
                    uint8_t *p = mask + y * W + x;
                    for (size_t k = y; k < ye; k++, p += W) *p = 1;
                    pos += ye - y;
                }
            pos = end;
        }
    }
    ts_rle_free(&sm.rle);
    return rc;
}
