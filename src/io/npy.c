/* npy.c - NumPy .npy reader/writer (format 1.0, 2.0 and 3.0 headers, little-endian,
 * C order). The header dict is parsed with bounds checks; nothing is trusted. */
#include "io/npy.h"
#include "core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NPY_MAX_FILE ((size_t)1 << 34) /* 16 GiB */

static int dtype_size(ts_dtype t) {
    switch (t) {
    case TS_DTYPE_F32: case TS_DTYPE_I32: return 4;
    case TS_DTYPE_F64: case TS_DTYPE_I64: return 8;
    case TS_DTYPE_U8: case TS_DTYPE_I8: return 1;
    case TS_DTYPE_F16: case TS_DTYPE_BF16: return 2;
    }
    return 0;
}

static const char *dtype_descr(ts_dtype t) {
    switch (t) {
    case TS_DTYPE_F32: return "<f4";
    case TS_DTYPE_F64: return "<f8";
    case TS_DTYPE_I64: return "<i8";
    case TS_DTYPE_I32: return "<i4";
    case TS_DTYPE_U8: return "|u1";
    case TS_DTYPE_I8: return "|i1";
    default: return NULL;
    }
}

/* Finds 'key': in the header dict and returns a pointer just after the colon. */
static const char *find_key(const char *h, const char *key) {
    char pat[32];
    snprintf(pat, sizeof pat, "'%s'", key);
    const char *p = strstr(h, pat);
    if (!p) return NULL;
    p += strlen(pat);
    while (*p == ' ') p++;
    if (*p != ':') return NULL;
    p++;
    while (*p == ' ') p++;
    return p;
}

int ts_npy_parse(const uint8_t *buf, size_t size, ts_npy *out) {
    memset(out, 0, sizeof *out);
    if (size < 10 || memcmp(buf, "\x93NUMPY", 6) != 0)
        return ts_error(TINYSAM_E_FORMAT, "npy: not a .npy file (bad magic)");
    int major = buf[6];
    size_t hlen, hstart;
    if (major == 1) {
        hlen = buf[8] | (size_t)buf[9] << 8;
        hstart = 10;
    } else if (major == 2 || major == 3) {
        if (size < 12) return ts_error(TINYSAM_E_FORMAT, "npy: truncated header");
        hlen = buf[8] | (size_t)buf[9] << 8 | (size_t)buf[10] << 16 | (size_t)buf[11] << 24;
        hstart = 12;
    } else {
        return ts_error(TINYSAM_E_FORMAT, "npy: unsupported format version %d", major);
    }
    if (hlen > 65536 || hstart + hlen > size)
        return ts_error(TINYSAM_E_FORMAT, "npy: truncated or oversized header");
    char h[65537];
    memcpy(h, buf + hstart, hlen);
    h[hlen] = 0;
    if (memchr(h, 0, hlen)) return ts_error(TINYSAM_E_FORMAT, "npy: NUL byte in header");

    const char *d = find_key(h, "descr");
    if (!d || (*d != '\'' && *d != '"')) return ts_error(TINYSAM_E_FORMAT, "npy: no 'descr'");
    char descr[16] = {0};
    const char *e = strchr(d + 1, *d);
    if (!e || e - d - 1 >= (long)sizeof descr) return ts_error(TINYSAM_E_FORMAT, "npy: bad 'descr'");
    memcpy(descr, d + 1, (size_t)(e - d - 1));
    static const struct { const char *s; ts_dtype t; } tab[] = {
        {"<f4", TS_DTYPE_F32}, {"<f8", TS_DTYPE_F64}, {"<i8", TS_DTYPE_I64},
        {"<i4", TS_DTYPE_I32}, {"|u1", TS_DTYPE_U8},  {"|i1", TS_DTYPE_I8},
        {"|b1", TS_DTYPE_U8},  {"<u1", TS_DTYPE_U8},  {"<f2", TS_DTYPE_F16},
    };
    int found = 0;
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (!strcmp(descr, tab[i].s)) {
            out->dtype = tab[i].t;
            found = 1;
        }
    if (!found) return ts_error(TINYSAM_E_FORMAT, "npy: unsupported dtype '%s'", descr);

    const char *fo = find_key(h, "fortran_order");
    if (!fo || strncmp(fo, "False", 5) != 0)
        return ts_error(TINYSAM_E_FORMAT, "npy: only C-order arrays are supported");

    const char *sp = find_key(h, "shape");
    if (!sp || *sp != '(') return ts_error(TINYSAM_E_FORMAT, "npy: no 'shape'");
    sp++;
    int64_t numel = 1;
    out->ndim = 0;
    for (;;) {
        while (*sp == ' ' || *sp == ',') sp++;
        if (*sp == ')') break;
        if (*sp < '0' || *sp > '9') return ts_error(TINYSAM_E_FORMAT, "npy: bad shape");
        if (out->ndim >= TS_MAX_DIMS) return ts_error(TINYSAM_E_FORMAT, "npy: too many dims");
        char *end;
        long long v = strtoll(sp, &end, 10);
        if (end == sp || v < 0 || v > ((int64_t)1 << 40))
            return ts_error(TINYSAM_E_FORMAT, "npy: bad dimension");
        out->shape[out->ndim++] = v;
        if (v && numel > ((int64_t)1 << 40) / v) return ts_error(TINYSAM_E_FORMAT, "npy: too large");
        numel *= v;
        sp = end;
    }
    out->numel = numel;
    if (out->dtype == TS_DTYPE_F16)
        return ts_error(TINYSAM_E_FORMAT, "npy: float16 arrays are not supported");
    size_t es = (size_t)dtype_size(out->dtype), nbytes;
    if (!ts_mul_size((size_t)numel, es, &nbytes) || hstart + hlen + nbytes > size)
        return ts_error(TINYSAM_E_FORMAT, "npy: truncated data (%lld values of %zu bytes expected)",
                        (long long)numel, es);
    void *data = ts_malloc(nbytes ? nbytes : 1);
    if (!data) return TINYSAM_E_NOMEM;
    memcpy(data, buf + hstart + hlen, nbytes);
    out->data = data;
    return TINYSAM_OK;
}

int ts_npy_load(const char *path, ts_npy *out) {
    uint8_t *buf;
    size_t size;
    memset(out, 0, sizeof *out);
    int rc = ts_read_file(path, NPY_MAX_FILE, &buf, &size);
    if (rc) return rc;
    rc = ts_npy_parse(buf, size, out);
    free(buf);
    if (rc) return ts_error_prefix(rc, "%s", path);
    return TINYSAM_OK;
}

void ts_npy_free(ts_npy *a) {
    free(a->data);
    a->data = NULL;
}

int ts_npy_save(const char *path, ts_dtype dtype, int ndim, const int64_t *shape,
                const void *data) {
    const char *descr = dtype_descr(dtype);
    if (!descr) return ts_error(TINYSAM_E_ARG, "npy: unsupported dtype for writing");
    char dims[256] = "";
    size_t numel = 1;
    for (int i = 0; i < ndim; i++) {
        char t[32];
        snprintf(t, sizeof t, "%lld%s", (long long)shape[i], ndim == 1 ? "," : (i + 1 < ndim ? ", " : ""));
        strncat(dims, t, sizeof dims - strlen(dims) - 1);
        numel *= (size_t)shape[i];
    }
    char h[512];
    int n = snprintf(h, sizeof h, "{'descr': '%s', 'fortran_order': False, 'shape': (%s), }",
                     descr, dims);
    /* pad so that magic(6)+version(2)+len(2)+header is a multiple of 64, ending in '\n' */
    int total = 10 + n + 1;
    int pad = (64 - total % 64) % 64;
    memset(h + n, ' ', (size_t)pad);
    h[n + pad] = '\n';
    int hlen = n + pad + 1;
    FILE *f = fopen(path, "wb");
    if (!f) return ts_error(TINYSAM_E_IO, "%s: cannot open for writing", path);
    uint8_t pre[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(hlen & 255), (uint8_t)(hlen >> 8)};
    size_t nbytes = numel * (size_t)dtype_size(dtype);
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(h, 1, (size_t)hlen, f) == (size_t)hlen &&
             (nbytes == 0 || fwrite(data, 1, nbytes, f) == nbytes);
    if (fclose(f) != 0) ok = 0;
    if (!ok) return ts_error(TINYSAM_E_IO, "%s: write failed", path);
    return TINYSAM_OK;
}
