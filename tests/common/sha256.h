/* sha256.h - a small SHA-256 (FIPS 180-4) for tests: hashes of decoded images. */
#ifndef TS_TEST_SHA256_H
#define TS_TEST_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t h[8];
    uint64_t n_bytes; /* total bytes hashed */
    uint8_t buf[64];  /* pending partial block */
    size_t n_buf;
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const void *data, size_t len);
void sha256_final(sha256_ctx *c, uint8_t out[32]);
/* One-shot: writes 64 lowercase hex digits and a NUL to hex. */
void sha256_hex(const void *data, size_t len, char hex[65]);

#endif
