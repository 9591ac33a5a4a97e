/* ls_rle.c - Label Studio's brush RLE encoder (see ls_rle.h). */
#include "server/ls_rle.h"
#include "core.h"

#include <stdlib.h>
#include <string.h>

typedef struct {
    uint8_t *buf;
    size_t cap, bits;
} bitw;

static int put(bitw *w, uint32_t v, int nbits) {
    size_t need = (w->bits + (size_t)nbits + 7) / 8 + 1;
    if (need > w->cap) {
        size_t nc = w->cap ? w->cap * 2 : 256;
        while (nc < need)
            nc *= 2;
        uint8_t *nb = realloc(w->buf, nc);
        if (!nb) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        memset(nb + w->cap, 0, nc - w->cap);
        w->buf = nb;
        w->cap = nc;
    }
    for (int i = nbits - 1; i >= 0; i--, w->bits++)
        if (v >> i & 1) w->buf[w->bits / 8] |= (uint8_t)(0x80 >> (w->bits % 8));
    return 0;
}

int ts_ls_rle_encode(const uint8_t *values, size_t n, uint8_t **out, size_t *out_len) {
    *out = NULL;
    *out_len = 0;
    if (n > UINT32_MAX) return ts_error(TINYSAM_E_LIMIT, "brush RLE: %zu values (2^32 at most)", n);
    static const int width[4] = {3, 4, 8, 16};
    bitw w = {0};
    int rc = put(&w, (uint32_t)n, 32);
    if (!rc) rc = put(&w, 7, 5);
    for (int t = 0; t < 4 && !rc; t++)
        rc = put(&w, (uint32_t)width[t] - 1, 4);
    for (size_t i = 0; i < n && !rc;) {
        size_t j = i + 1;
        while (j < n && values[j] == values[i])
            j++;
        size_t len = j - i;
        uint8_t v = values[i];
        i = j;
        if (len == 1) { /* a literal of one */
            rc = put(&w, 0, 1 + 2 + 3);
            if (!rc) rc = put(&w, v, 8);
            continue;
        }
        if (len <= 256) {
            int t = len <= 8 ? 0 : len <= 16 ? 1 : 2;
            rc = put(&w, 4u | (uint32_t)t, 3);
            if (!rc) rc = put(&w, (uint32_t)(len - 1), width[t]);
            if (!rc) rc = put(&w, v, 8);
            continue;
        }
        /* longer: blocks of 65,536, the rest (even a single value) in the 16-bit
         * class */
        while (len > 65536 && !rc) {
            rc = put(&w, 7, 3);
            if (!rc) rc = put(&w, 65535, 16);
            if (!rc) rc = put(&w, v, 8);
            len -= 65536;
        }
        if (!rc) rc = put(&w, 7, 3);
        if (!rc) rc = put(&w, (uint32_t)(len - 1), 16);
        if (!rc) rc = put(&w, v, 8);
    }
    if (!rc) rc = put(&w, 0, 8 - (int)(w.bits % 8)); /* 8 zero bits when already aligned */
    if (rc) {
        free(w.buf);
        return rc;
    }
    *out = w.buf;
    *out_len = w.bits / 8;
    return 0;
}

int ts_ls_mask_rle(const uint8_t *mask, int W, int H, uint8_t **out, size_t *out_len) {
    size_t n;
    if (W <= 0 || H <= 0 || !ts_mul_size((size_t)W * 4, (size_t)H, &n))
        return ts_error(TINYSAM_E_ARG, "brush RLE: bad mask size %dx%d", W, H);
    uint8_t *v = ts_malloc(n);
    if (!v) return TINYSAM_E_NOMEM;
    for (size_t i = 0; i < (size_t)W * H; i++)
        memset(v + 4 * i, mask[i] ? 255 : 0, 4);
    int rc = ts_ls_rle_encode(v, n, out, out_len);
    free(v);
    return rc;
}
