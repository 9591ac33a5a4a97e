/* bench_sam_vit_i8.c - the W8A8 SAM ViT encoder (quant/int8_vit.h) against the float one at
 * the real ViT-B shapes (768 wide, 12 blocks, 12 heads, global attention at 2,5,8,11), random
 * weights generated here in memory (no checkpoint): the int8 file is written with steps from
 * one tapped float pass over the random input (absmax of each layer's input: this measures
 * speed, not calibration quality), loaded back as every command loads it, and both encoders
 * run alternately; median wall time at 1 and 2 threads, the int8 / float speed ratio, the
 * embedding cosine, the process CPU time of each pass (the fairer figure on a loaded machine),
 * and the file sizes (int8 file vs the float32 safetensors of the same map).
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
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* CPU time of the whole process (every thread), seconds: on a shared machine the 1-thread
 * CPU time is the figure that other processes disturb least. */
static double cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float urand(void) { /* xorshift64*, uniform in [-1, 1) */
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    return (float)((g_rng * 2685821657736338717ull) >> 40) / 8388608.0f - 1.0f;
}

typedef struct {
    ts_tensor_map m;
    int cap;
} bench_map;

/* Adds a tensor filled with center + scale * U(-1, 1). */
static int add(bench_map *b, const char *name, float center, float scale, int ndim, int d0, int d1,
               int d2, int d3) {
    if (b->m.n == b->cap) return -1;
    ts_tensor *t = &b->m.t[b->m.n];
    memset(t, 0, sizeof(*t));
    int d[4] = {d0, d1, d2, d3};
    t->ndim = ndim;
    t->numel = 1;
    for (int i = 0; i < ndim; i++)
        t->numel *= (t->shape[i] = d[i]);
    t->dtype = t->file_dtype = TS_DTYPE_F32;
    t->name = strdup(name);
    float *p = malloc(sizeof(float) * (size_t)t->numel);
    if (!t->name || !p) return -1;
    for (int64_t i = 0; i < t->numel; i++)
        p[i] = center + scale * urand();
    t->data = p;
    b->m.n++;
    return 0;
}

static int build(bench_map *b, int C, int depth, const int *glob, int hd) {
    b->cap = 8 + depth * 16;
    b->m.t = calloc((size_t)b->cap, sizeof(ts_tensor));
    if (!b->m.t) return -1;
    const int H = 4 * C;
    const float sc = 1.0f / sqrtf((float)C), sh = 1.0f / sqrtf((float)H);
    char n[128];
    int rc = 0;
    rc |= add(b, "image_encoder.patch_embed.proj.weight", 0, 1.0f / sqrtf(768.0f), 4, C, 3, 16, 16);
    rc |= add(b, "image_encoder.patch_embed.proj.bias", 0, 0.02f, 1, C, 0, 0, 0);
    rc |= add(b, "image_encoder.pos_embed", 0, 0.02f, 4, 1, 64, 64, C);
    for (int k = 0; k < depth && !rc; k++) {
        int g = k == glob[0] || k == glob[1] || k == glob[2] || k == glob[3];
        int len = g ? 127 : 27;
#define P(s) (snprintf(n, sizeof n, "image_encoder.blocks.%d.%s", k, s), n)
        rc |= add(b, P("norm1.weight"), 1, 0.1f, 1, C, 0, 0, 0);
        rc |= add(b, P("norm1.bias"), 0, 0.1f, 1, C, 0, 0, 0);
        rc |= add(b, P("attn.rel_pos_h"), 0, 0.1f, 2, len, hd, 0, 0);
        rc |= add(b, P("attn.rel_pos_w"), 0, 0.1f, 2, len, hd, 0, 0);
        rc |= add(b, P("attn.qkv.weight"), 0, sc, 2, 3 * C, C, 0, 0);
        rc |= add(b, P("attn.qkv.bias"), 0, 0.02f, 1, 3 * C, 0, 0, 0);
        rc |= add(b, P("attn.proj.weight"), 0, sc, 2, C, C, 0, 0);
        rc |= add(b, P("attn.proj.bias"), 0, 0.02f, 1, C, 0, 0, 0);
        rc |= add(b, P("norm2.weight"), 1, 0.1f, 1, C, 0, 0, 0);
        rc |= add(b, P("norm2.bias"), 0, 0.1f, 1, C, 0, 0, 0);
        rc |= add(b, P("mlp.lin1.weight"), 0, sc, 2, H, C, 0, 0);
        rc |= add(b, P("mlp.lin1.bias"), 0, 0.02f, 1, H, 0, 0, 0);
        rc |= add(b, P("mlp.lin2.weight"), 0, sh, 2, C, H, 0, 0);
        rc |= add(b, P("mlp.lin2.bias"), 0, 0.02f, 1, C, 0, 0, 0);
#undef P
    }
    rc |= add(b, "image_encoder.neck.0.weight", 0, sc, 4, 256, C, 1, 1);
    rc |= add(b, "image_encoder.neck.1.weight", 1, 0.1f, 1, 256, 0, 0, 0);
    rc |= add(b, "image_encoder.neck.1.bias", 0, 0.1f, 1, 256, 0, 0, 0);
    rc |= add(b, "image_encoder.neck.2.weight", 0, 1.0f / 48.0f, 4, 256, 256, 3, 3);
    rc |= add(b, "image_encoder.neck.3.weight", 1, 0.1f, 1, 256, 0, 0, 0);
    rc |= add(b, "image_encoder.neck.3.bias", 0, 0.1f, 1, 256, 0, 0, 0);
    return rc;
}

static void free_map(bench_map *b) {
    for (int i = 0; i < b->m.n; i++) {
        free(b->m.t[i].name);
        free(b->m.t[i].data);
    }
    free(b->m.t);
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

static long long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) ? -1 : (long long)st.st_size;
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
    int runs = argc > 1 ? atoi(argv[1]) : 3;
    if (runs < 1) runs = 1;
    const char *which = argc > 2 ? argv[2] : "B";
    static const int gb[] = {2, 5, 8, 11}, gl[] = {5, 11, 17, 23}, gh[] = {7, 15, 23, 31};
    int C = 768, depth = 12, heads = 12;
    const int *glob = gb;
    if (!strcmp(which, "L")) C = 1024, depth = 24, heads = 16, glob = gl;
    if (!strcmp(which, "H")) C = 1280, depth = 32, heads = 16, glob = gh;
    bench_map b = {0};
    if (build(&b, C, depth, glob, C / heads)) {
        fprintf(stderr, "bench_sam_vit_i8: out of memory building the weights\n");
        return 1;
    }
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
    for (size_t i = 0; i < n_in; i++) in[i] = 2.0f * urand();
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
    const long long qs = file_size(qp), fs = file_size(fp);
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
        double ab = 0, aa = 0, bb = 0;
        for (size_t i = 0; i < n_out; i++) {
            ab += (double)of[i] * oq[i];
            aa += (double)of[i] * of[i];
            bb += (double)oq[i] * oq[i];
        }
        printf("  threads %d: float median %.0f ms, int8 median %.0f ms: int8 %.2fx the float "
               "speed (embedding cosine %.5f)\n"
               "             CPU time: float %.0f ms, int8 %.0f ms: %.2fx\n",
               nt, mf * 1e3, mq * 1e3, mf / mq, ab / sqrt(aa * bb + 1e-30), mcf * 1e3, mcq * 1e3,
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
    free_map(&b);
    return 0;
}
