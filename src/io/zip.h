/* zip.h - read-only access to the stored (uncompressed) entries of a ZIP archive in memory,
 * as torch.save writes them. Every offset and size is checked against the buffer. */
#ifndef TS_ZIP_H
#define TS_ZIP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *name;
    const uint8_t *data; /* inside the archive buffer */
    uint64_t size;
    uint32_t crc; /* CRC-32 of data from the central directory */
} ts_zip_entry;

typedef struct {
    int n;
    ts_zip_entry *e;
} ts_zip;

/* Parses the central directory (entries end up sorted by name; duplicates are rejected).
 * Compressed entries are rejected (torch stores everything). Each local header must agree
 * with the central directory (name, method, sizes, CRC, or zeros with a data descriptor that
 * agrees), since the CRC covers the data only. */
int ts_zip_open(const uint8_t *buf, size_t size, ts_zip *z);
/* Checks every entry's data against its CRC-32 (zlib's crc32, split over the worker pool);
 * a mismatch is TINYSAM_E_FORMAT naming the record. */
int ts_zip_verify(const ts_zip *z);
void ts_zip_close(ts_zip *z);
const ts_zip_entry *ts_zip_find(const ts_zip *z, const char *name);

#endif
