# slurm_local.sh - a single-node Slurm cluster on 127.0.0.1 for the tests (sourced, POSIX sh).
#   slurm_start DIR   starts munged, slurmctld and slurmd with their state in DIR; 0 when the
#                     node is idle, non-zero (and everything stopped) otherwise
#   slurm_stop        stops what slurm_start started and removes DIR
# The caller sets `trap slurm_stop EXIT` (and INT/TERM) so the daemons never outlive it.
# Configuration and order: ../shared/notes/SLURM_LOCAL.md.

SLURM_T=; SLURM_PIDS=
slurm_available() {
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 &&
        command -v munged >/dev/null 2>&1 && command -v sbatch >/dev/null 2>&1 &&
        [ "$(id -u)" = 0 ] && id munge >/dev/null 2>&1
}

slurm_wait() { # slurm_wait SECONDS CMD...: polls CMD every 0.1 s until it succeeds
    _n=$(($1 * 10)); shift
    while [ "$_n" -gt 0 ]; do "$@" && return 0; sleep 0.1; _n=$((_n - 1)); done
    return 1
}

slurm_start() {
    SLURM_T=$1
    mkdir -p "$SLURM_T/state" "$SLURM_T/spool" "$SLURM_T/munge" || return 1
    chmod 755 "$SLURM_T" "$SLURM_T/munge"; chown munge:munge "$SLURM_T/munge"
    export SLURM_CONF="$SLURM_T/slurm.conf"
    cat > "$SLURM_CONF" <<CONF
ClusterName=ci
SlurmctldHost=localhost
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$SLURM_T/munge/munge.socket.2
StateSaveLocation=$SLURM_T/state
SlurmdSpoolDir=$SLURM_T/spool
SlurmctldPidFile=$SLURM_T/slurmctld.pid
SlurmdPidFile=$SLURM_T/slurmd.pid
SlurmctldLogFile=$SLURM_T/slurmctld.log
SlurmdLogFile=$SLURM_T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=pmix
MailProg=/bin/true
ReturnToService=2
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
NodeName=localhost CPUs=4 RealMemory=1000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
CONF
    setpriv --reuid=munge --regid=munge --clear-groups /usr/sbin/munged -F \
        --socket="$SLURM_T/munge/munge.socket.2" --pid-file="$SLURM_T/munge/munged.pid" \
        --log-file="$SLURM_T/munge/munged.log" --seed-file="$SLURM_T/munge/seed" >/dev/null 2>&1 &
    SLURM_PIDS="$!"
    if ! slurm_wait 10 test -S "$SLURM_T/munge/munge.socket.2"; then
        echo "slurm_local: munged did not start" >&2; slurm_stop; return 1
    fi
    slurmctld -D -f "$SLURM_CONF" >/dev/null 2>&1 &
    SLURM_PIDS="$! $SLURM_PIDS"
    slurmd -D -N localhost -f "$SLURM_CONF" >/dev/null 2>&1 &
    SLURM_PIDS="$! $SLURM_PIDS"
    if ! slurm_wait 30 sh -c 'timeout 5 sinfo -h -N -o %T 2>/dev/null | grep -qx idle'; then
        echo "slurm_local: the node did not become idle" >&2
        tail -n 5 "$SLURM_T/slurmctld.log" "$SLURM_T/slurmd.log" >&2 2>/dev/null
        slurm_stop; return 1
    fi
    return 0
}

# Waits (deadline in seconds) until no job is queued or running.
slurm_wait_idle() {
    slurm_wait "$1" sh -c '[ -z "$(timeout 5 squeue -h 2>/dev/null)" ] && timeout 5 squeue -h >/dev/null 2>&1'
}

slurm_stop() {
    [ -n "$SLURM_PIDS" ] || return 0
    timeout 5 scancel --quiet --user=root >/dev/null 2>&1
    # slurmd and slurmctld first, munged last (by the remembered PIDs, newest first)
    for _p in $SLURM_PIDS; do
        kill "$_p" 2>/dev/null
        _k=50; while kill -0 "$_p" 2>/dev/null && [ $_k -gt 0 ]; do sleep 0.1; _k=$((_k - 1)); done
        kill -9 "$_p" 2>/dev/null; wait "$_p" 2>/dev/null
    done
    SLURM_PIDS=
    [ -n "$SLURM_T" ] && rm -rf "$SLURM_T"
    SLURM_T=
}
