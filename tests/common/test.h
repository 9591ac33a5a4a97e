/* test.h - a minimal test harness.
 *
 *   static void test_x(void) { CHECK(a == b, "a=%d b=%d", a, b); }
 *   int main(void) { RUN(test_x); return test_summary(); }
 *
 * Each case prints "ok NAME" or "FAIL NAME: first failed check"; a case that needs
 * fixtures that are missing calls SKIP("why") and is reported as skipped (never passed).
 * test_summary() prints "# passed failed skipped" for tests/run.sh and returns the exit
 * status. */
#ifndef TS_TEST_H
#define TS_TEST_H

#include <stdio.h>

extern int t_failed_checks;   /* failed checks in the running case */
extern int t_skipped;         /* running case called SKIP */

void t_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void t_run(const char *name, void (*fn)(void));
int test_summary(void);
/* Fixture path: $TINYSAM_FIXTURES (default ../shared/fixtures) + "/" + rel. Static buffer
 * rotation of 8 entries. */
const char *fixture(const char *rel);
int fixture_exists(const char *rel);
/* Scratch directory for files a test writes (build/tmp/...), created on demand. */
const char *tmp_path(const char *name);

/* 1 in the AddressSanitizer build (about 10x slower on the network). */
int test_sanitized(void);
/* 1 when the run uses the portable kernels (TINYSAM_ISA=scalar, also slow on the network). */
int test_portable_kernels(void);

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) t_fail(__FILE__, __LINE__, __VA_ARGS__);                                  \
    } while (0)
#define REQUIRE(cond, ...)                                                                     \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            t_fail(__FILE__, __LINE__, __VA_ARGS__);                                           \
            return;                                                                            \
        }                                                                                      \
    } while (0)
#define SKIP(why)                                                                              \
    do {                                                                                       \
        t_skipped = 1;                                                                         \
        printf("  skip reason: %s\n", why);                                                    \
        return;                                                                                \
    } while (0)
#define RUN(fn) t_run(#fn, fn)

#endif
