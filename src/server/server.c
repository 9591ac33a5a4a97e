/* server.c - `tinysam serve` on libmicrohttpd: sockets, request bodies, response headers,
 * the limits on slow and greedy clients. Who may ask is decided in gate.c, what each
 * request gets in api.c.
 *
 * One thread per connection (MHD_USE_THREAD_PER_CONNECTION, bounded by the connection
 * limit and the per-address limit), because a request may compute for seconds (an encode,
 * everything mode) and must not stall the others. Encodes and everything runs also pass a
 * bounded queue (api.c), so that a burst of uploads cannot allocate encoder scratch for every
 * connection at once.
 *
 * Slow clients: libmicrohttpd's connection timeout is an idle timeout (any byte received
 * restarts it), which bounds each body chunk but not a header sent a byte at a time; a
 * watchdog thread closes connections whose request header is not complete within
 * --request-timeout of the connection (or of the previous request's end). Request bodies
 * held in memory are counted against --max-inflight-mb before they are read. */
#include "server/server.h"

#include "core.h"
#include "server/api.h"
#include "server/gate.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif

/* Per-connection (socket) state for the header watchdog. */
typedef struct watch {
    int fd;
    double deadline; /* ms (ts_now_ms) by which a complete header must be in; 0 none */
    int requests;    /* requests whose header came in */
    struct watch *prev, *next;
    char client[64];
} watch;

/* The server's network side: the watchdog and its connections. */
struct ts_net {
    pthread_mutex_t mu;
    pthread_cond_t wake;
    pthread_t thread;
    int running, stop;
    watch *head;
};

/* Per-request state: the body collected so far. */
typedef struct {
    uint8_t *body;
    size_t len, cap, limit;
    size_t reserved; /* bytes counted against max_inflight */
    int too_big, busy;
    int answered; /* a response is queued already */
    int authorized;
    size_t out_bytes;
    double t0;
    char method[8];
    char path[128]; /* for the log line, control characters replaced */
    ts_gate gate;
} conn_state;

/* ---------------------------------------------------------------- header watchdog */

static void *watchdog(void *arg) {
    struct ts_net *n = arg;
    double trimmed = ts_now_ms();
    pthread_mutex_lock(&n->mu);
    while (!n->stop) {
        double now = ts_now_ms();
#ifdef __GLIBC__
        /* request bodies and images come and go in many threads' malloc arenas, which keep
         * what was freed: hand it back every 2 s, so that RSS follows the load */
        if (now - trimmed > 2000) {
            malloc_trim(0);
            trimmed = now;
        }
#endif
        for (watch *w = n->head; w; w = w->next)
            if (w->deadline > 0 && now > w->deadline) {
                /* the connection's thread sees end of input and closes it; the fd stays
                 * open until the CLOSED notification, which takes this mutex first */
                shutdown(w->fd, SHUT_RDWR);
                w->deadline = 0;
            }
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 200 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&n->wake, &n->mu, &ts);
    }
    pthread_mutex_unlock(&n->mu);
    return NULL;
}

static void client_name(struct MHD_Connection *c, char *out, size_t cap) {
    snprintf(out, cap, "?");
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    if (!ci || !ci->client_addr) return;
    const struct sockaddr *sa = ci->client_addr;
    if (sa->sa_family == AF_INET)
        inet_ntop(AF_INET, &((const struct sockaddr_in *)sa)->sin_addr, out, (socklen_t)cap);
    else if (sa->sa_family == AF_INET6)
        inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)sa)->sin6_addr, out, (socklen_t)cap);
}

static void notify_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                              enum MHD_ConnectionNotificationCode toe) {
    ts_server *s = cls;
    struct ts_net *n = s->net;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        watch *w = calloc(1, sizeof *w);
        if (!w || !ci) {
            free(w);
            return;
        }
        w->fd = ci->connect_fd;
        if (s->cfg.request_timeout > 0) w->deadline = ts_now_ms() + 1000.0 * s->cfg.request_timeout;
        client_name(c, w->client, sizeof w->client);
        pthread_mutex_lock(&n->mu);
        w->next = n->head;
        if (n->head) n->head->prev = w;
        n->head = w;
        pthread_mutex_unlock(&n->mu);
        *socket_context = w;
        return;
    }
    watch *w = *socket_context;
    if (!w) return;
    pthread_mutex_lock(&n->mu);
    if (w->prev) w->prev->next = w->next;
    else n->head = w->next;
    if (w->next) w->next->prev = w->prev;
    pthread_mutex_unlock(&n->mu);
    if (s->cfg.log && w->requests == 0)
        fprintf(stderr, "serve: %s - - closed without a complete request header\n", w->client);
    free(w);
    *socket_context = NULL;
}

/* The connection's watch: header in (deadline off), or the next one awaited (on). */
static void watch_header(ts_server *s, struct MHD_Connection *c, int waiting) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    watch *w = ci ? ci->socket_context : NULL;
    if (!w) return;
    pthread_mutex_lock(&s->net->mu);
    if (waiting) {
        if (s->cfg.request_timeout > 0) w->deadline = ts_now_ms() + 1000.0 * s->cfg.request_timeout;
    } else {
        w->deadline = 0;
        w->requests++;
    }
    pthread_mutex_unlock(&s->net->mu);
}

/* ---------------------------------------------------------------- responses */

/* Queues the reply with its headers; takes the body over. */
static enum MHD_Result queue(const ts_server *s, struct MHD_Connection *c, conn_state *st,
                             int rc, ts_http_reply *rep) {
    if (rc) return MHD_NO;
    struct MHD_Response *r = MHD_create_response_from_buffer(
        rep->len, rep->body, rep->owned ? MHD_RESPMEM_MUST_FREE : MHD_RESPMEM_PERSISTENT);
    if (!r) {
        ts_http_reply_free(rep);
        return MHD_NO;
    }
    st->out_bytes = rep->len;
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
    if (rep->retry_after) {
        char v[16];
        snprintf(v, sizeof v, "%u", rep->retry_after);
        MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER, v);
    }
    if (st->gate.cors_origin[0]) { /* only ever an allowed foreign origin (gate.c) */
        MHD_add_response_header(r, "Access-Control-Allow-Origin", st->gate.cors_origin);
        MHD_add_response_header(r, MHD_HTTP_HEADER_VARY, "Origin");
        if (rep->status == MHD_HTTP_NO_CONTENT) {
            MHD_add_response_header(r, "Access-Control-Allow-Methods", "GET, POST, OPTIONS");
            MHD_add_response_header(r, "Access-Control-Allow-Headers",
                                    "Authorization, Content-Type, Token");
            MHD_add_response_header(r, "Access-Control-Max-Age", "600");
        }
    }
    if (st->gate.set_cookie && s->cfg.token) {
        /* the page's own requests then carry the token: HttpOnly (no script reads it),
         * SameSite=Strict (no other site's request carries it) */
        char v[1200];
        snprintf(v, sizeof v, TS_TOKEN_COOKIE "=%s; Path=/; HttpOnly; SameSite=Strict",
                 s->cfg.token);
        MHD_add_response_header(r, MHD_HTTP_HEADER_SET_COOKIE, v);
    }
    enum MHD_Result ret = MHD_queue_response(c, rep->status, r);
    MHD_destroy_response(r);
    return ret;
}

/* The whole body is in (or the route takes none): r->len is within the route's limit. */
static enum MHD_Result answer(ts_server *s, struct MHD_Connection *c, const char *url,
                              const char *method, conn_state *r) {
    ts_http_reply rep;
    int rc = ts_server_handle_body_as(s, r->authorized, method, url, r->body, r->len, &rep);
    return queue(s, c, r, rc, &rep);
}

static enum MHD_Result too_large(ts_server *s, struct MHD_Connection *c, conn_state *r) {
    ts_http_reply rep;
    int rc = ts_server_too_large(&rep, r->limit);
    return queue(s, c, r, rc, &rep);
}

static enum MHD_Result busy(ts_server *s, struct MHD_Connection *c, conn_state *r) {
    ts_http_reply rep;
    int rc = ts_server_busy(&rep, "request bodies in memory at the --max-inflight-mb limit");
    return queue(s, c, r, rc, &rep);
}

/* Counts n more body bytes against the global budget; 0, or -1 when they do not fit. */
static int reserve(ts_server *s, conn_state *r, size_t n) {
    size_t cur = atomic_load(&s->inflight);
    do {
        if (n > s->cfg.max_inflight || cur > s->cfg.max_inflight - n) return -1;
    } while (!atomic_compare_exchange_weak(&s->inflight, &cur, cur + n));
    r->reserved += n;
    return 0;
}

static void unreserve(ts_server *s, conn_state *r) {
    atomic_fetch_sub(&s->inflight, r->reserved);
    r->reserved = 0;
}

static void drop_body(ts_server *s, conn_state *r) {
    free(r->body);
    r->body = NULL;
    r->len = r->cap = 0;
    unreserve(s, r);
}

static const char *header(struct MHD_Connection *c, const char *name) {
    return MHD_lookup_connection_value(c, MHD_HEADER_KIND, name);
}

/* The first call for a request: the header is in. Gate, then the body's admission. */
static enum MHD_Result begin(ts_server *s, struct MHD_Connection *c, const char *url,
                             const char *method, conn_state *r) {
    watch_header(s, c, 0);
    snprintf(r->method, sizeof r->method, "%s", method);
    size_t k = 0;
    for (const char *p = url; *p && k + 1 < sizeof r->path; p++)
        r->path[k++] = (*p < 0x20 || *p == 0x7f) ? '?' : *p;
    r->path[k] = 0;
    ts_http_request q = {
        .method = method,
        .url = url,
        .host = header(c, MHD_HTTP_HEADER_HOST),
        .origin = header(c, "Origin"),
        .content_type = header(c, MHD_HTTP_HEADER_CONTENT_TYPE),
        .authorization = header(c, MHD_HTTP_HEADER_AUTHORIZATION),
        .token_header = header(c, "Token"),
        .cookie = header(c, MHD_HTTP_HEADER_COOKIE),
        .query_token = !strcmp(method, "GET")
                           ? MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "token")
                           : NULL,
    };
    ts_http_reply rep;
    int g = ts_gate_check(s, &q, &r->gate, &rep);
    if (g) {
        r->answered = 1;
        return queue(s, c, r, g < 0, &rep);
    }
    r->authorized = r->gate.authorized;
    r->limit = ts_server_body_limit(s, url, method);
    /* nothing to read (GET, or a route that takes no body): answer at once, so that a stray
     * body gets the route's own answer (404, 405) rather than a size error */
    if (r->limit == 0) {
        r->answered = 1;
        return answer(s, c, url, method, r);
    }
    /* refuse an announced oversized body before reading it, and one that does not fit the
     * memory budget now */
    const char *cl = header(c, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long n = strtoull(cl, &end, 10);
        if (errno || *end || n > r->limit) {
            r->too_big = r->answered = 1;
            return too_large(s, c, r);
        }
        if (n > 0) {
            if (reserve(s, r, (size_t)n)) {
                r->busy = r->answered = 1;
                return busy(s, c, r);
            }
            r->body = malloc((size_t)n);
            if (!r->body) return MHD_NO;
            r->cap = (size_t)n;
        }
    }
    return MHD_YES;
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
        *con_cls = r;
        return begin(s, c, url, method, r);
    }
    if (*data_size) {
        size_t n = *data_size;
        *data_size = 0;
        if (r->too_big || r->busy || r->answered) return MHD_YES; /* read and dropped */
        if (n > r->limit - r->len) {
            r->too_big = 1; /* chunked body over the limit: drop it, answer at the end */
            drop_body(s, r);
            return MHD_YES;
        }
        if (r->len + n > r->cap) {
            size_t cap = TS_MAX(r->cap * 2, r->len + n);
            cap = TS_MIN(cap, r->limit);
            if (reserve(s, r, cap - r->cap)) { /* a chunked body outgrew the budget */
                r->busy = 1;
                drop_body(s, r);
                return MHD_YES;
            }
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
    if (r->too_big) {
        r->answered = 1;
        return too_large(s, c, r);
    }
    if (r->busy) {
        r->answered = 1;
        return busy(s, c, r);
    }
    r->answered = 1;
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
        char client[64];
        client_name(c, client, sizeof client);
        fprintf(stderr, "serve: %s %s %s %u in=%zu out=%zu %.1f ms%s\n", client, r->method,
                r->path, ci ? ci->http_status : 0u, r->len, r->out_bytes, ts_now_ms() - r->t0,
                toe == MHD_REQUEST_TERMINATED_COMPLETED_OK ? "" : " (aborted)");
    }
    drop_body(s, r);
    free(r);
    *con_cls = NULL;
    if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) watch_header(s, c, 1); /* keep-alive */
}

/* ---------------------------------------------------------------- lifetime */

static void net_stop(ts_server *s) {
    struct ts_net *n = s->net;
    if (!n) return;
    if (n->running) {
        pthread_mutex_lock(&n->mu);
        n->stop = 1;
        pthread_cond_signal(&n->wake);
        pthread_mutex_unlock(&n->mu);
        pthread_join(n->thread, NULL);
        n->running = 0;
    }
}

static void net_free(ts_server *s) {
    struct ts_net *n = s->net;
    if (!n) return;
    pthread_mutex_destroy(&n->mu);
    pthread_cond_destroy(&n->wake);
    free(n);
    s->net = NULL;
}

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
    if (!ts_is_loopback_address(host) && !(cfg->token && cfg->token[0]) && !cfg->no_auth)
        return ts_error(TINYSAM_E_ARG,
                        "serve: refusing to listen on %s without a token: anyone who can reach "
                        "it could use the server. Give --token TOKEN (or --token auto, or "
                        "TINYSAM_TOKEN in the environment), or --no-auth if the network is "
                        "trusted", host);
    ts_server *s;
    int rc = ts_server_create(m, cfg, &s);
    if (rc) return rc;
    struct ts_net *n = calloc(1, sizeof *n);
    if (!n) {
        ts_server_destroy(s);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    s->net = n;
    pthread_mutex_init(&n->mu, NULL);
    pthread_cond_init(&n->wake, NULL);
    if (pthread_create(&n->thread, NULL, watchdog, n)) {
        net_free(s);
        ts_server_destroy(s);
        return ts_error(TINYSAM_E_NOMEM, "serve: cannot start the watchdog thread");
    }
    n->running = 1;
    s->daemon = MHD_start_daemon(
        flags, (uint16_t)cfg->port, NULL, NULL, handler, s, MHD_OPTION_SOCK_ADDR,
        (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT, (unsigned)cfg->max_connections,
        MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)cfg->max_per_ip,
        /* an idle timeout: bounds the wait for each body chunk (the watchdog: the header) */
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)cfg->request_timeout,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, MHD_OPTION_NOTIFY_COMPLETED, completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, notify_connection, s, MHD_OPTION_UNESCAPE_CALLBACK,
        unescape, s, MHD_OPTION_END);
    if (!s->daemon) {
        net_stop(s);
        net_free(s);
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
    net_stop(s);                /* no shutdown() on a connection from here on */
    MHD_stop_daemon(s->daemon); /* joins the connection threads, frees their watches */
    net_free(s);
    ts_server_destroy(s);
}
