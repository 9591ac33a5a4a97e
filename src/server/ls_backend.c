/* ls_backend.c - Label Studio's ML backend protocol (label-studio-ml-backend's
 * API as its SAM example answers it): prompts from the labelling context
 * (keypoints and rectangles in percent of the image), the image fetched from
 * Label Studio with its API key, masks as brush results in Label Studio's RLE;
 * with no prompt, the everything mode's masks (pre-annotation). */
#include "server/labelling.h"

#include "core.h"
#include "everything/amg.h"
#include "io/json.h"
#include "server/fetch.h"
#include "server/ls_rle.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static ts_labelling_config g_cfg;
static int g_configured;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static atomic_uint g_result_id;

void ts_labelling_defaults(ts_labelling_config *c) {
    memset(c, 0, sizeof *c);
    c->label_studio_url = getenv("LABEL_STUDIO_URL");
    c->label_studio_api_key = getenv("LABEL_STUDIO_API_KEY");
    tinysam_everything_defaults(&c->everything);
}

static void default_once(void) {
    if (!g_configured) ts_labelling_defaults(&g_cfg);
}

void ts_labelling_configure(const ts_labelling_config *c) {
    g_cfg = *c;
    g_configured = 1;
}

const ts_labelling_config *ts_labelling_config_get(void) {
    pthread_once(&g_once, default_once);
    return &g_cfg;
}

int ts_labelling_everything_option(ts_labelling_config *c, const char *nv) {
    const char *eq = strchr(nv, '=');
    if (!eq) return ts_error(TINYSAM_E_ARG, "--everything-option wants NAME=VALUE, got '%s'", nv);
    size_t nl = (size_t)(eq - nv);
    if (nl == 4 && !strncmp(nv, "mode", 4)) {
        if (!strcmp(eq + 1, "grid"))
            c->everything.mode = TINYSAM_EVERYTHING_GRID;
        else if (!strcmp(eq + 1, "hierarchical"))
            c->everything.mode = TINYSAM_EVERYTHING_HIERARCHICAL;
        else
            return ts_error(TINYSAM_E_ARG, "--everything-option mode=grid|hierarchical");
        return 0;
    }
    char *end;
    double v = strtod(eq + 1, &end);
    if (end == eq + 1 || *end) v = NAN; /* not a number: the range error names the option */
    int rc = ts_server_everything_option(&c->everything, nv, nl, v, "--everything-option ");
    if (rc > 0)
        return ts_error(TINYSAM_E_ARG, "--everything-option: unknown generator option '%.*s'",
                        (int)nl, nv);
    return rc;
}

/* ---------------------------------------------------------------- replies */

static int reply_text(ts_http_reply *c, unsigned code, const char *json) {
    ts_jbuf j;
    if (ts_jbuf_open(&j)) return -1;
    fputs(json, j.f);
    return ts_jbuf_send(c, code, &j);
}

/* Label Studio shows the message of a failed /predict to the annotator. */
static int reply_error(ts_http_reply *c, unsigned code, const char *msg) {
    return ts_jbuf_send_error(c, code, msg);
}

static unsigned status_of(int rc) {
    return rc == TINYSAM_E_NOMEM   ? 503
           : rc == TINYSAM_E_IO    ? 502
           : rc == TINYSAM_E_LIMIT ? 413
                                   : 400;
}

/* ---------------------------------------------------------------- the request
 */

typedef struct {
    char from_name[256], to_name[256], label[256];
    int n_points;
    float points[2 * 64];
    int labels[64];
    int has_box;
    float box[4];
    const char *image; /* tasks[0].data's first value */
} ls_request;

/* attribute `name="..."` of the tag that starts at tag (up to its '>') */
static void tag_attr(const char *tag, const char *name, char *out, size_t cap) {
    const char *end = strchr(tag, '>');
    size_t nl = strlen(name);
    for (const char *p = tag; p && (!end || p < end); p++) {
        if (strncmp(p, name, nl) || p[nl] != '=' || (p[nl + 1] != '"' && p[nl + 1] != '\''))
            continue;
        if (p > tag && p[-1] != ' ' && p[-1] != '\t' && p[-1] != '\n') continue;
        char q = p[nl + 1];
        const char *v = p + nl + 2, *ve = strchr(v, q);
        if (!ve) return;
        snprintf(out, cap, "%.*s", (int)(ve - v), v);
        return;
    }
}

/* from_name/to_name of the <BrushLabels> tag; the first <Label value> in it as
 * a default */
static void parse_label_config(const char *xml, ls_request *q) {
    snprintf(q->from_name, sizeof q->from_name, "tag");
    snprintf(q->to_name, sizeof q->to_name, "image");
    snprintf(q->label, sizeof q->label, "Object");
    const char *b = xml ? strstr(xml, "<BrushLabels") : NULL;
    if (!b) return;
    tag_attr(b, "name", q->from_name, sizeof q->from_name);
    tag_attr(b, "toName", q->to_name, sizeof q->to_name);
    const char *l = strstr(b, "<Label"), *close = strstr(b, "</BrushLabels");
    if (l && (!close || l < close)) tag_attr(l, "value", q->label, sizeof q->label);
}

static double num_or(const ts_json *o, const char *k, double def) {
    const ts_json *v = o ? ts_json_get(o, k) : NULL;
    return v && v->type == TS_JSON_NUMBER && isfinite(v->number) ? v->number : def;
}

/* keypointlabels and rectanglelabels items of params.context.result; pixel =
 * trunc(percent x size / 100) as the reference backend computes it. Sizes come
 * from the items. */
static int parse_context(const ts_json *result, ls_request *q, int *W, int *H) {
    for (int i = 0; result && i < result->n; i++) {
        const ts_json *it = &result->items[i], *t = ts_json_get(it, "type"),
                      *v = ts_json_get(it, "value");
        if (!t || t->type != TS_JSON_STRING || !v || v->type != TS_JSON_OBJECT) continue;
        int kp = !strcmp(t->string, "keypointlabels"), rect = !strcmp(t->string, "rectanglelabels");
        if (!kp && !rect) continue;
        double ow = num_or(it, "original_width", -1), oh = num_or(it, "original_height", -1);
        if (ow < 1 || oh < 1 || ow > 1e6 || oh > 1e6)
            return ts_error(TINYSAM_E_ARG, "context result %d: original_width/height missing", i);
        *W = (int)ow;
        *H = (int)oh;
        const ts_json *names = ts_json_get(v, t->string);
        if (names && names->type == TS_JSON_ARRAY && names->n > 0 &&
            names->items[0].type == TS_JSON_STRING)
            snprintf(q->label, sizeof q->label, "%s", names->items[0].string);
        double x = num_or(v, "x", NAN), y = num_or(v, "y", NAN);
        if (!isfinite(x) || !isfinite(y))
            return ts_error(TINYSAM_E_ARG, "context result %d: value.x/value.y missing", i);
        if (kp) {
            if (q->n_points >= 64) return ts_error(TINYSAM_E_ARG, "more than 64 keypoints");
            const ts_json *pos = ts_json_get(it, "is_positive");
            q->points[2 * q->n_points] = (float)(int)(x * ow / 100.0);
            q->points[2 * q->n_points + 1] = (float)(int)(y * oh / 100.0);
            q->labels[q->n_points++] = pos && pos->type == TS_JSON_BOOL && pos->number != 0;
        } else { /* the last rectangle is used */
            double w = num_or(v, "width", NAN), h = num_or(v, "height", NAN);
            if (!isfinite(w) || !isfinite(h) || w < 0 || h < 0)
                return ts_error(TINYSAM_E_ARG, "context result %d: value.width/height missing", i);
            q->box[0] = (float)(int)(x * ow / 100.0);
            q->box[1] = (float)(int)(y * oh / 100.0);
            q->box[2] = (float)(int)((x + w) * ow / 100.0);
            q->box[3] = (float)(int)((y + h) * oh / 100.0);
            q->has_box = 1;
        }
    }
    return 0;
}

/* The task's image: an http(s) URL as is, a Label Studio path joined to its
 * URL; the API key goes along only when the URL's origin is Label Studio's. */
static int fetch_image(const char *ref, const ts_server *s, uint8_t **data, size_t *len) {
    const ts_labelling_config *cfg = &g_cfg;
    char url[4200];
    if (!strncmp(ref, "http://", 7) || !strncmp(ref, "https://", 8)) {
        snprintf(url, sizeof url, "%s", ref);
    } else if (ref[0] == '/') {
        if (!cfg->label_studio_url || !*cfg->label_studio_url)
            return ts_error(TINYSAM_E_ARG,
                            "image '%.200s' is a Label Studio path: start serve with "
                            "--label-studio-url (or LABEL_STUDIO_URL)",
                            ref);
        size_t bl = strlen(cfg->label_studio_url);
        while (bl && cfg->label_studio_url[bl - 1] == '/')
            bl--;
        snprintf(url, sizeof url, "%.*s%s", (int)bl, cfg->label_studio_url, ref);
    } else {
        return ts_error(TINYSAM_E_ARG,
                        "image '%.200s' is neither an http(s) URL nor a Label "
                        "Studio path",
                        ref);
    }
    const char *token = cfg->label_studio_api_key && *cfg->label_studio_api_key &&
                                ts_same_origin(url, cfg->label_studio_url)
                            ? cfg->label_studio_api_key
                            : NULL;
    return ts_fetch_url(url, token, s->cfg.max_upload, data, len);
}

/* One brush result of a 0/1 mask. */
static int write_brush(FILE *f, const ls_request *q, const uint8_t *mask, int W, int H,
                       double score, int first) {
    uint8_t *rle;
    size_t n;
    int rc = ts_ls_mask_rle(mask, W, H, &rle, &n);
    if (rc) return rc;
    fputs(first ? "" : ", ", f);
    fputs("{\"from_name\": ", f);
    ts_json_write_string(f, q->from_name);
    fputs(", \"to_name\": ", f);
    ts_json_write_string(f, q->to_name);
    fprintf(f,
            ", \"type\": \"brushlabels\", \"original_width\": %d, "
            "\"original_height\": %d, "
            "\"image_rotation\": 0, \"value\": {\"format\": \"rle\", \"rle\": [",
            W, H);
    for (size_t i = 0; i < n; i++)
        fprintf(f, i ? ",%u" : "%u", rle[i]);
    free(rle);
    fputs("], \"brushlabels\": [", f);
    ts_json_write_string(f, q->label);
    fprintf(f, "]}, \"score\": %.6f, \"readonly\": false, \"id\": \"ts%08x\"}", score,
            atomic_fetch_add(&g_result_id, 1) + 1);
    return 0;
}

static const char *model_version(const ts_server *s) {
    return s->family[0] && !strcmp(s->family, "vit") ? "tinysam-sam-vit" : "tinysam";
}

static int ls_predict(ts_server *s, const uint8_t *body, size_t len, ts_http_reply *c) {
    ts_json *j = NULL;
    int rc = ts_json_parse((const char *)body, len, &j);
    if (rc) return reply_error(c, 400, tinysam_last_error());
    ls_request *q = calloc(1, sizeof *q);
    if (!q) {
        ts_json_free(j);
        return reply_error(c, 503, "out of memory");
    }
    const ts_json *tasks = ts_json_get(j, "tasks"), *cfgx = ts_json_get(j, "label_config");
    const ts_json *params = ts_json_get(j, "params");
    const ts_json *ctx = params ? ts_json_get(params, "context") : NULL;
    const ts_json *result = ctx && ctx->type == TS_JSON_OBJECT ? ts_json_get(ctx, "result") : NULL;
    parse_label_config(cfgx && cfgx->type == TS_JSON_STRING ? cfgx->string : NULL, q);
    int W = 0, H = 0;
    if (!tasks || tasks->type != TS_JSON_ARRAY || tasks->n < 1)
        rc = ts_error(TINYSAM_E_ARG, "predict: no tasks");
    const ts_json *data = rc ? NULL : ts_json_get(&tasks->items[0], "data");
    if (!rc && (!data || data->type != TS_JSON_OBJECT || data->n < 1 ||
                data->items[0].type != TS_JSON_STRING))
        rc = ts_error(TINYSAM_E_ARG, "predict: tasks[0].data holds no image URL");
    if (!rc && result && result->type == TS_JSON_ARRAY) rc = parse_context(result, q, &W, &H);
    uint8_t *img_bytes = NULL;
    size_t img_len = 0;
    /* the fuzz harness's server has no model: parse everything, fetch nothing */
    if (!rc && !s->model) rc = ts_error(TINYSAM_E_NOMEM, "no model loaded");
    if (!rc) rc = fetch_image(data->items[0].string, s, &img_bytes, &img_len);
    ts_json_free(j);
    if (rc) {
        free(q);
        return reply_error(c, status_of(rc), tinysam_last_error());
    }
    if (!s->model) {
        free(img_bytes);
        free(q);
        return reply_error(c, 503, "no model loaded");
    }
    ts_cache_entry *e = NULL;
    int cached;
    sem_wait(&s->heavy);
    rc = ts_cache_add(&s->cache, s->model, img_bytes, img_len, s->cfg.max_pixels, &e, &cached);
    sem_post(&s->heavy);
    free(img_bytes);
    if (rc) {
        free(q);
        return reply_error(c, status_of(rc),
                           rc == TINYSAM_E_FORMAT || rc == TINYSAM_E_UNSUPPORTED
                               ? "the task's image URL did not answer a JPEG or PNG image"
                               : tinysam_last_error());
    }
    ts_cache_view v = ts_cache_get(e);
    int iw = v.img->width, ih = v.img->height;
    ts_jbuf out = {0};
    if (!rc) rc = ts_jbuf_open(&out);
    double score = 0;
    if (!rc && (q->n_points || q->has_box)) {
        tinysam_prompt p = {.n_points = q->n_points,
                            .points = q->points,
                            .labels = q->labels,
                            .has_box = q->has_box};
        memcpy(p.box, q->box, sizeof p.box);
        tinysam_prediction pred = {0};
        rc = tinysam_predict(s->model, v.emb, &p, TINYSAM_PREDICT_MASKS, &pred);
        if (!rc) {
            score = pred.iou[pred.best];
            fputs("{\"results\": [{\"result\": [", out.f);
            rc = write_brush(out.f, q, pred.masks + (size_t)pred.best * iw * ih, iw, ih, score, 1);
        }
        tinysam_prediction_free(&pred);
    } else if (!rc) { /* pre-annotation: every mask of the everything mode */
        tinysam_everything_result res = {0};
        sem_wait(&s->heavy);
        rc = tinysam_everything(s->model, v.img, v.emb, &g_cfg.everything, &res);
        sem_post(&s->heavy);
        uint8_t *mask = rc ? NULL : ts_malloc((size_t)iw * ih);
        if (!rc && !mask) rc = TINYSAM_E_NOMEM;
        fputs("{\"results\": [{\"result\": [", out.f);
        for (int i = 0; !rc && i < res.n; i++) {
            const tinysam_mask_record *m = &res.records[i];
            rc = ts_rle_decode(m->counts, m->n_counts, iw, ih, mask);
            if (!rc) rc = write_brush(out.f, q, mask, iw, ih, m->predicted_iou, i == 0);
            score += m->predicted_iou / res.n;
        }
        free(mask);
        tinysam_everything_free(&res);
    }
    ts_cache_release(&s->cache, e);
    (void)W;
    (void)H;
    if (rc) {
        if (out.f) fclose(out.f);
        free(out.buf);
        free(q);
        return reply_error(c, status_of(rc), tinysam_last_error());
    }
    fprintf(out.f, "], \"model_version\": \"%s\", \"score\": %.6f}]}\n", model_version(s), score);
    free(q);
    return ts_jbuf_send(c, 200, &out);
}

/* ---------------------------------------------------------------- routes */

enum { L_NONE, L_HEALTH, L_SETUP, L_METRICS, L_WEBHOOK, L_PREDICT };

static int route(const char *url) {
    if (!strcmp(url, "/health")) return L_HEALTH;
    if (!strcmp(url, "/setup")) return L_SETUP;
    if (!strcmp(url, "/metrics")) return L_METRICS;
    if (!strcmp(url, "/webhook")) return L_WEBHOOK;
    if (!strcmp(url, "/predict")) return L_PREDICT;
    return L_NONE;
}

int ts_labelling_handle(ts_server *s, const char *method, const char *url, const uint8_t *body,
                        size_t len, ts_http_reply *out, int *ret) {
    int kind = route(url);
    if (kind == L_NONE) /* the serve token was checked by the gate (gate.c) already */
        return ts_xany_handle(s, method, url, NULL, body, len, out, ret);
    pthread_once(&g_once, default_once);
    int get = !strcmp(method, "GET") || !strcmp(method, "HEAD"), post = !strcmp(method, "POST");
    /* the serve token was checked by the gate (gate.c): Label Studio sends it as the
     * password of its ML backend connection's Basic auth */
    switch (kind) {
    case L_HEALTH:
        *ret = get ? reply_text(out, 200, "{\"status\": \"UP\", \"model_class\": \"TinySAM\"}\n")
                   : reply_error(out, 405, "use GET");
        break;
    case L_METRICS:
        *ret = get ? reply_text(out, 200, "{}\n") : reply_error(out, 405, "use GET");
        break;
    case L_SETUP: {
        char b[128];
        snprintf(b, sizeof b, "{\"model_version\": \"%s\"}\n", model_version(s));
        *ret = post ? reply_text(out, 200, b) : reply_error(out, 405, "use POST");
        break;
    }
    case L_WEBHOOK:
        *ret = post ? reply_text(out, 200, "{\"status\": \"Unknown event\"}\n")
                    : reply_error(out, 405, "use POST");
        break;
    default:
        *ret = post ? ls_predict(s, body, len, out) : reply_error(out, 405, "use POST");
        break;
    }
    return 1;
}

size_t ts_labelling_body_limit(const ts_server *s, const char *url, const char *method) {
    if (strcmp(method, "POST")) return 0;
    int kind = route(url);
    if (kind == L_PREDICT || kind == L_SETUP || kind == L_WEBHOOK)
        return !s ? 1 : s->cfg.max_json > ((size_t)4 << 20) ? s->cfg.max_json : (size_t)4 << 20;
    if (!strcmp(url, "/v1/predict")) /* a base64 image: 4/3 of an upload, plus the JSON */
        return !s ? 1 : s->cfg.max_upload / 3 * 4 + 4 + s->cfg.max_json;
    return 0;
}
