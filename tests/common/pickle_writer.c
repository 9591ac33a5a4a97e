/* pickle_writer.c - see pickle_writer.h. */
#include "pickle_writer.h"

#include <stdlib.h>
#include <string.h>

void pk_put(pk_buf *o, const void *p, size_t n) {
    if (o->n + n > o->cap) {
        o->cap = (o->n + n) * 2 + 256;
        o->b = realloc(o->b, o->cap);
    }
    memcpy(o->b + o->n, p, n);
    o->n += n;
}

void pk_op(pk_buf *o, uint8_t c) { pk_put(o, &c, 1); }

void pk_le(pk_buf *o, uint64_t v, int n) {
    for (int i = 0; i < n; i++) pk_op(o, (uint8_t)(v >> (8 * i)));
}

void pk_str(pk_buf *o, const char *s) {
    pk_op(o, 'X');
    pk_le(o, strlen(s), 4);
    pk_put(o, s, strlen(s));
}

void pk_int(pk_buf *o, int v) {
    pk_op(o, 'J');
    pk_le(o, (uint32_t)v, 4);
}

void pk_global(pk_buf *o, const char *mod, const char *name) {
    pk_op(o, 'c');
    pk_put(o, mod, strlen(mod));
    pk_op(o, '\n');
    pk_put(o, name, strlen(name));
    pk_op(o, '\n');
}

void pk_legacy_magic(pk_buf *o) {
    /* 0x1950a86a20f9469cfc6c as LONG1, little-endian */
    const uint8_t magic[] = {0x80, 2,    0x8a, 10,   0x6c, 0xfc, 0x9c, 0x46,
                             0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, '.'};
    pk_put(o, magic, sizeof magic);
    const uint8_t proto[] = {0x80, 2, 'M', 0xe9, 0x03, '.'};
    pk_put(o, proto, sizeof proto);
}
