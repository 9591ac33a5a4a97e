/* regions_runs.c - remove_small_regions (holes, then islands) of a mask given by its
 * column-major RLE, on the mask's column runs instead of its pixels: the same components,
 * sizes, fills, removals and "keep the largest" tie-break as ts_remove_small_regions
 * (regions.c) on the decoded mask, without a full-size mask. Two runs in neighbouring
 * columns are 8-connected when their row ranges, one of them widened by a row each way,
 * overlap. A component's OpenCV order key (its first 2x2 block in raster order) is the
 * smallest over its runs of (first row / 2, column / 2); keys of different components
 * differ, since same-valued pixels of one 2x2 block are always 8-connected. */
#include "core.h"
#include "everything/mask_post.h"

#include <stdlib.h>
#include <string.h>

/* Runs of one value per column: rows [s[k], e[k]) of column x for k in off[x] .. off[x+1]. */
typedef struct {
    int *s, *e, *off;
    size_t n, cap;
} col_runs;

static void runs_free(col_runs *r) {
    free(r->s);
    free(r->e);
    free(r->off);
    memset(r, 0, sizeof *r);
}

static int runs_push(col_runs *r, int s, int e) {
    if (r->n == r->cap) {
        size_t nc = r->cap ? 2 * r->cap : 256;
        int *ns = realloc(r->s, sizeof(int) * nc);
        if (!ns) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        r->s = ns;
        int *ne = realloc(r->e, sizeof(int) * nc);
        if (!ne) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        r->e = ne;
        r->cap = nc;
    }
    r->s[r->n] = s;
    r->e[r->n] = e;
    r->n++;
    return 0;
}

static int runs_init(col_runs *r, int W) {
    memset(r, 0, sizeof *r);
    r->off = malloc(sizeof(int) * ((size_t)W + 1));
    return r->off ? 0 : ts_error(TINYSAM_E_NOMEM, "out of memory");
}

/* The foreground runs of a column-major RLE over W x H. */
static int runs_from_rle(const uint32_t *counts, int nc, int W, int H, col_runs *r) {
    if (runs_init(r, W)) return TINYSAM_E_NOMEM;
    size_t total = (size_t)W * H, pos = 0;
    int x = 0;
    r->off[0] = 0;
    for (int i = 0; i < nc; i++) {
        if (counts[i] > total - pos)
            return ts_error(TINYSAM_E_FORMAT, "rle: counts exceed the mask size");
        size_t end = pos + counts[i];
        if (i & 1)
            while (pos < end) {
                int cx = (int)(pos / (size_t)H), y = (int)(pos % (size_t)H);
                while (x < cx) r->off[++x] = (int)r->n;
                size_t ce = (size_t)(cx + 1) * H;
                int ye = end < ce ? (int)(end - (size_t)cx * H) : H;
                if (runs_push(r, y, ye)) return TINYSAM_E_NOMEM;
                pos = (size_t)cx * H + ye;
            }
        pos = end;
    }
    if (pos != total)
        return ts_error(TINYSAM_E_FORMAT, "rle: counts cover %zu of %zu pixels", pos, total);
    while (x < W) r->off[++x] = (int)r->n;
    return 0;
}

/* The runs of the other value, or of the same value without the runs whose drop[k] is set
 * (drop may be NULL): out = complement of (in minus dropped) when complement, else in minus
 * dropped. */
static int runs_rebuild(const col_runs *in, const uint8_t *drop, int complement, int W, int H,
                        col_runs *out) {
    if (runs_init(out, W)) return TINYSAM_E_NOMEM;
    for (int x = 0; x < W; x++) {
        out->off[x] = (int)out->n;
        int y = 0;
        for (int k = in->off[x]; k < in->off[x + 1]; k++) {
            if (drop && drop[k]) continue;
            if (!complement) {
                if (runs_push(out, in->s[k], in->e[k])) return TINYSAM_E_NOMEM;
                continue;
            }
            if (in->s[k] > y && runs_push(out, y, in->s[k])) return TINYSAM_E_NOMEM;
            y = in->e[k];
        }
        if (complement && y < H && runs_push(out, y, H)) return TINYSAM_E_NOMEM;
    }
    out->off[W] = (int)out->n;
    return 0;
}

static int find(int *parent, int x) {
    while (parent[x] != x) {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    return x;
}

/* Components of the runs; marks in drop the runs of small components (below min_area), all
 * but the largest when islands and no component is large. Returns 1 when some component is
 * small (remove_small_regions' "changed"), 0 when none, < 0 on failure. */
static int small_components(const col_runs *r, int W, int H, int min_area, int islands,
                            uint8_t *drop) {
    size_t n = r->n;
    if (n == 0) return 0;
    int *parent = malloc(sizeof(int) * n);
    long long *size = calloc(n, sizeof(long long)), *key = malloc(sizeof(long long) * n);
    if (!parent || !size || !key) {
        free(parent);
        free(size);
        free(key);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    for (size_t k = 0; k < n; k++) parent[k] = (int)k;
    for (int x = 0; x + 1 < W; x++) {
        int i = r->off[x], ie = r->off[x + 1], j = r->off[x + 1], je = r->off[x + 2];
        while (i < ie && j < je) {
            if (r->s[j] <= r->e[i] && r->s[i] <= r->e[j]) {
                int a = find(parent, i), b = find(parent, j);
                if (a < b) parent[b] = a;
                else if (b < a) parent[a] = b;
            }
            if (r->e[i] < r->e[j]) i++;
            else j++;
        }
    }
    long long bw = (W + 1) / 2;
    for (size_t k = 0; k < n; k++) key[k] = -1;
    for (int x = 0; x < W; x++)
        for (int k = r->off[x]; k < r->off[x + 1]; k++) {
            int root = find(parent, k);
            parent[k] = root;
            size[root] += r->e[k] - r->s[k];
            long long kk = (long long)(r->s[k] / 2) * bw + x / 2;
            if (key[root] < 0 || kk < key[root]) key[root] = kk;
        }
    int any_small = 0, any_big = 0;
    for (size_t k = 0; k < n; k++)
        if (parent[k] == (int)k) {
            if (size[k] < min_area) any_small = 1;
            else any_big = 1;
        }
    if (any_small) {
        int keep = -1;
        if (islands && !any_big) /* every island is small: keep the largest, first in order */
            for (size_t k = 0; k < n; k++)
                if (parent[k] == (int)k &&
                    (keep < 0 || size[k] > size[keep] || (size[k] == size[keep] && key[k] < key[keep])))
                    keep = (int)k;
        for (size_t k = 0; k < n; k++) {
            int root = parent[k]; /* the loop above left every run pointing at its root */
            drop[k] = size[root] < min_area && root != keep;
        }
    }
    (void)H;
    free(parent);
    free(size);
    free(key);
    return any_small;
}

int ts_rle_remove_small_regions(const uint32_t *counts, int n_counts, int W, int H, int min_area,
                                int *changed, int box[4], ts_rle *out) {
    col_runs fg = {0}, bg = {0}, fg1 = {0}, fg2 = {0};
    uint8_t *drop = NULL;
    *changed = 0;
    box[0] = box[1] = box[2] = box[3] = 0;
    out->n = 0;
    int rc = runs_from_rle(counts, n_counts, W, H, &fg);
    /* holes: small components of the background are filled */
    if (!rc) rc = runs_rebuild(&fg, NULL, 1, W, H, &bg);
    if (!rc && !(drop = malloc(bg.n + fg.n + 1))) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
    int ch1 = 0, ch2 = 0;
    if (!rc && (ch1 = small_components(&bg, W, H, min_area, 0, drop)) < 0) rc = TINYSAM_E_NOMEM;
    if (!rc && ch1) rc = runs_rebuild(&bg, drop, 1, W, H, &fg1);
    const col_runs *f1 = ch1 ? &fg1 : &fg;
    /* islands: small components of the foreground are dropped (all but the largest when
     * every one is small) */
    if (!rc) {
        uint8_t *d2 = realloc(drop, f1->n + 1);
        if (!d2) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
        else drop = d2;
    }
    if (!rc && (ch2 = small_components(f1, W, H, min_area, 1, drop)) < 0) rc = TINYSAM_E_NOMEM;
    if (!rc && ch2) rc = runs_rebuild(f1, drop, 0, W, H, &fg2);
    const col_runs *f = ch2 ? &fg2 : f1;
    if (!rc) {
        *changed = ch1 || ch2;
        int x0 = W, y0 = H, x1 = -1, y1 = -1;
        for (int x = 0; x < W; x++)
            for (int k = f->off[x]; k < f->off[x + 1]; k++) {
                if (x < x0) x0 = x;
                x1 = x;
                if (f->s[k] < y0) y0 = f->s[k];
                if (f->e[k] - 1 > y1) y1 = f->e[k] - 1;
            }
        if (x1 >= 0) box[0] = x0, box[1] = y0, box[2] = x1, box[3] = y1;
    }
    if (!rc && *changed) { /* the encoding ts_rle_encode gives the decoded mask */
        size_t total = (size_t)W * H, zeros_from = 0, ostart = 0, olen = 0;
        for (int x = 0; !rc && x < W; x++)
            for (int k = f->off[x]; !rc && k < f->off[x + 1]; k++) {
                size_t p = (size_t)x * H + f->s[k], q = (size_t)x * H + f->e[k];
                if (olen && p == ostart + olen) { /* continues the last run across columns */
                    olen += q - p;
                    continue;
                }
                if (olen) {
                    rc = ts_rle_push(out, (uint32_t)(ostart - zeros_from));
                    if (!rc) rc = ts_rle_push(out, (uint32_t)olen);
                    zeros_from = ostart + olen;
                }
                ostart = p;
                olen = q - p;
            }
        if (!rc && olen) {
            rc = ts_rle_push(out, (uint32_t)(ostart - zeros_from));
            if (!rc) rc = ts_rle_push(out, (uint32_t)olen);
            zeros_from = ostart + olen;
        }
        if (!rc && (out->n == 0 || zeros_from < total))
            rc = ts_rle_push(out, (uint32_t)(total - zeros_from));
    }
    free(drop);
    runs_free(&fg);
    runs_free(&bg);
    runs_free(&fg1);
    runs_free(&fg2);
    return rc;
}
