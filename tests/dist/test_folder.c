/* test_folder.c - dataset jobs over a folder: `everything --images` equal to one
 * `everything --image` per image, failures recorded without stopping the run, resume, SIGTERM
 * (exit 75), SIGKILL at 10 seeded random moments then a rerun (byte-identical outputs, no
 * temporary file, each image computed once: the manifests count), the Kubernetes and Slurm
 * array variables through the CLI, and sharded `eval` merged back into the unsharded report.
 * The scene oracle stands in for the network where the network adds nothing (fast in every
 * build); the network runs in the folder-vs-single and eval cases. */
#include "cli_run.h"
#include "core.h"
#include "dataset_gen.h"
#include "io/json.h"
#include "test.h"

#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MODEL "models/tinysam_vit_t_random.pth"
#define N_IMAGES 8
/* the oracle's options: masks at every level, some NMS work */
#define ORACLE_OPTS "--points-per-side 8 --quiet"

static char g_dir[600], g_imgs[700], g_scenes[700], g_ref[700];

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static int read_all(const char *path, uint8_t **buf, size_t *n) {
    return ts_read_file(path, (size_t)1 << 28, buf, n);
}

/* Names in dir (not . and ..), sorted, joined by '\n' into out. Returns the count or -1. */
static int list_dir(const char *dir, char *out, size_t cap) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    char *names[256];
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) && n < 256)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..")) names[n++] = strdup(de->d_name);
    closedir(d);
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && strcmp(names[j], names[j - 1]) < 0; j--) {
            char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        if (strlen(out) + strlen(names[i]) + 2 < cap) {
            strcat(out, names[i]);
            strcat(out, "\n");
        }
        free(names[i]);
    }
    return n;
}

/* 1 if any name under dir (recursively) contains ".tmp". */
static int has_tmp(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *de;
    int found = 0;
    while (!found && (de = readdir(d))) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..")) continue;
        if (strstr(de->d_name, ".tmp")) found = 1;
        char p[2048];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        struct stat st;
        if (!found && stat(p, &st) == 0 && S_ISDIR(st.st_mode)) found = has_tmp(p);
    }
    closedir(d);
    return found;
}

/* Every regular file under a (recursively) is in b with the same bytes, and the same names
 * are in b (the manifest folder excepted). Reports the first difference. */
static int same_tree(const char *a, const char *b, char *why, size_t cap) {
    char la[8192], lb[8192];
    int na = list_dir(a, la, sizeof la), nb = list_dir(b, lb, sizeof lb);
    if (na < 0 || nb < 0) {
        snprintf(why, cap, "cannot list %s or %s", a, b);
        return 0;
    }
    /* manifests differ by design (seconds, counts) */
    char *m;
    while ((m = strstr(la, "_manifest\n"))) memmove(m, m + 10, strlen(m + 10) + 1);
    while ((m = strstr(lb, "_manifest\n"))) memmove(m, m + 10, strlen(m + 10) + 1);
    if (strcmp(la, lb)) {
        snprintf(why, cap, "%.300s holds [%.1000s], %.300s holds [%.1000s]", a, la, b, lb);
        return 0;
    }
    for (char *p = la, *e; *p; p = e + 1) {
        e = strchr(p, '\n');
        *e = 0;
        char pa[2048], pb[2048];
        snprintf(pa, sizeof pa, "%.900s/%.900s", a, p);
        snprintf(pb, sizeof pb, "%.900s/%.900s", b, p);
        struct stat st;
        if (stat(pa, &st) == 0 && S_ISDIR(st.st_mode)) {
            if (!same_tree(pa, pb, why, cap)) return 0;
        } else if (!cli_same_file(pa, pb)) {
            snprintf(why, cap, "%.1900s and %.1900s differ", pa, pb);
            return 0;
        }
    }
    return 1;
}

/* A number from a manifest (-1 when missing). */
static double manifest_num(const char *path, const char *key) {
    ts_json *j = NULL;
    if (ts_json_load(path, &j)) return -1;
    double v = ts_json_num(j, key, -1);
    ts_json_free(j);
    return v;
}

/* Starts `tinysam ARGS` without waiting (stdout/stderr to files); returns its pid. */
static pid_t cli_spawn(const char *args) {
    static char cmd[8192];
    const char *b = getenv("BUILD");
    snprintf(cmd, sizeof cmd, "exec %s/tinysam %s >%s 2>%s", b && *b ? b : "build", args,
             tmp_path("spawn_out.txt"), tmp_path("spawn_err.txt"));
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    return pid;
}

static void sleep_s(double s) {
    struct timespec t = {(time_t)s, (long)((s - (time_t)s) * 1e9)};
    while (nanosleep(&t, &t) && errno == EINTR) {
    }
}

/* Outputs (<stem>.json) present in dir. */
static int count_outputs(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        n += l > 5 && !strcmp(de->d_name + l - 5, ".json");
    }
    closedir(d);
    return n;
}

static int setup(void) {
    if (g_dir[0]) return 0;
    snprintf(g_dir, sizeof g_dir, "%s", tmp_path("folder"));
    cli_rm_rf(g_dir);
    if (mkdir(g_dir, 0755)) return -1;
    snprintf(g_imgs, sizeof g_imgs, "%s/images", g_dir);
    snprintf(g_scenes, sizeof g_scenes, "%s/scenes", g_dir);
    snprintf(g_ref, sizeof g_ref, "%s/ref", g_dir);
    if (dg_make_dataset(g_imgs, g_scenes, N_IMAGES)) return -1;
    /* the uninterrupted reference run, with one PNG per mask (directories renamed into place
     * are part of what a crash must not leave half-written) */
    char args[4096];
    snprintf(args, sizeof args,
             "everything --images %s --out-dir %s --oracle-scenes %s --format png-dir %s/png "
             "--manifest %s/_manifest/{shard}.json " ORACLE_OPTS,
             g_imgs, g_ref, g_scenes, g_ref, g_ref);
    return cli_run(args) == 0 ? 0 : -1;
}

/* The records of a folder output are the single-image command's, with "id" added. */
static void test_folder_equals_single(void) {
    REQUIRE(setup() == 0, "setup failed: %s", cli_err);
    char mf[800];
    snprintf(mf, sizeof mf, "%s/_manifest/0.json", g_ref);
    CHECK(manifest_num(mf, "done") == N_IMAGES && manifest_num(mf, "skipped") == 0 &&
              manifest_num(mf, "failed") == 0 && manifest_num(mf, "images") == N_IMAGES,
          "manifest counts");
    char names[4096];
    REQUIRE(list_dir(g_imgs, names, sizeof names) == N_IMAGES, "images");
    long long masks = 0;
    int k = 0;
    for (char *p = names, *e; *p; p = e + 1, k++) {
        e = strchr(p, '\n');
        *e = 0;
        char stem[256], args[4096], single[1200], folder[1200];
        snprintf(stem, sizeof stem, "%.200s", p);
        *strrchr(stem, '.') = 0;
        snprintf(single, sizeof single, "%s/single_%s.json", g_dir, stem);
        snprintf(folder, sizeof folder, "%s/%s.json", g_ref, stem);
        snprintf(args, sizeof args,
                 "everything --image %s/%.200s --oracle-scene %s/%s.json --out %s " ORACLE_OPTS,
                 g_imgs, p, g_scenes, stem, single);
        REQUIRE(cli_run(args) == 0, "single run: %s", cli_err);
        uint8_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        REQUIRE(read_all(single, &a, &na) == 0 && read_all(folder, &b, &nb) == 0, "read");
        ts_json *js = NULL, *jf = NULL;
        REQUIRE(ts_json_parse((char *)a, na, &js) == 0 && ts_json_parse((char *)b, nb, &jf) == 0,
                "parse %s", tinysam_last_error());
        const ts_json *anns = ts_json_get(jf, "annotations"), *img = ts_json_get(jf, "image");
        CHECK(anns && js->type == TS_JSON_ARRAY && anns->n == js->n, "%s: %d records vs %d", stem,
              anns ? anns->n : -1, js->n);
        const ts_json *fn = img ? ts_json_get(img, "file_name") : NULL;
        CHECK(fn && fn->type == TS_JSON_STRING && !strcmp(fn->string, p) &&
                  ts_json_num(img, "image_id", -1) == atoi(stem + 4),
              "%s: image header", stem);
        masks += js->n;
        /* record text: the folder's body with each "{\"id\": k, " made "{" is the single
         * output's body */
        const char *key = "\"annotations\": [";
        char *fb = memmem(b, nb, key, strlen(key));
        REQUIRE(fb && nb > 3 && na > 2 && a[0] == '[', "%s: layout", stem);
        fb += strlen(key);
        size_t flen = (size_t)((char *)b + nb - 3 - fb); /* without "]}\n" */
        char *body = malloc(flen + 1), *w = body;
        REQUIRE(body, "alloc");
        for (size_t i = 0, id = 0; i < flen;) {
            char idkey[40];
            int l = snprintf(idkey, sizeof idkey, "{\"id\": %zu, ", id);
            if (!strncmp(fb + i, idkey, (size_t)l)) {
                *w++ = '{';
                i += (size_t)l;
                id++;
            } else {
                *w++ = fb[i++];
            }
        }
        *w = 0;
        CHECK(strlen(body) == na - 3 && !memcmp(body, a + 1, na - 3),
              "%s: the folder's records differ from the single command's", stem);
        free(body);
        ts_json_free(js);
        ts_json_free(jf);
        free(a);
        free(b);
    }
    CHECK(masks > 3 * N_IMAGES, "only %lld masks: the oracle test has no work", masks);
    CHECK(manifest_num(mf, "masks") == masks, "manifest masks %g vs %lld",
          manifest_num(mf, "masks"), masks);
    printf("  %d images, %lld masks, each equal to `everything --image`\n", N_IMAGES, masks);
}

/* The network path: folder output records equal the single command's (2 images). */
static void test_folder_network(void) {
    if (test_sanitized() || test_portable_kernels())
        SKIP("slow build: the network folder run is covered by the default build");
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    REQUIRE(setup() == 0, "setup failed");
    char dir[800], out[800], args[4096];
    snprintf(dir, sizeof dir, "%s/net_images", g_dir);
    snprintf(out, sizeof out, "%s/net_out", g_dir);
    REQUIRE(mkdir(dir, 0755) == 0, "mkdir");
    const char *pick[2] = {"fix_01.jpg", "img_02.png"};
    for (int i = 0; i < 2; i++) {
        char a[1024], b[1024];
        snprintf(a, sizeof a, "%s/%s", g_imgs, pick[i]);
        snprintf(b, sizeof b, "%s/%s", dir, pick[i]);
        REQUIRE(cli_copy_file(a, b) == 0, "copy");
    }
    const char *opts = "--points-per-side 4 --pred-iou-thresh 0 --stability-score-thresh 0 "
                       "--box-nms-thresh 0.95 --quiet";
    snprintf(args, sizeof args, "everything --model %s --images %s --out-dir %s %s",
             fixture(MODEL), dir, out, opts);
    REQUIRE(cli_run(args) == 0, "folder run: %s", cli_err);
    for (int i = 0; i < 2; i++) {
        char single[900], folder[900], stem[64];
        snprintf(stem, sizeof stem, "%s", pick[i]);
        *strrchr(stem, '.') = 0;
        snprintf(single, sizeof single, "%s/net_single_%s.json", g_dir, stem);
        snprintf(folder, sizeof folder, "%s/%s.json", out, stem);
        snprintf(args, sizeof args, "everything --model %s --image %s/%s --out %s %s",
                 fixture(MODEL), dir, pick[i], single, opts);
        REQUIRE(cli_run(args) == 0, "single run: %s", cli_err);
        ts_json *js = NULL, *jf = NULL;
        REQUIRE(ts_json_load(single, &js) == 0 && ts_json_load(folder, &jf) == 0, "load");
        const ts_json *anns = ts_json_get(jf, "annotations");
        REQUIRE(anns && anns->n == js->n && js->n > 0, "%s: %d vs %d records", stem,
                anns ? anns->n : -1, js->n);
        for (int r = 0; r < js->n; r++) {
            const ts_json *x = &js->items[r], *y = &anns->items[r];
            const ts_json *cx = ts_json_get(ts_json_get(x, "segmentation"), "counts");
            const ts_json *cy = ts_json_get(ts_json_get(y, "segmentation"), "counts");
            CHECK(cx && cy && !strcmp(cx->string, cy->string) &&
                      ts_json_num(x, "predicted_iou", 0) == ts_json_num(y, "predicted_iou", 1) &&
                      ts_json_num(x, "stability_score", 0) ==
                          ts_json_num(y, "stability_score", 1) &&
                      ts_json_num(x, "area", 0) == ts_json_num(y, "area", 1) &&
                      ts_json_num(y, "id", -1) == r,
                  "%s: record %d differs", stem, r);
        }
        ts_json_free(js);
        ts_json_free(jf);
    }
}

/* Bad images are recorded and skipped; the run goes on; reruns retry them. */
static void test_failures_and_resume(void) {
    REQUIRE(setup() == 0, "setup failed");
    char dir[800], out[800], p[1200], args[4096];
    snprintf(dir, sizeof dir, "%s/fail_images", g_dir);
    snprintf(out, sizeof out, "%s/fail_out", g_dir);
    REQUIRE(mkdir(dir, 0755) == 0, "mkdir");
    /* a: small, b: corrupt, c: 769 x 770 (over --max-pixels 400000), d: small */
    snprintf(p, sizeof p, "%s/a.png", dir);
    REQUIRE(dg_write_image(p, 320, 240, 1) == 0, "image");
    snprintf(p, sizeof p, "%s/b.jpg", dir);
    FILE *f = fopen(p, "wb");
    REQUIRE(f, "create");
    fputs("\xff\xd8\xff\xe0 not a jpeg", f);
    fclose(f);
    snprintf(p, sizeof p, "%s/c.jpg", dir);
    REQUIRE(cli_copy_file(fixture("images/picture1.jpg"), p) == 0, "copy");
    snprintf(p, sizeof p, "%s/d.png", dir);
    REQUIRE(dg_write_image(p, 300, 300, 2) == 0, "image");
    char sc[800];
    snprintf(sc, sizeof sc, "%s/fail_scenes", g_dir);
    REQUIRE(mkdir(sc, 0755) == 0, "mkdir");
    const struct { const char *stem; int w, h, v; } scn[] = {
        {"a", 320, 240, 1}, {"b", 320, 240, 1}, {"c", 769, 770, 3}, {"d", 300, 300, 2}};
    for (int i = 0; i < 4; i++) {
        snprintf(p, sizeof p, "%s/%s.json", sc, scn[i].stem);
        REQUIRE(dg_write_scene(p, scn[i].w, scn[i].h, scn[i].v) == 0, "scene");
    }
    char mf[900];
    snprintf(mf, sizeof mf, "%s/m.json", out);
    snprintf(args, sizeof args,
             "everything --images %s --out-dir %s --oracle-scenes %s --max-pixels 400000 "
             "--manifest %s " ORACLE_OPTS,
             dir, out, sc, mf);
    int st = cli_run(args);
    CHECK(st == 1, "exit status %d with failed images (expected 1): %s", st, cli_err);
    CHECK(cli_ends_with_error_line(cli_err) && strstr(cli_err, "2 of 4 images failed"),
          "summary line: %s", cli_err);
    CHECK(strstr(cli_err, "b.jpg: failed: ") && strstr(cli_err, "c.jpg: failed: "),
          "per-image failure lines: %s", cli_err);
    char ra[900], rb[900], rc_[900];
    snprintf(ra, sizeof ra, "%s/a.json", out);
    snprintf(rb, sizeof rb, "%s/_failed/b.txt", out);
    snprintf(rc_, sizeof rc_, "%s/_failed/c.txt", out);
    uint8_t *t = NULL;
    size_t nt = 0;
    CHECK(access(ra, F_OK) == 0, "a.json missing: the run stopped at the failure");
    CHECK(read_all(rb, &t, &nt) == 0 && memmem(t, nt, "\"error\": ", 9) && memmem(t, nt, "b.jpg", 5),
          "no failure record for b.jpg");
    free(t);
    t = NULL;
    CHECK(read_all(rc_, &t, &nt) == 0 && memmem(t, nt, "pixels", 6), "no record for c.jpg");
    free(t);
    CHECK(manifest_num(mf, "done") == 2 && manifest_num(mf, "failed") == 2, "manifest 1");
    CHECK(!has_tmp(out), "temporary files left");

    /* a higher pixel limit: c is redone and its record removed; b still fails */
    snprintf(args, sizeof args,
             "everything --images %s --out-dir %s --oracle-scenes %s --max-pixels 1000000 "
             "--manifest %s " ORACLE_OPTS,
             dir, out, sc, mf);
    st = cli_run(args);
    CHECK(st == 1 && strstr(cli_err, "1 of 4 images failed"), "rerun: %d %s", st, cli_err);
    CHECK(access(rc_, F_OK) != 0, "c's failure record not removed after it succeeded");
    CHECK(manifest_num(mf, "done") == 1 && manifest_num(mf, "skipped") == 2 &&
              manifest_num(mf, "failed") == 1,
          "manifest 2");
    /* b fixed by hand: the run completes, exit 0, nothing left in _failed */
    snprintf(p, sizeof p, "%s/b.jpg", dir);
    unlink(p);
    snprintf(p, sizeof p, "%s/b.png", dir);
    REQUIRE(dg_write_image(p, 320, 240, 1) == 0, "image");
    st = cli_run(args);
    CHECK(st == 0, "third run: %d %s", st, cli_err);
    CHECK(access(rb, F_OK) != 0, "b's failure record not removed");
    CHECK(manifest_num(mf, "done") == 1 && manifest_num(mf, "skipped") == 3, "manifest 3");
    /* a damaged output (cut short) is redone, the others skipped */
    REQUIRE(truncate(ra, 40) == 0, "truncate");
    st = cli_run(args);
    CHECK(st == 0 && manifest_num(mf, "done") == 1 && manifest_num(mf, "skipped") == 3,
          "truncated output not redone: %s", cli_err);
}

/* SIGTERM: the current image is finished, exit 75, a rerun completes the folder. */
static void test_sigterm(void) {
    REQUIRE(setup() == 0, "setup failed");
    char out[800], args[4096], mf[900];
    snprintf(out, sizeof out, "%s/term_out", g_dir);
    snprintf(mf, sizeof mf, "%s/term_manifest.json", g_dir);
    /* grid mode with more points: slow enough per image to be caught in the middle (the
     * sanitizer build is slow enough as it is) */
    snprintf(args, sizeof args,
             "everything --images %s --out-dir %s --oracle-scenes %s --manifest %s "
             "--mode grid --points-per-side %d --threads 1",
             g_imgs, out, g_scenes, mf, test_sanitized() ? 8 : 16);
    pid_t pid = cli_spawn(args);
    REQUIRE(pid > 0, "spawn");
    double t0 = now_s();
    while (count_outputs(out) < 1 && now_s() - t0 < 60) sleep_s(0.002);
    kill(pid, SIGTERM);
    int status = 0;
    waitpid(pid, &status, 0);
    int done = count_outputs(out);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 75, "exit status %d (expected 75)",
          WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status));
    CHECK(done >= 1 && done < N_IMAGES, "%d outputs: the signal came too late to test", done);
    CHECK(!has_tmp(out), "temporary files after SIGTERM");
    CHECK(manifest_num(mf, "done") == done, "manifest says %g done, %d outputs",
          manifest_num(mf, "done"), done);
    ts_json *j = NULL;
    CHECK(ts_json_load(mf, &j) == 0 && ts_json_get(j, "interrupted") &&
              ts_json_get(j, "interrupted")->number == 1,
          "manifest not marked interrupted");
    ts_json_free(j);
    /* the rerun takes the rest */
    REQUIRE(cli_run(args) == 0, "rerun: %s", cli_err);
    CHECK(manifest_num(mf, "done") == N_IMAGES - done && manifest_num(mf, "skipped") == done,
          "rerun manifest: done %g skipped %g", manifest_num(mf, "done"),
          manifest_num(mf, "skipped"));
    CHECK(count_outputs(out) == N_IMAGES, "outputs after the rerun");
    printf("  SIGTERM after %d of %d images, exit 75, rerun did the other %d\n", done, N_IMAGES,
           N_IMAGES - done);
}

/* SIGKILL at 10 seeded random moments, each followed by a rerun to the end. */
static void test_sigkill_rerun(void) {
    REQUIRE(setup() == 0, "setup failed");
    /* the duration of an uninterrupted run, to spread the moments over it */
    char args[4096], out[800], mf[900], why[4096];
    snprintf(out, sizeof out, "%s/kill_timing", g_dir);
    snprintf(args, sizeof args,
             "everything --images %s --out-dir %s --oracle-scenes %s --format png-dir %s/png "
             ORACLE_OPTS,
             g_imgs, out, g_scenes, out);
    double t0 = now_s();
    REQUIRE(cli_run(args) == 0, "timing run: %s", cli_err);
    double T = now_s() - t0;
    srand(20261207);
    int partial = 0;
    for (int k = 0; k < 10; k++) {
        double t = T * (0.02 + 0.96 * rand() / (double)RAND_MAX);
        snprintf(out, sizeof out, "%s/kill_%d", g_dir, k);
        snprintf(mf, sizeof mf, "%s/_manifest/0.json", out);
        snprintf(args, sizeof args,
                 "everything --images %s --out-dir %s --oracle-scenes %s --format png-dir "
                 "%s/png --manifest %s/_manifest/{shard}.json " ORACLE_OPTS,
                 g_imgs, out, g_scenes, out, out);
        pid_t pid = cli_spawn(args);
        REQUIRE(pid > 0, "spawn");
        sleep_s(t);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        int before = count_outputs(out);
        partial += before > 0 && before < N_IMAGES;
        REQUIRE(cli_run(args) == 0, "moment %d: rerun failed: %s", k, cli_err);
        CHECK(manifest_num(mf, "done") == N_IMAGES - before &&
                  manifest_num(mf, "skipped") == before,
              "moment %d (%.3f s): %d outputs before the rerun, rerun did %g and skipped %g", k,
              t, before, manifest_num(mf, "done"), manifest_num(mf, "skipped"));
        CHECK(same_tree(g_ref, out, why, sizeof why), "moment %d (%.3f s): %s", k, t, why);
        CHECK(!has_tmp(out), "moment %d: temporary files left after the rerun", k);
    }
    printf("  10 kills over a %.2f s run (%d in the middle of the folder): outputs identical\n",
           T, partial);
    CHECK(partial >= 3, "only %d kills landed mid-run", partial);
}

/* Kubernetes Indexed Job and Slurm array variables through the CLI: the shards' union is the
 * unsharded output, every image once. */
static void test_launcher_variables(void) {
    REQUIRE(setup() == 0, "setup failed");
    char out[800], args[4096], why[4096];
    snprintf(out, sizeof out, "%s/k8s", g_dir);
    int done = 0;
    for (int i = 0; i < 3; i++) {
        char idx[16];
        snprintf(idx, sizeof idx, "%d", i);
        setenv("JOB_COMPLETION_INDEX", idx, 1);
        snprintf(args, sizeof args,
                 "everything --images %s --out-dir %s --oracle-scenes %s --format png-dir %s/png "
                 "--shard-count 3 --manifest %s/_manifest/{shard}.json " ORACLE_OPTS,
                 g_imgs, out, g_scenes, out, out);
        int st = cli_run(args);
        unsetenv("JOB_COMPLETION_INDEX");
        REQUIRE(st == 0, "index %d: %s", i, cli_err);
        char line[200];
        snprintf(line, sizeof line, "shard %d/3 (Kubernetes Indexed Job: JOB_COMPLETION_INDEX=%d",
                 i, i);
        CHECK(strstr(cli_err, line), "stderr lacks '%s': %s", line, cli_err);
        char mf[900];
        snprintf(mf, sizeof mf, "%s/_manifest/%d.json", out, i);
        done += (int)manifest_num(mf, "done");
        CHECK(manifest_num(mf, "images") == (N_IMAGES - i + 2) / 3, "shard %d: %g images", i,
              manifest_num(mf, "images"));
    }
    CHECK(done == N_IMAGES, "the shards computed %d images, not %d", done, N_IMAGES);
    CHECK(same_tree(g_ref, out, why, sizeof why), "Indexed Job union: %s", why);

    /* a Slurm array 1-2 (shard = ID - MIN), then the same folder again unsharded: all skipped */
    snprintf(out, sizeof out, "%s/array", g_dir);
    setenv("SLURM_ARRAY_TASK_COUNT", "2", 1);
    setenv("SLURM_ARRAY_TASK_MIN", "1", 1);
    setenv("SLURM_ARRAY_TASK_MAX", "2", 1);
    setenv("SLURM_ARRAY_TASK_STEP", "1", 1);
    for (int id = 1; id <= 2; id++) {
        char v[16];
        snprintf(v, sizeof v, "%d", id);
        setenv("SLURM_ARRAY_TASK_ID", v, 1);
        snprintf(args, sizeof args,
                 "everything --images %s --out-dir %s --oracle-scenes %s --format png-dir %s/png "
                 ORACLE_OPTS,
                 g_imgs, out, g_scenes, out);
        int st = cli_run(args);
        CHECK(st == 0 && strstr(cli_err, "Slurm array: SLURM_ARRAY_TASK_ID="), "array task %d: %s",
              id, cli_err);
    }
    /* a stepped array is refused with one clear line */
    setenv("SLURM_ARRAY_TASK_STEP", "2", 1);
    snprintf(args, sizeof args, "everything --images %s --out-dir %s --oracle-scenes %s " ORACLE_OPTS,
             g_imgs, out, g_scenes);
    cli_expect_error(args, "not a contiguous range", 1);
    unsetenv("SLURM_ARRAY_TASK_ID");
    unsetenv("SLURM_ARRAY_TASK_COUNT");
    unsetenv("SLURM_ARRAY_TASK_MIN");
    unsetenv("SLURM_ARRAY_TASK_MAX");
    unsetenv("SLURM_ARRAY_TASK_STEP");
    CHECK(same_tree(g_ref, out, why, sizeof why), "array union: %s", why);
    snprintf(args, sizeof args,
             "everything --images %s --out-dir %s --oracle-scenes %s --format png-dir %s/png "
             ORACLE_OPTS,
             g_imgs, out, g_scenes, out);
    CHECK(cli_run(args) == 0 && strstr(cli_err, "8 images, 0 computed, 8 skipped"),
          "unsharded rerun over the shards' outputs: %s", cli_err);

    /* usage errors */
    snprintf(args, sizeof args, "everything --images %s --out-dir %s --oracle-scenes %s --shard 3/3",
             g_imgs, out, g_scenes);
    cli_expect_error(args, "0 <= I < N", 1);
    snprintf(args, sizeof args, "everything --images %s --out %s/x.json --oracle-scenes %s", g_imgs,
             out, g_scenes);
    cli_expect_error(args, "--out-dir", 1);
    snprintf(args, sizeof args, "everything --oracle-scene %s/img_00.json --out %s/x.json --shard 0/2",
             g_scenes, out);
    cli_expect_error(args, "go with --images", 1);
}

/* Sharded eval + --merge: the unsharded report, byte for byte. */
static void test_eval_merge(void) {
    if (test_portable_kernels())
        SKIP("portable kernels: the merge is covered by the default and sanitizer builds");
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    /* the sanitizer build encodes at ~1/10 the speed: two images still make two shards */
    const int n_eval = test_sanitized() ? 2 : 3;
    REQUIRE(setup() == 0, "setup failed");
    char dir[800], args[4096], full[900], merged[900], s0[900], s1[900];
    snprintf(dir, sizeof dir, "%s/eval_images", g_dir);
    REQUIRE(mkdir(dir, 0755) == 0, "mkdir");
    const char *pick[3] = {"fix_01.jpg", "img_02.png", "img_04.png"};
    for (int i = 0; i < n_eval; i++) {
        char a[1024], b[1024];
        snprintf(a, sizeof a, "%s/%s", g_imgs, pick[i]);
        snprintf(b, sizeof b, "%s/%s", dir, pick[i]);
        REQUIRE(cli_copy_file(a, b) == 0, "copy");
    }
    /* ground truth: the oracle folder outputs (SA-1B files of the images' sizes) */
    snprintf(full, sizeof full, "%s/eval_full.json", g_dir);
    snprintf(merged, sizeof merged, "%s/eval_merged.json", g_dir);
    snprintf(args, sizeof args, "eval --model %s --images %s --masks %s --out %s", fixture(MODEL),
             dir, g_ref, full);
    REQUIRE(cli_run(args) == 0, "unsharded eval: %s", cli_err);
    for (int s = 0; s < 2; s++) {
        snprintf(args, sizeof args,
                 "eval --model %s --images %s --masks %s --shard %d/2 --out %s/eval_{shard}.json",
                 fixture(MODEL), dir, g_ref, s, g_dir);
        REQUIRE(cli_run(args) == 0, "shard %d: %s", s, cli_err);
    }
    snprintf(s0, sizeof s0, "%s/eval_0.json", g_dir);
    snprintf(s1, sizeof s1, "%s/eval_1.json", g_dir);
    snprintf(args, sizeof args, "eval --out %s --merge %s %s", merged, s1, s0);
    REQUIRE(cli_run(args) == 0, "merge: %s", cli_err);
    CHECK(cli_same_file(full, merged), "merged report differs from the unsharded one");
    ts_json *j = NULL;
    REQUIRE(ts_json_load(full, &j) == 0, "report");
    CHECK(ts_json_num(j, "n_images", 0) == n_eval && ts_json_num(j, "n_objects", 0) > 5,
          "report: %g images, %g objects", ts_json_num(j, "n_images", 0),
          ts_json_num(j, "n_objects", 0));
    printf("  %d images, %g objects: shards 0/2 + 1/2 merged == unsharded (mean box IoU %.17g)\n",
           n_eval, ts_json_num(j, "n_objects", 0), ts_json_num(j, "mean_box_iou", -1));
    ts_json_free(j);
    /* merge errors: a shard missing, a shard twice, not a report */
    snprintf(args, sizeof args, "eval --merge %s", s0);
    cli_expect_error(args, "shard 1 of 2 is missing", 1);
    snprintf(args, sizeof args, "eval --merge %s %s %s", s0, s1, s0);
    cli_expect_error(args, "given twice", 1);
    snprintf(args, sizeof args, "eval --merge %s/_manifest/0.json", g_ref);
    cli_expect_error(args, "not an eval report", 1);
    snprintf(args, sizeof args, "eval --merge %s %s", full, full);
    cli_expect_error(args, "given twice", 1);
}

int main(void) {
    RUN(test_folder_equals_single);
    RUN(test_folder_network);
    RUN(test_failures_and_resume);
    RUN(test_sigterm);
    RUN(test_sigkill_rerun);
    RUN(test_launcher_variables);
    RUN(test_eval_merge);
    if (g_dir[0] && !t_failed_checks) cli_rm_rf(g_dir);
    return test_summary();
}
