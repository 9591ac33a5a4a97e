/* cmd_serve.c - `tinysam serve`: the interactive page and JSON API over HTTP. */
#include "cli/args.h"
#include "cli/commands.h"
#include "core.h"
#include "server/server.h"
#include "tinysam.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>

int ts_cli_serve(int argc, char **argv);

static const char *help =
    "usage: tinysam serve --model M [--host 127.0.0.1] [--port 8080] [--threads N]\n"
    "                     [--max-connections 64] [--max-upload-mb 32] [--max-pixels P]\n"
    "                     [--cache-mb 512] [--web-dir DIR] [--log]\n"
    "\n"
    "Serves the interactive segmentation page at http://HOST:PORT/ and its JSON API:\n"
    "  POST /api/images                  raw JPEG/PNG body -> id, width, height, encode_ms\n"
    "  POST /api/images/ID/segment       {points, labels, box, previous} -> IoU, COCO RLE masks\n"
    "  POST /api/images/ID/everything    generator options (SAM names) -> records\n"
    "  GET  /api/health\n"
    "  --host ADDR          numeric address to bind (default 127.0.0.1: this machine only)\n"
    "  --port N             0 picks a free port; the first stdout line says which\n"
    "  --threads N          compute threads (default: all cores)\n"
    "  --max-connections N  concurrent connections, one thread each (default 64)\n"
    "  --max-upload-mb N    largest image upload (default 32)\n"
    "  --max-pixels P       largest decoded image (default 50000000)\n"
    "  --cache-mb N         memory for cached embeddings, least recently used evicted (512)\n"
    "  --web-dir DIR        serve index.html, app.js, style.css from DIR (development)\n"
    "  --log                one line per request on stderr\n"
    "Stops cleanly on SIGINT or SIGTERM (requests in flight finish).\n";

int ts_cli_serve(int argc, char **argv) {
    ts_server_config cfg;
    ts_server_defaults(&cfg);
    const char *model = NULL, *v;
    int threads = 0, mb;
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
        if (strncmp(a, "--", 2)) {
            ts_error(TINYSAM_E_ARG, "unexpected argument '%s' (see --help)", a);
            return ts_cli_fail();
        }
        if (ts_arg_value(argc, argv, &i, &v)) return ts_cli_fail();
        int rc = 0;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--host")) cfg.host = v;
        else if (!strcmp(a, "--web-dir")) cfg.web_dir = v;
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
    tinysam_set_num_threads(threads);

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
    ts_server *s;
    if (ts_server_start(m, &cfg, &s)) {
        tinysam_model_free(m);
        return ts_cli_fail();
    }
    const char *host = cfg.host;
    int v6 = strchr(host, ':') != NULL;
    printf("{\"listening\": \"http://%s%s%s:%d/\", \"port\": %d, \"threads\": %d}\n",
           v6 ? "[" : "", host, v6 ? "]" : "", ts_server_port(s), ts_server_port(s),
           tinysam_get_num_threads());
    fflush(stdout);

    int sig = 0;
    while (sigwait(&stop, &sig) != 0) {
    }
    fprintf(stderr, "serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    ts_server_stop(s);
    tinysam_model_free(m);
    return 0;
}
