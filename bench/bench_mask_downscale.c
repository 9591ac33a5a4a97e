/* bench_mask_downscale.c - the prompt encoder's mask-downscaling path (a mask input only: conv
 * 1->4 2x2 s2, LN2d, GELU, conv 4->16 2x2 s2, LN2d, GELU, conv 16->256 1x1), float against an
 * int8 form of its one GEMM-sized layer, the 16->256 1x1 convolution (4096 pixels x 16 -> 256):
 *   whole path      ts_prompt_dense_ws (channel-major out) + the transpose the decoder applies
 *   1x1 float, as run   ts_gemm channel-major [256][4096] + bias + transpose to [4096][256]
 *   1x1 float, pixel-major   ts_gemm_ex [4096][256] with the bias (no transpose needed)
 *   1x1 int8, pixel-major    ts_gemm_i8_f32: the GELU output quantised on the fly (asymmetric
 *                           u8 step), per-output-channel int8 weights, bias in the epilogue
 *   1x1 int8, as run     the same behind today's interface: transposed to channel-major for
 *                        ts_prompt_dense_ws's output, and back by the decoder
 * and the int8 form's error against float (max |diff| / max |out|). Random weights of the real
 * shapes and a random +-10 logit mask; medians of --runs N (default 15), the variants
 * interleaved, at 1 and 2 threads. The first two convolutions (K = 4 and 16 taps, 4 and 16
 * output channels, direct loops) have no GEMM to speed up. */
#include "bench_util.h"
#include "core.h"
#include "model/sam_decoder.h"
#include "model/sam_decoder_internal.h"
#include "nn/gemm_i8.h"
#include "nn/nn.h"
#include "tinysam.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long g_rng = 0x9e3779b97f4a7c15ULL;
static float urand(void) { /* [-1, 1) */
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)((double)(g_rng >> 11) / 4503599627370496.0 - 1.0);
}

enum { NPIX = 4096, CI = 16, CO = 256, NV = 5 };

int main(int argc, char **argv) {
    int runs = 15;
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--runs")) runs = atoi(argv[++i]);
    if (runs < 1 || runs > 1000) {
        fprintf(stderr, "usage: bench_mask_downscale [--runs N]\n");
        return 2;
    }
    /* the prompt encoder's mask-path weights, random, of the real shapes */
    static float c0w[16], c0b[4], n1w[4], n1b[4], c3w[256], c3b[16], n4w[16], n4b[16];
    static float c6w[CO * CI], c6b[CO];
    for (int i = 0; i < 16; i++) c0w[i] = 0.5f * urand();
    for (int i = 0; i < 4; i++)
        c0b[i] = 0.1f * urand(), n1w[i] = 1 + 0.2f * urand(), n1b[i] = 0.1f * urand();
    for (int i = 0; i < 256; i++) c3w[i] = 0.25f * urand();
    for (int i = 0; i < 16; i++)
        c3b[i] = 0.1f * urand(), n4w[i] = 1 + 0.2f * urand(), n4b[i] = 0.1f * urand();
    for (int i = 0; i < CO * CI; i++) c6w[i] = 0.25f * urand();
    for (int i = 0; i < CO; i++) c6b[i] = 0.1f * urand();
    ts_prompt_encoder pe;
    memset(&pe, 0, sizeof pe);
    pe.c0_w = c0w, pe.c0_b = c0b, pe.n1_w = n1w, pe.n1_b = n1b, pe.c3_w = c3w, pe.c3_b = c3b;
    pe.n4_w = n4w, pe.n4_b = n4b, pe.c6_w = c6w, pe.c6_b = c6b;
    float *mask = malloc(sizeof(float) * 256 * 256);
    float *scratch = malloc(sizeof(float) * TS_PROMPT_DENSE_SCRATCH);
    float *chw = ts_malloc_aligned(sizeof(float) * CO * NPIX);
    float *ref = ts_malloc_aligned(sizeof(float) * CO * NPIX); /* pixel-major float */
    float *o8 = ts_malloc_aligned(sizeof(float) * CO * NPIX);
    float *tok = ts_malloc_aligned(sizeof(float) * CO * NPIX);
    if (!mask || !scratch || !chw || !ref || !o8 || !tok) return 1;
    for (int i = 0; i < 256 * 256; i++) mask[i] = 10.0f * urand();
    ts_prompt_dense_ws(&pe, mask, chw, scratch);
    /* the 1x1 conv's input: the second GELU's output, pixel-major [4096][16] */
    const float *x = scratch + 128 * 128 * 4;
    float lo = 0.0f, hi = 0.0f;
    for (int i = 0; i < NPIX * CI; i++) lo = fminf(lo, x[i]), hi = fmaxf(hi, x[i]);
    const float step = (hi - lo) / 255.0f;
    const int zp = (int)nearbyintf(-lo / step);
    ts_i8pack *pk = ts_i8pack_new_f32(c6w, CO, CI, CI);
    if (!pk) return 1;
    ts_i8_out out = {.bias = c6b, .act = TS_ACT_NONE, .C = o8, .ldc = CO};
    /* the int8 form's error (abs-max steps, no search) */
    ts_gemm_ex(NPIX, CO, CI, x, CI, c6w, CI, 1, ref, CO, 0.0f, c6b, TS_ACT_NONE);
    ts_gemm_i8_f32(NPIX, x, CI, step, zp, pk, &out);
    double emax = 0, omax = 0;
    for (int i = 0; i < NPIX * CO; i++)
        emax = fmax(emax, fabs((double)o8[i] - ref[i])), omax = fmax(omax, fabs((double)ref[i]));
    printf("mask downscaling, 16->256 1x1 conv as a 4096 x 16 x 256 GEMM; int8 kernel %s\n",
           ts_gemm_i8_isa_name());
    printf("int8 form: max |int8 - float| %.4g of max |out| %.4g (%.2f%%)\n", emax, omax,
           100 * emax / omax);
    const char *names[NV] = {"whole path (float, as run, + transpose)",
                             "1x1 float, as run (channel-major + transpose)",
                             "1x1 float, pixel-major", "1x1 int8, pixel-major",
                             "1x1 int8, as run (+ transpose there and back)"};
    const int threads0 = tinysam_get_num_threads();
    double *t = malloc(sizeof(double) * NV * (size_t)runs);
    if (!t) return 1;
    for (int nt = 1; nt <= 2; nt++) {
        tinysam_set_num_threads(nt);
        for (int r = 0; r < runs; r++)
            for (int v = 0; v < NV; v++) {
                double t0 = bench_now_s();
                if (v == 0) {
                    ts_prompt_dense_ws(&pe, mask, chw, scratch);
                    ts_transpose_serial(chw, NPIX, CO, NPIX, tok, CO);
                } else if (v == 1) {
                    ts_gemm(CO, NPIX, CI, c6w, CI, x, CI, 1, chw, NPIX, 0.0f);
                    for (int o = 0; o < CO; o++)
                        for (int i = 0; i < NPIX; i++) chw[(size_t)o * NPIX + i] += c6b[o];
                    ts_transpose_serial(chw, NPIX, CO, NPIX, tok, CO);
                } else if (v == 2) {
                    ts_gemm_ex(NPIX, CO, CI, x, CI, c6w, CI, 1, ref, CO, 0.0f, c6b, TS_ACT_NONE);
                } else if (v == 3) {
                    ts_gemm_i8_f32(NPIX, x, CI, step, zp, pk, &out);
                } else {
                    ts_gemm_i8_f32(NPIX, x, CI, step, zp, pk, &out);
                    ts_transpose_serial(o8, CO, NPIX, CO, chw, NPIX);
                    ts_transpose_serial(chw, NPIX, CO, NPIX, tok, CO);
                }
                t[v * runs + r] = (bench_now_s() - t0) * 1e3;
            }
        double med[NV];
        for (int v = 0; v < NV; v++) med[v] = bench_median(t + v * runs, runs);
        printf("%d thread%s, medians of %d (ms):\n", nt, nt > 1 ? "s" : "", runs);
        for (int v = 0; v < NV; v++) printf("  %-46s %8.3f\n", names[v], med[v]);
        printf("  int8 / float time: pixel-major %.2fx, as run %.2fx; the 1x1 as run is %.0f%% of "
               "the whole path\n",
               med[3] / med[2], med[4] / med[1], 100 * med[1] / med[0]);
    }
    tinysam_set_num_threads(threads0);
    free(t);
    ts_i8pack_free(pk);
    free(mask), free(scratch);
    ts_free_aligned(chw), ts_free_aligned(ref), ts_free_aligned(o8), ts_free_aligned(tok);
    return 0;
}
