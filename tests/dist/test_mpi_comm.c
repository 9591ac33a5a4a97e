/* test_mpi_comm.c - the gradient combine (src/dist/comm.h) under `mpirun -np R`, R = 1..4:
 * every rank must get the serial slot-order sum of all R x L slots, bit for bit, for buffer
 * lengths 0, 1, R-1 and lengths not divisible by R, with 1..3 slots per rank. The expected
 * sum is computed here, independently, from the same generated values; the values span many
 * binades so that another order of additions gives other bits (checked too).
 *
 * Run without arguments it is the driver (tests/run.sh): it starts itself under mpirun with
 * --worker for each R and checks the exit statuses. */
#include "dist/comm.h"
#include "mpi_job.h"
#include "test.h"
#include "tinysam.h"

#include <math.h>
#include <inttypes.h>
#include <stdint.h>

static char g_self[1024];

/* Slot s's value at i: a pseudo-random float of magnitude 2^-20 .. 2^20, either sign. */
static float value(int s, size_t i) {
    uint64_t z = (uint64_t)s * 0x9E3779B97F4A7C15ull + i * 0xBF58476D1CE4E5B9ull + 12345;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float m = 1.0f + (float)(z & 0xFFFFFF) / 16777216.0f;
    const int e = (int)((z >> 24) % 41) - 20;
    return (z >> 40 & 1 ? -1.0f : 1.0f) * ldexpf(m, e);
}

static int worker(void) {
    ts_comm *c = NULL;
    if (ts_comm_init(NULL, NULL, &c)) {
        fprintf(stderr, "init: %s\n", tinysam_last_error());
        return 1;
    }
    const int R = ts_comm_size(c), me = ts_comm_rank(c);
    const size_t lens[] = {0, 1, (size_t)(R - 1), (size_t)(7 * R + 3), (size_t)(4099 * R + 1),
                           1000003};
    int bad = 0, order_matters = 0;
    for (int L = 1; L <= 3; L++)
        for (size_t q = 0; q < sizeof lens / sizeof lens[0]; q++) {
            const size_t n = lens[q];
            const int B = R * L;
            float *slots = malloc(sizeof(float) * ((size_t)L * n + 1));
            float *out = malloc(sizeof(float) * (n + 1)), *ref = malloc(sizeof(float) * (n + 1));
            float *rev = malloc(sizeof(float) * (n + 1));
            if (!slots || !out || !ref || !rev) return 1;
            for (int j = 0; j < L; j++)
                for (size_t i = 0; i < n; i++) slots[(size_t)j * n + i] = value(me * L + j, i);
            for (size_t i = 0; i < n; i++) out[i] = NAN;
            uint64_t bytes = 0;
            if (ts_comm_combine_reserve(c, L, n) ||
                ts_comm_combine(c, slots, L, n, out, &bytes)) {
                fprintf(stderr, "rank %d: combine: %s\n", me, tinysam_last_error());
                return 1;
            }
            for (size_t i = 0; i < n; i++) { /* the definition, slot 0 first */
                float a = 0.0f, b = 0.0f;
                for (int s = 0; s < B; s++) a += value(s, i);
                for (int s = B - 1; s >= 0; s--) b += value(s, i);
                ref[i] = a, rev[i] = b;
            }
            if (n && memcmp(out, ref, sizeof(float) * n)) {
                size_t i = 0;
                while (!memcmp(&out[i], &ref[i], sizeof(float))) i++;
                fprintf(stderr, "rank %d of %d, L %d, n %zu: element %zu is %.9g, the slot-order "
                                "sum %.9g\n", me, R, L, n, i, out[i], ref[i]);
                bad = 1;
            }
            if (n && memcmp(ref, rev, sizeof(float) * n)) order_matters = 1;
            /* the bytes this rank sent: L pieces of the other ranks' chunks + its chunk */
            const size_t mine = n * (size_t)(me + 1) / (size_t)R - n * (size_t)me / (size_t)R;
            const uint64_t want = R > 1 ? 4 * ((uint64_t)(L + 1) * (n - mine)) : 0;
            if (bytes != want) {
                fprintf(stderr, "rank %d: %" PRIu64 " bytes sent, expected %" PRIu64 "\n", me,
                        bytes, want);
                bad = 1;
            }
            free(slots), free(out), free(ref), free(rev);
        }
    if (R * 3 > 1 && !order_matters) { /* the values must tell the orders apart */
        fprintf(stderr, "the test values do not depend on the order of additions\n");
        bad = 1;
    }
    ts_comm_finalize(c);
    return bad;
}

static void test_combine_r(int R) {
    char args[2048], log[512];
    snprintf(log, sizeof log, "%s", tmp_path("mpi_comm.log"));
    snprintf(args, sizeof args, "-np %d %s --worker", R, g_self);
    int st = mpi_job_run(args, NULL, log, 120);
    char buf[4096] = {0};
    FILE *f = fopen(log, "r");
    if (f) {
        size_t k = fread(buf, 1, sizeof buf - 1, f);
        buf[k] = 0;
        fclose(f);
    }
    CHECK(st == 0, "mpirun -np %d: exit %d: %s", R, st, buf);
    remove(log);
}

static void test_combine_r1(void) { test_combine_r(1); }
static void test_combine_r2(void) { test_combine_r(2); }
static void test_combine_r3(void) { test_combine_r(3); }
static void test_combine_r4(void) { test_combine_r(4); }

int main(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "--worker")) return worker();
    if (!realpath(argv[0], g_self)) snprintf(g_self, sizeof g_self, "%s", argv[0]);
    RUN(test_combine_r1);
    RUN(test_combine_r2);
    RUN(test_combine_r3);
    RUN(test_combine_r4);
    return test_summary();
}
