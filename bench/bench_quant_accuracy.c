/* bench_quant_accuracy.c - the accuracy table of Q-TinySAM on the fixtures (README,
 * Quantisation): for each calibration method (mse, layer) and scope (gemm: the encoder's 1x1
 * convolutions and linears; encoder: also its 3x3 convolutions and attention products; all:
 * the encoder and the decoder's int8 layers), quantise the fixture checkpoint calibrated on
 * picture3.jpg and shapes_grey.png, and compare it with the float model on every prompt case
 * of picture1 and shapes: best-mask IoU against the float best mask (mean, worst) and the
 * embedding cosine (worst of the two images). The fixture checkpoint has RANDOM weights: these
 * are not the figures of the released (trained) model.
 *   build/bench/bench_quant_accuracy [--method mse|layer|hessian] [--scope gemm|encoder|all] [--gelu]
 *     --gelu  instead: the post-GELU quantisers' MSE on the calibration samples, one
 *             asymmetric step (what runs, one GEMM) against the twin-uniform pair (two) */
#include "core.h"
#include "model/sam.h"
#include "quant/calibrate.h"
#include "quant/hessian.h"
#include "tinysam.h"

#include "accuracy.h"
#include "test.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --gelu: the post-GELU quantisers compared on the calibration samples (one asymmetric step,
 * one GEMM, against the twin-uniform pair, two GEMMs). */
static int gelu_table(tinysam_model *fm, const char *const *paths) {
    ts_calib *c;
    if (ts_calib_new(fm->encoder, 2, &c)) return 1;
    int rc = 0;
    for (int i = 0; i < 2 && !rc; i++) {
        tinysam_image img;
        if (!(rc = tinysam_image_load(paths[i], 0, &img))) {
            rc = ts_calib_add_image(c, &img);
            tinysam_image_free(&img);
        }
    }
    printf("post-GELU inputs: quantisation MSE, one asymmetric u8 step (1 GEMM) vs twin-uniform "
           "(2 GEMMs)\n| layer | asym | twin | twin / asym |\n|---|---|---|---|\n");
    double sa = 0, st = 0;
    for (int i = 0; i < TS_TINY_VIT_N_QLAYERS && !rc; i++) {
        ts_tiny_vit_qlayer q;
        ts_tiny_vit_qlayer_get(fm->encoder, i, &q);
        if (!q.post_gelu) continue;
        double a, t;
        if ((rc = ts_calib_gelu_compare(c, i, &a, &t))) break;
        sa += a;
        st += t;
        printf("| %s | %.3g | %.3g | %.2f |\n", q.name + 14, a, t, a > 0 ? t / a : 0.0);
    }
    if (!rc) printf("| sum | %.3g | %.3g | %.2f |\n", sa, st, sa > 0 ? st / sa : 0.0);
    ts_calib_free(c);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    int methods[3] = {TS_CALIB_MSE, TS_CALIB_LAYER, TS_CALIB_HESSIAN},
        scopes[3] = {TS_SCOPE_GEMM, TS_SCOPE_ENCODER, TS_SCOPE_ALL};
    int nm = 3, ns = 3;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--method")) {
            nm = 1;
            methods[0] = !strcmp(argv[i + 1], "layer")     ? TS_CALIB_LAYER
                         : !strcmp(argv[i + 1], "hessian") ? TS_CALIB_HESSIAN
                                                           : TS_CALIB_MSE;
        } else if (!strcmp(argv[i], "--scope")) {
            ns = 1;
            scopes[0] = !strcmp(argv[i + 1], "gemm")      ? TS_SCOPE_GEMM
                        : !strcmp(argv[i + 1], "encoder") ? TS_SCOPE_ENCODER
                                                          : TS_SCOPE_ALL;
        }
    }
    tinysam_model *fm;
    if (tinysam_model_load(fixture("models/tinysam_vit_t_random.pth"), &fm)) {
        fprintf(stderr, "bench_quant_accuracy: %s\n", tinysam_last_error());
        return 1;
    }
    char c0[1024], c1[1024], out[64];
    snprintf(c0, sizeof c0, "%s", fixture("images/picture3.jpg"));
    snprintf(c1, sizeof c1, "%s", fixture("images/shapes_grey.png"));
    const char *paths[2] = {c0, c1};
    snprintf(out, sizeof out, "/tmp/bench_quant_accuracy_%d.safetensors", (int)getpid());
    for (int i = 1; i < argc; i++)
        if (!strcmp(argv[i], "--gelu")) {
            int st = gelu_table(fm, paths);
            tinysam_model_free(fm);
            return st;
        }
    printf("Q-TinySAM accuracy vs the float model: fixture checkpoint (RANDOM weights, not the "
           "released model),\ncalibration picture3.jpg + shapes_grey.png, evaluation: every "
           "prompt case of picture1 and shapes\n");
    printf("| method | scope   | mean IoU | worst IoU | min cosine | cases |\n");
    printf("|--------|---------|----------|-----------|------------|-------|\n");
    int status = 0;
    ts_hessian grads; /* the Hessian method's gradients: collected once for every scope */
    int have_grads = 0;
    for (int mi = 0; mi < nm; mi++)
        for (int si = 0; si < ns; si++) {
            ts_quant_opts o = {methods[mi], scopes[si], NULL};
            if (o.method == TS_CALIB_HESSIAN && !have_grads) {
                if (ts_hessian_init(&grads, fm->encoder) ||
                    ts_hessian_collect(fm, paths, 2, &grads, 0)) {
                    fprintf(stderr, "bench_quant_accuracy: %s\n", tinysam_last_error());
                    status = 1;
                    ts_hessian_free(&grads);
                    continue;
                }
                have_grads = 1;
            }
            if (o.method == TS_CALIB_HESSIAN) o.grads = &grads;
            tinysam_model *qm = NULL;
            test_acc a = {0, 1, 1, 0};
            if (ts_quantize_model_opts(fm, paths, 2, &o, out, 0) ||
                tinysam_model_load(out, &qm) ||
                test_acc_image(fm, qm, "picture1", "picture1.jpg", 0, &a) ||
                test_acc_image(fm, qm, "shapes", "shapes.png", 0, &a)) {
                fprintf(stderr, "bench_quant_accuracy: %s\n", tinysam_last_error());
                status = 1;
            } else {
                printf("| %-6s | %-7s | %8.4f | %9.4f | %10.5f | %5d |\n",
                       ts_quant_method_name(o.method), ts_quant_scope_name(o.scope),
                       a.n ? a.iou_sum / a.n : 0.0, a.iou_min, a.cos_min, a.n);
                fflush(stdout);
            }
            tinysam_model_free(qm);
            remove(out);
        }
    if (have_grads) ts_hessian_free(&grads);
    tinysam_model_free(fm);
    return status;
}
