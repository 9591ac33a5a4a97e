/* cli_run.h - running the tinysam binary from a test: $BUILD/tinysam (build/ by default, as
 * tests/run.sh sets BUILD) with a shell-quoted argument string, stdout and stderr captured. */
#ifndef TS_TESTS_CLI_RUN_H
#define TS_TESTS_CLI_RUN_H

#include <stddef.h>

#define CLI_CAPTURE 65536
extern char cli_out[CLI_CAPTURE], cli_err[CLI_CAPTURE]; /* the last run's stdout / stderr */

/* Runs `tinysam ARGS`; returns the exit status, or -1 if it died from a signal. */
int cli_run(const char *args);
/* stderr is exactly one "tinysam..." line. */
int cli_one_line(const char *s);
/* stderr ends with one "tinysam..." line (progress lines may come before it). */
int cli_ends_with_error_line(const char *s);
/* Expects a failure: exit status 1..127 and a final one-line error containing needle (may be
 * NULL); whole_stderr: the error must be all of stderr. Reports through CHECK. */
void cli_expect_error(const char *args, const char *needle, int whole_stderr);
/* Copies a file (up to 64 MB). Returns 0 or -1. */
int cli_copy_file(const char *from, const char *to);
/* 1 when both files exist (up to 256 MB) with the same bytes. */
int cli_same_file(const char *a, const char *b);
/* rm -rf dir. */
void cli_rm_rf(const char *dir);

#endif
