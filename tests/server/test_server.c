/* test_server.c - `tinysam serve` over loopback: every endpoint's answers and errors,
 * masks against the official fixtures, the embedding cache's LRU bound, a bounded load
 * test (p50/p99 latency, zero failures) and clean shutdown on SIGTERM.
 *
 * Runs the real binary ($TINYSAM_BIN, default $BUILD/tinysam) with --port 0 and reads the
 * port from its first stdout line; HTTP/1.1 by hand over a socket, one connection per
 * request. */
#include "common/test.h"
#include "io/json.h"
#include "io/npy.h"
#include "serve_util.h"
#include "tinysam.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#define LOAD_REQUESTS 10 /* per client: the sanitizers make each decode ~10x slower */
#else
#define LOAD_REQUESTS 50
#endif
#define LOAD_CLIENTS 8

/* sha256sum of fixtures/images/shapes.png: the image id is the upload's SHA-256 */
static const char *SHAPES_ID = "55552e4866f6713838de38f3de475ffc4e5219bb7b2e9dfbe565a6ba1fc3cef9";

typedef struct {
    pid_t pid;
    int port;
} server;

static server main_srv;
static int srv_state; /* 0 not tried, 1 up, -1 failed, -2 binary without serve */
static char srv_why[640];

/* Starts `tinysam serve --port 0 EXTRA...`; 0, or -1 (why in srv_why), -2 no serve command. */
static int server_start(server *s, const char *const *extra) {
    srv up; /* the environment's TINYSAM_TOKEN, if any, stays as it is */
    int rc = su_start(&up, extra, getenv("TINYSAM_TOKEN"), NULL);
    if (rc) {
        snprintf(srv_why, sizeof srv_why, "%s serve did not start (exit %d)", su_binary(), rc);
        return rc == 2 ? -2 : -1;
    }
    s->pid = up.pid;
    s->port = up.port;
    return 0;
}

/* SIGTERM; returns the exit status, or -1 if it did not stop within 20 s. */
static int server_stop(server *s) {
    kill(s->pid, SIGTERM);
    for (int i = 0; i < 200; i++) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
        usleep(100000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    return -1;
}

static int up(void) {
    if (!srv_state) {
        const char *extra[] = {"--max-upload-mb", "2", "--max-pixels", "1000000", NULL};
        int rc = server_start(&main_srv, extra);
        srv_state = rc ? rc : 1;
    }
    return srv_state == 1;
}

#define NEED_SERVER()                                                                          \
    do {                                                                                       \
        if (!fixture_exists("models/tinysam_vit_t_random.pth")) SKIP("fixtures missing");     \
        if (!up()) {                                                                           \
            if (srv_state == -2) SKIP("this tinysam has no serve command");                    \
            REQUIRE(0, "%s", srv_why);                                                         \
        }                                                                                      \
    } while (0)

/* ---------------------------------------------------------------- HTTP client */

typedef struct {
    int status;
    char ctype[128];
    char *body; /* NUL-terminated */
    size_t len;
} response;

static void response_free(response *r) {
    free(r->body);
    r->body = NULL;
}

/* One request; head_extra replaces the Content-Length header when given (raw headers,
 * each ending in \r\n). The body is sent even if the server answers early. */
static int http_raw(int port, const char *method, const char *path, const char *head_extra,
                    const void *body, size_t len, response *r) {
    memset(r, 0, sizeof *r);
    int fd = su_connect(port, NULL);
    if (fd < 0) return -1;
    char head[1024];
    int hn;
    /* the body's type as the server requires it (the gate answers 415 otherwise) */
    const char *type = strcmp(method, "POST") ? ""
                       : !strcmp(path, "/api/images") ? "Content-Type: application/octet-stream\r\n"
                                                      : "Content-Type: application/json\r\n";
    if (head_extra)
        hn = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s\r\n",
                      method, path, type, head_extra);
    else
        hn = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                      "%sContent-Length: %zu\r\n\r\n", method, path, type, len);
    su_send_all(fd, head, (size_t)hn);
    if (len) su_send_all(fd, body, len); /* may fail after an early answer: read it anyway */
    su_resp a;
    int rc = su_read(fd, &a, 60000 * su_slow());
    close(fd);
    if (rc) return -1;
    r->status = a.status;
    su_header(&a, "Content-Type", r->ctype, sizeof r->ctype);
    r->body = a.body;
    r->len = a.len;
    free(a.head);
    return 0;
}

static int http(const char *method, const char *path, const void *body, size_t len,
                response *r) {
    return http_raw(main_srv.port, method, path, NULL, body, len, r);
}

static int post_json(const char *path, const char *json, response *r) {
    return http("POST", path, json, strlen(json), r);
}

static ts_json *parse(const response *r) {
    ts_json *j = NULL;
    if (ts_json_parse(r->body, r->len, &j)) return NULL;
    return j;
}

/* Expects a JSON error answer with this status. */
static void expect_error(const char *what, int rc, response *r, int status) {
    CHECK(rc == 0, "%s: no answer", what);
    CHECK(r->status == status, "%s: status %d, want %d (%s)", what, r->status, status, r->body);
    ts_json *j = parse(r);
    const ts_json *e = j ? ts_json_get(j, "error") : NULL;
    CHECK(e && e->type == TS_JSON_STRING && e->string[0], "%s: no error message: %s", what, r->body);
    CHECK(!strncmp(r->ctype, "application/json", 16), "%s: content type %s", what, r->ctype);
    ts_json_free(j);
    response_free(r);
}

static int upload(const char *fixture_rel, response *r) {
    size_t n;
    unsigned char *data = su_read_file(fixture(fixture_rel), &n);
    if (!data) return -1;
    int rc = http("POST", "/api/images", data, n, r);
    free(data);
    return rc;
}

/* ---------------------------------------------------------------- pages and health */

static void test_health(void) {
    NEED_SERVER();
    response r;
    REQUIRE(http("GET", "/api/health", NULL, 0, &r) == 0, "no answer");
    CHECK(r.status == 200, "status %d", r.status);
    ts_json *j = parse(&r);
    REQUIRE(j, "not JSON: %s", r.body);
    const ts_json *st = ts_json_get(j, "status"), *m = ts_json_get(j, "model");
    CHECK(st && st->type == TS_JSON_STRING && !strcmp(st->string, "ok"), "status: %s", r.body);
    CHECK(m && m->type == TS_JSON_STRING && !strcmp(m->string, "vit_t"), "model: %s", r.body);
    CHECK(ts_json_num(j, "max_upload_bytes", 0) == 2 << 20, "upload limit: %s", r.body);
    ts_json_free(j);
    response_free(&r);
    expect_error("POST health", http("POST", "/api/health", "x", 1, &r), &r, 405);
}

static void test_page(void) {
    NEED_SERVER();
    static const struct {
        const char *path, *type, *needle;
    } pages[] = {
        {"/", "text/html", "<canvas"},
        {"/index.html", "text/html", "app.js"},
        {"/app.js", "text/javascript", "/api/images"},
        {"/style.css", "text/css", ".stage"},
    };
    for (size_t i = 0; i < sizeof pages / sizeof pages[0]; i++) {
        response r;
        REQUIRE(http("GET", pages[i].path, NULL, 0, &r) == 0, "%s: no answer", pages[i].path);
        CHECK(r.status == 200, "%s: status %d", pages[i].path, r.status);
        CHECK(!strncmp(r.ctype, pages[i].type, strlen(pages[i].type)), "%s: type %s",
              pages[i].path, r.ctype);
        CHECK(strstr(r.body, pages[i].needle), "%s: no '%s' in it", pages[i].path, pages[i].needle);
        response_free(&r);
    }
    /* nothing outside the three files is reachable, however the path is spelt */
    static const char *bad[] = {"/../../etc/passwd", "/%2e%2e/%2e%2e/etc/passwd",
                                "/web/app.js", "/app.js/", "/..%2fMakefile", "//etc/passwd",
                                "/api/images/../../Makefile", "/index.html%00.css", "/api"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        response r;
        int rc = http("GET", bad[i], NULL, 0, &r);
        CHECK(rc == 0 && (r.status == 404 || r.status == 400), "%s: status %d", bad[i], r.status);
        CHECK(!r.body || !strstr(r.body, "root:") , "%s: leaked a file", bad[i]);
        response_free(&r);
    }
    response r;
    expect_error("POST /", http("POST", "/", "x", 1, &r), &r, 405);
}

/* ---------------------------------------------------------------- uploads */

static void test_upload(void) {
    NEED_SERVER();
    response r;
    REQUIRE(upload("images/shapes.png", &r) == 0, "no answer");
    CHECK(r.status == 201 || r.status == 200, "status %d: %s", r.status, r.body);
    ts_json *j = parse(&r);
    REQUIRE(j, "not JSON: %s", r.body);
    const ts_json *id = ts_json_get(j, "id");
    CHECK(id && id->type == TS_JSON_STRING && !strcmp(id->string, SHAPES_ID), "id: %s", r.body);
    CHECK(ts_json_num(j, "width", 0) == 640 && ts_json_num(j, "height", 0) == 480, "size: %s", r.body);
    CHECK(ts_json_num(j, "encode_ms", -1) > 0, "encode_ms: %s", r.body);
    ts_json_free(j);
    response_free(&r);

    /* the same bytes again: the cached embedding, no second encode */
    REQUIRE(upload("images/shapes.png", &r) == 0, "no answer");
    CHECK(r.status == 200 && strstr(r.body, "\"cached\": true"), "second upload: %d %s", r.status, r.body);
    response_free(&r);
    char path[128];
    snprintf(path, sizeof path, "/api/images/%s", SHAPES_ID);
    REQUIRE(http("GET", path, NULL, 0, &r) == 0, "no answer");
    CHECK(r.status == 200 && strstr(r.body, SHAPES_ID), "GET image: %d %s", r.status, r.body);
    response_free(&r);

    expect_error("empty upload", http("POST", "/api/images", NULL, 0, &r), &r, 400);
    expect_error("not an image", http("POST", "/api/images", "hello, world", 12, &r), &r, 400);
    /* a truncated PNG */
    size_t n;
    unsigned char *png = su_read_file(fixture("images/shapes.png"), &n);
    REQUIRE(png, "shapes.png");
    expect_error("truncated PNG", http("POST", "/api/images", png, n / 2, &r), &r, 400);
    free(png);
    /* 7.8 megapixels against --max-pixels 1000000 */
    expect_error("pixel limit", upload("images/picture3.jpg", &r), &r, 413);
    /* announced over --max-upload-mb 2: refused before the body is read */
    expect_error("announced too large",
                 http_raw(main_srv.port, "POST", "/api/images",
                          "Content-Length: 3000000\r\n", NULL, 0, &r), &r, 413);
    /* chunked, no length announced: refused once past the limit */
    size_t big = 3u << 20;
    char *chunked = malloc(big + 64);
    int hn = sprintf(chunked, "%zx\r\n", big - 64);
    memset(chunked + hn, 'x', big - 64);
    memcpy(chunked + hn + big - 64, "\r\n0\r\n\r\n", 7);
    expect_error("chunked too large",
                 http_raw(main_srv.port, "POST", "/api/images", "Transfer-Encoding: chunked\r\n",
                          chunked, (size_t)hn + big - 64 + 7, &r), &r, 413);
    free(chunked);
    expect_error("GET /api/images", http("GET", "/api/images", NULL, 0, &r), &r, 405);
}

/* ---------------------------------------------------------------- segment */

/* Uploads shapes.png (idempotent) and returns its segment URL. */
static const char *shapes_url(const char *what) {
    static char url[160];
    response r;
    if (upload("images/shapes.png", &r) || (r.status != 200 && r.status != 201)) {
        response_free(&r);
        return NULL;
    }
    response_free(&r);
    snprintf(url, sizeof url, "/api/images/%s/%s", SHAPES_ID, what);
    return url;
}

/* Decodes a COCO compressed RLE string (pycocotools rleFrString) into an H x W row-major
 * mask; an independent decoder, not the library's. Returns the area or -1. */
static long long coco_decode(const char *s, int H, int W, uint8_t *mask) {
    size_t cap = strlen(s) + 1;
    long long *counts = malloc(cap * sizeof *counts); /* at most one count per character */
    int m = 0;
    for (const char *p = s; *p;) {
        long long x = 0;
        int k = 0, more = 1;
        while (more) {
            int c = *p++ - 48;
            x |= (long long)(c & 0x1f) << (5 * k);
            more = c & 0x20;
            k++;
            if (!more && (c & 0x10)) x -= 1LL << (5 * k); /* sign-extend */
            if (more && !*p) {
                free(counts);
                return -1;
            }
        }
        if (m > 2) x += counts[m - 2];
        counts[m++] = x;
    }
    long long pos = 0, area = 0;
    memset(mask, 0, (size_t)H * W);
    for (int i = 0; i < m; i++) {
        if (counts[i] < 0 || pos + counts[i] > (long long)H * W) {
            free(counts);
            return -1;
        }
        for (long long q = pos; (i & 1) && q < pos + counts[i]; q++)
            mask[(q % H) * W + q / H] = 1;
        if (i & 1) area += counts[i];
        pos += counts[i];
    }
    free(counts);
    return pos == (long long)H * W ? area : -1;
}

/* Checks a segment answer against reference/shapes/prompts/CASE (official masks, IoU,
 * best; the tolerances of the predictor's own parity test). Returns the handle. */
static int check_case(const char *name, const response *r) {
    CHECK(r->status == 200, "%s: status %d: %.300s", name, r->status, r->body);
    ts_json *j = parse(r), *pj = NULL;
    if (!j) {
        CHECK(0, "%s: not JSON", name);
        return -1;
    }
    char path[256];
    snprintf(path, sizeof path, "reference/shapes/prompts/%s/prompt.json", name);
    ts_json_load(fixture(path), &pj);
    snprintf(path, sizeof path, "reference/shapes/prompts/%s/masks.npy", name);
    ts_npy ref;
    int handle = (int)ts_json_num(j, "handle", -1);
    if (!pj || ts_npy_load(fixture(path), &ref)) {
        CHECK(0, "%s: fixture missing", name);
        ts_json_free(j);
        ts_json_free(pj);
        return handle;
    }
    const int W = 640, H = 480;
    CHECK(ts_json_num(j, "best", -1) == ts_json_num(pj, "best", -2), "%s: best %g, official %g",
          name, ts_json_num(j, "best", -1), ts_json_num(pj, "best", -2));
    const ts_json *iou = ts_json_get(j, "iou"), *oiou = ts_json_get(pj, "iou_predictions");
    const ts_json *masks = ts_json_get(j, "masks");
    CHECK(iou && iou->n == 3 && masks && masks->n == 3, "%s: shape of answer", name);
    double di = 0, worst = 1;
    uint8_t *m = malloc((size_t)W * H);
    for (int k = 0; iou && masks && k < 3 && k < iou->n && k < masks->n; k++) {
        di = fmax(di, fabs(iou->items[k].number - oiou->items[k].number));
        const ts_json *mk = &masks->items[k], *size = ts_json_get(mk, "size"),
                      *counts = ts_json_get(mk, "counts");
        CHECK(size && size->n == 2 && size->items[0].number == H && size->items[1].number == W,
              "%s: mask %d size", name, k);
        long long area = counts && counts->type == TS_JSON_STRING ? coco_decode(counts->string, H, W, m) : -1;
        CHECK(area >= 0, "%s: mask %d: bad RLE", name, k);
        CHECK(area == ts_json_num(mk, "area", -1), "%s: mask %d: area %lld vs %g", name, k, area,
              ts_json_num(mk, "area", -1));
        size_t agree = 0;
        const uint8_t *o = (const uint8_t *)ref.data + (size_t)k * W * H;
        for (size_t i = 0; i < (size_t)W * H; i++) agree += m[i] == (o[i] != 0);
        worst = fmin(worst, (double)agree / ((double)W * H));
    }
    CHECK(di <= 1e-3, "%s: IoU max abs error %g", name, di);
    CHECK(worst >= 0.999, "%s: masks agree with the official ones on %.5f", name, worst);
    printf("  %s: IoU error %.2e, mask agreement >= %.4f%%\n", name, di, 100 * worst);
    free(m);
    ts_npy_free(&ref);
    ts_json_free(pj);
    ts_json_free(j);
    return handle;
}

static void test_segment(void) {
    NEED_SERVER();
    const char *url = shapes_url("segment");
    REQUIRE(url, "upload failed");
    response r;
    REQUIRE(post_json(url, "{\"points\": [[170, 355]], \"labels\": [1]}", &r) == 0, "no answer");
    int h_point = check_case("point", &r);
    response_free(&r);
    REQUIRE(post_json(url, "{\"box\": [300, 60, 380, 220]}", &r) == 0, "no answer");
    check_case("box", &r);
    response_free(&r);
    /* refinement: the low-res logits 2 of the "point" answer as mask input, by handle */
    char body[256];
    snprintf(body, sizeof body,
             "{\"points\": [[440, 355], [600, 300]], \"labels\": [1, 0], \"box\": [330, 280, 560, 430], "
             "\"previous\": {\"handle\": %d, \"index\": 2}}", h_point);
    REQUIRE(h_point > 0, "no handle in the point answer");
    REQUIRE(post_json(url, body, &r) == 0, "no answer");
    check_case("points_box_mask", &r);
    response_free(&r);
    /* multimask false: one mask */
    REQUIRE(post_json(url, "{\"points\": [[170, 355]], \"labels\": [1], \"multimask\": false}",
                      &r) == 0, "no answer");
    ts_json *j = parse(&r);
    const ts_json *masks = j ? ts_json_get(j, "masks") : NULL;
    CHECK(r.status == 200 && masks && masks->n == 1, "single mask: %d %.200s", r.status, r.body);
    ts_json_free(j);
    response_free(&r);
}

static void test_segment_errors(void) {
    NEED_SERVER();
    const char *u = shapes_url("segment");
    REQUIRE(u, "upload failed");
    char url[160];
    snprintf(url, sizeof url, "%s", u);
    static const char *bad[] = {
        "",                                                   /* empty */
        "{\"points\": [[1, 2]], \"labels\": [1]",             /* truncated JSON */
        "[1, 2]",                                             /* not an object */
        "{}",                                                 /* no prompt */
        "{\"points\": [[1, 2]]}",                             /* labels missing */
        "{\"points\": [[1, 2]], \"labels\": [1, 0]}",         /* lengths differ */
        "{\"points\": [[1, 2]], \"labels\": [2]}",            /* label not 0/1 */
        "{\"points\": [[1, 2]], \"labels\": [0.5]}",          /* label not an integer */
        "{\"points\": [[1]], \"labels\": [1]}",               /* point not [x, y] */
        "{\"points\": [[\"a\", 2]], \"labels\": [1]}",        /* coordinate not a number */
        "{\"points\": [[1e300, 2]], \"labels\": [1]}",        /* absurd coordinate */
        "{\"points\": 5, \"labels\": [1]}",                   /* points not an array */
        "{\"box\": [10, 10, 5, 20]}",                         /* x1 < x0 */
        "{\"box\": [1, 2, 3]}",                               /* box of 3 */
        "{\"box\": [1, 2, 3, 4], \"colour\": 1}",             /* unknown field */
        "{\"box\": [1, 2, 3, 4], \"multimask\": 1}",          /* not a bool */
        "{\"previous\": {\"handle\": 1}}",                    /* index missing */
        "{\"previous\": {\"handle\": 1, \"index\": 3}}",      /* index out of range */
        "{\"previous\": 1}",                                  /* not an object */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        response r;
        char what[96];
        snprintf(what, sizeof what, "bad request %zu '%.40s'", i, bad[i]);
        expect_error(what, post_json(url, bad[i], &r), &r, 400);
    }
    response r;
    expect_error("expired handle",
                 post_json(url, "{\"previous\": {\"handle\": 999999, \"index\": 0}}", &r), &r, 410);
    char other[160];
    snprintf(other, sizeof other, "/api/images/%064d/segment", 7);
    expect_error("unknown id", post_json(other, "{\"box\": [1, 2, 3, 4]}", &r), &r, 404);
    expect_error("malformed id", post_json("/api/images/xyz/segment", "{\"box\": [1, 2, 3, 4]}", &r),
                 &r, 404);
    expect_error("GET segment", http("GET", url, NULL, 0, &r), &r, 405);
    /* a JSON body over the 64 KB bound */
    size_t n = 100000;
    char *big = malloc(n + 1);
    memset(big, ' ', n);
    big[0] = '{';
    big[n - 1] = '}';
    big[n] = 0;
    expect_error("JSON body too large", post_json(url, big, &r), &r, 413);
    free(big);
}

/* ---------------------------------------------------------------- everything */

static void test_everything(void) {
    NEED_SERVER();
    const char *url = shapes_url("everything");
    REQUIRE(url, "upload failed");
    const char *opts = "{\"mode\": \"grid\", \"points_per_side\": 4, \"pred_iou_thresh\": -10, "
                       "\"stability_score_thresh\": 0}";
    response r;
    REQUIRE(post_json(url, opts, &r) == 0, "no answer");
    CHECK(r.status == 200, "status %d: %.300s", r.status, r.body);
    ts_json *j = parse(&r);
    REQUIRE(j, "not JSON");
    const ts_json *rec = ts_json_get(j, "records");
    REQUIRE(rec && rec->type == TS_JSON_ARRAY, "no records");
    CHECK(rec->n == (int)ts_json_num(j, "masks", -1) && rec->n > 0, "masks %d", rec->n);
    CHECK(ts_json_num(ts_json_get(j, "points_evaluated"), "total", 0) == 16, "points evaluated");

    /* the same options through the library directly give the same records */
    tinysam_model *m = NULL;
    tinysam_image img = {0};
    tinysam_everything_result res = {0};
    tinysam_everything_options o;
    tinysam_everything_defaults(&o);
    o.mode = TINYSAM_EVERYTHING_GRID;
    o.points_per_side = 4;
    o.pred_iou_thresh = -10;
    o.stability_score_thresh = 0;
    REQUIRE(tinysam_model_load(fixture("models/tinysam_vit_t_random.pth"), &m) == 0, "model");
    REQUIRE(tinysam_image_load(fixture("images/shapes.png"), 0, &img) == 0, "image");
    REQUIRE(tinysam_everything(m, &img, NULL, &o, &res) == 0, "%s", tinysam_last_error());
    CHECK(res.n == rec->n, "library %d masks, server %d", res.n, rec->n);
    for (int i = 0; i < res.n && i < rec->n; i++) {
        char *s = tinysam_rle_to_coco_string(res.records[i].counts, res.records[i].n_counts);
        const ts_json *seg = ts_json_get(&rec->items[i], "segmentation");
        const ts_json *counts = seg ? ts_json_get(seg, "counts") : NULL;
        CHECK(s && counts && counts->type == TS_JSON_STRING && !strcmp(s, counts->string),
              "record %d: counts differ", i);
        CHECK(ts_json_num(&rec->items[i], "area", -1) == (double)res.records[i].area,
              "record %d: area", i);
        free(s);
    }
    tinysam_everything_free(&res);
    tinysam_image_free(&img);
    tinysam_model_free(m);
    ts_json_free(j);
    response_free(&r);

    static const char *bad[] = {
        "{\"mode\": \"all\"}", "{\"points_per_side\": 0}", "{\"points_per_side\": 1000}",
        "{\"points_per_side\": 2.5}", "{\"pred_iou_thresh\": \"high\"}", "{\"colour\": 1}",
        "{\"stability_score_thresh\": 2}", "[]", "{",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char what[96];
        snprintf(what, sizeof what, "bad options '%s'", bad[i]);
        expect_error(what, post_json(url, bad[i], &r), &r, 400);
    }
    char other[160];
    snprintf(other, sizeof other, "/api/images/%064d/everything", 9);
    expect_error("unknown id", post_json(other, "{}", &r), &r, 404);
}

/* ---------------------------------------------------------------- cache bound */

static void test_cache_lru(void) {
    NEED_SERVER();
    /* 6 MB holds one embedding (4 MB) and its image, not two */
    server s;
    const char *extra[] = {"--cache-mb", "6", NULL};
    REQUIRE(server_start(&s, extra) == 0, "%s", srv_why);
    size_t n1 = 0, n2 = 0;
    unsigned char *a = su_read_file(fixture("images/shapes.png"), &n1);
    unsigned char *b = su_read_file(fixture("images/picture1.jpg"), &n2);
    response r;
    CHECK(http_raw(s.port, "POST", "/api/images", NULL, a, n1, &r) == 0 && r.status == 201,
          "upload 1: %d", r.status);
    response_free(&r);
    CHECK(http_raw(s.port, "POST", "/api/images", NULL, b, n2, &r) == 0 && r.status == 201,
          "upload 2: %d", r.status);
    response_free(&r);
    char path[128];
    snprintf(path, sizeof path, "/api/images/%s", SHAPES_ID);
    CHECK(http_raw(s.port, "GET", path, NULL, NULL, 0, &r) == 0 && r.status == 404,
          "the least recently used image stays: %d", r.status);
    response_free(&r);
    CHECK(http_raw(s.port, "GET", "/api/health", NULL, NULL, 0, &r) == 0 &&
              strstr(r.body, "\"images_cached\": 1,"), "health: %s", r.body);
    response_free(&r);
    CHECK(server_stop(&s) == 0, "stop");
    free(a);
    free(b);
}

/* ---------------------------------------------------------------- load */

typedef struct {
    const char *url;
    int client, failures;
    double ms[LOAD_REQUESTS];
    char expect[4][128]; /* the "iou" array expected for each prompt */
} load_client;

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static const char *load_prompts[4] = {
    "{\"points\": [[170, 355]], \"labels\": [1]}",
    "{\"box\": [300, 60, 380, 220]}",
    "{\"points\": [[100, 100], [500, 400]], \"labels\": [1, 0]}",
    "{\"points\": [[320, 240]], \"labels\": [1], \"box\": [200, 150, 450, 330]}",
};

/* The "iou": [...] text of an answer. */
static void iou_text(const char *body, char out[128]) {
    const char *p = strstr(body, "\"iou\": [");
    size_t n = p ? strcspn(p, "]") : 0;
    snprintf(out, 128, "%.*s", (int)n, p ? p : "");
}

static void *load_run(void *arg) {
    load_client *c = arg;
    for (int i = 0; i < LOAD_REQUESTS; i++) {
        int k = (c->client + i) % 4;
        response r;
        double t0 = now_ms();
        int rc = post_json(c->url, load_prompts[k], &r);
        c->ms[i] = now_ms() - t0;
        char got[128];
        if (!rc) iou_text(r.body, got);
        /* same prompt, same answer, whatever runs beside it */
        if (rc || r.status != 200 || strcmp(got, c->expect[k])) c->failures++;
        response_free(&r);
    }
    return NULL;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void test_load(void) {
    NEED_SERVER();
    const char *u = shapes_url("segment");
    REQUIRE(u, "upload failed");
    static load_client cl[LOAD_CLIENTS];
    char expect[4][128];
    for (int k = 0; k < 4; k++) {
        response r;
        REQUIRE(post_json(u, load_prompts[k], &r) == 0 && r.status == 200, "prompt %d", k);
        iou_text(r.body, expect[k]);
        response_free(&r);
    }
    pthread_t th[LOAD_CLIENTS];
    double t0 = now_ms();
    for (int i = 0; i < LOAD_CLIENTS; i++) {
        cl[i].url = u;
        cl[i].client = i;
        cl[i].failures = 0;
        memcpy(cl[i].expect, expect, sizeof expect);
        REQUIRE(pthread_create(&th[i], NULL, load_run, &cl[i]) == 0, "thread");
    }
    int failures = 0;
    static double all[LOAD_CLIENTS * LOAD_REQUESTS];
    for (int i = 0; i < LOAD_CLIENTS; i++) {
        pthread_join(th[i], NULL);
        failures += cl[i].failures;
        memcpy(all + i * LOAD_REQUESTS, cl[i].ms, sizeof cl[i].ms);
    }
    double wall = now_ms() - t0;
    int n = LOAD_CLIENTS * LOAD_REQUESTS;
    qsort(all, (size_t)n, sizeof all[0], cmp_double);
    printf("  load: %d clients x %d segment requests (640x480): %d failed, p50 %.1f ms, "
           "p99 %.1f ms, max %.1f ms, %.1f requests/s\n", LOAD_CLIENTS, LOAD_REQUESTS, failures,
           all[n / 2], all[(n * 99) / 100], all[n - 1], n / (wall / 1e3));
    CHECK(failures == 0, "%d of %d requests failed or answered differently", failures, n);
}

static void test_shutdown(void) {
    NEED_SERVER();
    int st = server_stop(&main_srv);
    srv_state = -1;
    snprintf(srv_why, sizeof srv_why, "stopped");
    CHECK(st == 0, "exit status %d after SIGTERM", st);
    response r;
    CHECK(http("GET", "/api/health", NULL, 0, &r) != 0, "still answering after stop");
    response_free(&r);
}

int main(void) {
    signal(SIGPIPE, SIG_IGN);
    RUN(test_health);
    RUN(test_page);
    RUN(test_upload);
    RUN(test_segment);
    RUN(test_segment_errors);
    RUN(test_everything);
    RUN(test_cache_lru);
    RUN(test_load);
    RUN(test_shutdown);
    if (srv_state == 1) server_stop(&main_srv);
    return test_summary();
}
