/* polygons.c - outer contours of a mask (Suzuki-Abe border following as
 * OpenCV's findContours runs it), Douglas-Peucker as OpenCV's approxPolyDP,
 * COCO and YOLO writers. */
#include "everything/polygons.h"
#include "core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void ts_polygon_set_free(ts_polygon_set *s) {
    if (!s) return;
    for (int i = 0; i < s->n; i++)
        free(s->p[i].xy);
    free(s->p);
    s->p = NULL;
    s->n = 0;
}

static int set_push(ts_polygon_set *s, int *cap, ts_polygon p) {
    if (s->n == *cap) {
        int nc = *cap ? 2 * *cap : 8;
        ts_polygon *q = realloc(s->p, sizeof *q * (size_t)nc);
        if (!q) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        s->p = q;
        *cap = nc;
    }
    s->p[s->n++] = p;
    return 0;
}

/* Flood fill over a padded image from seed, replacing from by to; 4- or
 * 8-connectivity. stack holds one index per pixel at most (each pixel is pushed
 * once: it is recoloured when pushed). */
static void flood(uint8_t *p, int step, int rows, int seed, uint8_t from, uint8_t to, int eight,
                  int *stack) {
    static const int dx8[8] = {1, -1, 0, 0, 1, 1, -1, -1}, dy8[8] = {0, 0, 1, -1, 1, -1, 1, -1};
    int top = 0, nd = eight ? 8 : 4;
    p[seed] = to;
    stack[top++] = seed;
    while (top) {
        int i = stack[--top], x = i % step, y = i / step;
        for (int d = 0; d < nd; d++) {
            int nx = x + dx8[d], ny = y + dy8[d];
            if (nx < 0 || ny < 0 || nx >= step || ny >= rows) continue;
            int j = ny * step + nx;
            if (p[j] == from) {
                p[j] = to;
                stack[top++] = j;
            }
        }
    }
}

/* One outer border from its first raster pixel i0 (OpenCV's icvFetchContour for
 * an outer border: the first neighbour clockwise from the left one is the last
 * pixel of the border, then counter-clockwise searches from the direction we
 * came from). */
static int trace(const uint8_t *p, int step, int i0, ts_polygon *out) {
    const int deltas[16] = {1, -step + 1, -step, -step - 1, -1, step - 1, step, step + 1,
                            1, -step + 1, -step, -step - 1, -1, step - 1, step, step + 1};
    static const int cdx[8] = {1, 1, 0, -1, -1, -1, 0, 1}, cdy[8] = {0, -1, -1, -1, 0, 1, 1, 1};
    int cap = 64, n = 0, x = i0 % step - 1, y = i0 / step - 1;
    int *xy = malloc(sizeof(int) * 2 * (size_t)cap);
    if (!xy) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    int s = 4, s_end = 4, i1;
    do {
        s = (s - 1) & 7;
        i1 = i0 + deltas[s];
    } while (p[i1] == 0 && s != s_end);
    if (s == s_end) { /* a lone pixel */
        xy[0] = x;
        xy[1] = y;
        out->n = 1;
        out->xy = xy;
        return 0;
    }
    int i3 = i0, i4;
    for (;;) {
        for (;;) {
            i4 = i3 + deltas[++s];
            if (p[i4]) break;
        }
        s &= 7;
        if (n == cap) {
            int *q = realloc(xy, sizeof(int) * 4 * (size_t)cap);
            if (!q) {
                free(xy);
                return ts_error(TINYSAM_E_NOMEM, "out of memory");
            }
            xy = q;
            cap *= 2;
        }
        xy[2 * n] = x;
        xy[2 * n + 1] = y;
        n++;
        x += cdx[s];
        y += cdy[s];
        if (i4 == i0 && i3 == i1) break;
        i3 = i4;
        s = (s + 4) & 7;
    }
    out->n = n;
    out->xy = xy;
    return 0;
}

int ts_mask_contours(const uint8_t *mask, int W, int H, ts_polygon_set *out) {
    memset(out, 0, sizeof *out);
    if (W <= 0 || H <= 0) return ts_error(TINYSAM_E_ARG, "contours: empty mask %dx%d", W, H);
    size_t step = (size_t)W + 2, rows = (size_t)H + 2, n;
    if (!ts_mul_size(step, rows, &n) || n > (size_t)1 << 31)
        return ts_error(TINYSAM_E_LIMIT, "contours: mask %dx%d too large", W, H);
    uint8_t *p = calloc(n, 1);
    int *stack = malloc(sizeof(int) * n);
    if (!p || !stack) {
        free(p);
        free(stack);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    /* a zero frame around the mask, as findContours adds */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            p[(size_t)(y + 1) * step + x + 1] = mask[(size_t)y * W + x] != 0;
    /* holes filled: the background 4-connected to the frame is the outside (2);
     * every other zero lies in a hole and becomes inside. Outer borders do not
     * change, and components inside holes merge into their surroundings, which
     * RETR_EXTERNAL drops anyway. */
    flood(p, (int)step, (int)rows, 0, 0, 2, 0, stack);
    for (size_t i = 0; i < n; i++)
        p[i] = p[i] == 2 ? 0 : 1;
    int cap = 0, rc = 0;
    for (size_t i = step; !rc && i < n - step; i++) {
        if (p[i] != 1 || p[i - 1] != 0) continue;
        ts_polygon poly;
        rc = trace(p, (int)step, (int)i, &poly);
        if (!rc && (rc = set_push(out, &cap, poly))) free(poly.xy);
        /* the component is done: mark it so its other left-edge pixels start
         * nothing */
        if (!rc) flood(p, (int)step, (int)rows, (int)i, 1, 3, 1, stack);
    }
    free(p);
    free(stack);
    if (rc) ts_polygon_set_free(out);
    return rc;
}

double ts_polygon_perimeter(const ts_polygon *p) {
    double len = 0;
    for (int i = 0; i < p->n; i++) {
        int j = i + 1 == p->n ? 0 : i + 1;
        double dx = p->xy[2 * j] - p->xy[2 * i], dy = p->xy[2 * j + 1] - p->xy[2 * i + 1];
        len += sqrt(dx * dx + dy * dy);
    }
    return len;
}

/* approxPolyDP_ of OpenCV's imgproc/src/approx.cpp for a closed curve, step by
 * step: the two roughly farthest points (three passes), the recursive split
 * over a stack of slices, then the clean-up pass that drops vertices on nearly
 * straight runs. */
int ts_polygon_simplify(const ts_polygon *in, double epsilon, ts_polygon *out) {
    int count = in->n;
    out->n = 0;
    out->xy = NULL;
    if (count == 0) return 0;
    const int *src = in->xy;
    int *dst = malloc(sizeof(int) * 2 * (size_t)count);
    int *stack = malloc(sizeof(int) * 2 * (size_t)(count + 2));
    if (!dst || !stack) {
        free(dst);
        free(stack);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    double eps = epsilon * epsilon;
    int top = 0, pos = 0, new_count = 0, rs_start = 0, rs_end, sl_start, sl_end;
    int sx = 0, sy = 0, ex, ey, px, py;
    int le_eps = 0;
#define READ_PT(X, Y, P)                                                                           \
    do {                                                                                           \
        X = src[2 * (P)];                                                                          \
        Y = src[2 * (P) + 1];                                                                      \
        if (++(P) >= count) (P) = 0;                                                               \
    } while (0)
#define WRITE_PT(X, Y)                                                                             \
    do {                                                                                           \
        dst[2 * new_count] = X;                                                                    \
        dst[2 * new_count + 1] = Y;                                                                \
        new_count++;                                                                               \
    } while (0)
    for (int it = 0; it < 3; it++) {
        double max_dist = 0;
        pos = (pos + rs_start) % count;
        READ_PT(sx, sy, pos);
        for (int j = 1; j < count; j++) {
            READ_PT(px, py, pos);
            double dx = px - sx, dy = py - sy, dist = dx * dx + dy * dy;
            if (dist > max_dist) {
                max_dist = dist;
                rs_start = j;
            }
        }
        le_eps = max_dist <= eps;
    }
    if (!le_eps) {
        rs_end = sl_start = pos % count;
        sl_end = rs_start = (rs_start + sl_start) % count;
        stack[2 * top] = rs_start;
        stack[2 * top + 1] = rs_end;
        top++;
        stack[2 * top] = sl_start;
        stack[2 * top + 1] = sl_end;
        top++;
    } else {
        WRITE_PT(sx, sy);
    }
    while (top > 0) {
        top--;
        sl_start = stack[2 * top];
        sl_end = stack[2 * top + 1];
        ex = src[2 * sl_end];
        ey = src[2 * sl_end + 1];
        pos = sl_start;
        READ_PT(sx, sy, pos);
        if (pos != sl_end) {
            double dx = ex - sx, dy = ey - sy, max_dist = 0;
            while (pos != sl_end) {
                READ_PT(px, py, pos);
                double dist = fabs((py - sy) * dx - (px - sx) * dy);
                if (dist > max_dist) {
                    max_dist = dist;
                    rs_start = (pos + count - 1) % count;
                }
            }
            le_eps = max_dist * max_dist <= eps * (dx * dx + dy * dy);
        } else {
            le_eps = 1;
            sx = src[2 * sl_start];
            sy = src[2 * sl_start + 1];
        }
        if (le_eps) {
            WRITE_PT(sx, sy);
        } else if (top + 2 <= count + 2) {
            rs_end = sl_end;
            sl_end = rs_start;
            stack[2 * top] = rs_start;
            stack[2 * top + 1] = rs_end;
            top++;
            stack[2 * top] = sl_start;
            stack[2 * top + 1] = sl_end;
            top++;
        }
    }
#undef READ_PT
#undef WRITE_PT
    /* clean-up on the result, in place (dst read and written cyclically) */
    count = new_count;
    pos = count - 1;
#define READ_DST(X, Y)                                                                             \
    do {                                                                                           \
        X = dst[2 * pos];                                                                          \
        Y = dst[2 * pos + 1];                                                                      \
        if (++pos >= count) pos = 0;                                                               \
    } while (0)
    READ_DST(sx, sy);
    int wpos = pos;
    READ_DST(px, py);
    for (int i = 0; i < count && new_count > 2; i++) {
        READ_DST(ex, ey);
        double dx = ex - sx, dy = ey - sy;
        double dist = fabs((double)(px - sx) * dy - (double)(py - sy) * dx);
        double inner = (double)(px - sx) * (ex - px) + (double)(py - sy) * (ey - py);
        if (dist * dist <= 0.5 * eps * (dx * dx + dy * dy) && dx != 0 && dy != 0 && inner >= 0) {
            new_count--;
            dst[2 * wpos] = sx = ex;
            dst[2 * wpos + 1] = sy = ey;
            if (++wpos >= count) wpos = 0;
            READ_DST(px, py);
            i++;
            continue;
        }
        dst[2 * wpos] = sx = px;
        dst[2 * wpos + 1] = sy = py;
        if (++wpos >= count) wpos = 0;
        px = ex;
        py = ey;
    }
#undef READ_DST
    free(stack);
    out->n = new_count;
    out->xy = dst;
    return 0;
}

int ts_mask_polygons(const uint8_t *mask, int W, int H, double epsilon_factor, int keep_degenerate,
                     ts_polygon_set *out) {
    ts_polygon_set raw;
    int rc = ts_mask_contours(mask, W, H, &raw);
    if (rc) return rc;
    memset(out, 0, sizeof *out);
    int cap = 0;
    for (int i = 0; !rc && i < raw.n; i++) {
        ts_polygon p = raw.p[i];
        if (epsilon_factor > 0) {
            rc = ts_polygon_simplify(&raw.p[i], epsilon_factor * ts_polygon_perimeter(&raw.p[i]),
                                     &p);
            if (rc) break;
            free(raw.p[i].xy);
        }
        raw.p[i].xy = NULL;
        if (p.n < 3 && !keep_degenerate) {
            free(p.xy);
            continue;
        }
        if ((rc = set_push(out, &cap, p))) free(p.xy);
    }
    ts_polygon_set_free(&raw);
    if (rc) ts_polygon_set_free(out);
    return rc;
}

void ts_polygons_write_coco(FILE *f, const ts_polygon_set *s) {
    fputc('[', f);
    for (int i = 0; i < s->n; i++) {
        fputs(i ? ", [" : "[", f);
        for (int k = 0; k < 2 * s->p[i].n; k++)
            fprintf(f, "%s%d", k ? ", " : "", s->p[i].xy[k]);
        fputc(']', f);
    }
    fputc(']', f);
}

void ts_polygons_write_yolo(FILE *f, const ts_polygon_set *s, int cls, int W, int H) {
    for (int i = 0; i < s->n; i++) {
        fprintf(f, "%d", cls);
        for (int k = 0; k < s->p[i].n; k++)
            fprintf(f, " %.6f %.6f", (double)s->p[i].xy[2 * k] / W,
                    (double)s->p[i].xy[2 * k + 1] / H);
        fputc('\n', f);
    }
}
