/* serve_util.h - what the tests of `tinysam serve` share (test_server, the hardening and soak
 * tests): start and stop the real binary (options, environment, stderr to a file), raw HTTP/1.1
 * requests from a chosen loopback source address (127.0.0.0/8 is all this machine's), the
 * server's RSS.
 * Header-only (static inline) so that each test stays one file. */
#ifndef TS_SERVE_UTIL_H
#define TS_SERVE_UTIL_H

#include "common/test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
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

typedef struct {
    pid_t pid;
    int port;
    char line[1024]; /* the first stdout line (JSON: listening, port, url...) */
} srv;

static inline double su_now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec / 1e6;
}

static inline const char *su_binary(void) {
    static char path[512];
    const char *b = getenv("TINYSAM_BIN");
    if (b) return b;
    const char *build = getenv("BUILD");
    snprintf(path, sizeof path, "%s/tinysam", build ? build : "build");
    return path;
}

/* Starts `tinysam serve --model M --port 0 EXTRA...` with env_token as TINYSAM_TOKEN (NULL:
 * unset) and stderr to err_path (NULL: inherited). 0 up; else the exit status (-1 no exit). */
static inline int su_start(srv *s, const char *const *extra, const char *env_token,
                           const char *err_path) {
    int fd[2];
    memset(s, 0, sizeof *s);
    if (pipe(fd)) return -1;
    const char *argv[48] = {su_binary(), "serve", "--model",
                            fixture("models/tinysam_vit_t_random.pth"), "--port", "0"};
    int n = 6;
    while (extra && *extra && n < 46) argv[n++] = *extra++;
    argv[n] = NULL;
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        dup2(fd[1], 1);
        close(fd[0]);
        close(fd[1]);
        if (err_path) {
            int e = open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (e >= 0) dup2(e, 2);
        }
        if (env_token) setenv("TINYSAM_TOKEN", env_token, 1);
        else unsetenv("TINYSAM_TOKEN");
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(fd[1]);
    size_t len = 0;
    struct pollfd p = {fd[0], POLLIN, 0};
    while (len < sizeof s->line - 1 && !memchr(s->line, '\n', len)) {
        if (poll(&p, 1, 60000) <= 0) break;
        ssize_t r = read(fd[0], s->line + len, sizeof s->line - 1 - len);
        if (r <= 0) break;
        len += (size_t)r;
    }
    close(fd[0]);
    s->line[len] = 0;
    const char *k = strstr(s->line, "\"port\": ");
    if (!k) {
        int st = 0;
        for (int i = 0; i < 100 && waitpid(pid, &st, WNOHANG) != pid; i++) usleep(50000);
        if (kill(pid, 0) == 0) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return -1;
        }
        return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
    s->pid = pid;
    s->port = atoi(k + 8);
    return 0;
}

/* How long a client waits for an answer, and SIGTERM for the exit: the sanitizers make an
 * encode 10-30x slower. */
static inline int su_slow(void) { return test_sanitized() ? 10 : 1; }

/* SIGTERM; the exit status, or -1 if it did not stop within 20 s (200 s sanitized). */
static inline int su_stop(srv *s) {
    if (s->pid <= 0) return -1;
    kill(s->pid, SIGTERM);
    for (int i = 0; i < 200 * su_slow(); i++) {
        int st;
        if (waitpid(s->pid, &st, WNOHANG) == s->pid) {
            s->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
        }
        usleep(100000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, NULL, 0);
    s->pid = 0;
    return -1;
}

/* A TCP connection to 127.0.0.1:port from source address src ("127.0.0.N"; NULL: any). */
static inline int su_connect(int port, const char *src) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    if (src) {
        struct sockaddr_in b = {.sin_family = AF_INET};
        inet_pton(AF_INET, src, &b.sin_addr);
        if (bind(fd, (struct sockaddr *)&b, sizeof b)) {
            close(fd);
            return -1;
        }
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        close(fd);
        return -1;
    }
    return fd;
}

static inline int su_send_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0) return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

typedef struct {
    int status;
    char *head; /* the response header block, NUL-terminated */
    char *body; /* NUL-terminated */
    size_t len;
} su_resp;

static inline void su_free(su_resp *r) {
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* The value of a response header (case-insensitive name) into out; 1 found, 0 not. */
static inline int su_header(const su_resp *r, const char *name, char *out, size_t cap) {
    size_t n = strlen(name);
    for (const char *h = r->head ? strstr(r->head, "\r\n") : NULL; h; h = strstr(h + 2, "\r\n"))
        if (!strncasecmp(h + 2, name, n) && h[2 + n] == ':') {
            const char *v = h + 3 + n;
            while (*v == ' ') v++;
            snprintf(out, cap, "%.*s", (int)strcspn(v, "\r"), v);
            return 1;
        }
    return 0;
}

/* Reads an answer to its end (the requests say Connection: close), at most timeout_ms. */
static inline int su_read(int fd, su_resp *r, int timeout_ms) {
    memset(r, 0, sizeof *r);
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    double t_end = su_now_ms() + timeout_ms;
    for (;;) {
        int left = (int)(t_end - su_now_ms());
        struct pollfd p = {fd, POLLIN, 0};
        if (left <= 0 || poll(&p, 1, left) <= 0) break;
        if (n == cap) buf = realloc(buf, (cap *= 2) + 1);
        ssize_t got = recv(fd, buf + n, cap - n, 0);
        if (got <= 0) break;
        n += (size_t)got;
    }
    buf[n] = 0;
    char *end = strstr(buf, "\r\n\r\n");
    if (strncmp(buf, "HTTP/1.", 7) || !end) {
        free(buf);
        return -1;
    }
    r->status = atoi(buf + 9);
    r->head = strndup(buf, (size_t)(end - buf) + 2);
    r->len = n - (size_t)(end + 4 - buf);
    r->body = malloc(r->len + 1);
    memcpy(r->body, end + 4, r->len);
    r->body[r->len] = 0;
    free(buf);
    return 0;
}

/* One request from src: method, path, extra header lines (each ending in \r\n, may be "")
 * and a body (Content-Length added when body != NULL). Host: 127.0.0.1 unless extra names
 * one. 0 with *r filled, -1 no HTTP answer. */
static inline int su_request(int port, const char *src, const char *method, const char *path,
                             const char *extra, const void *body, size_t len, su_resp *r) {
    memset(r, 0, sizeof *r);
    int fd = su_connect(port, src);
    if (fd < 0) return -1;
    char head[4096];
    int has_host = extra && (!strncasecmp(extra, "Host:", 5) || strstr(extra, "\nHost:"));
    int hn = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\n%sConnection: close\r\n%s", method,
                      path, has_host ? "" : "Host: 127.0.0.1\r\n", extra ? extra : "");
    if (body) hn += snprintf(head + hn, sizeof head - (size_t)hn, "Content-Length: %zu\r\n", len);
    hn += snprintf(head + hn, sizeof head - (size_t)hn, "\r\n");
    su_send_all(fd, head, (size_t)hn);
    if (body && len) su_send_all(fd, body, len); /* may fail after an early answer */
    int rc = su_read(fd, r, 60000 * su_slow());
    close(fd);
    return rc;
}

static inline unsigned char *su_read_file(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    rewind(f);
    unsigned char *b = malloc((size_t)sz + 1);
    *n = fread(b, 1, (size_t)sz, f);
    fclose(f);
    return b;
}

static inline uint32_t su_crc32(const unsigned char *p, size_t n) {
    uint32_t c = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
    }
    return c ^ 0xffffffffu;
}

/* A PNG padded to `size` bytes with a private ancillary chunk ("tsPd", which decoders skip)
 * after IHDR filled with `fill`: a large upload of a small image. */
static inline unsigned char *su_padded_png(const unsigned char *png, size_t n, size_t size,
                                           unsigned char fill) {
    size_t ihdr_end = 8 + 12 + 13, pad = size - n - 12;
    unsigned char *b = malloc(size);
    memcpy(b, png, ihdr_end);
    unsigned char *c = b + ihdr_end;
    c[0] = (unsigned char)(pad >> 24);
    c[1] = (unsigned char)(pad >> 16);
    c[2] = (unsigned char)(pad >> 8);
    c[3] = (unsigned char)pad;
    memcpy(c + 4, "tsPd", 4);
    memset(c + 8, fill, pad);
    uint32_t crc = su_crc32(c + 4, pad + 4);
    c[8 + pad] = (unsigned char)(crc >> 24);
    c[9 + pad] = (unsigned char)(crc >> 16);
    c[10 + pad] = (unsigned char)(crc >> 8);
    c[11 + pad] = (unsigned char)crc;
    memcpy(c + 12 + pad, png + ihdr_end, n - ihdr_end);
    return b;
}

/* A field of /proc/PID/status in kB (VmRSS, VmHWM), -1 unknown. */
static inline long su_proc_kb(pid_t pid, const char *field) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    long v = -1;
    size_t n = strlen(field);
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, field, n) && line[n] == ':') v = atol(line + n + 1);
    fclose(f);
    return v;
}

#endif
