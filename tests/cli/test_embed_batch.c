/* test_embed_batch.c - `tinysam embed --images DIR --out-dir E`: batch teacher embeddings
 * against the official encoder's output, resuming (skip valid outputs, recompute truncated
 * ones), --fp16 storage, and the usage errors. */
#include "core.h"
#include "io/npy.h"
#include "io/tensor_map_internal.h"
#include "cli_run.h"
#include "test.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MODEL "models/tinysam_vit_t_random.pth"
#define NUMEL (256 * 64 * 64)


/* Loads an output and checks shape (1,256,64,64) and dtype. */
static int load_embedding(const char *path, ts_dtype dtype, ts_npy *a) {
    if (ts_npy_load(path, a)) {
        printf("  %s: %s\n", path, tinysam_last_error());
        return -1;
    }
    int ok = a->dtype == dtype && a->ndim == 4 && a->shape[0] == 1 && a->shape[1] == 256 &&
             a->shape[2] == 64 && a->shape[3] == 64;
    if (!ok) {
        printf("  %s: wrong dtype or shape\n", path);
        ts_npy_free(a);
        return -1;
    }
    return 0;
}

/* Max |out - reference embedding| for one image, or +inf on any failure. */
static double max_err_vs_reference(const char *out_path, const char *image) {
    char ref[256];
    snprintf(ref, sizeof ref, "reference/%s/embedding.npy", image);
    ts_npy a, r;
    if (load_embedding(out_path, TS_DTYPE_F32, &a)) return INFINITY;
    if (ts_npy_load(fixture(ref), &r) || r.numel != NUMEL) {
        ts_npy_free(&a);
        return INFINITY;
    }
    const float *x = a.data, *y = r.data;
    double m = 0;
    for (int i = 0; i < NUMEL; i++) {
        double d = fabs((double)x[i] - y[i]);
        if (!(d <= m)) m = d; /* NaN propagates as a failure */
    }
    ts_npy_free(&a);
    ts_npy_free(&r);
    return m;
}

static int same_bytes(const char *p, const uint8_t *ref, size_t n) {
    uint8_t *buf;
    size_t m;
    if (ts_read_file(p, (size_t)1 << 26, &buf, &m)) return 0;
    int same = m == n && !memcmp(buf, ref, n);
    free(buf);
    return same;
}

static char g_dir[512], g_imgs[600], g_e[600], g_e16[600], g_model[1024];

static int setup(void) {
    snprintf(g_dir, sizeof g_dir, "%s", tmp_path("embed_batch"));
    cli_rm_rf(g_dir);
    snprintf(g_imgs, sizeof g_imgs, "%s/imgs", g_dir);
    snprintf(g_e, sizeof g_e, "%s/E", g_dir);
    snprintf(g_e16, sizeof g_e16, "%s/E16", g_dir);
    snprintf(g_model, sizeof g_model, "%s", fixture(MODEL));
    char p[700];
    if (mkdir(g_dir, 0755) || mkdir(g_imgs, 0755)) return -1;
    snprintf(p, sizeof p, "%s/picture1.jpg", g_imgs);
    if (cli_copy_file(fixture("images/picture1.jpg"), p)) return -1;
    snprintf(p, sizeof p, "%s/shapes.png", g_imgs);
    if (cli_copy_file(fixture("images/shapes.png"), p)) return -1;
    /* not images: ignored */
    snprintf(p, sizeof p, "%s/notes.txt", g_imgs);
    FILE *f = fopen(p, "w");
    if (f) fclose(f);
    snprintf(p, sizeof p, "%s/.hidden.jpg", g_imgs);
    f = fopen(p, "w");
    if (f) fclose(f);
    return 0;
}

static void test_batch_f32_resume(void) {
    if (!fixture_exists(MODEL) || !fixture_exists("reference/shapes/embedding.npy"))
        SKIP("fixtures missing");
    REQUIRE(setup() == 0, "cannot set up %s", g_dir);
    char args[4096], p1[700], p2[700];
    snprintf(p1, sizeof p1, "%s/picture1.npy", g_e);
    snprintf(p2, sizeof p2, "%s/shapes.npy", g_e);
    snprintf(args, sizeof args, "embed --model %s --images %s --out-dir %s --threads 2", g_model,
             g_imgs, g_e);

    /* first run: E is created, both images computed */
    int st = cli_run(args);
    REQUIRE(st == 0, "first run: status %d: %s", st, cli_err);
    CHECK(strstr(cli_err, "embed [1/2] picture1.jpg: ") && strstr(cli_err, " images/s, eta ") &&
              strstr(cli_err, "embed [2/2] shapes.png: "),
          "progress lines: %s", cli_err);
    CHECK(strstr(cli_err, "embed: 2 images, 2 computed, 0 skipped, 0 failed, in "), "summary: %s",
          cli_err);
    double e1 = max_err_vs_reference(p1, "picture1"), e2 = max_err_vs_reference(p2, "shapes");
    printf("  max abs error vs reference: picture1 %.3g, shapes %.3g\n", e1, e2);
    CHECK(e1 <= 1e-3 && e2 <= 1e-3, "embedding error %g %g > 1e-3", e1, e2);
    char tmp[720];
    snprintf(tmp, sizeof tmp, "%s/picture1.npy.tmp", g_e);
    CHECK(access(tmp, F_OK) != 0, "temporary file left behind");

    /* second run: both skipped, files untouched (same inode, same bytes) */
    uint8_t *b1, *b2;
    size_t n1, n2;
    REQUIRE(ts_read_file(p1, (size_t)1 << 26, &b1, &n1) == 0, "read %s", p1);
    REQUIRE(ts_read_file(p2, (size_t)1 << 26, &b2, &n2) == 0, "read %s", p2);
    struct stat s1, s2;
    REQUIRE(stat(p1, &s1) == 0 && stat(p2, &s2) == 0, "stat");
    st = cli_run(args);
    CHECK(st == 0, "second run: status %d: %s", st, cli_err);
    CHECK(strstr(cli_err, "2 of 2 images already have complete outputs: skipped") &&
              !strstr(cli_err, "picture1.jpg") && !strstr(cli_err, "shapes.png") &&
              strstr(cli_err, "2 images, 0 computed, 2 skipped"),
          "second run did not skip: %s", cli_err);
    struct stat t1, t2;
    CHECK(stat(p1, &t1) == 0 && stat(p2, &t2) == 0 && t1.st_ino == s1.st_ino &&
              t2.st_ino == s2.st_ino,
          "outputs were rewritten");
    CHECK(same_bytes(p1, b1, n1) && same_bytes(p2, b2, n2), "outputs changed");

    /* a truncated output is recomputed; the other is still skipped */
    REQUIRE(truncate(p2, (off_t)(n2 / 2)) == 0, "truncate");
    st = cli_run(args);
    CHECK(st == 0, "third run: status %d: %s", st, cli_err);
    CHECK(strstr(cli_err, "1 of 2 images already have complete outputs: skipped") &&
              !strstr(cli_err, "picture1.jpg") && strstr(cli_err, "[2/2] shapes.png: ") &&
              strstr(cli_err, "2 images, 1 computed, 1 skipped"),
          "third run: %s", cli_err);
    e2 = max_err_vs_reference(p2, "shapes");
    CHECK(e2 <= 1e-3, "recomputed embedding error %g", e2);
    CHECK(same_bytes(p2, b2, n2), "recomputed output differs from the first one");
    /* a header-only corruption (wrong dtype in the header, right size) is recomputed too */
    FILE *f = fopen(p2, "r+b");
    REQUIRE(f, "open %s", p2);
    char *hdr = memmem(b2, 128, "<f4", 3);
    REQUIRE(hdr, "header");
    fseek(f, (long)(hdr - (char *)b2), SEEK_SET);
    fwrite("<i4", 1, 3, f);
    fclose(f);
    st = cli_run(args);
    CHECK(st == 0 && strstr(cli_err, "1 computed, 1 skipped") && same_bytes(p2, b2, n2),
          "wrong-dtype output not recomputed: %s", cli_err);
    free(b1);
    free(b2);

    /* --fp16 into another directory: <f2, each value the RNE half of the float32 output */
    snprintf(args, sizeof args, "embed --model %s --images %s --out-dir %s --fp16 --threads 2",
             g_model, g_imgs, g_e16);
    st = cli_run(args);
    REQUIRE(st == 0, "fp16 run: status %d: %s", st, cli_err);
    const char *names[2] = {"picture1", "shapes"};
    for (int k = 0; k < 2; k++) {
        char ph[700], pf[700];
        snprintf(ph, sizeof ph, "%s/%s.npy", g_e16, names[k]);
        snprintf(pf, sizeof pf, "%s/%s.npy", g_e, names[k]);
        ts_npy h, fa;
        REQUIRE(load_embedding(ph, TS_DTYPE_F16, &h) == 0, "fp16 output %s", ph);
        REQUIRE(load_embedding(pf, TS_DTYPE_F32, &fa) == 0, "f32 output %s", pf);
        REQUIRE(ts_npy_to_f32(&h) == 0, "to_f32");
        const float *x = h.data, *y = fa.data;
        int bad = 0;
        double worst = 0;
        for (int i = 0; i < NUMEL; i++) {
            double d = fabs((double)x[i] - y[i]);
            double tol = ldexp(1, -11) * fabs(y[i]) + ldexp(1, -24);
            if (!(d <= tol)) bad++;
            if (d > worst) worst = d;
        }
        printf("  %s fp16: max |h - f| %.3g\n", names[k], worst);
        CHECK(bad == 0, "%s: %d fp16 values beyond half rounding", names[k], bad);
        ts_npy_free(&h);
        ts_npy_free(&fa);
    }
}

static void test_single_fp16(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    char args[4096], out[700], batch[700];
    snprintf(out, sizeof out, "%s/single16.npy", g_dir);
    snprintf(batch, sizeof batch, "%s/picture1.npy", g_e16);
    REQUIRE(access(batch, F_OK) == 0, "needs test_batch_f32_resume's outputs");
    snprintf(args, sizeof args, "embed --model %s --image %s/picture1.jpg --out %s --fp16",
             g_model, g_imgs, out);
    int st = cli_run(args);
    REQUIRE(st == 0, "single --fp16: status %d: %s", st, cli_err);
    CHECK(strstr(cli_out, "\"embedding\": ") != NULL, "single mode stdout: %s", cli_out);
    uint8_t *b;
    size_t n;
    REQUIRE(ts_read_file(batch, (size_t)1 << 26, &b, &n) == 0, "read");
    CHECK(same_bytes(out, b, n), "single --fp16 output differs from the batch one");
    free(b);
}

static void test_usage_errors(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    if (!g_dir[0] && setup()) SKIP("no scratch dir");
    char args[4096], p[1024];
    snprintf(args, sizeof args, "embed --model %s --images %s", g_model, g_imgs);
    cli_expect_error(args, "--out-dir", 1);
    snprintf(args, sizeof args, "embed --model %s --images %s --out %s/x.npy", g_model, g_imgs,
             g_dir);
    cli_expect_error(args, "--out", 1);
    snprintf(args, sizeof args, "embed --model %s --image %s/picture1.jpg --out-dir %s/o",
             g_model, g_imgs, g_dir);
    cli_expect_error(args, "--out-dir", 1);
    snprintf(args, sizeof args,
             "embed --model %s --image %s/picture1.jpg --images %s --out-dir %s/o", g_model,
             g_imgs, g_imgs, g_dir);
    cli_expect_error(args, "exclusive", 1);
    snprintf(args, sizeof args, "embed --images %s --out-dir %s/o", g_imgs, g_dir);
    cli_expect_error(args, "--model", 1);
    snprintf(args, sizeof args, "embed --model %s --images %s/nonexistent --out-dir %s/o",
             g_model, g_dir, g_dir);
    cli_expect_error(args, "nonexistent", 1);

    /* same stem twice: refused before any work */
    char dup[700];
    snprintf(dup, sizeof dup, "%s/dup", g_dir);
    REQUIRE(mkdir(dup, 0755) == 0, "mkdir");
    snprintf(p, sizeof p, "%s/a.jpg", dup);
    REQUIRE(cli_copy_file(fixture("images/picture1.jpg"), p) == 0, "copy");
    snprintf(p, sizeof p, "%s/a.PNG", dup);
    REQUIRE(cli_copy_file(fixture("images/shapes.png"), p) == 0, "copy");
    snprintf(args, sizeof args, "embed --model %s --images %s --out-dir %s/dup_out", g_model,
             dup, g_dir);
    cli_expect_error(args, "same stem", 1);
    snprintf(p, sizeof p, "%s/dup_out", g_dir);
    CHECK(access(p, F_OK) != 0, "output dir created despite the error");

    /* a corrupt .jpg: error naming the file, no output for it (not even a .tmp) */
    char bad[700];
    snprintf(bad, sizeof bad, "%s/bad", g_dir);
    REQUIRE(mkdir(bad, 0755) == 0, "mkdir");
    snprintf(p, sizeof p, "%s/broken.jpg", bad);
    FILE *f = fopen(p, "wb");
    REQUIRE(f, "create");
    static const char junk[] = "\xff\xd8\xff\xe0 not really a jpeg";
    fwrite(junk, 1, sizeof junk - 1, f);
    fclose(f);
    snprintf(args, sizeof args, "embed --model %s --images %s --out-dir %s/bad_out", g_model,
             bad, g_dir);
    cli_expect_error(args, "broken.jpg", 0);
    CHECK(strstr(cli_err, "1 of 1 images failed"), "failure summary: %s", cli_err);
    snprintf(p, sizeof p, "%s/bad_out/_failed/broken.txt", g_dir);
    uint8_t *rec = NULL;
    size_t nrec = 0;
    CHECK(ts_read_file(p, 1 << 16, &rec, &nrec) == 0 && memmem(rec, nrec, "truncated", 9),
          "no failure record %s", p);
    free(rec);
    snprintf(p, sizeof p, "%s/bad_out/broken.npy", g_dir);
    CHECK(access(p, F_OK) != 0, "output written for a corrupt image");
    snprintf(p, sizeof p, "%s/bad_out/broken.npy.tmp", g_dir);
    CHECK(access(p, F_OK) != 0, "temporary file left for a corrupt image");
}

int main(void) {
    RUN(test_batch_f32_resume);
    RUN(test_single_fp16);
    RUN(test_usage_errors);
    int rc = test_summary();
    if (!rc && g_dir[0]) cli_rm_rf(g_dir); /* ~20 MB of outputs; kept when something failed */
    return rc;
}
