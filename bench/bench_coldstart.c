/* bench_coldstart.c - issue 20's cold start, as a new user meets it: every figure is the
 * median over fresh processes (the model file in the page cache, as on any second run).
 *
 *   bench_coldstart [--runs N] [--threads T] [--json]   (BUILD: where tinysam is, default build)
 *
 * The models: the fixture's .pth, the float safetensors `tinysam convert` makes of it and
 * the int8 safetensors `tinysam quantize` makes (calibrated on picture1), both written to a
 * temporary folder first. Per model, N child processes of this program (--child MODEL)
 * each time, through the library: the model load, the first encode and a warm one (picture1
 * again after another image: tinysam_encode includes the decoder's per-image work,
 * SamPredictor.set_image's share: the embedding's layer-0 projections, made there so that the
 * first decode need not, and skipped for the embedding it was last made for),
 * the first decode (one point, masks at 769x770) and a warm one; then N
 * one-shot `tinysam embed` (the encoder alone: no decoder work) and `tinysam segment` runs of
 * picture1, wall time from fork to
 * exit, and segment's own "write" time (its four PNGs). Each figure is printed beside the
 * issue's goal as a ratio. Then, in this process, the outputs alone: segment's four PNGs
 * (three 1-bit masks and the overlay, written to files) against the same four written the
 * way they were before issue 20 (libpng, level 3, adaptive filters, 8-bit masks), and the
 * embedding's .npy against one write() of its bytes; wall and CPU time (all threads), the
 * two ways alternating. Measures only: nothing here changes how the library starts. */
#include "bench_util.h"
#include "io/image.h"
#include "io/npy.h"
#include "model/sam.h"
#include "test.h"
#include "tinysam.h"

#include <png.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_RUNS 64
#define POINT_X 380.0f
#define POINT_Y 300.0f

/* ---------------------------------------------------------------- child: one process */

/* CPU time of this process (all threads), ms. */
static double cpu_ms(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

/* tinysam_encode's steps, timed: *total the whole call, *encoder without the decoder's
 * per-image preparation (what `tinysam embed` runs). Same embedding as tinysam_encode. */
static int encode_timed(tinysam_model *m, const tinysam_image *img, tinysam_embedding **e,
                        double *total, double *encoder) {
    double t0 = ts_now_ms();
    ts_encoder_input in;
    int rc = ts_encoder_input_make(img, &in);
    if (!rc) rc = ts_encode_input(m, &in, e);
    ts_encoder_input_free(&in);
    *encoder = ts_now_ms() - t0;
    if (!rc) rc = ts_embedding_prepare(m, *e);
    *total = ts_now_ms() - t0;
    return rc;
}

/* Prints "load first_enc warm_enc first_dec warm_dec load_cpu first_encoder warm_encoder" in
 * ms, or fails. The warm encode is of picture1 again but after another image (picture1
 * upside down, the same size): re-encoding the image just encoded would find the decoder's
 * preparation already made for that embedding and skip it, which no new image does. */
static int child(const char *model, int threads) {
    tinysam_set_num_threads(threads);
    tinysam_image img, flip = {0};
    if (tinysam_image_load(fixture("images/picture1.jpg"), 0, &img)) goto fail_early;
    flip = img;
    size_t row = (size_t)img.width * 3;
    flip.rgb = malloc(row * img.height);
    if (!flip.rgb) goto fail_early;
    for (int y = 0; y < img.height; y++)
        memcpy(flip.rgb + (size_t)y * row, img.rgb + (size_t)(img.height - 1 - y) * row, row);
    double t0 = ts_now_ms(), c0 = cpu_ms();
    tinysam_model *m = NULL;
    if (tinysam_model_load(model, &m)) goto fail_early;
    double t_load = ts_now_ms() - t0, c_load = cpu_ms() - c0, t_enc[3], t_encoder[3], t_dec[3];
    tinysam_embedding *e = NULL;
    for (int k = 0; k < 3; k++) { /* picture1 (first), upside down (untimed), picture1 (warm) */
        tinysam_embedding_free(e);
        e = NULL;
        if (encode_timed(m, k == 1 ? &flip : &img, &e, &t_enc[k], &t_encoder[k])) goto fail_early;
    }
    float pt[2] = {POINT_X, POINT_Y};
    int lab[1] = {1};
    tinysam_prompt p = {.n_points = 1, .points = pt, .labels = lab};
    for (int k = 0; k < 3; k++) {
        tinysam_prediction pred;
        t0 = ts_now_ms();
        if (tinysam_predict(m, e, &p, TINYSAM_PREDICT_MASKS, &pred)) goto fail_early;
        t_dec[k] = ts_now_ms() - t0;
        tinysam_prediction_free(&pred);
    }
    /* the warm decode: the faster of two (a decode is short enough for one hiccup to show) */
    printf("%.3f %.3f %.3f %.3f %.3f %.3f %.3f %.3f\n", t_load, t_enc[0], t_enc[2], t_dec[0],
           t_dec[1] < t_dec[2] ? t_dec[1] : t_dec[2], c_load, t_encoder[0], t_encoder[2]);
    tinysam_embedding_free(e);
    tinysam_model_free(m);
    tinysam_image_free(&img);
    free(flip.rgb);
    return 0;
fail_early:
    fprintf(stderr, "bench_coldstart child: %s\n", tinysam_last_error());
    return 1;
}

/* ---------------------------------------------------------------- parent */

/* Runs argv with stdout to out_path (NULL: /dev/null); wall time in ms, -1 on failure.
 * *rss_mb: the child's peak RSS. */
static double run(char *const argv[], const char *out_path, double *rss_mb) {
    double t0 = ts_now_ms();
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        int fd = open(out_path ? out_path : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) dup2(fd, 1);
        if (fd >= 0 && !out_path) dup2(fd, 2); /* convert's and quantize's progress */
        execv(argv[0], argv);
        _exit(127);
    }
    int st;
    struct rusage ru;
    if (wait4(pid, &st, 0, &ru) != pid) return -1;
    double wall = ts_now_ms() - t0;
    if (rss_mb) *rss_mb = (double)ru.ru_maxrss / 1024.0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "bench_coldstart: %s %s failed (status %d)\n", argv[0], argv[1], st);
        return -1;
    }
    return wall;
}

static char *slurp(const char *path) {
    uint8_t *d = NULL;
    size_t n = 0;
    if (ts_read_file(path, 1 << 20, &d, &n)) return NULL;
    char *s = realloc(d, n + 1);
    if (!s) {
        free(d);
        return NULL;
    }
    s[n] = 0;
    return s;
}

typedef struct {
    const char *name, *path;
    double load, enc1, encw, dec1, decw; /* library, medians over the children */
    double encoder1, encoderw;           /* the encodes without the decoder's preparation */
    double load_cpu;                     /* the load's CPU time (all threads) */
    double embed, segment, seg_write, embed_rss;
    int ok;
} model_figs;

static double med(double *v, int n) { return n > 0 ? bench_median(v, n) : -1; }

static void measure(model_figs *f, const char *self, const char *cli, int runs, int threads) {
    double v[8][MAX_RUNS], emb[MAX_RUNS], seg[MAX_RUNS], wr[MAX_RUNS], rss[MAX_RUNS];
    int n = 0, ne = 0, ns = 0, nw = 0;
    char th[16], out[4200], npy[4200], dir[4200];
    snprintf(th, sizeof th, "%d", threads);
    snprintf(out, sizeof out, "%s", tmp_path("coldstart_child.txt"));
    snprintf(npy, sizeof npy, "%s", tmp_path("coldstart_embedding.npy"));
    snprintf(dir, sizeof dir, "%s", tmp_path("coldstart_segment"));
    char *img = (char *)fixture("images/picture1.jpg");
    for (int r = 0; r < runs; r++) {
        /* alternating the three kinds of process, so that a busy spell hits all alike */
        char *ca[] = {(char *)self, "--child", (char *)f->path, "--threads", th, NULL};
        if (run(ca, out, NULL) >= 0) {
            char *s = slurp(out);
            if (s && sscanf(s, "%lf %lf %lf %lf %lf %lf %lf %lf", &v[0][n], &v[1][n], &v[2][n],
                            &v[3][n], &v[4][n], &v[5][n], &v[6][n], &v[7][n]) == 8)
                n++;
            free(s);
        }
        char *ea[] = {(char *)cli, "embed", "--model", (char *)f->path, "--image", img, "--out",
                      npy, "--threads", th, NULL};
        double t = run(ea, NULL, &rss[ne]);
        if (t >= 0) emb[ne++] = t;
        char *sa[] = {(char *)cli, "segment", "--model", (char *)f->path, "--image", img,
                      "--point", "380,300", "--out-dir", dir, "--threads", th, NULL};
        t = run(sa, out, NULL);
        if (t >= 0) {
            seg[ns++] = t;
            char *s = slurp(out), *w = s ? strstr(s, "\"write\": ") : NULL;
            if (w && sscanf(w + 9, "%lf", &wr[nw]) == 1) nw++;
            free(s);
        }
    }
    f->ok = n > 0 && ne > 0 && ns > 0;
    f->load = med(v[0], n);
    f->enc1 = med(v[1], n);
    f->encw = med(v[2], n);
    f->dec1 = med(v[3], n);
    f->decw = med(v[4], n);
    f->load_cpu = med(v[5], n);
    f->encoder1 = med(v[6], n);
    f->encoderw = med(v[7], n);
    f->embed = med(emb, ne);
    f->embed_rss = med(rss, ne);
    f->segment = med(seg, ns);
    f->seg_write = med(wr, nw);
}

/* "met" when r is within its goal */
static const char *verdict(double r, double goal, int at_most) {
    if (r < 0) return "-";
    return (at_most ? r <= goal : r >= goal) ? "met" : "NOT met";
}

static void cpu_name(char *buf, size_t n) {
    snprintf(buf, n, "unknown CPU");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f) return;
    char line[512], model[256] = "", family[32] = "?";
    while (fgets(line, sizeof line, f)) {
        char *c = strchr(line, ':');
        if (!c) continue;
        c += 2;
        c[strcspn(c, "\n")] = 0;
        if (!model[0] && !strncmp(line, "model name", 10)) snprintf(model, sizeof model, "%s", c);
        if (!strncmp(line, "cpu family", 10)) snprintf(family, sizeof family, "%s", c);
    }
    fclose(f);
    snprintf(buf, n, "%s (family %s), %ld cores online", model, family,
             sysconf(_SC_NPROCESSORS_ONLN));
}

/* ---------------------------------------------------------------- outputs in-process */

/* The PNG writer as it was before issue 20 (the baseline): libpng, zlib level 3, libpng's
 * adaptive filters, masks as 8-bit grey. */
static int old_png_write(const char *path, const uint8_t *pix, int w, int h, int channels) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
    png_infop info = png ? png_create_info_struct(png) : NULL;
    if (!png || !info || setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, info ? &info : NULL);
        fclose(f);
        return -1;
    }
    png_init_io(png, f);
    png_set_compression_level(png, 3);
    png_set_IHDR(png, info, (png_uint_32)w, (png_uint_32)h, 8,
                 channels == 1 ? PNG_COLOR_TYPE_GRAY : PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE,
                 PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    for (int y = 0; y < h; y++) png_write_row(png, pix + (size_t)y * w * channels);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return fclose(f);
}

typedef struct {
    double png_new, png_old, png_new_cpu, png_old_cpu, npy, npy_raw;
    long png_new_bytes, png_old_bytes;
    int ok;
} out_figs;

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) ? 0 : (long)st.st_size;
}

static void measure_outputs(out_figs *o, const char *model, int runs, int threads) {
    memset(o, 0, sizeof *o);
    tinysam_set_num_threads(threads);
    tinysam_model *m = NULL;
    tinysam_image img;
    tinysam_embedding *e = NULL;
    tinysam_prediction p;
    float pt[2] = {POINT_X, POINT_Y};
    int lab[1] = {1};
    tinysam_prompt pr = {.n_points = 1, .points = pt, .labels = lab};
    if (tinysam_image_load(fixture("images/picture1.jpg"), 0, &img) || tinysam_model_load(model, &m) ||
        tinysam_encode(m, &img, &e) || tinysam_predict(m, e, &pr, TINYSAM_PREDICT_MASKS, &p)) {
        fprintf(stderr, "bench_coldstart: %s\n", tinysam_last_error());
        return;
    }
    int W = p.width, H = p.height;
    size_t plane = (size_t)W * H;
    /* the overlay: the best mask tinted over the photo, as segment draws it */
    uint8_t *ov = malloc(plane * 3), *grey = malloc(plane * 3);
    for (size_t i = 0; ov && i < plane * 3; i++) {
        int in = p.masks[(size_t)p.best * plane + i / 3];
        static const uint8_t blue[3] = {30, 144, 255};
        ov[i] = in ? (uint8_t)((img.rgb[i] + blue[i % 3]) / 2) : img.rgb[i];
    }
    char path[4][4200];
    for (int k = 0; k < 4; k++) {
        char name[64];
        snprintf(name, sizeof name, k < 3 ? "coldstart_mask_%d.png" : "coldstart_overlay.png", k);
        snprintf(path[k], sizeof path[k], "%s", tmp_path(name));
    }
    double a[MAX_RUNS], b[MAX_RUNS], ac[MAX_RUNS], bc[MAX_RUNS], c[MAX_RUNS], d[MAX_RUNS];
    int ok = ov && grey;
    char npy[4200];
    snprintf(npy, sizeof npy, "%s", tmp_path("coldstart_out.npy"));
    const int64_t shape[4] = {1, TINYSAM_EMBED_DIM, TINYSAM_EMBED_SIDE, TINYSAM_EMBED_SIDE};
    size_t nbytes = (size_t)TINYSAM_EMBED_DIM * TINYSAM_EMBED_SIDE * TINYSAM_EMBED_SIDE * 4;
    for (int r = 0; ok && r < runs; r++) {
        double t0 = ts_now_ms(), c0 = cpu_ms();
        for (int k = 0; k < 3; k++) ok &= ts_png_write_mask(path[k], p.masks + k * plane, W, H) == 0;
        ok &= ts_png_write(path[3], ov, W, H, 3) == 0;
        a[r] = ts_now_ms() - t0;
        ac[r] = cpu_ms() - c0;
        if (r == 0)
            for (int k = 0; k < 4; k++) o->png_new_bytes += file_size(path[k]);
        t0 = ts_now_ms();
        c0 = cpu_ms();
        for (int k = 0; k < 3; k++) { /* as segment did: 0/1 to 0/255 first */
            for (size_t i = 0; i < plane; i++) grey[i] = p.masks[k * plane + i] ? 255 : 0;
            ok &= old_png_write(path[k], grey, W, H, 1) == 0;
        }
        ok &= old_png_write(path[3], ov, W, H, 3) == 0;
        b[r] = ts_now_ms() - t0;
        bc[r] = cpu_ms() - c0;
        if (r == 0)
            for (int k = 0; k < 4; k++) o->png_old_bytes += file_size(path[k]);
        t0 = ts_now_ms();
        ok &= ts_npy_save(npy, TS_DTYPE_F32, 4, shape, tinysam_embedding_data(e)) == 0;
        c[r] = ts_now_ms() - t0;
        t0 = ts_now_ms();
        int fd = open(npy, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        ok &= fd >= 0 && write(fd, tinysam_embedding_data(e), nbytes) == (ssize_t)nbytes;
        if (fd >= 0) close(fd);
        d[r] = ts_now_ms() - t0;
    }
    for (int k = 0; k < 4; k++) unlink(path[k]);
    unlink(npy);
    if (ok) {
        o->png_new = bench_median(a, runs);
        o->png_old = bench_median(b, runs);
        o->png_new_cpu = bench_median(ac, runs);
        o->png_old_cpu = bench_median(bc, runs);
        o->npy = bench_median(c, runs);
        o->npy_raw = bench_median(d, runs);
        o->ok = 1;
    }
    free(ov);
    free(grey);
    tinysam_prediction_free(&p);
    tinysam_embedding_free(e);
    tinysam_model_free(m);
    tinysam_image_free(&img);
}

int main(int argc, char **argv) {
    int runs = 5, threads = 2, json = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--child") && i + 1 < argc) {
            const char *model = argv[++i];
            if (i + 2 < argc && !strcmp(argv[i + 1], "--threads")) threads = atoi(argv[i + 2]);
            return child(model, threads);
        }
        if (!strcmp(argv[i], "--runs") && i + 1 < argc) runs = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--json")) json = 1;
        else {
            fprintf(stderr, "usage: bench_coldstart [--runs N] [--threads T] [--json]\n");
            return 2;
        }
    }
    if (runs < 1) runs = 1;
    if (runs > MAX_RUNS) runs = MAX_RUNS;
    const char *pth = fixture("models/tinysam_vit_t_random.pth");
    if (!fixture_exists("models/tinysam_vit_t_random.pth")) {
        fprintf(stderr, "bench_coldstart: fixtures missing (%s)\n", pth);
        return 1;
    }
    char self[4096], cli[4200];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) return 1;
    self[sl] = 0;
    const char *b = getenv("BUILD");
    snprintf(cli, sizeof cli, "%s/tinysam", b && *b ? b : "build");
    if (access(cli, X_OK)) {
        fprintf(stderr, "bench_coldstart: %s not built\n", cli);
        return 1;
    }
    char st[4200], q8[4200], th[16];
    snprintf(st, sizeof st, "%s", tmp_path("coldstart_float.safetensors"));
    snprintf(q8, sizeof q8, "%s", tmp_path("coldstart_int8.safetensors"));
    snprintf(th, sizeof th, "%d", threads);
    char *conv[] = {cli, "convert", (char *)pth, st, NULL};
    /* mse: the step method does not change the int8 model's speed, and hessian costs minutes */
    char *quant[] = {cli, "quantize", "--model", st, "--calib",
                     (char *)fixture("images/picture1.jpg"), "--method", "mse", "--threads", th,
                     "--out", q8, NULL};
    if (run(conv, NULL, NULL) < 0 || run(quant, NULL, NULL) < 0) return 1;

    model_figs f[3] = {{.name = ".pth (fixture)", .path = pth},
                       {.name = "float safetensors", .path = st},
                       {.name = "int8 safetensors", .path = q8}};
    for (int i = 0; i < 3; i++) measure(&f[i], self, cli, runs, threads);
    unlink(st);
    unlink(q8);
    out_figs of;
    measure_outputs(&of, pth, runs * 3 > MAX_RUNS ? MAX_RUNS : runs * 3, threads);

    char cpu[400];
    cpu_name(cpu, sizeof cpu);
    double la[3] = {-1, -1, -1};
    if (getloadavg(la, 3) < 0) la[0] = -1;
    printf("cpu: %s; %d threads; median of %d fresh processes each; load average %.2f\n", cpu,
           threads, runs, la[0]);
    printf("  %-20s %9s %9s %9s %7s %9s %9s %7s %10s %10s %8s\n", "model", "load", "enc 1st",
           "enc warm", "ratio", "dec 1st", "dec warm", "ratio", "embed 1x", "segment 1x",
           "PNGs");
    for (int i = 0; i < 3; i++) {
        if (!f[i].ok) {
            printf("  %-20s (failed)\n", f[i].name);
            continue;
        }
        printf("  %-20s %6.1f ms %6.0f ms %6.0f ms %6.2fx %6.1f ms %6.1f ms %6.2fx %7.0f ms %7.0f ms "
               "%5.1f ms\n",
               f[i].name, f[i].load, f[i].enc1, f[i].encw, f[i].enc1 / f[i].encw, f[i].dec1,
               f[i].decw, f[i].dec1 / f[i].decw, f[i].embed, f[i].segment, f[i].seg_write);
    }
    for (int i = 0; i < 3; i++)
        if (f[i].ok)
            printf("  %-20s encoder alone (no decoder preparation): first %.0f ms, warm %.0f ms "
                   "(%.2fx)\n",
                   f[i].name, f[i].encoder1, f[i].encoderw, f[i].encoder1 / f[i].encoderw);
    printf("  goals (issue 20):\n");
    for (int i = 0; i < 3; i++) {
        if (!f[i].ok) continue;
        double goal = i == 0 ? 60 : 20;
        printf("    load, %-18s %6.1f ms / %2.0f ms = %.2f (goal <= 1): %s  (CPU %.1f ms)\n",
               f[i].name, f[i].load, goal, f[i].load / goal, verdict(f[i].load / goal, 1, 1),
               f[i].load_cpu);
    }
    for (int i = 0; i < 3; i++) {
        if (!f[i].ok) continue;
        printf("    first / warm encode, %-18s %.2fx (goal <= 1.1): %s;  first / warm decode "
               "%.2fx (goal <= 1.2): %s\n",
               f[i].name, f[i].enc1 / f[i].encw, verdict(f[i].enc1 / f[i].encw, 1.1, 1),
               f[i].dec1 / f[i].decw, verdict(f[i].dec1 / f[i].decw, 1.2, 1));
    }
    if (f[1].ok) {
        /* embed runs the encoder alone: against the warm encode without the preparation */
        double r = f[1].embed / f[1].encoderw;
        printf("    one-shot embed / warm encode (encoder alone, as embed), float safetensors: "
               "%.0f / %.0f ms = %.2fx (goal <= 1.25): %s\n",
               f[1].embed, f[1].encoderw, r, verdict(r, 1.25, 1));
    }
    if (f[0].ok && f[1].ok) {
        double goal = 1.25 * f[1].encoderw + 60, r = f[0].embed / goal;
        printf("    one-shot embed, .pth: %.0f ms / (1.25 x warm encode + 60 ms = %.0f ms) = %.2f "
               "(goal <= 1): %s\n",
               f[0].embed, goal, r, verdict(r, 1, 1));
    }
    if (f[1].ok && f[2].ok) {
        double r = f[1].embed / f[2].embed;
        printf("    one-shot embed, float / int8 safetensors: %.0f / %.0f ms = %.2fx "
               "(goal >= 1.6): %s\n",
               f[1].embed, f[2].embed, r, verdict(r, 1.6, 0));
    }
    for (int i = 0; i < 3; i++)
        if (f[i].ok && f[i].seg_write >= 0)
            printf("    segment's four PNGs (write), %-18s %5.1f ms / 15 ms = %.2f (goal <= 1): "
                   "%s\n",
                   f[i].name, f[i].seg_write, f[i].seg_write / 15, verdict(f[i].seg_write / 15, 1, 1));
    for (int i = 0; i < 3; i++)
        if (f[i].ok)
            printf("    peak RSS of one-shot embed, %-18s %4.0f MB (bound 200 MB): %s\n", f[i].name,
                   f[i].embed_rss, verdict(f[i].embed_rss, 200, 1));
    if (of.ok) {
        printf("  outputs in one process (median of %d, alternating):\n", runs * 3 > MAX_RUNS ? MAX_RUNS : runs * 3);
        printf("    segment's four PNGs: %.1f ms wall, %.1f ms CPU, %ld bytes; before issue 20: "
               "%.1f ms wall, %.1f ms CPU, %ld bytes: %.2fx faster (wall), %.2fx less CPU\n",
               of.png_new, of.png_new_cpu, of.png_new_bytes, of.png_old, of.png_old_cpu,
               of.png_old_bytes, of.png_old / of.png_new, of.png_old_cpu / of.png_new_cpu);
        printf("    the four PNGs, %.1f ms wall / 15 ms = %.2f (goal <= 1): %s\n", of.png_new,
               of.png_new / 15, verdict(of.png_new / 15, 1, 1));
        printf("    embedding .npy (4 MB): %.2f ms; one write() of its bytes: %.2f ms: %.2fx\n",
               of.npy, of.npy_raw, of.npy / of.npy_raw);
    }
    if (json) {
        printf("{\"runs\": %d, \"threads\": %d", runs, threads);
        static const char *key[3] = {"pth", "st", "int8"};
        for (int i = 0; i < 3; i++)
            if (f[i].ok)
                printf(", \"load_%s_ms\": %.2f, \"encode_first_%s_ms\": %.1f, \"encode_warm_%s_ms\": "
                       "%.1f, \"decode_first_%s_ms\": %.2f, \"decode_warm_%s_ms\": %.2f, "
                       "\"embed_oneshot_%s_ms\": %.1f, \"segment_oneshot_%s_ms\": %.1f, "
                       "\"segment_write_%s_ms\": %.2f, \"embed_rss_%s_mb\": %.0f, "
                       "\"encoder_first_%s_ms\": %.1f, \"encoder_warm_%s_ms\": %.1f",
                       key[i], f[i].load, key[i], f[i].enc1, key[i], f[i].encw, key[i], f[i].dec1,
                       key[i], f[i].decw, key[i], f[i].embed, key[i], f[i].segment, key[i],
                       f[i].seg_write, key[i], f[i].embed_rss, key[i], f[i].encoder1, key[i],
                       f[i].encoderw);
        if (of.ok)
            printf(", \"png4_ms\": %.2f, \"png4_cpu_ms\": %.2f, \"png4_before_ms\": %.2f, "
                   "\"png4_before_cpu_ms\": %.2f, \"npy_ms\": %.2f, \"npy_raw_write_ms\": %.2f",
                   of.png_new, of.png_new_cpu, of.png_old, of.png_old_cpu, of.npy, of.npy_raw);
        printf("}\n");
    }
    return f[0].ok && f[1].ok && f[2].ok ? 0 : 1;
}
