/* fuzz_http.c - libFuzzer harness for ts_fuzz_http (targets.c). */
#include "targets.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    (void)ts_fuzz_http(data, size);
    return 0;
}
