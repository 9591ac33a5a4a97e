/* shard.c - the shard of a dataset job from --shard or the launcher's variables. */
#include "dist/shard.h"

#include "core.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A decimal integer in [lo, hi], the whole string (no sign games, no spaces). */
static int parse_int(const char *s, long lo, long hi, long *out) {
    if (!s || !*s) return -1;
    for (const char *p = (*s == '-' ? s + 1 : s); *p; p++)
        if (*p < '0' || *p > '9') return -1;
    if (*s == '-' && !s[1]) return -1;
    errno = 0;
    char *end;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi) return -1;
    *out = v;
    return 0;
}

int ts_shard_parse(const char *s, int *index, int *count) {
    const char *slash = s ? strchr(s, '/') : NULL;
    char a[32];
    long i, n;
    if (!slash || (size_t)(slash - s) >= sizeof a)
        return ts_error(TINYSAM_E_ARG, "--shard: '%s' is not I/N (e.g. 0/4)", s ? s : "");
    memcpy(a, s, (size_t)(slash - s));
    a[slash - s] = 0;
    if (parse_int(slash + 1, 1, TS_SHARD_MAX_COUNT, &n) || parse_int(a, 0, n - 1, &i))
        return ts_error(TINYSAM_E_ARG,
                        "--shard: '%s' is not I/N with 0 <= I < N <= %d (shards are 0-based)", s,
                        TS_SHARD_MAX_COUNT);
    *index = (int)i;
    *count = (int)n;
    return 0;
}

typedef struct {
    ts_getenv_fn env;
} env_ctx;

/* Reads an integer variable: 1 if set and valid, 0 if unset, an error if malformed. */
static int env_int(const env_ctx *e, const char *name, long lo, long hi, long *out, int *rc) {
    const char *v = e->env(name);
    if (!v) return 0;
    if (parse_int(v, lo, hi, out)) {
        *rc = ts_error(TINYSAM_E_ARG, "%s='%s' is not an integer in [%ld, %ld]", name, v, lo, hi);
        return 0;
    }
    return 1;
}

/* A rank/size pair of variables: both set -> 1; one of them alone is an error. */
static int env_pair(const env_ctx *e, const char *rank_var, const char *size_var, long *rank,
                    long *size, int *rc) {
    int has_r = e->env(rank_var) != NULL, has_s = e->env(size_var) != NULL;
    if (!has_r && !has_s) return 0;
    if (has_r != has_s) {
        *rc = ts_error(TINYSAM_E_ARG, "%s is set but not %s", has_r ? rank_var : size_var,
                       has_r ? size_var : rank_var);
        return 0;
    }
    if (!env_int(e, size_var, 1, TS_SHARD_MAX_COUNT, size, rc) ||
        !env_int(e, rank_var, 0, TS_SHARD_MAX_COUNT - 1, rank, rc))
        return 0;
    if (*rank >= *size) {
        *rc = ts_error(TINYSAM_E_ARG, "%s=%ld is not below %s=%ld", rank_var, *rank, size_var,
                       *size);
        return 0;
    }
    return 1;
}

static const char *real_getenv(const char *name) {
    return getenv(name);
}

int ts_shard_resolve(const char *shard_arg, int shard_count, ts_getenv_fn envf, ts_shard *out) {
    memset(out, 0, sizeof *out);
    out->count = 1;
    env_ctx e = {envf ? envf : real_getenv};
    int rc = 0;
    long r, n;
    if (shard_count < 0 || shard_count > TS_SHARD_MAX_COUNT)
        return ts_error(TINYSAM_E_ARG, "--shard-count must be in [1, %d]", TS_SHARD_MAX_COUNT);
    if (shard_arg) {
        int i, c;
        if ((rc = ts_shard_parse(shard_arg, &i, &c))) return rc;
        if (shard_count && shard_count != c)
            return ts_error(TINYSAM_E_ARG, "--shard %s disagrees with --shard-count %d",
                            shard_arg, shard_count);
        out->index = i;
        out->count = c;
        snprintf(out->how, sizeof out->how, "--shard %s", shard_arg);
    } else if (env_pair(&e, "OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", &r, &n, &rc) ||
               (!rc && env_pair(&e, "PMI_RANK", "PMI_SIZE", &r, &n, &rc))) {
        const int ompi = e.env("OMPI_COMM_WORLD_RANK") != NULL;
        out->index = (int)r;
        out->count = (int)n;
        snprintf(out->how, sizeof out->how, "mpirun: %s=%ld of %s=%ld",
                 ompi ? "OMPI_COMM_WORLD_RANK" : "PMI_RANK", r,
                 ompi ? "OMPI_COMM_WORLD_SIZE" : "PMI_SIZE", n);
    } else if (rc) {
        return rc;
    } else {
        /* srun: a job step of several tasks. SLURM_STEP_NUM_TASKS is the step's own count;
         * a batch script itself (no step) sees SLURM_NTASKS and SLURM_PROCID=0 too, which
         * must not make it take one shard of the job's task count. */
        long ntasks = 0, procid = 0;
        const char *nt_var = e.env("SLURM_STEP_NUM_TASKS") ? "SLURM_STEP_NUM_TASKS" : NULL;
        int srun = nt_var && env_int(&e, nt_var, 1, TS_SHARD_MAX_COUNT, &ntasks, &rc);
        if (rc) return rc;
        if (srun && ntasks > 1) {
            if (!env_int(&e, "SLURM_PROCID", 0, ntasks - 1, &procid, &rc))
                return rc ? rc
                          : ts_error(TINYSAM_E_ARG, "%s=%ld is set but not SLURM_PROCID",
                                     nt_var, ntasks);
            out->index = (int)procid;
            out->count = (int)ntasks;
            snprintf(out->how, sizeof out->how, "srun: SLURM_PROCID=%ld of %s=%ld", procid,
                     nt_var, ntasks);
        } else if (e.env("SLURM_ARRAY_TASK_ID")) {
            long id, cnt, mn, mx, step = 1;
            if (!env_int(&e, "SLURM_ARRAY_TASK_ID", 0, 1L << 30, &id, &rc) ||
                !env_int(&e, "SLURM_ARRAY_TASK_COUNT", 1, TS_SHARD_MAX_COUNT, &cnt, &rc) ||
                !env_int(&e, "SLURM_ARRAY_TASK_MIN", 0, 1L << 30, &mn, &rc) ||
                !env_int(&e, "SLURM_ARRAY_TASK_MAX", 0, 1L << 30, &mx, &rc))
                return rc ? rc
                          : ts_error(TINYSAM_E_ARG,
                                     "SLURM_ARRAY_TASK_ID is set but not SLURM_ARRAY_TASK_COUNT, "
                                     "_MIN and _MAX");
            if (e.env("SLURM_ARRAY_TASK_STEP") &&
                !env_int(&e, "SLURM_ARRAY_TASK_STEP", 1, 1L << 30, &step, &rc))
                return rc;
            if (step != 1 || mx - mn + 1 != cnt)
                return ts_error(TINYSAM_E_ARG,
                                "Slurm array %ld-%ld with %ld tasks (step %ld) is not a "
                                "contiguous range: use --array=A-B (no step, no list) or "
                                "pass --shard I/N",
                                mn, mx, cnt, step);
            if (id < mn || id > mx)
                return ts_error(TINYSAM_E_ARG, "SLURM_ARRAY_TASK_ID=%ld is outside %ld-%ld", id,
                                mn, mx);
            out->index = (int)(id - mn);
            out->count = (int)cnt;
            snprintf(out->how, sizeof out->how,
                     "Slurm array: SLURM_ARRAY_TASK_ID=%ld - SLURM_ARRAY_TASK_MIN=%ld of "
                     "SLURM_ARRAY_TASK_COUNT=%ld",
                     id, mn, cnt);
        } else if (e.env("JOB_COMPLETION_INDEX")) {
            long idx;
            if (!shard_count)
                return ts_error(TINYSAM_E_ARG,
                                "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but "
                                "--shard-count is not: pass the Job's completions");
            if (!env_int(&e, "JOB_COMPLETION_INDEX", 0, shard_count - 1, &idx, &rc)) return rc;
            out->index = (int)idx;
            out->count = shard_count;
            snprintf(out->how, sizeof out->how,
                     "Kubernetes Indexed Job: JOB_COMPLETION_INDEX=%ld of --shard-count %d", idx,
                     shard_count);
        } else if (shard_count) {
            return ts_error(TINYSAM_E_ARG, "--shard-count %d needs JOB_COMPLETION_INDEX (a "
                                           "Kubernetes Indexed Job); elsewhere use --shard I/N",
                            shard_count);
        } else {
            snprintf(out->how, sizeof out->how, "unsharded");
            return 0;
        }
    }
    if (shard_count && !shard_arg && out->count != shard_count)
        return ts_error(TINYSAM_E_ARG, "--shard-count %d disagrees with %s", shard_count,
                        out->how);
    out->found = 1;
    return 0;
}

int ts_shard_expand(const char *pattern, const ts_shard *s, char *out, int cap) {
    int k = 0;
    for (const char *p = pattern; *p; p++) {
        char num[16];
        const char *piece = NULL;
        if (!strncmp(p, "{shard}", 7)) {
            snprintf(num, sizeof num, "%d", s->index);
            piece = num;
            p += 6;
        }
        const char *q = piece ? piece : p;
        int len = piece ? (int)strlen(piece) : 1;
        if (k + len >= cap) return ts_error(TINYSAM_E_ARG, "path too long: %s", pattern);
        memcpy(out + k, q, (size_t)len);
        k += len;
    }
    out[k] = 0;
    return 0;
}
