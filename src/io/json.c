/* json.c - bounded recursive-descent JSON parser into a small DOM.
 * Limits: nesting depth TS_JSON_MAX_DEPTH, input size bounded by the caller. */
#include "io/json.h"
#include "core.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define JSON_MAX_FILE ((size_t)256 << 20)

typedef struct {
    const char *s;
    size_t n, i;
    int err;
    char msg[128];
} parser;

static void fail(parser *p, const char *what) {
    if (!p->err) {
        p->err = 1;
        snprintf(p->msg, sizeof p->msg, "%s at offset %zu", what, p->i);
    }
}

static void skip_ws(parser *p) {
    while (p->i < p->n && (p->s[p->i] == ' ' || p->s[p->i] == '\t' || p->s[p->i] == '\n' ||
                           p->s[p->i] == '\r'))
        p->i++;
}

static int parse_value(parser *p, ts_json *v, int depth);

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static void put_utf8(char *out, size_t *o, unsigned cp) {
    if (cp < 0x80) out[(*o)++] = (char)cp;
    else if (cp < 0x800) {
        out[(*o)++] = (char)(0xC0 | cp >> 6);
        out[(*o)++] = (char)(0x80 | (cp & 63));
    } else if (cp < 0x10000) {
        out[(*o)++] = (char)(0xE0 | cp >> 12);
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 63));
        out[(*o)++] = (char)(0x80 | (cp & 63));
    } else {
        out[(*o)++] = (char)(0xF0 | cp >> 18);
        out[(*o)++] = (char)(0x80 | ((cp >> 12) & 63));
        out[(*o)++] = (char)(0x80 | ((cp >> 6) & 63));
        out[(*o)++] = (char)(0x80 | (cp & 63));
    }
}

static int read_hex4(parser *p, unsigned *cp) {
    if (p->i + 4 > p->n) return 0;
    unsigned v = 0;
    for (int k = 0; k < 4; k++) {
        int h = hexval(p->s[p->i + k]);
        if (h < 0) return 0;
        v = v << 4 | (unsigned)h;
    }
    p->i += 4;
    *cp = v;
    return 1;
}

static char *parse_string(parser *p) {
    /* p->s[p->i] == '"' */
    size_t start = ++p->i, end = start;
    while (end < p->n && p->s[end] != '"') {
        if (p->s[end] == '\\') end++;
        end++;
    }
    if (end >= p->n) {
        fail(p, "unterminated string");
        return NULL;
    }
    char *out = malloc(end - start + 1);
    if (!out) {
        fail(p, "out of memory");
        return NULL;
    }
    size_t o = 0;
    while (p->i < end) {
        char c = p->s[p->i++];
        if ((unsigned char)c < 0x20) {
            free(out);
            fail(p, "control character in string");
            return NULL;
        }
        if (c != '\\') {
            out[o++] = c;
            continue;
        }
        char e = p->s[p->i++];
        switch (e) {
        case '"': out[o++] = '"'; break;
        case '\\': out[o++] = '\\'; break;
        case '/': out[o++] = '/'; break;
        case 'b': out[o++] = '\b'; break;
        case 'f': out[o++] = '\f'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 't': out[o++] = '\t'; break;
        case 'u': {
            unsigned cp;
            if (!read_hex4(p, &cp) || p->i > end) {
                free(out);
                fail(p, "bad \\u escape");
                return NULL;
            }
            if (cp >= 0xD800 && cp < 0xDC00 && p->i + 6 <= end && p->s[p->i] == '\\' &&
                p->s[p->i + 1] == 'u') {
                unsigned lo;
                p->i += 2;
                if (!read_hex4(p, &lo) || lo < 0xDC00 || lo > 0xDFFF) {
                    free(out);
                    fail(p, "bad surrogate pair");
                    return NULL;
                }
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            /* \uXXXX takes 6 input bytes and yields at most 4 output bytes */
            put_utf8(out, &o, cp);
            break;
        }
        default:
            free(out);
            fail(p, "bad escape");
            return NULL;
        }
    }
    p->i = end + 1;
    out[o] = 0;
    return out;
}

static int parse_number(parser *p, ts_json *v) {
    size_t st = p->i;
    if (p->i < p->n && p->s[p->i] == '-') p->i++;
    if (p->i >= p->n || p->s[p->i] < '0' || p->s[p->i] > '9') {
        fail(p, "invalid value");
        return 0;
    }
    while (p->i < p->n && strchr("0123456789.eE+-", p->s[p->i])) p->i++;
    char buf[64];
    size_t len = p->i - st;
    if (len >= sizeof buf) {
        fail(p, "number too long");
        return 0;
    }
    memcpy(buf, p->s + st, len);
    buf[len] = 0;
    char *end;
    double d = strtod(buf, &end);
    if (*end || !isfinite(d)) {
        p->i = st;
        fail(p, "malformed number");
        return 0;
    }
    v->type = TS_JSON_NUMBER;
    v->number = d;
    return 1;
}

static int lit(parser *p, const char *w) {
    size_t l = strlen(w);
    if (p->i + l <= p->n && !memcmp(p->s + p->i, w, l)) {
        p->i += l;
        return 1;
    }
    return 0;
}

static int push(parser *p, ts_json *v, int *cap) {
    if (v->n == *cap) {
        int nc = *cap ? *cap * 2 : 4;
        ts_json *ni = realloc(v->items, (size_t)nc * sizeof *ni);
        if (!ni) return fail(p, "out of memory"), 0;
        v->items = ni;
        if (v->type == TS_JSON_OBJECT) {
            char **nk = realloc(v->keys, (size_t)nc * sizeof *nk);
            if (!nk) return fail(p, "out of memory"), 0;
            v->keys = nk;
        }
        *cap = nc;
    }
    memset(&v->items[v->n], 0, sizeof v->items[0]);
    if (v->type == TS_JSON_OBJECT) v->keys[v->n] = NULL;
    v->n++;
    return 1;
}

static int parse_value(parser *p, ts_json *v, int depth) {
    memset(v, 0, sizeof *v);
    if (depth > TS_JSON_MAX_DEPTH) return fail(p, "nesting too deep"), 0;
    skip_ws(p);
    if (p->i >= p->n) return fail(p, "unexpected end of input"), 0;
    char c = p->s[p->i];
    if (c == '{' || c == '[') {
        int obj = c == '{', cap = 0;
        char close = obj ? '}' : ']';
        v->type = obj ? TS_JSON_OBJECT : TS_JSON_ARRAY;
        p->i++;
        skip_ws(p);
        if (p->i < p->n && p->s[p->i] == close) {
            p->i++;
            return 1;
        }
        for (;;) {
            skip_ws(p);
            char *key = NULL;
            if (obj) {
                if (p->i >= p->n || p->s[p->i] != '"') return fail(p, "expected a key"), 0;
                key = parse_string(p);
                if (!key) return 0;
                skip_ws(p);
                if (p->i >= p->n || p->s[p->i] != ':') {
                    free(key);
                    return fail(p, "expected ':'"), 0;
                }
                p->i++;
            }
            if (!push(p, v, &cap)) {
                free(key);
                return 0;
            }
            if (obj) v->keys[v->n - 1] = key;
            if (!parse_value(p, &v->items[v->n - 1], depth + 1)) return 0;
            skip_ws(p);
            if (p->i < p->n && p->s[p->i] == ',') {
                p->i++;
                continue;
            }
            if (p->i < p->n && p->s[p->i] == close) {
                p->i++;
                return 1;
            }
            return fail(p, obj ? "expected ',' or '}'" : "expected ',' or ']'"), 0;
        }
    }
    if (c == '"') {
        v->type = TS_JSON_STRING;
        v->string = parse_string(p);
        return v->string != NULL;
    }
    if (lit(p, "true")) {
        v->type = TS_JSON_BOOL;
        v->number = 1;
        return 1;
    }
    if (lit(p, "false")) {
        v->type = TS_JSON_BOOL;
        return 1;
    }
    if (lit(p, "null")) {
        v->type = TS_JSON_NULL;
        return 1;
    }
    return parse_number(p, v);
}

static void free_value(ts_json *v) {
    if (v->type == TS_JSON_ARRAY || v->type == TS_JSON_OBJECT) {
        for (int i = 0; i < v->n; i++) {
            free_value(&v->items[i]);
            if (v->keys) free(v->keys[i]);
        }
        free(v->items);
        free(v->keys);
    }
    free(v->string);
}

int ts_json_parse(const char *text, size_t len, ts_json **out) {
    *out = NULL;
    parser p = {.s = text, .n = len};
    ts_json *v = ts_calloc(1, sizeof *v);
    if (!v) return TINYSAM_E_NOMEM;
    if (parse_value(&p, v, 0)) {
        skip_ws(&p);
        if (p.i != p.n) fail(&p, "trailing characters");
    }
    if (p.err) {
        free_value(v);
        free(v);
        return ts_error(TINYSAM_E_FORMAT, "json: %s", p.msg);
    }
    *out = v;
    return TINYSAM_OK;
}

int ts_json_load(const char *path, ts_json **out) {
    uint8_t *buf;
    size_t n;
    *out = NULL;
    int rc = ts_read_file(path, JSON_MAX_FILE, &buf, &n);
    if (rc) return rc;
    rc = ts_json_parse((const char *)buf, n, out);
    free(buf);
    if (rc) return ts_error_prefix(rc, "%s", path);
    return TINYSAM_OK;
}

void ts_json_free(ts_json *j) {
    if (!j) return;
    free_value(j);
    free(j);
}

const ts_json *ts_json_get(const ts_json *obj, const char *key) {
    if (!obj || obj->type != TS_JSON_OBJECT) return NULL;
    for (int i = 0; i < obj->n; i++)
        if (!strcmp(obj->keys[i], key)) return &obj->items[i];
    return NULL;
}

const ts_json *ts_json_at(const ts_json *arr, int i) {
    if (!arr || arr->type != TS_JSON_ARRAY || i < 0 || i >= arr->n) return NULL;
    return &arr->items[i];
}

double ts_json_num(const ts_json *obj, const char *key, double def) {
    const ts_json *v = ts_json_get(obj, key);
    return v && (v->type == TS_JSON_NUMBER || v->type == TS_JSON_BOOL) ? v->number : def;
}

void ts_json_write_string(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}
