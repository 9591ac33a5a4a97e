/* image.h - image decoding (JPEG via libjpeg-turbo with EXIF orientation, PNG via
 * libpng) to 8-bit RGB, and PNG encoding for mask/overlay output (png_write.c).
 * tinysam_image_load / tinysam_image_decode / tinysam_image_free (tinysam.h) are
 * implemented in image.c on top of these. */
#ifndef TS_IMAGE_H
#define TS_IMAGE_H

#include "tinysam.h"

/* Largest accepted width or height (JPEG cannot exceed 65500). libpng's per-row cost is
 * paid 7 times per row of an interlaced PNG, so a 4 x 1,000,000 image took 250 ms to
 * reject under ASan while 4 megapixels of ordinary shape take 20: sides are bounded too,
 * not just the pixel count (max_pixels). */
#define TS_IMAGE_MAX_SIDE 65535
/* Largest image file tinysam_image_load reads. */
#define TS_IMAGE_MAX_FILE (1024LL * 1024 * 1024)
/* Progressive JPEGs with more scans than this are rejected (decode-time DoS guard). */
#define TS_JPEG_MAX_SCANS 1000

/* As tinysam_image_decode, with `name` (a path or "image") leading every error message. */
int ts_image_decode_named(const char *name, const void *data, size_t size, long long max_pixels,
                          tinysam_image *out);

/* EXIF orientation (1-8) found in a JPEG's APP1 payload (starting "Exif\0\0"); 1 when
 * absent or invalid. Bounds-checked against len. */
int ts_exif_orientation(const uint8_t *app1, size_t len);

/* Applies EXIF orientation o (2-8) as PIL's ImageOps.exif_transpose does. src is w x h
 * RGB; dst must hold w*h*3 bytes and gets (o >= 5 ? h x w : w x h). */
void ts_image_orient(const uint8_t *src, int w, int h, int o, uint8_t *dst);

/* png_write.c. Writes an 8-bit grey (channels 1) or RGB (channels 3) PNG. */
int ts_png_write(const char *path, const uint8_t *pix, int width, int height, int channels);
/* Encodes the same into a malloc'd buffer (for the server). */
int ts_png_encode(const uint8_t *pix, int width, int height, int channels, uint8_t **out,
                  size_t *out_size);
/* A W x H mask (one byte per pixel, nonzero = set) as a 1-bit greyscale PNG (set = white);
 * readers that expand it to 8 bits (libpng, OpenCV, PIL's convert("L")) see 0 and 255. */
int ts_png_write_mask(const char *path, const uint8_t *mask, int width, int height);
int ts_png_encode_mask(const uint8_t *mask, int width, int height, uint8_t **out,
                       size_t *out_size);
/* Several PNGs at once (segment's masks and overlay): every image's row slices deflated in one
 * round on the pool (a 1-bit mask is one slice: written one after another they left a core
 * idle), then the files written in order. channels 0: a mask as ts_png_write_mask writes it;
 * 1 or 3: as ts_png_write. Same bytes as those functions. */
#define TS_PNG_MANY_MAX 8
typedef struct {
    const char *path;
    const uint8_t *pix;
    int width, height, channels;
} ts_png_item;
int ts_png_write_many(int n, const ts_png_item *items);

#endif
