/* test_serve_soak.c - `tinysam serve` under mixed traffic for a while (issue 21): uploads of
 * varied sizes and formats, segment, everything, malformed requests, clients that vanish
 * mid-body, and slow clients holding half headers, all at once. Must show: no crash, no
 * unexpected 5xx, RSS at the end at most 20 MB above RSS after the first fifth of the run;
 * prints the p99 of segment requests.
 *
 * TINYSAM_SOAK_S sets the duration: 60 s in `make test`, 600 s in `make soak`. Under the
 * sanitizers the run is shorter and the RSS bound is not checked (ASan's quarantine keeps
 * freed memory resident by design). */
#include "serve_util.h"

#include <pthread.h>

static srv S;
static double t_end;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int n_5xx, n_noanswer, n_unexpected;
static char first_bad[512];
static long counts[6]; /* requests per worker kind */
static double *seg_ms;
static size_t n_seg, cap_seg;
static unsigned char *shapes, *picture, *grey;
static size_t shapes_n, picture_n, grey_n;
static char seg_id[65];

/* The traffic pauses once, after the first fifth, for an idle RSS reading. */
static pthread_cond_t pause_cv = PTHREAD_COND_INITIALIZER;
static int pause_req, n_paused;

static int running(void) {
    pthread_mutex_lock(&mu);
    if (pause_req) {
        n_paused++;
        pthread_cond_broadcast(&pause_cv);
        while (pause_req) pthread_cond_wait(&pause_cv, &mu);
        n_paused--;
    }
    pthread_mutex_unlock(&mu);
    return su_now_ms() < t_end;
}

/* RSS with the server idle: the traffic's transient buffers handed back (the server trims
 * every 2 s), so that two readings compare like with like. */
static long idle_rss(void) {
    usleep(3000000);
    return su_proc_kb(S.pid, "VmRSS");
}

/* Records an answer: rc (no answer), status, whether it is one of the expected ones. */
static void note(int kind, const char *what, int rc, int status, int expected) {
    pthread_mutex_lock(&mu);
    counts[kind]++;
    if (rc) n_noanswer++;
    else if (status >= 500) n_5xx++;
    if (rc || status >= 500 || !expected) {
        if (!rc && status < 500 && !expected) n_unexpected++;
        if (!first_bad[0])
            snprintf(first_bad, sizeof first_bad, "%s: %s %d", what, rc ? "no answer" : "status",
                     status);
    }
    pthread_mutex_unlock(&mu);
}

static unsigned rnd(unsigned *s) {
    *s = *s * 1103515245u + 12345u;
    return *s >> 8;
}

static int upload_id(const unsigned char *b, size_t n, char id[65]) {
    su_resp r;
    int rc = su_request(S.port, NULL, "POST", "/api/images", "Content-Type: image/png\r\n", b, n, &r);
    const char *k = rc ? NULL : strstr(r.body, "\"id\": \"");
    int ok = k && (r.status == 200 || r.status == 201);
    if (ok) {
        memcpy(id, k + 7, 64);
        id[64] = 0;
    }
    su_free(&r);
    return ok ? 0 : -1;
}

static void *seg_worker(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg;
    char id[65];
    pthread_mutex_lock(&mu);
    memcpy(id, seg_id, sizeof id);
    pthread_mutex_unlock(&mu);
    while (running()) {
        char path[128], json[160];
        snprintf(path, sizeof path, "/api/images/%s/segment", id);
        snprintf(json, sizeof json, "{\"points\": [[%u, %u]], \"labels\": [1]%s}", rnd(&seed) % 640,
                 rnd(&seed) % 480, rnd(&seed) % 2 ? ", \"multimask\": false" : "");
        su_resp r;
        double t0 = su_now_ms();
        int rc = su_request(S.port, NULL, "POST", path, "Content-Type: application/json\r\n", json,
                            strlen(json), &r);
        double dt = su_now_ms() - t0;
        if (!rc && r.status == 404) { /* evicted by the uploads: upload it again */
            su_free(&r);
            note(0, "segment (evicted)", 0, 404, 1);
            upload_id(shapes, shapes_n, id);
            continue;
        }
        note(0, "segment", rc, r.status, r.status == 200);
        if (!rc && r.status == 200) {
            pthread_mutex_lock(&mu);
            if (n_seg == cap_seg) {
                cap_seg = cap_seg ? 2 * cap_seg : 1024;
                seg_ms = realloc(seg_ms, cap_seg * sizeof *seg_ms);
            }
            seg_ms[n_seg++] = dt;
            pthread_mutex_unlock(&mu);
        }
        su_free(&r);
    }
    return NULL;
}

/* Uploads: the fixtures (PNG, JPEG, grey PNG), padded variants of varied sizes (new bytes:
 * an encode each), and bytes that are no image. */
static void *upload_worker(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg;
    while (running()) {
        unsigned k = rnd(&seed) % 6;
        su_resp r;
        int rc;
        if (k == 0) rc = su_request(S.port, NULL, "POST", "/api/images", "Content-Type: image/jpeg\r\n",
                                    picture, picture_n, &r);
        else if (k == 1) rc = su_request(S.port, NULL, "POST", "/api/images", "Content-Type: image/png\r\n",
                                         grey, grey_n, &r);
        else if (k == 2) {
            static const char junk[] = "this is not an image at all";
            rc = su_request(S.port, NULL, "POST", "/api/images",
                            "Content-Type: application/octet-stream\r\n", junk, sizeof junk, &r);
            note(1, "junk upload", rc, r.status, r.status == 400);
            su_free(&r);
            continue;
        } else {
            size_t size = shapes_n + 64 + (rnd(&seed) % (3u << 20));
            unsigned char *b = su_padded_png(shapes, shapes_n, size, (unsigned char)rnd(&seed));
            rc = su_request(S.port, NULL, "POST", "/api/images", "Content-Type: image/png\r\n", b,
                            size, &r);
            free(b);
        }
        note(1, "upload", rc, r.status, r.status == 200 || r.status == 201);
        su_free(&r);
    }
    return NULL;
}

static void *everything_worker(void *arg) {
    (void)arg;
    char id[65];
    while (running()) {
        if (upload_id(grey, grey_n, id)) {
            note(2, "everything upload", 0, 0, 0);
            usleep(100000);
            continue;
        }
        char path[128];
        snprintf(path, sizeof path, "/api/images/%s/everything", id);
        static const char *json = "{\"points_per_side\": 4, \"mode\": \"grid\"}";
        su_resp r;
        int rc = su_request(S.port, NULL, "POST", path, "Content-Type: application/json\r\n", json,
                            strlen(json), &r);
        note(2, "everything", rc, r.status, r.status == 200 || r.status == 404);
        su_free(&r);
    }
    return NULL;
}

/* Malformed and refused requests: each must get its 4xx (or a closed connection for what is
 * not HTTP at all), never a 5xx. */
static void *malformed_worker(void *arg) {
    unsigned seed = (unsigned)(uintptr_t)arg;
    char seg[128];
    snprintf(seg, sizeof seg, "/api/images/%s/segment", seg_id);
    while (running()) {
        su_resp r;
        int rc, k = (int)(rnd(&seed) % 8);
        switch (k) {
        case 0:
            rc = su_request(S.port, NULL, "POST", seg, "Content-Type: application/json\r\n",
                            "{\"points\": [[1, ", 15, &r);
            note(3, "bad JSON", rc, r.status, r.status == 400 || r.status == 404);
            break;
        case 1:
            rc = su_request(S.port, NULL, "GET", "/../../etc/passwd", "", NULL, 0, &r);
            note(3, "traversal", rc, r.status, r.status == 404 || r.status == 400);
            break;
        case 2:
            rc = su_request(S.port, NULL, "DELETE", "/api/health", "", NULL, 0, &r);
            note(3, "DELETE", rc, r.status, r.status == 405);
            break;
        case 3:
            rc = su_request(S.port, NULL, "GET", "/", "Host: evil.example.com\r\n", NULL, 0, &r);
            note(3, "evil Host", rc, r.status, r.status == 403);
            break;
        case 4:
            rc = su_request(S.port, NULL, "POST", "/api/images",
                            "Origin: http://evil.example.com\r\nContent-Type: text/plain\r\n",
                            "x", 1, &r);
            note(3, "evil Origin", rc, r.status, r.status == 403);
            break;
        case 5:
            rc = su_request(S.port, NULL, "POST", "/api/images",
                            "Content-Type: image/png\r\nContent-Length: 999999999\r\n", NULL, 0, &r);
            note(3, "huge Content-Length", rc, r.status, r.status == 413);
            break;
        case 6: { /* not HTTP: a 400 or a closed connection, nothing else */
            int fd = su_connect(S.port, NULL);
            if (fd >= 0) {
                static const char junk[] = "\x16\x03\x01 hello? \r\n\r\n";
                su_send_all(fd, junk, sizeof junk - 1);
                rc = su_read(fd, &r, 5000);
                close(fd);
                if (!rc) note(3, "not HTTP", 0, r.status, r.status >= 400 && r.status < 500);
                else note(3, "not HTTP", 0, 400, 1);
                if (!rc) su_free(&r);
            }
            memset(&r, 0, sizeof r);
            break;
        }
        default: { /* vanishes mid-body */
            int fd = su_connect(S.port, NULL);
            if (fd >= 0) {
                static const char head[] = "POST /api/images HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                           "Content-Type: image/png\r\nContent-Length: 200000\r\n\r\n";
                su_send_all(fd, head, sizeof head - 1);
                su_send_all(fd, shapes, shapes_n < 3000 ? shapes_n : 3000);
                close(fd);
            }
            note(3, "vanishing client", 0, 0, 1);
            memset(&r, 0, sizeof r);
            break;
        }
        }
        su_free(&r);
        usleep(20000);
    }
    return NULL;
}

/* Slow clients: 40 half headers from 127.0.0.2-127.0.0.5, reopened as the server closes them. */
static void *slow_worker(void *arg) {
    (void)arg;
    enum { N = 40 };
    int fds[N];
    for (int i = 0; i < N; i++) fds[i] = -1;
    static const char half[] = "GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ";
    while (running()) {
        for (int i = 0; i < N; i++) {
            if (fds[i] >= 0) {
                struct pollfd p = {fds[i], POLLIN, 0};
                char b[512];
                if (poll(&p, 1, 0) > 0 && recv(fds[i], b, sizeof b, MSG_DONTWAIT) <= 0) {
                    close(fds[i]);
                    fds[i] = -1;
                    note(4, "slow client closed", 0, 0, 1);
                }
            }
            if (fds[i] < 0) {
                char src[32];
                snprintf(src, sizeof src, "127.0.0.%d", 2 + i % 4);
                fds[i] = su_connect(S.port, src);
                if (fds[i] >= 0) su_send_all(fds[i], half, sizeof half - 1);
            }
        }
        usleep(100000);
    }
    for (int i = 0; i < N; i++)
        if (fds[i] >= 0) close(fds[i]);
    return NULL;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void test_soak(void) {
    if (!fixture_exists("models/tinysam_vit_t_random.pth") || !fixture_exists("images/picture1.jpg"))
        SKIP("fixtures missing");
    const char *env = getenv("TINYSAM_SOAK_S");
    double secs = env ? atof(env) : test_sanitized() ? 20 : 60;
    REQUIRE(secs >= 5, "TINYSAM_SOAK_S=%s: at least 5", env);
    shapes = su_read_file(fixture("images/shapes.png"), &shapes_n);
    picture = su_read_file(fixture("images/picture1.jpg"), &picture_n);
    grey = su_read_file(fixture("images/shapes_grey.png"), &grey_n);
    REQUIRE(shapes && picture && grey, "fixture images unreadable");
    const char *extra[] = {"--cache-mb", "16", "--max-upload-mb", "4", "--request-timeout", "2",
                           NULL};
    REQUIRE(su_start(&S, extra, NULL, NULL) == 0, "serve did not start");
    /* the cache filled to its bound first (distinct images), so that the run measures a
     * steady state rather than the cache growing to its limit */
    char id[65];
    for (int i = 0; i < (test_sanitized() ? 0 : 4); i++) {
        unsigned char *b = su_padded_png(shapes, shapes_n, shapes_n + 64, (unsigned char)(200 + i));
        REQUIRE(upload_id(b, shapes_n + 64, id) == 0, "prefill upload failed");
        free(b);
    }
    REQUIRE(upload_id(shapes, shapes_n, seg_id) == 0, "first upload failed");
    long rss_before = idle_rss();
    double t0 = su_now_ms();
    t_end = t0 + secs * 1000;
    pthread_t th[7];
    void *(*fn[7])(void *) = {seg_worker,    seg_worker,       upload_worker, upload_worker,
                              everything_worker, malformed_worker, slow_worker};
    const char *mask_env = getenv("TS_SOAK_MASK"); /* debugging: which workers run (bits) */
    int mask = mask_env ? atoi(mask_env) : 127, n_workers = 0;
    for (int i = 0; i < 7; i++)
        if (mask >> i & 1) {
            pthread_create(&th[i], NULL, fn[i], (void *)(uintptr_t)(i + 1));
            n_workers++;
        }
    /* RSS after the first fifth, then at the end */
    while (su_now_ms() < t0 + secs * 200) usleep(100000);
    double tp = su_now_ms();
    pthread_mutex_lock(&mu);
    pause_req = 1;
    while (n_paused < n_workers) pthread_cond_wait(&pause_cv, &mu);
    pthread_mutex_unlock(&mu);
    long rss_fifth = idle_rss();
    pthread_mutex_lock(&mu);
    t_end += su_now_ms() - tp; /* the pause does not count */
    pause_req = 0;
    pthread_cond_broadcast(&pause_cv);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < 7; i++)
        if (mask >> i & 1) pthread_join(th[i], NULL);
    long rss_end = idle_rss();
    su_resp r;
    int alive = su_request(S.port, NULL, "GET", "/api/health", "", NULL, 0, &r) == 0 && r.status == 200;
    su_free(&r);
    int stop = su_stop(&S);

    double p50 = 0, p99 = 0;
    if (n_seg) {
        qsort(seg_ms, n_seg, sizeof *seg_ms, cmp_d);
        p50 = seg_ms[n_seg / 2];
        p99 = seg_ms[(size_t)(0.99 * (double)(n_seg - 1))];
    }
    printf("  soak %.0f s: segment %ld (p50 %.1f ms, p99 %.1f ms), uploads %ld, everything %ld, "
           "malformed %ld, slow clients closed %ld; %d 5xx, %d unexpected 4xx, %d without "
           "answer; RSS (server idle) %ld MB before the run, %ld MB after the first fifth, "
           "%ld MB at the end\n",
           secs, counts[0], p50, p99, counts[1], counts[2], counts[3], counts[4], n_5xx,
           n_unexpected, n_noanswer, rss_before >> 10, rss_fifth >> 10, rss_end >> 10);
    CHECK(alive, "the server stopped answering");
    CHECK(stop == 0, "serve did not stop cleanly (%d)", stop);
    CHECK(n_5xx == 0 && n_noanswer == 0 && n_unexpected == 0, "first: %s", first_bad);
    CHECK(n_seg > 0 && counts[1] > 0 && counts[2] > 0, "traffic did not run");
    CHECK(counts[4] > 0, "no slow client was ever closed");
    if (!test_sanitized()) {
        CHECK(rss_fifth > 0 && rss_end > 0 && rss_end <= rss_fifth + 20 * 1024,
              "RSS grew from %ld kB after the first fifth to %ld kB at the end", rss_fifth,
              rss_end);
    }
    free(seg_ms);
    free(shapes);
    free(picture);
    free(grey);
}

int main(void) {
    RUN(test_soak);
    return test_summary();
}
