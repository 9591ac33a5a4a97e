/* api.h - the server's request handling without the network: server.c (libmicrohttpd) and
 * the HTTP fuzz harness both drive it. Internal to src/server. */
#ifndef TS_SERVER_API_H
#define TS_SERVER_API_H

#include "server/cache.h"
#include "server/server.h"

#include <semaphore.h>
#include <stddef.h>
#include <stdint.h>

struct ts_server {
    tinysam_model *model; /* NULL: everything but the model's work is answered (fuzzing) */
    ts_server_config cfg;
    struct MHD_Daemon *daemon;
    ts_cache cache;
    sem_t heavy; /* encodes and everything runs in flight */
    int port;
    char family[16];
};

/* One answer: status, content type and body (static, or malloc'd when owned). */
typedef struct {
    unsigned status;
    const char *type;
    void *body;
    size_t len;
    int owned;
} ts_http_reply;

/* Creates the server state without listening (ts_server_start adds the socket). */
int ts_server_create(tinysam_model *m, const ts_server_config *cfg, ts_server **out);
/* Frees what ts_server_create made (the daemon must be stopped). */
void ts_server_destroy(ts_server *s);

/* Answers one request: method, the URL path (already percent-decoded) and the whole body.
 * Returns 0 with *out filled, or -1 when not even an error answer could be built (out of
 * memory). */
int ts_server_handle(ts_server *s, const char *method, const char *url, const uint8_t *body,
                     size_t len, ts_http_reply *out);
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

#endif
