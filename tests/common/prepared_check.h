/* prepared_check.h - issue 20's first decode at warm speed: an embedding that tinysam_encode
 * prepared decodes on its first call without making its image side again, and gives, bit for
 * bit, what a freshly loaded model that makes it in the call gives (one prompt, a batch, and
 * after another embedding was prepared in between). Shared by the float and int8 tests. */
#ifndef TS_TEST_PREPARED_CHECK_H
#define TS_TEST_PREPARED_CHECK_H

/* path: a model file; what: its name in messages. Counts its checks in the test totals. */
void check_prepared_decode(const char *path, const char *what);

#endif
