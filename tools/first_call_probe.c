/* first_call_probe.c - one fresh process's start-up figures (issue 20): model load, first and
 * second encode, first and second decode (one point), peak RSS. Run it several times and take
 * medians (tools/first_call_probe.sh); the ratios first/second are within one process.
 *   cc -O2 -Iinclude tools/first_call_probe.c build/libtinysam.a -ljpeg -lpng -lz -lxxhash \
 *      -lm -lpthread -o build/first_call_probe
 *   build/first_call_probe MODEL IMAGE [THREADS]   (THREADS default 2)
 * Prints one line: load_ms enc1_ms enc2_ms dec1_ms dec2_ms peak_rss_mb, then the same five
 * phases in process CPU ms (all threads, the load's helper threads included): on a busy
 * machine the CPU times say more than the wall times. */
#include "tinysam.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <time.h>

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static double cpu_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}

static int fail(const char *what) {
    fprintf(stderr, "first_call_probe: %s: %s\n", what, tinysam_last_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: first_call_probe MODEL IMAGE [THREADS]\n");
        return 2;
    }
    tinysam_set_num_threads(argc > 3 ? atoi(argv[3]) : 2);
    tinysam_image img;
    if (tinysam_image_load(argv[2], 0, &img)) return fail(argv[2]);
    tinysam_model *m = NULL;
    tinysam_embedding *e1 = NULL, *e2 = NULL;
    double t[6], c[6];
    t[0] = now_ms();
    c[0] = cpu_ms();
    if (tinysam_model_load(argv[1], &m)) return fail(argv[1]);
    t[1] = now_ms();
    c[1] = cpu_ms();
    if (tinysam_encode(m, &img, &e1)) return fail("encode");
    t[2] = now_ms();
    c[2] = cpu_ms();
    if (tinysam_encode(m, &img, &e2)) return fail("encode");
    t[3] = now_ms();
    c[3] = cpu_ms();
    float pt[2] = {0.4f * (float)img.width, 0.5f * (float)img.height};
    int lab = 1;
    tinysam_prompt pr = {.n_points = 1, .points = pt, .labels = &lab};
    tinysam_prediction p1, p2;
    if (tinysam_predict(m, e1, &pr, TINYSAM_PREDICT_MASKS, &p1)) return fail("predict");
    t[4] = now_ms();
    c[4] = cpu_ms();
    if (tinysam_predict(m, e1, &pr, TINYSAM_PREDICT_MASKS, &p2)) return fail("predict");
    t[5] = now_ms();
    c[5] = cpu_ms();
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("%.1f %.1f %.1f %.1f %.1f %.1f %.1f %.1f %.1f %.1f %.1f\n", t[1] - t[0], t[2] - t[1],
           t[3] - t[2], t[4] - t[3], t[5] - t[4], (double)ru.ru_maxrss / 1024.0, c[1] - c[0],
           c[2] - c[1], c[3] - c[2], c[4] - c[3], c[5] - c[4]);
    tinysam_prediction_free(&p1);
    tinysam_prediction_free(&p2);
    tinysam_embedding_free(e1);
    tinysam_embedding_free(e2);
    tinysam_model_free(m);
    tinysam_image_free(&img);
    return 0;
}
