/* test_shard.c - the shard a dataset job takes: --shard, and the variables of mpirun (Open MPI,
 * MPICH), srun, Slurm arrays and Kubernetes Indexed Jobs, with their precedence and every
 * malformed or inconsistent case an error; "{shard}" expansion; every image exactly once. */
#include "dist/shard.h"
#include "test.h"
#include "tinysam.h"

#include <string.h>

static const char *const *g_env; /* NULL-terminated "NAME=VALUE" list */

static const char *stub_env(const char *name) {
    size_t n = strlen(name);
    for (int i = 0; g_env && g_env[i]; i++)
        if (!strncmp(g_env[i], name, n) && g_env[i][n] == '=') return g_env[i] + n + 1;
    return NULL;
}

/* Resolves with the given variables; returns the status. */
static int resolve(const char *arg, int count, const char *const *env, ts_shard *s) {
    g_env = env;
    return ts_shard_resolve(arg, count, stub_env, s);
}

#define EXPECT(arg, given_count, env, idx, cnt, how_part)                                            \
    do {                                                                                       \
        ts_shard s_;                                                                           \
        int rc_ = resolve(arg, given_count, env, &s_);                                         \
        CHECK(rc_ == 0, "resolve failed: %s", tinysam_last_error());                           \
        CHECK(rc_ || (s_.index == (idx) && s_.count == (cnt) && strstr(s_.how, how_part)),     \
              "got %d/%d (%s), expected %d/%d (%s)", s_.index, s_.count, s_.how, idx, cnt,     \
              how_part);                                                                       \
    } while (0)

#define EXPECT_ERR(arg, given_count, env, needle)                                                    \
    do {                                                                                       \
        ts_shard s_;                                                                           \
        int rc_ = resolve(arg, given_count, env, &s_);                                         \
        CHECK(rc_ == TINYSAM_E_ARG && strstr(tinysam_last_error(), needle),                    \
              "expected an error with '%s', got %d: %s", needle, rc_, tinysam_last_error());   \
    } while (0)

static void test_flag(void) {
    static const char *const none[] = {NULL};
    ts_shard s;
    CHECK(resolve(NULL, 0, none, &s) == 0 && s.index == 0 && s.count == 1 && !s.found,
          "no source: the whole dataset");
    EXPECT("2/5", 0, none, 2, 5, "--shard 2/5");
    EXPECT("0/1", 0, none, 0, 1, "--shard");
    EXPECT("3/4", 4, none, 3, 4, "--shard");
    EXPECT_ERR("5/5", 0, none, "0 <= I < N");
    EXPECT_ERR("-1/4", 0, none, "0 <= I < N");
    EXPECT_ERR("1/0", 0, none, "0 <= I < N");
    EXPECT_ERR("1", 0, none, "not I/N");
    EXPECT_ERR("1/4x", 0, none, "0 <= I < N");
    EXPECT_ERR(" 1/4", 0, none, "0 <= I < N");
    EXPECT_ERR("1/99999999999", 0, none, "0 <= I < N");
    EXPECT_ERR("1/4", 3, none, "disagrees");
    /* --shard wins over every launcher */
    static const char *const all[] = {"OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=3",
                                      "SLURM_STEP_NUM_TASKS=2", "SLURM_PROCID=1",
                                      "SLURM_ARRAY_TASK_ID=2", "SLURM_ARRAY_TASK_COUNT=4",
                                      "SLURM_ARRAY_TASK_MIN=0", "SLURM_ARRAY_TASK_MAX=3",
                                      "JOB_COMPLETION_INDEX=1", NULL};
    EXPECT("0/7", 0, all, 0, 7, "--shard");
}

static void test_mpi(void) {
    static const char *const ompi[] = {"OMPI_COMM_WORLD_RANK=2", "OMPI_COMM_WORLD_SIZE=3",
                                       NULL};
    EXPECT(NULL, 0, ompi, 2, 3, "OMPI_COMM_WORLD_RANK=2");
    static const char *const mpich[] = {"PMI_RANK=0", "PMI_SIZE=4", NULL};
    EXPECT(NULL, 0, mpich, 0, 4, "PMI_RANK=0");
    /* mpirun inside an sbatch array job: MPI first */
    static const char *const nested[] = {"OMPI_COMM_WORLD_RANK=1", "OMPI_COMM_WORLD_SIZE=2",
                                         "SLURM_ARRAY_TASK_ID=3", "SLURM_ARRAY_TASK_COUNT=4",
                                         "SLURM_ARRAY_TASK_MIN=0", "SLURM_ARRAY_TASK_MAX=3",
                                         "SLURM_NTASKS=2", "SLURM_PROCID=0", NULL};
    EXPECT(NULL, 0, nested, 1, 2, "mpirun");
    static const char *const half[] = {"OMPI_COMM_WORLD_RANK=1", NULL};
    EXPECT_ERR(NULL, 0, half, "OMPI_COMM_WORLD_SIZE");
    static const char *const bad[] = {"PMI_RANK=x", "PMI_SIZE=2", NULL};
    EXPECT_ERR(NULL, 0, bad, "PMI_RANK='x'");
    static const char *const over[] = {"PMI_RANK=2", "PMI_SIZE=2", NULL};
    EXPECT_ERR(NULL, 0, over, "not below");
    EXPECT_ERR(NULL, 4, ompi, "disagrees");
    EXPECT(NULL, 3, ompi, 2, 3, "mpirun");
}

static void test_srun(void) {
    static const char *const srun[] = {"SLURM_STEP_NUM_TASKS=2", "SLURM_NTASKS=2",
                                       "SLURM_PROCID=1", NULL};
    EXPECT(NULL, 0, srun, 1, 2, "SLURM_PROCID=1");
    /* the batch script of `sbatch -n 4` (no job step): not a shard of 4 */
    static const char *const batch[] = {"SLURM_NTASKS=4", "SLURM_PROCID=0", NULL};
    ts_shard s;
    CHECK(resolve(NULL, 0, batch, &s) == 0 && s.count == 1 && !s.found,
          "a batch script took shard %d/%d (%s)", s.index, s.count, s.how);
    /* srun -n 1 inside an array job: the array's shard */
    static const char *const one[] = {"SLURM_STEP_NUM_TASKS=1", "SLURM_PROCID=0",
                                      "SLURM_ARRAY_TASK_ID=2", "SLURM_ARRAY_TASK_COUNT=4",
                                      "SLURM_ARRAY_TASK_MIN=0", "SLURM_ARRAY_TASK_MAX=3", NULL};
    EXPECT(NULL, 0, one, 2, 4, "Slurm array");
    static const char *const noproc[] = {"SLURM_STEP_NUM_TASKS=3", NULL};
    EXPECT_ERR(NULL, 0, noproc, "SLURM_PROCID");
    static const char *const badproc[] = {"SLURM_STEP_NUM_TASKS=3", "SLURM_PROCID=3", NULL};
    EXPECT_ERR(NULL, 0, badproc, "SLURM_PROCID='3'");
}

static void test_array(void) {
    static const char *const a0[] = {"SLURM_ARRAY_TASK_ID=0", "SLURM_ARRAY_TASK_COUNT=4",
                                     "SLURM_ARRAY_TASK_MIN=0", "SLURM_ARRAY_TASK_MAX=3",
                                     "SLURM_ARRAY_TASK_STEP=1", NULL};
    EXPECT(NULL, 0, a0, 0, 4, "SLURM_ARRAY_TASK_ID=0");
    /* --array=1-8: task 8 is shard 7 of 8 */
    static const char *const a1[] = {"SLURM_ARRAY_TASK_ID=8", "SLURM_ARRAY_TASK_COUNT=8",
                                     "SLURM_ARRAY_TASK_MIN=1", "SLURM_ARRAY_TASK_MAX=8", NULL};
    EXPECT(NULL, 0, a1, 7, 8, "SLURM_ARRAY_TASK_MIN=1");
    static const char *const stepped[] = {"SLURM_ARRAY_TASK_ID=4", "SLURM_ARRAY_TASK_COUNT=4",
                                          "SLURM_ARRAY_TASK_MIN=0", "SLURM_ARRAY_TASK_MAX=12",
                                          "SLURM_ARRAY_TASK_STEP=4", NULL};
    EXPECT_ERR(NULL, 0, stepped, "not a contiguous range");
    /* --array=0,3,7 (a list: no step variable, but MAX - MIN + 1 != COUNT) */
    static const char *const list[] = {"SLURM_ARRAY_TASK_ID=3", "SLURM_ARRAY_TASK_COUNT=3",
                                       "SLURM_ARRAY_TASK_MIN=0", "SLURM_ARRAY_TASK_MAX=7", NULL};
    EXPECT_ERR(NULL, 0, list, "not a contiguous range");
    static const char *const partial[] = {"SLURM_ARRAY_TASK_ID=3", NULL};
    EXPECT_ERR(NULL, 0, partial, "SLURM_ARRAY_TASK_COUNT");
    static const char *const junk[] = {"SLURM_ARRAY_TASK_ID=3", "SLURM_ARRAY_TASK_COUNT=4e0",
                                       "SLURM_ARRAY_TASK_MIN=0", "SLURM_ARRAY_TASK_MAX=3", NULL};
    EXPECT_ERR(NULL, 0, junk, "SLURM_ARRAY_TASK_COUNT='4e0'");
    /* the array wins over Kubernetes */
    static const char *const both[] = {"SLURM_ARRAY_TASK_ID=1", "SLURM_ARRAY_TASK_COUNT=2",
                                       "SLURM_ARRAY_TASK_MIN=0", "SLURM_ARRAY_TASK_MAX=1",
                                       "JOB_COMPLETION_INDEX=0", NULL};
    EXPECT(NULL, 0, both, 1, 2, "Slurm array");
}

static void test_kubernetes(void) {
    static const char *const k[] = {"JOB_COMPLETION_INDEX=4", NULL};
    EXPECT(NULL, 5, k, 4, 5, "JOB_COMPLETION_INDEX=4");
    EXPECT_ERR(NULL, 0, k, "--shard-count");
    EXPECT_ERR(NULL, 4, k, "JOB_COMPLETION_INDEX='4'");
    static const char *const none[] = {NULL};
    EXPECT_ERR(NULL, 4, none, "needs JOB_COMPLETION_INDEX");
}

/* Every image in exactly one shard, for several counts. */
static void test_partition(void) {
    for (int n = 1; n <= 7; n++) {
        int hits[50] = {0};
        for (int s = 0; s < n; s++) {
            ts_shard sh = {.index = s, .count = n, .found = 1};
            for (int i = 0; i < 50; i++) hits[i] += ts_shard_owns(&sh, i);
        }
        for (int i = 0; i < 50; i++) CHECK(hits[i] == 1, "n=%d: image %d in %d shards", n, i, hits[i]);
    }
}

static void test_expand(void) {
    ts_shard s = {.index = 12, .count = 16, .found = 1};
    char out[64];
    CHECK(ts_shard_expand("out/m-{shard}.json", &s, out, sizeof out) == 0 &&
              !strcmp(out, "out/m-12.json"), "expand: %s", out);
    CHECK(ts_shard_expand("{shard}/{shard}", &s, out, sizeof out) == 0 && !strcmp(out, "12/12"),
          "expand twice: %s", out);
    CHECK(ts_shard_expand("plain", &s, out, sizeof out) == 0 && !strcmp(out, "plain"), "plain");
    CHECK(ts_shard_expand("a-very-long-name-{shard}", &s, out, 10) == TINYSAM_E_ARG,
          "overflow not refused");
}

int main(void) {
    RUN(test_flag);
    RUN(test_mpi);
    RUN(test_srun);
    RUN(test_array);
    RUN(test_kubernetes);
    RUN(test_partition);
    RUN(test_expand);
    return test_summary();
}
