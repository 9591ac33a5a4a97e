/* server.c - `tinysam serve` on libmicrohttpd: sockets, request bodies, response headers.
 * What each request gets is decided in api.c.
 *
 * One thread per connection (MHD_USE_THREAD_PER_CONNECTION, bounded by the connection
 * limit), because a request may compute for seconds (an encode, everything mode) and must
 * not stall the others. Encodes and everything runs also pass a counting semaphore, so
 * that a burst of uploads cannot allocate encoder scratch for every connection at once. */
#include "server/server.h"

#include "core.h"
#include "server/api.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

/* Per-connection state: the body collected so far. */
typedef struct {
    uint8_t *body;
    size_t len, cap, limit;
    int too_big;
    int answered; /* a response is queued already */
    double t0;
} conn_state;

/* Queues the reply with its headers; takes the body over. */
static enum MHD_Result queue(struct MHD_Connection *c, int rc, ts_http_reply *rep) {
    if (rc) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(
        rep->len, rep->body, rep->owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        ts_http_reply_free(rep);
        return MHD_NO;
    }
    const char *type = rep->type;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    if (!strncmp(type, "application/json", 16))
        MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    if (!strncmp(type, "text/html", 9)) {
        MHD_add_response_header(r, "Content-Security-Policy",
                                "default-src 'self'; img-src 'self' blob: data:; "
                                "frame-ancestors 'none'");
        MHD_add_response_header(r, "X-Frame-Options", "DENY");
    }
    if (rep->status == MHD_HTTP_METHOD_NOT_ALLOWED)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, POST");
    enum MHD_Result ret = MHD_queue_response(c, rep->status, r);
    MHD_destroy_response(r);
    return ret;
}

/* The whole body is in (or the route takes none): r->len is within the route's limit. */
static enum MHD_Result answer(ts_server *s, struct MHD_Connection *c, const char *url,
                              const char *method, const conn_state *r) {
    ts_http_reply rep;
    int rc = ts_server_handle_body(s, method, url, r->body, r->len, &rep);
    return queue(c, rc, &rep);
}

static enum MHD_Result too_large(struct MHD_Connection *c, size_t limit) {
    ts_http_reply rep;
    int rc = ts_server_too_large(&rep, limit);
    return queue(c, rc, &rep);
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
                               const char *method, const char *version, const char *data,
                               size_t *data_size, void **con_cls) {
    (void)version;
    ts_server *s = cls;
    conn_state *r = *con_cls;
    if (!r) {
        r = calloc(1, sizeof *r);
        if (!r) return MHD_NO;
        r->t0 = ts_now_ms();
        r->limit = ts_server_body_limit(s, url, method);
        *con_cls = r;
        /* nothing to read (GET, or a route that takes no body): answer at once, so that a
         * stray body gets the route's own answer (404, 405) rather than a size error */
        if (r->limit == 0) {
            r->answered = 1;
            return answer(s, c, url, method, r);
        }
        /* refuse an announced oversized body before reading it */
        const char *cl =
            MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl) {
            char *end;
            errno = 0;
            unsigned long long n = strtoull(cl, &end, 10);
            if (errno || *end || n > r->limit) {
                r->too_big = r->answered = 1;
                return too_large(c, r->limit);
            }
            if (n > 0) {
                r->body = malloc((size_t)n);
                if (!r->body) return MHD_NO;
                r->cap = (size_t)n;
            }
        }
        return MHD_YES;
    }
    if (*data_size) {
        size_t n = *data_size;
        *data_size = 0;
        if (r->too_big || r->answered) return MHD_YES;
        if (n > r->limit - r->len) {
            r->too_big = 1; /* chunked body over the limit: drop it, answer at the end */
            free(r->body);
            r->body = NULL;
            r->len = r->cap = 0;
            return MHD_YES;
        }
        if (r->len + n > r->cap) {
            size_t cap = TS_MAX(r->cap * 2, r->len + n);
            cap = TS_MIN(cap, r->limit);
            uint8_t *b = realloc(r->body, cap);
            if (!b) return MHD_NO;
            r->body = b;
            r->cap = cap;
        }
        memcpy(r->body + r->len, data, n);
        r->len += n;
        return MHD_YES;
    }
    if (r->answered) return MHD_YES;
    if (r->too_big) return too_large(c, r->limit);
    return answer(s, c, url, method, r);
}

static size_t unescape(void *cls, struct MHD_Connection *c, char *s) {
    (void)cls;
    (void)c;
    return ts_url_unescape(s);
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
                      enum MHD_RequestTerminationCode toe) {
    ts_server *s = cls;
    conn_state *r = *con_cls;
    if (!r) return;
    if (s->cfg.log) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_HTTP_STATUS);
        fprintf(stderr, "serve: %u %.1f ms%s\n", ci ? ci->http_status : 0u, ts_now_ms() - r->t0,
                toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (aborted)");
    }
    free(r->body);
    free(r);
    *con_cls = NULL;
}

/* ---------------------------------------------------------------- lifetime */

int ts_server_start(tinysam_model *m, const ts_server_config *cfg, ts_server **out) {
    *out = NULL;
    struct sockaddr_storage addr;
    memset(&addr, 0, sizeof addr);
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD;
    const char *host = cfg->host ? cfg->host : "127.0.0.1";
    if (strchr(host, ':')) {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&addr;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)cfg->port);
        if (inet_pton(AF_INET6, host, &a6->sin6_addr) != 1)
            return ts_error(TINYSAM_E_ARG, "--host: '%s' is not a numeric IP address", host);
        flags |= MHD_USE_IPv6;
    } else {
        struct sockaddr_in *a4 = (struct sockaddr_in *)&addr;
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)cfg->port);
        if (inet_pton(AF_INET, host, &a4->sin_addr) != 1)
            return ts_error(TINYSAM_E_ARG, "--host: '%s' is not a numeric IP address", host);
    }
    ts_server *s;
    int rc = ts_server_create(m, cfg, &s);
    if (rc) return rc;
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
        MHD_OPTION_CONNECTION_TIMEOUT, 120u, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1,
        MHD_OPTION_NOTIFY_COMPLETED, completed, s, MHD_OPTION_UNESCAPE_CALLBACK, unescape, s,
        MHD_OPTION_END);
    if (!s->daemon) {
        ts_server_destroy(s);
        return ts_error(TINYSAM_E_IO, "serve: cannot listen on %s port %d (in use, or not an "
                                      "address of this machine?)", host, cfg->port);
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : cfg->port;
    *out = s;
    return 0;
}

int ts_server_port(const ts_server *s) { return s->port; }

void ts_server_stop(ts_server *s) {
    if (!s) return;
    MHD_stop_daemon(s->daemon); /* joins the connection threads */
    ts_server_destroy(s);
}
