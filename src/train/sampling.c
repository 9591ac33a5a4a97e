/* sampling.c - SplitMix64 and the online hard prompt sampling (spec/DISTILL.md 3.2-3.6). */
#include "train/sampling.h"

#include "core.h"

#include <math.h>
#include <string.h>

#define LOWRES 256
#define LOWRES_N (LOWRES * LOWRES)
#define FRAME 1024

/* ---- generator ----------------------------------------------------------------------------- */

void ts_rng_seed(ts_rng *r, uint64_t seed) {
    r->s = seed;
    r->draws = 0;
}

uint64_t ts_rng_next(ts_rng *r) {
    r->s += 0x9E3779B97F4A7C15ull;
    r->draws++;
    uint64_t z = r->s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double ts_rng_uniform(ts_rng *r) {
    return (double)(ts_rng_next(r) >> 11) * 0x1.0p-53;
}

int ts_rng_randint(ts_rng *r, int n) {
    int k = (int)floor(ts_rng_uniform(r) * n);
    return k < n - 1 ? k : n - 1;
}

double ts_rng_normal(ts_rng *r) {
    double u1 = ts_rng_uniform(r), u2 = ts_rng_uniform(r);
    /* 1 - u1 lies in (0, 1]: the logarithm is finite */
    return sqrt(-2.0 * log(1.0 - u1)) * cos(2.0 * M_PI * u2);
}

void ts_rng_shuffle(ts_rng *r, int *a, int n) {
    for (int j = n - 1; j >= 1; j--) {
        int k = ts_rng_randint(r, j + 1), tmp = a[j];
        a[j] = a[k];
        a[k] = tmp;
    }
}

/* ---- masks and initial prompts ------------------------------------------------------------- */

int ts_sample_usable(const uint8_t *g1024, const uint8_t *glow, int newh, int neww) {
    long long low = 0, area = 0;
    for (int i = 0; i < LOWRES_N; i++) low += glow[i] != 0;
    for (long long i = 0; i < (long long)FRAME * FRAME; i++) area += g1024[i] != 0;
    return low > 0 && (double)area <= 0.9 * (double)newh * (double)neww;
}

int ts_sample_choose_masks(ts_rng *r, const int *usable, int U, int max_n, int *chosen) {
    if (U <= 0) return 0;
    memcpy(chosen, usable, sizeof(int) * (size_t)U);
    int N = TS_MIN(max_n, U);
    for (int j = 0; j < N; j++) {
        int k = j + ts_rng_randint(r, U - j), tmp = chosen[j];
        chosen[j] = chosen[k];
        chosen[k] = tmp;
    }
    return N;
}

int ts_sample_rounds(ts_rng *r) { return ts_rng_randint(r, TS_SAMPLE_MAX_T + 1); }

int ts_sample_init(ts_rng *r, const uint8_t *g1024, int newh, int neww, ts_sample_set *out) {
    memset(out, 0, sizeof *out);
    if (newh < 1 || newh > FRAME || neww < 1 || neww > FRAME)
        return ts_error(TINYSAM_E_ARG, "sampling: input size %dx%d outside the 1024 frame", neww,
                        newh);
    long long area = 0;
    int x0 = FRAME, y0 = FRAME, x1 = -1, y1 = -1;
    for (int y = 0; y < FRAME; y++)
        for (int x = 0; x < FRAME; x++)
            if (g1024[(size_t)y * FRAME + x]) {
                area++;
                x0 = TS_MIN(x0, x);
                x1 = TS_MAX(x1, x);
                y0 = TS_MIN(y0, y);
                y1 = TS_MAX(y1, y);
            }
    if (!area) return ts_error(TINYSAM_E_ARG, "sampling: empty ground-truth mask");
    out->init_box = !(ts_rng_uniform(r) < 0.5);
    out->pixel_index = -1;
    if (!out->init_box) {
        long long idx = ts_rng_randint(r, area > INT32_MAX ? INT32_MAX : (int)area), seen = 0;
        for (size_t i = 0; i < (size_t)FRAME * FRAME; i++)
            if (g1024[i] && seen++ == idx) {
                out->points[0][0] = (double)(i % FRAME);
                out->points[0][1] = (double)(i / FRAME);
                break;
            }
        out->labels[0] = 1;
        out->n_points = 1;
        out->pixel_index = idx;
        return 0;
    }
    double tb[4] = {x0, y0, x1, y1}, b[4];
    /* SAM: noise with standard deviation 10% of the side, at most 20 pixels */
    double sx = fmin(0.1 * (x1 - x0), 20.0), sy = fmin(0.1 * (y1 - y0), 20.0);
    for (int k = 0; k < 4; k++) {
        int is_x = k % 2 == 0;
        double v = tb[k] + (is_x ? sx : sy) * ts_rng_normal(r);
        double hi = is_x ? neww - 1 : newh - 1;
        b[k] = v < 0.0 ? 0.0 : v > hi ? hi : v;
    }
    for (int k = 0; k < 2; k++)
        if (b[k] > b[k + 2]) {
            double tmp = b[k];
            b[k] = b[k + 2];
            b[k + 2] = tmp;
        }
    memcpy(out->tight_box, tb, sizeof tb);
    memcpy(out->box, b, sizeof b);
    out->has_box = 1;
    return 0;
}

/* ---- selection ----------------------------------------------------------------------------- */

int ts_sample_n_real(const ts_sample_set *s) {
    int n = s->has_box ? 1 : 0;
    for (int i = 0; i < s->n_points; i++) n += s->labels[i] == 0 || s->labels[i] == 1;
    return n;
}

void ts_sample_eligible(int n_real, int elig[4]) {
    for (int k = 0; k < 4; k++) elig[k] = n_real == 1 ? k >= 1 : k == 0;
}

int ts_sample_select(const float u[4], const int elig[4]) {
    int best = -1;
    for (int k = 0; k < 4; k++)
        if (elig[k] && (best < 0 || u[k] > u[best])) best = k; /* strict: ties keep smaller k */
    return best;
}

int ts_sample_tokens(const ts_sample_set *s) { return s->n_points + (s->has_box ? 2 : 1); }

/* ---- rounds -------------------------------------------------------------------------------- */

static int round_one(ts_rng *r, const float *z4, const float u[4], const uint8_t *g,
                     const uint8_t *valid, ts_sample_set *s, float *mask_next,
                     ts_sample_info *info) {
    if (s->n_points >= TS_SAMPLE_MAX_POINTS)
        return ts_error(TINYSAM_E_ARG, "sampling: more than %d points in a set",
                        TS_SAMPLE_MAX_POINTS);
    int elig[4];
    ts_sample_eligible(ts_sample_n_real(s), elig);
    int k = ts_sample_select(u, elig);
    const float *z = z4 + (size_t)k * LOWRES_N;
    long long count = 0;
    for (int i = 0; i < LOWRES_N; i++) count += valid[i] && ((z[i] > 0.0f) != (g[i] != 0));
    ts_sample_info in = {.selected = k, .error_cells = count, .cell_index = -1, .label = -1};
    double px = 0.0, py = 0.0;
    if (count) {
        long long idx = ts_rng_randint(r, (int)count), seen = 0;
        for (int i = 0; i < LOWRES_N; i++)
            if (valid[i] && ((z[i] > 0.0f) != (g[i] != 0)) && seen++ == idx) {
                in.cell_index = idx;
                in.row = i / LOWRES;
                in.col = i % LOWRES;
                in.label = g[i] != 0; /* false negative: positive point */
                in.logit = z[i];
                break;
            }
        /* the cell centre in the 1024 frame, less the encoder's 0.5 */
        px = 4.0 * in.col + 1.5;
        py = 4.0 * in.row + 1.5;
    }
    s->points[s->n_points][0] = px;
    s->points[s->n_points][1] = py;
    s->labels[s->n_points] = in.label;
    s->n_points++;
    if (mask_next) memcpy(mask_next, z, sizeof(float) * LOWRES_N);
    if (info) *info = in;
    return 0;
}

int ts_sample_round(ts_rng *r, int N, const float *z, const float *u,
                    const uint8_t *const *glow, const uint8_t *valid, ts_sample_set *sets,
                    float *mask_next, ts_sample_info *info) {
    for (int i = 0; i < N; i++) {
        int rc = round_one(r, z + (size_t)i * 4 * LOWRES_N, u + 4 * i, glow[i], valid, &sets[i],
                           mask_next ? mask_next + (size_t)i * LOWRES_N : NULL,
                           info ? &info[i] : NULL);
        if (rc) return rc;
    }
    return 0;
}

void ts_sample_to_prompt(const ts_sample_set *s, const float *mask_input, float *coords,
                         ts_prompt_set *out) {
    for (int i = 0; i < s->n_points; i++)
        for (int c = 0; c < 2; c++) coords[2 * i + c] = ((float)s->points[i][c] + 0.5f) / 1024.0f;
    memset(out, 0, sizeof *out);
    out->n_points = s->n_points;
    out->coords = coords;
    out->labels = s->labels;
    out->has_box = s->has_box;
    if (s->has_box)
        for (int k = 0; k < 4; k++) out->box[k] = ((float)s->box[k] + 0.5f) / 1024.0f;
    out->mask_input = mask_input;
}
