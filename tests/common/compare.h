/* compare.h - the figures tests and benchmarks compare two models' outputs with: cosine
 * similarity and largest difference of two float vectors, IoU and agreement of two binary
 * masks, and a file's size. */
#ifndef TS_TESTS_COMPARE_H
#define TS_TESTS_COMPARE_H

#include <stddef.h>
#include <stdint.h>

/* max |a - b| over n values, in double; NaN when any difference is NaN. */
double test_max_abs_diff(const float *a, const float *b, size_t n);
/* sum(a b) / sqrt(sum(a^2) sum(b^2)), in double (0 for two zero vectors). */
double test_cosine(const float *a, const float *b, size_t n);
/* |a and b| / |a or b| over n mask bytes (nonzero = inside); 1 when both are empty. */
double test_mask_iou(const uint8_t *a, const uint8_t *b, size_t n);
/* The fraction of the n mask bytes that are equal in a and b (1 for n == 0). */
double test_mask_agreement(const uint8_t *a, const uint8_t *b, size_t n);
/* Size in bytes of the file at path, -1 when it cannot be read. */
long long test_file_size(const char *path);

#endif
