/* npy.c - NumPy .npy reader/writer (format 1.0, 2.0 and 3.0 headers, little-endian,
 * C order). The header dict is parsed with bounds checks; nothing is trusted. */
#include "io/npy.h"
#include "core.h"
#include "io/tensor_map_internal.h"

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
    case TS_DTYPE_F16: return "<f2";
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

/* Parses the magic and header dict; *data_off is where the array bytes start. Checks that
 * the buffer is long enough for the header only. */
static int parse_header(const uint8_t *buf, size_t size, ts_npy *out, size_t *data_off) {
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
    *data_off = hstart + hlen;
    return TINYSAM_OK;
}

/* Bytes of the array data; the shape limits keep this from overflowing. */
static size_t data_bytes(const ts_npy *a) {
    return (size_t)a->numel * (size_t)dtype_size(a->dtype);
}

int ts_npy_parse(const uint8_t *buf, size_t size, ts_npy *out) {
    size_t off;
    int rc = parse_header(buf, size, out, &off);
    if (rc) return rc;
    size_t nbytes = data_bytes(out);
    if (nbytes > size - off)
        return ts_error(TINYSAM_E_FORMAT, "npy: truncated data (%lld values of %d bytes expected)",
                        (long long)out->numel, dtype_size(out->dtype));
    void *data = ts_malloc(nbytes ? nbytes : 1);
    if (!data) return TINYSAM_E_NOMEM;
    memcpy(data, buf + off, nbytes);
    out->data = data;
    return TINYSAM_OK;
}

int ts_npy_probe(const char *path, ts_npy *info) {
    memset(info, 0, sizeof *info);
    FILE *f = fopen(path, "rb");
    if (!f) return ts_error(TINYSAM_E_IO, "%s: cannot open", path);
    /* the header is at most 12 + 65536 bytes; read that much and the file size */
    size_t cap = 12 + 65536;
    uint8_t *buf = ts_malloc(cap);
    if (!buf) {
        fclose(f);
        return TINYSAM_E_NOMEM;
    }
    size_t n = fread(buf, 1, cap, f);
    int rc = 0;
    long end = -1;
    if (ferror(f) || fseek(f, 0, SEEK_END) != 0 || (end = ftell(f)) < 0)
        rc = ts_error(TINYSAM_E_IO, "%s: read failed", path);
    fclose(f);
    size_t off = 0;
    if (!rc) rc = parse_header(buf, n, info, &off);
    free(buf);
    if (!rc && (size_t)end != off + data_bytes(info))
        rc = ts_error(TINYSAM_E_FORMAT, "npy: file size %ld does not match the header (%zu)", end,
                      off + data_bytes(info));
    if (rc) return ts_error_prefix(rc, "%s", path);
    return TINYSAM_OK;
}

int ts_npy_to_f32(ts_npy *a) {
    if (a->dtype == TS_DTYPE_F32) return TINYSAM_OK;
    if (a->dtype != TS_DTYPE_F16)
        return ts_error(TINYSAM_E_FORMAT, "npy: cannot convert this dtype to float32");
    size_t nbytes;
    if (!ts_mul_size((size_t)a->numel, 4, &nbytes))
        return ts_error(TINYSAM_E_FORMAT, "npy: too large");
    float *d = ts_malloc(nbytes ? nbytes : 1);
    if (!d) return TINYSAM_E_NOMEM;
    const uint8_t *s = a->data;
    /* the data is little-endian whatever the host */
    for (int64_t i = 0; i < a->numel; i++)
        d[i] = ts_half_to_float((uint16_t)(s[2 * i] | s[2 * i + 1] << 8));
    free(a->data);
    a->data = d;
    a->dtype = TS_DTYPE_F32;
    return TINYSAM_OK;
}

uint16_t ts_float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) /* NaN: quiet, keep the top payload bits */
        return (uint16_t)(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
    if (ax >= 0x477ff000u) return (uint16_t)(sign | 0x7c00u); /* >= 65520 (or inf): inf */
    if (ax >= 0x38800000u) { /* normal half (>= 2^-14): rebias, round to nearest even */
        ax -= (uint32_t)(127 - 15) << 23;
        ax += 0xfffu + ((ax >> 13) & 1u); /* a carry into the exponent is the right result */
        return (uint16_t)(sign | (ax >> 13));
    }
    if (ax <= 0x33000000u) return sign; /* <= 2^-25: the tie at 2^-25 goes to even (zero) */
    /* subnormal half: units of 2^-24, value = m * 2^(e - 150) */
    uint32_t e = ax >> 23, m = (ax & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t r = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) r++; /* r == 0x400 is the smallest normal */
    return (uint16_t)(sign | r);
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
    size_t nbytes = numel * (size_t)dtype_size(dtype); /* host order: little-endian assumed */
    int ok = fwrite(pre, 1, 10, f) == 10 && fwrite(h, 1, (size_t)hlen, f) == (size_t)hlen &&
             (nbytes == 0 || fwrite(data, 1, nbytes, f) == nbytes);
    if (fclose(f) != 0) ok = 0;
    if (!ok) return ts_error(TINYSAM_E_IO, "%s: write failed", path);
    return TINYSAM_OK;
}
