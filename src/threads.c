/* threads.c - persistent worker pool behind ts_parallel_for.
 * Workers sleep on a condition variable between jobs; tasks are claimed with an
 * atomic counter so uneven task costs balance themselves. Between jobs, workers (and the
 * caller waiting for them) first spin for a few tens of microseconds: a forward pass issues
 * jobs back to back (the decoder about 40 per prompt), and a futex sleep and wake-up per job
 * costs more than the short job itself, above all in a VM where waking an idle vCPU is
 * slow. */
#include "threads.h"
#include "tinysam.h"

#include <pthread.h>
#include <stdatomic.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif
#include <stdlib.h>
#include <unistd.h>

#define TS_MAX_THREADS 256
#define SPIN_ITERS 20000 /* pause instructions before sleeping: roughly 50-200 us */

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake, done;
    pthread_t th[TS_MAX_THREADS];
    int n_threads;   /* including the caller */
    int n_started;   /* worker threads alive */
    atomic_long generation; /* bumped per job (under mu) */
    atomic_int n_busy;      /* workers still in the current job (changed under mu) */
    ts_task_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next;
    atomic_flag in_use; /* a job is running: nested/concurrent calls go serial */
    int requested;      /* tinysam_set_num_threads value, 0 = auto */
} g_pool = {.mu = PTHREAD_MUTEX_INITIALIZER,
            .wake = PTHREAD_COND_INITIALIZER,
            .done = PTHREAD_COND_INITIALIZER,
            .in_use = ATOMIC_FLAG_INIT};

static void run_tasks(int tid) {
    for (;;) {
        int i = atomic_fetch_add(&g_pool.next, 1);
        if (i >= g_pool.n_tasks) break;
        g_pool.fn(g_pool.ctx, i, tid);
    }
}

static void *worker_main(void *arg) {
    int tid = (int)(long)arg;
    long seen = 0;
    pthread_mutex_lock(&g_pool.mu);
    for (;;) {
        if (atomic_load(&g_pool.generation) == seen) { /* spin a little before sleeping */
            pthread_mutex_unlock(&g_pool.mu);
            for (int s = 0; s < SPIN_ITERS && atomic_load(&g_pool.generation) == seen; s++)
                cpu_relax();
            pthread_mutex_lock(&g_pool.mu);
        }
        while (atomic_load(&g_pool.generation) == seen) pthread_cond_wait(&g_pool.wake, &g_pool.mu);
        seen = atomic_load(&g_pool.generation);
        if (tid >= g_pool.n_threads) continue; /* pool shrank: sit this job out */
        pthread_mutex_unlock(&g_pool.mu);
        run_tasks(tid);
        pthread_mutex_lock(&g_pool.mu);
        if (atomic_fetch_sub(&g_pool.n_busy, 1) == 1) pthread_cond_signal(&g_pool.done);
    }
    return NULL;
}

static int default_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    if (n < 1) n = 1;
    if (n > TS_MAX_THREADS) n = TS_MAX_THREADS;
    return (int)n;
}

void tinysam_set_num_threads(int n) {
    if (n > TS_MAX_THREADS) n = TS_MAX_THREADS;
    pthread_mutex_lock(&g_pool.mu);
    g_pool.requested = n > 0 ? n : 0;
    g_pool.n_threads = 0; /* recomputed on next use */
    pthread_mutex_unlock(&g_pool.mu);
}

int tinysam_get_num_threads(void) {
    return ts_num_threads();
}

int ts_num_threads(void) {
    pthread_mutex_lock(&g_pool.mu);
    if (g_pool.n_threads == 0) g_pool.n_threads = g_pool.requested ? g_pool.requested : default_threads();
    int n = g_pool.n_threads;
    pthread_mutex_unlock(&g_pool.mu);
    return n;
}

/* Under mu: workers up to nt - 1 alive. */
static void start_workers(int nt) {
    while (g_pool.n_started < nt - 1) {
        int tid = g_pool.n_started + 1;
        if (pthread_create(&g_pool.th[tid], NULL, worker_main, (void *)(long)tid) != 0) break;
        pthread_detach(g_pool.th[tid]);
        g_pool.n_started++;
    }
}

void ts_threads_start(void) {
    int nt = ts_num_threads();
    pthread_mutex_lock(&g_pool.mu);
    start_workers(nt);
    pthread_mutex_unlock(&g_pool.mu);
}

void ts_parallel_for(int n, ts_task_fn fn, void *ctx) {
    if (n <= 0) return;
    int nt = ts_num_threads();
    if (nt <= 1 || n == 1 || atomic_flag_test_and_set(&g_pool.in_use)) {
        for (int i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    pthread_mutex_lock(&g_pool.mu);
    start_workers(nt);
    int workers = (nt - 1 < g_pool.n_started ? nt - 1 : g_pool.n_started);
    g_pool.fn = fn;
    g_pool.ctx = ctx;
    g_pool.n_tasks = n;
    atomic_store(&g_pool.next, 0);
    atomic_store(&g_pool.n_busy, workers);
    /* workers with tid >= n_threads skip; n_threads caps them */
    g_pool.n_threads = workers + 1;
    atomic_fetch_add(&g_pool.generation, 1);
    pthread_cond_broadcast(&g_pool.wake);
    pthread_mutex_unlock(&g_pool.mu);

    run_tasks(0);

    for (int s = 0; s < SPIN_ITERS && atomic_load(&g_pool.n_busy) > 0; s++) cpu_relax();
    pthread_mutex_lock(&g_pool.mu);
    while (atomic_load(&g_pool.n_busy) > 0) pthread_cond_wait(&g_pool.done, &g_pool.mu);
    g_pool.n_threads = nt;
    pthread_mutex_unlock(&g_pool.mu);
    atomic_flag_clear(&g_pool.in_use);
}
