/* eg_tiny.h - the tiny TinyViT encoder (train/encoder_grad.h layout) that the gradient tests
 * build with random parameters: every module kind, windows with padding and without, several
 * windows, merge strides 2 and 1 (48 -> 12 -> 6 -> 3 -> 3). */
#ifndef TS_TESTS_EG_TINY_H
#define TS_TESTS_EG_TINY_H

#include "train/encoder_grad.h"

/* The configuration (image side 48, output side 3, neck 16). */
ts_eg_config test_eg_tiny_config(void);

/* Random parameters p[L->total] in layout order: BatchNorm running variance 1 + 0.5 u and
 * mean 0.1 u, norm / BatchNorm / neck scales 1 + w1_spread u, attention biases 0.5 u, weights
 * 1.5 u / sqrt(fan-in), other biases 0.1 u; u = urand() in [-1, 1), one call per value (the
 * caller's generator, so each test keeps its own sequence). */
void test_eg_random_params(const ts_eg_layout *L, double w1_spread, double (*urand)(void),
                           float *p);

#endif
