/* bench_decoder.c - prompt encoder + mask decoder timing: one prompt end to end (as the ONNX
 * decoder does it: prompt encoding, decoder, masks upsampled to the original size) and
 * batches of 64 single-point prompts (the everything-mode path), at 1 and 2 threads.
 * The same for the int8 decoder (quant/calibrate_decoder.h layers, the token-side Linears
 * included, fixed input steps: the speed does not depend on them), interleaved with the float
 * runs, and the ratios.
 * Usage: bench_decoder [--json] [--runs N]   (reads the fixture checkpoint and embedding) */
#include "core.h"
#include "io/npy.h"
#include "model/sam.h"
#include "model/sam_decoder.h"
#include "model/transforms.h"

#include "bench_util.h"
#include "int8_decoder_model.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv) {
    int json = 0, runs = 7;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--json")) json = 1;
        else if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
    }
    if (runs < 1) runs = 1;
    const char *root = getenv("TINYSAM_FIXTURES");
    char mp[512], ep[512];
    snprintf(mp, sizeof mp, "%s/models/tinysam_vit_t_random.pth", root ? root : "../shared/fixtures");
    snprintf(ep, sizeof ep, "%s/reference/picture1/embedding.npy", root ? root : "../shared/fixtures");
    tinysam_model *m;
    ts_npy emb;
    if (tinysam_model_load(mp, &m) || ts_npy_load(ep, &emb)) {
        fprintf(stderr, "bench_decoder: %s\n", tinysam_last_error());
        return 1;
    }
    tinysam_embedding e = {.data = emb.data, .orig_w = 769, .orig_h = 770};
    ts_preprocess_shape(770, 769, 1024, &e.input_h, &e.input_w);
    float pt[2] = {380, 300};
    int lab = 1;
    tinysam_prompt pr = {.n_points = 1, .points = pt, .labels = &lab};
    enum { B = 64 };
    float *lr = malloc(sizeof(float) * B * 4 * 65536), iou[B * 4], coords[B * 2];
    ts_prompt_set sets[B];
    for (int i = 0; i < B; i++) {
        coords[2 * i] = (float)((i % 8) * 128 + 64) / 1024.0f;
        coords[2 * i + 1] = (float)((i / 8) * 128 + 64) / 1024.0f;
        sets[i] = (ts_prompt_set){.n_points = 1, .coords = coords + 2 * i, .labels = &lab};
    }
    tinysam_model *mq = int8_decoder_model(m, "bench_decoder");
    if (!mq) {
        fprintf(stderr, "bench_decoder: int8 decoder: %s\n", tinysam_last_error());
        return 1;
    }
    /* [model][threads]: float, int8; runs alternate between the two */
    double single[2][2], batched[2][2];
    for (int t = 1; t <= 2; t++) {
        tinysam_set_num_threads(t);
        double v[2][64];
        tinysam_prediction p;
        for (int k = 0; k < 2; k++) { /* warm-up */
            tinysam_predict(k ? mq : m, &e, &pr, TINYSAM_PREDICT_MASKS, &p);
            tinysam_prediction_free(&p);
        }
        for (int r = 0; r < runs; r++)
            for (int k = 0; k < 2; k++) {
                double t0 = ts_now_ms();
                tinysam_predict(k ? mq : m, &e, &pr, TINYSAM_PREDICT_LOGITS, &p);
                v[k][r] = ts_now_ms() - t0;
                tinysam_prediction_free(&p);
            }
        for (int k = 0; k < 2; k++) single[k][t - 1] = bench_median(v[k], runs);
        int br = runs < 3 ? runs : 3;
        for (int r = 0; r < br; r++)
            for (int k = 0; k < 2; k++) {
                const tinysam_model *mm = k ? mq : m;
                double t0 = ts_now_ms();
                ts_sam_decode(mm->prompt_encoder, mm->mask_decoder, emb.data, B, sets, lr, iou);
                v[k][r] = (ts_now_ms() - t0) / B;
            }
        for (int k = 0; k < 2; k++) batched[k][t - 1] = bench_median(v[k], br);
    }
    if (json)
        printf("{\"decoder_ms_1t\": %.2f, \"decoder_ms_2t\": %.2f, \"decoder_batch64_ms_per_prompt_1t\": "
               "%.2f, \"decoder_batch64_ms_per_prompt_2t\": %.2f, \"decoder_int8_ms_1t\": %.2f, "
               "\"decoder_int8_ms_2t\": %.2f, \"decoder_int8_batch64_ms_per_prompt_1t\": %.2f, "
               "\"decoder_int8_batch64_ms_per_prompt_2t\": %.2f}\n",
               single[0][0], single[0][1], batched[0][0], batched[0][1], single[1][0],
               single[1][1], batched[1][0], batched[1][1]);
    else
        for (int k = 0; k < 2; k++)
            printf("decoder %s, one prompt end to end (masks at 769x770): %.1f ms (1 thread), %.1f ms (2 threads)\n"
                   "decoder %s, batch of 64, per prompt:                  %.1f ms (1 thread), %.1f ms (2 threads)\n",
                   k ? "int8 " : "float", single[k][0], single[k][1], k ? "int8 " : "float",
                   batched[k][0], batched[k][1]);
    if (!json)
        printf("float / int8: one prompt %.2fx (1t) %.2fx (2t), batch of 64 %.2fx (1t) %.2fx (2t)\n",
               single[0][0] / single[1][0], single[0][1] / single[1][1],
               batched[0][0] / batched[1][0], batched[0][1] / batched[1][1]);
    tinysam_model_free(mq);
    free(lr);
    ts_npy_free(&emb);
    tinysam_model_free(m);
    return 0;
}
