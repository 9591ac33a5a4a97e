/* xany_backend.c - X-AnyLabeling's remote-server protocol (X-AnyLabeling-Server's /v1 API as
 * its SAM models answer it): one model, "tinysam", with SAM's point/rectangle widgets; a
 * prediction takes a base64 image and marks, and answers the best mask's outer contours as
 * polygons simplified at epsilon_factor x perimeter. Errors have X-AnyLabeling's shape:
 * HTTP 401 for a missing or wrong token, HTTP 200 with success false otherwise. */
#include "server/labelling.h"

#include "core.h"
#include "everything/polygons.h"
#include "io/json.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int fail(ts_http_reply *c, unsigned http, const char *code, const char *msg) {
    ts_jbuf j;
    if (ts_jbuf_open(&j)) return -1;
    fprintf(j.f, "{\"success\": false, \"error\": {\"code\": \"%s\", \"message\": ", code);
    ts_json_write_string(j.f, msg);
    fputs("}}\n", j.f);
    return ts_jbuf_send(c, http, &j);
}

/* base64 (standard alphabet, padding optional, whitespace skipped) */
static int b64_decode(const char *s, uint8_t **out, size_t *len) {
    size_t n = strlen(s);
    uint8_t *o = malloc(n / 4 * 3 + 4);
    if (!o) return TINYSAM_E_NOMEM;
    uint32_t acc = 0;
    int bits = 0;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        int c = (unsigned char)s[i], v;
        if (c >= 'A' && c <= 'Z')
            v = c - 'A';
        else if (c >= 'a' && c <= 'z')
            v = c - 'a' + 26;
        else if (c >= '0' && c <= '9')
            v = c - '0' + 52;
        else if (c == '+' || c == '-')
            v = 62;
        else if (c == '/' || c == '_')
            v = 63;
        else if (c == '=' || c == ' ' || c == '\n' || c == '\r' || c == '\t')
            continue;
        else {
            free(o);
            return ts_error(TINYSAM_E_FORMAT, "image: not base64 (character %zu)", i);
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[k++] = (uint8_t)(acc >> bits);
        }
    }
    *out = o;
    *len = k;
    return 0;
}

static const char *display_name(const ts_server *s) {
    const ts_labelling_config *cfg = ts_labelling_config_get();
    return cfg->checkpoint_name && *cfg->checkpoint_name ? cfg->checkpoint_name
           : s->family[0]                                ? s->family
                                                         : "TinySAM";
}

static int models(ts_server *s, ts_http_reply *c) {
    static const char *widgets[] = {"button_add_point", "button_remove_point", "button_add_rect",
                                    "button_clear", "button_finish_object"};
    ts_jbuf j;
    if (ts_jbuf_open(&j)) return -1;
    fputs("{\"success\": true, \"data\": {\"tinysam\": {\"display_name\": ", j.f);
    char name[600];
    snprintf(name, sizeof name, "TinySAM (%s)", display_name(s));
    ts_json_write_string(j.f, name);
    fputs(", \"widgets\": [", j.f);
    for (int i = 0; i < 5; i++)
        fprintf(j.f, "%s{\"name\": \"%s\", \"value\": null}", i ? ", " : "", widgets[i]);
    fputs("], \"params\": {\"epsilon_factor\": 0.001}, \"batch_processing_mode\": null}}}\n", j.f);
    return ts_jbuf_send(c, 200, &j);
}

/* marks: points {"type": "point", "data": [x, y], "label": 1|0} and rectangles {"type":
 * "rectangle", "data": [x1, y1, x2, y2]} (the last one used), integer pixels */
static int parse_marks(const ts_json *marks, tinysam_prompt *p, float *pts, int *labels, int max) {
    for (int i = 0; marks && i < marks->n; i++) {
        const ts_json *m = &marks->items[i], *t = ts_json_get(m, "type"),
                      *d = ts_json_get(m, "data");
        if (!t || t->type != TS_JSON_STRING || !d || d->type != TS_JSON_ARRAY)
            return ts_error(TINYSAM_E_ARG, "mark %d: needs type and data", i);
        int point = !strcmp(t->string, "point"), rect = !strcmp(t->string, "rectangle");
        if (!point && !rect)
            return ts_error(TINYSAM_E_ARG, "mark %d: unknown type '%.40s'", i, t->string);
        int need = point ? 2 : 4;
        float v[4];
        if (d->n != need) return ts_error(TINYSAM_E_ARG, "mark %d: data needs %d numbers", i, need);
        for (int k = 0; k < need; k++) {
            if (d->items[k].type != TS_JSON_NUMBER || !isfinite(d->items[k].number))
                return ts_error(TINYSAM_E_ARG, "mark %d: data must be numbers", i);
            v[k] = (float)d->items[k].number;
        }
        if (point) {
            if (p->n_points >= max) return ts_error(TINYSAM_E_ARG, "more than %d points", max);
            const ts_json *l = ts_json_get(m, "label");
            pts[2 * p->n_points] = v[0];
            pts[2 * p->n_points + 1] = v[1];
            labels[p->n_points++] = l && l->type == TS_JSON_NUMBER ? l->number != 0 : 1;
        } else {
            p->box[0] = fminf(v[0], v[2]);
            p->box[1] = fminf(v[1], v[3]);
            p->box[2] = fmaxf(v[0], v[2]);
            p->box[3] = fmaxf(v[1], v[3]);
            p->has_box = 1;
        }
    }
    return 0;
}

static int predict(ts_server *s, const uint8_t *body, size_t len, ts_http_reply *c) {
    ts_json *j = NULL;
    if (ts_json_parse((const char *)body, len, &j))
        return fail(c, 200, "INVALID_REQUEST", tinysam_last_error());
    const ts_json *model = ts_json_get(j, "model"), *image = ts_json_get(j, "image");
    const ts_json *params = ts_json_get(j, "params");
    const ts_json *marks = params ? ts_json_get(params, "marks") : NULL;
    double eps = 0.001;
    const ts_json *ef = params ? ts_json_get(params, "epsilon_factor") : NULL;
    if (ef && ef->type == TS_JSON_NUMBER && isfinite(ef->number) && ef->number >= 0 &&
        ef->number < 1)
        eps = ef->number;
    int ret;
    if (model && (model->type != TS_JSON_STRING || strcmp(model->string, "tinysam"))) {
        ret = fail(c, 200, "MODEL_NOT_FOUND", "no such model: this server serves \"tinysam\"");
        ts_json_free(j);
        return ret;
    }
    uint8_t *bytes = NULL;
    size_t n = 0;
    int rc = image && image->type == TS_JSON_STRING ? 0 : ts_error(TINYSAM_E_ARG, "no image");
    if (!rc) {
        const char *b = image->string, *comma = strchr(b, ',');
        if (!strncmp(b, "data:", 5) && comma) b = comma + 1; /* data:<mime>;base64, */
        rc = b64_decode(b, &bytes, &n);
    }
    float pts[2 * 64];
    int labels[64];
    tinysam_prompt p = {.points = pts, .labels = labels};
    int mrc =
        rc ? 0
           : parse_marks(marks && marks->type == TS_JSON_ARRAY ? marks : NULL, &p, pts, labels, 64);
    ts_json_free(j);
    if (rc) {
        free(bytes);
        return fail(c, 200, "INVALID_IMAGE", tinysam_last_error());
    }
    if (mrc) {
        free(bytes);
        return fail(c, 200, "INFERENCE_ERROR", tinysam_last_error());
    }
    if (!s->model) {
        free(bytes);
        return fail(c, 200, "INFERENCE_ERROR", "no model loaded");
    }
    ts_cache_entry *e = NULL;
    int cached;
    sem_wait(&s->heavy);
    rc = ts_cache_add(&s->cache, s->model, bytes, n, s->cfg.max_pixels, &e, &cached);
    sem_post(&s->heavy);
    free(bytes);
    if (rc) return fail(c, 200, "INVALID_IMAGE", tinysam_last_error());
    ts_cache_view v = ts_cache_get(e);
    ts_jbuf out;
    tinysam_prediction pred = {0};
    ts_polygon_set ps = {0};
    if (!p.n_points && !p.has_box)
        rc = ts_error(TINYSAM_E_ARG, "no marks: give points or a rectangle");
    if (!rc) rc = tinysam_predict(s->model, v.emb, &p, TINYSAM_PREDICT_MASKS, &pred);
    if (!rc)
        rc = ts_mask_polygons(pred.masks + (size_t)pred.best * pred.width * pred.height, pred.width,
                              pred.height, eps, 0, &ps);
    ts_cache_release(&s->cache, e);
    if (rc || ts_jbuf_open(&out)) {
        tinysam_prediction_free(&pred);
        ts_polygon_set_free(&ps);
        return fail(c, 200, "INFERENCE_ERROR", rc ? tinysam_last_error() : "out of memory");
    }
    fputs("{\"success\": true, \"data\": {\"shapes\": [", out.f);
    for (int i = 0; i < ps.n; i++) {
        fputs(i ? ", " : "", out.f);
        fputs("{\"label\": \"AUTOLABEL_OBJECT\", \"shape_type\": \"polygon\", \"points\": [",
              out.f);
        for (int k = 0; k < ps.p[i].n; k++)
            fprintf(out.f, "%s[%d, %d]", k ? ", " : "", ps.p[i].xy[2 * k], ps.p[i].xy[2 * k + 1]);
        fprintf(out.f,
                "], \"score\": %.6f, \"attributes\": {}, \"group_id\": null, \"description\": "
                "null, \"difficult\": false, \"flags\": null, \"kie_linking\": []}",
                (double)pred.iou[pred.best]);
    }
    fputs("], \"description\": \"\", \"replace\": false}}\n", out.f);
    tinysam_prediction_free(&pred);
    ts_polygon_set_free(&ps);
    return ts_jbuf_send(c, 200, &out);
}

int ts_xany_handle(ts_server *s, const char *method, const char *url, const char *token_header,
                   const uint8_t *body, size_t len, ts_http_reply *out, int *ret) {
    int is_models = !strcmp(url, "/v1/models"), is_predict = !strcmp(url, "/v1/predict");
    if (!is_models && !is_predict) return 0;
    const ts_labelling_config *cfg = ts_labelling_config_get();
    if (cfg->xany_token && *cfg->xany_token &&
        (!token_header || strcmp(token_header, cfg->xany_token))) {
        *ret = fail(out, 401, "UNAUTHORIZED", token_header ? "invalid token" : "missing token");
        return 1;
    }
    if (is_models)
        *ret = !strcmp(method, "GET") || !strcmp(method, "HEAD")
                   ? models(s, out)
                   : fail(out, 405, "METHOD_NOT_ALLOWED", "use GET");
    else
        *ret = !strcmp(method, "POST") ? predict(s, body, len, out)
                                       : fail(out, 405, "METHOD_NOT_ALLOWED", "use POST");
    return 1;
}

int ts_xany_unauthorized(ts_http_reply *out, int missing) {
    return fail(out, 401, "UNAUTHORIZED", missing ? "missing token" : "invalid token");
}
