/* int8_info.h - what an int8 model file quantises (int8_model.h), as JSON for `tinysam info`:
 * {"w8a8_layers": [P...], "activation_steps": [P...], "weight_only": [X...]} with the layer
 * prefixes of the file's tensors; all lists empty for a float file. */
#ifndef TS_INT8_INFO_H
#define TS_INT8_INFO_H

#include "io/tensor_map.h"

#include <stdio.h>

void ts_int8_info_json(const ts_tensor_map *m, FILE *f);

#endif
