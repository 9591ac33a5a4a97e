/* int8_info.c - what an int8 model file quantises, for `tinysam info` (int8_info.h). */
#include "quant/int8_info.h"

#include <string.h>

/* "X.suffix" -> prints "X" (JSON-safe: tensor names are [A-Za-z0-9_.]) */
static void put_prefix(FILE *f, const char *name, size_t suffix_len, int *first) {
    fprintf(f, "%s\"%.*s\"", *first ? "" : ", ", (int)(strlen(name) - suffix_len), name);
    *first = 0;
}

static int ends_with(const char *s, const char *suffix) {
    size_t l = strlen(s), ls = strlen(suffix);
    return l > ls && !strcmp(s + l - ls, suffix);
}

void ts_int8_info_json(const ts_tensor_map *m, FILE *f) {
    /* W8A8 layers: an I8 "P.weight" with "P.input_step"; activation-only quantisers (attention
     * products): "P.input_step" without a weight; weight-only: I8 "X.weight" without a step */
    static const char *const kinds[3] = {"w8a8_layers", "activation_steps", "weight_only"};
    fprintf(f, "{");
    for (int k = 0; k < 3; k++) {
        fprintf(f, "%s\"%s\": [", k ? ", " : "", kinds[k]);
        int first = 1;
        for (int i = 0; i < m->n; i++) {
            const ts_tensor *t = &m->t[i];
            char other[256];
            if (k < 2 && ends_with(t->name, ".input_step")) {
                size_t lp = strlen(t->name) - strlen(".input_step");
                snprintf(other, sizeof other, "%.*s.weight", (int)lp, t->name);
                const ts_tensor *w = ts_map_get(m, other);
                int has_w = w && w->file_dtype == TS_DTYPE_I8;
                if (has_w == (k == 0)) put_prefix(f, t->name, strlen(".input_step"), &first);
            } else if (k == 2 && t->file_dtype == TS_DTYPE_I8 && ends_with(t->name, ".weight")) {
                snprintf(other, sizeof other, "%.*s.input_step",
                         (int)(strlen(t->name) - strlen(".weight")), t->name);
                if (!ts_map_get(m, other)) put_prefix(f, t->name, strlen(".weight"), &first);
            }
        }
        fprintf(f, "]");
    }
    fprintf(f, "}");
}
