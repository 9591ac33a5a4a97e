/* test.c - the harness behind test.h. */
#include "test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int t_failed_checks, t_skipped;
static int n_pass, n_fail, n_skip;

void t_fail(const char *file, int line, const char *fmt, ...) {
    if (t_failed_checks++ < 5) {
        va_list ap;
        va_start(ap, fmt);
        printf("  %s:%d: ", file, line);
        vprintf(fmt, ap);
        printf("\n");
        va_end(ap);
    }
}

void t_run(const char *name, void (*fn)(void)) {
    t_failed_checks = 0;
    t_skipped = 0;
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    fn();
    clock_gettime(CLOCK_MONOTONIC, &b);
    double ms = (b.tv_sec - a.tv_sec) * 1e3 + (b.tv_nsec - a.tv_nsec) / 1e6;
    if (t_failed_checks) {
        n_fail++;
        printf("FAIL %s (%d failed checks)\n", name, t_failed_checks);
    } else if (t_skipped) {
        n_skip++;
        printf("SKIP %s\n", name);
    } else {
        n_pass++;
        printf("ok   %s (%.0f ms)\n", name, ms);
    }
    fflush(stdout);
}

int test_summary(void) {
    printf("# %d %d %d\n", n_pass, n_fail, n_skip);
    return n_fail ? 1 : 0;
}

const char *fixture(const char *rel) {
    static char buf[8][1024];
    static int k;
    const char *root = getenv("TINYSAM_FIXTURES");
    if (!root || !*root) root = "../shared/fixtures";
    char *b = buf[k++ & 7];
    snprintf(b, sizeof buf[0], "%s/%s", root, rel);
    return b;
}

int fixture_exists(const char *rel) {
    return access(fixture(rel), R_OK) == 0;
}

const char *tmp_path(const char *name) {
    static char buf[8][1024];
    static int k;
    const char *build = getenv("BUILD");
    if (!build || !*build) build = "build";
    char dir[512];
    snprintf(dir, sizeof dir, "%s/tmp", build);
    mkdir(build, 0755);
    mkdir(dir, 0755);
    char *b = buf[k++ & 7];
    snprintf(b, sizeof buf[0], "%s/%d_%s", dir, (int)getpid(), name);
    return b;
}

int test_sanitized(void) {
#if defined(__SANITIZE_ADDRESS__)
    return 1;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    return 1;
#endif
#endif
    return 0;
}

int test_portable_kernels(void) {
    const char *isa = getenv("TINYSAM_ISA");
    return isa && !strcmp(isa, "scalar");
}
