/* fuzz_args.c - libFuzzer harness for ts_fuzz_args (targets.c). */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)ts_fuzz_args(data, size);
    return 0;
}
