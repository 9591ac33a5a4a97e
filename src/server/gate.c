/* gate.c - Host, Origin, token and Content-Type checks in front of every route (gate.h).
 *
 * Order matters: the Host check first (a rebinding page must learn nothing, not even that a
 * token is needed), then Origin (a foreign page gets 403 before anything runs), then the
 * token, then the body's type. /api/health passes without the token, and answers less. */
#include "server/gate.h"
#include "server/labelling.h"

#include "core.h"
#include "server/api.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int ts_token_equal(const char *a, const char *b) {
    size_t na = strlen(a), nb = strlen(b);
    /* compare over the expected token's length whatever the guess: no early exit, no length
     * leak beyond "different" */
    unsigned diff = (unsigned)(na ^ nb);
    for (size_t i = 0; i < nb; i++) diff |= (unsigned char)(i < na ? a[i] : 0) ^ (unsigned char)b[i];
    return diff == 0;
}

int ts_is_loopback_address(const char *host) {
    struct in_addr a4;
    struct in6_addr a6;
    if (inet_pton(AF_INET, host, &a4) == 1) return (ntohl(a4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, host, &a6) == 1) return IN6_IS_ADDR_LOOPBACK(&a6);
    return 0;
}

/* The host part of a Host header ("name:port", "[v6]:port") into out; 0, or -1 malformed. */
static int host_part(const char *h, char *out, size_t cap) {
    size_t n;
    if (h[0] == '[') {
        const char *end = strchr(h, ']');
        if (!end || (end[1] && end[1] != ':')) return -1;
        n = (size_t)(end - h - 1);
        h++;
    } else {
        const char *colon = strchr(h, ':');
        n = colon ? (size_t)(colon - h) : strlen(h);
    }
    if (n == 0 || n >= cap) return -1;
    memcpy(out, h, n);
    out[n] = 0;
    if (n > 1 && out[n - 1] == '.') out[n - 1] = 0; /* "localhost." is localhost */
    return 0;
}

static int host_allowed(const ts_server *s, const char *h) {
    struct in_addr a4;
    struct in6_addr a6;
    /* an IP literal cannot be rebound: the attacker's page would have to be served from it */
    if (inet_pton(AF_INET, h, &a4) == 1 || inet_pton(AF_INET6, h, &a6) == 1) return 1;
    if (!strcasecmp(h, "localhost")) return 1;
    for (int i = 0; i < s->cfg.n_allowed_hosts; i++)
        if (!strcmp(s->cfg.allowed_hosts[i], "*") || !strcasecmp(s->cfg.allowed_hosts[i], h))
            return 1;
    return 0;
}

/* The server's own origin: the page it served, http:// and the Host it was reached by. */
static int own_origin(const char *origin, const char *host) {
    return host && !strncasecmp(origin, "http://", 7) && !strcasecmp(origin + 7, host);
}

static int origin_listed(const ts_server *s, const char *origin) {
    for (int i = 0; i < s->cfg.n_allowed_origins; i++)
        if (!strcasecmp(s->cfg.allowed_origins[i], origin)) return 1;
    return 0;
}

/* Decodes standard base64 into out (NUL-terminated); -1 on a malformed or too long input. */
static int base64_decode(const char *in, char *out, size_t cap) {
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint32_t acc = 0;
    int bits = 0;
    size_t n = 0;
    for (const char *p = in; *p && *p != '='; p++) {
        const char *k = strchr(tab, *p);
        if (!k || !*p) return -1;
        acc = acc << 6 | (uint32_t)(k - tab);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n + 1 >= cap) return -1;
            out[n++] = (char)(acc >> bits & 0xff);
        }
    }
    out[n] = 0;
    return memchr(out, 0, n) ? -1 : 0; /* a NUL inside would cut the password short */
}

/* Skips "Scheme " (case-insensitive) and the spaces after it; NULL when h is not that. */
static const char *after_scheme(const char *h, const char *scheme) {
    size_t n = strlen(scheme);
    if (strncasecmp(h, scheme, n) || h[n] != ' ') return NULL;
    h += n;
    while (*h == ' ') h++;
    return h;
}

/* The cookie's value in a Cookie header, copied into out; 0 found, -1 not. */
static int cookie_value(const char *cookies, const char *name, char *out, size_t cap) {
    size_t nl = strlen(name);
    for (const char *p = cookies; p && *p;) {
        while (*p == ' ' || *p == ';') p++;
        size_t len = strcspn(p, ";");
        if (len > nl && !strncmp(p, name, nl) && p[nl] == '=') {
            size_t v = len - nl - 1;
            if (v >= cap) return -1;
            memcpy(out, p + nl + 1, v);
            out[v] = 0;
            return 0;
        }
        p += len;
    }
    return -1;
}

/* 1 when any of the accepted forms carries the token. Every form is compared, so that the
 * time taken does not say which one was present. */
static int token_given(const char *token, const ts_http_request *q, int *by_query) {
    char buf[1024];
    int ok = 0;
    *by_query = 0;
    const char *a = q->authorization, *t;
    if (a && ((t = after_scheme(a, "Bearer")) || (t = after_scheme(a, "Token"))))
        ok |= ts_token_equal(t, token);
    if (a && (t = after_scheme(a, "Basic")) && !base64_decode(t, buf, sizeof buf)) {
        const char *colon = strchr(buf, ':'); /* any user name: the token is the password */
        if (colon) ok |= ts_token_equal(colon + 1, token);
    }
    if (q->token_header) ok |= ts_token_equal(q->token_header, token);
    if (q->cookie && !cookie_value(q->cookie, TS_TOKEN_COOKIE, buf, sizeof buf))
        ok |= ts_token_equal(buf, token);
    if (q->query_token && ts_token_equal(q->query_token, token)) {
        ok = 1;
        *by_query = 1;
    }
    return ok;
}

/* The Content-Type without parameters, lowercased, into out. */
static void media_type(const char *ct, char *out, size_t cap) {
    size_t n = 0;
    while (ct && *ct == ' ') ct++;
    for (; ct && *ct && *ct != ';' && *ct != ' ' && n + 1 < cap; ct++)
        out[n++] = (char)tolower((unsigned char)*ct);
    out[n] = 0;
}

int ts_gate_check(ts_server *s, const ts_http_request *q, ts_gate *g, ts_http_reply *rep) {
    memset(g, 0, sizeof *g);
    memset(rep, 0, sizeof *rep);
    char host[256];
    if (q->host) {
        if (host_part(q->host, host, sizeof host))
            return ts_server_error(rep, 400, "malformed Host header") ? -1 : 1;
        if (!host_allowed(s, host))
            return ts_server_error(rep, 403,
                                   "Host '%s' is not allowed: this server answers requests "
                                   "for its IP address and localhost; to reach it by this name "
                                   "start it with --allowed-host %s", host, host) ? -1 : 1;
    }
    if (q->origin) {
        int foreign = !own_origin(q->origin, q->host);
        if (foreign && !origin_listed(s, q->origin))
            return ts_server_error(rep, 403,
                                   "Origin '%.200s' is not allowed: pages from other sites may "
                                   "not use this server; to allow one start it with "
                                   "--allowed-origin ORIGIN", q->origin) ? -1 : 1;
        if (foreign) snprintf(g->cors_origin, sizeof g->cors_origin, "%s", q->origin);
    }
    if (!strcmp(q->method, "OPTIONS")) {
        /* a CORS preflight: only an allowed foreign origin gets an answer that permits */
        if (!g->cors_origin[0])
            return ts_server_error(rep, 403, "OPTIONS is only answered for an allowed "
                                             "cross-origin preflight") ? -1 : 1;
        rep->status = 204;
        rep->type = "text/plain";
        return 1;
    }
    int by_query = 0;
    g->authorized = !s->cfg.token || token_given(s->cfg.token, q, &by_query);
    g->set_cookie = g->authorized && by_query && s->cfg.token;
    if (!g->authorized && !strncmp(q->url, "/v1/", 4)) /* X-AnyLabeling's error shape */
        return ts_xany_unauthorized(rep, !q->token_header && !q->authorization) ? -1 : 1;
    if (!g->authorized && strcmp(q->url, "/api/health"))
        return ts_server_error(rep, 401,
                               "authentication required: send the token as 'Authorization: "
                               "Bearer TOKEN' (or Token, or Basic with it as the password), a "
                               "'Token' header, or open the URL printed at start") ? -1 : 1;
    int kind = ts_server_body_kind(q->url, q->method);
    if (kind) {
        char mt[128];
        media_type(q->content_type, mt, sizeof mt);
        int ok = kind == TS_BODY_JSON ? !strcmp(mt, "application/json")
                                      : !strncmp(mt, "image/", 6) ||
                                            !strcmp(mt, "application/octet-stream");
        if (!ok)
            return ts_server_error(rep, 415, "Content-Type '%.100s' not accepted here: send %s",
                                   q->content_type ? q->content_type : "(none)",
                                   kind == TS_BODY_JSON
                                       ? "application/json"
                                       : "image/jpeg, image/png or application/octet-stream")
                       ? -1 : 1;
    }
    return 0;
}
