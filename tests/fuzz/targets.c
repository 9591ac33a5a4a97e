/* targets.c - the fuzz targets (see targets.h). Compiled into each libFuzzer harness and
 * #included by test_corpus_replay.c, so the Makefile needs no extra rule. */
#include "targets.h"

#include "cli/args.h"
#include "everything/provider.h"
#include "io/image.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensor_map.h"
#include "quant/sim_model.h"
#include "server/api.h"
#include "server/gate.h"
#include "core.h"
#include "dist/shard.h"
#include "tinysam.h"

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <unistd.h>

/* Reads the first and last byte of a buffer the library says it owns, so that a wrong
 * size or dangling pointer shows up under ASan instead of staying latent. */
static unsigned touch(const void *p, size_t n) {
    if (!p || !n) return 0;
    const volatile uint8_t *b = p;
    return (unsigned)b[0] + b[n - 1];
}

static size_t dtype_bytes(ts_dtype t) {
    switch (t) {
    case TS_DTYPE_F32: case TS_DTYPE_I32: return 4;
    case TS_DTYPE_I64: case TS_DTYPE_F64: return 8;
    case TS_DTYPE_F16: case TS_DTYPE_BF16: return 2;
    default: return 1;
    }
}

int ts_fuzz_npy(const uint8_t *data, size_t size) {
    ts_npy a;
    memset(&a, 0, sizeof a);
    int rc = ts_npy_parse(data, size, &a);
    if (rc == 0) {
        touch(a.data, (size_t)a.numel * dtype_bytes(a.dtype));
        ts_npy_free(&a);
    }
    return rc;
}

/* Walks the whole tree through the public accessors. */
static unsigned json_walk(const ts_json *j, int depth) {
    unsigned h = (unsigned)j->type;
    if (depth > TS_JSON_MAX_DEPTH + 1) return h; /* the parser must have refused this */
    if (j->type == TS_JSON_STRING) h += (unsigned)strlen(j->string);
    if (j->type == TS_JSON_ARRAY || j->type == TS_JSON_OBJECT) {
        for (int i = 0; i < j->n; i++) {
            const ts_json *c = j->type == TS_JSON_ARRAY ? ts_json_at(j, i) : &j->items[i];
            if (j->type == TS_JSON_OBJECT) {
                h += (unsigned)strlen(j->keys[i]);
                (void)ts_json_get(j, j->keys[i]);
                (void)ts_json_num(j, j->keys[i], 0);
            }
            if (c) h += json_walk(c, depth + 1);
        }
        (void)ts_json_at(j, -1);
        (void)ts_json_at(j, j->n);
    }
    return h;
}

int ts_fuzz_json(const uint8_t *data, size_t size) {
    ts_json *j = NULL;
    int rc = ts_json_parse((const char *)data, size, &j);
    if (rc == 0) {
        json_walk(j, 0);
        ts_json_free(j);
    }
    return rc;
}

int ts_fuzz_image(const uint8_t *data, size_t size) {
    /* The EXIF reader on its own: any byte string may reach it as an APP1 payload. */
    (void)ts_exif_orientation(data, size);
    tinysam_image img;
    memset(&img, 0, sizeof img);
    int rc = tinysam_image_decode(data, size, TS_FUZZ_MAX_PIXELS, &img);
    if (rc == 0) {
        touch(img.rgb, (size_t)img.width * img.height * 3);
        tinysam_image_free(&img);
    }
    return rc;
}

static void map_touch(const ts_tensor_map *m) {
    for (int i = 0; i < m->n; i++) {
        const ts_tensor *t = &m->t[i];
        touch(t->name, strlen(t->name) + 1);
        touch(t->data, (size_t)t->numel * dtype_bytes(t->dtype));
        (void)ts_map_get(m, t->name);
    }
    if (m->metadata_json) touch(m->metadata_json, strlen(m->metadata_json) + 1);
}

/* A module tree's quantisation layers (metadata, steps, block counts) as the model loader
 * reads them; refusing them is fine, the map's load is what the target reports. */
static void quant_layers(ts_tensor_map *m) {
    ts_simq_model *s = NULL;
    if (ts_simq_model_load(m, &s) == 0) ts_simq_model_free(s);
}

int ts_fuzz_pth(const uint8_t *data, size_t size) {
    ts_tensor_map *m = NULL;
    int rc = ts_pth_load_memory(data, size, &m);
    if (rc == 0) {
        map_touch(m);
        quant_layers(m);
        ts_map_free(m);
    }
    return rc;
}

int ts_fuzz_safetensors(const uint8_t *data, size_t size) {
    ts_tensor_map *m = NULL;
    int rc = ts_safetensors_load_memory(data, size, &m);
    if (rc == 0) {
        map_touch(m);
        quant_layers(m);
        ts_map_free(m);
    }
    return rc;
}

/* ------------------------------------------------------------------ CLI values */

/* One option as the CLI parses it (cmd_segment.c, cmd_everything.c): same ranges. */
static int apply_option(const char *a, const char *v, tinysam_everything_options *o) {
    float f[4];
    int n, iv;
    long long ll;
    double d;
    if (!strcmp(a, "--point")) return ts_arg_floats(a, v, 2, 3, f, &n);
    if (!strcmp(a, "--box")) return ts_arg_floats(a, v, 4, 4, f, &n);
    if (!strcmp(a, "--mask-index")) return ts_arg_int(a, v, 0, 2, &iv);
    if (!strcmp(a, "--threads")) return ts_arg_int(a, v, 1, 256, &iv);
    if (!strcmp(a, "--max-pixels")) return ts_arg_ll(a, v, 1, (long long)1 << 40, &ll);
    if (!strcmp(a, "--value")) return ts_arg_float(a, v, f);
    if (!strcmp(a, "--shard")) {
        int idx, cnt;
        return ts_shard_parse(v, &idx, &cnt);
    }
    if (!strcmp(a, "--mode")) {
        if (!strcmp(v, "grid")) o->mode = TINYSAM_EVERYTHING_GRID;
        else if (!strcmp(v, "hierarchical")) o->mode = TINYSAM_EVERYTHING_HIERARCHICAL;
        else return TINYSAM_E_ARG;
        return 0;
    }
    static const struct { const char *name; long lo, hi; size_t off; } ints[] = {
        {"--points-per-side", 1, 1024, offsetof(tinysam_everything_options, points_per_side)},
        {"--points-per-batch", 1, 1024, offsetof(tinysam_everything_options, points_per_batch)},
        {"--crop-n-layers", 0, 4, offsetof(tinysam_everything_options, crop_n_layers)},
        {"--crop-n-points-downscale-factor", 1, 64,
         offsetof(tinysam_everything_options, crop_n_points_downscale_factor)},
        {"--min-mask-region-area", 0, 1 << 30,
         offsetof(tinysam_everything_options, min_mask_region_area)},
    };
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++)
        if (!strcmp(a, ints[k].name))
            return ts_arg_int(a, v, ints[k].lo, ints[k].hi, (int *)((char *)o + ints[k].off));
    static const struct { const char *name; double lo, hi; size_t off; } fl[] = {
        {"--pred-iou-thresh", -10, 10, offsetof(tinysam_everything_options, pred_iou_thresh)},
        {"--stability-score-thresh", 0, 1,
         offsetof(tinysam_everything_options, stability_score_thresh)},
        {"--stability-score-offset", 0, 1000,
         offsetof(tinysam_everything_options, stability_score_offset)},
        {"--high-score-thresh", -1000, 1000,
         offsetof(tinysam_everything_options, high_score_thresh)},
        {"--box-nms-thresh", 0, 1, offsetof(tinysam_everything_options, box_nms_thresh)},
        {"--crop-nms-thresh", 0, 1, offsetof(tinysam_everything_options, crop_nms_thresh)},
        {"--crop-overlap-ratio", 0, 0.99,
         offsetof(tinysam_everything_options, crop_overlap_ratio)},
    };
    for (size_t k = 0; k < sizeof fl / sizeof fl[0]; k++)
        if (!strcmp(a, fl[k].name)) {
            int rc = ts_arg_double_range(a, v, fl[k].lo, fl[k].hi, &d);
            if (!rc) *(float *)((char *)o + fl[k].off) = (float)d;
            return rc;
        }
    return TINYSAM_E_ARG;
}

/* The input is an argv: tokens separated by NUL or newline, read as OPTION VALUE pairs
 * through the CLI's value parsers; then the everything options are checked. */
int ts_fuzz_args(const uint8_t *data, size_t size) {
    char *buf = malloc(size + 1);
    if (!buf) return TINYSAM_E_NOMEM;
    memcpy(buf, data, size);
    buf[size] = 0;
    char *argv[64];
    int argc = 0;
    for (char *p = buf; p < buf + size + 1 && argc < 64;) {
        char *e = p;
        while (e < buf + size && *e && *e != '\n') e++;
        *e = 0;
        argv[argc++] = p;
        p = e + 1;
    }
    tinysam_everything_options o;
    tinysam_everything_defaults(&o);
    int rc = 0;
    for (int i = 0; i < argc && !rc; i++) {
        const char *v;
        rc = ts_arg_value(argc, argv, &i, &v);
        if (!rc) rc = apply_option(argv[i - 1], v, &o);
    }
    if (!rc) rc = tinysam_everything_check(&o);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------ scene JSON */

/* The scene loader takes a path; an anonymous in-memory file gives it one without disk. */
int ts_fuzz_scene(const uint8_t *data, size_t size) {
    int fd = memfd_create("scene", 0);
    if (fd < 0) return TINYSAM_E_IO;
    size_t done = 0;
    while (done < size) {
        ssize_t w = write(fd, data + done, size - done);
        if (w <= 0) {
            close(fd);
            return TINYSAM_E_IO;
        }
        done += (size_t)w;
    }
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ts_provider *p = NULL;
    int rc = ts_oracle_provider_create(path, &p);
    close(fd);
    if (rc) return rc;
    /* A few predictions over the whole image: background and object paths. */
    float *low = malloc(3 * 3 * 65536 * sizeof(float));
    float iou[9];
    double pts[6] = {0.5, 0.5, 512, 512, 1023.5, 300};
    rc = low ? p->begin_region(p, 0, 0, p->width, p->height) : TINYSAM_E_NOMEM;
    if (!rc) rc = p->predict(p, 3, pts, low, iou);
    free(low);
    /* The generator after it (masks, stability, boxes, NMS, RLE) on small scenes only: its
     * full-resolution masks take width x height bytes each, and a scene may say 100000². */
    if (!rc && (long long)p->width * p->height <= 128 * 128) {
        tinysam_everything_options o;
        tinysam_everything_defaults(&o);
        o.mode = TINYSAM_EVERYTHING_GRID;
        o.points_per_side = 1; /* one point, 3 masks: each costs a 1024² upscale */
        o.points_per_batch = 1;
        o.pred_iou_thresh = 0;
        o.stability_score_thresh = 0;
        tinysam_everything_result r;
        memset(&r, 0, sizeof r);
        rc = ts_everything_run(p, &o, &r);
        if (!rc) {
            for (int i = 0; i < r.n; i++) {
                char *coco = tinysam_rle_to_coco_string(r.records[i].counts, r.records[i].n_counts);
                free(coco);
            }
            tinysam_everything_free(&r);
        }
    }
    p->destroy(p);
    return rc;
}

/* An 8x6 red PNG (its SHA-256 is TS_FUZZ_HTTP_ID). */
static const uint8_t http_png[78] = {
    137, 80,  78,  71,  13, 10, 26,  10,  0,   0,   0,   13,  73, 72,  68,  82,  0,   0,  0,  8,
    0,   0,   0,   6,   8,  2,  0,   0,   0,   113, 103, 72,  172, 0,  0,   0,   21,  73, 68, 65,
    84,  120, 218, 99,  60, 33, 167, 193, 128, 13,  48,  49,  224, 0,  244, 144, 0,   0,  160, 210,
    1,   26,  233, 5,   89, 208, 0,   0,   0,   0,   73,  69,  78,  68, 174, 66,  96,  130};

static ts_server *http_server;

static void http_server_free(void) { ts_server_destroy(http_server); }

#define HTTP_FUZZ_TOKEN "fuzz-token-0123456789"

/* The header lines of an input ("Name: value\n"... up to an empty line) into q. */
static void http_headers(char *h, ts_http_request *q) {
    for (char *line = h; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        char *colon = strchr(line, ':');
        if (colon) {
            *colon = 0;
            char *v = colon + 1;
            while (*v == ' ') v++;
            if (!strcasecmp(line, "Host")) q->host = v;
            else if (!strcasecmp(line, "Origin")) q->origin = v;
            else if (!strcasecmp(line, "Content-Type")) q->content_type = v;
            else if (!strcasecmp(line, "Authorization")) q->authorization = v;
            else if (!strcasecmp(line, "Token")) q->token_header = v;
            else if (!strcasecmp(line, "Cookie")) q->cookie = v;
            else if (!strcasecmp(line, "?token")) q->query_token = v;
        }
        line = nl ? nl + 1 : NULL;
    }
}

/* Input: a method byte (low bits pick the method; 0x80 set: header lines follow the URL),
 * the URL up to '\n', [header lines, an empty line,] the body. Without header lines the
 * request carries what a well-behaved client sends (Host, the token, the route's
 * Content-Type), so that the seeds reach the routes behind the gate. */
int ts_fuzz_http(const uint8_t *data, size_t size) {
    static const char *methods[] = {"GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS"};
    if (!http_server) {
        ts_server_config cfg;
        ts_server_defaults(&cfg);
        cfg.max_upload = 1 << 20;
        cfg.max_json = 16 << 10;
        cfg.max_pixels = TS_FUZZ_MAX_PIXELS;
        cfg.cache_bytes = 8 << 20; /* small, so that uploads exercise eviction */
        cfg.token = HTTP_FUZZ_TOKEN;
        cfg.allowed_hosts[cfg.n_allowed_hosts++] = "labels.lab";
        cfg.allowed_origins[cfg.n_allowed_origins++] = "http://labels.lab:8080";
        if (ts_server_create(NULL, &cfg, &http_server)) return TINYSAM_E_NOMEM;
        atexit(http_server_free);
    }
    ts_http_reply rep;
    if (ts_server_handle(http_server, "POST", "/api/images", http_png, sizeof http_png, &rep))
        return TINYSAM_E_NOMEM;
    ts_http_reply_free(&rep);
    if (size < 1) return TINYSAM_E_ARG;
    const char *method = methods[(data[0] & 0x7f) % 6];
    int with_headers = data[0] & 0x80;
    char *copy = malloc(size); /* URL and headers as C strings: a NUL inside ends them early */
    if (!copy) return TINYSAM_E_NOMEM;
    memcpy(copy, data + 1, size - 1);
    copy[size - 1] = 0;
    char *nl = memchr(copy, '\n', size - 1);
    size_t body_at = nl ? (size_t)(nl - copy) + 1 : size - 1;
    if (nl) *nl = 0;
    char *url = copy;
    ts_url_unescape(url);
    ts_http_request q = {.method = method, .url = url};
    if (with_headers && nl) {
        char *h = copy + body_at, *end = NULL;
        for (char *p = h; p < copy + size - 1; p++)
            if (*p == '\n' && (p == h || p[-1] == '\n')) {
                end = p;
                break;
            }
        body_at = end ? (size_t)(end - copy) + 1 : size - 1;
        if (end) *end = 0;
        http_headers(h, &q);
    } else {
        q.host = "127.0.0.1:8080";
        q.authorization = "Bearer " HTTP_FUZZ_TOKEN;
        q.content_type = strcmp(url, "/api/images") ? "application/json" : "image/png";
    }
    const uint8_t *body = data + 1 + body_at;
    size_t body_len = size - 1 - TS_MIN(body_at, size - 1);
    ts_gate g;
    int gate = ts_gate_check(http_server, &q, &g, &rep);
    int rc = gate < 0 ? -1 : 0;
    if (gate == 0) {
        /* what passed the gate: the token when the route needs it, an allowed foreign origin */
        if (!g.authorized && strcmp(url, "/api/health")) abort();
        if (g.cors_origin[0] && strcmp(g.cors_origin, "http://labels.lab:8080")) abort();
        rc = ts_server_handle_body_as(http_server, g.authorized, method, url, body, body_len,
                                      &rep);
    }
    free(copy);
    if (rc) return TINYSAM_E_NOMEM;
    int status = (int)rep.status;
    unsigned t = touch(rep.body, rep.len);
    (void)t;
    ts_http_reply_free(&rep);
    if (status < 200 || status > 599) abort(); /* an answer must carry an HTTP status */
    return status < 400 ? TINYSAM_OK : ts_error(TINYSAM_E_ARG, "HTTP %d", status);
}

const ts_fuzz_target ts_fuzz_targets[] = {
    {"npy", ts_fuzz_npy},       {"json", ts_fuzz_json},
    {"image", ts_fuzz_image},   {"pth", ts_fuzz_pth},
    {"safetensors", ts_fuzz_safetensors},
    {"args", ts_fuzz_args},     {"scene", ts_fuzz_scene},
    {"http", ts_fuzz_http},     {NULL, NULL},
};
