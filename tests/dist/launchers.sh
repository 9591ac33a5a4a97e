#!/bin/sh
# launchers.sh - runs one dataset job under the real launchers, for test_launchers:
#   sh tests/dist/launchers.sh BIN OUT 'EVERYTHING_ARGS' ['EMBED_ARGS']
# BIN: the tinysam binary (absolute path); EVERYTHING_ARGS: `everything --images ...` without
# --out-dir; EMBED_ARGS: the same for `embed` (optional). Writes
#   OUT/array     sbatch --array=0-3 of everything        OUT/srun_embed  srun -n 2 of embed
#   OUT/srun      srun -n 2 of everything (no EMBED_ARGS)  OUT/mpi, OUT/mpi_embed: mpirun -np 3
# each with _manifest/<shard>.json and logs in OUT/logs. A single-node Slurm cluster on
# 127.0.0.1 runs for the Slurm part and is stopped on exit, whatever happens. Exit status 0
# when every launch succeeded; the caller compares the outputs.
set -u
BIN=$1; OUT=$2; EV=$3; EM=${4:-}
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/slurm_local.sh"
mkdir -p "$OUT/logs"
fail=0
step() { echo "launchers: $*"; }

if ! slurm_available; then echo "launchers: no Slurm (slurmctld, slurmd, munged, sbatch) or not root"; exit 3; fi
if ! command -v mpirun >/dev/null 2>&1; then echo "launchers: no mpirun"; exit 3; fi

T=$(mktemp -d /tmp/tinysam_slurm.XXXXXX)
trap 'slurm_stop' EXIT
trap 'slurm_stop; exit 130' INT TERM
slurm_start "$T" || { echo "launchers: the Slurm cluster did not start"; exit 2; }
step "Slurm cluster up in $T"

# sbatch --array=0-3: each array task takes shard SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of 4
cat > "$T/array.sh" <<JOB
#!/bin/sh
exec $BIN $EV --threads 1 --out-dir $OUT/array --manifest $OUT/array/_manifest/{shard}.json
JOB
( cd "$T" && timeout 20 sbatch --array=0-3 -n 1 -o "$OUT/logs/array-%a.out" \
      -e "$OUT/logs/array-%a.err" "$T/array.sh" ) || fail=1
# srun -n 2 (a job step of two tasks): shard SLURM_PROCID of SLURM_STEP_NUM_TASKS
if [ -n "$EM" ]; then
    step "srun -n 2 embed"
    ( cd "$T" && timeout 300 srun -n 2 -o "$OUT/logs/srun-%t.out" -e "$OUT/logs/srun-%t.err" \
          $BIN $EM --threads 1 --out-dir "$OUT/srun_embed" \
          --manifest "$OUT/srun_embed/_manifest/{shard}.json" ) || { step "srun failed"; fail=1; }
else
    step "srun -n 2 everything"
    ( cd "$T" && timeout 300 srun -n 2 -o "$OUT/logs/srun-%t.out" -e "$OUT/logs/srun-%t.err" \
          $BIN $EV --threads 1 --out-dir "$OUT/srun" \
          --manifest "$OUT/srun/_manifest/{shard}.json" ) || { step "srun failed"; fail=1; }
fi
step "waiting for the array job"
slurm_wait_idle 300 || { step "the array job did not finish in 300 s"; fail=1; }
slurm_stop
step "Slurm cluster stopped"

# mpirun -np 3: shard OMPI_COMM_WORLD_RANK of OMPI_COMM_WORLD_SIZE (no MPI calls needed)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
step "mpirun -np 3 everything"
timeout 300 mpirun --oversubscribe --bind-to none -np 3 \
    sh -c "exec $BIN $EV --threads 1 --out-dir $OUT/mpi --manifest $OUT/mpi/_manifest/{shard}.json 2>$OUT/logs/mpi-\$OMPI_COMM_WORLD_RANK.err" \
    > "$OUT/logs/mpi.out" || { step "mpirun failed"; fail=1; }
if [ -n "$EM" ]; then
    step "mpirun -np 3 embed"
    timeout 300 mpirun --oversubscribe --bind-to none -np 3 \
        $BIN $EM --threads 1 --out-dir "$OUT/mpi_embed" \
        --manifest "$OUT/mpi_embed/_manifest/{shard}.json" \
        > "$OUT/logs/mpi_embed.out" 2> "$OUT/logs/mpi_embed.err" || { step "mpirun failed"; fail=1; }
fi
exit $fail
