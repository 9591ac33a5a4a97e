/* seed_jpeg.c - writes small JPEG seeds for the image harness (make_seeds.sh builds it with
 * the system compiler and libjpeg): baseline, progressive, greyscale, CMYK, restart
 * intervals, odd sampling, and an EXIF APP1 for each orientation in both byte orders.
 * Usage: seed_jpeg OUT_DIR */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

enum { W = 13, H = 9 };

static int write_jpeg(const char *dir, const char *name, int comps, J_COLOR_SPACE cs,
                      int progressive, int restart, int hs, int orientation, int big_endian) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return 1;
    struct jpeg_compress_struct c;
    struct jpeg_error_mgr err;
    c.err = jpeg_std_error(&err);
    jpeg_create_compress(&c);
    jpeg_stdio_dest(&c, f);
    c.image_width = W;
    c.image_height = H;
    c.input_components = comps;
    c.in_color_space = cs;
    jpeg_set_defaults(&c);
    jpeg_set_quality(&c, 50, TRUE);
    if (progressive) jpeg_simple_progression(&c);
    c.restart_interval = (unsigned)restart;
    if (comps == 3) {
        c.comp_info[0].h_samp_factor = hs;
        c.comp_info[0].v_samp_factor = hs == 1 ? 1 : 2;
    }
    jpeg_start_compress(&c, TRUE);
    if (orientation) {
        /* Exif\0\0 + TIFF header + IFD0 with one entry: Orientation (0x0112), SHORT, 1 */
        uint8_t e[6 + 8 + 2 + 12 + 4] = "Exif\0\0";
        uint8_t *t = e + 6;
        if (big_endian) {
            memcpy(t, "MM\0\x2a\0\0\0\x08", 8);
            memcpy(t + 8, "\0\x01\x01\x12\0\x03\0\0\0\x01", 10);
            t[18] = 0;
            t[19] = (uint8_t)orientation;
        } else {
            memcpy(t, "II\x2a\0\x08\0\0\0", 8);
            memcpy(t + 8, "\x01\0\x12\x01\x03\0\x01\0\0\0", 10);
            t[18] = (uint8_t)orientation;
            t[19] = 0;
        }
        jpeg_write_marker(&c, JPEG_APP0 + 1, e, sizeof e);
    }
    uint8_t row[W * 4];
    while (c.next_scanline < H) {
        for (int x = 0; x < W * comps; x++) row[x] = (uint8_t)(x * 17 + c.next_scanline * 29);
        JSAMPROW r = row;
        jpeg_write_scanlines(&c, &r, 1);
    }
    jpeg_finish_compress(&c);
    jpeg_destroy_compress(&c);
    return fclose(f) != 0;
}

int main(int argc, char **argv) {
    if (argc != 2) return 2;
    const char *d = argv[1];
    int bad = 0;
    bad |= write_jpeg(d, "jpg_baseline", 3, JCS_RGB, 0, 0, 2, 0, 0);
    bad |= write_jpeg(d, "jpg_progressive", 3, JCS_RGB, 1, 0, 2, 0, 0);
    bad |= write_jpeg(d, "jpg_grey", 1, JCS_GRAYSCALE, 0, 0, 1, 0, 0);
    bad |= write_jpeg(d, "jpg_cmyk", 4, JCS_CMYK, 0, 0, 1, 0, 0);
    bad |= write_jpeg(d, "jpg_restart_444", 3, JCS_RGB, 0, 1, 1, 0, 0);
    for (int o = 1; o <= 8; o++) {
        char name[64];
        snprintf(name, sizeof name, "jpg_exif_%d_%s", o, o % 2 ? "be" : "le");
        bad |= write_jpeg(d, name, 3, JCS_RGB, o == 6, 0, 2, o, o % 2);
    }
    return bad;
}
