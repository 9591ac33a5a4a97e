/* eg_tiny.c - see eg_tiny.h. */
#include "eg_tiny.h"

#include <math.h>
#include <string.h>

ts_eg_config test_eg_tiny_config(void) {
    ts_eg_config c = {.img = 48, .dims = {8, 16, 24, 32}, .depths = {1, 1, 2, 1},
                      .heads = {1, 2, 3, 4}, .windows = {1, 4, 2, 3}, .merge_stride = {2, 2, 1},
                      .mb_ratio = 4, .mlp_ratio = 4, .neck = 16};
    return c;
}

void test_eg_random_params(const ts_eg_layout *L, double w1_spread, double (*urand)(void),
                           float *p) {
    for (int i = 0; i < L->n; i++) {
        const ts_eg_tensor *t = &L->t[i];
        const char *nm = t->name;
        int is_w1 = t->ndim == 1 && (strstr(nm, "norm.weight") || strstr(nm, "bn.weight") ||
                                     strstr(nm, "neck.1.weight") || strstr(nm, "neck.3.weight"));
        double fan = t->ndim >= 2 ? (double)(t->numel / (size_t)t->shape[0]) : 1;
        for (size_t k = 0; k < t->numel; k++) {
            double v;
            if (strstr(nm, "running_var")) v = 1.0 + 0.5 * urand();
            else if (strstr(nm, "running_mean")) v = 0.1 * urand();
            else if (is_w1) v = 1.0 + w1_spread * urand();
            else if (strstr(nm, "attention_biases")) v = 0.5 * urand();
            else if (t->ndim >= 2) v = 1.5 / sqrt(fan) * urand();
            else v = 0.1 * urand();
            p[t->off + k] = (float)v;
        }
    }
}
