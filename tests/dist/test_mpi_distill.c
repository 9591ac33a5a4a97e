/* test_mpi_distill.c - `tinysam distill` data-parallel under `mpirun -np R` (issue 16), on 6
 * images made here (3 fixture images, 3 generated; rectangle ground truths, one image without
 * a usable mask; the teacher's embeddings from `tinysam embed`):
 *   - R = 2, B = 2 (--train all), R = 3, B = 3 (crosses an epoch) and R = 3, B = 6 against one
 *     process with the same B: model and checkpoint files equal byte for byte (cmp), equal
 *     logged losses, and the output, data and working folders hold exactly the files of the
 *     one-process run (rank 0 alone writes);
 *   - SIGUSR1 to one rank: every rank stops after step 1, one checkpoint; resumed with another
 *     R it ends with the files of the uninterrupted run;
 *   - SIGKILL of one rank: the job exits non-zero within 60 s;
 *   - other options or another image list on one rank: a clear error from every rank, exit
 *     non-zero, no hang.
 * The one-process reference is the same binary under `mpirun -np 1` (the combine then adds
 * the slots in order on one rank; tests/dist/test_mpi_comm.c checks the combine alone). */
#include "cli_run.h"
#include "io/image.h"
#include "mpi_job.h"
#include "test.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdint.h>
#include <sys/stat.h>

#define TEACHER "models/tinysam_vit_t_random.pth"
#define STUDENT "distill/student_fp16.pth"

static char g_dir[512], g_bin[512], g_base[8192];
static int g_ready;

/* SA-1B-style ground truth of W x H rectangles (x0, y0, x1, y1 fractions), uncompressed RLE
 * (column-major, starting with a zero run), as tests/cli/test_distill.c writes it. */
static int write_gt(const char *path, int W, int H, int n, const double (*r)[4]) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\"image\": {\"width\": %d, \"height\": %d}, \"annotations\": [", W, H);
    for (int k = 0; k < n; k++) {
        int x0 = (int)(r[k][0] * W), y0 = (int)(r[k][1] * H), x1 = (int)(r[k][2] * W),
            y1 = (int)(r[k][3] * H);
        fprintf(f, "%s{\"id\": %d, \"segmentation\": {\"size\": [%d, %d], \"counts\": [%lld",
                k ? ", " : "", k, H, W, (long long)x0 * H + y0);
        for (int x = x0; x < x1; x++) {
            long long z = (x + 1 < x1) ? (H - y1) + y0
                                       : (long long)(H - y1) + (long long)(W - x1) * H;
            fprintf(f, ", %d, %lld", y1 - y0, z);
        }
        fprintf(f, "]}}");
    }
    fprintf(f, "]}\n");
    return fclose(f);
}

/* A generated picture: a gradient with a few filled rectangles. */
static int write_png(const char *path, int W, int H, int seed) {
    uint8_t *p = malloc((size_t)W * H * 3);
    if (!p) return -1;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            uint8_t *q = p + ((size_t)y * W + x) * 3;
            q[0] = (uint8_t)(x * 255 / W), q[1] = (uint8_t)(y * 255 / H);
            q[2] = (uint8_t)((x + y + 40 * seed) & 255);
            if ((x / (W / 4) + y / (H / 3) + seed) % 3 == 0) q[0] = 250, q[1] = 30 * seed, q[2] = 20;
        }
    int rc = ts_png_write(path, p, W, H, 3);
    free(p);
    return rc;
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...) {
    char cmd[8192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

static int setup(void) {
    if (g_ready) return g_ready > 0;
    g_ready = -1;
    const char *build = getenv("BUILD");
    char rel[1024];
    snprintf(rel, sizeof rel, "%s/tinysam", build && *build ? build : "build");
    if (!realpath(rel, g_bin)) return 0;
    const char *t = tmp_path("mpi_distill");
    sh("rm -rf '%s' && mkdir -p '%s'", t, t);
    if (!realpath(t, g_dir)) return 0;
    char p[1400], q[1400];
    const char *sub[] = {"images", "emb", "masks", "work"};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s", g_dir, sub[i]);
        if (mkdir(p, 0755)) return 0;
    }
    static const struct {
        const char *fixture, *name;
        int W, H;
    } img[6] = {{"images/shapes.png", "shapes.png", 640, 480},
                {"images/picture1.jpg", "picture1.jpg", 769, 770},
                {"images/shapes_rgba.png", "rgba.png", 640, 480},
                {NULL, "gen_a.png", 320, 240},
                {NULL, "gen_b.png", 240, 360},
                {NULL, "gen_c.png", 300, 300}};
    static const double rects[4][4] = {{0.1, 0.1, 0.4, 0.5}, {0.5, 0.2, 0.9, 0.6},
                                       {0.2, 0.6, 0.7, 0.95}, {0.05, 0.3, 0.6, 0.8}};
    static const double whole[1][4] = {{0, 0, 1, 1}}; /* > 90%: no usable mask */
    for (int i = 0; i < 6; i++) {
        snprintf(p, sizeof p, "%s/images/%s", g_dir, img[i].name);
        if (img[i].fixture ? cli_copy_file(fixture(img[i].fixture), p)
                           : write_png(p, img[i].W, img[i].H, i))
            return 0;
        char stem[64];
        snprintf(stem, sizeof stem, "%s", img[i].name);
        *strrchr(stem, '.') = 0;
        snprintf(q, sizeof q, "%s/masks/%s.json", g_dir, stem);
        if (i == 5 ? write_gt(q, img[i].W, img[i].H, 1, whole)
                   : write_gt(q, img[i].W, img[i].H, 2 + i % 3, rects + (i % 2)))
            return 0;
    }
    /* the teacher's embeddings, as a user makes them before distilling */
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "%s embed --model %s --images %s/images --out-dir %s/emb "
             "--threads 2 >/dev/null 2>&1", g_bin, fixture(TEACHER), g_dir, g_dir);
    if (system(cmd) != 0) return 0;
    char teacher[1024], student[1024];
    if (!realpath(fixture(TEACHER), teacher) || !realpath(fixture(STUDENT), student)) return 0;
    snprintf(g_base, sizeof g_base,
             "%s distill --teacher %s --student %s --images %s/images --embeddings %s/emb "
             "--masks %s/masks --prompts 2 --rounds 1 --warmup 0 --threads 1",
             g_bin, teacher, student, g_dir, g_dir, g_dir);
    g_ready = 1;
    return 1;
}

static char g_out[65536]; /* the last job's output */

static void slurp(const char *path, char *dst, size_t cap) {
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(dst, 1, cap - 1, f) : 0;
    dst[n] = 0;
    if (f) fclose(f);
}

/* mpirun -np R tinysam distill BASE --images-per-step B EXTRA --out DIR/NAME/s.safetensors,
 * in the empty working folder; returns the exit status (-2: killed at the deadline). */
static int run(int R, int B, const char *extra, const char *name) {
    char args[16384], log[1400], out[1400];
    snprintf(out, sizeof out, "%s/%s", g_dir, name);
    sh("rm -rf '%s' && mkdir -p '%s'", out, out);
    snprintf(log, sizeof log, "%s/%s.txt", g_dir, name);
    snprintf(args, sizeof args, "-np %d %s --images-per-step %d %s --out %s/s.safetensors", R,
             g_base, B, extra, out);
    char work[1400];
    snprintf(work, sizeof work, "%s/work", g_dir);
    int st = mpi_job_run(args, work, log, 240);
    slurp(log, g_out, sizeof g_out);
    return st;
}

static int same_file(const char *a, const char *b) {
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cmp -s '%s' '%s'", a, b);
    return system(cmd) == 0;
}

/* The sorted file names of a folder, one per line. */
static void listing(const char *dir, char *buf, size_t cap) {
    struct dirent **e = NULL;
    int n = scandir(dir, &e, NULL, alphasort);
    buf[0] = 0;
    for (int i = 0; i < n; i++) {
        if (strcmp(e[i]->d_name, ".") && strcmp(e[i]->d_name, ".."))
            snprintf(buf + strlen(buf), cap - strlen(buf), "%s\n", e[i]->d_name);
        free(e[i]);
    }
    free(e);
}

/* The log lines without their timings: from "images" up to "ms". */
static void log_losses(const char *path, char *buf, size_t cap) {
    static char raw[65536];
    slurp(path, raw, sizeof raw);
    buf[0] = 0;
    for (char *l = raw; *l;) {
        char *nl = strchr(l, '\n'), *a = strstr(l, "\"images\""), *b = strstr(l, ", \"ms\"");
        if (!nl) break;
        if (a && b && a < nl && b < nl)
            snprintf(buf + strlen(buf), cap - strlen(buf), "%.*s\n", (int)(b - a), a);
        l = nl + 1;
    }
}

/* Folder NAME holds the files of folder REF, equal byte for byte (the model, the checkpoint)
 * and in the logged losses. */
static void check_same_run(const char *ref, const char *name) {
    char a[1400], b[1400], la[4096], lb[4096];
    static char ka[65536], kb[65536];
    snprintf(a, sizeof a, "%s/%s", g_dir, ref);
    snprintf(b, sizeof b, "%s/%s", g_dir, name);
    listing(a, la, sizeof la);
    listing(b, lb, sizeof lb);
    CHECK(!strcmp(la, lb), "%s holds\n%s, the one-process run\n%s", name, lb, la);
    const char *files[] = {"s.safetensors", "s.safetensors.ckpt.safetensors"};
    for (int i = 0; i < 2; i++) {
        snprintf(a, sizeof a, "%s/%s/%s", g_dir, ref, files[i]);
        snprintf(b, sizeof b, "%s/%s/%s", g_dir, name, files[i]);
        CHECK(same_file(a, b), "%s/%s differs from the one-process run's", name, files[i]);
    }
    snprintf(a, sizeof a, "%s/%s/s.safetensors.log.jsonl", g_dir, ref);
    snprintf(b, sizeof b, "%s/%s/s.safetensors.log.jsonl", g_dir, name);
    log_losses(a, ka, sizeof ka);
    log_losses(b, kb, sizeof kb);
    CHECK(ka[0] && !strcmp(ka, kb), "logged losses differ:\n%s\nvs one process:\n%s", kb, ka);
}

/* The data and working folders: as setup left them (nothing written by any rank). */
static void check_untouched(void) {
    static const char *sub[] = {"images", "emb", "masks", "work"};
    static char want[4][4096];
    static int have;
    for (int i = 0; i < 4; i++) {
        char d[1400], l[4096];
        snprintf(d, sizeof d, "%s/%s", g_dir, sub[i]);
        listing(d, l, sizeof l);
        if (!have) snprintf(want[i], sizeof want[i], "%s", l);
        else CHECK(!strcmp(l, want[i]), "%s now holds\n%s, before\n%s", sub[i], l, want[i]);
    }
    have = 1;
}

static int prepared(void) {
    if (!fixture_exists(TEACHER) || !fixture_exists(STUDENT)) return 0;
    return setup();
}

#define NEED()                                                                                 \
    do {                                                                                       \
        if (!fixture_exists(TEACHER) || !fixture_exists(STUDENT)) SKIP("fixtures missing");    \
        REQUIRE(prepared(), "test data: %s", g_dir);                                           \
    } while (0)

static void same_as_one_process(int R, int B, int steps, const char *train) {
    char extra[256], ref[64], name[64];
    snprintf(extra, sizeof extra, "--steps %d --train %s --checkpoint-every 1", steps, train);
    snprintf(ref, sizeof ref, "r1_b%d_%s", B, train);
    snprintf(name, sizeof name, "r%d_b%d_%s", R, B, train);
    check_untouched();
    int st = run(1, B, extra, ref);
    REQUIRE(st == 0, "one process, B %d: exit %d: %s", B, st, g_out);
    st = run(R, B, extra, name);
    REQUIRE(st == 0, "%d ranks, B %d: exit %d: %s", R, B, st, g_out);
    char line[64];
    snprintf(line, sizeof line, "step %d/%d", steps, steps);
    CHECK(strstr(g_out, line) != NULL, "no progress line '%s': %s", line, g_out);
    CHECK(strstr(g_out, "combine") != NULL, "progress line without the combine time: %s", g_out);
    check_same_run(ref, name);
    check_untouched();
}

static void test_r2_b2_train_all(void) {
    NEED();
    same_as_one_process(2, 2, 2, "all");
}

static void test_r3_b3_across_epochs(void) {
    NEED();
    same_as_one_process(3, 3, 3, "decoder"); /* 9 images: the second epoch's shuffle too */
}

static void test_r3_b6(void) {
    NEED();
    same_as_one_process(3, 6, 2, "decoder");
    /* the same B in the default build (no MPI: comm_serial.c), when it is there */
    struct stat sb;
    if (stat("build/tinysam", &sb) || !strcmp(getenv("BUILD") ? getenv("BUILD") : "", "build"))
        return;
    char cmd[16384], o[1400];
    snprintf(o, sizeof o, "%s/serial_b6_decoder", g_dir);
    sh("rm -rf '%s' && mkdir -p '%s'", o, o);
    const char *bin = strstr(g_base, " distill ");
    snprintf(cmd, sizeof cmd, "build/tinysam%s --images-per-step 6 --steps 2 --train decoder "
             "--checkpoint-every 1 --out %s/s.safetensors >%s.txt 2>&1", bin, o, o);
    REQUIRE(system(cmd) == 0, "the default build, B = 6: see %s.txt", o);
    check_same_run("r1_b6_decoder", "serial_b6_decoder");
}

static int parent_of(int pid) {
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%d/stat", pid);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[k] = 0;
    const char *r = strrchr(buf, ')');
    int ppid = 0;
    return r && sscanf(r + 2, "%*c %d", &ppid) == 1 ? ppid : 0;
}

/* The ranks of a job: processes running the tinysam binary that descend from the launcher
 * (Open MPI starts them itself, MPICH's Hydra through a proxy); rank 1 first when its
 * environment says which it is. */
static int ranks_of(pid_t launcher, pid_t *pids, int cap) {
    DIR *d = opendir("/proc");
    struct dirent *e;
    int n = 0;
    while (d && (e = readdir(d)) && n < cap) {
        char p[300], exe[1024];
        int pid = atoi(e->d_name), up = pid, depth = 0;
        if (pid <= 0) continue;
        while (up > 1 && up != launcher && depth++ < 8) up = parent_of(up);
        if (up != launcher || pid == launcher) continue;
        snprintf(p, sizeof p, "/proc/%d/exe", pid);
        ssize_t k = readlink(p, exe, sizeof exe - 1);
        if (k <= 0) continue;
        exe[k] = 0;
        if (strcmp(exe, g_bin)) continue;
        pids[n++] = pid;
        snprintf(p, sizeof p, "/proc/%d/environ", pid);
        static char env[1 << 16];
        FILE *f = fopen(p, "r");
        size_t m = f ? fread(env, 1, sizeof env - 1, f) : 0;
        if (f) fclose(f);
        for (size_t i = 0; i < m; i += strlen(env + i) + 1)
            if (!strcmp(env + i, "OMPI_COMM_WORLD_RANK=1") || !strcmp(env + i, "PMI_RANK=1")) {
                pid_t t = pids[0];
                pids[0] = pid, pids[n - 1] = t;
            }
    }
    if (d) closedir(d);
    return n;
}

/* Starts a job and waits until rank 0's start-up line is out (training under way). */
static pid_t start_and_wait_training(int R, int B, const char *extra, const char *name,
                                     double *t0, pid_t *rank) {
    char args[16384], log[1400], out[1400], work[1400];
    snprintf(out, sizeof out, "%s/%s", g_dir, name);
    sh("rm -rf '%s' && mkdir -p '%s'", out, out);
    snprintf(log, sizeof log, "%s/%s.txt", g_dir, name);
    snprintf(work, sizeof work, "%s/work", g_dir);
    snprintf(args, sizeof args, "-np %d %s --images-per-step %d %s --out %s/s.safetensors", R,
             g_base, B, extra, out);
    *t0 = mpi_job_now();
    pid_t p = mpi_job_start(args, work, log);
    *rank = 0;
    while (p > 0 && mpi_job_now() - *t0 < 120) {
        slurp(log, g_out, sizeof g_out);
        if (strstr(g_out, "prompt sets per image")) break;
        if (waitpid(p, NULL, WNOHANG) == p) return -1;
        usleep(20000);
    }
    pid_t pids[16];
    if (p > 0 && ranks_of(p, pids, 16) == R) *rank = pids[0];
    return p;
}

static void test_sigusr1_then_resume_with_other_r(void) {
    NEED();
    double t0;
    pid_t rank;
    /* B = 6 over 3 ranks, stopped during step 1 by a signal to one rank */
    pid_t p = start_and_wait_training(3, 6, "--steps 2 --train decoder", "stop_r3", &t0, &rank);
    REQUIRE(p > 0 && rank > 0, "job did not start: %s", g_out);
    kill(rank, SIGUSR1);
    int st = mpi_job_wait(p, t0, 240);
    char log[1400], ckpt[1400], d[1400], l[4096];
    snprintf(log, sizeof log, "%s/stop_r3.txt", g_dir);
    slurp(log, g_out, sizeof g_out);
    CHECK(st > 0 && st < 128, "stopped job: exit %d: %s", st, g_out);
    CHECK(strstr(g_out, "interrupted after step 1") != NULL, "not stopped after step 1: %s",
          g_out);
    int n = 0; /* every rank ends with the same line */
    for (const char *q = g_out; (q = strstr(q, "tinysam: distill: interrupted")); q++) n++;
    CHECK(n == 3, "%d of 3 ranks report the stop: %s", n, g_out);
    snprintf(d, sizeof d, "%s/stop_r3", g_dir);
    listing(d, l, sizeof l);
    CHECK(!strcmp(l, "s.safetensors.ckpt.safetensors\ns.safetensors.log.jsonl\n"),
          "after the stop the output folder holds\n%s", l);
    /* resume on 2 ranks: the uninterrupted one-process run's files (test_r3_b6) */
    snprintf(ckpt, sizeof ckpt, "%s/stop_r3/s.safetensors.ckpt.safetensors", g_dir);
    char extra[4096];
    snprintf(extra, sizeof extra, "--steps 2 --train decoder --checkpoint-every 1 --resume %s "
             "--log %s/stop_r3/s.safetensors.log.jsonl", ckpt, g_dir);
    st = run(2, 6, extra, "resume_r2");
    REQUIRE(st == 0, "resume on 2 ranks: exit %d: %s", st, g_out);
    /* the resumed run's folder gets the stopped run's log, then both are compared */
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cp %s/stop_r3/s.safetensors.log.jsonl %s/resume_r2/", g_dir,
             g_dir);
    REQUIRE(system(cmd) == 0, "copy log");
    snprintf(d, sizeof d, "%s/r1_b6_decoder/s.safetensors", g_dir);
    struct stat sb;
    if (stat(d, &sb)) { /* the reference of test_r3_b6, when run alone */
        REQUIRE(run(1, 6, "--steps 2 --train decoder --checkpoint-every 1", "r1_b6_decoder") == 0,
                "one process: %s", g_out);
    }
    check_same_run("r1_b6_decoder", "resume_r2");
    check_untouched();
}

static void test_sigkill_one_rank(void) {
    NEED();
    double t0;
    pid_t rank;
    pid_t p = start_and_wait_training(2, 2, "--steps 3 --train decoder", "kill_r2", &t0, &rank);
    REQUIRE(p > 0 && rank > 0, "job did not start: %s", g_out);
    double t1 = mpi_job_now();
    kill(rank, SIGKILL);
    int st = mpi_job_wait(p, t1, 60);
    CHECK(st != 0 && st != -2, "after SIGKILL of a rank the job exited %d (-2: still running "
          "after 60 s)", st);
    printf("  SIGKILL of one rank: the job exited %d after %.1f s\n", st, mpi_job_now() - t1);
    pid_t left[16];
    CHECK(ranks_of(p, left, 16) == 0, "ranks left running");
    check_untouched();
}

/* MPMD: rank 0 and rank 1 run different commands. */
static void expect_disagreement(const char *rank1_extra, const char *rank1_images,
                                const char *needle) {
    char args[32768], log[1400], out[1400], work[1400], base1[8192];
    snprintf(out, sizeof out, "%s/disagree", g_dir);
    sh("rm -rf '%s' && mkdir -p '%s'", out, out);
    snprintf(log, sizeof log, "%s/disagree.txt", g_dir);
    snprintf(work, sizeof work, "%s/work", g_dir);
    snprintf(base1, sizeof base1, "%s", g_base);
    if (rank1_images) {
        char *at = strstr(base1, "--images ");
        char *end = at ? strchr(at + 9, ' ') : NULL;
        REQUIRE(end, "base");
        char rest[8192];
        snprintf(rest, sizeof rest, "%s", end);
        snprintf(at, sizeof base1 - (size_t)(at - base1), "--images %s%s", rank1_images, rest);
    }
    snprintf(args, sizeof args,
             "-np 1 %s --steps 2 --train decoder --out %s/s.safetensors : "
             "-np 1 %s --steps 2 --train decoder %s --out %s/s.safetensors",
             g_base, out, base1, rank1_extra, out);
    int st = mpi_job_run(args, work, log, 60);
    slurp(log, g_out, sizeof g_out);
    CHECK(st > 0 && st < 128, "exit %d (-2: hung): %s", st, g_out);
    int n = 0;
    for (const char *s = g_out; (s = strstr(s, needle)); s++) n++;
    CHECK(n == 2, "'%s' on %d ranks, not 2: %s", needle, n, g_out);
    char l[4096];
    listing(out, l, sizeof l);
    CHECK(!l[0], "files written: %s", l);
}

static void test_disagreement(void) {
    NEED();
    expect_disagreement("--lr 1e-4", NULL, "the options differ between the ranks");
    /* a check that fails on rank 1 alone, before any exchange of hashes */
    expect_disagreement("--images-per-step 3", NULL, "--images-per-step 3 is not a multiple");
    /* one image fewer on rank 1 */
    char d[1400];
    snprintf(d, sizeof d, "%s/images5", g_dir);
    sh("rm -rf '%s' && mkdir '%s'", d, d);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cp %s/images/*.png %s/ && rm %s/gen_b.png", g_dir, d, d);
    REQUIRE(system(cmd) == 0, "copy");
    snprintf(cmd, sizeof cmd, "cp %s/images/*.jpg %s/", g_dir, d);
    REQUIRE(system(cmd) == 0, "copy");
    expect_disagreement("", d, "the image lists differ between the ranks");
    sh("rm -rf '%s'", d);
    check_untouched();
}

/* --pseudo-masks over 2 ranks: the two images without ground truth get the teacher's
 * everything-mode masks, each file written by one rank, no temporary left, the same files as
 * one process writes. Run only when asked for (TINYSAM_MPI_TESTS=pseudo): the random
 * teacher's everything mode takes about 36 s per image here. */
static void test_pseudo_masks_shared(void) {
    NEED();
    char dirs[2][1400], args[16384], la[4096], lb[4096];
    for (int k = 0; k < 2; k++) {
        snprintf(dirs[k], sizeof dirs[k], "%s/masks_p%d", g_dir, k);
        sh("rm -rf '%s' && cp -r '%s/masks' '%s' && rm '%s/gen_a.json' '%s/gen_b.json'", dirs[k],
           g_dir, dirs[k], dirs[k], dirs[k]);
        char base[8192], *at;
        snprintf(base, sizeof base, "%s", g_base);
        REQUIRE((at = strstr(base, "--masks ")), "base");
        char *end = strchr(at + 8, ' ');
        char rest[8192];
        snprintf(rest, sizeof rest, "%s", end ? end : "");
        snprintf(at, sizeof base - (size_t)(at - base), "--masks %s%s", dirs[k], rest);
        char out[1400], log[1500], work[1400];
        snprintf(out, sizeof out, "%s/pseudo_%d", g_dir, k);
        sh("rm -rf '%s' && mkdir -p '%s'", out, out);
        snprintf(log, sizeof log, "%s.txt", out);
        snprintf(work, sizeof work, "%s/work", g_dir);
        snprintf(args, sizeof args, "-np %d %s --images-per-step 2 --pseudo-masks --steps 1 "
                 "--train decoder --out %s/s.safetensors", k ? 2 : 1, base, out);
        int st = mpi_job_run(args, work, log, 600);
        slurp(log, g_out, sizeof g_out);
        REQUIRE(st == 0, "%d rank(s) with --pseudo-masks: exit %d: %s", k ? 2 : 1, st, g_out);
    }
    listing(dirs[0], la, sizeof la);
    listing(dirs[1], lb, sizeof lb);
    CHECK(!strcmp(la, lb), "masks folder on 2 ranks\n%s, one process\n%s", lb, la);
    CHECK(strstr(lb, "gen_a.json") && strstr(lb, "gen_b.json") && !strstr(lb, ".tmp"),
          "pseudo masks: %s", lb);
    for (int i = 0; i < 2; i++) {
        char a[1500], b[1500];
        snprintf(a, sizeof a, "%s/gen_%c.json", dirs[0], 'a' + i);
        snprintf(b, sizeof b, "%s/gen_%c.json", dirs[1], 'a' + i);
        CHECK(same_file(a, b), "%s differs from one process's", b);
    }
    check_untouched();
}

/* TINYSAM_MPI_TESTS=a,b runs only the cases whose names contain a or b (e.g. a shorter run
 * under the sanitizers). */
static int wanted(const char *name) {
    const char *f = getenv("TINYSAM_MPI_TESTS");
    if (!f || !*f) return 1;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", f);
    for (char *t = strtok(buf, ","); t; t = strtok(NULL, ","))
        if (strstr(name, t)) return 1;
    return 0;
}
#define RUN_IF(fn)                                                                             \
    do {                                                                                       \
        if (wanted(#fn)) RUN(fn);                                                              \
    } while (0)

int main(void) {
    RUN_IF(test_r2_b2_train_all);
    RUN_IF(test_r3_b3_across_epochs);
    RUN_IF(test_r3_b6);
    RUN_IF(test_sigusr1_then_resume_with_other_r);
    RUN_IF(test_sigkill_one_rank);
    RUN_IF(test_disagreement);
    const char *sel = getenv("TINYSAM_MPI_TESTS");
    if (sel && strstr(sel, "pseudo")) RUN(test_pseudo_masks_shared); /* minutes: when asked */
    if (g_dir[0] && !getenv("TINYSAM_KEEP_TMP")) sh("rm -rf '%s'", g_dir);
    return test_summary();
}
