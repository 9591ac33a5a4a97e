/* amg.c - point grids, crop boxes, RLE and NMS for segment-everything, reproducing
 * segment_anything/utils/amg.py and torchvision's nms bit for bit where the spec says so. */
#include "everything/amg.h"
#include "core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ts_point_grid(int n, double *out) {
    double off = 1.0 / (2 * n), *p = malloc(sizeof(double) * (size_t)n);
    if (!p) return;
    /* numpy.linspace(off, 1 - off, n): i*step + start, last point exactly the end */
    double step = n > 1 ? ((1.0 - off) - off) / (n - 1) : 0.0;
    for (int i = 0; i < n; i++) p[i] = n > 1 ? i * step + off : off;
    if (n > 1) p[n - 1] = 1.0 - off;
    for (int r = 0; r < n; r++)
        for (int c = 0; c < n; c++) {
            out[2 * (r * n + c)] = p[c];
            out[2 * (r * n + c) + 1] = p[r];
        }
    free(p);
}

int ts_crop_box_count(int n_layers) {
    int n = 1;
    for (int i = 0; i < n_layers; i++) n += 1 << (2 * (i + 1));
    return n;
}

int ts_crop_boxes(int w, int h, int n_layers, double overlap_ratio, ts_crop_box *out) {
    int k = 0;
    out[k++] = (ts_crop_box){0, 0, w, h, 0};
    int short_side = TS_MIN(h, w);
    for (int i = 0; i < n_layers; i++) {
        int n_side = 1 << (i + 1);
        int overlap = (int)(overlap_ratio * short_side * (2.0 / n_side));
        int cw = (int)ceil((double)(overlap * (n_side - 1) + w) / n_side);
        int ch = (int)ceil((double)(overlap * (n_side - 1) + h) / n_side);
        for (int a = 0; a < n_side; a++) {      /* x outer */
            for (int b = 0; b < n_side; b++) {  /* y inner */
                int x0 = (cw - overlap) * a, y0 = (ch - overlap) * b;
                out[k++] = (ts_crop_box){x0, y0, TS_MIN(x0 + cw, w), TS_MIN(y0 + ch, h), i + 1};
            }
        }
    }
    return k;
}

int ts_rle_push(ts_rle *r, uint32_t v) {
    if (r->n == r->cap) {
        int nc = r->cap ? r->cap * 2 : 64;
        uint32_t *nn = realloc(r->counts, sizeof(uint32_t) * (size_t)nc);
        if (!nn) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        r->counts = nn;
        r->cap = nc;
    }
    r->counts[r->n++] = v;
    return 0;
}

void ts_rle_free(ts_rle *r) {
    free(r->counts);
    memset(r, 0, sizeof *r);
}

int ts_rle_encode(const uint8_t *mask, int rw, int rh, int x0, int y0, int W, int H, ts_rle *out) {
    out->n = 0;
    uint32_t run = 0;
    int cur = 0;
    for (int x = 0; x < W; x++) {
        int in_x = x >= x0 && x < x0 + rw;
        if (!in_x) {
            /* a whole column outside the region: zeros */
            if (cur) {
                if (ts_rle_push(out, run)) return TINYSAM_E_NOMEM;
                run = 0;
                cur = 0;
            }
            run += (uint32_t)H;
            continue;
        }
        const uint8_t *col = mask + (x - x0);
        for (int y = 0; y < H; y++) {
            int v = (y >= y0 && y < y0 + rh) ? col[(size_t)(y - y0) * rw] != 0 : 0;
            if (v != cur) {
                if (ts_rle_push(out, run)) return TINYSAM_E_NOMEM;
                run = 0;
                cur = v;
            }
            run++;
        }
    }
    return ts_rle_push(out, run);
}

int ts_rle_decode(const uint32_t *counts, int n, int W, int H, uint8_t *mask) {
    size_t total = (size_t)W * H, pos = 0;
    for (int i = 0; i < n; i++) {
        if (counts[i] > total - pos)
            return ts_error(TINYSAM_E_FORMAT, "rle: counts exceed the mask size");
        if (i & 1)
            for (size_t k = pos; k < pos + counts[i]; k++) {
                size_t x = k / (size_t)H, y = k % (size_t)H;
                mask[y * (size_t)W + x] = 1;
            }
        else
            for (size_t k = pos; k < pos + counts[i]; k++) {
                size_t x = k / (size_t)H, y = k % (size_t)H;
                mask[y * (size_t)W + x] = 0;
            }
        pos += counts[i];
    }
    if (pos != total)
        return ts_error(TINYSAM_E_FORMAT, "rle: counts cover %zu of %zu pixels", pos, total);
    return 0;
}

long long ts_rle_area(const uint32_t *counts, int n) {
    long long a = 0;
    for (int i = 1; i < n; i += 2) a += counts[i];
    return a;
}

char *ts_rle_to_string(const uint32_t *counts, int n) {
    char *s = malloc((size_t)n * 7 + 1);
    if (!s) return NULL;
    size_t p = 0;
    for (int i = 0; i < n; i++) {
        long long x = counts[i];
        if (i > 2) x -= counts[i - 2]; /* pycocotools: i > 2, not i >= 2 */
        int more = 1;
        while (more) {
            long long c = x & 0x1f;
            x >>= 5;
            more = (c & 0x10) ? x != -1 : x != 0;
            if (more) c |= 0x20;
            s[p++] = (char)(c + 48);
        }
    }
    s[p] = 0;
    return s;
}

char *tinysam_rle_to_coco_string(const uint32_t *counts, int n_counts) {
    return ts_rle_to_string(counts, n_counts);
}

int ts_rle_from_string(const char *s, ts_rle *out) {
    out->n = 0;
    size_t p = 0;
    while (s[p]) {
        long long x = 0;
        int k = 0, more = 1;
        while (more) {
            if (!s[p] || k > 30) return ts_error(TINYSAM_E_FORMAT, "rle: malformed COCO string");
            long long c = (long long)s[p] - 48;
            if (c < 0 || c > 63) return ts_error(TINYSAM_E_FORMAT, "rle: malformed COCO string");
            x |= (c & 0x1f) << (5 * k);
            more = (c & 0x20) != 0;
            p++;
            k++;
            if (!more && (c & 0x10)) x |= (long long)(~0ULL << (5 * k));
        }
        if (out->n > 2) x += out->counts[out->n - 2];
        if (x < 0 || x > 0xFFFFFFFFLL) return ts_error(TINYSAM_E_FORMAT, "rle: bad count");
        if (ts_rle_push(out, (uint32_t)x)) return TINYSAM_E_NOMEM;
    }
    return 0;
}

typedef struct {
    float score;
    int idx;
} scored;

static int cmp_scored(const void *a, const void *b) {
    const scored *x = a, *y = b;
    if (x->score > y->score) return -1;
    if (x->score < y->score) return 1;
    return x->idx - y->idx; /* stable: ties in index order */
}

int ts_nms(const float *boxes, const float *scores, int n, double iou_thresh, int *keep) {
    scored *order = malloc(sizeof *order * (size_t)(n ? n : 1));
    uint8_t *dead = calloc((size_t)(n ? n : 1), 1);
    float *area = malloc(sizeof(float) * (size_t)(n ? n : 1));
    if (!order || !dead || !area) {
        free(order);
        free(dead);
        free(area);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        order[i] = (scored){scores[i], i};
        const float *b = boxes + 4 * i;
        area[i] = (b[2] - b[0]) * (b[3] - b[1]);
    }
    qsort(order, (size_t)n, sizeof *order, cmp_scored);
    int nk = 0;
    for (int a = 0; a < n; a++) {
        int i = order[a].idx;
        if (dead[i]) continue;
        keep[nk++] = i;
        const float *bi = boxes + 4 * i;
        for (int c = a + 1; c < n; c++) {
            int j = order[c].idx;
            if (dead[j]) continue;
            const float *bj = boxes + 4 * j;
            float xx1 = fmaxf(bi[0], bj[0]), yy1 = fmaxf(bi[1], bj[1]);
            float xx2 = fminf(bi[2], bj[2]), yy2 = fminf(bi[3], bj[3]);
            float w = fmaxf(0.0f, xx2 - xx1), h = fmaxf(0.0f, yy2 - yy1);
            float inter = w * h;
            float ovr = inter / (area[i] + area[j] - inter);
            if ((double)ovr > iou_thresh) dead[j] = 1; /* NaN never suppresses */
        }
    }
    free(order);
    free(dead);
    free(area);
    return nk;
}

void ts_mask_box(const uint8_t *mask, int W, int H, int box[4]) {
    int x0 = W, y0 = H, x1 = -1, y1 = -1;
    for (int y = 0; y < H; y++) {
        const uint8_t *r = mask + (size_t)y * W;
        int first = -1, last = -1;
        for (int x = 0; x < W; x++)
            if (r[x]) {
                if (first < 0) first = x;
                last = x;
            }
        if (first < 0) continue;
        if (y0 == H) y0 = y;
        y1 = y;
        if (first < x0) x0 = first;
        if (last > x1) x1 = last;
    }
    if (x1 < 0) {
        box[0] = box[1] = box[2] = box[3] = 0;
        return;
    }
    box[0] = x0;
    box[1] = y0;
    box[2] = x1;
    box[3] = y1;
}

/* The walk of ts_hierarchical_points; with cells, also lists the (row, col) pixels whose
 * cover it reads (cover NULL then: every candidate). */
static int hierarchical_walk(const double *g1, int n1, int W, int H, int points_per_side,
                             const uint8_t *cover, double *out, int *cells, int *n_cells) {
    int hs = H / points_per_side, ws = W / points_per_side, n = 0, nc_out = 0;
    for (int k = 0; k < n1 * n1; k++) {
        double X = g1[2 * k] * W, Y = g1[2 * k + 1] * H;
        /* the 8 neighbours (a outer), then the "+2" column, row and corner when inside */
        int cand[16][2], nc = 0;
        for (int a = -1; a <= 1; a++)
            for (int b = -1; b <= 1; b++)
                if (a || b) {
                    cand[nc][0] = a;
                    cand[nc++][1] = b;
                }
        int xr = X + 2 * ws < W, yr = Y + 2 * hs < H;
        for (int b = -1; xr && b <= 1; b++) {
            cand[nc][0] = 2;
            cand[nc++][1] = b;
        }
        for (int a = -1; yr && a <= 1; a++) {
            cand[nc][0] = a;
            cand[nc++][1] = 2;
        }
        if (xr && yr) {
            cand[nc][0] = 2;
            cand[nc++][1] = 2;
        }
        for (int q = 0; q < nc; q++) {
            double x = X + cand[q][0] * ws, y = Y + cand[q][1] * hs;
            int row = (int)y, col = (int)x;
            int inside = row >= 0 && row < H && col >= 0 && col < W;
            if (cells && inside) {
                cells[2 * nc_out] = row;
                cells[2 * nc_out + 1] = col;
                nc_out++;
            }
            if (cover && inside && cover[(size_t)row * W + col])
                continue; /* covered by a confident mask */
            /* stored normalised, scaled back later, as the official code does */
            if (out) {
                out[2 * n] = x / W * W;
                out[2 * n + 1] = y / H * H;
            }
            n++;
        }
    }
    if (n_cells) *n_cells = nc_out;
    return n;
}

int ts_hierarchical_points(const double *g1, int n1, int W, int H, int points_per_side,
                           const uint8_t *cover, double *out) {
    return hierarchical_walk(g1, n1, W, H, points_per_side, cover, out, NULL, NULL);
}

int ts_hierarchical_cells(const double *g1, int n1, int W, int H, int points_per_side,
                          int *cells) {
    int n;
    hierarchical_walk(g1, n1, W, H, points_per_side, NULL, NULL, cells, &n);
    return n;
}

float ts_stability_score(const float *logits, size_t n, float offset) {
    long long inter = 0, uni = 0;
    for (size_t k = 0; k < n; k++) {
        inter += logits[k] > 0.0f + offset;
        uni += logits[k] > 0.0f - offset;
    }
    return (float)inter / (float)uni; /* 0/0 = NaN fails every threshold */
}
