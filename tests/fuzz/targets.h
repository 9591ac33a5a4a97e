/* targets.h - one entry point per parser under fuzz. Each is shared by the libFuzzer
 * harness (fuzz_<name>.c) and the corpus replay test (test_corpus_replay.c), so a crash
 * found by fuzzing replays through exactly the same code in `make test`.
 *
 * A target returns what the library returned: TINYSAM_OK or a negative tinysam_status.
 * It never keeps state between calls and frees everything it was given. */
#ifndef TS_FUZZ_TARGETS_H
#define TS_FUZZ_TARGETS_H

#include <stddef.h>
#include <stdint.h>

/* Pixel limit for decoding in the harnesses: small, so that a tiny file announcing a
 * huge image is rejected fast instead of tripping the fuzzer's RSS limit. At 4 MP, ASan's
 * allocator kept the freed 12 MB pixel buffers mapped and the seeded smoke run's RSS passed
 * 2 GB after ~210,000 inputs (live heap 24 MB, no leak); at 1 MP it stays near 430 MB. */
#define TS_FUZZ_MAX_PIXELS 1000000LL

int ts_fuzz_npy(const uint8_t *data, size_t size);
int ts_fuzz_json(const uint8_t *data, size_t size);
int ts_fuzz_image(const uint8_t *data, size_t size);
int ts_fuzz_pth(const uint8_t *data, size_t size);
int ts_fuzz_safetensors(const uint8_t *data, size_t size);
int ts_fuzz_args(const uint8_t *data, size_t size);
int ts_fuzz_scene(const uint8_t *data, size_t size);
/* One HTTP request to `serve`'s handler, in-process: byte 0 picks the method (GET, POST,
 * HEAD, PUT, DELETE, OPTIONS), then the raw URL path up to '\n', then the body. The server
 * (no model: parsing, routing, uploads, cache and error answers) lives across calls, as a
 * real one does; an 8x6 PNG is always cached under TS_FUZZ_HTTP_ID. */
int ts_fuzz_http(const uint8_t *data, size_t size);
#define TS_FUZZ_HTTP_ID "ca57a853ffec95afce689990a66b0408275ca19ba8e2b35bc097a395ce268539"

typedef struct {
    const char *name; /* corpus/<name>, regress/<name>, dict/<name>.dict */
    int (*fn)(const uint8_t *data, size_t size);
} ts_fuzz_target;

/* All targets, ending with {NULL, NULL}. */
extern const ts_fuzz_target ts_fuzz_targets[];

#endif
