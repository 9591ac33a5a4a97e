/* test_plot_curve.c - runs the built tools/plot_curve binary ($BUILD/tools/plot_curve) and reads
 * its PNG back with libpng: size, white background, each series' colour where --print-layout's
 * mapping says a known point lands, and the error cases (exit 1, one stderr line, no file). */
#include "test.h"

#include <math.h>
#include <png.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static const char *tool(void) {
    static char path[512];
    const char *build = getenv("BUILD");
    snprintf(path, sizeof path, "%s/tools/plot_curve", build && *build ? build : "build");
    if (access(path, X_OK) != 0) snprintf(path, sizeof path, "build/tools/plot_curve");
    return access(path, X_OK) == 0 ? path : NULL;
}

static int write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fputs(text, f);
    return fclose(f);
}

/* Whole small file into buf (NUL-terminated); returns its length or -1. */
static long read_text(const char *path, char *buf, size_t cap) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    size_t n = fread(buf, 1, cap - 1, f);
    fclose(f);
    buf[n] = 0;
    return (long)n;
}

/* Runs the tool with args; stdout and stderr go to files. Returns the exit status. */
static int run_tool(const char *args, const char *out_txt, const char *err_txt) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "%s %s >%s 2>%s", tool(), args, out_txt, err_txt);
    int st = system(cmd);
    return st == -1 ? -1 : WEXITSTATUS(st);
}

typedef struct {
    int w, h;
    unsigned char *rgb;
} image;

static int load_png(const char *path, image *im) {
    png_image p;
    memset(&p, 0, sizeof p);
    p.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_file(&p, path)) return -1;
    p.format = PNG_FORMAT_RGB;
    im->w = (int)p.width;
    im->h = (int)p.height;
    im->rgb = malloc(PNG_IMAGE_SIZE(p));
    if (!im->rgb || !png_image_finish_read(&p, NULL, im->rgb, 0, NULL)) {
        png_image_free(&p);
        free(im->rgb);
        return -1;
    }
    return 0;
}

/* Smallest colour distance (max over channels) to c within radius r of (x, y). */
static int nearest_colour(const image *im, int x, int y, int r, const int c[3]) {
    int best = 999;
    for (int j = y - r; j <= y + r; j++)
        for (int i = x - r; i <= x + r; i++) {
            if (i < 0 || j < 0 || i >= im->w || j >= im->h) continue;
            const unsigned char *p = im->rgb + ((size_t)j * im->w + i) * 3;
            int d = 0;
            for (int k = 0; k < 3; k++) {
                int e = abs(p[k] - c[k]);
                if (e > d) d = e;
            }
            if (d < best) best = d;
        }
    return best;
}

typedef struct {
    int x0, y0, x1, y1;
    double xlo, xhi, ylo, yhi;
    int log;
} layout;

static int parse_layout(const char *text, layout *L) {
    char kind[8];
    if (sscanf(text, "plot %d %d %d %d\nx %lf %lf\ny %lf %lf %7s", &L->x0, &L->y0, &L->x1, &L->y1,
               &L->xlo, &L->xhi, &L->ylo, &L->yhi, kind) != 9)
        return -1;
    L->log = strcmp(kind, "log") == 0;
    return 0;
}

static void to_pixel(const layout *L, double x, double y, int *px, int *py) {
    double tx = (x - L->xlo) / (L->xhi - L->xlo);
    double ty = L->log ? (log10(y) - log10(L->ylo)) / (log10(L->yhi) - log10(L->ylo))
                       : (y - L->ylo) / (L->yhi - L->ylo);
    *px = (int)lround(L->x0 + tx * (L->x1 - L->x0));
    *py = (int)lround(L->y1 - ty * (L->y1 - L->y0));
}

/* The first two palette colours (tools/plot_curve.c k_palette). */
static const int k_blue[3] = {31, 119, 180}, k_orange[3] = {255, 127, 14};

/* Two series far apart: "up" rises 1 -> 5, "down" falls 10 -> 1 with a missing point; the
 * top-right corner stays empty, so the legend goes there and hides no point. */
static const char k_csv[] = "step,up,down\n"
                            "0,1,10\n"
                            "10,2,\n"
                            "20,3,6\n"
                            "30,4,3\n"
                            "40,5,1\n";

static void check_plot(int logy) {
    if (!tool()) SKIP("build/tools/plot_curve not built");
    const char *csv = tmp_path(logy ? "plot_log.csv" : "plot_lin.csv");
    const char *png = tmp_path(logy ? "plot_log.png" : "plot_lin.png");
    const char *out = tmp_path("plot_out.txt"), *err = tmp_path("plot_err.txt");
    REQUIRE(write_file(csv, k_csv) == 0, "cannot write %s", csv);
    char args[1024], text[4096];
    snprintf(args, sizeof args,
             "--out %s --width 640 --height 400 --title T --ylabel loss %s "
             "--print-layout %s",
             png, logy ? "--logy" : "", csv);
    int rc = run_tool(args, out, err);
    read_text(err, text, sizeof text);
    REQUIRE(rc == 0, "exit %d, stderr: %s", rc, text);
    REQUIRE(read_text(out, text, sizeof text) > 0, "no layout printed");
    layout L;
    REQUIRE(parse_layout(text, &L) == 0, "bad layout: %s", text);
    CHECK(L.log == logy, "layout says log=%d", L.log);
    CHECK(L.x0 > 0 && L.x1 < 639 && L.y0 > 0 && L.y1 < 399 && L.x0 < L.x1 && L.y0 < L.y1,
          "plot rect %d %d %d %d", L.x0, L.y0, L.x1, L.y1);
    CHECK(L.xlo < 0 && L.xhi > 40 && L.ylo < 1 && L.yhi > 10, "ranges x %g..%g y %g..%g", L.xlo,
          L.xhi, L.ylo, L.yhi);

    image im;
    REQUIRE(load_png(png, &im) == 0, "cannot read %s", png);
    CHECK(im.w == 640 && im.h == 400, "size %dx%d", im.w, im.h);
    const int white[3] = {255, 255, 255};
    CHECK(nearest_colour(&im, 0, 0, 0, white) == 0, "corner not white");
    CHECK(nearest_colour(&im, 639, 399, 0, white) == 0, "corner not white");
    /* Data points: the series' colour at the marker (within 1 px), not the other one. */
    static const double k_pts[][3] = {{0, 1, 0},  {20, 3, 0}, {30, 4, 0},
                                      {0, 10, 1}, {20, 6, 1}, {40, 1, 1}};
    for (size_t i = 0; i < sizeof k_pts / sizeof k_pts[0]; i++) {
        int px, py;
        to_pixel(&L, k_pts[i][0], k_pts[i][1], &px, &py);
        const int *mine = k_pts[i][2] ? k_orange : k_blue;
        const int *other = k_pts[i][2] ? k_blue : k_orange;
        int d_mine = nearest_colour(&im, px, py, 1, mine);
        int d_other = nearest_colour(&im, px, py, 1, other);
        CHECK(d_mine <= 8, "point (%g,%g) at px (%d,%d): colour off by %d", k_pts[i][0],
              k_pts[i][1], px, py, d_mine);
        CHECK(d_other > 60, "point (%g,%g): other series' colour there", k_pts[i][0], k_pts[i][1]);
    }
    /* Row 10 has "down" missing (no marker there); "up" still has its point. */
    int px, py;
    to_pixel(&L, 10, 2, &px, &py);
    CHECK(nearest_colour(&im, px, py, 1, k_blue) <= 8, "point (10,2) missing");
    /* Midway between the curves in an empty area of the plot: background, not ink. */
    to_pixel(&L, 5, logy ? 3.2 : 5.5, &px, &py);
    CHECK(nearest_colour(&im, px, py, 0, k_blue) > 60 &&
              nearest_colour(&im, px, py, 0, k_orange) > 60,
          "series colour at an empty spot (%d,%d)", px, py);
    free(im.rgb);
    remove(png);
    remove(csv);
    remove(out);
    remove(err);
}

static void test_linear(void) {
    check_plot(0);
}

static void test_logy(void) {
    check_plot(1);
}

/* A bad invocation: exit status 1, exactly one stderr line naming the tool and containing
 * want, and no output file (not even a leftover temporary). */
static void expect_error(const char *csv_text, const char *extra, const char *want) {
    const char *csv = tmp_path("bad.csv"), *png = tmp_path("bad.png");
    const char *out = tmp_path("bad_out.txt"), *err = tmp_path("bad_err.txt");
    remove(png);
    if (csv_text)
        REQUIRE(write_file(csv, csv_text) == 0, "cannot write %s", csv);
    else
        remove(csv);
    char args[1024], text[4096];
    snprintf(args, sizeof args, "--out %s %s %s", png, extra, csv);
    int rc = run_tool(args, out, err);
    long n = read_text(err, text, sizeof text);
    CHECK(rc == 1, "[%s] exit %d, want 1", want, rc);
    int lines = 0;
    for (long i = 0; i < n; i++)
        lines += text[i] == '\n';
    CHECK(lines == 1 && strncmp(text, "plot_curve: ", 12) == 0, "[%s] stderr: %s", want, text);
    CHECK(strstr(text, want) != NULL, "stderr lacks '%s': %s", want, text);
    CHECK(access(png, F_OK) != 0, "[%s] output file written", want);
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "ls %s.tmp.* >/dev/null 2>&1", png);
    CHECK(system(cmd) != 0, "[%s] temporary file left behind", want);
    remove(csv);
    remove(out);
    remove(err);
}

static void test_errors(void) {
    if (!tool()) SKIP("build/tools/plot_curve not built");
    expect_error(NULL, "", "cannot open");
    expect_error("", "", "empty file");
    expect_error("step,loss\n", "", "no numeric rows");
    expect_error("step,loss\n\n\n", "", "no numeric rows");
    expect_error("1,2\n3,4\n", "", "header");
    expect_error("step\n1\n", "", "header needs");
    expect_error("step,loss\n0,1.5\n1,abc\n", "", ":3: field 2 'abc'");
    expect_error("step,loss\n0,1.5\n1,2,3\n", "", "expected 2 fields");
    expect_error("step,loss\n,1.5\n", "", "x value");
    expect_error("step,loss\n0,\n1,\n", "", "no data points");
    expect_error("step,loss\n0,1\n1,0\n", "--logy", "--logy needs positive");
    expect_error("step,loss\n0,1\n1,-2\n", "--logy", "--logy needs positive");
    expect_error("step,loss\n0,1\n", "--width 10", "--width");
    expect_error("step,loss\n0,1\n", "--bogus", "unknown option");
    expect_error("s,a,b,c,d,e,f,g,h,i\n0,1,1,1,1,1,1,1,1,1\n", "", "at most 8");
}

/* A failed run must leave an existing output file alone (atomic write). */
static void test_keeps_old_file(void) {
    if (!tool()) SKIP("build/tools/plot_curve not built");
    const char *csv = tmp_path("keep.csv"), *png = tmp_path("keep.png");
    const char *out = tmp_path("keep_out.txt"), *err = tmp_path("keep_err.txt");
    REQUIRE(write_file(png, "old") == 0 && write_file(csv, "x,y\n0,-1\n") == 0, "write");
    char args[1024], text[64];
    snprintf(args, sizeof args, "--out %s --logy %s", png, csv);
    CHECK(run_tool(args, out, err) == 1, "bad run succeeded");
    CHECK(read_text(png, text, sizeof text) == 3 && strcmp(text, "old") == 0, "old file changed");
    remove(png);
    remove(csv);
    remove(out);
    remove(err);
}

int main(void) {
    RUN(test_linear);
    RUN(test_logy);
    RUN(test_errors);
    RUN(test_keeps_old_file);
    return test_summary();
}
