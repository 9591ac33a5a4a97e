/* npy.h - NumPy .npy files (format 1.0/2.0, little-endian, C order).
 * Used by the CLI (embeddings, low-res logits, mask inputs) and by the tests
 * (reference fixtures). */
#ifndef TS_NPY_H
#define TS_NPY_H

#include "tensor_map.h"

typedef struct {
    ts_dtype dtype;          /* F32, F64, I64, I32, U8, I8 ('|b1' bool read as U8), F16 (raw
                              * little-endian binary16; ts_npy_to_f32 converts) */
    int ndim;
    int64_t shape[TS_MAX_DIMS];
    int64_t numel;
    void *data;              /* owned, free with ts_npy_free */
} ts_npy;

int ts_npy_load(const char *path, ts_npy *out);
int ts_npy_parse(const uint8_t *buf, size_t size, ts_npy *out);
void ts_npy_free(ts_npy *a);
/* Reads only the header of a .npy file into info (data stays NULL) and checks that the file
 * size is exactly header + data: a truncated or padded file is TINYSAM_E_FORMAT. */
int ts_npy_probe(const char *path, ts_npy *info);
/* Converts an F16 array in place to F32; no-op for F32, TINYSAM_E_FORMAT for other dtypes. */
int ts_npy_to_f32(ts_npy *a);
/* IEEE binary16 of f: round to nearest even, overflow to inf, NaN stays NaN (quiet),
 * subnormals rounded correctly. */
uint16_t ts_float_to_half(float f);
/* dtype F32, F16 (uint16 data), U8, I64, I32 or F64 */
int ts_npy_save(const char *path, ts_dtype dtype, int ndim, const int64_t *shape,
                const void *data);

#endif
