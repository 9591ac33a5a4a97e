/* comm_serial.c - the communication layer of the default build: one process, rank 0 of 1. */
#include "dist/comm.h"

#include "core.h"
#include "tinysam.h"

#include <stdlib.h>
#include <string.h>

struct ts_comm {
    int unused;
};

int ts_comm_init(int *argc, char ***argv, ts_comm **out) {
    (void)argc, (void)argv;
    *out = calloc(1, sizeof **out);
    return *out ? 0 : ts_error(TINYSAM_E_NOMEM, "out of memory");
}

void ts_comm_finalize(ts_comm *c) { free(c); }
int ts_comm_rank(const ts_comm *c) { return (void)c, 0; }
int ts_comm_size(const ts_comm *c) { return (void)c, 1; }
const char *ts_comm_library(const ts_comm *c) { return (void)c, "serial"; }
const char *ts_comm_kind(void) { return "none"; }
int ts_comm_barrier(ts_comm *c) { return (void)c, 0; }

int ts_comm_allgather(ts_comm *c, const void *mine, size_t bytes, void *all) {
    (void)c;
    if (bytes) memmove(all, mine, bytes);
    return 0;
}

int ts_comm_combine_reserve(ts_comm *c, int local_slots, size_t n) {
    (void)c, (void)n;
    return local_slots >= 0 ? 0 : ts_error(TINYSAM_E_ARG, "combine: %d slots", local_slots);
}

int ts_comm_combine(ts_comm *c, const float *slots, int local_slots, size_t n, float *out,
                    uint64_t *bytes_sent) {
    (void)c;
    ts_comm_sum_slots(slots, local_slots, n, n, out);
    if (bytes_sent) *bytes_sent = 0;
    return 0;
}

void ts_comm_abort(ts_comm *c, int code) {
    (void)c;
    exit(code ? code : 1);
}
