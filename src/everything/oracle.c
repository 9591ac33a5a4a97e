/* oracle.c - the scene oracle of spec ORACLE.md: analytic objects standing in for the prompt
 * encoder and mask decoder, so that everything mode can be tested on object-like masks.
 * All arithmetic in double, in the spec's operation order (-ffp-contract=off). */
#include "core.h"
#include "everything/provider.h"
#include "io/json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define ORACLE_MAX_OBJECTS 4096
#define ORACLE_MAX_SHAPES 256

typedef struct {
    int rect;
    double cx, cy, rx, ry;
} prim;

typedef struct {
    double id; /* as in the file: compared, never converted (it may not fit an int) */
    int parent_idx, depth;
    double iou, gain;
    int n_shapes, n_holes;
    prim *shapes, *holes;
    float *map; /* cached 256x256 logits for the current region */
} object;

typedef struct {
    ts_provider base;
    double bg_radius, bg_gain, bg_iou[3], penalty;
    int n;
    object *obj;
    /* current region */
    int x0, y0;
    double sx, sy;
} oracle;

static double prim_f(const prim *p, double X, double Y) {
    if (p->rect) {
        double a = 1 - fabs(X - p->cx) / p->rx, b = 1 - fabs(Y - p->cy) / p->ry;
        return a < b ? a : b;
    }
    double dx = (X - p->cx) / p->rx, dy = (Y - p->cy) / p->ry;
    return (1 - dx * dx) - dy * dy;
}

static double object_f(const object *o, double X, double Y) {
    double F = -INFINITY;
    for (int i = 0; i < o->n_shapes; i++) {
        double f = prim_f(&o->shapes[i], X, Y);
        if (f > F) F = f;
    }
    for (int i = 0; i < o->n_holes; i++) {
        double f = -prim_f(&o->holes[i], X, Y);
        if (f < F) F = f;
    }
    return F;
}

static int oracle_begin(ts_provider *p, int x0, int y0, int x1, int y1) {
    oracle *o = (oracle *)p;
    int w = x1 - x0, h = y1 - y0;
    double s = 1024.0 / (h > w ? h : w);
    int nh = (int)(h * s + 0.5), nw = (int)(w * s + 0.5);
    o->x0 = x0;
    o->y0 = y0;
    o->sx = (double)w / nw;
    o->sy = (double)h / nh;
    for (int i = 0; i < o->n; i++) {
        free(o->obj[i].map);
        o->obj[i].map = NULL;
    }
    return 0;
}

static const float *object_map(oracle *o, object *ob) {
    if (ob->map) return ob->map;
    ob->map = malloc(65536 * sizeof(float));
    if (!ob->map) return NULL;
    for (int i = 0; i < 256; i++) {
        double Y = o->y0 + (i * 4.0 + 2.0) * o->sy;
        for (int j = 0; j < 256; j++) {
            double X = o->x0 + (j * 4.0 + 2.0) * o->sx;
            ob->map[i * 256 + j] = (float)(ob->gain * object_f(ob, X, Y));
        }
    }
    return ob->map;
}

static int oracle_predict(ts_provider *p, int n, const double *pts, float *low_res, float *iou) {
    oracle *o = (oracle *)p;
    for (int k = 0; k < n; k++) {
        double PX = o->x0 + pts[2 * k] * o->sx, PY = o->y0 + pts[2 * k + 1] * o->sy;
        int best = -1;
        for (int i = 0; i < o->n; i++)
            if (object_f(&o->obj[i], PX, PY) > 0 &&
                (best < 0 || o->obj[i].depth >= o->obj[best].depth))
                best = i;
        float *out = low_res + (size_t)k * 3 * 65536;
        if (best < 0) {
            for (int i = 0; i < 256; i++) {
                double Y = o->y0 + (i * 4.0 + 2.0) * o->sy;
                for (int j = 0; j < 256; j++) {
                    double X = o->x0 + (j * 4.0 + 2.0) * o->sx;
                    double dx = (X - PX) / o->bg_radius, dy = (Y - PY) / o->bg_radius;
                    out[i * 256 + j] = (float)(o->bg_gain * ((1 - dx * dx) - dy * dy));
                }
            }
            memcpy(out + 65536, out, 65536 * sizeof(float));
            memcpy(out + 2 * 65536, out, 65536 * sizeof(float));
            for (int m = 0; m < 3; m++) iou[3 * k + m] = (float)o->bg_iou[m];
            continue;
        }
        int chain[ORACLE_MAX_OBJECTS], len = 0;
        for (int c = best; c >= 0 && len < ORACLE_MAX_OBJECTS; c = o->obj[c].parent_idx)
            chain[len++] = c;
        int shown[3] = {chain[0], chain[len > 1 ? 1 : 0], chain[len - 1]};
        for (int m = 0; m < 3; m++) {
            const float *map = object_map(o, &o->obj[shown[m]]);
            if (!map) return ts_error(TINYSAM_E_NOMEM, "out of memory");
            memcpy(out + (size_t)m * 65536, map, 65536 * sizeof(float));
            int first = m;
            while (first > 0 && shown[first - 1] == shown[m]) first--;
            for (int f = 0; f < m; f++)
                if (shown[f] == shown[m]) {
                    first = f;
                    break;
                }
            iou[3 * k + m] = (float)(o->obj[shown[m]].iou - o->penalty * (m - first));
        }
    }
    return 0;
}

static void oracle_destroy(ts_provider *p) {
    oracle *o = (oracle *)p;
    for (int i = 0; i < o->n; i++) {
        free(o->obj[i].shapes);
        free(o->obj[i].holes);
        free(o->obj[i].map);
    }
    free(o->obj);
    free(o);
}

static int parse_prims(const ts_json *arr, prim **out, int *n) {
    *n = 0;
    *out = NULL;
    if (!arr) return 0;
    if (arr->type != TS_JSON_ARRAY || arr->n > ORACLE_MAX_SHAPES) return -1;
    *out = calloc((size_t)arr->n + 1, sizeof(prim));
    if (!*out) return -1;
    for (int i = 0; i < arr->n; i++) {
        const ts_json *s = &arr->items[i], *t = ts_json_get(s, "type");
        if (!t || t->type != TS_JSON_STRING) return -1;
        prim *p = &(*out)[i];
        p->rect = !strcmp(t->string, "rect");
        if (!p->rect && strcmp(t->string, "ellipse")) return -1;
        p->cx = ts_json_num(s, "cx", NAN);
        p->cy = ts_json_num(s, "cy", NAN);
        p->rx = ts_json_num(s, "rx", NAN);
        p->ry = ts_json_num(s, "ry", NAN);
        if (!isfinite(p->cx) || !isfinite(p->cy) || !(p->rx > 0) || !(p->ry > 0)) return -1;
    }
    *n = arr->n;
    return 0;
}

int ts_oracle_provider_create(const char *scene_path, ts_provider **out) {
    *out = NULL;
    ts_json *j;
    int rc = ts_json_load(scene_path, &j);
    if (rc) return rc;
    oracle *o = ts_calloc(1, sizeof *o);
    if (!o) {
        ts_json_free(j);
        return TINYSAM_E_NOMEM;
    }
    o->base.begin_region = oracle_begin;
    o->base.predict = oracle_predict;
    o->base.destroy = oracle_destroy;
    double w = ts_json_num(j, "width", -1), h = ts_json_num(j, "height", -1);
    const ts_json *bg = ts_json_get(j, "background"), *objs = ts_json_get(j, "objects");
    const ts_json *bgiou = ts_json_get(bg, "iou");
    rc = TINYSAM_E_FORMAT;
    if (!(w >= 1 && w <= 100000 && h >= 1 && h <= 100000 && w == (int)w && h == (int)h) || !bg ||
        !bgiou || bgiou->type != TS_JSON_ARRAY || bgiou->n != 3 || !objs ||
        objs->type != TS_JSON_ARRAY || objs->n > ORACLE_MAX_OBJECTS) {
        ts_error(rc, "%s: not a scene file (width, height, background, objects)", scene_path);
        goto fail;
    }
    o->base.width = (int)w;
    o->base.height = (int)h;
    o->bg_radius = ts_json_num(bg, "radius", NAN);
    o->bg_gain = ts_json_num(bg, "gain", NAN);
    for (int i = 0; i < 3; i++) o->bg_iou[i] = bgiou->items[i].number;
    o->penalty = ts_json_num(j, "duplicate_penalty", 0);
    if (!(o->bg_radius > 0) || !isfinite(o->bg_gain)) {
        ts_error(rc, "%s: bad background", scene_path);
        goto fail;
    }
    o->n = objs->n;
    o->obj = calloc((size_t)o->n + 1, sizeof(object));
    if (!o->obj) goto fail;
    for (int i = 0; i < o->n; i++) {
        const ts_json *e = &objs->items[i];
        object *ob = &o->obj[i];
        ob->id = ts_json_num(e, "id", -1);
        ob->iou = ts_json_num(e, "iou", NAN);
        ob->gain = ts_json_num(e, "gain", NAN);
        ob->parent_idx = -1;
        if (!isfinite(ob->iou) || !isfinite(ob->gain) ||
            parse_prims(ts_json_get(e, "shapes"), &ob->shapes, &ob->n_shapes) || ob->n_shapes < 1 ||
            parse_prims(ts_json_get(e, "holes"), &ob->holes, &ob->n_holes)) {
            ts_error(rc, "%s: object %d is malformed", scene_path, i);
            goto fail;
        }
    }
    for (int i = 0; i < o->n; i++) {
        const ts_json *par = ts_json_get(&objs->items[i], "parent");
        if (!par || par->type == TS_JSON_NULL) continue;
        for (int k = 0; k < o->n; k++)
            if (par->type == TS_JSON_NUMBER && o->obj[k].id == par->number)
                o->obj[i].parent_idx = k;
        if (o->obj[i].parent_idx < 0) {
            ts_error(rc, "%s: object %d has an unknown parent", scene_path, i);
            goto fail;
        }
    }
    for (int i = 0; i < o->n; i++) { /* depth, rejecting parent cycles */
        int d = 0, c = o->obj[i].parent_idx;
        while (c >= 0 && d <= o->n) {
            d++;
            c = o->obj[c].parent_idx;
        }
        if (d > o->n) {
            ts_error(rc, "%s: parent cycle at object %d", scene_path, i);
            goto fail;
        }
        o->obj[i].depth = d;
    }
    ts_json_free(j);
    *out = &o->base;
    return 0;
fail:
    ts_json_free(j);
    oracle_destroy(&o->base);
    return rc == 0 ? TINYSAM_E_NOMEM : rc;
}
