/* gate.h - the checks every request of `tinysam serve` passes before any route sees it:
 * Host (DNS rebinding), Origin (CSRF, CORS), authentication (token) and the body's
 * Content-Type. One layer for every endpoint, present and future: server.c and the HTTP
 * fuzz harness both call ts_gate_check with the request's headers. Internal to src/server. */
#ifndef TS_SERVER_GATE_H
#define TS_SERVER_GATE_H

#include <stddef.h>

struct ts_server;
typedef struct ts_http_reply ts_http_reply;

/* What the gate reads of a request: each header NULL when absent. */
typedef struct {
    const char *method, *url; /* url: the path, percent-decoded */
    const char *host, *origin, *content_type;
    const char *authorization; /* "Bearer T", "Token T", "Basic base64(user:T)" */
    const char *token_header;  /* "Token: T" */
    const char *cookie;        /* the whole Cookie header */
    const char *query_token;   /* ?token=T (the URL printed by --token auto) */
} ts_http_request;

/* What the gate decided, for the route and the response headers. */
typedef struct {
    int authorized;         /* the token was given (or no token is configured) */
    int set_cookie;         /* authorized by ?token=: answer with the cookie */
    char cors_origin[256];  /* an allowed foreign origin: answer with CORS headers for it */
} ts_gate;

#define TS_TOKEN_COOKIE "tinysam_token"

/* Returns 0 when the request may go on (*g filled), 1 when it is answered already (*rep
 * filled: 403 host or origin, 401 no token, 415 wrong Content-Type, 204 preflight), -1 out of
 * memory. Runs before the body is read: a refused request does no work. */
int ts_gate_check(struct ts_server *s, const ts_http_request *q, ts_gate *g, ts_http_reply *rep);

/* Equal strings, in time independent of where they differ. */
int ts_token_equal(const char *a, const char *b);

/* 1 when the numeric address is a loopback one (127.0.0.0/8, ::1). */
int ts_is_loopback_address(const char *host);

#endif
