/* npy.h - NumPy .npy files (format 1.0/2.0, little-endian, C order).
 * Used by the CLI (embeddings, low-res logits, mask inputs) and by the tests
 * (reference fixtures). */
#ifndef TS_NPY_H
#define TS_NPY_H

#include "tensor_map.h"

typedef struct {
    ts_dtype dtype;          /* F32, F64, I64, I32, U8, I8 ('|b1' bool read as U8) */
    int ndim;
    int64_t shape[TS_MAX_DIMS];
    int64_t numel;
    void *data;              /* owned, free with ts_npy_free */
} ts_npy;

int ts_npy_load(const char *path, ts_npy *out);
int ts_npy_parse(const uint8_t *buf, size_t size, ts_npy *out);
void ts_npy_free(ts_npy *a);
/* dtype F32, U8, I64, I32 or F64 */
int ts_npy_save(const char *path, ts_dtype dtype, int ndim, const int64_t *shape,
                const void *data);

#endif
