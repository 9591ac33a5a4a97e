/* server.h - `tinysam serve`: an HTTP server (libmicrohttpd) with the interactive page and
 * a JSON API over one loaded model.
 *
 *   GET  /                            the page (index.html, app.js, style.css)
 *   GET  /api/health                  {"status": "ok", ...}
 *   POST /api/images                  raw JPEG/PNG body -> {"id", "width", "height", ...}
 *   GET  /api/images/{id}             the same answer for a cached image, 404 otherwise
 *   POST /api/images/{id}/segment     prompts -> IoU scores, COCO RLE masks, a handle
 *   POST /api/images/{id}/everything  generator options -> the CLI's records
 *
 * Requests run on one thread per connection (bounded); errors are JSON {"error": "..."}
 * with 400 (malformed), 404 (unknown id or path), 405, 410 (expired mask handle), 413
 * (too large) or 500. */
#ifndef TS_SERVER_H
#define TS_SERVER_H

#include "tinysam.h"

#include <stddef.h>

#define TS_SERVER_MAX_ALLOWED 16

typedef struct {
    const char *host;        /* numeric IPv4 or IPv6 address to bind (default 127.0.0.1) */
    int port;                /* 0 = any free port (see ts_server_port) */
    int max_connections;     /* concurrent connections (each has its thread) */
    int max_heavy;           /* concurrent encodes / everything runs */
    size_t max_upload;       /* bytes of an image upload */
    size_t max_json;         /* bytes of a JSON request body */
    long long max_pixels;    /* decoded image size limit */
    size_t cache_bytes;      /* memory bound of the embedding cache */
    const char *web_dir;     /* serve the page from here instead of the embedded copy */
    int log;                 /* one line per request on stderr */
    /* access (gate.c) */
    const char *token;       /* required on every request but /api/health; NULL: none */
    int no_auth;             /* allow a non-loopback bind without a token */
    const char *allowed_hosts[TS_SERVER_MAX_ALLOWED];   /* names answered besides localhost */
    int n_allowed_hosts;
    const char *allowed_origins[TS_SERVER_MAX_ALLOWED]; /* foreign origins (CORS) allowed */
    int n_allowed_origins;
    /* slow and greedy clients */
    int request_timeout;     /* seconds to receive the request header, and each body chunk */
    int max_per_ip;          /* concurrent connections from one client address */
    size_t max_inflight;     /* request body bytes held in memory at once, all clients */
    int max_queue;           /* encodes / everything runs waiting beyond max_heavy */
} ts_server_config;

typedef struct ts_server ts_server;

void ts_server_defaults(ts_server_config *cfg);
/* Starts serving in background threads; the model must outlive the server. */
int ts_server_start(tinysam_model *m, const ts_server_config *cfg, ts_server **out);
int ts_server_port(const ts_server *s);
/* Stops accepting, waits for the requests in flight, frees everything. */
void ts_server_stop(ts_server *s);

#endif
