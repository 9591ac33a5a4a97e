/* comm_common.c - the part of the communication layer both builds share: the slot-order sum
 * that defines the gradient combine (comm.h). */
#include "dist/comm.h"

#include "core.h"
#include "tinysam.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void ts_comm_sum_slots(const float *src, int nslots, size_t stride, size_t len, float *dst) {
    for (size_t i = 0; i < len; i++) dst[i] = 0.0f;
    /* slot by slot, each element's additions in slot order (vectorising over i keeps it) */
    for (int s = 0; s < nslots; s++) {
        const float *g = src + (size_t)s * stride;
        for (size_t i = 0; i < len; i++) dst[i] += g[i];
    }
}

typedef struct {
    int32_t rc;
    char msg[252];
} phase_result;

int ts_comm_agree_rc(ts_comm *c, int rc) {
    const int R = ts_comm_size(c);
    phase_result mine = {.rc = rc}, *all = calloc((size_t)R, sizeof *all);
    if (rc) snprintf(mine.msg, sizeof mine.msg, "%s", tinysam_last_error());
    if (!all) return rc ? rc : ts_error(TINYSAM_E_NOMEM, "out of memory");
    int err = ts_comm_allgather(c, &mine, sizeof mine, all);
    if (!err && !rc)
        for (int k = 0; k < R; k++)
            if (all[k].rc) {
                rc = ts_error(all[k].rc, "rank %d: %.*s", k, (int)sizeof all[k].msg - 1,
                              all[k].msg);
                break;
            }
    free(all);
    return rc ? rc : err;
}

int ts_comm_agree_u64(ts_comm *c, uint64_t v, const char *what) {
    const int R = ts_comm_size(c);
    uint64_t *all = calloc((size_t)R, sizeof *all);
    if (!all) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    int rc = ts_comm_allgather(c, &v, sizeof v, all);
    for (int k = 1; !rc && k < R; k++)
        if (all[k] != all[0]) rc = ts_error(TINYSAM_E_ARG, "%s: rank %d differs from rank 0", what, k);
    free(all);
    return rc;
}
