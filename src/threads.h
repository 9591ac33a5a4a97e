/* threads.h - a small persistent worker pool (pthreads).
 *
 * ts_parallel_for(n, fn, ctx) calls fn(ctx, i, tid) for every i in [0, n), spread over
 * the pool's threads (tid in [0, ts_num_threads())), and returns when all calls have
 * finished. The calling thread takes part as tid 0. Calls from inside a task, or from
 * several application threads at once, run serially on the caller (always correct). */
#ifndef TS_THREADS_H
#define TS_THREADS_H

typedef void (*ts_task_fn)(void *ctx, int i, int tid);

void ts_parallel_for(int n, ts_task_fn fn, void *ctx);
int ts_num_threads(void);
/* Starts the pool's workers now (model load) rather than in the first ts_parallel_for. */
void ts_threads_start(void);

#endif
