/* tensor_map_internal.h - helpers shared by the checkpoint loaders (pth.c, safetensors.c). */
#ifndef TS_TENSOR_MAP_INTERNAL_H
#define TS_TENSOR_MAP_INTERNAL_H

#include "io/tensor_map.h"

float ts_half_to_float(uint16_t h);
int ts_dtype_size(ts_dtype t);
/* The dtype a tensor of file dtype t has once loaded (floats become F32). */
ts_dtype ts_dtype_loaded(ts_dtype t);
void ts_convert_elements(ts_dtype from, const uint8_t *src, size_t n, void *dst);
/* Maps a whole file read-only (*base NULL for an empty file); E_IO when it cannot be opened. */
int ts_file_map(const char *path, uint8_t **base, size_t *size);
void ts_file_unmap(uint8_t *base, size_t size);
/* Appends a zeroed tensor named name (copied); NULL on allocation failure. */
ts_tensor *ts_map_add(ts_tensor_map *m, const char *name);

#endif
