/* test_eval.c - `tinysam eval` end to end: ground truth made from the CLI's own box mask
 * (same model, same prompt) must score box IoU 1.0; the same mask grown by K pixels outside
 * it must score A / (A + K), counted here by hand; bad inputs fail with one line. */
#include "core.h"
#include "everything/amg.h"
#include "io/json.h"
#include "cli_run.h"
#include "test.h"
#include "tinysam.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>


#define MODEL "models/tinysam_vit_t_random.pth"

static int write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fputs(text, f) >= 0;
    return (fclose(f) == 0 && ok) ? 0 : -1;
}

/* COCO RLE string of a row-major W x H 0/1 mask (malloc'd). */
static char *rle_string(const uint8_t *mask, int W, int H) {
    ts_rle r = {0};
    if (ts_rle_encode(mask, W, H, 0, 0, W, H, &r)) return NULL;
    char *s = ts_rle_to_string(r.counts, r.n);
    ts_rle_free(&r);
    if (!s) return NULL;
    /* COCO strings hold backslashes (and quotes are legal): escape them for JSON */
    char *e = malloc(2 * strlen(s) + 1), *q = e;
    for (const char *c = s; e && *c; c++) {
        if (*c == '\\' || *c == '"') *q++ = '\\';
        *q++ = *c;
    }
    if (e) *q = 0;
    free(s);
    return e;
}

static double json_at_num(const ts_json *arr, int i) {
    const ts_json *v = arr ? ts_json_at(arr, i) : NULL;
    return v && v->type == TS_JSON_NUMBER ? v->number : NAN;
}

static char g_dir[900], g_img[1024], g_gt[1024];

static void test_eval_own_mask(void) {
    if (!fixture_exists(MODEL) || !fixture_exists("images/picture1.jpg"))
        SKIP("fixtures missing");
    char seg[1024], a[8192];
    snprintf(g_dir, sizeof g_dir, "%s", tmp_path("eval"));
    snprintf(g_img, sizeof g_img, "%s/img", g_dir);
    snprintf(g_gt, sizeof g_gt, "%s/gt", g_dir);
    snprintf(seg, sizeof seg, "%s/seg", g_dir);
    mkdir(g_dir, 0755);
    mkdir(g_img, 0755);
    mkdir(g_gt, 0755);
    mkdir(seg, 0755);
    char p[2048];
    snprintf(p, sizeof p, "%s/picture1.jpg", g_img);
    REQUIRE(cli_copy_file(fixture("images/picture1.jpg"), p) == 0, "copy picture1");
    snprintf(p, sizeof p, "%s/shapes.png", g_img); /* no ground truth: skipped */
    REQUIRE(cli_copy_file(fixture("images/shapes.png"), p) == 0, "copy shapes");

    /* The CLI's own single mask for a box (x0,y0,x1,y1) = (100,120,420,400). */
    snprintf(a, sizeof a, "segment --model %s --image %s/picture1.jpg --box 100,120,420,400 "
             "--single-mask --out-dir %s", fixture(MODEL), g_img, seg);
    REQUIRE(cli_run(a) == 0, "segment failed: %s", cli_err);
    snprintf(p, sizeof p, "%s/mask_0.png", seg);
    tinysam_image mimg;
    REQUIRE(tinysam_image_load(p, 0, &mimg) == 0, "load mask png: %s", tinysam_last_error());
    int W = mimg.width, H = mimg.height;
    size_t npix = (size_t)W * H;
    uint8_t *m0 = malloc(npix), *m1 = malloc(npix);
    REQUIRE(m0 && m1, "oom");
    size_t A = 0;
    for (size_t i = 0; i < npix; i++) A += (m0[i] = mimg.rgb[3 * i] > 127);
    tinysam_image_free(&mimg);
    if (A == 0 || A == npix) {
        free(m0);
        free(m1);
        SKIP("the random model's box mask is trivial");
    }
    /* Hand case: the same mask plus the first K pixels (row-major) outside it; the eval's
     * prediction is unchanged (same box), so its IoU must be A / (A + K). */
    size_t K = A / 3 + 1 < npix - A ? A / 3 + 1 : npix - A, added = 0;
    memcpy(m1, m0, npix);
    for (size_t i = 0; i < npix && added < K; i++)
        if (!m1[i]) m1[i] = 1, added++;
    double expect = (double)A / (double)(A + K);
    char *r0 = rle_string(m0, W, H), *r1 = rle_string(m1, W, H);
    REQUIRE(r0 && r1, "rle encode");
    size_t jl = strlen(r0) + strlen(r1) + 2048;
    char *js = malloc(jl);
    REQUIRE(js, "oom");
    snprintf(js, jl,
             "{\"image\": {\"file_name\": \"picture1.jpg\", \"width\": %d, \"height\": %d},\n"
             " \"annotations\": [\n"
             "  {\"id\": 1, \"bbox\": [100, 120, 320, 280], \"area\": %zu,\n"
             "   \"segmentation\": {\"size\": [%d, %d], \"counts\": \"%s\"}},\n"
             "  {\"id\": 2, \"bbox\": [100, 120, 320, 280], \"point_coords\": [[260, 260]],\n"
             "   \"segmentation\": {\"size\": [%d, %d], \"counts\": \"%s\"}}]}\n",
             W, H, A, H, W, r0, H, W, r1);
    snprintf(p, sizeof p, "%s/picture1.json", g_gt);
    REQUIRE(write_text(p, js) == 0, "write gt");
    free(js);
    free(r0);
    free(r1);
    free(m0);
    free(m1);

    snprintf(a, sizeof a, "eval --model %s --images %s --masks %s", fixture(MODEL), g_img, g_gt);
    REQUIRE(cli_run(a) == 0, "eval failed: %s", cli_err);
    ts_json *rep = NULL;
    REQUIRE(ts_json_parse(cli_out, strlen(cli_out), &rep) == 0, "report is not JSON: %s", cli_out);
    const ts_json *imgs = ts_json_get(rep, "images");
    const ts_json *im0 = imgs ? ts_json_at(imgs, 0) : NULL;
    CHECK(imgs && imgs->n == 1, "expected one evaluated image");
    CHECK(ts_json_num(rep, "n_images", -1) == 1 && ts_json_num(rep, "n_objects", -1) == 2,
          "counts: %s", cli_out);
    CHECK(ts_json_num(rep, "n_point_prompts", -1) == 2, "point prompts: %s", cli_out);
    const ts_json *bi = im0 ? ts_json_get(im0, "box_iou") : NULL;
    const ts_json *pi = im0 ? ts_json_get(im0, "point_iou") : NULL;
    double b0 = json_at_num(bi, 0), b1 = json_at_num(bi, 1);
    CHECK(b0 == 1.0, "own box mask: IoU %.6f, expected 1.0", b0);
    CHECK(fabs(b1 - expect) < 1e-6, "grown mask: IoU %.6f, expected %.6f (A=%zu K=%zu)", b1,
          expect, A, K);
    CHECK(fabs(ts_json_num(im0, "mean_box_iou", -1) - (1.0 + expect) / 2) < 2e-6, "mean box IoU");
    for (int i = 0; i < 2; i++) {
        double v = json_at_num(pi, i);
        CHECK(v >= 0 && v <= 1, "point IoU %d = %f", i, v);
    }
    CHECK(strstr(cli_err, "mean box IoU") != NULL, "no summary on stderr: %s", cli_err);
    ts_json_free(rep);

    /* --boxes: a "detector" gives the same box, a far one, and one of another image (numeric
     * id that matches nothing): object 1 scores 1, object 2 A / (A + K) (the same box's mask
     * is its best match); both file layouts */
    const char *files[2] = {
        "[{\"image_id\": \"picture1\", \"bbox\": [700, 700, 60, 60], \"score\": 0.5},\n"
        " {\"image_id\": \"picture1\", \"bbox\": [100, 120, 320, 280], \"score\": 0.9},\n"
        " {\"image_id\": 7, \"bbox\": [0, 0, 5, 5]}]\n",
        "{\"picture1\": [[700, 700, 60, 60], {\"bbox\": [100, 120, 320, 280]}],\n"
        " \"other\": [[0, 0, 5, 5]]}\n"};
    for (int f = 0; f < 2; f++) {
        snprintf(p, sizeof p, "%s/boxes%d.json", g_dir, f);
        REQUIRE(write_text(p, files[f]) == 0, "write boxes");
        snprintf(a, sizeof a, "eval --model %s --images %s --masks %s --boxes %s", fixture(MODEL),
                 g_img, g_gt, p);
        REQUIRE(cli_run(a) == 0, "eval --boxes failed: %s", cli_err);
        REQUIRE(ts_json_parse(cli_out, strlen(cli_out), &rep) == 0, "report: %s", cli_out);
        im0 = ts_json_at(ts_json_get(rep, "images"), 0);
        const ts_json *di = im0 ? ts_json_get(im0, "detector_iou") : NULL;
        double d0 = json_at_num(di, 0), d1 = json_at_num(di, 1);
        CHECK(ts_json_num(im0, "detector_boxes", -1) == 2 &&
                  ts_json_num(rep, "detector_boxes", -1) == 2,
              "layout %d: detector boxes: %s", f, cli_out);
        CHECK(d0 == 1.0, "layout %d: own box from the detector: IoU %.6f, expected 1", f, d0);
        CHECK(fabs(d1 - expect) < 1e-6, "layout %d: grown mask: IoU %.6f, expected %.6f", f, d1,
              expect);
        CHECK(fabs(ts_json_num(rep, "mean_detector_iou", -1) - (1.0 + expect) / 2) < 2e-6,
              "layout %d: mean detector IoU", f);
        ts_json_free(rep);
    }
}

static void test_eval_errors(void) {
    if (!fixture_exists(MODEL) || !g_dir[0]) SKIP("fixtures missing");
    char a[8192], bad[1024], p[2048];
    snprintf(bad, sizeof bad, "%s/badgt", g_dir);
    mkdir(bad, 0755);
    snprintf(p, sizeof p, "%s/picture1.json", bad);

    REQUIRE(write_text(p, "{\"annotations\": [ {\"bbox\": [1, 2, 3") == 0, "write");
    snprintf(a, sizeof a, "eval --model %s --images %s --masks %s", fixture(MODEL), g_img, bad);
    cli_expect_error(a, "picture1.json", 0);

    REQUIRE(write_text(p, "{\"annotations\": [{\"bbox\": [1, 2, 3, 4], \"segmentation\": "
                          "{\"size\": [770, 769], \"counts\": \"0Q1\"}}]}") == 0, "write");
    cli_expect_error(a, "annotation 0", 0);

    REQUIRE(write_text(p, "{\"annotations\": [{\"bbox\": [1, 2, 3], \"segmentation\": "
                          "{\"size\": [770, 769], \"counts\": [592130]}}]}") == 0, "write");
    cli_expect_error(a, "bbox", 0);

    REQUIRE(write_text(p, "{\"annotations\": [{\"bbox\": [1, 2, 3, 4], \"segmentation\": "
                          "{\"size\": [10, 10], \"counts\": [100]}}]}") == 0, "write");
    cli_expect_error(a, "size", 0);

    REQUIRE(write_text(p, "[1, 2]") == 0, "write");
    cli_expect_error(a, "annotations", 0);

    snprintf(a, sizeof a, "eval --model %s --images %s --masks %s/nonexistent", fixture(MODEL),
             g_img, g_dir);
    cli_expect_error(a, "--masks", 0);
    snprintf(a, sizeof a, "eval --model %s --images %s/nonexistent --masks %s", fixture(MODEL),
             g_dir, g_gt);
    cli_expect_error(a, "--images", 0);
    snprintf(a, sizeof a, "eval --model /nonexistent.pth --images %s --masks %s", g_img, g_gt);
    cli_expect_error(a, NULL, 0);
    snprintf(a, sizeof a, "eval --model %s --images %s --masks %s", fixture(MODEL), g_gt, g_gt);
    cli_expect_error(a, "no image", 0);
    snprintf(a, sizeof a, "eval --model %s --images %s --masks %s --boxes %s/none.json",
             fixture(MODEL), g_img, g_gt, g_dir);
    cli_expect_error(a, "none.json", 0);
    snprintf(bad, sizeof bad, "%s/badboxes.json", g_dir);
    REQUIRE(write_text(bad, "{\"picture1\": [[1, 2, 3]]}") == 0, "write");
    snprintf(a, sizeof a, "eval --model %s --images %s --masks %s --boxes %s", fixture(MODEL),
             g_img, g_gt, bad);
    cli_expect_error(a, "[x, y, w, h]", 0);
    REQUIRE(write_text(bad, "[{\"bbox\": [1, 2, 3, 4]}]") == 0, "write");
    cli_expect_error(a, "image_id", 0);
    cli_expect_error("eval --images x", "required", 0);
    cli_expect_error("eval --frobnicate", "unknown option", 0);
    CHECK(cli_run("eval --help") == 0 && strstr(cli_out, "usage"), "eval --help");
}

int main(void) {
    RUN(test_eval_own_mask);
    RUN(test_eval_errors);
    return test_summary();
}
