/* mpi_job.h - starting `mpirun -np R ...` from a test with a deadline (a hung job fails the
 * test instead of hanging it), stdout + stderr to a file. The launcher is $TINYSAM_MPIRUN
 * (default "mpirun"); Open MPI's settings for CI (root, more ranks than cores, no binding) are
 * set as environment variables, which other MPI libraries ignore. */
#ifndef TS_TESTS_MPI_JOB_H
#define TS_TESTS_MPI_JOB_H

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void mpi_job_env(void) {
    setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
    setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
    setenv("OMPI_MCA_rmaps_base_oversubscribe", "1", 0);
    setenv("OMPI_MCA_hwloc_base_binding_policy", "none", 0);
    setenv("OMPI_MCA_btl_vader_single_copy_mechanism", "none", 0); /* containers: no CMA */
    /* components stay loaded, so that LeakSanitizer can name their frames (SAN=1) */
    setenv("OMPI_MCA_mca_base_component_disable_dlclose", "1", 0);
}

static double mpi_job_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Starts `sh -c "exec LAUNCHER ARGS"` in dir (NULL: here) with output to log; returns the
 * launcher's pid or -1. */
static pid_t mpi_job_start(const char *args, const char *dir, const char *log) {
    static char cmd[16384];
    const char *l = getenv("TINYSAM_MPIRUN");
    mpi_job_env();
    snprintf(cmd, sizeof cmd, "exec %s %s >'%s' 2>&1", l && *l ? l : "mpirun", args, log);
    pid_t p = fork();
    if (p == 0) {
        if (dir && chdir(dir)) _exit(127);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return p;
}

/* Waits for the job until deadline seconds from start: the exit status (128 + signal when
 * killed), or -2 after killing a job that ran past the deadline. */
static int mpi_job_wait(pid_t p, double start, double deadline) {
    int st = 0;
    for (;;) {
        pid_t r = waitpid(p, &st, WNOHANG);
        if (r == p) return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0 && errno != EINTR) return -1;
        if (mpi_job_now() - start > deadline) {
            kill(p, SIGTERM);
            sleep(3);
            kill(p, SIGKILL);
            waitpid(p, &st, 0);
            return -2;
        }
        usleep(20000);
    }
}

/* Runs a job to completion (or the deadline). */
static int mpi_job_run(const char *args, const char *dir, const char *log, double deadline) {
    double t0 = mpi_job_now();
    pid_t p = mpi_job_start(args, dir, log);
    return p < 0 ? -1 : mpi_job_wait(p, t0, deadline);
}

#endif
