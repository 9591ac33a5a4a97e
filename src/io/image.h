/* image.h - image decoding (JPEG via libjpeg-turbo with EXIF orientation, PNG via
 * libpng) to 8-bit RGB, and PNG encoding for mask/overlay output.
 * tinysam_image_load / tinysam_image_decode / tinysam_image_free (tinysam.h) are
 * implemented in image.c on top of these. */
#ifndef TS_IMAGE_H
#define TS_IMAGE_H

#include "tinysam.h"

/* Writes an 8-bit grey (channels 1) or RGB (channels 3) PNG. */
int ts_png_write(const char *path, const uint8_t *pix, int width, int height, int channels);
/* Encodes the same into a malloc'd buffer (for the server). */
int ts_png_encode(const uint8_t *pix, int width, int height, int channels, uint8_t **out,
                  size_t *out_size);

#endif
