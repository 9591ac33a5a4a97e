/* test_serve_guard.c - `tinysam serve` against hostile pages, slow clients and crowds
 * (issue 21), over loopback with the real binary: the Host check (DNS rebinding), the
 * Origin check (CSRF) and CORS, Content-Type requirements, token authentication in every
 * accepted form, the refusal of a non-loopback bind without a token, slowloris from 20
 * source addresses, the per-address connection limit, the in-flight body budget under 16
 * simultaneous 32 MB uploads (peak RSS), the bounded encode queue and the log line. */
#include "serve_util.h"

#include <pthread.h>

#define TOKEN "t0k3n-for-the-guard-test-0123456789"

static const char *MODEL = "models/tinysam_vit_t_random.pth";

#define NEED_FIXTURES()                                                                        \
    do {                                                                                       \
        if (!fixture_exists(MODEL) || !fixture_exists("images/shapes.png"))                   \
            SKIP("fixtures missing");                                                          \
    } while (0)

/* The "id" of an upload's answer into id[65]; 0, or -1 none. */
static int answer_id(const su_resp *r, char id[65]) {
    const char *k = r->body ? strstr(r->body, "\"id\": \"") : NULL;
    if (!k || strlen(k + 7) < 64) return -1;
    memcpy(id, k + 7, 64);
    id[64] = 0;
    return 0;
}

/* images_cached of an authorized health answer, -1 unknown. */
static int images_cached(int port, const char *auth) {
    su_resp r;
    if (su_request(port, NULL, "GET", "/api/health", auth, NULL, 0, &r)) return -1;
    const char *k = strstr(r.body, "\"images_cached\": ");
    int n = k ? atoi(k + 17) : -1;
    su_free(&r);
    return n;
}

/* ---------------------------------------------------------------- Host, Origin, types */

static void test_host_origin(void) {
    NEED_FIXTURES();
    srv s;
    const char *extra[] = {"--allowed-host", "lab.example", "--allowed-origin",
                           "http://labels.example:8080", NULL};
    REQUIRE(su_start(&s, extra, NULL, NULL) == 0, "serve did not start");
    su_resp r;
    char v[256], hdr[512];

    /* Host: a name not allowed gets 403 with how to allow it; IP literals, localhost and
     * the allowed name are answered (port ignored) */
    CHECK(su_request(s.port, NULL, "GET", "/api/health", "Host: evil.example.com\r\n", NULL, 0,
                     &r) == 0 && r.status == 403 && strstr(r.body, "--allowed-host"),
          "evil Host: %d %s", r.status, r.body);
    su_free(&r);
    CHECK(su_request(s.port, NULL, "GET", "/", "Host: evil.example.com:80\r\n", NULL, 0, &r) == 0 &&
              r.status == 403 && !strstr(r.body, "<canvas"),
          "evil Host on the page: %d", r.status);
    su_free(&r);
    static const char *ok_hosts[] = {"127.0.0.1", "localhost", "LocalHost:1234", "[::1]:8080",
                                     "10.1.2.3:99", "lab.example:4242", "lab.example"};
    for (size_t i = 0; i < sizeof ok_hosts / sizeof *ok_hosts; i++) {
        snprintf(hdr, sizeof hdr, "Host: %s\r\n", ok_hosts[i]);
        CHECK(su_request(s.port, NULL, "GET", "/api/health", hdr, NULL, 0, &r) == 0 &&
                  r.status == 200, "Host %s: %d %s", ok_hosts[i], r.status, r.body);
        su_free(&r);
    }

    /* one image in the cache to have ids for the image routes */
    size_t n;
    unsigned char *png = su_read_file(fixture("images/shapes.png"), &n);
    REQUIRE(png, "shapes.png unreadable");
    REQUIRE(su_request(s.port, NULL, "POST", "/api/images", "Content-Type: image/png\r\n", png, n,
                       &r) == 0 && r.status == 201, "upload: %d %s", r.status, r.body);
    char id[65];
    REQUIRE(answer_id(&r, id) == 0, "no id: %s", r.body);
    su_free(&r);
    int cached = images_cached(s.port, NULL);
    CHECK(cached == 1, "images_cached %d", cached);

    /* Origin not allowed, on every POST endpoint: 403 before any work (a new image is not
     * cached; segment and everything answer nothing else); the same with a "simple"
     * request's text/plain and with the right types */
    unsigned char *other = su_padded_png(png, n, n + 4096, 7); /* new bytes, new id */
    char seg[128], every[128];
    snprintf(seg, sizeof seg, "/api/images/%s/segment", id);
    snprintf(every, sizeof every, "/api/images/%s/everything", id);
    static const char *json = "{\"points\": [[100, 100]], \"labels\": [1]}";
    struct {
        const char *path, *type;
        const void *body;
        size_t len;
    } posts[] = {
        {"/api/images", "text/plain", other, n + 4096},
        {"/api/images", "image/png", other, n + 4096},
        {seg, "text/plain", json, strlen(json)},
        {seg, "application/json", json, strlen(json)},
        {every, "application/json", "{}", 2},
    };
    static const char *bad_origins[] = {"http://evil.example.com", "null",
                                        "http://127.0.0.1.evil.example.com"};
    for (size_t o = 0; o < sizeof bad_origins / sizeof *bad_origins; o++)
        for (size_t i = 0; i < sizeof posts / sizeof *posts; i++) {
            snprintf(hdr, sizeof hdr, "Origin: %s\r\nContent-Type: %s\r\n", bad_origins[o],
                     posts[i].type);
            CHECK(su_request(s.port, NULL, "POST", posts[i].path, hdr, posts[i].body, posts[i].len,
                             &r) == 0 && r.status == 403 && strstr(r.body, "Origin"),
                  "%s from %s: %d %s", posts[i].path, bad_origins[o], r.status, r.body);
            CHECK(!su_header(&r, "Access-Control-Allow-Origin", v, sizeof v), "CORS header on a 403");
            su_free(&r);
        }
    CHECK(images_cached(s.port, NULL) == 1, "a refused upload was cached");

    /* the server's own origin (the page): answered, no CORS headers needed */
    snprintf(hdr, sizeof hdr, "Host: 127.0.0.1:%d\r\nOrigin: http://127.0.0.1:%d\r\n"
             "Content-Type: application/json\r\n", s.port, s.port);
    CHECK(su_request(s.port, NULL, "POST", seg, hdr, json, strlen(json), &r) == 0 &&
              r.status == 200 && !su_header(&r, "Access-Control-Allow-Origin", v, sizeof v),
          "own origin: %d %s", r.status, r.body);
    su_free(&r);
    /* an allowed foreign origin: answered with CORS headers for it */
    CHECK(su_request(s.port, NULL, "POST", seg,
                     "Origin: http://labels.example:8080\r\nContent-Type: application/json\r\n",
                     json, strlen(json), &r) == 0 && r.status == 200,
          "allowed origin: %d %s", r.status, r.body);
    CHECK(su_header(&r, "Access-Control-Allow-Origin", v, sizeof v) &&
              !strcmp(v, "http://labels.example:8080"), "allowed origin: ACAO '%s'", v);
    su_free(&r);
    /* preflight: only for the allowed origin */
    CHECK(su_request(s.port, NULL, "OPTIONS", "/api/images",
                     "Origin: http://labels.example:8080\r\nAccess-Control-Request-Method: POST\r\n"
                     "Access-Control-Request-Headers: authorization, content-type\r\n",
                     NULL, 0, &r) == 0 && r.status == 204, "preflight: %d", r.status);
    CHECK(su_header(&r, "Access-Control-Allow-Origin", v, sizeof v) &&
              !strcmp(v, "http://labels.example:8080"), "preflight ACAO '%s'", v);
    CHECK(su_header(&r, "Access-Control-Allow-Headers", v, sizeof v) && strstr(v, "Authorization") &&
              strstr(v, "Content-Type"), "preflight Allow-Headers '%s'", v);
    su_free(&r);
    CHECK(su_request(s.port, NULL, "OPTIONS", "/api/images",
                     "Origin: http://evil.example.com\r\nAccess-Control-Request-Method: POST\r\n",
                     NULL, 0, &r) == 0 && r.status == 403 &&
              !su_header(&r, "Access-Control-Allow-Origin", v, sizeof v),
          "evil preflight: %d", r.status);
    su_free(&r);

    /* Content-Type: JSON routes take application/json only, uploads an image type or
     * application/octet-stream */
    CHECK(su_request(s.port, NULL, "POST", seg, "Content-Type: text/plain\r\n", json, strlen(json),
                     &r) == 0 && r.status == 415, "segment as text/plain: %d", r.status);
    su_free(&r);
    CHECK(su_request(s.port, NULL, "POST", seg, "", json, strlen(json), &r) == 0 && r.status == 415,
          "segment without a type: %d", r.status);
    su_free(&r);
    CHECK(su_request(s.port, NULL, "POST", "/api/images", "Content-Type: application/json\r\n",
                     other, n + 4096, &r) == 0 && r.status == 415,
          "upload as JSON: %d", r.status);
    su_free(&r);
    CHECK(su_request(s.port, NULL, "POST", "/api/images",
                     "Content-Type: application/x-www-form-urlencoded\r\n", other, n + 4096,
                     &r) == 0 && r.status == 415, "upload as a form: %d", r.status);
    su_free(&r);
    CHECK(images_cached(s.port, NULL) == 1, "a refused upload was cached");
    CHECK(su_request(s.port, NULL, "POST", seg, "Content-Type: Application/JSON; charset=utf-8\r\n",
                     json, strlen(json), &r) == 0 && r.status == 200,
          "segment with charset: %d %s", r.status, r.body);
    su_free(&r);
    free(other);
    free(png);
    CHECK(su_stop(&s) == 0, "serve did not stop cleanly");
}

/* ---------------------------------------------------------------- token */

static void test_token(void) {
    NEED_FIXTURES();
    srv s;
    const char *extra[] = {"--token", TOKEN, NULL};
    REQUIRE(su_start(&s, extra, NULL, NULL) == 0, "serve did not start");
    CHECK(!strstr(s.line, TOKEN), "a chosen token was printed: %s", s.line);
    su_resp r;
    char v[512];

    /* health: open, status and version only; the details with the token */
    REQUIRE(su_request(s.port, NULL, "GET", "/api/health", "", NULL, 0, &r) == 0 && r.status == 200,
            "health without token: %d", r.status);
    CHECK(strstr(r.body, "\"status\": \"ok\"") && strstr(r.body, "\"version\"") &&
              !strstr(r.body, "model") && !strstr(r.body, "cache") && !strstr(r.body, "queue"),
          "open health says too much: %s", r.body);
    su_free(&r);
    REQUIRE(su_request(s.port, NULL, "GET", "/api/health", "Authorization: Bearer " TOKEN "\r\n",
                       NULL, 0, &r) == 0 && r.status == 200, "health with token: %d", r.status);
    CHECK(strstr(r.body, "\"queue\": {") && strstr(r.body, "\"inflight_bytes\": 0") &&
              strstr(r.body, "\"cache_bytes\"") && strstr(r.body, "\"model\": \"vit_t\""),
          "health with token: %s", r.body);
    su_free(&r);

    /* Basic: any user name, the token as the password */
    static const char *forms[][2] = {
        {"Authorization: Bearer " TOKEN "\r\n", "Authorization: Bearer wrong-token-0123\r\n"},
        {"Authorization: Token " TOKEN "\r\n", "Authorization: Token " TOKEN "x\r\n"},
        {"Token: " TOKEN "\r\n", "Token: t0k3n\r\n"},
        /* base64("label-studio:" TOKEN) and base64(TOKEN ":x") */
        {"Authorization: Basic bGFiZWwtc3R1ZGlvOnQwazNuLWZvci10aGUtZ3VhcmQtdGVzdC0wMTIzNDU2Nzg5\r\n",
         "Authorization: Basic dDBrM24tZm9yLXRoZS1ndWFyZC10ZXN0LTAxMjM0NTY3ODk6eA==\r\n"},
        {"Cookie: theme=dark; tinysam_token=" TOKEN "\r\n", "Cookie: tinysam_token=nope\r\n"},
    };
    static const char *paths[] = {"/", "/app.js", "/api/images/"
                                  "0000000000000000000000000000000000000000000000000000000000000000"};
    for (size_t p = 0; p < sizeof paths / sizeof *paths; p++) {
        int want = p < 2 ? 200 : 404;
        CHECK(su_request(s.port, NULL, "GET", paths[p], "", NULL, 0, &r) == 0 && r.status == 401 &&
                  strstr(r.body, "token"), "%s without token: %d", paths[p], r.status);
        su_free(&r);
        for (size_t f = 0; f < sizeof forms / sizeof *forms; f++) {
            CHECK(su_request(s.port, NULL, "GET", paths[p], forms[f][0], NULL, 0, &r) == 0 &&
                      r.status == want, "%s with %s: %d", paths[p], forms[f][0], r.status);
            su_free(&r);
            CHECK(su_request(s.port, NULL, "GET", paths[p], forms[f][1], NULL, 0, &r) == 0 &&
                      r.status == 401, "%s with wrong %s: %d", paths[p], forms[f][1], r.status);
            su_free(&r);
        }
    }
    /* POST: refused without the token before the body is looked at */
    CHECK(su_request(s.port, NULL, "POST", "/api/images", "Content-Type: image/png\r\n", "x", 1,
                     &r) == 0 && r.status == 401, "upload without token: %d", r.status);
    su_free(&r);
    CHECK(su_request(s.port, NULL, "POST", "/api/images",
                     "Content-Type: image/png\r\nAuthorization: Bearer " TOKEN "\r\n", "x", 1,
                     &r) == 0 && r.status == 400, "upload with token: %d %s", r.status, r.body);
    su_free(&r);
    /* the printed URL's form: ?token= answers the page and sets the cookie */
    CHECK(su_request(s.port, NULL, "GET", "/?token=" TOKEN, "", NULL, 0, &r) == 0 && r.status == 200,
          "?token=: %d", r.status);
    CHECK(su_header(&r, "Set-Cookie", v, sizeof v) && strstr(v, "tinysam_token=" TOKEN) &&
              strstr(v, "HttpOnly") && strstr(v, "SameSite=Strict"), "Set-Cookie '%s'", v);
    su_free(&r);
    CHECK(su_request(s.port, NULL, "GET", "/?token=wrong", "", NULL, 0, &r) == 0 && r.status == 401 &&
              !su_header(&r, "Set-Cookie", v, sizeof v), "?token=wrong: %d", r.status);
    su_free(&r);
    CHECK(su_stop(&s) == 0, "serve did not stop cleanly");

    /* TINYSAM_TOKEN in the environment */
    REQUIRE(su_start(&s, NULL, TOKEN, NULL) == 0, "serve (TINYSAM_TOKEN) did not start");
    CHECK(su_request(s.port, NULL, "GET", "/", "", NULL, 0, &r) == 0 && r.status == 401,
          "env token, none sent: %d", r.status);
    su_free(&r);
    CHECK(su_request(s.port, NULL, "GET", "/", "Token: " TOKEN "\r\n", NULL, 0, &r) == 0 &&
              r.status == 200, "env token sent: %d", r.status);
    su_free(&r);
    CHECK(su_stop(&s) == 0, "serve did not stop cleanly");

    /* --token auto: the printed URL carries a fresh token and opens the page */
    const char *auto_args[] = {"--token", "auto", NULL};
    REQUIRE(su_start(&s, auto_args, NULL, NULL) == 0, "serve --token auto did not start");
    const char *u = strstr(s.line, "\"url\": \"http://127.0.0.1:");
    const char *q = u ? strstr(u, "/?token=") : NULL;
    REQUIRE(q, "no url with the token: %s", s.line);
    char path[128];
    snprintf(path, sizeof path, "%.*s", (int)strcspn(q, "\""), q);
    CHECK(strlen(path) == 8 + 48, "auto token: '%s'", path);
    CHECK(su_request(s.port, NULL, "GET", path, "", NULL, 0, &r) == 0 && r.status == 200 &&
              su_header(&r, "Set-Cookie", v, sizeof v), "the printed URL: %d", r.status);
    su_free(&r);
    CHECK(su_request(s.port, NULL, "GET", "/", "", NULL, 0, &r) == 0 && r.status == 401,
          "auto token, none sent: %d", r.status);
    su_free(&r);
    CHECK(su_stop(&s) == 0, "serve did not stop cleanly");

    /* a non-loopback bind without a token is refused at start, with what to do */
    const char *err = tmp_path("serve_guard_refuse.txt");
    const char *open_args[] = {"--host", "0.0.0.0", NULL};
    int rc = su_start(&s, open_args, NULL, err);
    if (rc == 0) su_stop(&s);
    CHECK(rc != 0 && rc != -1, "0.0.0.0 without a token: exit %d", rc);
    size_t n;
    char *msg = (char *)su_read_file(err, &n);
    if (msg) msg[n] = 0;
    CHECK(msg && strstr(msg, "refusing") && strstr(msg, "--token") && strstr(msg, "--no-auth"),
          "refusal message: %s", msg ? msg : "(none)");
    free(msg);
    const char *v6_args[] = {"--host", "::", NULL};
    rc = su_start(&s, v6_args, NULL, NULL);
    if (rc == 0) su_stop(&s);
    CHECK(rc != 0 && rc != -1, ":: without a token: exit %d", rc);
}

/* ---------------------------------------------------------------- slow clients */

#define SLOW_TIMEOUT_S 3

static int half_header(int port, const char *src) {
    int fd = su_connect(port, src);
    if (fd < 0) return -1;
    static const char half[] = "GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Stall: ";
    su_send_all(fd, half, sizeof half - 1);
    return fd;
}

/* 1 when the server closed fd (end of input or reset) within ms. */
static int closed_within(int fd, int ms) {
    double t_end = su_now_ms() + ms;
    char buf[4096];
    for (;;) {
        int left = (int)(t_end - su_now_ms());
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, left > 0 ? left : 0) <= 0) return 0; /* nothing pending, time up */
        ssize_t got = recv(fd, buf, sizeof buf, 0);
        if (got <= 0) return 1; /* an answer may come first: read on */
    }
}

static void test_slowloris(void) {
    NEED_FIXTURES();
    srv s;
    const char *extra[] = {"--request-timeout", "3", NULL};
    REQUIRE(su_start(&s, extra, NULL, NULL) == 0, "serve did not start");
    enum { ADDRS = 20, PER = 10 };
    int fds[ADDRS * PER];
    int opened = 0;
    double t_open = su_now_ms();
    for (int a = 0; a < ADDRS; a++)
        for (int k = 0; k < PER; k++) {
            char src[32];
            snprintf(src, sizeof src, "127.0.0.%d", 2 + a);
            fds[a * PER + k] = half_header(s.port, src);
            opened += fds[a * PER + k] >= 0;
        }
    REQUIRE(opened == ADDRS * PER, "only %d of %d stalled connections opened", opened,
            ADDRS * PER);
    usleep(200000);
    /* while they stall: health within 1 s, a full upload + segment */
    su_resp r;
    double t0 = su_now_ms();
    int rc = su_request(s.port, NULL, "GET", "/api/health", "", NULL, 0, &r);
    double dt = su_now_ms() - t0;
    CHECK(rc == 0 && r.status == 200 && dt < 1000, "health under slowloris: %d in %.0f ms", r.status,
          dt);
    printf("  health with %d stalled connections open: %.1f ms\n", opened, dt);
    su_free(&r);
    size_t n;
    unsigned char *png = su_read_file(fixture("images/shapes.png"), &n);
    REQUIRE(png, "shapes.png unreadable");
    rc = su_request(s.port, NULL, "POST", "/api/images", "Content-Type: image/png\r\n", png, n, &r);
    free(png);
    CHECK(rc == 0 && r.status == 201, "upload under slowloris: %d %s", r.status, r.body);
    char id[65], seg[128];
    if (rc == 0 && !answer_id(&r, id)) {
        snprintf(seg, sizeof seg, "/api/images/%s/segment", id);
        su_free(&r);
        static const char *json = "{\"points\": [[100, 100]], \"labels\": [1]}";
        CHECK(su_request(s.port, NULL, "POST", seg, "Content-Type: application/json\r\n", json,
                         strlen(json), &r) == 0 && r.status == 200 && strstr(r.body, "\"masks\""),
              "segment under slowloris: %d", r.status);
    }
    su_free(&r);
    /* after the timeout every stalled connection is closed by the server */
    int wait_ms = (int)(t_open + SLOW_TIMEOUT_S * 1000 + 2500 - su_now_ms());
    int closed = 0;
    for (int i = 0; i < ADDRS * PER; i++) {
        int left = (int)(t_open + SLOW_TIMEOUT_S * 1000 + 2500 - su_now_ms());
        closed += closed_within(fds[i], left > 1 ? left : 1);
        close(fds[i]);
    }
    (void)wait_ms;
    CHECK(closed == ADDRS * PER, "%d of %d stalled connections closed %.1f s after opening",
          closed, ADDRS * PER, SLOW_TIMEOUT_S + 2.5);
    printf("  %d of %d stalled connections closed by the %d s timeout\n", closed, ADDRS * PER,
           SLOW_TIMEOUT_S);

    /* a header sent a byte every 400 ms (each byte restarts an idle timeout): closed too */
    int drip = su_connect(s.port, "127.0.0.40");
    REQUIRE(drip >= 0, "no connection");
    static const char head[] = "GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Drip: aaaaaaaaaaaaaaaaaaaaaa";
    double td = su_now_ms();
    int dripped_closed = 0;
    for (size_t i = 0; i < sizeof head - 1 && su_now_ms() - td < (SLOW_TIMEOUT_S + 3) * 1000.0; i++) {
        if (send(drip, head + i, 1, MSG_NOSIGNAL) != 1 || closed_within(drip, 400)) {
            dripped_closed = 1;
            break;
        }
    }
    double drip_s = (su_now_ms() - td) / 1000;
    CHECK(dripped_closed && drip_s < SLOW_TIMEOUT_S + 1.5, "drip-fed header: closed %d after %.1f s",
          dripped_closed, drip_s);
    printf("  drip-fed header (1 byte / 400 ms) closed after %.1f s\n", drip_s);
    close(drip);

    /* per-address limit: 16 held connections from one address, the 17th is refused */
    int held[16];
    for (int i = 0; i < 16; i++) held[i] = half_header(s.port, "127.0.0.50");
    usleep(200000);
    int fd = su_connect(s.port, "127.0.0.50");
    int refused = 1;
    if (fd >= 0) {
        static const char req[] = "GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        su_send_all(fd, req, sizeof req - 1);
        refused = su_read(fd, &r, 2000) != 0;
        su_free(&r);
        close(fd);
    }
    CHECK(refused, "a 17th connection from one address was answered");
    /* another address is not affected */
    CHECK(su_request(s.port, "127.0.0.51", "GET", "/api/health", "", NULL, 0, &r) == 0 &&
              r.status == 200, "another address: %d", r.status);
    su_free(&r);
    for (int i = 0; i < 16; i++)
        if (held[i] >= 0) close(held[i]);
    CHECK(su_stop(&s) == 0, "serve did not stop cleanly");
}

/* ---------------------------------------------------------------- memory */

typedef struct {
    int port;
    char src[32];
    const unsigned char *body;
    size_t len;
    pthread_barrier_t *go;
    int status;
    char retry_after[32];
} upload_job;

static void *upload_run(void *arg) {
    upload_job *j = arg;
    pthread_barrier_wait(j->go);
    su_resp r;
    j->status = -1;
    if (su_request(j->port, j->src, "POST", "/api/images",
                   "Content-Type: application/octet-stream\r\n", j->body, j->len, &r) == 0) {
        j->status = r.status;
        su_header(&r, "Retry-After", j->retry_after, sizeof j->retry_after);
    }
    su_free(&r);
    return NULL;
}

static void test_inflight_memory(void) {
    NEED_FIXTURES();
    srv s;
    const char *extra[] = {"--max-upload-mb", "32", "--cache-mb", "64", NULL}; /* 256 MB in flight */
    REQUIRE(su_start(&s, extra, NULL, NULL) == 0, "serve did not start");
    size_t n;
    unsigned char *png = su_read_file(fixture("images/shapes.png"), &n);
    REQUIRE(png, "shapes.png unreadable");
    su_resp r;
    /* warm up (one encode: the model's scratch), then the baseline */
    CHECK(su_request(s.port, NULL, "POST", "/api/images", "Content-Type: image/png\r\n", png, n,
                     &r) == 0 && r.status == 201, "warm-up upload: %d", r.status);
    su_free(&r);
    long base_kb = su_proc_kb(s.pid, "VmRSS");
    char clear[64];
    snprintf(clear, sizeof clear, "/proc/%d/clear_refs", (int)s.pid);
    FILE *f = fopen(clear, "w"); /* "5" resets the peak (VmHWM) to the current RSS */
    int hwm_reset = f && fputs("5", f) >= 0;
    if (f) hwm_reset &= fclose(f) == 0;
    size_t big = (size_t)32 << 20;
    unsigned char *body = su_padded_png(png, n, big, 0x5a);
    enum { CLIENTS = 16 };
    upload_job jobs[CLIENTS];
    pthread_t th[CLIENTS];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, CLIENTS);
    for (int i = 0; i < CLIENTS; i++) {
        jobs[i] = (upload_job){.port = s.port, .body = body, .len = big, .go = &go};
        snprintf(jobs[i].src, sizeof jobs[i].src, "127.0.0.%d", 2 + i / 4);
        pthread_create(&th[i], NULL, upload_run, &jobs[i]);
    }
    int ok = 0, busy = 0, other = 0, retry = 0;
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(th[i], NULL);
        if (jobs[i].status == 200 || jobs[i].status == 201) ok++;
        else if (jobs[i].status == 503) {
            busy++;
            retry += atoi(jobs[i].retry_after) > 0;
        } else {
            other++;
            printf("  upload %d: status %d\n", i, jobs[i].status);
        }
    }
    pthread_barrier_destroy(&go);
    long peak_kb = su_proc_kb(s.pid, hwm_reset ? "VmHWM" : "VmRSS");
    long bound_kb = base_kb + (64 + 256 + 100) * 1024L;
    printf("  16 x 32 MB uploads: %d succeeded, %d got 503; RSS %ld MB before, peak %ld MB "
           "(bound %ld MB)%s\n", ok, busy, base_kb >> 10, peak_kb >> 10, bound_kb >> 10,
           hwm_reset ? "" : " (peak not resettable: RSS after)");
    CHECK(other == 0, "%d uploads neither succeeded nor got 503", other);
    CHECK(ok >= 1 && busy >= 1 && ok + busy == CLIENTS, "%d ok, %d busy", ok, busy);
    CHECK(ok <= 8, "%d bodies of 32 MB held at once within 256 MB", ok);
    CHECK(retry == busy, "%d of %d 503 answers carry Retry-After", retry, busy);
    /* not under the sanitizers: ASan's quarantine keeps freed bodies resident by design */
    if (!test_sanitized())
        CHECK(base_kb > 0 && peak_kb > 0 && peak_kb <= bound_kb, "peak RSS %ld kB over %ld kB",
              peak_kb, bound_kb);
    /* still answering, and the budget is free again */
    CHECK(su_request(s.port, NULL, "GET", "/api/health", "", NULL, 0, &r) == 0 && r.status == 200 &&
              strstr(r.body, "\"inflight_bytes\": 0,"), "health after: %d %s", r.status, r.body);
    su_free(&r);
    free(body);
    free(png);
    CHECK(su_stop(&s) == 0, "serve did not stop cleanly");
}

/* ---------------------------------------------------------------- queue and log */

static void test_queue_and_log(void) {
    NEED_FIXTURES();
    srv s;
    const char *log = tmp_path("serve_guard_log.txt");
    /* 2 encodes at once, none waiting; a request timeout shorter than two encodes sharing
     * the cores: the time the server spends computing does not count as the client's idle
     * time (libmicrohttpd restarts it when the handler returns) */
    const char *extra[] = {"--max-queue", "0", "--log", "--request-timeout", "1", NULL};
    REQUIRE(su_start(&s, extra, NULL, log) == 0, "serve did not start");
    size_t n;
    unsigned char *png = su_read_file(fixture("images/shapes.png"), &n);
    REQUIRE(png, "shapes.png unreadable");
    enum { CLIENTS = 6 };
    unsigned char *bodies[CLIENTS];
    upload_job jobs[CLIENTS];
    pthread_t th[CLIENTS];
    pthread_barrier_t go;
    pthread_barrier_init(&go, NULL, CLIENTS);
    for (int i = 0; i < CLIENTS; i++) {
        bodies[i] = su_padded_png(png, n, n + 64, (unsigned char)i); /* distinct: each encodes */
        jobs[i] = (upload_job){.port = s.port, .body = bodies[i], .len = n + 64, .go = &go};
        snprintf(jobs[i].src, sizeof jobs[i].src, "127.0.0.1");
        pthread_create(&th[i], NULL, upload_run, &jobs[i]);
    }
    int ok = 0, busy = 0;
    for (int i = 0; i < CLIENTS; i++) {
        pthread_join(th[i], NULL);
        ok += jobs[i].status == 201;
        busy += jobs[i].status == 503 && atoi(jobs[i].retry_after) > 0;
        free(bodies[i]);
    }
    pthread_barrier_destroy(&go);
    printf("  %d simultaneous encodes, 2 workers, no queue: %d done, %d got 503\n", CLIENTS, ok,
           busy);
    CHECK(ok >= 2 && busy >= 1 && ok + busy == CLIENTS, "%d done, %d busy", ok, busy);
    su_resp r;
    CHECK(su_request(s.port, NULL, "GET", "/api/health", "", NULL, 0, &r) == 0 &&
              strstr(r.body, "\"queue\": {\"running\": 0, \"waiting\": 0, \"workers\": 2, \"limit\": 0}"),
          "queue after: %s", r.body);
    su_free(&r);
    su_request(s.port, "127.0.0.9", "GET", "/no%0Asuch", "", NULL, 0, &r);
    su_free(&r);
    free(png);
    CHECK(su_stop(&s) == 0, "serve did not stop cleanly");
    char *text = (char *)su_read_file(log, &n);
    REQUIRE(text, "no log");
    text[n] = 0;
    CHECK(strstr(text, "serve: 127.0.0.1 POST /api/images 201 in=") && strstr(text, " ms\n"),
          "no log line for an upload:\n%s", text);
    CHECK(strstr(text, "serve: 127.0.0.1 POST /api/images 503 in="), "no log line for a 503");
    CHECK(strstr(text, "serve: 127.0.0.9 GET /no?such 404 in=0 out="),
          "log line of a path with a newline:\n%s", text);
    free(text);
}

int main(void) {
    RUN(test_host_origin);
    RUN(test_token);
    RUN(test_slowloris);
    RUN(test_inflight_memory);
    RUN(test_queue_and_log);
    return test_summary();
}
