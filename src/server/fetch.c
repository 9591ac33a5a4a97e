/* fetch.c - image GETs over libcurl (see fetch.h). */
#include "server/fetch.h"
#include "core.h"

#include <curl/curl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

typedef struct {
    uint8_t *buf;
    size_t len, cap, max;
    int over;
} sink;

static size_t on_data(char *p, size_t size, size_t n, void *user) {
    sink *s = user;
    size_t k = size * n;
    if (s->len + k > s->max) {
        s->over = 1;
        return 0; /* aborts the transfer */
    }
    if (s->len + k > s->cap) {
        size_t nc = s->cap ? s->cap * 2 : 65536;
        while (nc < s->len + k)
            nc *= 2;
        uint8_t *nb = realloc(s->buf, nc);
        if (!nb) return 0;
        s->buf = nb;
        s->cap = nc;
    }
    memcpy(s->buf + s->len, p, k);
    s->len += k;
    return k;
}

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init(void) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

int ts_fetch_url(const char *url, const char *token, size_t max_bytes, uint8_t **data,
                 size_t *len) {
    *data = NULL;
    *len = 0;
    if (strncasecmp(url, "http://", 7) && strncasecmp(url, "https://", 8))
        return ts_error(TINYSAM_E_ARG, "image URL '%.200s' is not http(s)", url);
    pthread_once(&curl_once, curl_init);
    CURL *c = curl_easy_init();
    if (!c) return ts_error(TINYSAM_E_NOMEM, "libcurl: cannot start a transfer");
    sink s = {.max = max_bytes};
    char auth[1100];
    struct curl_slist *hdr = NULL;
    if (token) {
        snprintf(auth, sizeof auth, "Authorization: Token %.1000s", token);
        hdr = curl_slist_append(hdr, auth);
    }
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    /* no redirects: a redirect would carry the token to wherever it points */
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (hdr) curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdr);
    CURLcode cc = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(c);
    int rc = 0;
    if (s.over)
        rc = ts_error(TINYSAM_E_LIMIT, "image at '%.200s' is over %zu bytes", url, max_bytes);
    else if (cc != CURLE_OK)
        rc = ts_error(TINYSAM_E_IO, "cannot fetch image '%.200s': %s", url, curl_easy_strerror(cc));
    else if (code != 200)
        rc = ts_error(TINYSAM_E_IO, "cannot fetch image '%.200s': HTTP %ld", url, code);
    if (rc) {
        free(s.buf);
        return rc;
    }
    *data = s.buf;
    *len = s.len;
    return 0;
}

/* scheme, host and port of an http(s) URL (lowercase scheme and host) */
static int origin(const char *u, char *out, size_t cap) {
    const char *p = strstr(u, "://");
    if (!p) return -1;
    size_t sl = (size_t)(p - u);
    const char *h = p + 3, *e = h + strcspn(h, "/?#");
    const char *at = memchr(h, '@', (size_t)(e - h));
    if (at) h = at + 1; /* user:pass@ */
    char host[512];
    size_t hl = (size_t)(e - h);
    if (sl > 8 || hl == 0 || hl >= sizeof host) return -1;
    memcpy(host, h, hl);
    host[hl] = 0;
    for (char *q = host; *q; q++)
        *q = (char)(*q >= 'A' && *q <= 'Z' ? *q + 32 : *q);
    char scheme[9];
    for (size_t i = 0; i < sl; i++)
        scheme[i] = (char)(u[i] >= 'A' && u[i] <= 'Z' ? u[i] + 32 : u[i]);
    scheme[sl] = 0;
    char *colon = strrchr(host, ':');
    if (colon && strchr(colon, ']')) colon = NULL; /* [v6] without port */
    const char *port = colon ? colon + 1 : !strcmp(scheme, "https") ? "443" : "80";
    if (colon) *colon = 0;
    snprintf(out, cap, "%s://%s:%s", scheme, host, port);
    return 0;
}

int ts_same_origin(const char *a, const char *b) {
    char oa[600], ob[600];
    if (!a || !b || origin(a, oa, sizeof oa) || origin(b, ob, sizeof ob)) return 0;
    return !strcmp(oa, ob);
}
