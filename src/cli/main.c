/* main.c - the tinysam command: dispatches to one function per subcommand. */
#include "cli/commands.h"
#include "dist/comm.h"
#include "nn/gemm_i8.h"
#include "nn/nn.h"
#include "tinysam.h"

#include <microhttpd.h>

#include <stdio.h>
#include <string.h>

static const char *usage =
    "tinysam " TINYSAM_VERSION " - Segment Anything (TinySAM) on the CPU\n"
    "\n"
    "usage: tinysam COMMAND [options]      (tinysam COMMAND --help for details)\n"
    "\n"
    "commands:\n"
    "  segment     masks for point / box / mask prompts\n"
    "  everything  segment everything (hierarchical or grid), COCO RLE output\n"
    "  embed       write the image embedding (1x256x64x64 float32 .npy)\n"
    "  convert     convert a PyTorch .pth checkpoint to .safetensors\n"
    "  info        show a checkpoint's model family, tensors and parameters\n"
    "  quantize    W8A8 (int8) model from a float one, calibrated on images\n"
    "  eval        mean IoU of box / point prompt masks against SA-1B ground truth\n"
    "  distill     train a TinySAM student from a SAM teacher (full-stage distillation)\n"
    "  serve       interactive segmentation page and JSON API over HTTP (localhost)\n"
    "\n"
    "Checkpoints: the official .pth files (read safely, pickle never executed) or the\n"
    "safetensors files written by `tinysam convert`. Exit status 0 on success; on failure a\n"
    "one-line message on stderr and a non-zero status.\n";

/* The version, then what this build can do on this CPU (bug reports quote it). */
static void print_version(void) {
    printf("tinysam %s\n", TINYSAM_VERSION);
    printf("kernels: avx512 (%s), avx2 (%s), scalar; running: %s\n",
           ts_nn_isa_available("avx512") ? "available" : "not on this CPU",
           ts_nn_isa_available("avx2") ? "available" : "not on this CPU", ts_nn_isa_name());
    printf("int8 (W8A8): %s\n", ts_gemm_i8_isa_name());
    printf("mpi: %s\n", !strcmp(ts_comm_kind(), "mpi") ? "yes (make MPI=1)" : "no");
    printf("server: libmicrohttpd %s\n", MHD_get_version());
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") ||
        !strcmp(argv[1], "help")) {
        fputs(usage, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (!strcmp(argv[1], "--version")) {
        print_version();
        return 0;
    }
    static const struct {
        const char *name;
        int (*fn)(int, char **);
    } cmds[] = {
        {"segment", ts_cli_segment}, {"everything", ts_cli_everything}, {"embed", ts_cli_embed},
        {"convert", ts_cli_convert}, {"info", ts_cli_info},       {"serve", ts_cli_serve},
        {"quantize", ts_cli_quantize}, {"eval", ts_cli_eval},
        {"distill", ts_cli_distill},
    };
    for (size_t i = 0; i < sizeof cmds / sizeof cmds[0]; i++)
        if (!strcmp(argv[1], cmds[i].name)) return cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "tinysam: unknown command '%s' (see tinysam --help)\n", argv[1]);
    return 2;
}
