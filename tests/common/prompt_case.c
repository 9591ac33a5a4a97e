/* prompt_case.c - reading a fixture prompt case (see prompt_case.h). */
#include "prompt_case.h"

#include "core.h"
#include "test.h"

#include <stdio.h>
#include <string.h>

int test_prompt_case_load(const char *dir, int with_mask_input, test_prompt_case *c) {
    memset(c, 0, sizeof *c);
    char path[700];
    snprintf(path, sizeof path, "%s/prompt.json", dir);
    if (ts_json_load(fixture(path), &c->json)) return -1;
    const ts_json *pts = ts_json_get(c->json, "points"), *lab = ts_json_get(c->json, "labels"),
                  *box = ts_json_get(c->json, "box");
    int np = pts && pts->type == TS_JSON_ARRAY ? pts->n : 0;
    if (np > TINYSAM_MAX_POINTS || (np && (!lab || lab->type != TS_JSON_ARRAY || lab->n < np)))
        return ts_error(TINYSAM_E_FORMAT, "%s: points and labels do not match", path);
    for (int i = 0; i < np; i++) {
        c->points[2 * i] = (float)pts->items[i].items[0].number;
        c->points[2 * i + 1] = (float)pts->items[i].items[1].number;
        c->labels[i] = (int)lab->items[i].number;
    }
    c->prompt = (tinysam_prompt){.n_points = np, .points = c->points, .labels = c->labels};
    if (box && box->type == TS_JSON_ARRAY) {
        c->prompt.has_box = 1;
        for (int k = 0; k < 4; k++) c->prompt.box[k] = (float)box->items[k].number;
    }
    snprintf(path, sizeof path, "%s/mask_input.npy", dir);
    if (with_mask_input && fixture_exists(path)) {
        if (ts_npy_load(fixture(path), &c->mask)) return -1;
        c->prompt.mask_input = c->mask.data;
    }
    return 0;
}

void test_prompt_case_free(test_prompt_case *c) {
    ts_json_free(c->json);
    ts_npy_free(&c->mask);
    c->json = NULL;
}

int test_case_outputs_load(const char *dir, test_case_outputs *o) {
    memset(o, 0, sizeof *o);
    static const char *file[3] = {"low_res.npy", "iou.npy", "masks.npy"};
    ts_npy *dst[3] = {&o->low_res, &o->iou, &o->masks};
    for (int i = 0; i < 3; i++) {
        char path[700];
        snprintf(path, sizeof path, "%s/%s", dir, file[i]);
        if (ts_npy_load(fixture(path), dst[i])) return -1;
    }
    return 0;
}

void test_case_outputs_free(test_case_outputs *o) {
    ts_npy_free(&o->low_res);
    ts_npy_free(&o->iou);
    ts_npy_free(&o->masks);
}
