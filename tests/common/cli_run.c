/* cli_run.c - see cli_run.h. */
#include "cli_run.h"

#include "core.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

char cli_out[CLI_CAPTURE], cli_err[CLI_CAPTURE];

static void slurp(const char *path, char *dst) {
    FILE *f = fopen(path, "rb");
    size_t n = f ? fread(dst, 1, CLI_CAPTURE - 1, f) : 0;
    dst[n] = 0;
    if (f) fclose(f);
}

int cli_run(const char *args) {
    static char cmd[8192];
    char o[1024], e[1024];
    const char *b = getenv("BUILD");
    snprintf(o, sizeof o, "%s", tmp_path("cli_stdout.txt"));
    snprintf(e, sizeof e, "%s", tmp_path("cli_stderr.txt"));
    snprintf(cmd, sizeof cmd, "%s/tinysam %s >%s 2>%s", b && *b ? b : "build", args, o, e);
    int st = system(cmd);
    slurp(o, cli_out);
    slurp(e, cli_err);
    if (st == -1 || WIFSIGNALED(st)) return -1;
    return WEXITSTATUS(st);
}

int cli_one_line(const char *s) {
    size_t n = strlen(s);
    return n > 10 && !strncmp(s, "tinysam", 7) && strchr(s, '\n') == s + n - 1;
}

int cli_ends_with_error_line(const char *s) {
    size_t n = strlen(s);
    if (n && s[n - 1] == '\n') n--;
    while (n && s[n - 1] != '\n') n--;
    return cli_one_line(s + n);
}

void cli_expect_error(const char *args, const char *needle, int whole_stderr) {
    int st = cli_run(args);
    CHECK(st > 0 && st < 128, "'%s': exit status %d (expected an error)", args, st);
    CHECK(whole_stderr ? cli_one_line(cli_err) : cli_ends_with_error_line(cli_err),
          "'%s': no one-line error on stderr: [%s]", args, cli_err);
    if (needle)
        CHECK(strstr(cli_err, needle) != NULL, "'%s': stderr lacks '%s': %s", args, needle,
              cli_err);
}

int cli_copy_file(const char *from, const char *to) {
    uint8_t *buf;
    size_t n;
    if (ts_read_file(from, (size_t)1 << 26, &buf, &n)) return -1;
    FILE *f = fopen(to, "wb");
    int ok = f && fwrite(buf, 1, n, f) == n;
    if (f && fclose(f)) ok = 0;
    free(buf);
    return ok ? 0 : -1;
}

void cli_rm_rf(const char *dir) {
    char cmd[1100];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) printf("  (could not remove %s)\n", dir);
}

int cli_same_file(const char *a, const char *b) {
    uint8_t *x = NULL, *y = NULL;
    size_t nx = 0, ny = 0;
    int ok = ts_read_file(a, (size_t)1 << 28, &x, &nx) == 0 &&
             ts_read_file(b, (size_t)1 << 28, &y, &ny) == 0 && nx == ny && !memcmp(x, y, nx);
    free(x);
    free(y);
    return ok;
}
