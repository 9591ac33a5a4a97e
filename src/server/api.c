/* api.c - what `tinysam serve` answers: routing, the page, the JSON API. No sockets here:
 * server.c feeds requests in from libmicrohttpd, and the HTTP fuzz harness and tests call
 * ts_server_handle directly. */
#include "server/api.h"

#include "core.h"
#include "everything/amg.h"
#include "everything/polygons.h"
#include "io/json.h"
#include "server/gate.h"
#include "server/labelling.h"
#include "server/web_assets.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum {
    HTTP_OK = 200,
    HTTP_CREATED = 201,
    HTTP_BAD_REQUEST = 400,
    HTTP_NOT_FOUND = 404,
    HTTP_METHOD_NOT_ALLOWED = 405,
    HTTP_GONE = 410,
    HTTP_TOO_LARGE = 413,
    HTTP_UNSUPPORTED_MEDIA_TYPE = 415,
    HTTP_INTERNAL_SERVER_ERROR = 500,
    HTTP_SERVICE_UNAVAILABLE = 503,
};

/* The request as the handlers see it: the whole body, already collected. */
typedef struct {
    const uint8_t *body;
    size_t len;
    int authorized; /* carried the token (or none is configured) */
} request;

void ts_server_defaults(ts_server_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    cfg->host = "127.0.0.1";
    cfg->port = 8080;
    cfg->max_connections = 512; /* above what 16 per address from a few addresses can fill */
    cfg->max_heavy = 2;
    cfg->max_upload = (size_t)32 << 20;
    cfg->max_json = (size_t)64 << 10;
    cfg->max_pixels = 50000000LL;
    cfg->cache_bytes = (size_t)512 << 20;
    cfg->request_timeout = 10;
    cfg->max_per_ip = 16;
    cfg->max_inflight = (size_t)256 << 20;
    cfg->max_queue = 16;
}

/* ---------------------------------------------------------------- responses */

/* Fills the reply; body is either static (owned = 0) or malloc'd and taken over. */
static int send_buf(ts_http_reply *c, unsigned code, const char *type, void *body, size_t len,
                    int owned) {
    c->status = code;
    c->type = type;
    c->body = body;
    c->len = len;
    c->owned = owned;
    return 0;
}

int ts_jbuf_open(ts_jbuf *j) {
    j->buf = NULL;
    j->len = 0;
    j->f = open_memstream(&j->buf, &j->len);
    return j->f ? 0 : ts_error(TINYSAM_E_NOMEM, "out of memory");
}

int ts_jbuf_send(ts_http_reply *c, unsigned code, ts_jbuf *j) {
    if (fclose(j->f) != 0 || !j->buf) {
        free(j->buf);
        return -1;
    }
    return send_buf(c, code, "application/json", j->buf, j->len, 1);
}

int ts_jbuf_send_error(ts_http_reply *c, unsigned code, const char *msg) {
    ts_jbuf j;
    if (ts_jbuf_open(&j)) return -1;
    fputs("{\"error\": ", j.f);
    ts_json_write_string(j.f, msg);
    fputs("}\n", j.f);
    return ts_jbuf_send(c, code, &j);
}

static void jb_discard(ts_jbuf *j) {
    fclose(j->f);
    free(j->buf);
}

static int send_error(ts_http_reply *c, unsigned code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int send_error(ts_http_reply *c, unsigned code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return ts_jbuf_send_error(c, code, msg);
}

/* HTTP status of a library failure. */
static unsigned http_status(int rc) {
    switch (rc) {
    case TINYSAM_E_ARG:
    case TINYSAM_E_FORMAT:
    case TINYSAM_E_UNSUPPORTED: return HTTP_BAD_REQUEST;
    case TINYSAM_E_LIMIT: return HTTP_TOO_LARGE;
    case TINYSAM_E_NOMEM: return HTTP_SERVICE_UNAVAILABLE;
    default: return HTTP_INTERNAL_SERVER_ERROR;
    }
}

int ts_server_error(ts_http_reply *out, unsigned code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memset(out, 0, sizeof *out);
    return send_error(out, code, "%s", msg);
}

int ts_server_busy(ts_http_reply *out, const char *what) {
    int rc = ts_server_error(out, HTTP_SERVICE_UNAVAILABLE, "server busy (%s): retry later", what);
    out->retry_after = 2;
    return rc;
}

/* Takes a place in the bounded queue of encodes / everything runs and waits for a worker;
 * 0, or -1 when the queue is full (503 queued in *c). */
static int heavy_enter(ts_server *s, ts_http_reply *c) {
    int was = atomic_fetch_add(&s->heavy_queued, 1);
    if (was >= s->cfg.max_heavy + s->cfg.max_queue) {
        atomic_fetch_sub(&s->heavy_queued, 1);
        if (ts_server_busy(c, "encode queue full")) return -2;
        return -1;
    }
    sem_wait(&s->heavy);
    return 0;
}

static void heavy_leave(ts_server *s) {
    sem_post(&s->heavy);
    atomic_fetch_sub(&s->heavy_queued, 1);
}

static int send_status(ts_http_reply *c, int rc) {
    return send_error(c, http_status(rc), "%s", tinysam_last_error());
}

/* ---------------------------------------------------------------- the page */

static const char *content_type(const char *name) {
    const char *dot = strrchr(name, '.');
    if (dot && !strcmp(dot, ".html")) return "text/html; charset=utf-8";
    if (dot && !strcmp(dot, ".js")) return "text/javascript; charset=utf-8";
    if (dot && !strcmp(dot, ".css")) return "text/css; charset=utf-8";
    return "application/octet-stream";
}

/* Only the embedded names are ever served, so no URL reaches another file. */
static int serve_asset(ts_server *s, ts_http_reply *c, const char *url) {
    const char *name = !strcmp(url, "/") ? "index.html" : url + 1;
    for (int i = 0; i < ts_web_n_assets; i++) {
        const ts_web_asset *a = &ts_web_assets[i];
        if (strcmp(a->name, name)) continue;
        if (s->cfg.web_dir) {
            char path[4200];
            uint8_t *data;
            size_t size;
            snprintf(path, sizeof path, "%s/%s", s->cfg.web_dir, a->name);
            if (ts_read_file(path, (size_t)16 << 20, &data, &size))
                return send_error(c, HTTP_INTERNAL_SERVER_ERROR, "%s", tinysam_last_error());
            return send_buf(c, HTTP_OK, content_type(name), data, size,
                            1);
        }
        return send_buf(c, HTTP_OK, content_type(name), (void *)a->data, a->size,
                        0);
    }
    return send_error(c, HTTP_NOT_FOUND, "no such page: %s", url);
}

/* ---------------------------------------------------------------- API */

/* Open to all (load balancers): status and version only, unless the token came with it. */
static int api_health(ts_server *s, ts_http_reply *c, int authorized) {
    ts_jbuf j;
    if (ts_jbuf_open(&j)) return -1;
    fprintf(j.f, "{\"status\": \"ok\", \"version\": \"%s\"", TINYSAM_VERSION);
    if (authorized) {
        int n;
        size_t bytes;
        ts_cache_stats(&s->cache, &n, &bytes);
        int queued = atomic_load(&s->heavy_queued);
        fprintf(j.f,
                ", \"model\": \"%s\", \"threads\": %d, \"images_cached\": %d, "
                "\"cache_bytes\": %zu, \"cache_limit_bytes\": %zu, \"max_upload_bytes\": %zu, "
                "\"max_pixels\": %lld, \"queue\": {\"running\": %d, \"waiting\": %d, "
                "\"workers\": %d, \"limit\": %d}, \"inflight_bytes\": %zu, "
                "\"inflight_limit_bytes\": %zu, \"limits\": {\"request_timeout_s\": %d, "
                "\"max_connections\": %d, \"max_connections_per_ip\": %d}, \"auth\": %s",
                s->family, tinysam_get_num_threads(), n, bytes, s->cfg.cache_bytes,
                s->cfg.max_upload, s->cfg.max_pixels, TS_MIN(queued, s->cfg.max_heavy),
                TS_MAX(queued - s->cfg.max_heavy, 0), s->cfg.max_heavy, s->cfg.max_queue,
                atomic_load(&s->inflight), s->cfg.max_inflight, s->cfg.request_timeout,
                s->cfg.max_connections, s->cfg.max_per_ip, s->cfg.token ? "true" : "false");
    }
    fputs("}\n", j.f);
    return ts_jbuf_send(c, HTTP_OK, &j);
}

static int image_answer(ts_http_reply *c, const ts_cache_view *v,
                                    int cached, unsigned code) {
    ts_jbuf j;
    if (ts_jbuf_open(&j)) return -1;
    fprintf(j.f, "{\"id\": \"%s\", \"width\": %d, \"height\": %d, \"encode_ms\": %.1f, "
                 "\"cached\": %s}\n",
            v->id, v->img->width, v->img->height, v->encode_ms, cached ? "true" : "false");
    return ts_jbuf_send(c, code, &j);
}

static int api_upload(ts_server *s, ts_http_reply *c, const request *r) {
    if (r->len == 0) return send_error(c, HTTP_BAD_REQUEST, "empty body: send the JPEG or PNG bytes");
    ts_cache_entry *e;
    int cached;
    int q = heavy_enter(s, c);
    if (q) return q == -1 ? 0 : -1;
    int rc = ts_cache_add(&s->cache, s->model, r->body, r->len, s->cfg.max_pixels, &e, &cached);
    heavy_leave(s);
    if (rc) return send_status(c, rc);
    ts_cache_view v = ts_cache_get(e);
    int ret = image_answer(c, &v, cached, cached ? HTTP_OK : HTTP_CREATED);
    ts_cache_release(&s->cache, e);
    return ret;
}

/* Parses the JSON body into *out (an object); a message for the client on failure. */
static int parse_body(const request *r, int allow_empty, ts_json **out) {
    *out = NULL;
    if (r->len == 0 && allow_empty) return 0;
    if (r->len == 0) return ts_error(TINYSAM_E_ARG, "empty body: send a JSON object");
    if (ts_json_parse((const char *)r->body, r->len, out)) return TINYSAM_E_ARG;
    if ((*out)->type != TS_JSON_OBJECT) {
        ts_json_free(*out);
        *out = NULL;
        return ts_error(TINYSAM_E_ARG, "the body must be a JSON object");
    }
    return 0;
}

static int finite_num(const ts_json *v, const char *what, float *out) {
    if (!v || v->type != TS_JSON_NUMBER || !isfinite(v->number) || fabs(v->number) > 1e7)
        return ts_error(TINYSAM_E_ARG, "%s must be a finite number", what);
    *out = (float)v->number;
    return 0;
}

static int int_num(const ts_json *v, const char *what, long lo, long hi, int *out) {
    if (!v || v->type != TS_JSON_NUMBER || v->number != floor(v->number) || v->number < lo ||
        v->number > hi)
        return ts_error(TINYSAM_E_ARG, "%s must be an integer in [%ld, %ld]", what, lo, hi);
    *out = (int)v->number;
    return 0;
}

#define TS_API_MAX_BOXES 256

typedef struct {
    int n_points;
    float points[TINYSAM_MAX_POINTS * 2];
    int labels[TINYSAM_MAX_POINTS];
    int has_box;
    float box[4];
    int prev_handle, prev_index;
    int single;
    int n_boxes; /* "boxes": one prediction per box, decoded together */
    float boxes[TS_API_MAX_BOXES * 4];
    int polygons; /* "polygons": true adds each mask's outer contours */
    double epsilon_factor;
} segment_request;

/* "boxes": [[x0, y0, x1, y1], ...], "polygons": true|false, "epsilon_factor": F */
static int parse_labelling_fields(const ts_json *j, segment_request *q) {
    const ts_json *bs = ts_json_get(j, "boxes"), *pg = ts_json_get(j, "polygons");
    const ts_json *ef = ts_json_get(j, "epsilon_factor");
    q->epsilon_factor = 0.001;
    if (bs && bs->type != TS_JSON_NULL) {
        if (bs->type != TS_JSON_ARRAY || bs->n < 1 || bs->n > TS_API_MAX_BOXES)
            return ts_error(TINYSAM_E_ARG, "boxes must be a list of 1 to %d boxes",
                            TS_API_MAX_BOXES);
        for (int i = 0; i < bs->n; i++) {
            const ts_json *b = ts_json_at(bs, i);
            float *o = q->boxes + 4 * i;
            if (b->type != TS_JSON_ARRAY || b->n != 4)
                return ts_error(TINYSAM_E_ARG, "boxes[%d] must be [x0, y0, x1, y1]", i);
            for (int k = 0; k < 4; k++)
                if (finite_num(ts_json_at(b, k), "a box coordinate", &o[k])) return TINYSAM_E_ARG;
            if (o[2] < o[0] || o[3] < o[1])
                return ts_error(TINYSAM_E_ARG, "boxes[%d]: x1 < x0 or y1 < y0", i);
        }
        q->n_boxes = bs->n;
    }
    if (pg && pg->type != TS_JSON_NULL) {
        if (pg->type != TS_JSON_BOOL) return ts_error(TINYSAM_E_ARG, "polygons must be true or false");
        q->polygons = pg->number != 0;
    }
    if (ef && ef->type != TS_JSON_NULL) {
        if (ef->type != TS_JSON_NUMBER || !(ef->number >= 0 && ef->number < 1))
            return ts_error(TINYSAM_E_ARG, "epsilon_factor must be a number in [0, 1)");
        q->epsilon_factor = ef->number;
    }
    return 0;
}

static int parse_segment(const ts_json *j, segment_request *q) {
    for (int i = 0; i < j->n; i++) {
        const char *k = j->keys[i];
        if (strcmp(k, "points") && strcmp(k, "labels") && strcmp(k, "box") &&
            strcmp(k, "previous") && strcmp(k, "multimask") && strcmp(k, "boxes") &&
            strcmp(k, "polygons") && strcmp(k, "epsilon_factor"))
            return ts_error(TINYSAM_E_ARG, "unknown field '%s' (points, labels, box, boxes, "
                                           "previous, multimask, polygons, epsilon_factor)", k);
    }
    if (parse_labelling_fields(j, q)) return TINYSAM_E_ARG;
    const ts_json *pts = ts_json_get(j, "points"), *labels = ts_json_get(j, "labels");
    if (pts && pts->type != TS_JSON_NULL) {
        if (pts->type != TS_JSON_ARRAY) return ts_error(TINYSAM_E_ARG, "points must be an array");
        if (pts->n > TINYSAM_MAX_POINTS)
            return ts_error(TINYSAM_E_ARG, "too many points (at most %d)", TINYSAM_MAX_POINTS);
        if (!labels || labels->type != TS_JSON_ARRAY || labels->n != pts->n)
            return ts_error(TINYSAM_E_ARG, "labels must be an array as long as points");
        for (int i = 0; i < pts->n; i++) {
            const ts_json *p = ts_json_at(pts, i);
            if (p->type != TS_JSON_ARRAY || p->n != 2)
                return ts_error(TINYSAM_E_ARG, "points[%d] must be [x, y]", i);
            if (finite_num(ts_json_at(p, 0), "a point coordinate", &q->points[2 * i]) ||
                finite_num(ts_json_at(p, 1), "a point coordinate", &q->points[2 * i + 1]) ||
                int_num(ts_json_at(labels, i), "a label (1 = foreground, 0 = background)", 0, 1,
                        &q->labels[i]))
                return TINYSAM_E_ARG;
        }
        q->n_points = pts->n;
    } else if (labels && labels->type != TS_JSON_NULL) {
        return ts_error(TINYSAM_E_ARG, "labels without points");
    }
    const ts_json *box = ts_json_get(j, "box");
    if (box && box->type != TS_JSON_NULL) {
        if (box->type != TS_JSON_ARRAY || box->n != 4)
            return ts_error(TINYSAM_E_ARG, "box must be [x0, y0, x1, y1]");
        for (int i = 0; i < 4; i++)
            if (finite_num(ts_json_at(box, i), "a box coordinate", &q->box[i])) return TINYSAM_E_ARG;
        if (q->box[2] < q->box[0] || q->box[3] < q->box[1])
            return ts_error(TINYSAM_E_ARG, "box: x1 < x0 or y1 < y0");
        q->has_box = 1;
    }
    const ts_json *prev = ts_json_get(j, "previous");
    if (prev && prev->type != TS_JSON_NULL) {
        if (prev->type != TS_JSON_OBJECT)
            return ts_error(TINYSAM_E_ARG, "previous must be {\"handle\": H, \"index\": K}");
        if (int_num(ts_json_get(prev, "handle"), "previous.handle", 1, 2147483647L,
                    &q->prev_handle) ||
            int_num(ts_json_get(prev, "index"), "previous.index", 0, 2, &q->prev_index))
            return TINYSAM_E_ARG;
    }
    const ts_json *mm = ts_json_get(j, "multimask");
    if (mm && mm->type != TS_JSON_NULL) {
        if (mm->type != TS_JSON_BOOL) return ts_error(TINYSAM_E_ARG, "multimask must be true or false");
        q->single = mm->number == 0;
    }
    if (q->n_boxes && (q->has_box || q->prev_handle))
        return ts_error(TINYSAM_E_ARG, "boxes goes without box and previous");
    if (!q->n_points && !q->has_box && !q->prev_handle && !q->n_boxes)
        return ts_error(TINYSAM_E_ARG, "no prompt: give points (with labels), a box or previous");
    return 0;
}

/* Writes {"size": [H, W], "counts": "...", "area": A} of a row-major 0/1 mask, with
 * "polygons": [[x1, y1, ...], ...] (outer contours, Douglas-Peucker at eps_factor x perimeter)
 * when eps_factor >= 0. */
static int write_rle(FILE *f, const uint8_t *mask, int W, int H, double eps_factor) {
    ts_rle r = {0};
    if (ts_rle_encode(mask, W, H, 0, 0, W, H, &r)) return TINYSAM_E_NOMEM;
    char *s = ts_rle_to_string(r.counts, r.n);
    long long area = ts_rle_area(r.counts, r.n);
    ts_rle_free(&r);
    if (!s) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    fprintf(f, "{\"size\": [%d, %d], \"counts\": ", H, W);
    ts_json_write_string(f, s);
    fprintf(f, ", \"area\": %lld", area);
    free(s);
    if (eps_factor >= 0) {
        ts_polygon_set ps;
        if (ts_mask_polygons(mask, W, H, eps_factor, 0, &ps)) return TINYSAM_E_NOMEM;
        fputs(", \"polygons\": ", f);
        ts_polygons_write_coco(f, &ps);
        ts_polygon_set_free(&ps);
    }
    fputc('}', f);
    return 0;
}

/* "boxes": one prediction per box, decoded together; the best mask of each. */
static int api_segment_boxes(ts_server *s, ts_http_reply *c, const segment_request *q,
                             const ts_cache_view *v) {
    tinysam_prompt *pr = calloc((size_t)q->n_boxes, sizeof *pr);
    tinysam_prediction *pred = calloc((size_t)q->n_boxes, sizeof *pred);
    if (!pr || !pred) {
        free(pr);
        free(pred);
        return send_error(c, HTTP_SERVICE_UNAVAILABLE, "out of memory");
    }
    for (int i = 0; i < q->n_boxes; i++) {
        pr[i] = (tinysam_prompt){.n_points = q->n_points, .points = q->points,
                                 .labels = q->labels, .has_box = 1};
        memcpy(pr[i].box, q->boxes + 4 * i, sizeof pr[i].box);
    }
    double t0 = ts_now_ms();
    int rc = tinysam_predict_batch(s->model, v->emb, q->n_boxes, pr,
                                   TINYSAM_PREDICT_MASKS | TINYSAM_PREDICT_BEST |
                                       (q->single ? TINYSAM_PREDICT_SINGLE : 0),
                                   pred);
    double t1 = ts_now_ms();
    free(pr);
    ts_jbuf out;
    if (!rc && ts_jbuf_open(&out)) rc = TINYSAM_E_NOMEM;
    if (rc) {
        free(pred);
        return send_status(c, rc);
    }
    fprintf(out.f, "{\"id\": \"%s\", \"width\": %d, \"height\": %d, \"results\": [", v->id,
            v->img->width, v->img->height);
    for (int i = 0; i < q->n_boxes; i++) {
        const tinysam_prediction *p = &pred[i];
        const float *b = q->boxes + 4 * i;
        fprintf(out.f, "%s{\"box\": [%.9g, %.9g, %.9g, %.9g], \"iou\": [", i ? ", " : "",
                (double)b[0], (double)b[1], (double)b[2], (double)b[3]);
        for (int k = 0; k < p->n_masks; k++)
            fprintf(out.f, "%s%.6f", k ? ", " : "", (double)p->iou[k]);
        fprintf(out.f, "], \"best\": %d, \"mask\": ", p->best);
        if (!rc) rc = write_rle(out.f, p->masks, p->width, p->height, q->polygons ? q->epsilon_factor : -1);
        fputc('}', out.f);
    }
    fprintf(out.f, "], \"decode_ms\": %.1f}\n", t1 - t0);
    for (int i = 0; i < q->n_boxes; i++) tinysam_prediction_free(&pred[i]);
    free(pred);
    if (rc) {
        jb_discard(&out);
        return send_status(c, rc);
    }
    return ts_jbuf_send(c, HTTP_OK, &out);
}

static int api_segment(ts_server *s, ts_http_reply *c, const request *r,
                                   ts_cache_entry *e) {
    ts_json *j;
    int rc = parse_body(r, 0, &j);
    if (rc) return send_status(c, rc);
    segment_request *q = calloc(1, sizeof *q);
    if (!q) {
        ts_json_free(j);
        return send_error(c, HTTP_SERVICE_UNAVAILABLE, "out of memory");
    }
    rc = parse_segment(j, q);
    ts_json_free(j);
    if (rc) {
        free(q);
        return send_status(c, rc);
    }
    ts_cache_view v = ts_cache_get(e);
    if (q->n_boxes && s->model) {
        rc = api_segment_boxes(s, c, q, &v);
        free(q);
        return rc;
    }
    float *mask_in = NULL;
    if (q->prev_handle) {
        mask_in = malloc(TINYSAM_LOWRES * TINYSAM_LOWRES * sizeof(float));
        if (!mask_in) {
            free(q);
            return send_error(c, HTTP_SERVICE_UNAVAILABLE, "out of memory");
        }
        if (ts_cache_get_lowres(&s->cache, e, q->prev_handle, q->prev_index, mask_in)) {
            int h = q->prev_handle, k = q->prev_index;
            free(mask_in);
            free(q);
            return send_error(c, HTTP_GONE,
                              "previous mask %d/%d is unknown or expired: send the prompt "
                              "without previous", h, k);
        }
    }
    if (!s->model) { /* the fuzz harness's server: parsing and lookups only */
        free(mask_in);
        free(q);
        return send_error(c, HTTP_SERVICE_UNAVAILABLE, "no model loaded");
    }
    int q_polygons = q->polygons;
    double q_eps = q->epsilon_factor;
    tinysam_prompt p = {.n_points = q->n_points, .points = q->points, .labels = q->labels,
                        .has_box = q->has_box, .mask_input = mask_in};
    memcpy(p.box, q->box, sizeof p.box);
    tinysam_prediction pred = {0};
    double t0 = ts_now_ms();
    rc = tinysam_predict(s->model, v.emb, &p, TINYSAM_PREDICT_MASKS |
                         (q->single ? TINYSAM_PREDICT_SINGLE : 0), &pred);
    double t1 = ts_now_ms();
    free(mask_in);
    free(q);
    if (rc) return send_status(c, rc);
    int handle = ts_cache_put_lowres(&s->cache, e, pred.low_res, pred.n_masks);
    ts_jbuf out;
    if (handle < 0 || ts_jbuf_open(&out)) {
        tinysam_prediction_free(&pred);
        return send_error(c, HTTP_SERVICE_UNAVAILABLE, "out of memory");
    }
    fprintf(out.f, "{\"id\": \"%s\", \"handle\": %d, \"width\": %d, \"height\": %d, \"iou\": [",
            v.id, handle, pred.width, pred.height);
    for (int k = 0; k < pred.n_masks; k++) fprintf(out.f, "%s%.6f", k ? ", " : "", (double)pred.iou[k]);
    fprintf(out.f, "], \"best\": %d, \"masks\": [", pred.best);
    size_t plane = (size_t)pred.width * pred.height;
    for (int k = 0; k < pred.n_masks && !rc; k++) {
        if (k) fputs(", ", out.f);
        rc = write_rle(out.f, pred.masks + k * plane, pred.width, pred.height,
                       q_polygons ? q_eps : -1);
    }
    fprintf(out.f, "], \"decode_ms\": %.1f}\n", t1 - t0);
    tinysam_prediction_free(&pred);
    if (rc) {
        jb_discard(&out);
        return send_status(c, rc);
    }
    return ts_jbuf_send(c, HTTP_OK, &out);
}

/* The generator options by their SAM names; the server bounds the costly ones lower than
 * the library does, since a request should not occupy a worker for hours. One table for the
 * JSON API and for `serve --everything-option` (ls_backend.c). */
int ts_server_everything_option(tinysam_everything_options *o, const char *name, size_t len,
                                double v, const char *what) {
#define OPT(f) offsetof(tinysam_everything_options, f)
    static const struct {
        const char *name;
        int is_int;
        double lo, hi;
        size_t off;
    } opts[] = {
        {"points_per_side", 1, 1, 64, OPT(points_per_side)},
        {"points_per_batch", 1, 1, 256, OPT(points_per_batch)},
        {"pred_iou_thresh", 0, -10, 10, OPT(pred_iou_thresh)},
        {"stability_score_thresh", 0, 0, 1, OPT(stability_score_thresh)},
        {"stability_score_offset", 0, 0, 1000, OPT(stability_score_offset)},
        {"high_score_thresh", 0, -1000, 1000, OPT(high_score_thresh)},
        {"box_nms_thresh", 0, 0, 1, OPT(box_nms_thresh)},
        {"crop_n_layers", 1, 0, 2, OPT(crop_n_layers)},
        {"crop_nms_thresh", 0, 0, 1, OPT(crop_nms_thresh)},
        {"crop_overlap_ratio", 0, 0, 0.99, OPT(crop_overlap_ratio)},
        {"crop_n_points_downscale_factor", 1, 1, 64, OPT(crop_n_points_downscale_factor)},
        {"min_mask_region_area", 1, 0, 1 << 30, OPT(min_mask_region_area)},
    };
#undef OPT
    for (size_t m = 0; m < sizeof opts / sizeof opts[0]; m++) {
        if (strlen(opts[m].name) != len || strncmp(name, opts[m].name, len)) continue;
        if (!isfinite(v) || v < opts[m].lo || v > opts[m].hi || (opts[m].is_int && v != floor(v)))
            return ts_error(TINYSAM_E_ARG, "%s%s must be %s in [%g, %g]", what, opts[m].name,
                            opts[m].is_int ? "an integer" : "a number", opts[m].lo, opts[m].hi);
        if (opts[m].is_int) *(int *)((char *)o + opts[m].off) = (int)v;
        else *(float *)((char *)o + opts[m].off) = (float)v;
        return 0;
    }
    return 1;
}

/* The generator options plus "polygons": true|false and "epsilon_factor" (as segment's);
 * *eps_factor < 0 when no polygons are asked for. */
static int parse_everything(const ts_json *j, tinysam_everything_options *o, double *eps_factor) {
    tinysam_everything_defaults(o);
    *eps_factor = -1;
    segment_request *q = calloc(1, sizeof *q); /* large: holds the boxes */
    if (!q) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    int rc = j ? parse_labelling_fields(j, q) : 0; /* a "boxes" field fails below, unknown */
    if (!rc && q->polygons) *eps_factor = q->epsilon_factor;
    free(q);
    if (rc) return rc;
    for (int i = 0; j && i < j->n; i++) {
        const char *k = j->keys[i];
        const ts_json *v = &j->items[i];
        if (!strcmp(k, "polygons") || !strcmp(k, "epsilon_factor")) continue;
        if (!strcmp(k, "mode")) {
            if (v->type == TS_JSON_STRING && !strcmp(v->string, "hierarchical"))
                o->mode = TINYSAM_EVERYTHING_HIERARCHICAL;
            else if (v->type == TS_JSON_STRING && !strcmp(v->string, "grid"))
                o->mode = TINYSAM_EVERYTHING_GRID;
            else return ts_error(TINYSAM_E_ARG, "mode must be \"hierarchical\" or \"grid\"");
            continue;
        }
        rc = ts_server_everything_option(o, k, strlen(k),
                                         v->type == TS_JSON_NUMBER ? v->number : NAN, "");
        if (rc > 0) return ts_error(TINYSAM_E_ARG, "unknown generator option '%s'", k);
        if (rc) return rc;
    }
    return tinysam_everything_check(o);
}

static int api_everything(ts_server *s, ts_http_reply *c, const request *r,
                                      ts_cache_entry *e) {
    ts_json *j;
    int rc = parse_body(r, 1, &j);
    if (rc) return send_status(c, rc);
    tinysam_everything_options o;
    double eps_factor;
    rc = parse_everything(j, &o, &eps_factor);
    ts_json_free(j);
    if (rc) return send_status(c, rc);
    if (!s->model) return send_error(c, HTTP_SERVICE_UNAVAILABLE, "no model loaded");
    ts_cache_view v = ts_cache_get(e);
    tinysam_everything_result res = {0};
    int q = heavy_enter(s, c);
    if (q) return q == -1 ? 0 : -1;
    rc = tinysam_everything(s->model, v.img, v.emb, &o, &res);
    heavy_leave(s);
    if (rc) {
        tinysam_everything_free(&res);
        return send_status(c, rc);
    }
    ts_jbuf out;
    if (ts_jbuf_open(&out)) {
        tinysam_everything_free(&res);
        return -1;
    }
    fprintf(out.f, "{\"id\": \"%s\", \"masks\": %d, \"mode\": \"%s\", \"points_evaluated\": "
                   "{\"per_pass\": [", v.id, res.n,
            o.mode == TINYSAM_EVERYTHING_GRID ? "grid" : "hierarchical");
    for (int i = 0; i < res.n_passes; i++) fprintf(out.f, "%s%d", i ? ", " : "", res.points_per_pass[i]);
    fprintf(out.f, "], \"total\": %d}, \"timings_ms\": {\"decode\": %.1f, \"total\": %.1f}, "
                   "\"records\": ", res.points_total, res.ms_decode, res.ms_total);
    rc = ts_everything_write_json(out.f, &res); /* the CLI's --out file, byte for byte */
    if (!rc && eps_factor >= 0) { /* each record's outer contours, in record order */
        fputs(", \"polygons\": ", out.f);
        rc = ts_everything_write_polygon_lists(out.f, &res, eps_factor);
    }
    fputs("}\n", out.f);
    tinysam_everything_free(&res);
    if (rc) {
        jb_discard(&out);
        return send_status(c, rc);
    }
    return ts_jbuf_send(c, HTTP_OK, &out);
}

/* ---------------------------------------------------------------- routing */

enum { R_NONE, R_ASSET, R_HEALTH, R_UPLOAD, R_IMAGE, R_SEGMENT, R_EVERYTHING };

/* Classifies url; id gets the image id (64 lowercase hex digits) of /api/images/{id}... */
static int route(const char *url, char id[65]) {
    if (!strcmp(url, "/") || !strcmp(url, "/index.html") || !strcmp(url, "/app.js") ||
        !strcmp(url, "/style.css"))
        return R_ASSET;
    if (!strcmp(url, "/api/health")) return R_HEALTH;
    if (!strcmp(url, "/api/images")) return R_UPLOAD;
    const char *p = "/api/images/";
    if (strncmp(url, p, strlen(p))) return R_NONE;
    url += strlen(p);
    size_t n = strspn(url, "0123456789abcdef");
    if (n != 64) return R_NONE;
    memcpy(id, url, 64);
    id[64] = 0;
    url += 64;
    if (!*url) return R_IMAGE;
    if (!strcmp(url, "/segment")) return R_SEGMENT;
    if (!strcmp(url, "/everything")) return R_EVERYTHING;
    return R_NONE;
}

static int dispatch(ts_server *s, ts_http_reply *c, const char *url, const char *method,
                    const request *r) {
    char id[65];
    int lret; /* the labelling tools' routes (Label Studio's ML backend: labelling.h) */
    if (ts_labelling_handle(s, method, url, r->body, r->len, c, &lret)) return lret;
    int kind = route(url, id), get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
    int post = !strcmp(method, "POST");
    switch (kind) {
    case R_ASSET:
        return get ? serve_asset(s, c, url) : send_error(c, HTTP_METHOD_NOT_ALLOWED, "use GET");
    case R_HEALTH:
        return get ? api_health(s, c, r->authorized) : send_error(c, HTTP_METHOD_NOT_ALLOWED, "use GET");
    case R_UPLOAD:
        return post ? api_upload(s, c, r)
                    : send_error(c, HTTP_METHOD_NOT_ALLOWED, "use POST with the image bytes");
    case R_IMAGE:
    case R_SEGMENT:
    case R_EVERYTHING: {
        if (kind == R_IMAGE ? !get : !post)
            return send_error(c, HTTP_METHOD_NOT_ALLOWED, "use %s", kind == R_IMAGE ? "GET" : "POST");
        ts_cache_entry *e = ts_cache_find(&s->cache, id);
        if (!e)
            return send_error(c, HTTP_NOT_FOUND,
                              "unknown image id %.16s...: upload it (again) to /api/images", id);
        int ret;
        if (kind == R_IMAGE) {
            ts_cache_view v = ts_cache_get(e);
            ret = image_answer(c, &v, 1, HTTP_OK);
        } else if (kind == R_SEGMENT) {
            ret = api_segment(s, c, r, e);
        } else {
            ret = api_everything(s, c, r, e);
        }
        ts_cache_release(&s->cache, e);
        return ret;
    }
    default: return send_error(c, HTTP_NOT_FOUND, "no such path");
    }
}

int ts_server_body_kind(const char *url, const char *method) {
    char id[65];
    if (strcmp(method, "POST")) return TS_BODY_NONE;
    int kind = route(url, id);
    if (kind == R_UPLOAD) return TS_BODY_IMAGE;
    if (kind == R_SEGMENT || kind == R_EVERYTHING) return TS_BODY_JSON;
    /* the labelling tools' POST routes take JSON (Label Studio, X-AnyLabeling) */
    if (ts_labelling_body_limit(NULL, url, method)) return TS_BODY_JSON;
    return TS_BODY_NONE;
}

size_t ts_server_body_limit(const ts_server *s, const char *url, const char *method) {
    size_t l = ts_labelling_body_limit(s, url, method);
    if (l) return l;
    int kind = ts_server_body_kind(url, method);
    return kind == TS_BODY_IMAGE ? s->cfg.max_upload : kind == TS_BODY_JSON ? s->cfg.max_json : 0;
}

int ts_server_handle_as(ts_server *s, int authorized, const char *method, const char *url,
                        const uint8_t *body, size_t len, ts_http_reply *out) {
    memset(out, 0, sizeof *out);
    request r = {body, len, authorized};
    return dispatch(s, out, url, method, &r);
}

int ts_server_handle(ts_server *s, const char *method, const char *url, const uint8_t *body,
                     size_t len, ts_http_reply *out) {
    return ts_server_handle_as(s, 1, method, url, body, len, out);
}

int ts_server_too_large(ts_http_reply *out, size_t limit) {
    memset(out, 0, sizeof *out);
    return send_error(out, HTTP_TOO_LARGE, "request body too large (at most %zu bytes here)",
                      limit);
}

int ts_server_handle_body_as(ts_server *s, int authorized, const char *method, const char *url,
                             const uint8_t *body, size_t len, ts_http_reply *out) {
    size_t limit = ts_server_body_limit(s, url, method);
    if (limit && len > limit) return ts_server_too_large(out, limit);
    return ts_server_handle_as(s, authorized, method, url, body, limit ? len : 0, out);
}

int ts_server_handle_body(ts_server *s, const char *method, const char *url,
                          const uint8_t *body, size_t len, ts_http_reply *out) {
    return ts_server_handle_body_as(s, 1, method, url, body, len, out);
}

void ts_http_reply_free(ts_http_reply *r) {
    if (r->owned) free(r->body);
    memset(r, 0, sizeof *r);
}

size_t ts_url_unescape(char *s) {
    static const char hex[] = "0123456789abcdef";
    char *w = s;
    for (const char *p = s; *p; p++) {
        const char *h1, *h2;
        if (p[0] == '%' && p[1] && p[2] && (h1 = strchr(hex, p[1] | 0x20)) &&
            (h2 = strchr(hex, p[2] | 0x20)) && (h1 != hex || h2 != hex)) {
            *w++ = (char)((h1 - hex) << 4 | (h2 - hex));
            p += 2;
        } else {
            *w++ = *p;
        }
    }
    *w = 0;
    return (size_t)(w - s);
}

/* ---------------------------------------------------------------- lifetime */

int ts_server_create(tinysam_model *m, const ts_server_config *cfg, ts_server **out) {
    *out = NULL;
    if (cfg->max_connections < 1 || cfg->max_heavy < 1 || cfg->max_upload < 1 ||
        cfg->max_json < 2 || cfg->port < 0 || cfg->port > 65535 || cfg->max_queue < 0 ||
        cfg->max_per_ip < 0 || cfg->request_timeout < 0 ||
        cfg->n_allowed_hosts < 0 || cfg->n_allowed_hosts > TS_SERVER_MAX_ALLOWED ||
        cfg->n_allowed_origins < 0 || cfg->n_allowed_origins > TS_SERVER_MAX_ALLOWED)
        return ts_error(TINYSAM_E_ARG, "serve: invalid limits");
    ts_server *s = calloc(1, sizeof *s);
    if (!s) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    s->model = m;
    s->cfg = *cfg;
    tinysam_model_info info;
    if (m && !tinysam_model_get_info(m, &info))
        snprintf(s->family, sizeof s->family, "%s", info.family);
    int rc = ts_cache_init(&s->cache, cfg->cache_bytes);
    if (rc) {
        free(s);
        return rc;
    }
    if (sem_init(&s->heavy, 0, (unsigned)cfg->max_heavy)) {
        ts_cache_destroy(&s->cache);
        free(s);
        return ts_error(TINYSAM_E_NOMEM, "semaphore init failed");
    }
    *out = s;
    return 0;
}

void ts_server_destroy(ts_server *s) {
    if (!s) return;
    sem_destroy(&s->heavy);
    ts_cache_destroy(&s->cache);
    free(s);
}
