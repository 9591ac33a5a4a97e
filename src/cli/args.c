/* args.c - strict value parsing for the CLI: a malformed number is an error, never 0. */
#include "cli/args.h"
#include "core.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int ts_arg_float(const char *opt, const char *s, float *out) {
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (end == s || *end || errno == ERANGE || !isfinite(d) || fabs(d) > 3.0e38)
        return ts_error(TINYSAM_E_ARG, "%s: '%s' is not a finite number", opt, s);
    *out = (float)d;
    return TINYSAM_OK;
}

int ts_arg_double_range(const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double d = strtod(s, &end);
    if (end == s || *end || errno == ERANGE || !isfinite(d))
        return ts_error(TINYSAM_E_ARG, "%s: '%s' is not a finite number", opt, s);
    if (d < lo || d > hi)
        return ts_error(TINYSAM_E_ARG, "%s: %s is out of range [%g, %g]", opt, s, lo, hi);
    *out = d;
    return TINYSAM_OK;
}

int ts_arg_ll(const char *opt, const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end || errno == ERANGE)
        return ts_error(TINYSAM_E_ARG, "%s: '%s' is not an integer", opt, s);
    if (v < lo || v > hi)
        return ts_error(TINYSAM_E_ARG, "%s: %s is out of range [%lld, %lld]", opt, s, lo, hi);
    *out = v;
    return TINYSAM_OK;
}

int ts_arg_int(const char *opt, const char *s, long lo, long hi, int *out) {
    long long v;
    int rc = ts_arg_ll(opt, s, lo, hi, &v);
    if (rc) return rc;
    *out = (int)v;
    return TINYSAM_OK;
}

int ts_arg_floats(const char *opt, const char *s, int n_min, int n_max, float *out, int *n) {
    char buf[256];
    if (strlen(s) >= sizeof buf) return ts_error(TINYSAM_E_ARG, "%s: value too long", opt);
    strcpy(buf, s);
    int k = 0;
    const char *p = buf;
    /* split by hand: strtok would merge empty fields ("1,,2") instead of rejecting them */
    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char item[64];
        if (len == 0 || len >= sizeof item)
            return ts_error(TINYSAM_E_ARG, "%s: malformed list '%s'", opt, s);
        if (k >= n_max)
            return ts_error(TINYSAM_E_ARG, "%s: '%s' has more than %d values", opt, s, n_max);
        memcpy(item, p, len);
        item[len] = 0;
        if (ts_arg_float(opt, item, &out[k])) return TINYSAM_E_ARG;
        k++;
        if (!comma) break;
        p = comma + 1;
    }
    if (k < n_min)
        return ts_error(TINYSAM_E_ARG, "%s: '%s' needs at least %d values", opt, s, n_min);
    *n = k;
    return TINYSAM_OK;
}

int ts_arg_value(int argc, char **argv, int *i, const char **out) {
    if (*i + 1 >= argc) return ts_error(TINYSAM_E_ARG, "%s needs a value", argv[*i]);
    *out = argv[++*i];
    return TINYSAM_OK;
}

int ts_cli_fail(void) {
    const char *msg = tinysam_last_error();
    fprintf(stderr, "tinysam: %s\n", msg && *msg ? msg : "failed");
    return 1;
}


#include "io/json.h"

void ts_json_write_string_stdout(const char *s) {
    ts_json_write_string(stdout, s);
}
