/* ls_rle.h - Label Studio's brush RLE: the bit-packed run-length format of
 * @thi.ng/rle-pack that Label Studio's front end decodes brush results with,
 * written exactly as Label Studio's own encoder
 * (label_studio_converter.brush.encode_rle) writes it.
 *
 * Bits, MSB first: the value count (32 bits), word size - 1 (5 bits, = 7), the
 * four run-width classes - 1 (4 bits each: widths 3, 4, 8, 16); then per block:
 * 1 bit (1 = repeat, 0 = literal), the width class t (2 bits), count - 1 in
 * width[t] bits, and the 8-bit value (repeat) or count values (literal). A run
 * of one is a literal of one, longer runs repeats (65,536 values at most per
 * block); zero bits pad to whole bytes, and, as Label Studio's encoder does, a
 * whole zero byte is added when the bits already end on a byte boundary. */
#ifndef TS_SERVER_LS_RLE_H
#define TS_SERVER_LS_RLE_H

#include <stddef.h>
#include <stdint.h>

/* Encodes values[0..n) (n < 2^32); *out is malloc'd, *out_len bytes. */
int ts_ls_rle_encode(const uint8_t *values, size_t n, uint8_t **out, size_t *out_len);
/* A W x H 0/1 mask as Label Studio's brush wants it: 0/255, each pixel repeated
 * 4 times (RGBA), row-major. */
int ts_ls_mask_rle(const uint8_t *mask, int W, int H, uint8_t **out, size_t *out_len);

#endif
