#!/bin/sh
# gen_manpage.sh TINYSAM > tinysam.1
# The man page, made from the built binary's own --help texts, so that it cannot drift from
# them: one section per command, the help text as written (roff-escaped, no fill).
# The date is SOURCE_DATE_EPOCH's (reproducible builds, set by dpkg-buildpackage), else today.
set -eu
bin=$1
version=$("$bin" --version | sed -n '1s/^tinysam //p')
if [ -n "${SOURCE_DATE_EPOCH:-}" ]; then
    date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)
else
    date=$(date -u +%Y-%m-%d)
fi
commands="segment everything embed convert info quantize eval serve distill"

# Backslashes first, then '-' as a real minus (options), then a zero-width escape before a
# leading '.' or "'" (they would start a request).
esc() { sed -e 's/\\/\\e/g' -e 's/-/\\-/g' -e "s/^\\([.']\\)/\\\\\\&\\1/"; }

cat <<EOF
.TH TINYSAM 1 "$date" "tinysam $version" "User Commands"
.SH NAME
tinysam \\- Segment Anything (TinySAM, SAM, MobileSAM) on the CPU
.SH SYNOPSIS
.B tinysam
.I COMMAND
.RI [ options ]
.br
.B tinysam
.BR \\-\\-help " | " \\-\\-version
.SH DESCRIPTION
.B tinysam
runs the Segment Anything family of models (TinySAM, SAM ViT\\-B/L/H, MobileSAM) from their
official PyTorch checkpoints (the pickle is read as data, never executed) or from safetensors:
prompted segmentation with points, boxes and mask refinement, segment\\-everything with COCO
RLE output, int8 (W8A8) models, an interactive browser page, dataset jobs over Slurm,
Kubernetes or MPI, and the TinySAM distillation trainer.
.PP
Each command prints its results as JSON on standard output, progress on standard error, and
on failure one line on standard error and a non\\-zero exit status.
.PP
.B tinysam \\-\\-version
prints the version and what the build can do on this CPU (kernel paths, int8, MPI).
.SH COMMANDS
EOF
for c in $commands; do
    printf '.SS %s\n.nf\n' "$c"
    "$bin" "$c" --help 2>&1 | esc
    printf '.fi\n'
done
cat <<'EOF'
.SH ENVIRONMENT
.TP
.B TINYSAM_ISA
Forces a kernel path:
.BR avx512 ", " avx2 " or " scalar
(portable C). By default the fastest path the CPU supports is chosen at run time.
.TP
.BR OMPI_COMM_WORLD_RANK ", " PMI_RANK ", " SLURM_PROCID ", " SLURM_ARRAY_TASK_ID ", " JOB_COMPLETION_INDEX
Folder jobs
.RB ( "everything \-\-images" ", " "embed \-\-images" ", " eval )
take their shard from the launcher
.RB ( mpirun ", " srun ", a Slurm job array, a Kubernetes Indexed Job) unless"
.B \-\-shard
is given.
.SH EXIT STATUS
0 on success; 1 when a folder job finished with failed images, or on an error; 2 for a usage
error; 75 when a folder job was interrupted by SIGTERM, SIGINT or SIGUSR1 after finishing its
current image (rerun it to resume).
.SH EXAMPLES
.nf
tinysam segment \-\-model tinysam_42.3.pth \-\-image photo.jpg \-\-point 380,300
tinysam everything \-\-model tinysam_42.3.pth \-\-image photo.jpg \-\-out masks.json
tinysam convert tinysam_42.3.pth tinysam.safetensors
tinysam serve \-\-model tinysam.safetensors \-\-port 8080
.fi
.SH SEE ALSO
The library's header
.IR tinysam.h ,
its pkg\-config module
.BR tinysam ,
and the project's README.
EOF
