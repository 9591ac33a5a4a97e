/* test_comm.c - the communication layer of the default build (src/dist/comm_serial.c, one
 * process): the combine of L slots is the slot-order sum, bit for bit (checked against a sum
 * written out here, and shown to differ from the reverse order on these values), with lengths
 * 0, 1 and odd; the agreement helpers pass a single rank's result through. The MPI build's
 * combine over ranks is tests/dist/test_mpi_comm.c (make MPI=1 test-mpi). */
#include "core.h"
#include "dist/comm.h"
#include "test.h"
#include "tinysam.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static float value(int s, size_t i) { /* magnitudes 2^-20 .. 2^20, either sign */
    uint64_t z = (uint64_t)s * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull + 777;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (z >> 40 & 1 ? -1.0f : 1.0f) *
           ldexpf(1.0f + (float)(z & 0xFFFFFF) / 16777216.0f, (int)((z >> 24) % 41) - 20);
}

static ts_comm *c; /* one per process (MPI_Init once: the MPI build runs this too) */

static void test_combine_slot_order(void) {
    REQUIRE(c, "init: %s", tinysam_last_error());
    CHECK(ts_comm_rank(c) == 0 && ts_comm_size(c) == 1, "rank %d of %d", ts_comm_rank(c),
          ts_comm_size(c));
    static const size_t lens[] = {0, 1, 7, 4099};
    int order_matters = 0;
    for (int L = 1; L <= 6; L++)
        for (size_t q = 0; q < 4; q++) {
            const size_t n = lens[q];
            float *slots = malloc(sizeof(float) * ((size_t)L * n + 1));
            float *out = malloc(sizeof(float) * (n + 1));
            REQUIRE(slots && out, "memory");
            for (int s = 0; s < L; s++)
                for (size_t i = 0; i < n; i++) slots[(size_t)s * n + i] = value(s, i);
            uint64_t bytes = 1;
            REQUIRE(ts_comm_combine_reserve(c, L, n) == 0 &&
                        ts_comm_combine(c, slots, L, n, out, &bytes) == 0,
                    "combine: %s", tinysam_last_error());
            CHECK(bytes == 0, "one process sent %llu bytes", (unsigned long long)bytes);
            for (size_t i = 0; i < n; i++) {
                float a = 0.0f, b = 0.0f;
                for (int s = 0; s < L; s++) a += value(s, i);
                for (int s = L - 1; s >= 0; s--) b += value(s, i);
                if (memcmp(&a, &out[i], sizeof a)) {
                    CHECK(0, "L %d n %zu: element %zu %.9g, slot order %.9g", L, n, i, out[i], a);
                    break;
                }
                order_matters |= memcmp(&a, &b, sizeof a) != 0;
            }
            free(slots), free(out);
        }
    CHECK(order_matters, "the values do not tell the orders of addition apart");
}

static void test_agreement_one_rank(void) {
    REQUIRE(c, "init: %s", tinysam_last_error());
    CHECK(ts_comm_agree_rc(c, 0) == 0, "agree 0");
    int rc = ts_comm_agree_rc(c, ts_error(TINYSAM_E_IO, "disk on fire"));
    CHECK(rc == TINYSAM_E_IO && strstr(tinysam_last_error(), "disk on fire"),
          "a failure keeps its code and message: %d %s", rc, tinysam_last_error());
    CHECK(ts_comm_agree_u64(c, 42, "what") == 0, "one rank always agrees");
    CHECK(ts_comm_barrier(c) == 0, "barrier");
}

int main(void) {
    if (ts_comm_init(NULL, NULL, &c)) c = NULL;
    RUN(test_combine_slot_order);
    RUN(test_agreement_one_rank);
    ts_comm_finalize(c);
    return test_summary();
}
