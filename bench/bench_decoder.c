/* bench_decoder.c - prompt encoder + mask decoder timing: one prompt end to end (as the ONNX
 * decoder does it: prompt encoding, decoder, masks upsampled to the original size) and
 * batches of 64 single-point prompts (the everything-mode path), at 1 and 2 threads.
 * Usage: bench_decoder [--json] [--runs N]   (reads the fixture checkpoint and embedding) */
#include "core.h"
#include "io/npy.h"
#include "model/sam.h"
#include "model/sam_decoder.h"
#include "model/transforms.h"

#include "bench_util.h"
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
    double single[2], batched[2];
    for (int t = 1; t <= 2; t++) {
        tinysam_set_num_threads(t);
        double v[64];
        tinysam_prediction p;
        tinysam_predict(m, &e, &pr, TINYSAM_PREDICT_MASKS, &p); /* warm-up */
        tinysam_prediction_free(&p);
        for (int r = 0; r < runs; r++) {
            double t0 = ts_now_ms();
            tinysam_predict(m, &e, &pr, TINYSAM_PREDICT_LOGITS, &p);
            v[r] = ts_now_ms() - t0;
            tinysam_prediction_free(&p);
        }
        single[t - 1] = bench_median(v, runs);
        int br = runs < 3 ? runs : 3;
        for (int r = 0; r < br; r++) {
            double t0 = ts_now_ms();
            ts_sam_decode(m->prompt_encoder, m->mask_decoder, emb.data, B, sets, lr, iou);
            v[r] = (ts_now_ms() - t0) / B;
        }
        batched[t - 1] = bench_median(v, br);
    }
    if (json)
        printf("{\"decoder_ms_1t\": %.2f, \"decoder_ms_2t\": %.2f, \"decoder_batch64_ms_per_prompt_1t\": "
               "%.2f, \"decoder_batch64_ms_per_prompt_2t\": %.2f}\n",
               single[0], single[1], batched[0], batched[1]);
    else
        printf("decoder, one prompt end to end (masks at 769x770): %.1f ms (1 thread), %.1f ms (2 threads)\n"
               "decoder, batch of 64, per prompt:                  %.1f ms (1 thread), %.1f ms (2 threads)\n",
               single[0], single[1], batched[0], batched[1]);
    free(lr);
    ts_npy_free(&emb);
    tinysam_model_free(m);
    return 0;
}
