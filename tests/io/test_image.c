/* test_image.c - JPEG/PNG decoding (spec TINYSAM.md section 3.0) against the fixtures'
 * SHA-256 of PIL's decode, EXIF orientation, corrupt input, limits, PNG encoding. */
#include "sha256.h"
#include "common/test.h"
#include "core.h"
#include "io/image.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>
#include <zlib.h>

static uint8_t *read_all(const char *path, size_t *n) {
    uint8_t *d = NULL;
    if (ts_read_file(path, (size_t)1 << 30, &d, n) != 0) return NULL;
    return d;
}

/* ---------------------------------------------------------------- SHA-256 itself */

static void test_sha256_known(void) {
    char hex[65];
    ts_sha256_hex("", 0, hex);
    CHECK(!strcmp(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"), "%s",
          hex);
    ts_sha256_hex("abc", 3, hex);
    CHECK(!strcmp(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"), "%s",
          hex);
    const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"; /* 2 blocks */
    ts_sha256_hex(m, strlen(m), hex);
    CHECK(!strcmp(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"), "%s",
          hex);
}

/* ---------------------------------------------------------------- fixtures */

static const char *const IMAGES[] = {"picture1",     "picture3",          "shapes",
                                     "shapes_grey",  "shapes_grey_alpha", "shapes_palette",
                                     "shapes_rgb16", "shapes_rgba"};

static const char *image_path(const char *name) {
    static char rel[256];
    snprintf(rel, sizeof rel, "images/%s.jpg", name);
    if (fixture_exists(rel)) return fixture(rel);
    snprintf(rel, sizeof rel, "images/%s.png", name);
    return fixture(rel);
}

static void test_decode_sha256(void) {
    int n_checked = 0;
    for (size_t i = 0; i < sizeof IMAGES / sizeof *IMAGES; i++) {
        char rel[256];
        snprintf(rel, sizeof rel, "reference/%s/rgb_sha256.txt", IMAGES[i]);
        if (!fixture_exists(rel)) continue;
        FILE *f = fopen(fixture(rel), "r");
        REQUIRE(f, "open %s", rel);
        char want[65] = {0};
        int h = 0, w = 0;
        int ok = fscanf(f, "%64s %dx%dx3", want, &h, &w);
        fclose(f);
        REQUIRE(ok == 3, "parse %s", rel);
        tinysam_image img;
        int rc = tinysam_image_load(image_path(IMAGES[i]), 0, &img);
        CHECK(rc == 0, "%s: %s", IMAGES[i], tinysam_last_error());
        if (rc) continue;
        CHECK(img.width == w && img.height == h, "%s: %dx%d, want %dx%d", IMAGES[i], img.width,
              img.height, w, h);
        char got[65];
        ts_sha256_hex(img.rgb, (size_t)img.width * img.height * 3, got);
        CHECK(!strcmp(got, want), "%s: sha256 %s, want %s", IMAGES[i], got, want);
        printf("  %s %dx%d sha256 %s\n", IMAGES[i], img.width, img.height,
               strcmp(got, want) ? "MISMATCH" : "ok");
        tinysam_image_free(&img);
        n_checked++;
    }
    if (!n_checked) SKIP("no reference/*/rgb_sha256.txt fixtures");
}

static int load_fixture_image(const char *name, tinysam_image *img) {
    return tinysam_image_load(image_path(name), 0, img);
}

/* README: rgba, palette, rgb16 decode to exactly shapes.png; grey and grey_alpha to the
 * same grey pixels, replicated. */
static void test_shapes_variants(void) {
    if (!fixture_exists("images/shapes.png")) SKIP("no shapes fixtures");
    tinysam_image base, grey;
    REQUIRE(load_fixture_image("shapes", &base) == 0, "%s", tinysam_last_error());
    REQUIRE(base.width == 640 && base.height == 480, "shapes %dx%d", base.width, base.height);
    size_t n = (size_t)base.width * base.height * 3;
    const char *same[] = {"shapes_rgba", "shapes_palette", "shapes_rgb16"};
    for (int i = 0; i < 3; i++) {
        tinysam_image v;
        int rc = load_fixture_image(same[i], &v);
        CHECK(rc == 0, "%s: %s", same[i], tinysam_last_error());
        if (rc) continue;
        CHECK(v.width == base.width && v.height == base.height && !memcmp(v.rgb, base.rgb, n),
              "%s differs from shapes.png", same[i]);
        tinysam_image_free(&v);
    }
    REQUIRE(load_fixture_image("shapes_grey", &grey) == 0, "%s", tinysam_last_error());
    REQUIRE(grey.width == 640 && grey.height == 480, "grey size");
    int replicated = 1, distinct = 0;
    for (size_t i = 0; i < n; i += 3) {
        if (grey.rgb[i] != grey.rgb[i + 1] || grey.rgb[i] != grey.rgb[i + 2]) replicated = 0;
        if (grey.rgb[i] != grey.rgb[0]) distinct = 1;
    }
    CHECK(replicated, "grey not replicated to R=G=B");
    CHECK(distinct, "grey image is flat");
    tinysam_image ga;
    int rc = load_fixture_image("shapes_grey_alpha", &ga);
    CHECK(rc == 0, "%s", tinysam_last_error());
    if (!rc) {
        CHECK(ga.width == 640 && ga.height == 480 && !memcmp(ga.rgb, grey.rgb, n),
              "grey_alpha differs from grey");
        tinysam_image_free(&ga);
    }
    tinysam_image_free(&grey);
    tinysam_image_free(&base);
}

/* ---------------------------------------------------------------- EXIF orientation */

#define EW 13 /* odd, non-square, so every transposition is distinguishable */
#define EH 7

static int write_jpeg(const uint8_t *rgb, int w, int h, const uint8_t *app1, unsigned app1_len,
                      unsigned char **out, unsigned long *out_len) {
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr e;
    c.err = jpeg_std_error(&e);
    jpeg_create_compress(&c);
    *out = NULL;
    *out_len = 0;
    jpeg_mem_dest(&c, out, out_len);
    c.image_width = (JDIMENSION)w;
    c.image_height = (JDIMENSION)h;
    c.input_components = 3;
    c.in_color_space = JCS_RGB;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 95, TRUE);
    jpeg_start_compress(&c, TRUE);
    if (app1) jpeg_write_marker(&c, JPEG_APP0 + 1, app1, app1_len);
    while (c.next_scanline < c.image_height) {
        JSAMPROW row = (JSAMPROW)(rgb + (size_t)c.next_scanline * w * 3);
        jpeg_write_scanlines(&c, &row, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return 0;
}

static unsigned make_exif(uint8_t *p, int orientation, int big_endian) {
    unsigned n = 0;
    memcpy(p, "Exif\0\0", 6);
    n = 6;
    uint8_t *t = p + n;
    /* TIFF header, IFD0 at offset 8 with one entry (0x0112 SHORT 1 = orientation). */
    const uint8_t le[] = {
        'I', 'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, (uint8_t)orientation,
        0,   0,   0,  0, 0, 0, 0};
    const uint8_t be[] = {'M',  'M',  0, 42, 0, 0, 0, 8, 0, 1,
                          0x01, 0x12, 0, 3,  0, 0, 0, 1, 0, (uint8_t)orientation,
                          0,    0,    0, 0,  0, 0};
    memcpy(t, big_endian ? be : le, sizeof le);
    return n + (unsigned)sizeof le;
}

/* Where the stored pixel (r, c) of an EW x EH image is displayed, from the EXIF table
 * ("0th row / 0th column" sides): 1 top/left, 2 top/right, 3 bottom/right, 4 bottom/left,
 * 5 left/top, 6 right/top, 7 right/bottom, 8 left/bottom. */
static void exif_display_pos(int o, int r, int c, int *dx, int *dy) {
    if (o <= 4) {
        int flipx = (o == 2 || o == 3), flipy = (o == 3 || o == 4);
        *dx = flipx ? EW - 1 - c : c;
        *dy = flipy ? EH - 1 - r : r;
    } else {
        int row0_left = (o == 5 || o == 8), col0_top = (o == 5 || o == 6);
        *dx = row0_left ? r : EH - 1 - r;
        *dy = col0_top ? c : EW - 1 - c;
    }
}

static void test_exif_orientation(void) {
    uint8_t src[EW * EH * 3];
    for (int y = 0; y < EH; y++)
        for (int x = 0; x < EW; x++) {
            uint8_t *p = src + (y * EW + x) * 3;
            p[0] = (uint8_t)(x * 19);
            p[1] = (uint8_t)(y * 36);
            p[2] = (uint8_t)((x * 7 + y * 31) & 255);
        }
    unsigned char *j0;
    unsigned long n0;
    write_jpeg(src, EW, EH, NULL, 0, &j0, &n0);
    tinysam_image base;
    REQUIRE(tinysam_image_decode(j0, n0, 0, &base) == 0, "%s", tinysam_last_error());
    REQUIRE(base.width == EW && base.height == EH, "base size");
    free(j0);
    for (int be = 0; be < 2; be++)
        for (int o = 1; o <= 8; o++) {
            uint8_t app1[64];
            unsigned len = make_exif(app1, o, be);
            CHECK(ts_exif_orientation(app1, len) == o, "parse o=%d be=%d", o, be);
            unsigned char *j;
            unsigned long n;
            write_jpeg(src, EW, EH, app1, len, &j, &n);
            tinysam_image img;
            int rc = tinysam_image_decode(j, n, 0, &img);
            free(j);
            CHECK(rc == 0, "o=%d: %s", o, tinysam_last_error());
            if (rc) continue;
            int ww = o >= 5 ? EH : EW, hh = o >= 5 ? EW : EH;
            CHECK(img.width == ww && img.height == hh, "o=%d: %dx%d", o, img.width, img.height);
            int bad = 0;
            for (int r = 0; r < EH && img.width == ww; r++)
                for (int c = 0; c < EW; c++) {
                    int dx, dy;
                    exif_display_pos(o, r, c, &dx, &dy);
                    if (memcmp(img.rgb + ((size_t)dy * ww + dx) * 3, base.rgb + (r * EW + c) * 3,
                               3))
                        bad++;
                }
            CHECK(bad == 0, "o=%d be=%d: %d pixels misplaced", o, be, bad);
            tinysam_image_free(&img);
        }
    tinysam_image_free(&base);
}

static void test_exif_malformed(void) {
    uint8_t app1[64];
    unsigned len = make_exif(app1, 6, 0);
    /* Every truncation of a valid payload is handled (1 unless the entry survives). */
    for (unsigned n = 0; n < len; n++) {
        int o = ts_exif_orientation(app1, n);
        CHECK(o == 1 || (o == 6 && n >= 6 + 8 + 2 + 12 - 2), "len %u -> %d", n, o);
    }
    uint8_t bad[64];
    memcpy(bad, app1, len);
    bad[6 + 4] = 0xF0; /* IFD offset far outside */
    CHECK(ts_exif_orientation(bad, len) == 1, "far IFD offset");
    memcpy(bad, app1, len);
    bad[6 + 8] = 0xFF; /* entry count 255 with one entry present */
    bad[6 + 9] = 0xFF;
    bad[6 + 10] = 0; /* first entry no longer orientation */
    CHECK(ts_exif_orientation(bad, len) == 1, "huge entry count");
    memcpy(bad, app1, len);
    bad[6 + 18] = 9; /* out of range */
    CHECK(ts_exif_orientation(bad, len) == 1, "orientation 9");
    memcpy(bad, app1, len);
    bad[6] = 'X';
    CHECK(ts_exif_orientation(bad, len) == 1, "bad byte order");
    /* 0xFFFFFFFF offset must not wrap. */
    memcpy(bad, app1, len);
    memset(bad + 6 + 4, 0xFF, 4);
    CHECK(ts_exif_orientation(bad, len) == 1, "offset wrap");
}

/* ---------------------------------------------------------------- corrupt input */

static void check_bad(const char *what, const uint8_t *d, size_t n, int must_fail) {
    tinysam_image img;
    int rc = tinysam_image_decode(d, n, 0, &img);
    if (rc == 0) {
        CHECK(!must_fail, "%s: decoded although corrupt", what);
        CHECK(img.rgb && img.width > 0 && img.height > 0, "%s: bad image", what);
        tinysam_image_free(&img);
    } else {
        CHECK(rc < 0 && img.rgb == NULL, "%s: rc %d", what, rc);
        CHECK(tinysam_last_error()[0] != 0, "%s: no message", what);
    }
}

static void corrupt_one(const char *name) {
    size_t n;
    uint8_t *d = read_all(image_path(name), &n);
    REQUIRE(d, "read %s", name);
    char what[128];
    size_t cuts[] = {1, 2, 3, 8, 16, 40, 100, 300, n / 5, n / 3, n / 2, n - 1000, n - 50, n - 3};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        if (cuts[i] >= n) continue;
        snprintf(what, sizeof what, "%s cut at %zu/%zu", name, cuts[i], n);
        check_bad(what, d, cuts[i], 1);
    }
    /* The message names the problem. */
    tinysam_image img;
    int rc = ts_image_decode_named("photo", d, n / 2, 0, &img);
    CHECK(rc == TINYSAM_E_FORMAT && strstr(tinysam_last_error(), "photo: truncated"),
          "truncation message: %s", tinysam_last_error());
    /* Byte flips (deterministic LCG): anything but a crash/hang; run under SAN=1. */
    uint8_t *c = malloc(n);
    REQUIRE(c, "malloc");
    uint32_t s = 12345;
    for (int t = 0; t < 60; t++) {
        memcpy(c, d, n);
        int flips = 1 + t % 4;
        for (int f = 0; f < flips; f++) {
            s = s * 1664525u + 1013904223u;
            size_t pos = t < 30 ? (s >> 8) % (n < 2048 ? n : 2048) : (s >> 8) % n; /* headers */
            s = s * 1664525u + 1013904223u;
            c[pos] ^= (uint8_t)(1 + (s >> 24) % 255);
        }
        snprintf(what, sizeof what, "%s flip #%d", name, t);
        check_bad(what, c, n, 0);
    }
    free(c);
    free(d);
}

static void test_corrupt(void) {
    if (!fixture_exists("images/picture1.jpg")) SKIP("no image fixtures");
    corrupt_one("picture1"); /* baseline JPEG */
    corrupt_one("shapes");   /* PNG */
    corrupt_one("shapes_palette");
}

static void test_corrupt_progressive(void) {
    if (!fixture_exists("images/picture3.jpg")) SKIP("no picture3.jpg");
    size_t n;
    uint8_t *d = read_all(fixture("images/picture3.jpg"), &n);
    REQUIRE(d, "read");
    size_t cuts[] = {200, n / 4, n / 2, n - 100};
    for (int i = 0; i < 4; i++) {
        char what[64];
        snprintf(what, sizeof what, "picture3 cut at %zu", cuts[i]);
        check_bad(what, d, cuts[i], 1);
    }
    free(d);
}

static void test_garbage(void) {
    tinysam_image img;
    CHECK(tinysam_image_decode("", 0, 0, &img) == TINYSAM_E_FORMAT, "empty");
    CHECK(tinysam_image_decode("GIF89a....", 10, 0, &img) == TINYSAM_E_UNSUPPORTED, "gif");
    CHECK(strstr(tinysam_last_error(), "unknown image format"), "%s", tinysam_last_error());
    CHECK(tinysam_image_decode("\xFF\xD8\xFF", 3, 0, &img) < 0, "jpeg magic only");
    CHECK(tinysam_image_decode("\x89PNG\r\n\x1a\n", 8, 0, &img) < 0, "png magic only");
    CHECK(tinysam_image_decode(NULL, 5, 0, &img) == TINYSAM_E_ARG, "null");
    int rc = tinysam_image_load("/nonexistent/x.jpg", 0, &img);
    CHECK(rc == TINYSAM_E_IO && strstr(tinysam_last_error(), "/nonexistent/x.jpg"),
          "missing: %d %s", rc, tinysam_last_error());
}

/* ---------------------------------------------------------------- limits */

static void put32be(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* A PNG signature plus an IHDR with a valid CRC (and nothing else). */
static size_t png_header(uint8_t *p, uint32_t w, uint32_t h) {
    memcpy(p, "\x89PNG\r\n\x1a\n", 8);
    put32be(p + 8, 13);
    memcpy(p + 12, "IHDR", 4);
    put32be(p + 16, w);
    put32be(p + 20, h);
    p[24] = 8; /* depth */
    p[25] = 2; /* RGB */
    p[26] = p[27] = p[28] = 0;
    put32be(p + 29, (uint32_t)crc32(0, p + 12, 17));
    return 33;
}

static void test_pixel_limit(void) {
    uint8_t hdr[64];
    size_t n = png_header(hdr, 20000, 20000);
    tinysam_image img;
    int rc = ts_image_decode_named("x.png", hdr, n, 0, &img);
    CHECK(rc == TINYSAM_E_LIMIT, "20000x20000: rc %d %s", rc, tinysam_last_error());
    CHECK(!strcmp(tinysam_last_error(),
                  "x.png: image is 20000x20000 (400000000 pixels), above the limit of 100000000 "
                  "(use --max-pixels)"),
          "message: %s", tinysam_last_error());
    /* Header-only 2000x2000 under the limit: fails later, as truncated, not as a limit. */
    n = png_header(hdr, 2000, 2000);
    rc = tinysam_image_decode(hdr, n, 0, &img);
    CHECK(rc == TINYSAM_E_FORMAT, "truncated after IHDR: %d %s", rc, tinysam_last_error());
    /* Absurd side within a large pixel limit. */
    n = png_header(hdr, 0x7fffffff, 1);
    rc = tinysam_image_decode(hdr, n, 1LL << 40, &img);
    CHECK(rc < 0, "absurd width accepted");

    if (!fixture_exists("images/shapes.png")) SKIP("no fixtures");
    const long long np = 640 * 480;
    rc = tinysam_image_load(fixture("images/shapes.png"), np - 1, &img);
    CHECK(rc == TINYSAM_E_LIMIT, "png just above limit: %d", rc);
    rc = tinysam_image_load(fixture("images/shapes.png"), np, &img);
    CHECK(rc == 0, "png at limit: %s", tinysam_last_error());
    tinysam_image_free(&img);
    const long long nj = 769 * 770;
    rc = tinysam_image_load(fixture("images/picture1.jpg"), nj - 1, &img);
    CHECK(rc == TINYSAM_E_LIMIT && strstr(tinysam_last_error(), "picture1.jpg: image is 769x770"),
          "jpeg just above limit: %d %s", rc, tinysam_last_error());
    rc = tinysam_image_load(fixture("images/picture1.jpg"), nj, &img);
    CHECK(rc == 0, "jpeg at limit: %s", tinysam_last_error());
    tinysam_image_free(&img);

    /* JPEG SOF patched to 65000x65000: rejected from the header. */
    size_t len;
    uint8_t *d = read_all(fixture("images/picture1.jpg"), &len);
    REQUIRE(d, "read");
    size_t sof = 0;
    for (size_t i = 2; i + 9 < len; i++)
        if (d[i] == 0xFF && (d[i + 1] == 0xC0 || d[i + 1] == 0xC2)) {
            sof = i;
            break;
        }
    REQUIRE(sof, "no SOF");
    uint8_t *big = malloc(len);
    REQUIRE(big, "malloc");
    memcpy(big, d, len);
    big[sof + 5] = 0xFD; /* height 65000 = 0xFDE8 */
    big[sof + 6] = 0xE8;
    big[sof + 7] = 0xFD;
    big[sof + 8] = 0xE8;
    rc = tinysam_image_decode(big, len, 0, &img);
    CHECK(rc == TINYSAM_E_LIMIT, "jpeg 65000x65000: %d %s", rc, tinysam_last_error());
    /* Zero height / width. */
    memcpy(big, d, len);
    big[sof + 5] = big[sof + 6] = 0;
    rc = tinysam_image_decode(big, len, 0, &img);
    CHECK(rc < 0, "jpeg zero height accepted");
    memcpy(big, d, len);
    big[sof + 7] = big[sof + 8] = 0;
    rc = tinysam_image_decode(big, len, 0, &img);
    CHECK(rc < 0, "jpeg zero width accepted");
    free(big);
    free(d);
}

static void test_zero_size_png(void) {
    uint8_t hdr[64];
    tinysam_image img;
    size_t n = png_header(hdr, 0, 10);
    CHECK(tinysam_image_decode(hdr, n, 0, &img) < 0, "png width 0 accepted");
    n = png_header(hdr, 10, 0);
    CHECK(tinysam_image_decode(hdr, n, 0, &img) < 0, "png height 0 accepted");
}

/* ---------------------------------------------------------------- PNG variants */

/* Writes a PNG with libpng's full API (depth/colour/interlace of our choosing); rows are
 * packed as libpng expects for that format. Returns a malloc'd file or NULL. */
typedef struct {
    uint8_t *buf;
    size_t len;
} mem_out;

static void mem_write(png_structp png, png_bytep p, png_size_t n) {
    mem_out *m = png_get_io_ptr(png);
    uint8_t *nb = realloc(m->buf, m->len + n);
    if (!nb) png_error(png, "oom");
    memcpy(nb + m->len, p, n);
    m->buf = nb;
    m->len += n;
}

static void mem_flush(png_structp png) {
    (void)png;
}

static int make_png(int w, int h, int depth, int ctype, int interlace, const png_color *pal,
                    int n_pal, const uint8_t *trns, int n_trns, uint8_t *const *rows,
                    mem_out *out) {
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png_create_info_struct(png);
    out->buf = NULL;
    out->len = 0;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_set_write_fn(png, out, mem_write, mem_flush);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, depth, ctype, interlace,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    if (pal) png_set_PLTE(png, info, pal, n_pal);
    if (trns && ctype == PNG_COLOR_TYPE_PALETTE) png_set_tRNS(png, info, trns, n_trns, NULL);
    if (trns && ctype != PNG_COLOR_TYPE_PALETTE) { /* a transparent colour */
        png_color_16 tc = {0, trns[0], trns[1], trns[2], trns[0]};
        png_set_tRNS(png, info, NULL, 0, &tc);
    }
    png_write_info(png, info);
    png_write_image(png, (png_bytepp)rows);
    png_write_end(png, info);
    png_destroy_write_struct(&png, &info);
    return 0;
}

static void test_png_variants(void) {
    enum { W = 11, H = 6 };
    uint8_t data[H][W * 8];
    uint8_t *rows[H];
    for (int y = 0; y < H; y++)
        rows[y] = data[y];
    mem_out m;
    tinysam_image img;
    int bad;

    /* 16-bit grey + alpha: the high byte of grey, replicated (not PIL's clip to 255). */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = data[y] + x * 4;
            p[0] = (uint8_t)(x * 20 + y); /* grey high */
            p[1] = 0xC7;                  /* grey low, must be ignored */
            p[2] = (uint8_t)(x * 9);      /* alpha, ignored */
            p[3] = 0x11;
        }
    REQUIRE(make_png(W, H, 16, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_INTERLACE_NONE, NULL, 0, NULL, 0,
                     rows, &m) == 0,
            "write grey16");
    REQUIRE(tinysam_image_decode(m.buf, m.len, 0, &img) == 0, "%s", tinysam_last_error());
    bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++)
                bad += img.rgb[(y * W + x) * 3 + c] != data[y][x * 4];
    CHECK(!bad, "16-bit grey+alpha: %d bad", bad);
    tinysam_image_free(&img);
    free(m.buf);

    /* 4-bit palette with tRNS: expanded through the palette, transparency dropped. */
    png_color pal[16];
    uint8_t trns[16];
    for (int i = 0; i < 16; i++) {
        pal[i].red = (uint8_t)(i * 16);
        pal[i].green = (uint8_t)(255 - i * 5);
        pal[i].blue = (uint8_t)(i * i);
        trns[i] = (uint8_t)(i * 17);
    }
    for (int y = 0; y < H; y++) {
        memset(data[y], 0, sizeof data[y]);
        for (int x = 0; x < W; x++) {
            int v = (x + 3 * y) & 15;
            data[y][x / 2] |= (uint8_t)(x % 2 ? v : v << 4);
        }
    }
    REQUIRE(make_png(W, H, 4, PNG_COLOR_TYPE_PALETTE, PNG_INTERLACE_NONE, pal, 16, trns, 16, rows,
                     &m) == 0,
            "write palette");
    REQUIRE(tinysam_image_decode(m.buf, m.len, 0, &img) == 0, "%s", tinysam_last_error());
    bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            const png_color *c = &pal[(x + 3 * y) & 15];
            const uint8_t *p = img.rgb + (y * W + x) * 3;
            bad += p[0] != c->red || p[1] != c->green || p[2] != c->blue;
        }
    CHECK(!bad, "palette+tRNS: %d bad", bad);
    tinysam_image_free(&img);
    free(m.buf);

    /* 1-bit grey: 0 / 255. */
    for (int y = 0; y < H; y++) {
        memset(data[y], 0, sizeof data[y]);
        for (int x = 0; x < W; x++)
            if ((x + y) % 3 == 0) data[y][x / 8] |= (uint8_t)(0x80 >> (x % 8));
    }
    REQUIRE(
        make_png(W, H, 1, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, NULL, 0, NULL, 0, rows, &m) == 0,
        "write 1-bit");
    REQUIRE(tinysam_image_decode(m.buf, m.len, 0, &img) == 0, "%s", tinysam_last_error());
    bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++)
                bad += img.rgb[(y * W + x) * 3 + c] != ((x + y) % 3 == 0 ? 255 : 0);
    CHECK(!bad, "1-bit grey: %d bad", bad);
    tinysam_image_free(&img);
    free(m.buf);

    /* Adam7-interlaced 8-bit RGBA: de-interlaced, alpha dropped without blending. */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *p = data[y] + x * 4;
            p[0] = (uint8_t)(x * 23);
            p[1] = (uint8_t)(y * 41);
            p[2] = (uint8_t)(x * y);
            p[3] = (uint8_t)(x * 25);
        }
    REQUIRE(make_png(W, H, 8, PNG_COLOR_TYPE_RGB_ALPHA, PNG_INTERLACE_ADAM7, NULL, 0, NULL, 0, rows,
                     &m) == 0,
            "write interlaced");
    REQUIRE(tinysam_image_decode(m.buf, m.len, 0, &img) == 0, "%s", tinysam_last_error());
    bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            bad += memcmp(img.rgb + (y * W + x) * 3, data[y] + x * 4, 3) != 0;
    CHECK(!bad, "interlaced RGBA: %d bad", bad);
    tinysam_image_free(&img);
    free(m.buf);

    /* 8-bit RGB and grey with a tRNS colour: pixels unchanged. */
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W * 3; x++)
            data[y][x] = (uint8_t)(x * 7 + y * 3);
    const uint8_t tc[3] = {0, 7, 14}; /* equals pixel (0, 0) */
    REQUIRE(make_png(W, H, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, NULL, 0, tc, 1, rows, &m) ==
                0,
            "write rgb+tRNS");
    REQUIRE(tinysam_image_decode(m.buf, m.len, 0, &img) == 0, "%s", tinysam_last_error());
    bad = 0;
    for (int y = 0; y < H; y++)
        bad += memcmp(img.rgb + y * W * 3, data[y], W * 3) != 0;
    CHECK(!bad, "rgb+tRNS: %d bad rows", bad);
    tinysam_image_free(&img);
    free(m.buf);
    REQUIRE(make_png(W, H, 8, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, NULL, 0, tc, 1, rows, &m) ==
                0,
            "write grey+tRNS");
    REQUIRE(tinysam_image_decode(m.buf, m.len, 0, &img) == 0, "%s", tinysam_last_error());
    bad = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++)
            for (int c = 0; c < 3; c++)
                bad += img.rgb[(y * W + x) * 3 + c] != data[y][x];
    CHECK(!bad, "grey+tRNS: %d bad", bad);
    tinysam_image_free(&img);
    free(m.buf);
}

/* ---------------------------------------------------------------- PNG encoding */

static void test_png_roundtrip(void) {
    enum { W = 37, H = 23 };
    uint8_t rgb[W * H * 3], grey[W * H];
    for (int i = 0; i < W * H; i++) {
        rgb[3 * i] = (uint8_t)(i * 7);
        rgb[3 * i + 1] = (uint8_t)(i * 13 + 5);
        rgb[3 * i + 2] = (uint8_t)(i / 3);
        grey[i] = (uint8_t)(i % 2 ? 255 : i);
    }
    uint8_t *buf;
    size_t len;
    REQUIRE(ts_png_encode(rgb, W, H, 3, &buf, &len) == 0, "%s", tinysam_last_error());
    tinysam_image img;
    REQUIRE(tinysam_image_decode(buf, len, 0, &img) == 0, "%s", tinysam_last_error());
    CHECK(img.width == W && img.height == H && !memcmp(img.rgb, rgb, sizeof rgb), "rgb roundtrip");
    tinysam_image_free(&img);
    free(buf);

    const char *path = tmp_path("test_image_grey.png");
    REQUIRE(ts_png_write(path, grey, W, H, 1) == 0, "%s", tinysam_last_error());
    REQUIRE(tinysam_image_load(path, 0, &img) == 0, "%s", tinysam_last_error());
    int bad = img.width != W || img.height != H;
    for (int i = 0; i < W * H && !bad; i++)
        bad = img.rgb[3 * i] != grey[i] || img.rgb[3 * i + 1] != grey[i] ||
              img.rgb[3 * i + 2] != grey[i];
    CHECK(!bad, "grey roundtrip");
    tinysam_image_free(&img);
    CHECK(ts_png_encode(rgb, W, H, 2, &buf, &len) == TINYSAM_E_ARG, "2 channels accepted");
    CHECK(ts_png_encode(rgb, 0, H, 3, &buf, &len) == TINYSAM_E_ARG, "width 0 accepted");
    CHECK(ts_png_write("/nonexistent/dir/x.png", grey, W, H, 1) == TINYSAM_E_IO, "bad path");
}

/* Reads a PNG back through libpng (tinysam_image_load) and says whether its pixels are the
 * expected grey levels (grey != NULL) or RGB bytes. */
static int png_reads_back(const uint8_t *png, size_t len, int W, int H, const uint8_t *grey,
                          const uint8_t *rgb) {
    tinysam_image img;
    if (tinysam_image_decode(png, len, 0, &img) != 0) return 0;
    int ok = img.width == W && img.height == H;
    for (size_t i = 0; ok && i < (size_t)W * H; i++)
        for (int c = 0; c < 3; c++) ok &= img.rgb[3 * i + c] == (grey ? grey[i] : rgb[3 * i + c]);
    tinysam_image_free(&img);
    return ok;
}

/* Issue 20: masks as 1-bit greyscale PNGs (odd widths, one pixel, any nonzero value set),
 * and large images deflated in row slices on 1 to 3 threads: libpng reads back exactly the
 * pixels written. */
static void test_png_fast_writer(void) {
    static const int sizes[][2] = {{1, 1}, {7, 3}, {8, 2}, {37, 23}, {769, 770}, {1201, 901}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int W = sizes[s][0], H = sizes[s][1];
        size_t n = (size_t)W * H;
        uint8_t *mask = malloc(n), *grey = malloc(n), *rgb = malloc(3 * n);
        REQUIRE(mask && grey && rgb, "oom");
        uint32_t r = 12345u + (uint32_t)s;
        for (size_t i = 0; i < n; i++) {
            r = r * 1664525u + 1013904223u;
            int x = (int)(i % (size_t)W), y = (int)(i / (size_t)W);
            /* a disc plus noise; set pixels carry values other than 1 too */
            int in = (x - W / 2) * (x - W / 2) + (y - H / 3) * (y - H / 3) < W * H / 6;
            mask[i] = (uint8_t)(in || (r >> 28) == 0 ? 1 + (r >> 24) % 200 : 0);
            grey[i] = mask[i] ? 255 : 0;
            rgb[3 * i] = (uint8_t)(x * 3 + (r >> 30));
            rgb[3 * i + 1] = (uint8_t)(y * 5);
            rgb[3 * i + 2] = (uint8_t)(r >> 16);
        }
        uint8_t *first = NULL; /* the RGB file on 1 thread: the same bytes on 2 and 3 */
        size_t first_len = 0;
        for (int t = 1; t <= 3; t++) {
            tinysam_set_num_threads(t);
            uint8_t *buf;
            size_t len;
            REQUIRE(ts_png_encode_mask(mask, W, H, &buf, &len) == 0, "%s", tinysam_last_error());
            CHECK(len > 26 && buf[24] == 1 && buf[25] == 0, "%dx%d mask: not 1-bit grey", W, H);
            CHECK(png_reads_back(buf, len, W, H, grey, NULL), "%dx%d mask, %d threads: pixels differ",
                  W, H, t);
            free(buf);
            REQUIRE(ts_png_encode(rgb, W, H, 3, &buf, &len) == 0, "%s", tinysam_last_error());
            CHECK(png_reads_back(buf, len, W, H, NULL, rgb), "%dx%d RGB, %d threads: pixels differ",
                  W, H, t);
            if (!first) {
                first = buf;
                first_len = len;
            } else {
                CHECK(len == first_len && !memcmp(buf, first, len),
                      "%dx%d RGB: %d threads write other bytes than 1", W, H, t);
                free(buf);
            }
            REQUIRE(ts_png_encode(rgb, W, H, 1, &buf, &len) == 0, "%s", tinysam_last_error());
            CHECK(png_reads_back(buf, len, W, H, rgb, NULL), "%dx%d grey, %d threads: pixels differ",
                  W, H, t);
            free(buf);
        }
        free(first);
        free(mask);
        free(grey);
        free(rgb);
    }
    tinysam_set_num_threads(0);
    const char *path = tmp_path("test_image_mask.png");
    uint8_t m[6] = {0, 1, 1, 0, 9, 0};
    REQUIRE(ts_png_write_mask(path, m, 3, 2) == 0, "%s", tinysam_last_error());
    tinysam_image img;
    REQUIRE(tinysam_image_load(path, 0, &img) == 0, "%s", tinysam_last_error());
    CHECK(img.width == 3 && img.height == 2 && img.rgb[0] == 0 && img.rgb[3] == 255 &&
              img.rgb[12] == 255 && img.rgb[15] == 0, "written mask reads back wrong");
    tinysam_image_free(&img);
    uint8_t *buf;
    size_t len;
    CHECK(ts_png_encode_mask(m, 0, 2, &buf, &len) == TINYSAM_E_ARG, "width 0 accepted");
    CHECK(ts_png_encode_mask(NULL, 3, 2, &buf, &len) == TINYSAM_E_ARG, "no mask accepted");
    CHECK(ts_png_write_mask("/nonexistent/dir/x.png", m, 3, 2) == TINYSAM_E_IO, "bad path");
}

/* The file at path holds exactly len bytes equal to want. */
static int file_equals(const char *path, const uint8_t *want, size_t len) {
    uint8_t *d = NULL;
    size_t n = 0;
    if (ts_read_file(path, 1 << 26, &d, &n)) return 0;
    int ok = n == len && !memcmp(d, want, len);
    free(d);
    return ok;
}

/* ts_png_write_many (segment's four PNGs in one round on the pool): every file holds the bytes
 * the one-image encoders give (themselves read back exactly by libpng above), on 1 and 2
 * threads; bad items refused with the file named. */
static void test_png_write_many(void) {
    static const int sizes[][2] = {{37, 23}, {769, 770}, {1201, 901}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        int W = sizes[s][0], H = sizes[s][1];
        size_t n = (size_t)W * H;
        uint8_t *mask = malloc(3 * n), *rgb = malloc(3 * n), *grey = malloc(n);
        REQUIRE(mask && rgb && grey, "oom");
        for (size_t i = 0; i < 3 * n; i++) {
            size_t p = i % n;
            int x = (int)(p % (size_t)W), y = (int)(p / (size_t)W), k = (int)(i / n);
            mask[i] = (uint8_t)((x - W / 2) * (x - W / 2) + (y - H / 2) * (y - H / 2) <
                                W * H / (4 + 2 * k));
            rgb[i] = (uint8_t)(x * 3 + y * (int)(i % 3 + 1));
        }
        for (size_t i = 0; i < n; i++) grey[i] = (uint8_t)(i * 7 % 251);
        char paths[5][256];
        for (int k = 0; k < 5; k++) {
            char name[64];
            snprintf(name, sizeof name, "test_many_%d.png", k);
            snprintf(paths[k], sizeof paths[k], "%s", tmp_path(name));
        }
        ts_png_item items[5] = {{paths[0], mask, W, H, 0},
                                {paths[1], mask + n, W, H, 0},
                                {paths[2], mask + 2 * n, W, H, 0},
                                {paths[3], rgb, W, H, 3},
                                {paths[4], grey, W, H, 1}};
        for (int t = 1; t <= 2; t++) {
            tinysam_set_num_threads(t);
            REQUIRE(ts_png_write_many(5, items) == 0, "%s", tinysam_last_error());
            for (int k = 0; k < 5; k++) {
                uint8_t *buf = NULL;
                size_t len = 0;
                int rc = k < 3 ? ts_png_encode_mask(mask + (size_t)k * n, W, H, &buf, &len)
                               : ts_png_encode(items[k].pix, W, H, items[k].channels, &buf, &len);
                REQUIRE(rc == 0, "%s", tinysam_last_error());
                CHECK(file_equals(paths[k], buf, len), "%dx%d, %d threads: file %d differs", W,
                      H, t, k);
                free(buf);
            }
        }
        for (int k = 0; k < 5; k++) remove(paths[k]);
        free(mask);
        free(rgb);
        free(grey);
    }
    tinysam_set_num_threads(0);
    uint8_t px[6] = {0};
    ts_png_item bad[2] = {{tmp_path("test_many_ok.png"), px, 2, 1, 3}, {"x.png", px, 2, 1, 2}};
    CHECK(ts_png_write_many(2, bad) == TINYSAM_E_ARG && strstr(tinysam_last_error(), "x.png"),
          "2 channels accepted (%s)", tinysam_last_error());
    bad[1] = (ts_png_item){"/nonexistent/dir/y.png", px, 2, 1, 0};
    CHECK(ts_png_write_many(2, bad) == TINYSAM_E_IO && strstr(tinysam_last_error(), "y.png"),
          "bad path accepted (%s)", tinysam_last_error());
    bad[1] = (ts_png_item){"z.png", px, 0, 1, 0};
    CHECK(ts_png_write_many(2, bad) == TINYSAM_E_ARG, "width 0 accepted");
    ts_png_item many[TS_PNG_MANY_MAX + 1];
    CHECK(ts_png_write_many(TS_PNG_MANY_MAX + 1, many) == TINYSAM_E_ARG, "too many accepted");
    CHECK(ts_png_write_many(0, NULL) == 0, "no images refused");
    remove(tmp_path("test_many_ok.png"));
}

int main(void) {
    RUN(test_sha256_known);
    RUN(test_decode_sha256);
    RUN(test_shapes_variants);
    RUN(test_exif_orientation);
    RUN(test_exif_malformed);
    RUN(test_corrupt);
    RUN(test_corrupt_progressive);
    RUN(test_garbage);
    RUN(test_pixel_limit);
    RUN(test_zero_size_png);
    RUN(test_png_variants);
    RUN(test_png_roundtrip);
    RUN(test_png_fast_writer);
    RUN(test_png_write_many);
    return test_summary();
}
