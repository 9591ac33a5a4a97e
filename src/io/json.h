/* json.h - a small, bounded JSON reader (DOM) and writer helpers.
 * Depth, size and element counts are limited; numbers are parsed with strtod. */
#ifndef TS_JSON_H
#define TS_JSON_H

#include <stddef.h>
#include <stdio.h>

#define TS_JSON_MAX_DEPTH 64

typedef enum { TS_JSON_NULL, TS_JSON_BOOL, TS_JSON_NUMBER, TS_JSON_STRING, TS_JSON_ARRAY,
               TS_JSON_OBJECT } ts_json_type;

typedef struct ts_json {
    ts_json_type type;
    double number;       /* NUMBER, BOOL (0/1) */
    char *string;        /* STRING (NUL-terminated, unescaped) */
    int n;               /* ARRAY/OBJECT element count */
    struct ts_json *items; /* ARRAY elements / OBJECT values */
    char **keys;         /* OBJECT keys */
} ts_json;

/* Parses text[0..len). On error returns TINYSAM_E_FORMAT with "json: ... at offset N". */
int ts_json_parse(const char *text, size_t len, ts_json **out);
int ts_json_load(const char *path, ts_json **out);
void ts_json_free(ts_json *j);
const ts_json *ts_json_get(const ts_json *obj, const char *key); /* NULL if absent */
const ts_json *ts_json_at(const ts_json *arr, int i);           /* NULL if out of range */
/* Convenience: number of obj[key] or def when absent/not a number. */
double ts_json_num(const ts_json *obj, const char *key, double def);

/* Writes s as a JSON string literal (with quotes and escapes). */
void ts_json_write_string(FILE *f, const char *s);

#endif
