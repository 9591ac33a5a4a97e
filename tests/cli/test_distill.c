/* test_distill.c - `tinysam distill` as a user runs it: one step on a fixture image with
 * rectangle ground truths (uncompressed COCO RLE) writes a model that loads, a JSON log line
 * with finite losses and a checkpoint; resuming a finished run and resuming with other
 * settings are refused; bad usages and bad data fail with one line. The step itself is
 * checked against PyTorch in tests/train/test_trainer.c. */
#include "cli_run.h"
#include "core.h"
#include "io/json.h"
#include "test.h"
#include "tinysam.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TEACHER "models/tinysam_vit_t_random.pth"
#define STUDENT "distill/student_fp16.pth"

static char g_dir[256];

/* SA-1B-style ground truth of W x H rectangles (x0, y0, x1, y1 fractions), counts column-major
 * starting with a zero run. */
static int write_gt(const char *path, int W, int H, int n, const double (*r)[4]) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\"image\": {\"width\": %d, \"height\": %d}, \"annotations\": [", W, H);
    for (int k = 0; k < n; k++) {
        int x0 = (int)(r[k][0] * W), y0 = (int)(r[k][1] * H), x1 = (int)(r[k][2] * W),
            y1 = (int)(r[k][3] * H);
        fprintf(f, "%s{\"id\": %d, \"bbox\": [%d, %d, %d, %d], \"segmentation\": {\"size\": [%d, "
                   "%d], \"counts\": [", k ? ", " : "", k, x0, y0, x1 - x0, y1 - y0, H, W);
        /* column-major: columns before x0 empty, then per column y0 zeros, y1-y0 ones, ... */
        long long run0 = (long long)x0 * H + y0;
        fprintf(f, "%lld", run0);
        for (int x = x0; x < x1; x++) {
            long long zeros = (x + 1 < x1) ? (H - y1) + y0 : (long long)(H - y1) + (long long)(W - x1) * H;
            fprintf(f, ", %d, %lld", y1 - y0, zeros);
        }
        fprintf(f, "]}}");
    }
    fprintf(f, "]}\n");
    return fclose(f);
}

static int setup(void) {
    snprintf(g_dir, sizeof g_dir, "%s", tmp_path("distill_cli"));
    cli_rm_rf(g_dir);
    char p[512], q[512];
    const char *sub[] = {"images", "emb", "masks"};
    if (mkdir(g_dir, 0755)) return 0;
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", g_dir, sub[i]);
        if (mkdir(p, 0755)) return 0;
    }
    snprintf(p, sizeof p, "%s/images/shapes.png", g_dir);
    snprintf(q, sizeof q, "%s/emb/shapes.npy", g_dir);
    if (cli_copy_file(fixture("images/shapes.png"), p) ||
        cli_copy_file(fixture("reference/shapes/embedding.npy"), q))
        return 0;
    static const double rects[3][4] = {{0.1, 0.1, 0.4, 0.5}, {0.5, 0.2, 0.9, 0.6},
                                       {0.2, 0.6, 0.7, 0.95}};
    snprintf(p, sizeof p, "%s/masks/shapes.json", g_dir);
    return write_gt(p, 640, 480, 3, rects) == 0;
}

static void test_one_step(void) {
    if (!fixture_exists(TEACHER) || !fixture_exists(STUDENT)) SKIP("fixtures missing");
    REQUIRE(setup(), "test data");
    char args[4096], base[3000], path[600];
    snprintf(base, sizeof base,
             "--teacher %s --student %s --images %s/images --embeddings %s/emb --masks %s/masks",
             fixture(TEACHER), fixture(STUDENT), g_dir, g_dir, g_dir);
    snprintf(args, sizeof args,
             "distill %s --steps 1 --prompts 2 --rounds 1 --warmup 0 --checkpoint-every 1 "
             "--out %s/student.safetensors --threads 2", base, g_dir);
    int st = cli_run(args);
    printf("  %s", cli_err);
    REQUIRE(st == 0, "distill failed (%d): %s", st, cli_err);
    CHECK(strstr(cli_err, "step 1/1 shapes: sets 2 t 1") != NULL, "progress line: %s", cli_err);
    /* the log: one JSON object with finite losses */
    snprintf(path, sizeof path, "%s/student.safetensors.log.jsonl", g_dir);
    ts_json *log = NULL;
    REQUIRE(ts_json_load(path, &log) == 0, "log: %s", tinysam_last_error());
    const char *terms[] = {"L_total", "L_emb", "L_tok", "L_out_weighted", "L_mask", "L_iou"};
    for (int k = 0; k < 6; k++) {
        double v = ts_json_num(log, terms[k], NAN);
        CHECK(isfinite(v) && v > 0, "log %s = %g", terms[k], v);
    }
    CHECK(ts_json_num(log, "step", 0) == 1 && ts_json_num(log, "sets", 0) == 2 &&
              ts_json_num(log, "t", -1) == 1, "log step/sets/t");
    ts_json_free(log);
    /* the model loads and segments */
    snprintf(path, sizeof path, "%s/student.safetensors", g_dir);
    tinysam_model *m = NULL;
    CHECK(tinysam_model_load(path, &m) == 0, "the trained model does not load: %s",
          tinysam_last_error());
    tinysam_model_free(m);
    snprintf(args, sizeof args, "segment --model %s/student.safetensors --image %s --point "
             "320,240 --out-dir %s", g_dir, fixture("images/shapes.png"), g_dir);
    CHECK(cli_run(args) == 0, "segment with the trained model: %s", cli_err);
    /* resuming the finished run: nothing to do; with other settings: refused */
    snprintf(args, sizeof args,
             "distill %s --steps 1 --prompts 2 --rounds 1 --warmup 0 --checkpoint-every 1 "
             "--out %s/s2.safetensors --resume %s/student.safetensors.ckpt.safetensors",
             base, g_dir, g_dir);
    cli_expect_error(args, "nothing left to do", 0);
    snprintf(args, sizeof args,
             "distill %s --steps 1 --prompts 2 --rounds 1 --warmup 0 --lr 1e-3 --out "
             "%s/s2.safetensors --resume %s/student.safetensors.ckpt.safetensors",
             base, g_dir, g_dir);
    cli_expect_error(args, "other settings", 0);
    snprintf(args, sizeof args, "distill %s --steps 1 --out %s/s2.safetensors --resume %s",
             base, g_dir, path);
    cli_expect_error(args, "not a tinysam distill checkpoint", 0);
}

/* Several images per step without MPI (the default build): one image taken twice (the epoch
 * order runs on into the next epoch), one Adam step on the mean; a rerun gives the same bits. */
static void test_images_per_step(void) {
    if (!fixture_exists(TEACHER) || !fixture_exists(STUDENT)) SKIP("fixtures missing");
    if (!g_dir[0]) REQUIRE(setup(), "test data");
    char args[4096], base[3000], a[600];
    snprintf(base, sizeof base,
             "distill --teacher %s --student %s --images %s/images --embeddings %s/emb --masks "
             "%s/masks --steps 1 --prompts 2 --rounds 1 --warmup 0 --train decoder "
             "--images-per-step 2 --threads 2",
             fixture(TEACHER), fixture(STUDENT), g_dir, g_dir, g_dir);
    for (int k = 0; k < 2; k++) {
        snprintf(args, sizeof args, "%s --out %s/b2_%d.safetensors", base, g_dir, k);
        int st = cli_run(args);
        REQUIRE(st == 0, "distill --images-per-step 2 failed (%d): %s", st, cli_err);
    }
    CHECK(strstr(cli_err, "step 1/1 shapes+1: images 2/2 sets 4 t 1") != NULL, "progress: %s",
          cli_err);
    snprintf(a, sizeof a, "%s/b2_0.safetensors.log.jsonl", g_dir);
    ts_json *log = NULL;
    REQUIRE(ts_json_load(a, &log) == 0, "log: %s", tinysam_last_error());
    CHECK(ts_json_num(log, "usable", 0) == 2 && ts_json_num(log, "sets", 0) == 4 &&
              isfinite(ts_json_num(log, "L_total", NAN)), "log usable/sets/L_total");
    ts_json_free(log);
    snprintf(a, sizeof a, "cmp -s %s/b2_0.safetensors %s/b2_1.safetensors", g_dir, g_dir);
    CHECK(system(a) == 0, "two runs with B = 2 differ");
    snprintf(args, sizeof args, "%s --out %s/b2_x.safetensors --images-per-step 0", base, g_dir);
    cli_expect_error(args, "--images-per-step", 1);
}

static void test_usage_and_data_errors(void) {
    if (!fixture_exists(TEACHER) || !fixture_exists(STUDENT)) SKIP("fixtures missing");
    if (!g_dir[0]) REQUIRE(setup(), "test data");
    char args[4096], base[3000], p[600];
    snprintf(base, sizeof base,
             "--teacher %s --student %s --images %s/images --embeddings %s/emb --masks %s/masks",
             fixture(TEACHER), fixture(STUDENT), g_dir, g_dir, g_dir);
    cli_expect_error("distill --teacher x", "required", 1);
    snprintf(args, sizeof args, "distill %s --out %s/o.safetensors", base, g_dir);
    cli_expect_error(args, "--steps", 1);
    snprintf(args, sizeof args, "distill %s --steps 1 --epochs 1 --out %s/o.safetensors", base,
             g_dir);
    cli_expect_error(args, "one of --steps", 1);
    snprintf(args, sizeof args, "distill %s --steps 1 --prompts 65 --out %s/o.safetensors", base,
             g_dir);
    cli_expect_error(args, "--prompts", 1);
    snprintf(args, sizeof args, "distill %s --steps 1 --train nothing --out %s/o.safetensors",
             base, g_dir);
    cli_expect_error(args, "--train", 1);
    snprintf(args, sizeof args,
             "distill --teacher %s --student %s --images %s/nowhere --embeddings %s/emb "
             "--masks %s/masks --steps 1 --out %s/o.safetensors",
             fixture(TEACHER), fixture(STUDENT), g_dir, g_dir, g_dir, g_dir);
    cli_expect_error(args, "--images", 1);
    snprintf(args, sizeof args,
             "distill --teacher %s --student %s --images %s/images --embeddings %s/masks "
             "--masks %s/masks --steps 1 --out %s/o.safetensors",
             fixture(TEACHER), fixture(STUDENT), g_dir, g_dir, g_dir, g_dir);
    cli_expect_error(args, "no image", 0);
    snprintf(args, sizeof args,
             "distill --teacher %s --student %s --images %s/images --embeddings %s/emb "
             "--masks %s/masks --steps 1 --out %s/o.safetensors",
             fixture("images/shapes.png"), fixture(STUDENT), g_dir, g_dir, g_dir, g_dir);
    cli_expect_error(args, NULL, 0);
    /* a wrong-size embedding and a mask of the wrong size: named in the error */
    snprintf(p, sizeof p, "%s/emb/shapes.npy", g_dir);
    REQUIRE(cli_copy_file(fixture("reference/shapes/resized.npy"), p) == 0, "copy");
    snprintf(args, sizeof args, "distill %s --steps 1 --prompts 2 --out %s/o.safetensors", base,
             g_dir);
    cli_expect_error(args, "256x64x64", 0);
    REQUIRE(cli_copy_file(fixture("reference/shapes/embedding.npy"), p) == 0, "copy");
    static const double r1[1][4] = {{0.1, 0.1, 0.5, 0.5}};
    snprintf(p, sizeof p, "%s/masks/shapes.json", g_dir);
    REQUIRE(write_gt(p, 64, 48, 1, r1) == 0, "gt");
    cli_expect_error(args, "differs from the image", 0);
    cli_rm_rf(g_dir);
}

int main(void) {
    RUN(test_one_step);
    RUN(test_images_per_step);
    RUN(test_usage_and_data_errors);
    return test_summary();
}
