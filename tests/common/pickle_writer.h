/* pickle_writer.h - a tiny writer of Python pickle opcodes for the tests that hand-build
 * checkpoints whose every value is known (io/pickle.h reads them): a growing byte buffer and
 * the few opcodes those files need. */
#ifndef TS_TESTS_PICKLE_WRITER_H
#define TS_TESTS_PICKLE_WRITER_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint8_t *b;
    size_t n, cap;
} pk_buf;

/* Appends n raw bytes. */
void pk_put(pk_buf *o, const void *p, size_t n);
/* Appends one opcode byte. */
void pk_op(pk_buf *o, uint8_t c);
/* Appends v little-endian in n bytes. */
void pk_le(pk_buf *o, uint64_t v, int n);
/* BINUNICODE s. */
void pk_str(pk_buf *o, const char *s);
/* BININT v. */
void pk_int(pk_buf *o, int v);
/* GLOBAL mod.name. */
void pk_global(pk_buf *o, const char *mod, const char *name);
/* The first two pickles of the legacy (pre-ZIP) torch.save container: the magic number
 * 0x1950a86a20f9469cfc6c and the protocol version 1001. */
void pk_legacy_magic(pk_buf *o);

#endif
