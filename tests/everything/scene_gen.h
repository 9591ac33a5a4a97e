/* scene_gen.h - writes oracle scene files (spec ORACLE.md) for tests and benchmarks: a scene
 * scaled by a factor (scene_a x 10/3 is a 12-megapixel photo), or one built from a list of
 * primitives. */
#ifndef TS_SCENE_GEN_H
#define TS_SCENE_GEN_H

#include "io/json.h"

#include <stdio.h>
#include <string.h>

static void sg_prims(FILE *f, const ts_json *arr, double s) {
    fputc('[', f);
    for (int i = 0; arr && i < arr->n; i++) {
        const ts_json *p = &arr->items[i];
        fprintf(f, "%s{\"type\": \"%s\", \"cx\": %.17g, \"cy\": %.17g, \"rx\": %.17g, \"ry\": %.17g}",
                i ? ", " : "", ts_json_get(p, "type")->string, ts_json_num(p, "cx", 0) * s,
                ts_json_num(p, "cy", 0) * s, ts_json_num(p, "rx", 0) * s,
                ts_json_num(p, "ry", 0) * s);
    }
    fputc(']', f);
}

/* src scaled by s (image size, coordinates, background radius) into dst. 0 on success. */
static int sg_write_scaled(const char *src, const char *dst, double s) {
    ts_json *j;
    if (ts_json_load(src, &j)) return -1;
    FILE *f = fopen(dst, "w");
    if (!f) {
        ts_json_free(j);
        return -1;
    }
    const ts_json *bg = ts_json_get(j, "background"), *bi = ts_json_get(bg, "iou");
    const ts_json *objs = ts_json_get(j, "objects");
    fprintf(f, "{\"name\": \"scaled\", \"width\": %.17g, \"height\": %.17g, ",
            ts_json_num(j, "width", 0) * s, ts_json_num(j, "height", 0) * s);
    fprintf(f, "\"background\": {\"radius\": %.17g, \"gain\": %.17g, \"iou\": [%.17g, %.17g, %.17g]}, ",
            ts_json_num(bg, "radius", 0) * s, ts_json_num(bg, "gain", 0), bi->items[0].number,
            bi->items[1].number, bi->items[2].number);
    fprintf(f, "\"duplicate_penalty\": %.17g, \"objects\": [",
            ts_json_num(j, "duplicate_penalty", 0));
    for (int i = 0; i < objs->n; i++) {
        const ts_json *o = &objs->items[i], *par = ts_json_get(o, "parent");
        fprintf(f, "%s\n{\"id\": %.17g, \"name\": \"o%d\", \"parent\": ", i ? "," : "",
                ts_json_num(o, "id", 0), i);
        if (par && par->type == TS_JSON_NUMBER) fprintf(f, "%.17g", par->number);
        else fputs("null", f);
        fprintf(f, ", \"iou\": %.17g, \"gain\": %.17g, \"shapes\": ", ts_json_num(o, "iou", 0),
                ts_json_num(o, "gain", 0));
        sg_prims(f, ts_json_get(o, "shapes"), s);
        fputs(", \"holes\": ", f);
        sg_prims(f, ts_json_get(o, "holes"), s);
        fputc('}', f);
    }
    fputs("]}\n", f);
    ts_json_free(j);
    return fclose(f) ? -1 : 0;
}

#endif
