/* bench_train.c - one distillation step (spec/DISTILL.md 0) timed by phase: 1 image, 64 prompt
 * sets, t = 0 and t = 9 sampling rounds, at 1 and 2 threads, with its FLOP count, the achieved
 * GFLOP/s against the inference encoder's, and the peak RSS.
 *
 * Fixtures: student distill/student_fp16.pth, teacher models/tinysam_vit_t_random.pth, image
 * picture1 (its 8 ground truths, each repeated 8 times to make 64 masks).
 *
 * FLOPs are the model's (2 per multiply-add): encoder forward 77.5 G, its backward twice that;
 * a decoder pass per prompt set counted from its layers (dec_flops); the backward of a set twice
 * its forward. The recomputed forward inside the decoder backward is an implementation cost
 * and not counted.
 *
 * usage: bench_train [--runs N] [--threads T] [--sets N] [--json] */
#include "bench_util.h"
#include "core.h"
#include "io/tensor_map.h"
#include "threads.h"
#include "tinysam.h"
#include "train/dataset.h"
#include "train/trainer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "train/distill_case.h"

#define ENC_GFLOP 77.5

/* Prompt encoder + mask decoder forward FLOPs of one set with nt tokens (5 + sparse) and an
 * optional mask input: two-way layers, final attention, upscaling, heads. */
static double dec_flops(int nt, int mask_input) {
    const double E = 256, D = 128, P = 4096, M = 2048;
    double self = 4 * nt * E * E * 2 + 2 * (double)nt * nt * E * 2;
    double t2i = nt * E * D * 2 + 2 * P * E * D * 2 + 2 * nt * P * D * 2 + nt * D * E * 2;
    double mlp = 2 * nt * E * M * 2;
    double i2t = P * E * D * 2 + 2 * nt * E * D * 2 + 2 * P * nt * D * 2 + P * D * E * 2;
    double layers = 2 * (self + t2i + mlp + i2t) + t2i;
    double up = P * E * 256 * 2 + 16384 * 64 * 128 * 2;
    double heads = 4 * (2 * E * E * 2 + E * 32 * 2) + 4 * 32 * 65536 * 2 + 2 * E * E * 2;
    double dense = mask_input ? 4096 * 16 * 256 * 2 + 16384 * 4 * 16 * 4 * 2 : 0;
    return layers + up + heads + dense;
}

int main(int argc, char **argv) {
    int runs = 1, only_threads = 0, sets = 64, json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) only_threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--sets") && i + 1 < argc) sets = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else {
            fprintf(stderr, "usage: bench_train [--runs N] [--threads T] [--sets N] [--json]\n");
            return 2;
        }
    }
    if (runs < 1 || sets < 1 || sets > 64) return 2;
    if (!dc_fixtures_present()) {
        fprintf(stderr, "bench_train: fixtures not found (TINYSAM_FIXTURES)\n");
        return 2;
    }
    ts_train_example ex8, ex;
    ts_tensor_map *sm = NULL, *tm = NULL;
    tinysam_model *model = NULL;
    if (!dc_example_load("picture1", &ex8) || ts_map_load(fixture(DC_STUDENT), &sm) ||
        ts_map_load(fixture(DC_TEACHER), &tm) || tinysam_model_load(fixture(DC_STUDENT), &model) ||
        ts_example_alloc(&ex, 64)) {
        fprintf(stderr, "bench_train: %s\n", tinysam_last_error());
        return 1;
    }
    /* 64 masks: the 8 ground truths, 8 times */
    memcpy(ex.input, ex8.input, sizeof(float) * 3 * TS_FRAME * TS_FRAME);
    memcpy(ex.emb_t, ex8.emb_t, sizeof(float) * TS_LOSS_EMB);
    memcpy(ex.valid, ex8.valid, sizeof ex.valid);
    ex.newh = ex8.newh, ex.neww = ex8.neww;
    snprintf(ex.name, sizeof ex.name, "picture1");
    for (int k = 0; k < 64; k++) {
        memcpy(ex.g1024_bits + (size_t)k * TS_FRAME_BITS,
               ex8.g1024_bits + (size_t)(k % 8) * TS_FRAME_BITS, TS_FRAME_BITS);
        memcpy(ex.glow + (size_t)k * TS_LOWRES_CELLS, ex8.glow + (size_t)(k % 8) * TS_LOWRES_CELLS,
               TS_LOWRES_CELLS);
        ex.area1024[k] = ex8.area1024[k % 8];
    }
    const char *phase[7] = {"encoder forward", "sampling rounds", "decoders forward",
                            "losses", "decoder backward", "encoder backward", "Adam"};
    double res_ms[2][2] = {{0}}, res_gf[2][2] = {{0}}, inf_gf[2] = {0};
    printf("one distillation step: 1 image, %d prompt sets, student vit_t, teacher vit_t decoder\n",
           sets);
    for (int th = 1; th <= 2; th++) {
        if (only_threads && th != only_threads) continue;
        tinysam_set_num_threads(th);
        /* the inference encoder at this thread count, for the GFLOP/s yardstick */
        tinysam_image img = {0};
        tinysam_embedding *emb = NULL;
        double best = 1e30;
        if (tinysam_image_load(fixture("images/picture1.jpg"), 0, &img) == 0) {
            for (int r = 0; r < 3; r++) {
                double t0 = bench_now_s();
                if (tinysam_encode(model, &img, &emb)) break;
                double dt = bench_now_s() - t0;
                if (dt < best) best = dt;
                tinysam_embedding_free(emb);
                emb = NULL;
            }
            tinysam_image_free(&img);
        }
        inf_gf[th - 1] = ENC_GFLOP / best;
        printf("\n%d thread%s: inference encoder %.0f ms (%.1f GFLOP/s incl. preprocessing)\n", th,
               th > 1 ? "s" : "", best * 1e3, inf_gf[th - 1]);
        for (int ti = 0; ti < 2; ti++) {
            const int T = ti ? 9 : 0;
            ts_train_config c;
            ts_train_config_default(&c);
            c.max_sets = sets, c.fixed_t = T, c.warmup = 0, c.lr_drops = 0, c.seed = 7;
            ts_trainer *tr = NULL;
            if (ts_trainer_create(&c, sm, tm, 0, &tr)) {
                fprintf(stderr, "bench_train: %s\n", tinysam_last_error());
                return 1;
            }
            double ms[8][16];
            ts_step_report rep;
            for (int r = 0; r <= runs; r++) { /* run 0 warms the tape's pages */
                double t0 = bench_now_s();
                if (ts_trainer_step(tr, &ex, &rep)) {
                    fprintf(stderr, "bench_train: %s\n", tinysam_last_error());
                    return 1;
                }
                if (r == 0) continue;
                ms[7][r - 1] = (bench_now_s() - t0) * 1e3;
                for (int k = 0; k < 7; k++) ms[k][r - 1] = rep.ms[k];
            }
            double med[8];
            for (int k = 0; k < 8; k++) med[k] = bench_median(ms[k], runs);
            /* FLOPs: sampling rounds on the student, the training round on both networks,
             * the student's backward; tokens: 5 + t + 2 */
            const int nt = 5 + T + 2;
            double f_enc = 3 * ENC_GFLOP * 1e9;
            double f_smp = 0;
            for (int j = 0; j < T; j++) f_smp += rep.N * dec_flops(5 + j + 2, j > 0);
            double f_fwd = 2.0 * rep.N * dec_flops(nt, T > 0), f_bwd = 2.0 * rep.N * dec_flops(nt, T > 0);
            double total = f_enc + f_smp + f_fwd + f_bwd;
            res_ms[th - 1][ti] = med[7];
            res_gf[th - 1][ti] = total / 1e9 / (med[7] / 1e3);
            printf("  t = %d: step %.0f ms, %.0f GFLOP, %.1f GFLOP/s = %.0f%% of the inference "
                   "encoder's\n", T, med[7], total / 1e9, res_gf[th - 1][ti],
                   100 * res_gf[th - 1][ti] / inf_gf[th - 1]);
            const double fl[7] = {ENC_GFLOP, f_smp / 1e9, f_fwd / 1e9, 0, f_bwd / 1e9,
                                  2 * ENC_GFLOP, 0};
            for (int k = 0; k < 7; k++) {
                printf("    %-18s %8.0f ms", phase[k], med[k]);
                if (fl[k] > 0) printf("  %7.1f GFLOP  %6.1f GFLOP/s", fl[k], fl[k] / (med[k] / 1e3));
                printf("\n");
            }
            ts_trainer_free(tr);
        }
    }
    const double rss = bench_peak_rss_mb();
    printf("\npeak RSS %.0f MB (%d prompt sets; limit of the issue: 4096 MB)\n", rss, sets);
    if (json)
        printf("{\"train_step_t0_ms_1t\": %.1f, \"train_step_t9_ms_1t\": %.1f, "
               "\"train_step_t0_ms_2t\": %.1f, \"train_step_t9_ms_2t\": %.1f, "
               "\"train_gflops_t0_1t\": %.2f, \"train_gflops_t9_1t\": %.2f, "
               "\"train_gflops_t0_2t\": %.2f, \"train_gflops_t9_2t\": %.2f, "
               "\"inference_gflops_1t\": %.2f, \"inference_gflops_2t\": %.2f, "
               "\"peak_rss_mb\": %.0f}\n",
               res_ms[0][0], res_ms[0][1], res_ms[1][0], res_ms[1][1], res_gf[0][0], res_gf[0][1],
               res_gf[1][0], res_gf[1][1], inf_gf[0], inf_gf[1], rss);
    tinysam_model_free(model);
    ts_map_free(sm), ts_map_free(tm);
    ts_example_free(&ex), ts_example_free(&ex8);
    return 0;
}
