/* test_cli.c - the tinysam command as a user meets it: every bad input gets exit status
 * non-zero and exactly one line on stderr (never a crash), and a full segment run from the
 * fixture checkpoint reproduces the official masks. */
#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensor_map.h"
#include "cli_run.h"
#include "test.h"

#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>


#define MODEL "models/tinysam_vit_t_random.pth"

static void test_help(void) {
    CHECK(cli_run("--help") == 0 && strstr(cli_out, "segment"), "tinysam --help");
    const char *cmds[] = {"segment", "embed", "convert", "info", "everything"};
    for (int i = 0; i < 5; i++) {
        char a[64];
        snprintf(a, sizeof a, "%s --help", cmds[i]);
        CHECK(cli_run(a) == 0 && strstr(cli_out, "usage"), "tinysam %s --help", cmds[i]);
    }
    CHECK(cli_run("frobnicate") != 0, "unknown command accepted");
}

static void test_bad_arguments(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    char base[2048];
    snprintf(base, sizeof base, "segment --model %s --image %s --out-dir %s", fixture(MODEL),
             fixture("images/picture1.jpg"), tmp_path("segout"));
    struct { const char *extra, *needle; } cases[] = {
        {"--point nan,3", "finite"},
        {"--point 1e999,3", "finite"},
        {"--point 12,abc", "finite"},
        {"--point 12", "at least 2"},
        {"--point 1,2,3,4", "more than"},
        {"--point 1,2,5", "label"},
        {"--point 1,,2", "malformed"},
        {"--point 5000,10", "outside"},
        {"--point -1,10", "outside"},
        {"--box 600,150,120,640", "x1 < x0"},
        {"--box 1,2,3", "at least 4"},
        {"--point 10,10 --threads 0", "out of range"},
        {"--point 10,10 --max-pixels 1000", "limit"},
        {"", "no prompt"},
        {"--point 10,10 --bogus 1", "unknown"},
        {"--point", "needs a value"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char a[4096];
        snprintf(a, sizeof a, "%s %s", base, cases[i].extra);
        cli_expect_error(a, cases[i].needle, 1);
    }
}

/* convert writes the load cache unless told not to: --no-load-cache gives the plain tensors
 * (no cache tensors or tag, the digest still there; test_load_cache compares the loads). */
static void test_convert_no_cache(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    char a[4096], plain[2048];
    snprintf(plain, sizeof plain, "%s", tmp_path("convert_plain.safetensors"));
    snprintf(a, sizeof a, "convert --no-load-cache %s %s", fixture(MODEL), plain);
    CHECK(cli_run(a) == 0, "convert --no-load-cache: %s", cli_err);
    uint8_t *d = NULL;
    size_t n = 0;
    if (ts_read_file(plain, (size_t)1 << 28, &d, &n)) {
        CHECK(0, "%s", tinysam_last_error());
        return;
    }
    size_t hl = n >= 8 ? (size_t)d[0] | (size_t)d[1] << 8 | (size_t)d[2] << 16 : 0;
    char *hdr = hl && hl + 8 <= n ? strndup((const char *)d + 8, hl) : NULL;
    CHECK(hdr && !strstr(hdr, "tinysam.cache") && strstr(hdr, "tinysam.digest"),
          "the header of a --no-load-cache file: cache tensors or no digest");
    free(hdr);
    free(d);
    snprintf(a, sizeof a, "info --verify %s", plain);
    CHECK(cli_run(a) == 0 && strstr(cli_out, "\"ok\": true"), "info --verify: %s", cli_err);
    snprintf(a, sizeof a, "convert --no-cache %s %s", fixture(MODEL), plain);
    cli_expect_error(a, "unknown option", 1);
}

/* quantize's --scope and --method values are checked before anything is loaded. */
static void test_quantize_options(void) {
    cli_expect_error("quantize --model m.pth --calib a.jpg --scope everything --out q.safetensors",
                     "--scope must be gemm, encoder or all", 1);
    cli_expect_error("quantize --model m.pth --calib a.jpg --method fast --out q.safetensors",
                     "--method must be", 1);
    CHECK(cli_run("quantize --help") == 0 && strstr(cli_out, "--scope gemm|encoder|all"),
          "quantize --help lacks --scope");
}

static void test_bad_files(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    char a[4096];
    snprintf(a, sizeof a, "segment --model /nonexistent.pth --image %s --point 1,1",
             fixture("images/picture1.jpg"));
    cli_expect_error(a, "nonexistent", 1);
    snprintf(a, sizeof a, "segment --model %s --image /nonexistent.jpg --point 1,1", fixture(MODEL));
    cli_expect_error(a, "nonexistent", 1);

    /* truncated image and checkpoint copies */
    uint8_t *buf;
    size_t n;
    REQUIRE(ts_read_file(fixture("images/picture1.jpg"), 1 << 26, &buf, &n) == 0, "read jpg");
    const char *tj = tmp_path("trunc.jpg");
    FILE *f = fopen(tj, "wb");
    fwrite(buf, 1, n / 3, f);
    fclose(f);
    free(buf);
    snprintf(a, sizeof a, "segment --model %s --image %s --point 1,1 --out-dir %s", fixture(MODEL),
             tj, tmp_path("o"));
    cli_expect_error(a, NULL, 1);
    REQUIRE(ts_read_file(fixture(MODEL), 1 << 28, &buf, &n) == 0, "read pth");
    const char *tp = tmp_path("trunc.pth");
    f = fopen(tp, "wb");
    fwrite(buf, 1, n / 2, f);
    fclose(f);
    free(buf);
    snprintf(a, sizeof a, "info %s", tp);
    cli_expect_error(a, NULL, 1);
    /* a text file posing as a checkpoint */
    snprintf(a, sizeof a, "info %s", fixture("README.md"));
    cli_expect_error(a, NULL, 1);
    remove(tj);
    remove(tp);
}

static void test_wrong_model(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    /* a checkpoint whose one tensor has the wrong shape: rejected naming the tensor */
    ts_tensor_map *m;
    REQUIRE(ts_map_load(fixture(MODEL), &m) == 0, "load: %s", tinysam_last_error());
    const char *victim = "mask_decoder.iou_token.weight";
    for (int i = 0; i < m->n; i++)
        if (!strcmp(m->t[i].name, victim)) {
            m->t[i].shape[1] = 128; /* [1,256] -> [2,128]: same bytes, wrong shape */
            m->t[i].shape[0] = 2;
        }
    const char *p = tmp_path("wrong_shape.safetensors");
    REQUIRE(ts_safetensors_save(p, m, 0, NULL, NULL) == 0, "save: %s", tinysam_last_error());
    ts_map_free(m);
    char a[2048];
    snprintf(a, sizeof a, "info %s", p);
    cli_expect_error(a, victim, 1);
    remove(p);
}

static void test_mask_input_shape(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    float z[2 * 128 * 128] = {0};
    int64_t shape[2] = {128, 256};
    const char *p = tmp_path("bad_mask.npy");
    REQUIRE(ts_npy_save(p, TS_DTYPE_F32, 2, shape, z) == 0, "save npy");
    char a[4096];
    snprintf(a, sizeof a, "segment --model %s --image %s --point 10,10 --mask-input %s --out-dir %s",
             fixture(MODEL), fixture("images/shapes.png"), p, tmp_path("o"));
    cli_expect_error(a, "mask input", 1);
    remove(p);
}

/* Full pipeline through the CLI: decode, resize, encoder, decoder, upsampling. */
static void test_segment_matches_reference(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    const char *dir = tmp_path("seg_point");
    const char *lr = tmp_path("seg_point_lowres.npy");
    char a[4096];
    snprintf(a, sizeof a, "segment --model %s --image %s --point 380,300 --out-dir %s --low-res-out %s",
             fixture(MODEL), fixture("images/picture1.jpg"), dir, lr);
    int st = cli_run(a);
    REQUIRE(st == 0, "segment failed (%d): %s", st, cli_err);
    CHECK(strstr(cli_out, "\"iou_predictions\"") && strstr(cli_out, "\"best\": 0"), "stdout: %s", cli_out);
    ts_npy ref, low;
    REQUIRE(ts_npy_load(fixture("reference/picture1/prompts/point/masks.npy"), &ref) == 0, "ref");
    REQUIRE(ts_npy_load(lr, &low) == 0, "low-res out: %s", tinysam_last_error());
    CHECK(low.ndim == 3 && low.shape[0] == 3 && low.shape[1] == 256, "low-res shape");
    size_t plane = 770 * 769;
    for (int k = 0; k < 3; k++) {
        char mp[4200];
        snprintf(mp, sizeof mp, "%s/mask_%d.png", dir, k);
        tinysam_image img;
        REQUIRE(tinysam_image_load(mp, 0, &img) == 0, "read %s: %s", mp, tinysam_last_error());
        REQUIRE(img.width == 769 && img.height == 770, "mask size %dx%d", img.width, img.height);
        size_t same = 0;
        for (size_t i = 0; i < plane; i++)
            same += (img.rgb[3 * i] > 127) == (((uint8_t *)ref.data)[k * plane + i] != 0);
        double frac = (double)same / plane;
        printf("  mask %d: %.5f%% of pixels equal the reference\n", k, 100.0 * frac);
        CHECK(frac >= 0.999, "mask %d agrees on %.5f only", k, frac);
        tinysam_image_free(&img);
    }
    ts_npy_free(&ref);
    ts_npy_free(&low);
}

/* tinysam everything with the scene oracle: the written records equal the official ones
 * (COCO strings compared as text, in order). */
static void test_everything_oracle_cli(void) {
    if (!fixture_exists("oracle/scene_a/scene.json")) SKIP("fixtures missing");
    const char *out = tmp_path("everything.json"), *ov = tmp_path("everything.png");
    char a[4096];
    snprintf(a, sizeof a, "everything --oracle-scene %s --out %s --overlay %s --quiet",
             fixture("oracle/scene_a/scene.json"), out, ov);
    int st = cli_run(a);
    REQUIRE(st == 0, "everything failed (%d): %s", st, cli_err);
    CHECK(strstr(cli_out, "\"masks\": 11") && strstr(cli_out, "\"per_pass\": [64, 154]"), "summary: %s", cli_out);
    ts_json *mine, *ref;
    REQUIRE(ts_json_load(out, &mine) == 0, "output is not JSON: %s", tinysam_last_error());
    REQUIRE(ts_json_load(fixture("oracle/scene_a/default/hierarchical.json"), &ref) == 0, "ref");
    const ts_json *rr = ts_json_get(ref, "records");
    REQUIRE(mine->type == TS_JSON_ARRAY && mine->n == rr->n, "%d records, reference %d", mine->n, rr->n);
    for (int i = 0; i < mine->n; i++) {
        const ts_json *x = ts_json_get(ts_json_get(&mine->items[i], "segmentation"), "counts");
        const ts_json *y = ts_json_get(ts_json_get(&rr->items[i], "segmentation"), "counts");
        CHECK(x && y && !strcmp(x->string, y->string), "record %d: counts differ", i);
        CHECK(ts_json_num(&mine->items[i], "area", -1) == ts_json_num(&rr->items[i], "area", -2),
              "record %d: area", i);
    }
    tinysam_image img;
    CHECK(tinysam_image_load(ov, 0, &img) == 0 && img.width == 1200 && img.height == 900, "overlay");
    tinysam_image_free(&img);
    ts_json_free(mine);
    ts_json_free(ref);
    cli_expect_error("everything --oracle-scene x.json --out y.json --box-nms-thresh 1.5", "range", 1);
    cli_expect_error("everything --oracle-scene x.json --out y.json --points-per-side 0", "range", 1);
    cli_expect_error("everything --oracle-scene /nonexistent.json --out y.json", "nonexistent", 1);
    remove(out);
    remove(ov);
}

int main(void) {
    RUN(test_help);
    RUN(test_bad_arguments);
    RUN(test_quantize_options);
    RUN(test_convert_no_cache);
    RUN(test_bad_files);
    RUN(test_wrong_model);
    RUN(test_mask_input_shape);
    RUN(test_segment_matches_reference);
    RUN(test_everything_oracle_cli);
    return test_summary();
}
