/* int8_decoder_model.h - the benchmarks' int8-decoder model: the float model's decoder with
 * the layers quantize makes int8 (quant/calibrate_decoder.h), at fixed input steps (the speed
 * does not depend on them). Shared by bench_decoder and bench_boxes. */
#ifndef TS_TEST_INT8_DECODER_MODEL_H
#define TS_TEST_INT8_DECODER_MODEL_H

#include "tinysam.h"

/* m's model with the int8 decoder layers: written to a temporary file (its name carries tag
 * and the process id), loaded back, removed. NULL on failure (tinysam_last_error). */
tinysam_model *int8_decoder_model(const tinysam_model *m, const char *tag);

#endif
