/* image.c - JPEG/PNG decoding to 8-bit RGB (spec TINYSAM.md section 3.0); PNG encoding
 * is in png_write.c. Both libraries report errors by longjmp; every setjmp lives in a small
 * inner function whose state is kept in a context struct owned by the caller, so no
 * automatic variable is modified between setjmp and longjmp. */
#include "io/image.h"

#include "core.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jerror.h> /* after stdio.h; jpeglib.h needs FILE */
#include <jpeglib.h>
#include <png.h>

/* ---------------------------------------------------------------- limits */

static long long effective_limit(long long max_pixels) {
    return max_pixels > 0 ? max_pixels : TINYSAM_DEFAULT_MAX_PIXELS;
}

/* Checks header dimensions before anything is allocated from them. */
static int check_dims(const char *name, long long w, long long h, long long max_pixels) {
    if (w <= 0 || h <= 0)
        return ts_error(TINYSAM_E_FORMAT, "%s: image has zero size (%lldx%lld)", name, w, h);
    if (w > TS_IMAGE_MAX_SIDE || h > TS_IMAGE_MAX_SIDE)
        return ts_error(TINYSAM_E_LIMIT, "%s: image is %lldx%lld, a side above the limit of %d",
                        name, w, h, TS_IMAGE_MAX_SIDE);
    long long lim = effective_limit(max_pixels);
    if (w * h > lim)
        return ts_error(TINYSAM_E_LIMIT,
                        "%s: image is %lldx%lld (%lld pixels), above the limit of %lld "
                        "(use --max-pixels)",
                        name, w, h, w * h, lim);
    return TINYSAM_OK;
}

/* ---------------------------------------------------------------- EXIF orientation */

static unsigned rd16(const uint8_t *p, int be) {
    return be ? (unsigned)p[0] << 8 | p[1] : (unsigned)p[1] << 8 | p[0];
}

static uint32_t rd32(const uint8_t *p, int be) {
    return be ? (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3]
              : (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}

int ts_exif_orientation(const uint8_t *app1, size_t len) {
    if (!app1 || len < 6 || memcmp(app1, "Exif\0\0", 6) != 0) return 1;
    const uint8_t *t = app1 + 6; /* TIFF header; offsets are relative to it */
    size_t n = len - 6;
    if (n < 8) return 1;
    int be;
    if (t[0] == 'I' && t[1] == 'I')
        be = 0;
    else if (t[0] == 'M' && t[1] == 'M')
        be = 1;
    else
        return 1;
    if (rd16(t + 2, be) != 42) return 1;
    uint32_t ifd = rd32(t + 4, be);
    if (ifd > n || n - ifd < 2) return 1;
    unsigned count = rd16(t + ifd, be);
    size_t pos = (size_t)ifd + 2;
    for (unsigned i = 0; i < count; i++, pos += 12) {
        if (n - pos < 12 || pos > n) return 1;
        const uint8_t *e = t + pos;
        if (rd16(e, be) != 0x0112) continue;
        unsigned type = rd16(e + 2, be);
        uint32_t cnt = rd32(e + 4, be);
        unsigned v;
        if (type == 3)
            v = rd16(e + 8, be); /* SHORT, stored left-justified in the value */
        else if (type == 4 || type == 9)
            v = rd32(e + 8, be); /* LONG/SLONG: lenient */
        else
            return 1;
        if (cnt < 1) return 1;
        return (v >= 1 && v <= 8) ? (int)v : 1;
    }
    return 1;
}

void ts_image_orient(const uint8_t *src, int w, int h, int o, uint8_t *dst) {
    /* Output size: orientations 5-8 swap the axes. For each output pixel (ox, oy) the
     * source pixel is (sx, sy); PIL: 2 FLIP_LEFT_RIGHT, 3 ROTATE_180, 4 FLIP_TOP_BOTTOM,
     * 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90. */
    int ow = o >= 5 ? h : w, oh = o >= 5 ? w : h;
    for (int oy = 0; oy < oh; oy++) {
        uint8_t *d = dst + (size_t)oy * ow * 3;
        for (int ox = 0; ox < ow; ox++, d += 3) {
            int sx, sy;
            switch (o) {
            case 2:
                sx = w - 1 - ox;
                sy = oy;
                break;
            case 3:
                sx = w - 1 - ox;
                sy = h - 1 - oy;
                break;
            case 4:
                sx = ox;
                sy = h - 1 - oy;
                break;
            case 5:
                sx = oy;
                sy = ox;
                break;
            case 6:
                sx = oy;
                sy = h - 1 - ox;
                break;
            case 7:
                sx = w - 1 - oy;
                sy = h - 1 - ox;
                break;
            case 8:
                sx = w - 1 - oy;
                sy = ox;
                break;
            default:
                sx = ox;
                sy = oy;
                break;
            }
            const uint8_t *s = src + ((size_t)sy * w + sx) * 3;
            d[0] = s[0];
            d[1] = s[1];
            d[2] = s[2];
        }
    }
}

/* ---------------------------------------------------------------- JPEG */

typedef struct {
    struct jpeg_error_mgr pub;
    jmp_buf jb;
    char msg[JMSG_LENGTH_MAX];
    int truncated; /* premature end of data (reported as a warning by libjpeg) */
} jpeg_err;

typedef struct {
    const char *name;
    const uint8_t *data;
    size_t size;
    long long max_pixels;
    struct jpeg_decompress_struct cinfo;
    jpeg_err err;
    struct jpeg_progress_mgr progress;
    int created;  /* cinfo needs jpeg_destroy_decompress */
    uint8_t *pix; /* decoded RGB, owned until handed out */
    int w, h, orient;
} jpeg_ctx;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->msg);
    longjmp(e->jb, 1);
}

static void jpeg_on_message(j_common_ptr cinfo, int level) {
    jpeg_err *e = (jpeg_err *)cinfo->err;
    if (level >= 0) return; /* trace messages */
    /* Truncated data would otherwise decode as grey filler; treat it as an error like
     * PIL does (without LOAD_TRUNCATED_IMAGES). Other corrupt-data warnings are
     * recoverable and libjpeg-turbo resynchronises. */
    if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
        e->truncated = 1;
        longjmp(e->jb, 1);
    }
    cinfo->err->num_warnings++;
}

static void jpeg_on_output(j_common_ptr cinfo) {
    (void)cinfo; /* never print to stderr from the library */
}

static void jpeg_on_progress(j_common_ptr cinfo) {
    if (!cinfo->is_decompressor) return;
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    if (d->inputctl && d->input_scan_number > TS_JPEG_MAX_SCANS) {
        jpeg_err *e = (jpeg_err *)cinfo->err;
        snprintf(e->msg, sizeof e->msg, "more than %d scans", TS_JPEG_MAX_SCANS);
        longjmp(e->jb, 1);
    }
}

static int jpeg_decode_inner(jpeg_ctx *c) {
    struct jpeg_decompress_struct *ci = &c->cinfo;
    ci->err = jpeg_std_error(&c->err.pub);
    c->err.pub.error_exit = jpeg_on_error;
    c->err.pub.emit_message = jpeg_on_message;
    c->err.pub.output_message = jpeg_on_output;
    if (setjmp(c->err.jb)) {
        if (c->err.truncated) return ts_error(TINYSAM_E_FORMAT, "%s: truncated JPEG data", c->name);
        return ts_error(TINYSAM_E_FORMAT, "%s: corrupt JPEG data: %s", c->name, c->err.msg);
    }
    jpeg_create_decompress(ci);
    c->created = 1;
    c->progress.progress_monitor = jpeg_on_progress;
    ci->progress = &c->progress;
    jpeg_mem_src(ci, c->data, (unsigned long)c->size);
    jpeg_save_markers(ci, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(ci, TRUE);

    int rc = check_dims(c->name, ci->image_width, ci->image_height, c->max_pixels);
    if (rc) return rc;
    if (ci->jpeg_color_space == JCS_CMYK || ci->jpeg_color_space == JCS_YCCK)
        return ts_error(TINYSAM_E_UNSUPPORTED,
                        "%s: CMYK/YCCK JPEG is not supported (convert it to RGB first)", c->name);
    if (ci->num_components != 1 && ci->num_components != 3)
        return ts_error(TINYSAM_E_UNSUPPORTED, "%s: JPEG with %d colour components", c->name,
                        ci->num_components);

    /* PIL's first "Exif" APP1 wins. */
    c->orient = 1;
    for (jpeg_saved_marker_ptr m = ci->marker_list; m; m = m->next) {
        if (m->marker == JPEG_APP0 + 1 && m->data_length >= 6 &&
            memcmp(m->data, "Exif\0\0", 6) == 0) {
            c->orient = ts_exif_orientation(m->data, m->data_length);
            break;
        }
    }

    /* libjpeg-turbo defaults: JDCT_ISLOW, fancy upsampling; grey -> RGB replicates. */
    ci->out_color_space = JCS_RGB;
    jpeg_start_decompress(ci);
    if (ci->output_components != 3)
        return ts_error(TINYSAM_E_FORMAT, "%s: JPEG decoder gave %d components", c->name,
                        ci->output_components);
    c->w = (int)ci->output_width;
    c->h = (int)ci->output_height;
    size_t stride = (size_t)c->w * 3;
    c->pix = ts_malloc(stride * (size_t)c->h);
    if (!c->pix) return TINYSAM_E_NOMEM;
    while (ci->output_scanline < ci->output_height) {
        JSAMPROW row = c->pix + (size_t)ci->output_scanline * stride;
        jpeg_read_scanlines(ci, &row, 1);
    }
    jpeg_finish_decompress(ci);
    return TINYSAM_OK;
}

static int decode_jpeg(const char *name, const uint8_t *data, size_t size, long long max_pixels,
                       tinysam_image *out) {
    jpeg_ctx *c = calloc(1, sizeof *c);
    if (!c) return ts_error(TINYSAM_E_NOMEM, "%s: out of memory", name);
    c->name = name;
    c->data = data;
    c->size = size;
    c->max_pixels = max_pixels;
    int rc = jpeg_decode_inner(c);
    if (c->created) jpeg_destroy_decompress(&c->cinfo);
    if (rc == TINYSAM_OK && c->orient != 1) {
        uint8_t *o = ts_malloc((size_t)c->w * c->h * 3);
        if (!o) {
            rc = TINYSAM_E_NOMEM;
        } else {
            ts_image_orient(c->pix, c->w, c->h, c->orient, o);
            free(c->pix);
            c->pix = o;
            if (c->orient >= 5) {
                int t = c->w;
                c->w = c->h;
                c->h = t;
            }
        }
    }
    if (rc == TINYSAM_OK) {
        out->width = c->w;
        out->height = c->h;
        out->rgb = c->pix;
    } else {
        free(c->pix);
    }
    free(c);
    return rc;
}

/* ---------------------------------------------------------------- PNG decoding */

typedef struct {
    const char *name;
    const uint8_t *data;
    size_t size, pos;
    long long max_pixels;
    png_structp png;
    png_infop info;
    uint8_t *pix;    /* final RGB */
    png_bytep *rows; /* row pointers into pix */
    int w, h;
    char msg[256];
} png_ctx;

static void png_on_error(png_structp png, png_const_charp msg) {
    png_ctx *c = png_get_error_ptr(png);
    snprintf(c->msg, sizeof c->msg, "%s", msg ? msg : "error");
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg; /* recoverable; never print from the library */
}

static void png_read_mem(png_structp png, png_bytep dst, png_size_t n) {
    png_ctx *c = png_get_io_ptr(png);
    if (n > c->size - c->pos) png_error(png, "truncated PNG data");
    memcpy(dst, c->data + c->pos, n);
    c->pos += n;
}

static int png_decode_inner(png_ctx *c) {
    if (setjmp(png_jmpbuf(c->png))) {
        if (strcmp(c->msg, "truncated PNG data") == 0)
            return ts_error(TINYSAM_E_FORMAT, "%s: truncated PNG data", c->name);
        return ts_error(TINYSAM_E_FORMAT, "%s: corrupt PNG data: %s", c->name, c->msg);
    }
    png_set_read_fn(c->png, c, png_read_mem);
    /* Our own limits are checked below; lift libpng's so the message is ours. */
    png_set_user_limits(c->png, 0x7fffffff, 0x7fffffff);
    png_read_info(c->png, c->info);
    png_uint_32 w, h;
    int depth, ctype, interlace;
    png_get_IHDR(c->png, c->info, &w, &h, &depth, &ctype, &interlace, NULL, NULL);
    int rc = check_dims(c->name, (long long)w, (long long)h, c->max_pixels);
    if (rc) return rc;

    /* Section 3.0: palette expanded (transparency ignored: no tRNS_to_alpha), low-depth
     * grey expanded, 16-bit -> high byte, alpha dropped without blending, grey -> RGB. */
    if (ctype == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(c->png);
    if (ctype == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(c->png);
    if (depth == 16) png_set_strip_16(c->png);
    /* palette_to_rgb also expands tRNS into an alpha channel; strip that as well. */
    if ((ctype & PNG_COLOR_MASK_ALPHA) || png_get_valid(c->png, c->info, PNG_INFO_tRNS))
        png_set_strip_alpha(c->png);
    if (ctype == PNG_COLOR_TYPE_GRAY || ctype == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(c->png);
    png_set_interlace_handling(c->png);
    png_read_update_info(c->png, c->info);
    if (png_get_channels(c->png, c->info) != 3 || png_get_bit_depth(c->png, c->info) != 8 ||
        png_get_rowbytes(c->png, c->info) != (size_t)w * 3)
        return ts_error(TINYSAM_E_FORMAT, "%s: unexpected PNG layout after conversion", c->name);

    c->w = (int)w;
    c->h = (int)h;
    c->pix = ts_malloc((size_t)w * h * 3);
    c->rows = ts_malloc(sizeof(png_bytep) * h);
    if (!c->pix || !c->rows) return TINYSAM_E_NOMEM;
    for (png_uint_32 y = 0; y < h; y++)
        c->rows[y] = c->pix + (size_t)y * w * 3;
    png_read_image(c->png, c->rows);
    png_read_end(c->png, NULL);
    return TINYSAM_OK;
}

static int decode_png(const char *name, const uint8_t *data, size_t size, long long max_pixels,
                      tinysam_image *out) {
    /* png_read_info reads on past IHDR up to the first IDAT, so check the IHDR's size
     * here first: a huge image is then reported as such even when only its header came. */
    if (size >= 24 && memcmp(data + 12, "IHDR", 4) == 0) {
        long long w = (long long)rd32(data + 16, 1), h = (long long)rd32(data + 20, 1);
        int rc = check_dims(name, w, h, max_pixels);
        if (rc) return rc;
    }
    /* The whole file is in memory, so no chunk can be longer than what is left of it. libpng
     * allocates and clears an ancillary chunk's announced length before reading it (its
     * 8 MB chunk limit is only a warning): a 58-byte file could ask for 2 GB.
     * A chunk counts from its 8-byte header: one that ends the file without data or CRC
     * announces a length too. */
    for (size_t p = 8; p < size && size - p >= 8;) {
        uint32_t len = rd32(data + p, 1);
        if ((uint64_t)len + 12 > (uint64_t)(size - p)) {
            char type[5];
            for (int i = 0; i < 4; i++) {
                uint8_t ch = data[p + 4 + i];
                type[i] = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') ? (char)ch : '?';
            }
            type[4] = 0;
            return ts_error(TINYSAM_E_FORMAT,
                            "%s: truncated PNG data (chunk '%s' of %u bytes runs past the end "
                            "of the file)", name, type, len);
        }
        if (memcmp(data + p + 4, "IEND", 4) == 0) break;
        p += 12 + (size_t)len;
    }
    png_ctx *c = calloc(1, sizeof *c);
    if (!c) return ts_error(TINYSAM_E_NOMEM, "%s: out of memory", name);
    c->name = name;
    c->data = data;
    c->size = size;
    c->max_pixels = max_pixels;
    int rc;
    c->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, c, png_on_error, png_on_warning);
    if (c->png) c->info = png_create_info_struct(c->png);
    if (!c->png || !c->info)
        rc = ts_error(TINYSAM_E_NOMEM, "%s: out of memory", name);
    else
        rc = png_decode_inner(c);
    if (c->png) png_destroy_read_struct(&c->png, c->info ? &c->info : NULL, NULL);
    free(c->rows);
    if (rc == TINYSAM_OK) {
        out->width = c->w;
        out->height = c->h;
        out->rgb = c->pix;
    } else {
        free(c->pix);
    }
    free(c);
    return rc;
}

/* ---------------------------------------------------------------- public decoding */

int ts_image_decode_named(const char *name, const void *data, size_t size, long long max_pixels,
                          tinysam_image *out) {
    if (!out) return ts_error(TINYSAM_E_ARG, "%s: no output image", name);
    memset(out, 0, sizeof *out);
    if (!data && size) return ts_error(TINYSAM_E_ARG, "%s: no data", name);
    const uint8_t *p = data;
    if (size == 0) return ts_error(TINYSAM_E_FORMAT, "%s: empty file", name);
    if (size >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF)
        return decode_jpeg(name, p, size, max_pixels, out);
    if (size >= 8 && memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0)
        return decode_png(name, p, size, max_pixels, out);
    if (size < 8 && ((p[0] == 0xFF && (size < 2 || p[1] == 0xD8)) || p[0] == 0x89))
        return ts_error(TINYSAM_E_FORMAT, "%s: truncated image data", name);
    return ts_error(TINYSAM_E_UNSUPPORTED, "%s: unknown image format (JPEG and PNG are supported)",
                    name);
}

tinysam_status tinysam_image_decode(const void *data, size_t size, long long max_pixels,
                                    tinysam_image *out) {
    return (tinysam_status)ts_image_decode_named("image", data, size, max_pixels, out);
}

tinysam_status tinysam_image_load(const char *path, long long max_pixels, tinysam_image *out) {
    if (!out) return (tinysam_status)ts_error(TINYSAM_E_ARG, "no output image");
    memset(out, 0, sizeof *out);
    if (!path) return (tinysam_status)ts_error(TINYSAM_E_ARG, "no image path");
    uint8_t *data;
    size_t size;
    int rc = ts_read_file(path, (size_t)TS_IMAGE_MAX_FILE, &data, &size);
    if (rc) return (tinysam_status)rc;
    rc = ts_image_decode_named(path, data, size, max_pixels, out);
    free(data);
    return (tinysam_status)rc;
}

void tinysam_image_free(tinysam_image *img) {
    if (!img) return;
    free(img->rgb);
    img->rgb = NULL;
    img->width = img->height = 0;
}
