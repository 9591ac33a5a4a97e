/* test_ls_rle.c - Label Studio's brush RLE (src/server/ls_rle.c): Label
 * Studio's own test vector, hand-made edge cases (runs at the block-size
 * limits), then random masks round-tripped through an independent decoder:
 * @thi.ng/rle-pack's decode from npm, the package Label Studio's front end
 * decodes brush masks with (installed here from tests/labelling's lock file the
 * first time, like playwright-core for the browser test; skipped, never passed,
 * without node and npm). */
#include "core.h"
#include "server/ls_rle.h"
#include "test.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void test_label_studio_vector(void) {
    /* label-studio-converter's test: [1,1,1,1,2,3,5,6,7,8] and eight 4s */
    const uint8_t v[18] = {1, 1, 1, 1, 2, 3, 5, 6, 7, 8, 4, 4, 4, 4, 4, 4, 4, 4};
    const uint8_t want[] = {0, 0, 0,  18, 57,  27, 252, 96, 32, 1, 0,
                            6, 0, 40, 0,  192, 3,  128, 17, 56, 32};
    uint8_t *out;
    size_t n;
    REQUIRE(ts_ls_rle_encode(v, sizeof v, &out, &n) == 0, "encode");
    CHECK(n == sizeof want && !memcmp(out, want, n), "bytes differ (%zu bytes)", n);
    free(out);
    /* by hand: the header's 53 bits end "11111" in byte 6, then the repeat block
     * 1 00 010 00001001: fc 41 20 (67 bits, 5 padding) */
    uint8_t r[17];
    memset(r, 9, sizeof r);
    REQUIRE(ts_ls_rle_encode(r, 3, &out, &n) == 0, "encode 3");
    CHECK(n == 9 && out[6] == 0xfc && out[7] == 0x41 && out[8] == 0x20,
          "3 x 9: %zu bytes %02x %02x %02x", n, out[6], out[7], out[8]);
    free(out);
    /* a header-only stream (no values): 53 bits -> 7 bytes */
    REQUIRE(ts_ls_rle_encode(r, 0, &out, &n) == 0 && n == 7, "empty");
    free(out);
}

static uint32_t rng = 99;
static uint32_t rnd(void) {
    rng = rng * 1103515245u + 12345u;
    return rng >> 9;
}

static void test_round_trip_rle_pack(void) {
    if (system("command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1"))
        SKIP("node and npm missing: no independent decoder (apt-get install nodejs "
             "npm)");
    if (system("cd tests/labelling && { [ -d node_modules/@thi.ng/rle-pack ] || "
               "npm ci "
               "--ignore-scripts --no-audit --no-fund >/dev/null 2>&1; }"))
        SKIP("npm could not install @thi.ng/rle-pack (offline?)");
    /* absolute paths: the decoder runs in tests/labelling */
    char cwd[4096], in[4096 + 512], outp[4096 + 512];
    REQUIRE(realpath(".", cwd) && strlen(cwd) < 4000, "cwd");
    snprintf(in, sizeof in, "%.4000s/%.500s", cwd, tmp_path("ls_rle_in.txt"));
    snprintf(outp, sizeof outp, "%.4000s/%.500s", cwd, tmp_path("ls_rle_out.txt"));
    FILE *f = fopen(in, "w");
    REQUIRE(f, "write %s", in);
    enum { N = 12 };
    uint8_t *masks[N];
    int Ws[N], Hs[N];
    for (int k = 0; k < N; k++) {
        /* blobs of several sizes, speckle, empty and full masks, one over 65,536
         * values */
        int W = k == 0 ? 300 : 5 + (int)(rnd() % 120), H = k == 0 ? 250 : 3 + (int)(rnd() % 90);
        uint8_t *m = malloc((size_t)W * H);
        REQUIRE(m, "alloc");
        int cx = (int)(rnd() % (unsigned)W), cy = (int)(rnd() % (unsigned)H),
            r = 2 + (int)(rnd() % 40);
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                int in_blob = (x - cx) * (x - cx) + (y - cy) * (y - cy) <= r * r;
                m[(size_t)y * W + x] = k == 1       ? 0
                                       : k == 2     ? 1
                                       : k % 3 == 0 ? (rnd() % 7 == 0) ^ in_blob
                                                    : in_blob;
            }
        masks[k] = m;
        Ws[k] = W;
        Hs[k] = H;
        uint8_t *b;
        size_t n;
        REQUIRE(ts_ls_mask_rle(m, W, H, &b, &n) == 0, "encode mask %d", k);
        fputc('[', f);
        for (size_t i = 0; i < n; i++)
            fprintf(f, "%s%u", i ? "," : "", b[i]);
        fputs("]\n", f);
        free(b);
    }
    fclose(f);
    char cmd[2 * 4608 + 128];
    snprintf(cmd, sizeof cmd, "cd tests/labelling && node rle_decode.mjs --summary < '%s' > '%s'",
             in, outp);
    CHECK(system(cmd) == 0, "node rle_decode.mjs failed");
    f = fopen(outp, "r");
    REQUIRE(f, "decoder output");
    size_t cap = 1 << 20;
    char *line = malloc(cap);
    int k = 0;
    long long pixels = 0;
    while (line && k < N && fgets(line, (int)cap, f)) {
        long long count;
        int bad, off = 0;
        REQUIRE(sscanf(line, "%lld %d %n", &count, &bad, &off) == 2, "decoder line %d", k);
        size_t np = (size_t)Ws[k] * Hs[k];
        CHECK(count == (long long)np * 4 && !bad, "mask %d: %lld values, %d non-RGBA", k, count,
              bad);
        int same = strlen(line + off) >= np;
        for (size_t i = 0; same && i < np; i++)
            same = (line[off + i] == '1') == (masks[k][i] != 0);
        CHECK(same, "mask %d (%dx%d): decoded pixels differ", k, Ws[k], Hs[k]);
        pixels += (long long)np;
        k++;
    }
    fclose(f);
    free(line);
    CHECK(k == N, "decoder answered %d of %d", k, N);
    printf("  %d masks (%lld pixels) decoded by @thi.ng/rle-pack to the same "
           "pixels\n",
           k, pixels);
    for (int i = 0; i < N; i++)
        free(masks[i]);
}

int main(void) {
    RUN(test_label_studio_vector);
    RUN(test_round_trip_rle_pack);
    return test_summary();
}
