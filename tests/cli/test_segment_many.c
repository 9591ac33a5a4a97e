/* test_segment_many.c - tinysam segment's labelling outputs: --embedding (the
 * masks of the run that encodes; another model's or a malformed embedding
 * refused), several boxes per call
 * (--box repeated, --boxes as COCO results or XYXY lists: one record per box,
 * each the one-box call's best mask), --format polygons and --format yolo. */
#include "cli_run.h"
#include "core.h"
#include "everything/amg.h"
#include "everything/polygons.h"
#include "io/image.h"
#include "io/json.h"
#include "io/npy.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODEL "models/tinysam_vit_t_random.pth"
#define IMAGE "images/shapes.png"

static char emb[1024];

/* The last run's whole stdout (cli_out keeps 64 KB; RLE records of jagged masks
 * are longer). */
static char *whole_stdout(void) {
    uint8_t *d = NULL;
    size_t n = 0;
    if (ts_read_file(tmp_path("cli_stdout.txt"), (size_t)1 << 28, &d, &n)) return NULL;
    char *t = realloc(d, n + 1);
    if (!t) {
        free(d);
        return NULL;
    }
    t[n] = 0;
    return t;
}

/* One `tinysam embed` for every case below (the encoder is the slow part). */
static int make_embedding(void) {
    if (emb[0]) return 0;
    snprintf(emb, sizeof emb, "%s", tmp_path("seg_many_emb.npy"));
    char a[4096];
    snprintf(a, sizeof a, "embed --model %s --image %s --out %s", fixture(MODEL), fixture(IMAGE),
             emb);
    if (cli_run(a) != 0) {
        printf("  embed: %s", cli_err);
        emb[0] = 0;
        return -1;
    }
    return 0;
}

static void test_embedding(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    REQUIRE(make_embedding() == 0, "embed");
    char side[1100], a[4096], da[1024], db[1024], ioua[256] = "", ioub[256] = "";
    snprintf(side, sizeof side, "%s.json", emb);
    ts_json *j = NULL;
    REQUIRE(ts_json_load(side, &j) == 0, "sidecar %s", side);
    const ts_json *sz = ts_json_get(j, "original_size"), *sha = ts_json_get(j, "model_sha256");
    CHECK(sz && sz->n == 2 && sz->items[0].number == 480 && sz->items[1].number == 640,
          "original_size");
    CHECK(sha && sha->type == TS_JSON_STRING && strlen(sha->string) == 64, "model_sha256");
    ts_json_free(j);
    snprintf(da, sizeof da, "%s", tmp_path("seg_many_a"));
    snprintf(db, sizeof db, "%s", tmp_path("seg_many_b"));
    snprintf(a, sizeof a,
             "segment --model %s --image %s --point 320,240 --point 100,80,0 "
             "--out-dir %s",
             fixture(MODEL), fixture(IMAGE), da);
    REQUIRE(cli_run(a) == 0, "segment --image: %s", cli_err);
    char *p = strstr(cli_out, "\"iou_predictions\"");
    if (p) snprintf(ioua, sizeof ioua, "%.*s", (int)(strchr(p, ']') - p), p);
    snprintf(a, sizeof a,
             "segment --model %s --embedding %s --point 320,240 --point 100,80,0 "
             "--out-dir %s",
             fixture(MODEL), emb, db);
    REQUIRE(cli_run(a) == 0, "segment --embedding: %s", cli_err);
    p = strstr(cli_out, "\"iou_predictions\"");
    if (p) snprintf(ioub, sizeof ioub, "%.*s", (int)(strchr(p, ']') - p), p);
    CHECK(ioua[0] && !strcmp(ioua, ioub), "IoUs differ: %s vs %s", ioua, ioub);
    CHECK(strstr(cli_out, "\"encode\": 0.0") || strstr(cli_out, "\"encode\""), "timings");
    for (int k = 0; k < 3; k++) {
        char fa[1100], fb[1100];
        snprintf(fa, sizeof fa, "%s/mask_%d.png", da, k);
        snprintf(fb, sizeof fb, "%s/mask_%d.png", db, k);
        CHECK(cli_same_file(fa, fb), "mask %d differs with --embedding", k);
    }
    /* refusals: another model, no sidecar, not an embedding, both inputs */
    snprintf(a, sizeof a, "segment --model %s --embedding %s --point 3,3 --out-dir %s",
             fixture("models/sam_vit_tiny_random_fp16.pth"), emb, db);
    cli_expect_error(a, "another model", 1);
    char lone[1024], bad[1024], badside[1100];
    snprintf(lone, sizeof lone, "%s", tmp_path("seg_many_lone.npy"));
    REQUIRE(cli_copy_file(emb, lone) == 0, "copy");
    snprintf(a, sizeof a, "segment --model %s --embedding %s --point 3,3 --out-dir %s",
             fixture(MODEL), lone, db);
    cli_expect_error(a, "sidecar", 1);
    snprintf(bad, sizeof bad, "%s", tmp_path("seg_many_bad.npy"));
    snprintf(badside, sizeof badside, "%s.json", bad);
    int64_t shape[4] = {1, 256, 32, 32};
    float *z = calloc(256 * 32 * 32, sizeof(float));
    REQUIRE(z && ts_npy_save(bad, TS_DTYPE_F32, 4, shape, z) == 0, "write bad npy");
    free(z);
    REQUIRE(cli_copy_file(side, badside) == 0, "copy sidecar");
    snprintf(a, sizeof a, "segment --model %s --embedding %s --point 3,3 --out-dir %s",
             fixture(MODEL), bad, db);
    cli_expect_error(a, "not an embedding", 1);
    snprintf(a, sizeof a, "segment --model %s --embedding %s --image %s --point 3,3",
             fixture(MODEL), emb, fixture(IMAGE));
    cli_expect_error(a, "mutually exclusive", 1);
    /* a point outside the size the sidecar gives */
    snprintf(a, sizeof a, "segment --model %s --embedding %s --point 700,10 --out-dir %s",
             fixture(MODEL), emb, db);
    cli_expect_error(a, "outside", 1);
}

static const int boxes[5][4] = {{100, 80, 300, 260},
                                {10, 10, 630, 470},
                                {400, 200, 500, 300},
                                {0, 0, 40, 30},
                                {250, 100, 600, 450}};

/* The best mask and the IoUs of one-box calls against the box records of one
 * call. */
static void test_many_boxes(void) {
    if (!fixture_exists(MODEL)) SKIP("fixtures missing");
    REQUIRE(make_embedding() == 0, "embed");
    char a[8192], dir[1024], one[1024], coco[1100], xyxy[1100];
    snprintf(dir, sizeof dir, "%s", tmp_path("seg_many_boxes"));
    snprintf(one, sizeof one, "%s", tmp_path("seg_many_one"));
    int n = snprintf(a, sizeof a, "segment --model %s --embedding %s --out-dir %s", fixture(MODEL),
                     emb, dir);
    for (int i = 0; i < 5; i++)
        n += snprintf(a + n, sizeof a - (size_t)n, " --box %d,%d,%d,%d", boxes[i][0], boxes[i][1],
                      boxes[i][2], boxes[i][3]);
    REQUIRE(cli_run(a) == 0, "5 boxes: %s", cli_err);
    char *many = whole_stdout();
    REQUIRE(many, "stdout");
    /* the records: one line each, then the summary */
    char *line = many;
    int records = 0;
    for (int i = 0; i < 5 && line; i++) {
        char *end = strchr(line, '\n');
        REQUIRE(end, "record %d missing", i);
        ts_json *r = NULL;
        REQUIRE(ts_json_parse(line, (size_t)(end - line), &r) == 0, "record %d is JSON", i);
        CHECK(ts_json_num(r, "index", -1) == i, "record order");
        const ts_json *seg = ts_json_get(r, "segmentation");
        CHECK(seg && ts_json_get(seg, "counts"), "record %d: RLE segmentation", i);
        /* the one-box call */
        snprintf(a, sizeof a, "segment --model %s --embedding %s --out-dir %s --box %d,%d,%d,%d",
                 fixture(MODEL), emb, one, boxes[i][0], boxes[i][1], boxes[i][2], boxes[i][3]);
        REQUIRE(cli_run(a) == 0, "one box: %s", cli_err);
        ts_json *s = NULL;
        REQUIRE(ts_json_parse(cli_out, strlen(cli_out), &s) == 0, "one-box JSON");
        int best = (int)ts_json_num(s, "best", -1);
        CHECK(best == (int)ts_json_num(r, "best", -2), "box %d: best differs", i);
        const ts_json *ia = ts_json_get(r, "iou_predictions"),
                      *ib = ts_json_get(s, "iou_predictions");
        for (int k = 0; ia && ib && k < 3;
             k++) /* printed to 6 decimals; the batch agrees to 1e-6 */
            CHECK(ia->items[k].number - ib->items[k].number < 2e-6 &&
                      ib->items[k].number - ia->items[k].number < 2e-6,
                  "box %d: IoU %d differs", i, k);
        /* the record's RLE and PNG against the one-box call's best mask */
        char fa[1100], fb[1100];
        snprintf(fa, sizeof fa, "%s/box_%04d.png", dir, i);
        snprintf(fb, sizeof fb, "%s/mask_%d.png", one, best < 0 ? 0 : best);
        tinysam_image ga = {0}, gb = {0};
        long long diff = 0;
        ts_rle rle = {0};
        if (tinysam_image_load(fa, 0, &ga) == 0 && tinysam_image_load(fb, 0, &gb) == 0 &&
            ga.width == gb.width && ga.height == gb.height && seg && ts_json_get(seg, "counts") &&
            ts_rle_from_string(ts_json_get(seg, "counts")->string, &rle) == 0) {
            int wa = ga.width, ha = ga.height;
            uint8_t *dm = malloc((size_t)wa * ha);
            CHECK(dm && ts_rle_decode(rle.counts, rle.n, wa, ha, dm) == 0, "RLE decodes");
            for (size_t q = 0; dm && q < (size_t)wa * ha; q++) {
                int va = ga.rgb[3 * q] != 0, vb = gb.rgb[3 * q] != 0;
                diff += va != vb;
                CHECK(dm[q] == va, "RLE and PNG disagree");
                if (dm[q] != va) break;
            }
            free(dm);
        } else {
            CHECK(0, "box %d: masks unreadable", i);
        }
        /* the decoder's batch agrees with a lone set to float rounding (logits
         * ~1e-5) */
        CHECK(diff <= 3, "box %d: %lld pixels differ from the one-box call", i, diff);
        ts_rle_free(&rle);
        tinysam_image_free(&ga);
        tinysam_image_free(&gb);
        ts_json_free(s);
        ts_json_free(r);
        records++;
        line = end + 1;
    }
    CHECK(records == 5 && strstr(line, "\"boxes\": 5"), "summary line: %.200s", line);

    /* --boxes: COCO detection results (XYWH, category_id) and an XYXY list, same
     * records */
    snprintf(coco, sizeof coco, "%s", tmp_path("seg_many_coco.json"));
    snprintf(xyxy, sizeof xyxy, "%s", tmp_path("seg_many_xyxy.json"));
    FILE *fc = fopen(coco, "w"), *fx = fopen(xyxy, "w");
    REQUIRE(fc && fx, "write box files");
    fputs("[", fc);
    fputs("[", fx);
    for (int i = 0; i < 5; i++) {
        fprintf(fc,
                "%s{\"image_id\": 1, \"category_id\": %d, \"bbox\": [%d, %d, %d, %d], "
                "\"score\": 0.9}",
                i ? ", " : "", 3 + i, boxes[i][0], boxes[i][1], boxes[i][2] - boxes[i][0],
                boxes[i][3] - boxes[i][1]);
        fprintf(fx, "%s[%d, %d, %d, %d]", i ? ", " : "", boxes[i][0], boxes[i][1], boxes[i][2],
                boxes[i][3]);
    }
    fputs("]\n", fc);
    fputs("]\n", fx);
    fclose(fc);
    fclose(fx);
    for (int f = 0; f < 2; f++) {
        snprintf(a, sizeof a, "segment --model %s --embedding %s --out-dir %s --boxes %s",
                 fixture(MODEL), emb, dir, f ? xyxy : coco);
        REQUIRE(cli_run(a) == 0, "--boxes: %s", cli_err);
        /* the records up to the summary (whose timings differ) */
        char *out = whole_stdout();
        char *sa = strstr(many, "{\"boxes\""), *sb = out ? strstr(out, "{\"boxes\"") : NULL;
        CHECK(sa && sb && sa - many == sb - out && !memcmp(many, out, (size_t)(sa - many)),
              "--boxes %s: records differ from --box", f ? "XYXY" : "COCO");
        free(out);
    }
    /* YOLO labels take the category ids; polygons parse as COCO polygon lists */
    snprintf(a, sizeof a,
             "segment --model %s --embedding %s --boxes %s --format yolo "
             "--epsilon-factor 0.005",
             fixture(MODEL), emb, coco);
    REQUIRE(cli_run(a) == 0, "yolo: %s", cli_err);
    int lines = 0, bad = 0;
    char *yolo = whole_stdout();
    REQUIRE(yolo, "stdout");
    for (char *q = yolo; *q; lines++) {
        int cls = -1;
        if (sscanf(q, "%d", &cls) != 1 || cls < 3 || cls > 7) bad++;
        char *e = strchr(q, '\n');
        if (!e) break;
        for (char *t = strchr(q, ' '); t && t < e; t = strchr(t + 1, ' ')) {
            double v = atof(t + 1);
            if (v < 0 || v > 1) bad++;
        }
        q = e + 1;
    }
    CHECK(lines >= 5 && !bad, "yolo lines: %d, %d bad", lines, bad);
    free(yolo);
    snprintf(a, sizeof a,
             "segment --model %s --embedding %s --box 100,80,300,260 --box "
             "400,200,500,300 --format polygons",
             fixture(MODEL), emb);
    REQUIRE(cli_run(a) == 0, "polygons: %s", cli_err);
    char *poly = whole_stdout();
    char *e = poly ? strchr(poly, '\n') : NULL;
    ts_json *r = NULL;
    int parsed = e && ts_json_parse(poly, (size_t)(e - poly), &r) == 0;
    free(poly);
    REQUIRE(parsed, "polygon record");
    const ts_json *seg = ts_json_get(r, "segmentation");
    CHECK(seg && seg->type == TS_JSON_ARRAY && seg->n >= 1 && seg->items[0].type == TS_JSON_ARRAY &&
              seg->items[0].n >= 6 && seg->items[0].n % 2 == 0,
          "COCO polygons");
    ts_json_free(r);
    /* bad box files */
    FILE *fb = fopen(xyxy, "w");
    REQUIRE(fb, "write");
    fputs("[[1, 2, 3]]", fb);
    fclose(fb);
    snprintf(a, sizeof a, "segment --model %s --embedding %s --boxes %s", fixture(MODEL), emb,
             xyxy);
    cli_expect_error(a, "4 numbers", 1);
    snprintf(a, sizeof a,
             "segment --model %s --embedding %s --box 1,1,5,5 --box 1,1,5,5 "
             "--format svg",
             fixture(MODEL), emb);
    cli_expect_error(a, "json, polygons or yolo", 1);
    free(many);
}

/* everything --format polygons|yolo: one polygon record per RLE record, the
 * same fields. */
static void test_everything_formats(void) {
    if (!fixture_exists("oracle/scene_a/scene.json")) SKIP("fixtures missing");
    char a[4096], pj[1024], rj[1024], yt[1024];
    snprintf(pj, sizeof pj, "%s", tmp_path("every_poly.json"));
    snprintf(rj, sizeof rj, "%s", tmp_path("every_rle.json"));
    snprintf(yt, sizeof yt, "%s", tmp_path("every.txt"));
    const char *opts = "--points-per-side 8 --quiet";
    snprintf(a, sizeof a, "everything --oracle-scene %s %s --out %s",
             fixture("oracle/scene_a/scene.json"), opts, rj);
    REQUIRE(cli_run(a) == 0, "rle: %s", cli_err);
    snprintf(a, sizeof a, "everything --oracle-scene %s %s --out %s --format polygons",
             fixture("oracle/scene_a/scene.json"), opts, pj);
    REQUIRE(cli_run(a) == 0, "polygons: %s", cli_err);
    snprintf(a, sizeof a, "everything --oracle-scene %s %s --out %s --format yolo",
             fixture("oracle/scene_a/scene.json"), opts, yt);
    REQUIRE(cli_run(a) == 0, "yolo: %s", cli_err);
    ts_json *r = NULL, *p = NULL;
    REQUIRE(ts_json_load(rj, &r) == 0 && ts_json_load(pj, &p) == 0, "outputs are JSON");
    CHECK(r->n > 0 && r->n == p->n, "%d RLE records, %d polygon records", r->n, p->n);
    int polys = 0;
    for (int i = 0; i < r->n && i < p->n; i++) {
        const ts_json *seg = ts_json_get(&p->items[i], "segmentation");
        CHECK(seg && seg->type == TS_JSON_ARRAY && seg->n >= 1, "record %d: polygons", i);
        polys += seg ? seg->n : 0;
        CHECK(ts_json_num(&p->items[i], "area", -1) == ts_json_num(&r->items[i], "area", -2) &&
                  ts_json_num(&p->items[i], "predicted_iou", -1) ==
                      ts_json_num(&r->items[i], "predicted_iou", -2),
              "record %d: fields differ", i);
    }
    uint8_t *y = NULL;
    size_t n = 0;
    REQUIRE(ts_read_file(yt, 1 << 26, &y, &n) == 0, "yolo file");
    int lines = 0;
    for (size_t i = 0; i < n; i++)
        lines += y[i] == '\n';
    CHECK(lines == polys && n > 2 && y[0] == '0' && y[1] == ' ', "%d YOLO lines for %d polygons",
          lines, polys);
    free(y);
    ts_json_free(r);
    ts_json_free(p);
    snprintf(a, sizeof a, "everything --oracle-scenes x --images y --out-dir z --format yolo");
    cli_expect_error(a, "goes with --image", 1);
}

int main(void) {
    RUN(test_embedding);
    RUN(test_everything_formats);
    RUN(test_many_boxes);
    return test_summary();
}
