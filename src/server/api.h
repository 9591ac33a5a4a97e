/* api.h - the server's request handling without the network: server.c (libmicrohttpd) and
 * the HTTP fuzz harness both drive it. Internal to src/server. */
#ifndef TS_SERVER_API_H
#define TS_SERVER_API_H

#include "server/cache.h"
#include "server/server.h"

#include <semaphore.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

struct ts_server {
    tinysam_model *model; /* NULL: everything but the model's work is answered (fuzzing) */
    ts_server_config cfg;
    struct MHD_Daemon *daemon;
    ts_cache cache;
    sem_t heavy; /* encodes and everything runs in flight */
    atomic_int heavy_queued; /* encodes and everything runs running or waiting for `heavy` */
    atomic_size_t inflight;  /* request body bytes held (reserved) by all connections */
    struct ts_net *net; /* server.c: the header watchdog and its connections */
    int port;
    char family[16];
};

/* One answer: status, content type and body (static, or malloc'd when owned). */
typedef struct ts_http_reply {
    unsigned status;
    const char *type;
    void *body;
    size_t len;
    int owned;
    unsigned retry_after; /* seconds, for a 503 of a full queue or memory budget */
} ts_http_reply;

/* What a route reads as its body (the gate checks its Content-Type). */
enum { TS_BODY_NONE, TS_BODY_IMAGE, TS_BODY_JSON };
int ts_server_body_kind(const char *url, const char *method);

/* A JSON error answer {"error": "..."} (memsets *out first); 0, or -1 out of memory. */
int ts_server_error(ts_http_reply *out, unsigned code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Creates the server state without listening (ts_server_start adds the socket). */
int ts_server_create(tinysam_model *m, const ts_server_config *cfg, ts_server **out);
/* Frees what ts_server_create made (the daemon must be stopped). */
void ts_server_destroy(ts_server *s);

/* Answers one request: method, the URL path (already percent-decoded) and the whole body.
 * Returns 0 with *out filled, or -1 when not even an error answer could be built (out of
 * memory). */
int ts_server_handle(ts_server *s, const char *method, const char *url, const uint8_t *body,
                     size_t len, ts_http_reply *out);
/* The same for a request that passed the gate; authorized: it carried the token (the
 * health answer says more then). */
int ts_server_handle_as(ts_server *s, int authorized, const char *method, const char *url,
                        const uint8_t *body, size_t len, ts_http_reply *out);
void ts_http_reply_free(ts_http_reply *r);

/* The largest body the route accepts (0: it takes none). */
size_t ts_server_body_limit(const ts_server *s, const char *url, const char *method);

/* Percent-decodes a URL path in place like libmicrohttpd, except that %00 stays as it is
 * (a NUL would cut the path short: "/index.html%00.css" would read as "/index.html").
 * Returns the new length. */
size_t ts_url_unescape(char *s);

/* The error answer for a body over the route's limit. */
int ts_server_too_large(ts_http_reply *out, size_t limit);

/* ts_server_handle for a request whose whole body is at hand, with the route's body rules
 * (what server.c applies while the body streams in): a route that takes no body ignores it,
 * a body over the route's limit gets 413. */
int ts_server_handle_body(ts_server *s, const char *method, const char *url,
                          const uint8_t *body, size_t len, ts_http_reply *out);
int ts_server_handle_body_as(ts_server *s, int authorized, const char *method, const char *url,
                             const uint8_t *body, size_t len, ts_http_reply *out);

/* The 503 answer for a body that does not fit --max-inflight-mb now (with Retry-After). */
int ts_server_busy(ts_http_reply *out, const char *what);

/* A JSON document under construction (open_memstream), then the reply's body: open (0, or
 * TINYSAM_E_NOMEM), write to f, send (application/json, the reply owns the buffer; -1 when
 * the stream failed). */
typedef struct {
    FILE *f;
    char *buf;
    size_t len;
} ts_jbuf;
int ts_jbuf_open(ts_jbuf *j);
int ts_jbuf_send(ts_http_reply *c, unsigned code, ts_jbuf *j);
/* Sends {"error": msg} with status code (every JSON error answer of the server). */
int ts_jbuf_send_error(ts_http_reply *c, unsigned code, const char *msg);

/* Sets the generator option NAME (SAM's name, len bytes; not "mode") of o to v after the
 * server's range check: 0 done; 1 NAME is not an option; TINYSAM_E_ARG (message prefixed by
 * what) when v is out of range, not finite, or not an integer where one is needed. */
int ts_server_everything_option(tinysam_everything_options *o, const char *name, size_t len,
                                double v, const char *what);

#endif
