/* core.c - error messages, checked allocation, file reading. */
#include "core.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <stdint.h>

static _Thread_local char g_error[1024];

const char *tinysam_status_str(tinysam_status s) {
    switch (s) {
    case TINYSAM_OK: return "ok";
    case TINYSAM_E_IO: return "I/O error";
    case TINYSAM_E_FORMAT: return "invalid format";
    case TINYSAM_E_NOMEM: return "out of memory";
    case TINYSAM_E_ARG: return "invalid argument";
    case TINYSAM_E_UNSUPPORTED: return "unsupported";
    case TINYSAM_E_LIMIT: return "limit exceeded";
    }
    return "unknown status";
}

const char *tinysam_last_error(void) {
    return g_error;
}

void ts_error_clear(void) {
    g_error[0] = 0;
}

int ts_error(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
    return code;
}

int ts_error_prefix(int code, const char *fmt, ...) {
    char prefix[512], old[sizeof g_error];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, g_error, sizeof old);
    size_t lp = strlen(prefix);
    memcpy(g_error, prefix, lp);
    g_error[lp] = ':';
    g_error[lp + 1] = ' ';
    size_t room = sizeof g_error - lp - 3, lo = strlen(old);
    if (lo > room) lo = room;
    memcpy(g_error + lp + 2, old, lo);
    g_error[lp + 2 + lo] = 0;
    return code;
}

void *ts_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) ts_error(TINYSAM_E_NOMEM, "out of memory (%zu bytes)", n);
    return p;
}

void *ts_calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p) ts_error(TINYSAM_E_NOMEM, "out of memory (%zu x %zu bytes)", n, size);
    return p;
}

/* Transparent huge pages (madvise(MADV_HUGEPAGE) on 2 MB aligned buffers) were tried for the
 * large buffers (issue 20): on the 2-core development VM a fresh process's first 64 MB of huge
 * pages cost 7-215 ms of system time (median ~100: the host backs each new 2 MB region)
 * against a steady ~33 ms with 4 KB pages, so plain pages it is. */
void *ts_malloc_aligned(size_t n) {
    void *p = NULL;
    n = (n + 63) & ~(size_t)63;
    if (posix_memalign(&p, 64, n ? n : 64) != 0) {
        ts_error(TINYSAM_E_NOMEM, "out of memory (%zu bytes)", n);
        return NULL;
    }
    return p;
}

void ts_free_aligned(void *p) {
    free(p);
}

/* One madvise(MADV_POPULATE_WRITE) call makes the pages of the page-aligned middle: on the
 * development VM a fault per page costs several times more (issue 20). The partial pages at
 * either end, and kernels before 5.14, are written one byte a page. */
void ts_mem_populate(void *p, size_t n) {
    if (!p || !n) return;
    volatile char *v = p;
#ifdef MADV_POPULATE_WRITE
    uintptr_t a = ((uintptr_t)p + 4095) & ~(uintptr_t)4095;
    uintptr_t e = ((uintptr_t)p + n) & ~(uintptr_t)4095;
    if (e > a && madvise((void *)a, e - a, MADV_POPULATE_WRITE) == 0) {
        v[0] = v[0];
        v[n - 1] = v[n - 1];
        return;
    }
#endif
    for (size_t i = 0; i < n; i += 4096) v[i] = v[i];
    v[n - 1] = v[n - 1];
}

int ts_mul_size(size_t a, size_t b, size_t *out) {
    if (a && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

int ts_mad_size(size_t a, size_t b, size_t c, size_t *out) {
    size_t ab;
    if (!ts_mul_size(a, b, &ab) || ab > SIZE_MAX - c) return 0;
    *out = ab + c;
    return 1;
}

int ts_read_file(const char *path, size_t max_size, uint8_t **data, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return ts_error(TINYSAM_E_IO, "%s: %s", path, strerror(errno));
    if (fseek(f, 0, SEEK_END) != 0) {
        fclose(f);
        return ts_error(TINYSAM_E_IO, "%s: cannot seek (not a regular file?)", path);
    }
    long len = ftell(f);
    if (len < 0) {
        fclose(f);
        return ts_error(TINYSAM_E_IO, "%s: cannot determine size", path);
    }
    if ((unsigned long)len > max_size) {
        fclose(f);
        return ts_error(TINYSAM_E_LIMIT, "%s: file too large (%ld bytes, limit %zu)", path, len,
                        max_size);
    }
    rewind(f);
    uint8_t *buf = ts_malloc((size_t)len + 1);
    if (!buf) {
        fclose(f);
        return TINYSAM_E_NOMEM;
    }
    if (len && fread(buf, 1, (size_t)len, f) != (size_t)len) {
        free(buf);
        fclose(f);
        return ts_error(TINYSAM_E_IO, "%s: read failed", path);
    }
    fclose(f);
    buf[len] = 0;
    *data = buf;
    *size = (size_t)len;
    return TINYSAM_OK;
}

void ts_assert_fail(const char *file, int line, const char *expr) {
    fprintf(stderr, "tinysam: internal error at %s:%d: %s\n", file, line, expr);
    abort();
}

double ts_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int ts_mkdirs(const char *path) {
    char buf[4096];
    if (strlen(path) >= sizeof buf) return ts_error(TINYSAM_E_ARG, "path too long");
    strcpy(buf, path);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return ts_error(TINYSAM_E_IO, "%s: cannot create directory: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) != 0 && errno != EEXIST)
        return ts_error(TINYSAM_E_IO, "%s: cannot create directory: %s", buf, strerror(errno));
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
        return ts_error(TINYSAM_E_IO, "%s: not a directory", buf);
    return TINYSAM_OK;
}
