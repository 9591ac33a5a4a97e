/* test_sha256.c - ts_sha256_hex (the CPU's SHA instructions where present) against FIPS 180-4
 * known answers and, on random buffers of every tail length, against the portable code. */
#include "sha256.h"
#include "test.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void test_known_answers(void) {
    static const struct {
        const char *msg, *hex;
    } cases[] = {
        {"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
        {"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
        {"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
         "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char a[65], b[65];
        ts_sha256_hex(cases[i].msg, strlen(cases[i].msg), a);
        ts_sha256_hex_portable(cases[i].msg, strlen(cases[i].msg), b);
        CHECK(!strcmp(a, cases[i].hex), "'%s': %s", cases[i].msg, a);
        CHECK(!strcmp(b, cases[i].hex), "'%s' (portable): %s", cases[i].msg, b);
    }
}

static void test_random_against_portable(void) {
    size_t big = ((size_t)1 << 20) + 13;
    uint8_t *buf = malloc(big);
    REQUIRE(buf, "out of memory");
    uint32_t x = 12345;
    for (size_t i = 0; i < big; i++) {
        x = x * 1664525u + 1013904223u;
        buf[i] = (uint8_t)(x >> 24);
    }
    int bad = 0;
    for (size_t n = 0; n <= 300; n++) { /* every tail length, one to five blocks */
        char a[65], b[65];
        ts_sha256_hex(buf + n % 7, n, a);
        ts_sha256_hex_portable(buf + n % 7, n, b);
        bad += strcmp(a, b) != 0;
    }
    CHECK(bad == 0, "%d of 301 short buffers differ from the portable code", bad);
    char a[65], b[65];
    ts_sha256_hex(buf, big, a);
    ts_sha256_hex_portable(buf, big, b);
    CHECK(!strcmp(a, b), "1 MB buffer: %s vs portable %s", a, b);
    free(buf);
}

int main(void) {
    RUN(test_known_answers);
    RUN(test_random_against_portable);
    return test_summary();
}
