/* shard.h - which part of a dataset this process takes, from the launcher it runs under.
 *
 * A dataset job (everything, embed or eval over a folder) splits its sorted image list into
 * N shards: image i belongs to shard i mod N. The shard comes from `--shard I/N`, or from the
 * variables the launcher sets (no messages between processes, no coordinator): Open MPI's
 * and MPICH's `mpirun`, Slurm's `srun -n N`, Slurm array jobs, Kubernetes Indexed Jobs.
 * Precedence, first found wins: --shard, MPI, srun, array, Kubernetes (an `mpirun` inside an
 * `sbatch` job also inherits SLURM_*; a job step inherits the array's variables). */
#ifndef TS_DIST_SHARD_H
#define TS_DIST_SHARD_H

#define TS_SHARD_MAX_COUNT 1000000

typedef struct {
    int index, count; /* 0 <= index < count */
    int found;        /* 0: no --shard and no launcher variable (the whole dataset) */
    char how[320];    /* where it came from, for the stderr line */
} ts_shard;

/* getenv, or a stub in tests. */
typedef const char *(*ts_getenv_fn)(const char *name);

/* Parses "I/N" (0 <= I < N <= TS_SHARD_MAX_COUNT). */
int ts_shard_parse(const char *s, int *index, int *count);

/* shard_arg: the --shard value or NULL; shard_count: --shard-count (Kubernetes Indexed Jobs
 * export the index but not the count) or 0; env: getenv, or NULL for getenv. Malformed or
 * inconsistent variables are errors naming them, never a silent whole-dataset run. */
int ts_shard_resolve(const char *shard_arg, int shard_count, ts_getenv_fn env, ts_shard *out);

static inline int ts_shard_owns(const ts_shard *s, long long i) {
    return s->count <= 1 || i % s->count == s->index;
}

/* Copies pattern to out, replacing each "{shard}" by the shard index (so that the tasks of
 * one srun or Indexed Job, which share a command line, write different files). */
int ts_shard_expand(const char *pattern, const ts_shard *s, char *out, int cap);

#endif
