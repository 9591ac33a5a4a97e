/* sha256.h - SHA-256 (FIPS 180-4): keys the server's embedding cache by content, and the
 * tests compare decoded pixels with PIL's by it. */
#ifndef TS_SHA256_H
#define TS_SHA256_H

#include <stddef.h>
#include <stdint.h>

/* Writes the digest of data[0..n) as 64 lowercase hex digits and a NUL to hex[65]. */
void ts_sha256_hex(const void *data, size_t n, char hex[65]);
/* The same on the portable code path only (ts_sha256_hex uses the CPU's SHA instructions
 * where it has them): the tests' second implementation. */
void ts_sha256_hex_portable(const void *data, size_t n, char hex[65]);

#endif
