/* zip.c - minimal ZIP central-directory reader (stored entries, ZIP64 aware). */
#include "io/zip.h"
#include "core.h"
#include "threads.h"

#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#define ZIP_MAX_ENTRIES 1000000

static uint16_t rd16(const uint8_t *p) {
    return (uint16_t)(p[0] | p[1] << 8);
}
static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const uint8_t *p) {
    return rd32(p) | (uint64_t)rd32(p + 4) << 32;
}

/* Frees z after the message (which may name one of its entries) has been formatted. */
static int zip_fail(ts_zip *z, int rc) {
    ts_zip_close(z);
    return rc;
}

static int cmp_entry(const void *a, const void *b) {
    return strcmp(((const ts_zip_entry *)a)->name, ((const ts_zip_entry *)b)->name);
}

/* The local header at loff (its data at data) against the central directory's method, CRC
 * and size: the same values, or (flag bit 3) zeros and a data descriptor after the data that
 * has them; 0xFFFFFFFF sizes stand for ZIP64 values in the local extra field. */
static int local_agrees(const uint8_t *buf, size_t size, uint64_t loff, uint64_t data,
                        unsigned method, uint32_t crc, uint64_t usize) {
    const uint8_t *h = buf + loff;
    unsigned flags = rd16(h + 6);
    uint32_t lcrc = rd32(h + 14);
    uint64_t lcs = rd32(h + 18), lus = rd32(h + 22);
    if (rd16(h + 8) != method) return 0;
    if (lcs == 0xFFFFFFFFu || lus == 0xFFFFFFFFu) { /* ZIP64: usize then csize in the extra */
        const uint8_t *x = h + 30 + rd16(h + 26), *xe = x + rd16(h + 28);
        int found = 0;
        while (xe - x >= 4) {
            unsigned id = rd16(x), len = rd16(x + 2);
            if ((size_t)(xe - x - 4) < len) break;
            if (id == 1 && len >= 16) lus = rd64(x + 4), lcs = rd64(x + 12), found = 1;
            x += 4 + len;
        }
        if (!found) return 0;
    }
    if (!(flags & 8)) return lcrc == crc && lcs == usize && lus == usize;
    if (lcrc || lcs || lus) {
        if (lcrc != crc || lcs != usize || lus != usize) return 0;
    }
    /* data descriptor: [signature] crc, csize, usize (4 or 8 bytes each) */
    uint64_t q = data + usize;
    if (size - q >= 4 && rd32(buf + q) == 0x08074b50) q += 4;
    if (size - q < 12 || rd32(buf + q) != crc) return 0;
    if (rd32(buf + q + 4) == usize && rd32(buf + q + 8) == usize) return 1;
    return size - q >= 20 && rd64(buf + q + 4) == usize && rd64(buf + q + 12) == usize;
}

int ts_zip_open(const uint8_t *buf, size_t size, ts_zip *z) {
    memset(z, 0, sizeof *z);
    if (size < 22) return ts_error(TINYSAM_E_FORMAT, "zip: file too short");
    /* the end-of-central-directory record sits in the last 64 KiB + 22 bytes */
    size_t lo = size > 65557 ? size - 65557 : 0, eocd = (size_t)-1;
    for (size_t i = size - 22 + 1; i-- > lo;)
        if (rd32(buf + i) == 0x06054b50) {
            eocd = i;
            break;
        }
    if (eocd == (size_t)-1)
        return ts_error(TINYSAM_E_FORMAT, "zip: no end of central directory (truncated file?)");
    uint64_t n_entries = rd16(buf + eocd + 10), cd_size = rd32(buf + eocd + 12),
             cd_off = rd32(buf + eocd + 16);
    if (n_entries == 0xFFFF || cd_off == 0xFFFFFFFFu || cd_size == 0xFFFFFFFFu) {
        /* ZIP64: locator just before the EOCD points at the ZIP64 EOCD record */
        if (eocd < 20 || rd32(buf + eocd - 20) != 0x07064b50)
            return ts_error(TINYSAM_E_FORMAT, "zip: missing ZIP64 locator");
        uint64_t z64 = rd64(buf + eocd - 20 + 8);
        if (size < 56 || z64 > size - 56 || rd32(buf + z64) != 0x06064b50)
            return ts_error(TINYSAM_E_FORMAT, "zip: bad ZIP64 end record");
        n_entries = rd64(buf + z64 + 32);
        cd_size = rd64(buf + z64 + 40);
        cd_off = rd64(buf + z64 + 48);
    }
    if (cd_off > size || cd_size > size - cd_off)
        return ts_error(TINYSAM_E_FORMAT, "zip: central directory outside the file");
    if (n_entries > ZIP_MAX_ENTRIES || n_entries > cd_size / 46 + 1)
        return ts_error(TINYSAM_E_FORMAT, "zip: implausible entry count %llu",
                        (unsigned long long)n_entries);
    z->e = ts_calloc(n_entries ? n_entries : 1, sizeof *z->e);
    if (!z->e) return TINYSAM_E_NOMEM;
    const uint8_t *p = buf + cd_off, *end = buf + cd_off + cd_size;
    for (uint64_t k = 0; k < n_entries; k++) {
        if (end - p < 46 || rd32(p) != 0x02014b50)
            return zip_fail(z, ts_error(TINYSAM_E_FORMAT, "zip: corrupt central directory"));
        unsigned method = rd16(p + 10), nlen = rd16(p + 28), xlen = rd16(p + 30),
                 clen = rd16(p + 32);
        uint64_t csize = rd32(p + 20), usize = rd32(p + 24), loff = rd32(p + 42);
        uint32_t crc = rd32(p + 16);
        if ((size_t)(end - p) < 46u + nlen + xlen + clen)
            return zip_fail(z, ts_error(TINYSAM_E_FORMAT, "zip: corrupt central directory"));
        /* ZIP64 extended information: present fields in order usize, csize, offset */
        const uint8_t *x = p + 46 + nlen, *xe = x + xlen;
        while (xe - x >= 4) {
            unsigned id = rd16(x), len = rd16(x + 2);
            if ((size_t)(xe - x - 4) < len) break;
            if (id == 1) {
                const uint8_t *f = x + 4, *fe = f + len;
                if (usize == 0xFFFFFFFFu && fe - f >= 8) usize = rd64(f), f += 8;
                if (csize == 0xFFFFFFFFu && fe - f >= 8) csize = rd64(f), f += 8;
                if (loff == 0xFFFFFFFFu && fe - f >= 8) loff = rd64(f), f += 8;
            }
            x += 4 + len;
        }
        char *name = ts_malloc(nlen + 1u);
        if (!name) return ts_zip_close(z), TINYSAM_E_NOMEM;
        memcpy(name, p + 46, nlen);
        name[nlen] = 0;
        z->e[z->n].name = name;
        z->n++;
        if (method != 0)
            return zip_fail(z, ts_error(TINYSAM_E_FORMAT,
                                        "zip: entry '%s' is compressed (method %u)", name, method));
        if (csize != usize)
            return zip_fail(z, ts_error(TINYSAM_E_FORMAT, "zip: entry '%s' sizes disagree", name));
        if (loff > size || size - loff < 30 || rd32(buf + loff) != 0x04034b50)
            return zip_fail(z, ts_error(TINYSAM_E_FORMAT, "zip: bad local header for '%s'", name));
        /* the data follows the local header, whose name must agree with the directory's */
        if (rd16(buf + loff + 26) != nlen || size - loff - 30 < nlen ||
            memcmp(buf + loff + 30, name, nlen))
            return zip_fail(z, ts_error(TINYSAM_E_FORMAT,
                                        "zip: local header of '%s' disagrees with the central "
                                        "directory", name));
        uint64_t data = loff + 30 + rd16(buf + loff + 26) + rd16(buf + loff + 28);
        if (data > size || usize > size - data)
            return zip_fail(z, ts_error(TINYSAM_E_FORMAT,
                                        "zip: entry '%s' extends past the end of the file", name));
        if (!local_agrees(buf, size, loff, data, method, crc, usize))
            return zip_fail(z, ts_error(TINYSAM_E_FORMAT,
                                        "zip: local header of '%s' disagrees with the central "
                                        "directory (method, sizes or CRC)", name));
        z->e[z->n - 1].data = buf + data;
        z->e[z->n - 1].size = usize;
        z->e[z->n - 1].crc = crc;
        p += 46 + nlen + xlen + clen;
    }
    qsort(z->e, (size_t)z->n, sizeof *z->e, cmp_entry);
    for (int i = 1; i < z->n; i++)
        if (!strcmp(z->e[i - 1].name, z->e[i].name))
            return zip_fail(z, ts_error(TINYSAM_E_FORMAT, "zip: entry '%s' appears twice",
                                        z->e[i].name));
    return TINYSAM_OK;
}

void ts_zip_close(ts_zip *z) {
    for (int i = 0; i < z->n; i++) free(z->e[i].name);
    free(z->e);
    z->e = NULL;
    z->n = 0;
}

const ts_zip_entry *ts_zip_find(const ts_zip *z, const char *name) {
    ts_zip_entry key = {.name = (char *)name};
    return z->n ? bsearch(&key, z->e, (size_t)z->n, sizeof key, cmp_entry) : NULL;
}

/* ---- CRC-32 of every record: pieces of at most 4 MiB, combined in order per record */

#define CRC_PIECE ((uint64_t)4 << 20)

typedef struct {
    const ts_zip *z;
    int *first;      /* [n + 1]: the first piece of entry i */
    uint32_t *piece; /* CRC of each piece */
} crc_job;

static void crc_piece(void *ctx, int k, int tid) {
    (void)tid;
    crc_job *j = ctx;
    int lo = 0, hi = j->z->n - 1; /* the entry that holds piece k */
    while (lo < hi) {
        int mid = (lo + hi + 1) / 2;
        if (j->first[mid] <= k) lo = mid; else hi = mid - 1;
    }
    const ts_zip_entry *e = &j->z->e[lo];
    uint64_t off = (uint64_t)(k - j->first[lo]) * CRC_PIECE;
    uint64_t len = e->size - off < CRC_PIECE ? e->size - off : CRC_PIECE;
    j->piece[k] = (uint32_t)crc32_z(0, e->data + off, (z_size_t)len);
}

int ts_zip_verify(const ts_zip *z) {
    if (z->n == 0) return TINYSAM_OK;
    int *first = ts_malloc(((size_t)z->n + 1) * sizeof *first);
    if (!first) return TINYSAM_E_NOMEM;
    uint64_t total = 0;
    for (int i = 0; i < z->n; i++) {
        first[i] = (int)total;
        total += z->e[i].size ? (z->e[i].size + CRC_PIECE - 1) / CRC_PIECE : 0;
        if (total > 0x7fffffff) return free(first), ts_error(TINYSAM_E_LIMIT, "zip: archive too large");
    }
    first[z->n] = (int)total;
    uint32_t *piece = ts_malloc((total ? total : 1) * sizeof *piece);
    if (!piece) return free(first), TINYSAM_E_NOMEM;
    crc_job j = {z, first, piece};
    ts_parallel_for((int)total, crc_piece, &j);
    int rc = TINYSAM_OK;
    for (int i = 0; i < z->n && !rc; i++) {
        uLong crc = 0; /* CRC-32 of the empty record */
        uint64_t left = z->e[i].size;
        for (int k = first[i]; k < first[i + 1]; k++) {
            uint64_t len = left < CRC_PIECE ? left : CRC_PIECE;
            crc = k == first[i] ? piece[k] : crc32_combine(crc, piece[k], (z_off_t)len);
            left -= len;
        }
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
        crc = z->e[i].crc; /* fuzzers mutate past the checksum into the parsers behind it */
#endif
        if ((uint32_t)crc != z->e[i].crc)
            rc = ts_error(TINYSAM_E_FORMAT,
                          "record '%s' fails its CRC-32 check (file corrupted?)", z->e[i].name);
    }
    free(piece);
    free(first);
    return rc;
}
