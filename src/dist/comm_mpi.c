/* comm_mpi.c - the communication layer over MPI (`make MPI=1`): standard MPI-3 only (no
 * implementation-specific calls or environment variables), so Open MPI and MPICH both work.
 * The gradient combine never uses MPI's reductions: see comm.h for why and how. */
#include "dist/comm.h"

#include "core.h"
#include "tinysam.h"

#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct ts_comm {
    int rank, size;
    char library[MPI_MAX_LIBRARY_VERSION_STRING];
    /* combine: the counts and displacements of the chunks (size each), the receive buffer */
    int *cnt, *dsp, *rcnt, *rdsp;
    float *recv;
    size_t recv_cap;
};

static int mpi_fail(int err, const char *what) {
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "code %d", err);
    return ts_error(TINYSAM_E_IO, "MPI: %s failed: %s", what, msg);
}

int ts_comm_init(int *argc, char ***argv, ts_comm **out) {
    *out = NULL;
    int provided = 0, err;
    /* worker threads compute between the calls; only the main thread talks to MPI */
    if ((err = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided)) != MPI_SUCCESS)
        return ts_error(TINYSAM_E_IO, "MPI_Init_thread failed (%d)", err);
    ts_comm *c = calloc(1, sizeof *c);
    if (!c) {
        MPI_Finalize();
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    /* failures come back as codes, so that a rank prints its error (a dead rank still ends
     * the job: mpirun / srun tear it down) */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &c->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &c->size);
    char v[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    if (MPI_Get_library_version(v, &len) != MPI_SUCCESS) v[0] = 0;
    v[strcspn(v, "\n,")] = 0; /* the first line (Open MPI: "Open MPI v4.1.4") */
    for (char *q = v; *q; q++)
        if (*q == '\t') *q = ' '; /* MPICH: "MPICH Version:<tab>4.0.2" */
    snprintf(c->library, sizeof c->library, "%s", v[0] ? v : "MPI");
    const size_t R = (size_t)c->size;
    c->cnt = calloc(R, sizeof(int)), c->dsp = calloc(R, sizeof(int));
    c->rcnt = calloc(R, sizeof(int)), c->rdsp = calloc(R, sizeof(int));
    if (!c->cnt || !c->dsp || !c->rcnt || !c->rdsp) {
        ts_comm_finalize(c);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    *out = c;
    return 0;
}

void ts_comm_finalize(ts_comm *c) {
    if (!c) return;
    free(c->cnt), free(c->dsp), free(c->rcnt), free(c->rdsp), free(c->recv);
    free(c);
    MPI_Finalize();
}

int ts_comm_rank(const ts_comm *c) { return c->rank; }
int ts_comm_size(const ts_comm *c) { return c->size; }
const char *ts_comm_library(const ts_comm *c) { return c->library; }
const char *ts_comm_kind(void) { return "mpi"; }

int ts_comm_barrier(ts_comm *c) {
    (void)c;
    int err = MPI_Barrier(MPI_COMM_WORLD);
    return err == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Barrier");
}

int ts_comm_allgather(ts_comm *c, const void *mine, size_t bytes, void *all) {
    if (bytes > INT_MAX) return ts_error(TINYSAM_E_LIMIT, "allgather of %zu bytes", bytes);
    int err = MPI_Allgather(mine, (int)bytes, MPI_BYTE, all, (int)bytes, MPI_BYTE,
                            MPI_COMM_WORLD);
    (void)c;
    return err == MPI_SUCCESS ? 0 : mpi_fail(err, "MPI_Allgather");
}

/* Chunk d of n floats over R ranks: [n*d/R, n*(d+1)/R) (any n, also n < R). */
static size_t chunk_lo(size_t n, int R, int d) { return n * (size_t)d / (size_t)R; }

int ts_comm_combine_reserve(ts_comm *c, int local_slots, size_t n) {
    const int R = c->size;
    if (local_slots < 1 || (size_t)local_slots * (size_t)R > INT_MAX / 2)
        return ts_error(TINYSAM_E_ARG, "combine: %d slots per rank", local_slots);
    /* MPI counts and displacements are ints (in floats) */
    if (n > INT_MAX) return ts_error(TINYSAM_E_LIMIT, "combine: %zu floats (MPI int counts)", n);
    const size_t mine = chunk_lo(n, R, c->rank + 1) - chunk_lo(n, R, c->rank);
    const size_t need = mine * (size_t)local_slots * (size_t)R;
    if (need > INT_MAX) return ts_error(TINYSAM_E_LIMIT, "combine: chunk of %zu floats", need);
    if (need > c->recv_cap || !c->recv) {
        float *p = realloc(c->recv, (need ? need : 1) * sizeof(float));
        if (!p) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        c->recv = p;
        c->recv_cap = need;
    }
    return 0;
}

int ts_comm_combine(ts_comm *c, const float *slots, int local_slots, size_t n, float *out,
                    uint64_t *bytes_sent) {
    const int R = c->size, me = c->rank, L = local_slots, B = R * L;
    int rc = ts_comm_combine_reserve(c, L, n); /* no-op once reserved */
    if (rc) return rc;
    const size_t lo = chunk_lo(n, R, me), mine = chunk_lo(n, R, me + 1) - lo;
    static const float none[1];
    for (int d = 0; d < R; d++) {
        c->cnt[d] = (int)(chunk_lo(n, R, d + 1) - chunk_lo(n, R, d));
        c->dsp[d] = (int)chunk_lo(n, R, d);
        c->rcnt[d] = (int)mine;
    }
    /* slot j of every rank: its piece of my chunk lands at global slot s*L + j */
    for (int j = 0; j < L; j++) {
        for (int s = 0; s < R; s++) c->rdsp[s] = (int)((size_t)(s * L + j) * mine);
        const float *src = n ? slots + (size_t)j * n : none;
        int err = MPI_Alltoallv(src, c->cnt, c->dsp, MPI_FLOAT, c->recv, c->rcnt, c->rdsp,
                                MPI_FLOAT, MPI_COMM_WORLD);
        if (err != MPI_SUCCESS) return mpi_fail(err, "MPI_Alltoallv");
    }
    ts_comm_sum_slots(c->recv, B, mine, mine, out + lo);
    int err = MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, n ? out : (float *)none,
                             c->cnt, c->dsp, MPI_FLOAT, MPI_COMM_WORLD);
    if (err != MPI_SUCCESS) return mpi_fail(err, "MPI_Allgatherv");
    /* the pieces for the other ranks, and my summed chunk to each of them (a ring forwards
     * about as much: n - mine floats) */
    if (bytes_sent) *bytes_sent = 4 * ((uint64_t)L * (n - mine) + (R > 1 ? n - mine : 0));
    return 0;
}

void ts_comm_abort(ts_comm *c, int code) {
    (void)c;
    MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
    exit(code ? code : 1);
}
