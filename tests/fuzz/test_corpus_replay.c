/* test_corpus_replay.c - replays every fuzz seed (tests/fuzz/corpus/NAME/) and every input
 * that once crashed, hung or leaked (tests/fuzz/regress/NAME/) through the same entry
 * points as the libFuzzer harnesses. Each must return cleanly within 1 s: TINYSAM_OK or a
 * known negative status with a message. Under `make SAN=1 test` this is the sanitizer
 * check of the regression corpus. TS_FUZZ_VERBOSE=1 prints each input's result. */
#include "test.h"

#include "core.h"
#include "cli/args.c"  /* CLI code, not in the library; the args target needs it */
#include "targets.c"

#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#define FUZZ_DIR "tests/fuzz"
/* The hang criterion (1 s per input) is for optimised builds; sanitizer builds run the same
 * code 5-10x slower, so they get a proportionally wider budget. */
#if defined(__SANITIZE_ADDRESS__)
#define MAX_SECONDS 10.0
#else
#define MAX_SECONDS 1.0
#endif

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static uint8_t *read_all(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            cap = cap ? 2 * cap : 4096;
            uint8_t *nb = realloc(buf, cap);
            if (!nb) break;
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    fclose(f);
    *size = n;
    return buf;
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Replays kind/NAME/ for every target; returns the number of inputs run. *n_ok counts
 * inputs that loaded (TINYSAM_OK). */
static int replay_dir(const char *kind, int *n_ok) {
    int total = 0;
    const char *verbose = getenv("TS_FUZZ_VERBOSE");
    for (const ts_fuzz_target *t = ts_fuzz_targets; t->name; t++) {
        char dir[512];
        snprintf(dir, sizeof dir, FUZZ_DIR "/%s/%s", kind, t->name);
        DIR *d = opendir(dir);
        if (!d) continue;
        char **names = NULL;
        int n = 0, cap = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.') continue;
            if (n == cap) {
                cap = cap ? 2 * cap : 64;
                char **nn = realloc(names, (size_t)cap * sizeof *nn);
                if (!nn) break;
                names = nn;
            }
            names[n++] = strdup(e->d_name);
        }
        closedir(d);
        if (n) qsort(names, (size_t)n, sizeof *names, cmp_str);
        for (int i = 0; i < n; i++) {
            char path[1024];
            snprintf(path, sizeof path, "%s/%s", dir, names[i]);
            struct stat st;
            if (stat(path, &st) || !S_ISREG(st.st_mode)) {
                free(names[i]);
                continue;
            }
            size_t size = 0;
            uint8_t *data = read_all(path, &size);
            CHECK(data || size == 0, "%s: unreadable", path);
            ts_error_clear();
            double t0 = now_s();
            int rc = t->fn(data ? data : (const uint8_t *)"", size);
            double dt = now_s() - t0;
            const char *msg = tinysam_last_error();
            if (verbose) printf("  %-60s rc=%d %.3fs %s\n", path, rc, dt, rc ? msg : "");
            CHECK(rc == 0 || (rc <= TINYSAM_E_IO && rc >= TINYSAM_E_LIMIT),
                  "%s: status %d is not a tinysam_status", path, rc);
            CHECK(rc == 0 || (msg && *msg), "%s: failed (%d) without a message", path, rc);
            CHECK(dt < MAX_SECONDS, "%s: took %.2f s (limit %.0f s)", path, dt, MAX_SECONDS);
            if (rc == 0) (*n_ok)++;
            total++;
            free(data);
            free(names[i]);
        }
        free(names);
    }
    return total;
}

static void test_regress_replay(void) {
    int ok = 0, n = replay_dir("regress", &ok);
    printf("  %d regression inputs (%d load)\n", n, ok);
    if (n == 0) SKIP("no regression inputs");
}

static void test_corpus_replay(void) {
    int ok = 0, n = replay_dir("corpus", &ok);
    printf("  %d seeds (%d load)\n", n, ok);
    if (n == 0) SKIP("no seed corpus (sh tests/fuzz/make_seeds.sh)");
    /* Most seeds are valid files: a corpus that no longer loads has stopped reaching the
     * deep paths of the parsers. */
    CHECK(ok * 2 > n, "only %d of %d seeds load", ok, n);
}

static uint8_t *seed(const char *rel, size_t *size) {
    char path[512];
    snprintf(path, sizeof path, FUZZ_DIR "/corpus/%s", rel);
    return read_all(path, size);
}

/* The checkpoint seeds were written by Python's pickle as torch.save writes them
 * (make_seeds.py): their values are known. Every container and protocol must agree. */
static void test_pth_seed_values(void) {
    static const char *names[] = {"zip_p2", "zip_p4", "zip_nested", "legacy_p2", "legacy_p5"};
    for (size_t k = 0; k < sizeof names / sizeof names[0]; k++) {
        char rel[64];
        snprintf(rel, sizeof rel, "pth/%s", names[k]);
        size_t size;
        uint8_t *data = seed(rel, &size);
        if (!data) SKIP("no seed corpus (sh tests/fuzz/make_seeds.sh)");
        ts_tensor_map *m = NULL;
        int rc = ts_pth_load_memory(data, size, &m);
        CHECK(rc == 0, "%s: %s", rel, tinysam_last_error());
        if (rc == 0) {
            static const float t_want[6] = {0.5f, 3, -1, 4, 2, 5}; /* [[.5,-1,2],[3,4,5]]^T */
            const ts_tensor *w = ts_map_get(m, "layer.weight"), *b = ts_map_get(m, "layer.bias"),
                            *t = ts_map_get(m, "layer.t"), *h = ts_map_get(m, "half"),
                            *bf = ts_map_get(m, "bf"), *n = ts_map_get(m, "bn.num_batches_tracked");
            REQUIRE(w && b && t && h && bf && n, "%s: missing tensors", rel);
            CHECK(w->ndim == 2 && w->shape[0] == 2 && w->shape[1] == 3 &&
                      ((float *)w->data)[1] == -1.0f, "%s: layer.weight", rel);
            CHECK(b->numel == 2 && ((float *)b->data)[0] == 4 && ((float *)b->data)[1] == 5,
                  "%s: layer.bias (a view at offset 4)", rel);
            CHECK(t->ndim == 2 && t->shape[0] == 3 && !memcmp(t->data, t_want, sizeof t_want),
                  "%s: layer.t (a transposed view)", rel);
            CHECK(h->dtype == TS_DTYPE_F32 && h->numel == 4 && ((float *)h->data)[3] == 4.0f,
                  "%s: half (float16 parameter)", rel);
            const float *bfv = bf->data;
            CHECK(bf->numel == 2 && bfv[0] == 1.0f && bfv[1] == -2.0f, "%s: bf (bfloat16)", rel);
            CHECK(n->dtype == TS_DTYPE_I64 && n->ndim == 0 && ((int64_t *)n->data)[0] == 7,
                  "%s: num_batches_tracked", rel);
            ts_map_free(m);
        }
        free(data);
    }
}

/* EXIF orientations 5-8 transpose the image: 13x9 stored, 9x13 shown. */
static void test_exif_seed_sizes(void) {
    for (int o = 1; o <= 8; o++) {
        char rel[64];
        snprintf(rel, sizeof rel, "image/jpg_exif_%d_%s", o, o % 2 ? "be" : "le");
        size_t size;
        uint8_t *data = seed(rel, &size);
        if (!data) SKIP("no seed corpus (sh tests/fuzz/make_seeds.sh)");
        tinysam_image img = {0};
        int rc = tinysam_image_decode(data, size, 0, &img);
        CHECK(rc == 0, "%s: %s", rel, tinysam_last_error());
        if (rc == 0) {
            int w = o >= 5 ? 9 : 13, h = o >= 5 ? 13 : 9;
            CHECK(img.width == w && img.height == h, "%s: %dx%d, expected %dx%d", rel, img.width,
                  img.height, w, h);
            tinysam_image_free(&img);
        }
        free(data);
    }
}

int main(void) {
    RUN(test_regress_replay);
    RUN(test_corpus_replay);
    RUN(test_pth_seed_values);
    RUN(test_exif_seed_sizes);
    return test_summary();
}
