/* compare.c - see compare.h. */
#include "compare.h"

#include <math.h>
#include <sys/stat.h>

double test_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (!(d <= m)) m = d; /* NaN propagates */
    }
    return m;
}

double test_cosine(const float *a, const float *b, size_t n) {
    double ab = 0, aa = 0, bb = 0;
    for (size_t i = 0; i < n; i++) {
        ab += (double)a[i] * b[i];
        aa += (double)a[i] * a[i];
        bb += (double)b[i] * b[i];
    }
    return ab / sqrt(aa * bb + 1e-30);
}

double test_mask_iou(const uint8_t *a, const uint8_t *b, size_t n) {
    size_t in = 0, un = 0;
    for (size_t i = 0; i < n; i++) {
        in += a[i] && b[i];
        un += a[i] || b[i];
    }
    return un ? (double)in / (double)un : 1.0;
}

double test_mask_agreement(const uint8_t *a, const uint8_t *b, size_t n) {
    size_t same = 0;
    for (size_t i = 0; i < n; i++) same += a[i] == b[i];
    return n ? (double)same / (double)n : 1.0;
}

long long test_file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? -1 : (long long)st.st_size;
}
