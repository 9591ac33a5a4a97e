/* core.h - internal helpers shared by every part of the library: error reporting,
 * checked allocation and size arithmetic. */
#ifndef TS_CORE_H
#define TS_CORE_H

#include "tinysam.h"
#include <stddef.h>
#include <stdint.h>

/* Records a printf-style message for the calling thread and returns code, so that a
 * failing path reads `return ts_error(TINYSAM_E_FORMAT, "%s: bad header", path);`. */
int ts_error(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Prefixes the current thread's message with "prefix: " and returns code. */
int ts_error_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ts_error_clear(void);

/* Allocation that reports TINYSAM_E_NOMEM through ts_error on failure (returns NULL). */
void *ts_malloc(size_t n);
void *ts_calloc(size_t n, size_t size);
/* 64-byte aligned, free with ts_free_aligned. */
void *ts_malloc_aligned(size_t n);
void ts_free_aligned(void *p);
/* Makes the pages of [p, p + n) present (written in place: contents kept) at the cost of one
 * system call where the kernel allows it, instead of a page fault per page. */
void ts_mem_populate(void *p, size_t n);

/* Overflow-checked a*b (and a*b+c); return 0 on overflow. */
int ts_mul_size(size_t a, size_t b, size_t *out);
int ts_mad_size(size_t a, size_t b, size_t c, size_t *out);

/* Milliseconds on the monotonic clock (for timings reported to users). */
double ts_now_ms(void);

/* Reads a whole file into a malloc'd buffer (max_size guards against absurd files). */
int ts_read_file(const char *path, size_t max_size, uint8_t **data, size_t *size);

/* Creates a directory (and parents), OK if it exists. */
int ts_mkdirs(const char *path);

#define TS_MIN(a, b) ((a) < (b) ? (a) : (b))
#define TS_MAX(a, b) ((a) > (b) ? (a) : (b))

/* Invariant checks for our own logic (never for input validation). */
#define TS_ASSERT(x)                                                                           \
    do {                                                                                       \
        if (!(x)) ts_assert_fail(__FILE__, __LINE__, #x);                                      \
    } while (0)
void ts_assert_fail(const char *file, int line, const char *expr) __attribute__((noreturn));

#endif
