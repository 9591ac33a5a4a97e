/* args.h - strict parsing of command-line values shared by the tinysam commands. */
#ifndef TS_CLI_ARGS_H
#define TS_CLI_ARGS_H

#include <stdio.h>

/* Parses a finite float; the whole string must be consumed. */
int ts_arg_float(const char *opt, const char *s, float *out);
/* Parses a double in [lo, hi]. */
int ts_arg_double_range(const char *opt, const char *s, double lo, double hi, double *out);
/* Parses an integer in [lo, hi]. */
int ts_arg_int(const char *opt, const char *s, long lo, long hi, int *out);
int ts_arg_ll(const char *opt, const char *s, long long lo, long long hi, long long *out);
/* Parses between n_min and n_max comma-separated finite floats. */
int ts_arg_floats(const char *opt, const char *s, int n_min, int n_max, float *out, int *n);
/* Returns the option's value (argv[i+1]) or fails with "OPT needs a value". */
int ts_arg_value(int argc, char **argv, int *i, const char **out);
/* Prints "tinysam: <last error>" on stderr and returns 1 (the exit status). */
int ts_cli_fail(void);
#include "core.h" /* ts_mkdirs */

/* JSON string literal on stdout. */
void ts_json_write_string_stdout(const char *s);
#endif
