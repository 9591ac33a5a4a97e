/* cmd_serve.c - `tinysam serve`: the interactive page and JSON API over HTTP. */
#include "cli/args.h"
#include "cli/commands.h"
#include "core.h"
#include "server/labelling.h"
#include "server/server.h"
#include "tinysam.h"

#include <malloc.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

int ts_cli_serve(int argc, char **argv);

static const char *help =
    "usage: tinysam serve --model M [--host 127.0.0.1] [--port 8080] [--threads N]\n"
    "                     [--max-connections 64] [--max-upload-mb 32] [--max-pixels P]\n"
    "                     [--cache-mb 512] [--web-dir DIR] [--log]\n"
    "                     [--token TOKEN|auto] [--no-auth] [--allowed-host NAME]...\n"
    "                     [--allowed-origin ORIGIN]... [--request-timeout 10]\n"
    "                     [--max-connections-per-ip 16] [--max-inflight-mb 256]\n"
    "                     [--max-queue 16] [--label-studio-url URL]\n"
    "                     [--label-studio-api-key KEY] [--everything-option NAME=VALUE]...\n"
    "\n"
    "Serves the interactive segmentation page at http://HOST:PORT/ and its JSON API:\n"
    "  POST /api/images                  raw JPEG/PNG body -> id, width, height, encode_ms\n"
    "  POST /api/images/ID/segment       {points, labels, box, previous} -> IoU, COCO RLE masks\n"
    "  POST /api/images/ID/everything    generator options (SAM names) -> records\n"
    "  GET  /api/health\n"
    "  --host ADDR          numeric address to bind (default 127.0.0.1: this machine only)\n"
    "  --port N             0 picks a free port; the first stdout line says which\n"
    "  --threads N          compute threads (default: all cores)\n"
    "  --max-connections N  concurrent connections, one thread each (default 512)\n"
    "  --max-upload-mb N    largest image upload (default 32)\n"
    "  --max-pixels P       largest decoded image (default 50000000)\n"
    "  --cache-mb N         memory for cached embeddings, least recently used evicted (512)\n"
    "  --web-dir DIR        serve index.html, app.js, style.css from DIR (development)\n"
    "  --log                one line per request on stderr: client, method, path, status,\n"
    "                       bytes in and out, time\n"
    "Access (every request but GET /api/health, which then says only status and version):\n"
    "  --token TOKEN        require it: 'Authorization: Bearer TOKEN' (or 'Token TOKEN'),\n"
    "                       a 'Token: TOKEN' header, HTTP Basic with it as the password, or\n"
    "                       the cookie set by opening http://HOST:PORT/?token=TOKEN.\n"
    "                       'auto' makes one up and prints that URL; TINYSAM_TOKEN in the\n"
    "                       environment is the same as --token\n"
    "  --no-auth            allow a non-loopback --host without a token (refused otherwise)\n"
    "  --allowed-host NAME  answer requests for this host name too (besides IP addresses\n"
    "                       and localhost; '*' any: DNS rebinding protection off)\n"
    "  --allowed-origin O   let pages from origin O (e.g. http://labels.lab:8080) call the\n"
    "                       API (CORS); other sites' pages get 403\n"
    "Slow and greedy clients:\n"
    "  --request-timeout S  seconds to send the request header, and between body chunks (10)\n"
    "  --max-connections-per-ip N   concurrent connections from one address (16)\n"
    "  --max-inflight-mb N  request bodies held in memory at once, all clients (256): beyond\n"
    "                       it uploads get 503 with Retry-After\n"
    "  --max-queue N        encodes waiting for a worker (16): beyond it 503\n"
    "  --label-studio-url URL       Label Studio's address: its /data/... image paths are\n"
    "                       fetched from there (env LABEL_STUDIO_URL)\n"
    "  --label-studio-api-key KEY   sent as 'Authorization: Token KEY' to that address only\n"
    "                       (env LABEL_STUDIO_API_KEY)\n"
    "  --everything-option NAME=VALUE   generator option (SAM's names) for Label Studio's\n"
    "                       pre-annotation calls, e.g. pred_iou_thresh=0.8 (repeatable)\n"
    "Stops cleanly on SIGINT or SIGTERM (requests in flight finish).\n";

/* A token for --token auto: 24 random bytes, hex. */
static int make_token(char out[49]) {
    unsigned char b[24];
    if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
        return ts_error(TINYSAM_E_IO, "--token auto: no random bytes from the system");
    for (int i = 0; i < 24; i++) snprintf(out + 2 * i, 3, "%02x", b[i]);
    return 0;
}

/* A token travels in headers and a cookie: printable, no spaces, quotes, commas or ';'. */
static int check_token(const char *t) {
    size_t n = strlen(t);
    if (n < 8 || n > 512)
        return ts_error(TINYSAM_E_ARG, "--token: give 8 to 512 characters (or 'auto')");
    for (const char *p = t; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f || strchr("\";,\\", *p))
            return ts_error(TINYSAM_E_ARG, "--token: only printable ASCII without spaces, "
                                           "quotes, commas, semicolons or backslashes");
    return 0;
}

int ts_cli_serve(int argc, char **argv) {
    ts_server_config cfg;
    ts_server_defaults(&cfg);
    static char auto_token[49];
    int token_auto = 0;
    cfg.token = getenv("TINYSAM_TOKEN");
    if (cfg.token && !cfg.token[0]) cfg.token = NULL;
    const char *model = NULL, *v;
    int threads = 0, mb;
    ts_labelling_config lc; /* Label Studio / X-AnyLabeling (labelling.h) */
    ts_labelling_defaults(&lc);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(help, stdout);
            return 0;
        }
        if (!strcmp(a, "--log")) {
            cfg.log = 1;
            continue;
        }
        if (!strcmp(a, "--no-auth")) {
            cfg.no_auth = 1;
            continue;
        }
        if (strncmp(a, "--", 2)) {
            ts_error(TINYSAM_E_ARG, "unexpected argument '%s' (see --help)", a);
            return ts_cli_fail();
        }
        if (ts_arg_value(argc, argv, &i, &v)) return ts_cli_fail();
        int rc = 0;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--host")) cfg.host = v;
        else if (!strcmp(a, "--web-dir")) cfg.web_dir = v;
        else if (!strcmp(a, "--token")) cfg.token = v;
        else if (!strcmp(a, "--label-studio-url")) lc.label_studio_url = v;
        else if (!strcmp(a, "--label-studio-api-key")) lc.label_studio_api_key = v;
        else if (!strcmp(a, "--everything-option")) rc = ts_labelling_everything_option(&lc, v);
        else if (!strcmp(a, "--allowed-host") || !strcmp(a, "--allowed-origin")) {
            int host = a[10] == 'h';
            int *n = host ? &cfg.n_allowed_hosts : &cfg.n_allowed_origins;
            if (*n == TS_SERVER_MAX_ALLOWED)
                rc = ts_error(TINYSAM_E_ARG, "%s: at most %d", a, TS_SERVER_MAX_ALLOWED);
            else if (!v[0] || strpbrk(v, " \t,;"))
                rc = ts_error(TINYSAM_E_ARG, "%s: one name per option, no spaces or commas", a);
            else if (!host && strncmp(v, "http://", 7) && strncmp(v, "https://", 8))
                rc = ts_error(TINYSAM_E_ARG, "--allowed-origin: an origin is "
                                             "http(s)://HOST[:PORT], got '%s'", v);
            else (host ? cfg.allowed_hosts : cfg.allowed_origins)[(*n)++] = v;
        } else if (!strcmp(a, "--request-timeout"))
            rc = ts_arg_int(a, v, 1, 3600, &cfg.request_timeout);
        else if (!strcmp(a, "--max-connections-per-ip"))
            rc = ts_arg_int(a, v, 1, 4096, &cfg.max_per_ip);
        else if (!strcmp(a, "--max-queue")) rc = ts_arg_int(a, v, 0, 4096, &cfg.max_queue);
        else if (!strcmp(a, "--max-inflight-mb")) {
            rc = ts_arg_int(a, v, 1, 1 << 20, &mb);
            cfg.max_inflight = (size_t)mb << 20;
        }
        else if (!strcmp(a, "--port")) rc = ts_arg_int(a, v, 0, 65535, &cfg.port);
        else if (!strcmp(a, "--threads")) rc = ts_arg_int(a, v, 1, 256, &threads);
        else if (!strcmp(a, "--max-connections"))
            rc = ts_arg_int(a, v, 1, 4096, &cfg.max_connections);
        else if (!strcmp(a, "--max-pixels"))
            rc = ts_arg_ll(a, v, 1, (long long)1 << 40, &cfg.max_pixels);
        else if (!strcmp(a, "--max-upload-mb")) {
            rc = ts_arg_int(a, v, 1, 4096, &mb);
            cfg.max_upload = (size_t)mb << 20;
        } else if (!strcmp(a, "--cache-mb")) {
            rc = ts_arg_int(a, v, 1, 1 << 20, &mb);
            cfg.cache_bytes = (size_t)mb << 20;
        } else {
            rc = ts_error(TINYSAM_E_ARG, "unknown option '%s' (see --help)", a);
        }
        if (rc) return ts_cli_fail();
    }
    if (!model) {
        ts_error(TINYSAM_E_ARG, "--model is required");
        return ts_cli_fail();
    }
    if (cfg.token && !strcmp(cfg.token, "auto")) {
        if (make_token(auto_token)) return ts_cli_fail();
        cfg.token = auto_token;
        token_auto = 1;
    }
    if (cfg.token && check_token(cfg.token)) return ts_cli_fail();
    if (cfg.max_inflight < cfg.max_upload)
        fprintf(stderr, "serve: note: --max-inflight-mb is below --max-upload-mb: the largest "
                        "uploads will always get 503\n");
    tinysam_set_num_threads(threads);
    /* A long-running server with one thread per connection: large blocks (request bodies,
     * images, embeddings) from their own mappings, returned to the system when freed,
     * rather than from per-thread malloc arenas that fragment and keep them (glibc raises
     * its mmap threshold on its own after the first large free otherwise). */
    mallopt(M_MMAP_THRESHOLD, 1 << 20);

    /* Block the stop signals in every thread (the server's inherit this mask) and take
     * them synchronously below: no handler runs inside a request. */
    sigset_t stop;
    sigemptyset(&stop);
    sigaddset(&stop, SIGINT);
    sigaddset(&stop, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop, NULL);
    signal(SIGPIPE, SIG_IGN);

    tinysam_model *m = NULL;
    if (tinysam_model_load(model, &m)) return ts_cli_fail();
    const char *slash = strrchr(model, '/');
    lc.checkpoint_name = slash ? slash + 1 : model; /* X-AnyLabeling's display name */
    ts_labelling_configure(&lc);
    ts_server *s;
    if (ts_server_start(m, &cfg, &s)) {
        tinysam_model_free(m);
        return ts_cli_fail();
    }
    const char *host = cfg.host;
    int v6 = strchr(host, ':') != NULL;
    printf("{\"listening\": \"http://%s%s%s:%d/\", \"port\": %d, \"threads\": %d, "
           "\"auth\": %s",
           v6 ? "[" : "", host, v6 ? "]" : "", ts_server_port(s), ts_server_port(s),
           tinysam_get_num_threads(), cfg.token ? "true" : "false");
    /* the URL with the token only when it was made up here: a token the user chose stays
     * off the terminal and out of logs */
    if (token_auto)
        printf(", \"url\": \"http://%s%s%s:%d/?token=%s\"", v6 ? "[" : "", host, v6 ? "]" : "",
               ts_server_port(s), cfg.token);
    printf("}\n");
    fflush(stdout);

    int sig = 0;
    while (sigwait(&stop, &sig) != 0) {
    }
    fprintf(stderr, "serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    ts_server_stop(s);
    tinysam_model_free(m);
    return 0;
}
