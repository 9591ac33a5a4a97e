/* comm.h - the few collective operations the data-parallel trainer needs, behind one small
 * interface: comm_serial.c (the default build: one process, no MPI) and comm_mpi.c (`make
 * MPI=1`: standard MPI-3 calls only, so Open MPI and MPICH both work).
 *
 * The gradient combine is the one that matters for the results. B = R x L images per step,
 * rank r runs the slots r*L .. r*L+L-1 and holds one gradient buffer of n floats per slot.
 * Every rank must end with the same sum, and that sum must not depend on R or on the MPI
 * library's reduction algorithm (MPI_Allreduce's order of additions is unspecified). So the
 * sum is defined as the serial one over the slots in order,
 *
 *     out[i] = 0; for (s = 0; s < B; s++) out[i] += g_s[i];     (float, ts_comm_sum_slots)
 *
 * and computed that way: the buffer is cut into R chunks, rank d owns chunk d; each rank sends
 * every slot's piece of chunk d to rank d (MPI_Alltoallv, one call per local slot), rank d adds
 * its chunk in slot order, and MPI_Allgatherv hands the summed chunks to every rank. A rank
 * sends about (L + 1)(R - 1)/R of one gradient buffer per step (L = 1: the 2(R-1)/R of a ring
 * all-reduce).
 *
 * Only the main thread calls these (worker threads compute between them). Every function
 * returns 0 or an error code with the message set (ts_error). */
#ifndef TS_DIST_COMM_H
#define TS_DIST_COMM_H

#include <stddef.h>
#include <stdint.h>

typedef struct ts_comm ts_comm;

/* Starts the communication layer (MPI_Init_thread under MPI). Call once per process. */
int ts_comm_init(int *argc, char ***argv, ts_comm **out);
/* Ends it (MPI_Finalize) and frees c; NULL is a no-op. */
void ts_comm_finalize(ts_comm *c);
int ts_comm_rank(const ts_comm *c);
int ts_comm_size(const ts_comm *c);
/* "serial", or the MPI library's own version line (first line only). */
const char *ts_comm_library(const ts_comm *c);
/* How this build communicates, known without starting anything: "none" (the default build)
 * or "mpi" (`make MPI=1`). */
const char *ts_comm_kind(void);

int ts_comm_barrier(ts_comm *c);
/* Every rank's `bytes` bytes at mine, gathered on every rank into all (size x bytes, rank
 * order). The start-up agreement and the per-step status exchange are built on it. */
int ts_comm_allgather(ts_comm *c, const void *mine, size_t bytes, void *all);

/* Allocates the combine's receive buffer for local_slots slots of n floats (outside the
 * training loop, so that a step allocates nothing). */
int ts_comm_combine_reserve(ts_comm *c, int local_slots, size_t n);
/* The slot-order sum described above: slots holds this rank's local_slots buffers of n floats
 * one after the other; every rank gets the sum of all size x local_slots slots in out (n
 * floats, not overlapping slots). bytes_sent (may be NULL): what this rank sent. */
int ts_comm_combine(ts_comm *c, const float *slots, int local_slots, size_t n, float *out,
                    uint64_t *bytes_sent);

/* The rule the combine computes: dst[i] = 0, then dst[i] += src[s * stride + i] for
 * s = 0 .. nslots-1. */
void ts_comm_sum_slots(const float *src, int nslots, size_t stride, size_t len, float *dst);

/* ---- agreement (comm_common.c, on ts_comm_allgather) ---- */

/* Every rank passes its own result of a phase (0, or an error code with the message set):
 * all get 0 when all succeeded, else an error on every rank, so that no rank goes on into a
 * collective the others never reach. A failed rank keeps its own message; the others get
 * "rank K: <K's message>" of the first failed rank K. */
int ts_comm_agree_rc(ts_comm *c, int rc);
/* Every rank's value must equal rank 0's: else TINYSAM_E_ARG on every rank, "<what>: rank K
 * differs from rank 0" (K the first such rank; what says what the value stands for). */
int ts_comm_agree_u64(ts_comm *c, uint64_t v, const char *what);

/* Ends every rank of the job at once (MPI_Abort), for failures after which the ranks can no
 * longer meet in the same collective; exits the process in the serial build. */
void ts_comm_abort(ts_comm *c, int code);

#endif
