/* bench_dwconv_i8.c - the depthwise 3x3 row of the encoder's shapes, float (nn.h
 * ts_dwconv3x3_nhwc_rows3) against int8 (nn/dwconv_i8.h) plus the quantisation of its input
 * rows that int8 needs when the producer writes floats: one thread, median of N repetitions
 * of a whole map's rows. Why the depthwise convolutions stay float (README, Quantisation).
 *   build/bench/bench_dwconv_i8 [reps] */
#include "nn/dwconv_i8.h"
#include "nn/gemm_i8.h"
#include "nn/nn.h"

#include "bench_util.h"
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int reps = argc > 1 ? atoi(argv[1]) : 7;
    if (reps < 1) reps = 1;
    static const int SH[][4] = {/* H(=W), C, stride, what */
                                {256, 256, 1, 0}, {256, 128, 2, 1}, {128, 128, 1, 2},
                                {64, 160, 1, 3}, {64, 320, 1, 4}};
    static const char *const WHAT[] = {"MBConv 256x256x256", "PatchMerging 0 (s2) 256x256x128",
                                       "local_conv stage 1 128x128x128",
                                       "local_conv stage 2 64x64x160",
                                       "local_conv stage 3 64x64x320"};
    tinysam_set_num_threads(1);
    printf("depthwise 3x3, one thread, isa %s, median of %d (ms per map)\n", ts_nn_isa_name(),
           reps);
    for (size_t s = 0; s < sizeof SH / sizeof SH[0]; s++) {
        const int H = SH[s][0], C = SH[s][1], st = SH[s][2], Wo = (H - 1) / st + 1;
        float *x = malloc(sizeof(float) * H * H * C), *w = malloc(sizeof(float) * 9 * C);
        float *b = malloc(sizeof(float) * C), *comb = malloc(sizeof(float) * C);
        float *y = malloc(sizeof(float) * Wo * C);
        uint8_t *q = malloc((size_t)H * H * C);
        int8_t *w8 = malloc((size_t)9 * C);
        double *tf = malloc(sizeof(double) * reps), *ti = malloc(sizeof(double) * reps);
        double *tq = malloc(sizeof(double) * reps);
        if (!x || !w || !b || !comb || !y || !q || !w8 || !tf || !ti || !tq) return 1;
        for (int i = 0; i < H * H * C; i++) x[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
        for (int i = 0; i < 9 * C; i++) {
            w[i] = (float)((i * 13) % 31) / 15.0f - 1.0f;
            w8[i] = (int8_t)((i * 13) % 255 - 127);
        }
        for (int c = 0; c < C; c++) b[c] = 0.1f, comb[c] = 1e-3f;
        ts_quantize_u8(x, H * H, C, C, 0.01f, 128, q, C);
        for (int r = 0; r < reps; r++) {
            double t0 = bench_now_s();
            for (int oy = 0; oy < Wo; oy++) {
                const float *rows[3];
                for (int k = 0; k < 3; k++) {
                    int iy = oy * st - 1 + k;
                    rows[k] = iy >= 0 && iy < H ? x + (size_t)iy * H * C : NULL;
                }
                ts_dwconv3x3_nhwc_rows3(rows, H, C, st, w, b, TS_ACT_NONE, y);
            }
            double t1 = bench_now_s();
            for (int oy = 0; oy < Wo; oy++) {
                const uint8_t *rows[3];
                for (int k = 0; k < 3; k++) {
                    int iy = oy * st - 1 + k;
                    rows[k] = iy >= 0 && iy < H ? q + (size_t)iy * H * C : NULL;
                }
                ts_dwconv3x3_i8_rows3(rows, H, C, st, 128, w8, comb, b, TS_ACT_NONE, y);
            }
            double t2 = bench_now_s();
            ts_quantize_u8(x, H * H, C, C, 0.01f, 128, q, C);
            double t3 = bench_now_s();
            tf[r] = t1 - t0;
            ti[r] = t2 - t1;
            tq[r] = t3 - t2;
        }
        qsort(tf, (size_t)reps, sizeof(double), bench_cmp_double);
        qsort(ti, (size_t)reps, sizeof(double), bench_cmp_double);
        qsort(tq, (size_t)reps, sizeof(double), bench_cmp_double);
        double f = tf[reps / 2], i8 = ti[reps / 2], qq = tq[reps / 2];
        printf("  %-34s float %6.2f  int8 %6.2f (+ quantise input %5.2f)  float / int8 %.2fx "
               "(%.2fx with the quantisation)\n",
               WHAT[SH[s][3]], f * 1e3, i8 * 1e3, qq * 1e3, f / i8, f / (i8 + qq));
        free(x), free(w), free(b), free(comb), free(y), free(q), free(w8), free(tf), free(ti),
            free(tq);
    }
    return 0;
}
