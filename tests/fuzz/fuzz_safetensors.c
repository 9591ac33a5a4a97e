/* fuzz_safetensors.c - libFuzzer harness for ts_fuzz_safetensors (targets.c). */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)ts_fuzz_safetensors(data, size);
    return 0;
}
