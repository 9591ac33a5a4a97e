/* tensor_map.c - the named tensor set shared by the checkpoint loaders: lookup, shape-checked
 * take, format detection, dtype conversion and ownership. */
#include "io/tensor_map.h"
#include "io/tensor_map_internal.h"
#include "core.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

float ts_half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 31, man = h & 1023, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalise */
            int e = -1;
            do {
                e++;
                man <<= 1;
            } while (!(man & 1024));
            bits = sign | (uint32_t)(127 - 15 - e) << 23 | (man & 1023) << 13;
        }
    } else if (exp == 31) {
        bits = sign | 0x7F800000u | man << 13;
    } else {
        bits = sign | (exp + 127 - 15) << 23 | man << 13;
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

/* All 65536 float16 values, built on first use: a lookup is several times faster than
 * ts_half_to_float's branches (float16 checkpoints hold millions of values). */
static float half_table[65536];
static pthread_once_t half_once = PTHREAD_ONCE_INIT;

static void half_table_init(void) {
    for (uint32_t h = 0; h < 65536; h++) half_table[h] = ts_half_to_float((uint16_t)h);
}

int ts_dtype_size(ts_dtype t) {
    switch (t) {
    case TS_DTYPE_F32: case TS_DTYPE_I32: return 4;
    case TS_DTYPE_I64: case TS_DTYPE_F64: return 8;
    case TS_DTYPE_I8: case TS_DTYPE_U8: return 1;
    case TS_DTYPE_F16: case TS_DTYPE_BF16: return 2;
    }
    return 0;
}

ts_dtype ts_dtype_loaded(ts_dtype file) {
    return file == TS_DTYPE_F16 || file == TS_DTYPE_BF16 || file == TS_DTYPE_F64 ? TS_DTYPE_F32
                                                                                : file;
}

/* Converts n little-endian elements of type `from` at src to the loaded type at dst. */
void ts_convert_elements(ts_dtype from, const uint8_t *src, size_t n, void *dst) {
    switch (from) {
    case TS_DTYPE_F16: {
        float *d = dst;
        if (n < 4096) { /* small tensors: not worth touching the table */
            for (size_t i = 0; i < n; i++)
                d[i] = ts_half_to_float((uint16_t)(src[2 * i] | src[2 * i + 1] << 8));
            break;
        }
        pthread_once(&half_once, half_table_init);
        for (size_t i = 0; i < n; i++) d[i] = half_table[src[2 * i] | src[2 * i + 1] << 8];
        break;
    }
    case TS_DTYPE_BF16: {
        float *d = dst;
        for (size_t i = 0; i < n; i++) {
            uint32_t b = (uint32_t)(src[2 * i] | src[2 * i + 1] << 8) << 16;
            memcpy(&d[i], &b, 4);
        }
        break;
    }
    case TS_DTYPE_F64: {
        float *d = dst;
        for (size_t i = 0; i < n; i++) {
            double v;
            memcpy(&v, src + 8 * i, 8);
            d[i] = (float)v;
        }
        break;
    }
    default:
        memcpy(dst, src, n * (size_t)ts_dtype_size(from));
    }
}

int ts_file_map(const char *path, uint8_t **base, size_t *size) {
    *base = NULL;
    *size = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0) return ts_error(TINYSAM_E_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return ts_error(TINYSAM_E_IO, "%s: not a regular file", path);
    }
    if (st.st_size == 0 || (uint64_t)st.st_size > SIZE_MAX / 2) {
        close(fd);
        return st.st_size ? ts_error(TINYSAM_E_LIMIT, "%s: file too large", path) : 0;
    }
    /* populated at once: the loaders read every byte (CRCs, digests, packing), and one
     * populating call costs far less than a page fault per page */
    void *p = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED)
        return ts_error(TINYSAM_E_IO, "%s: mmap failed: %s", path, strerror(errno));
    /* loaders read most of the file once, front to back */
    madvise(p, (size_t)st.st_size, MADV_WILLNEED);
    *base = p;
    *size = (size_t)st.st_size;
    return 0;
}

void ts_map_release_pages(ts_tensor_map *m) {
    /* read-only private mapping, never written: nothing is lost */
    if (!m || !m->map_base || m->borrowed) return;
    if (!m->cache_ok || m->cache_end <= m->cache_begin) {
        (void)madvise(m->map_base, m->map_size, MADV_DONTNEED);
        return;
    }
    /* the load cache stays: the networks read it in place (whole pages around it) */
    uintptr_t pg = 4096, base = (uintptr_t)m->map_base;
    uintptr_t a = (base + m->cache_begin) / pg * pg;
    uintptr_t b = (base + m->cache_end + pg - 1) / pg * pg;
    if (a > base) (void)madvise(m->map_base, a - base, MADV_DONTNEED);
    if (b < base + m->map_size) (void)madvise((void *)b, base + m->map_size - b, MADV_DONTNEED);
}

void ts_file_unmap(uint8_t *base, size_t size) {
    if (base) munmap(base, size);
}

ts_tensor *ts_map_add(ts_tensor_map *m, const char *name) {
    if (m->n == m->cap) {
        int nc = m->cap ? m->cap * 2 : 64;
        ts_tensor *nt = realloc(m->t, (size_t)nc * sizeof *nt);
        if (!nt) return ts_error(TINYSAM_E_NOMEM, "out of memory"), NULL;
        m->t = nt;
        m->cap = nc;
    }
    ts_tensor *t = &m->t[m->n];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    if (!t->name) return ts_error(TINYSAM_E_NOMEM, "out of memory"), NULL;
    m->n++;
    return t;
}

static int map_load(const char *path, ts_tensor_map **out, int async) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return ts_error(TINYSAM_E_IO, "%s: cannot open: %m", path);
    uint8_t head[9] = {0};
    size_t n = fread(head, 1, sizeof head, f);
    fclose(f);
    if (n >= 4 && !memcmp(head, "PK\x03\x04", 4)) return ts_pth_load(path, out);
    /* safetensors: a u64 header length, then the JSON header's '{'. Checked before the raw
     * pickle's 0x80: a header length whose low byte is 0x80 starts with that byte too. */
    if (n == 9 && head[8] == '{')
        return async ? ts_safetensors_load_async(path, out) : ts_safetensors_load(path, out);
    if (n >= 2 && head[0] == 0x80) return ts_pth_load(path, out);
    if (n >= 8) return async ? ts_safetensors_load_async(path, out) : ts_safetensors_load(path, out);
    return ts_error(TINYSAM_E_FORMAT, "%s: too short to be a checkpoint (%zu bytes)", path, n);
}

int ts_map_load(const char *path, ts_tensor_map **out) { return map_load(path, out, 0); }
int ts_map_load_async(const char *path, ts_tensor_map **out) { return map_load(path, out, 1); }

void ts_map_free(ts_tensor_map *m) {
    if (!m) return;
    (void)ts_map_wait_checks(m); /* (its thread reads the mapping) */
    const uint8_t *lo = m->map_base, *hi = lo ? lo + m->map_size : NULL;
    for (int i = 0; i < m->n; i++) {
        const uint8_t *d = m->t[i].data;
        if (!(lo && d >= lo && d < hi)) free(m->t[i].data);
        free(m->t[i].name);
    }
    free(m->t);
    free(m->metadata_json);
    for (int i = 0; i < m->n_cache; i++) {
        const uint8_t *d = m->cache[i].data;
        if (!(lo && d >= lo && d < hi)) free(m->cache[i].data);
        free(m->cache[i].name);
    }
    free(m->cache);
    if (m->map_base && !m->borrowed) munmap(m->map_base, m->map_size);
    free(m);
}

const ts_tensor *ts_map_cache_get(const ts_tensor_map *m, const char *name) {
    for (int i = 0; m && m->cache_ok && i < m->n_cache; i++)
        if (!strcmp(m->cache[i].name, name)) return &m->cache[i];
    return NULL;
}

const ts_tensor *ts_map_get(const ts_tensor_map *m, const char *name) {
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->t[i].name, name)) return &m->t[i];
    return NULL;
}

static void shape_str(const int64_t *shape, int ndim, char *buf, size_t cap) {
    size_t o = 0;
    o += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && o < cap; i++)
        o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? "," : "", (long long)shape[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

const float *ts_map_take(ts_tensor_map *m, const char *name, int ndim, ...) {
    int64_t want[TS_MAX_DIMS];
    va_list ap;
    va_start(ap, ndim);
    for (int i = 0; i < ndim && i < TS_MAX_DIMS; i++) want[i] = va_arg(ap, int);
    va_end(ap);
    ts_tensor *t = NULL;
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->t[i].name, name)) t = &m->t[i];
    if (!t) return ts_error(TINYSAM_E_FORMAT, "missing tensor '%s'", name), NULL;
    int same = t->ndim == ndim && ndim <= TS_MAX_DIMS;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == want[i];
    if (!same) {
        char a[128], b[128];
        shape_str(t->shape, t->ndim, a, sizeof a);
        shape_str(want, ndim, b, sizeof b);
        ts_error(TINYSAM_E_FORMAT, "tensor '%s' has shape %s, expected %s", name, a, b);
        return NULL;
    }
    if (t->dtype != TS_DTYPE_F32)
        return ts_error(TINYSAM_E_FORMAT, "tensor '%s' is not a floating-point tensor", name), NULL;
    t->used = 1;
    return t->data;
}

int ts_map_check_all_used(const ts_tensor_map *m, int (*ignore)(const char *name)) {
    for (int i = 0; i < m->n; i++)
        if (!m->t[i].used && !(ignore && ignore(m->t[i].name)))
            return ts_error(TINYSAM_E_FORMAT, "unexpected tensor '%s' (not part of this model)",
                            m->t[i].name);
    return TINYSAM_OK;
}

int ts_map_strip_wrapper_prefix(ts_tensor_map *m) {
    static const char *prefixes[] = {"module.", "_orig_mod."};
    if (m->n == 0) return 0;
    for (size_t k = 0; k < sizeof prefixes / sizeof prefixes[0]; k++) {
        size_t l = strlen(prefixes[k]);
        int all = 1;
        for (int i = 0; i < m->n && all; i++)
            all = !strncmp(m->t[i].name, prefixes[k], l) && m->t[i].name[l];
        if (!all) continue;
        /* names stay unique and in the same order: one common prefix goes */
        for (int i = 0; i < m->n; i++)
            memmove(m->t[i].name, m->t[i].name + l, strlen(m->t[i].name + l) + 1);
        snprintf(m->key_prefix, sizeof m->key_prefix, "%s", prefixes[k]);
        return 1;
    }
    return 0;
}
