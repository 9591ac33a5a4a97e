/* bench_sam_vit_i8.c - the W8A8 SAM ViT encoder (quant/int8_vit.h) against the float one at
 * the real ViT-B shapes (768 wide, 12 blocks, 12 heads, global attention at 2,5,8,11), random
 * weights generated in memory (bench_vit_weights.h, no checkpoint): the int8 file is written
 * with steps from one tapped float pass over the random input (absmax of each layer's input:
 * this measures speed, not calibration quality), loaded back as every command loads it, and
 * both encoders run alternately; median wall time at 1 and 2 threads, the int8 / float speed
 * ratio, the embedding cosine, the process CPU time of each pass (the fairer figure on a loaded
 * machine), and the file sizes (int8 file vs the float32 safetensors of the same map).
 *   build/bench/bench_sam_vit_i8 [runs] [B|L|H]   (TINYSAM_ISA=avx512|avx2|scalar to force a path)
 * Writes two temporary files under $TMPDIR (/tmp): ~360 MB and ~95 MB for ViT-B. */
#include "io/tensor_map.h"
#include "model/image_encoder_vit.h"
#include "nn/gemm_i8.h"
#include "nn/nn.h"
#include "quant/int8_model.h"
#include "quant/int8_vit.h"
#include "tinysam.h"

#include "bench_util.h"
#include "compare.h"
#include "bench_vit_weights.h"
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* CPU time of the whole process (every thread), seconds: on a shared machine the 1-thread
 * CPU time is the figure that other processes disturb least. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Range of every linear layer's input over one float pass. */
typedef struct {
    float *mn, *mx;
    int n;
} range_tap;

static void tap(void *user, int layer, long long row0, const float *x, int rows, int ldx) {
    (void)row0;
    range_tap *r = user;
    if (layer < 0 || layer >= r->n) return;
    /* the K columns of a row: ldx is K for every linear of the encoder */
    for (size_t i = 0; i < (size_t)rows * ldx; i++) {
        r->mn[layer] = fminf(r->mn[layer], x[i]);
        r->mx[layer] = fmaxf(r->mx[layer], x[i]);
    }
}

static void cpu_name(char *buf, size_t cap) {
    snprintf(buf, cap, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512];
    int fam = -1;
    while (fgets(line, sizeof line, f)) {
        if (!strncmp(line, "cpu family", 10) && strchr(line, ':')) fam = atoi(strchr(line, ':') + 1);
        if (!strncmp(line, "model name", 10) && strchr(line, ':')) {
            snprintf(buf, cap, "%s", strchr(line, ':') + 2);
            buf[strcspn(buf, "\n")] = 0;
            break;
        }
    }
    if (fam >= 0) {
        size_t l = strlen(buf);
        snprintf(buf + l, cap - l, " (family %d, %ld cores online)", fam, sysconf(_SC_NPROCESSORS_ONLN));
    }
    fclose(f);
}

int main(int argc, char **argv) {
    int runs;
    const char *which;
    bench_vit_map b = {0};
    if (bench_vit_setup(argc, argv, "bench_sam_vit_i8", &runs, &which, &b)) return 1;
    const int C = b.embed_dim, depth = b.depth;
    ts_sam_vit *fe, *qe;
    if (ts_sam_vit_load(&b.m, &fe)) {
        fprintf(stderr, "bench_sam_vit_i8: %s\n", tinysam_last_error());
        return 1;
    }
    const size_t n_in = (size_t)3 * 1024 * 1024, n_out = (size_t)256 * 64 * 64;
    float *in = malloc(n_in * sizeof(float)), *of = malloc(n_out * sizeof(float));
    float *oq = malloc(n_out * sizeof(float));
    const int nl = TS_VIT_N_LAYERS(depth);
    float *mn = malloc(sizeof(float) * nl), *mx = malloc(sizeof(float) * nl);
    float *step = malloc(sizeof(float) * nl);
    int *zp = malloc(sizeof(int) * nl);
    double *tf = malloc(sizeof(double) * runs), *tq = malloc(sizeof(double) * runs);
    double *cf = malloc(sizeof(double) * runs), *cq = malloc(sizeof(double) * runs);
    if (!in || !of || !oq || !mn || !mx || !step || !zp || !tf || !tq || !cf || !cq) return 1;
    for (size_t i = 0; i < n_in; i++) in[i] = 2.0f * bench_urand();
    for (int i = 0; i < nl; i++) mn[i] = INFINITY, mx[i] = -INFINITY;
    range_tap rt = {mn, mx, nl};
    tinysam_set_num_threads(2);
    if (ts_sam_vit_forward_tap(fe, in, of, tap, &rt)) return 1;
    for (int i = 0; i < nl; i++) {
        ts_vit_layer_desc d;
        ts_vit_layer_describe(depth, C, i, &d);
        if (d.post_gelu) { /* asymmetric u8 over [min, max] */
            float lo = fminf(mn[i], 0.0f);
            step[i] = (mx[i] - lo) / 255.0f;
            zp[i] = (int)fminf(255.0f, nearbyintf(-lo / step[i]));
        } else {
            step[i] = fmaxf(fabsf(mn[i]), fabsf(mx[i])) / 127.0f;
            zp[i] = 128;
        }
    }
    const char *tmp = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char qp[512], fp[512];
    snprintf(qp, sizeof qp, "%s/bench_sam_vit_i8_%d.safetensors", tmp, (int)getpid());
    snprintf(fp, sizeof fp, "%s/bench_sam_vit_f32_%d.safetensors", tmp, (int)getpid());
    ts_tensor_map *qm = NULL;
    if (ts_vit_i8_save(qp, &b.m, depth, C, step, zp, 0, NULL, NULL) ||
        ts_safetensors_save(fp, &b.m, 0, NULL, NULL) || ts_map_load(qp, &qm) ||
        ts_int8_model_expand(qm) || ts_sam_vit_load(qm, &qe)) {
        fprintf(stderr, "bench_sam_vit_i8: %s\n", tinysam_last_error());
        remove(qp);
        remove(fp);
        return 1;
    }
    const long long qs = test_file_size(qp), fs = test_file_size(fp);
    remove(qp);
    remove(fp);
    char cpu[256];
    cpu_name(cpu, sizeof cpu);
    double la[3] = {0};
    FILE *lf = fopen("/proc/loadavg", "r");
    if (lf) {
        if (fscanf(lf, "%lf %lf %lf", &la[0], &la[1], &la[2]) != 3) la[0] = -1;
        fclose(lf);
    }
    printf("SAM ViT-%s int8 vs float encoder on %s (load average %.2f): isa %s, int8 kernel %s, "
           "%d of %d linear layers int8, %d runs per setting (alternating)\n",
           which, cpu, la[0], ts_nn_isa_name(), ts_gemm_i8_isa_name(), ts_sam_vit_n_int8(qe), nl,
           runs);
    printf("  file: int8 %.1f MB, float32 safetensors %.1f MB (encoder only): ratio %.3f\n",
           qs / 1e6, fs / 1e6, (double)qs / (double)fs);
    for (int nt = 1; nt <= 2; nt++) {
        tinysam_set_num_threads(nt);
        for (int r = 0; r < runs; r++) {
            double t0 = bench_now_s(), c0 = cpu_s();
            if (ts_sam_vit_forward(fe, in, of)) return 1;
            double t1 = bench_now_s(), c1 = cpu_s();
            if (ts_sam_vit_forward(qe, in, oq)) return 1;
            tf[r] = t1 - t0;
            tq[r] = bench_now_s() - t1;
            cf[r] = c1 - c0;
            cq[r] = cpu_s() - c1;
        }
        double mf = bench_median(tf, runs), mq = bench_median(tq, runs);
        double mcf = bench_median(cf, runs), mcq = bench_median(cq, runs);
        printf("  threads %d: float median %.0f ms, int8 median %.0f ms: int8 %.2fx the float "
               "speed (embedding cosine %.5f)\n"
               "             CPU time: float %.0f ms, int8 %.0f ms: %.2fx\n",
               nt, mf * 1e3, mq * 1e3, mf / mq, test_cosine(of, oq, n_out), mcf * 1e3, mcq * 1e3,
               mcf / mcq);
    }
    printf("  peak RSS %.0f MB\n", bench_peak_rss_mb());
    free(in);
    free(of);
    free(oq);
    free(mn);
    free(mx);
    free(step);
    free(zp);
    free(tf);
    free(tq);
    free(cf);
    free(cq);
    ts_sam_vit_free(qe);
    ts_sam_vit_free(fe);
    ts_map_free(qm);
    bench_vit_free(&b);
    return 0;
}
