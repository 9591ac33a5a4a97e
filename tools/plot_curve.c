/* plot_curve.c - draw the series of a CSV file as a PNG line chart (libpng + libm only).
 *
 *   plot_curve --out loss.png [--title T] [--xlabel X] [--ylabel Y] [--logy]
 *              [--width 900] [--height 540] [--print-layout] data.csv
 *
 * Used by the README's training-loss plot: no matplotlib on a fresh machine, so this is a
 * standalone program outside the library.
 *
 * CSV: a header "x,name1,name2,..." (1 to 8 series), then numeric rows. An empty field is a
 * missing point; the line of that series joins its neighbouring points (sparse eval columns).
 * Blank lines are skipped; "-" reads stdin. Without --xlabel the header's first name is used.
 *
 * Errors: one line "plot_curve: ..." on stderr, exit status 1, and no output file (the PNG is
 * written to a temporary file next to --out and renamed into place).
 *
 * --print-layout prints the data-to-pixel mapping after writing the PNG (used by the tests):
 *   plot X0 Y0 X1 Y1     the frame's corner pixels (pixel centres have integer coordinates)
 *   x LO HI              data x drawn at column X0 and X1 (linear)
 *   y LO HI lin|log      data y drawn at row Y1 (bottom) and Y0 (top); log: linear in log10(y)
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <math.h>
#include <png.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_SERIES    8
#define MAX_CSV_BYTES (256u << 20) /* refuse larger inputs: a loss log is a few MB at most */
#define MIN_DIM       200
#define MAX_DIM       8000
#define MAX_TICKS     64

/* ------------------------------------------------------------------------------------------ */
/* Errors                                                                                      */

static char g_err[512]; /* the message main() prints when a step returns -1 */

__attribute__((format(printf, 1, 2))) static int fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_err, sizeof g_err, fmt, ap);
    va_end(ap);
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* Options                                                                                     */

typedef struct {
    const char *out;    /* --out, required */
    const char *title;  /* --title, NULL: none */
    const char *xlabel; /* --xlabel, NULL: the CSV header's first name */
    const char *ylabel; /* --ylabel, NULL: none */
    const char *csv;    /* the one positional argument; "-" = stdin */
    int logy;           /* --logy */
    int width, height;  /* --width, --height */
    int print_layout;   /* --print-layout */
} options;

static const char k_usage[] =
    "usage: plot_curve --out FILE.png [--title T] [--xlabel X] [--ylabel Y] [--logy]\n"
    "                  [--width 900] [--height 540] [--print-layout] data.csv\n";

static int parse_dim(const char *name, const char *s, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < MIN_DIM || v > MAX_DIM)
        return fail("%s must be an integer in [%d, %d], got '%s'", name, MIN_DIM, MAX_DIM, s);
    *out = (int)v;
    return 0;
}

/* Accepts "--opt value" and "--opt=value". Returns 0, 1 for --help, -1 on error. */
static int parse_args(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    o->width = 900;
    o->height = 540;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) return 1;
        if (strncmp(a, "--", 2) != 0 || a[2] == 0) {
            if (o->csv) return fail("more than one input file ('%s' and '%s')", o->csv, a);
            o->csv = a;
            continue;
        }
        char key[32];
        const char *eq = strchr(a, '=');
        size_t klen = eq ? (size_t)(eq - a) : strlen(a);
        if (klen >= sizeof key) return fail("unknown option '%s'", a);
        memcpy(key, a, klen);
        key[klen] = 0;
        if (strcmp(key, "--logy") == 0 || strcmp(key, "--print-layout") == 0) {
            if (eq) return fail("option %s takes no value", key);
            if (key[2] == 'l')
                o->logy = 1;
            else
                o->print_layout = 1;
            continue;
        }
        const char **dst = NULL;
        if (strcmp(key, "--out") == 0)
            dst = &o->out;
        else if (strcmp(key, "--title") == 0)
            dst = &o->title;
        else if (strcmp(key, "--xlabel") == 0)
            dst = &o->xlabel;
        else if (strcmp(key, "--ylabel") == 0)
            dst = &o->ylabel;
        else if (strcmp(key, "--width") != 0 && strcmp(key, "--height") != 0)
            return fail("unknown option '%s' (see --help)", key);
        const char *val;
        if (eq)
            val = eq + 1;
        else if (i + 1 < argc)
            val = argv[++i];
        else
            return fail("option %s needs a value", key);
        if (dst)
            *dst = val;
        else if (parse_dim(key, val, key[2] == 'w' ? &o->width : &o->height))
            return -1;
    }
    if (!o->out || !*o->out) return fail("missing --out FILE.png");
    if (!o->csv) return fail("missing the input CSV file");
    return 0;
}

/* ------------------------------------------------------------------------------------------ */
/* CSV                                                                                         */

typedef struct {
    int n_series;
    char *xname;             /* header field 0 */
    char *names[MAX_SERIES]; /* header fields 1.. */
    size_t n_rows;
    double *x; /* [n_rows] */
    double *y; /* [n_rows][n_series], NAN = missing */
} table;

static void table_free(table *t) {
    free(t->xname);
    for (int i = 0; i < t->n_series; i++)
        free(t->names[i]);
    free(t->x);
    free(t->y);
    memset(t, 0, sizeof *t);
}

/* Whole file (or stdin) into a NUL-terminated buffer the caller frees; NULL on error. */
static char *read_all(const char *path, size_t *len) {
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    if (!f) {
        fail("cannot open '%s': %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        if (n + 1 >= cap) {
            if (cap >= MAX_CSV_BYTES) {
                fail("'%s' is larger than %u MB", path, MAX_CSV_BYTES >> 20);
                free(buf);
                buf = NULL;
                break;
            }
            char *nb = realloc(buf, cap * 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - 1 - n, f);
        n += got;
        if (got == 0) {
            if (ferror(f)) {
                fail("cannot read '%s': %s", path, strerror(errno));
                free(buf);
                buf = NULL;
            }
            break;
        }
    }
    if (!buf && !g_err[0]) fail("out of memory reading '%s'", path);
    if (f != stdin) fclose(f);
    if (buf) {
        buf[n] = 0;
        *len = n;
    }
    return buf;
}

typedef struct {
    const char *p;
    size_t n;
} field;

/* Splits one line (no newline) on commas; fields are trimmed of blanks and one pair of
 * surrounding double quotes. Returns the field count (up to max; more are counted only). */
static int split_line(const char *s, size_t len, field *f, int max) {
    int k = 0;
    size_t i = 0;
    for (;;) {
        size_t j = i;
        while (j < len && s[j] != ',')
            j++;
        size_t a = i, b = j;
        while (a < b && (s[a] == ' ' || s[a] == '\t'))
            a++;
        while (b > a && (s[b - 1] == ' ' || s[b - 1] == '\t'))
            b--;
        if (b - a >= 2 && s[a] == '"' && s[b - 1] == '"') a++, b--;
        if (k < max) f[k] = (field){s + a, b - a};
        k++;
        if (j >= len) break;
        i = j + 1;
    }
    return k;
}

/* 0: number in *v, 1: empty field, -1: not a finite number. */
static int parse_num(field f, double *v) {
    char buf[64];
    if (f.n == 0) return 1;
    if (f.n >= sizeof buf) return -1;
    memcpy(buf, f.p, f.n);
    buf[f.n] = 0;
    char *end;
    errno = 0;
    double d = strtod(buf, &end);
    if (end != buf + f.n || !isfinite(d)) return -1;
    *v = d;
    return 0;
}

static char *dup_field(field f) {
    char *s = malloc(f.n + 1);
    if (s) {
        memcpy(s, f.p, f.n);
        s[f.n] = 0;
    }
    return s;
}

static int load_csv(const char *path, table *t) {
    size_t len;
    memset(t, 0, sizeof *t);
    char *buf = read_all(path, &len);
    if (!buf) return -1;
    const char *name = strcmp(path, "-") == 0 ? "<stdin>" : path;
    int rc = 0, n_cols = 0, have_header = 0;
    size_t cap_rows = 0, line_no = 0;
    field f[MAX_SERIES + 1];
    for (size_t pos = 0; pos < len && rc == 0;) {
        size_t end = pos;
        while (end < len && buf[end] != '\n')
            end++;
        size_t n = end - pos;
        const char *s = buf + pos;
        pos = end + 1;
        line_no++;
        if (n && s[n - 1] == '\r') n--;
        if (line_no == 1 && n >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) s += 3, n -= 3; /* BOM */
        size_t blank = 0;
        while (blank < n && (s[blank] == ' ' || s[blank] == '\t'))
            blank++;
        if (blank == n) continue;
        int k = split_line(s, n, f, MAX_SERIES + 1);
        if (!have_header) {
            double dummy;
            if (k < 2) {
                rc =
                    fail("%s:%zu: header needs an x column and at least one series", name, line_no);
                break;
            }
            if (k > MAX_SERIES + 1) {
                rc = fail("%s:%zu: %d series, at most %d are supported", name, line_no, k - 1,
                          MAX_SERIES);
                break;
            }
            if (parse_num(f[0], &dummy) == 0 && parse_num(f[1], &dummy) == 0) {
                rc = fail("%s:%zu: expected a header line (x,name1,...), got numbers", name,
                          line_no);
                break;
            }
            n_cols = k;
            t->n_series = k - 1;
            t->xname = dup_field(f[0]);
            if (!t->xname) rc = fail("out of memory");
            for (int i = 0; i < t->n_series && rc == 0; i++) {
                char tmp[32];
                if (f[i + 1].n == 0) { /* unnamed column: still needs a legend entry */
                    snprintf(tmp, sizeof tmp, "series %d", i + 1);
                    f[i + 1] = (field){tmp, strlen(tmp)};
                }
                if (!(t->names[i] = dup_field(f[i + 1]))) rc = fail("out of memory");
            }
            have_header = 1;
            continue;
        }
        if (k != n_cols) {
            rc = fail("%s:%zu: expected %d fields like the header, got %d", name, line_no, n_cols,
                      k);
            break;
        }
        if (t->n_rows == cap_rows) {
            size_t nc = cap_rows ? cap_rows * 2 : 256;
            double *nx = realloc(t->x, nc * sizeof *nx);
            if (nx) t->x = nx;
            double *ny = nx ? realloc(t->y, nc * (size_t)t->n_series * sizeof *ny) : NULL;
            if (!ny) {
                rc = fail("out of memory");
                break;
            }
            t->y = ny;
            cap_rows = nc;
        }
        double *row = t->y + t->n_rows * (size_t)t->n_series;
        int r = parse_num(f[0], &t->x[t->n_rows]);
        if (r != 0) {
            rc = fail("%s:%zu: x value '%.*s' is %s", name, line_no,
                      (int)(f[0].n > 40 ? 40 : f[0].n), f[0].p,
                      r > 0 ? "missing" : "not a finite number");
            break;
        }
        for (int i = 0; i < t->n_series; i++) {
            field g = f[i + 1];
            r = parse_num(g, &row[i]);
            if (r > 0) row[i] = (double)NAN;
            if (r < 0) {
                rc = fail("%s:%zu: field %d '%.*s' is not a finite number", name, line_no, i + 2,
                          (int)(g.n > 40 ? 40 : g.n), g.p);
                break;
            }
        }
        t->n_rows++;
    }
    free(buf);
    if (rc == 0 && !have_header) rc = fail("%s: empty file (expected a header x,name1,...)", name);
    if (rc == 0 && t->n_rows == 0) rc = fail("%s: no numeric rows after the header", name);
    if (rc) table_free(t);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* Canvas                                                                                      */

typedef struct {
    uint8_t r, g, b;
} rgb;

typedef struct {
    int w, h;
    uint8_t *px; /* [h][w][3] */
} image;

typedef struct {
    int x0, y0, x1, y1; /* inclusive */
} rect;

static const rgb k_white = {255, 255, 255};
static const rgb k_text = {38, 38, 38};
static const rgb k_tick_text = {77, 77, 77};
static const rgb k_frame = {110, 110, 110};
static const rgb k_grid = {228, 228, 228};
static const rgb k_grid_minor = {243, 243, 243};
static const rgb k_legend_edge = {200, 200, 200};

/* Tableau-like palette: distinct hues, all dark enough for 2-px lines on white. */
static const rgb k_palette[MAX_SERIES] = {
    {31, 119, 180},  {255, 127, 14}, {44, 160, 44},   {214, 39, 40},
    {148, 103, 189}, {140, 86, 75},  {227, 119, 194}, {23, 190, 207},
};

static void blend(image *im, int x, int y, rgb c, double a) {
    if (x < 0 || y < 0 || x >= im->w || y >= im->h || !(a > 0)) return;
    if (a > 1) a = 1;
    uint8_t *p = im->px + ((size_t)y * (size_t)im->w + (size_t)x) * 3;
    p[0] = (uint8_t)lround(p[0] + (c.r - p[0]) * a);
    p[1] = (uint8_t)lround(p[1] + (c.g - p[1]) * a);
    p[2] = (uint8_t)lround(p[2] + (c.b - p[2]) * a);
}

static void fill_rect(image *im, int x0, int y0, int x1, int y1, rgb c, double a) {
    for (int y = y0; y <= y1; y++)
        for (int x = x0; x <= x1; x++)
            blend(im, x, y, c, a);
}

/* Coverage masks: series are drawn into a float mask first (max of the coverages of all their
 * segments and markers), then composited once, so joints are not blended twice. */
typedef struct {
    int w, h;
    float *a;  /* [h][w] */
    rect clip; /* only pixels inside are written */
} mask;

static void mask_put(mask *m, int x, int y, double cov) {
    if (x < m->clip.x0 || x > m->clip.x1 || y < m->clip.y0 || y > m->clip.y1 || cov <= 0) return;
    float *p = &m->a[(size_t)y * (size_t)m->w + (size_t)x];
    if (cov > 1) cov = 1;
    if (cov > (double)*p) *p = (float)cov;
}

/* A filled disc of radius r centred at (cx, cy), edges anti-aliased over one pixel. */
static void mask_disc(mask *m, double cx, double cy, double r) {
    for (int y = (int)floor(cy - r - 1); y <= (int)ceil(cy + r + 1); y++)
        for (int x = (int)floor(cx - r - 1); x <= (int)ceil(cx + r + 1); x++)
            mask_put(m, x, y, r + 0.5 - hypot(x - cx, y - cy));
}

/* A segment of half-width hw with round caps. Walks the major axis so the cost is length x
 * thickness, not the bounding box (a zigzag over the whole plot stays cheap). */
static void mask_segment(mask *m, double ax, double ay, double bx, double by, double hw) {
    double dx = bx - ax, dy = by - ay, l2 = dx * dx + dy * dy;
    if (!(l2 > 1e-12)) {
        mask_disc(m, ax, ay, hw);
        return;
    }
    int steep = fabs(dy) > fabs(dx);
    double u0 = steep ? ay : ax, u1 = steep ? by : bx, du = steep ? dy : dx, dv = steep ? dx : dy;
    double v0 = steep ? ax : ay;
    double ext = (hw + 1.5) * sqrt(1 + (dv / du) * (dv / du));
    double lo = fmin(u0, u1) - hw - 1, hi = fmax(u0, u1) + hw + 1;
    /* Never walk far outside the canvas (huge coordinates from extreme data). */
    double lim = (steep ? m->h : m->w) + 4.0;
    if (lo < -4) lo = -4;
    if (hi > lim) hi = lim;
    for (int u = (int)floor(lo); u <= (int)ceil(hi); u++) {
        double tu = (u - u0) / du;
        if (tu < 0) tu = 0;
        if (tu > 1) tu = 1;
        double vc = v0 + tu * dv;
        for (int v = (int)floor(vc - ext); v <= (int)ceil(vc + ext); v++) {
            int x = steep ? v : u, y = steep ? u : v;
            double t = ((x - ax) * dx + (y - ay) * dy) / l2;
            if (t < 0) t = 0;
            if (t > 1) t = 1;
            mask_put(m, x, y, hw + 0.5 - hypot(x - (ax + t * dx), y - (ay + t * dy)));
        }
    }
}

/* Composites the mask in colour c, records covered pixels in occ (may be NULL), clears it. */
static void mask_flush(mask *m, image *im, rgb c, uint8_t *occ) {
    for (int y = m->clip.y0; y <= m->clip.y1; y++)
        for (int x = m->clip.x0; x <= m->clip.x1; x++) {
            size_t i = (size_t)y * (size_t)m->w + (size_t)x;
            if (m->a[i] > 0) {
                blend(im, x, y, c, (double)m->a[i]);
                if (occ && m->a[i] > 0.25f) occ[i] = 1;
                m->a[i] = 0;
            }
        }
}

/* ------------------------------------------------------------------------------------------ */
/* Font: our own 5x7 ASCII bitmap (9 rows with the descender), one string per glyph, rows      */
/* separated by spaces, '#' = ink. Rows 0-6 sit above the baseline; lower case uses rows 2-6. */

#define GLYPH_ROWS 9
#define GLYPH_COLS 5
#define GLYPH_ADV  6 /* advance per character, in font pixels */
#define CAP_ROWS   7

// clang-format off
static const char *const k_font[95] = {
    /*   */ "",
    /* ! */ "..#.. ..#.. ..#.. ..#.. ..#.. ..... ..#..",
    /* " */ ".#.#. .#.#. .#.#.",
    /* # */ ".#.#. .#.#. ##### .#.#. ##### .#.#. .#.#.",
    /* $ */ "..#.. .#### #.#.. .###. ..#.# ####. ..#..",
    /* % */ "##... ##..# ...#. ..#.. .#... #..## ...##",
    /* & */ ".##.. #..#. #.#.. .#... #.#.# #..#. .##.#",
    /* ' */ "..#.. ..#.. .#...",
    /* ( */ "...#. ..#.. .#... .#... .#... ..#.. ...#.",
    /* ) */ ".#... ..#.. ...#. ...#. ...#. ..#.. .#...",
    /* * */ "..... ..#.. #.#.# .###. #.#.# ..#.. .....",
    /* + */ "..... ..#.. ..#.. ##### ..#.. ..#.. .....",
    /* , */ "..... ..... ..... ..... ..... .##.. ..#.. .#...",
    /* - */ "..... ..... ..... ##### ..... ..... .....",
    /* . */ "..... ..... ..... ..... ..... .##.. .##..",
    /* / */ "..... ....# ...#. ..#.. .#... #.... .....",
    /* 0 */ ".###. #...# #..## #.#.# ##..# #...# .###.",
    /* 1 */ "..#.. .##.. ..#.. ..#.. ..#.. ..#.. .###.",
    /* 2 */ ".###. #...# ....# ...#. ..#.. .#... #####",
    /* 3 */ "##### ...#. ..#.. ...#. ....# #...# .###.",
    /* 4 */ "...#. ..##. .#.#. #..#. ##### ...#. ...#.",
    /* 5 */ "##### #.... ####. ....# ....# #...# .###.",
    /* 6 */ "..##. .#... #.... ####. #...# #...# .###.",
    /* 7 */ "##### ....# ...#. ..#.. .#... .#... .#...",
    /* 8 */ ".###. #...# #...# .###. #...# #...# .###.",
    /* 9 */ ".###. #...# #...# .#### ....# ...#. .##..",
    /* : */ "..... .##.. .##.. ..... .##.. .##.. .....",
    /* ; */ "..... .##.. .##.. ..... .##.. ..#.. .#...",
    /* < */ "...#. ..#.. .#... #.... .#... ..#.. ...#.",
    /* = */ "..... ..... ##### ..... ##### ..... .....",
    /* > */ ".#... ..#.. ...#. ....# ...#. ..#.. .#...",
    /* ? */ ".###. #...# ....# ...#. ..#.. ..... ..#..",
    /* @ */ ".###. #...# ....# .##.# #.#.# #.#.# .###.",
    /* A */ ".###. #...# #...# ##### #...# #...# #...#",
    /* B */ "####. #...# #...# ####. #...# #...# ####.",
    /* C */ ".###. #...# #.... #.... #.... #...# .###.",
    /* D */ "###.. #..#. #...# #...# #...# #..#. ###..",
    /* E */ "##### #.... #.... ####. #.... #.... #####",
    /* F */ "##### #.... #.... ####. #.... #.... #....",
    /* G */ ".###. #...# #.... #.### #...# #...# .####",
    /* H */ "#...# #...# #...# ##### #...# #...# #...#",
    /* I */ ".###. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    /* J */ "..### ...#. ...#. ...#. ...#. #..#. .##..",
    /* K */ "#...# #..#. #.#.. ##... #.#.. #..#. #...#",
    /* L */ "#.... #.... #.... #.... #.... #.... #####",
    /* M */ "#...# ##.## #.#.# #.#.# #...# #...# #...#",
    /* N */ "#...# #...# ##..# #.#.# #..## #...# #...#",
    /* O */ ".###. #...# #...# #...# #...# #...# .###.",
    /* P */ "####. #...# #...# ####. #.... #.... #....",
    /* Q */ ".###. #...# #...# #...# #.#.# #..#. .##.#",
    /* R */ "####. #...# #...# ####. #.#.. #..#. #...#",
    /* S */ ".#### #.... #.... .###. ....# ....# ####.",
    /* T */ "##### ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    /* U */ "#...# #...# #...# #...# #...# #...# .###.",
    /* V */ "#...# #...# #...# #...# #...# .#.#. ..#..",
    /* W */ "#...# #...# #...# #.#.# #.#.# #.#.# .#.#.",
    /* X */ "#...# #...# .#.#. ..#.. .#.#. #...# #...#",
    /* Y */ "#...# #...# .#.#. ..#.. ..#.. ..#.. ..#..",
    /* Z */ "##### ....# ...#. ..#.. .#... #.... #####",
    /* [ */ ".###. .#... .#... .#... .#... .#... .###.",
    /* \ */ "..... #.... .#... ..#.. ...#. ....# .....",
    /* ] */ ".###. ...#. ...#. ...#. ...#. ...#. .###.",
    /* ^ */ "..#.. .#.#. #...#",
    /* _ */ "..... ..... ..... ..... ..... ..... ..... #####",
    /* ` */ ".#... ..#..",
    /* a */ "..... ..... .###. ....# .#### #...# .####",
    /* b */ "#.... #.... #.##. ##..# #...# #...# ####.",
    /* c */ "..... ..... .###. #.... #.... #...# .###.",
    /* d */ "....# ....# .##.# #..## #...# #...# .####",
    /* e */ "..... ..... .###. #...# ##### #.... .###.",
    /* f */ "..##. .#..# .#... ###.. .#... .#... .#...",
    /* g */ "..... ..... .#### #...# #...# #...# .#### ....# .###.",
    /* h */ "#.... #.... #.##. ##..# #...# #...# #...#",
    /* i */ "..#.. ..... .##.. ..#.. ..#.. ..#.. .###.",
    /* j */ "...#. ..... ..##. ...#. ...#. ...#. ...#. #..#. .##..",
    /* k */ "#.... #.... #..#. #.#.. ##... #.#.. #..#.",
    /* l */ ".##.. ..#.. ..#.. ..#.. ..#.. ..#.. .###.",
    /* m */ "..... ..... ##.#. #.#.# #.#.# #.#.# #.#.#",
    /* n */ "..... ..... #.##. ##..# #...# #...# #...#",
    /* o */ "..... ..... .###. #...# #...# #...# .###.",
    /* p */ "..... ..... ####. #...# #...# #...# ####. #.... #....",
    /* q */ "..... ..... .#### #...# #...# #...# .#### ....# ....#",
    /* r */ "..... ..... #.##. ##..# #.... #.... #....",
    /* s */ "..... ..... .###. #.... .###. ....# ####.",
    /* t */ ".#... .#... ###.. .#... .#... .#..# ..##.",
    /* u */ "..... ..... #...# #...# #...# #..## .##.#",
    /* v */ "..... ..... #...# #...# #...# .#.#. ..#..",
    /* w */ "..... ..... #...# #...# #.#.# #.#.# .#.#.",
    /* x */ "..... ..... #...# .#.#. ..#.. .#.#. #...#",
    /* y */ "..... ..... #...# #...# #...# #...# .#### ....# .###.",
    /* z */ "..... ..... ##### ...#. ..#.. .#... #####",
    /* { */ "...#. ..#.. ..#.. .#... ..#.. ..#.. ...#.",
    /* | */ "..#.. ..#.. ..#.. ..#.. ..#.. ..#.. ..#..",
    /* } */ ".#... ..#.. ..#.. ...#. ..#.. ..#.. .#...",
    /* ~ */ "..... ..... .#... #.#.# ...#. ..... .....",
};
// clang-format on

static uint8_t g_glyph[95][GLYPH_ROWS]; /* decoded k_font: bit 4 = leftmost column */

static void font_init(void) {
    for (int c = 0; c < 95; c++) {
        const char *s = k_font[c];
        for (int r = 0; r < GLYPH_ROWS && *s; r++) {
            uint8_t bits = 0;
            for (int col = 0; col < GLYPH_COLS && *s && *s != ' '; col++, s++)
                if (*s == '#') bits |= (uint8_t)(1u << (GLYPH_COLS - 1 - col));
            g_glyph[c][r] = bits;
            while (*s == ' ')
                s++;
        }
    }
}

/* Next character to draw: ASCII as is, any other UTF-8 sequence as one '?'. */
static int next_char(const char **ps) {
    const unsigned char *s = (const unsigned char *)*ps;
    int c = *s++;
    if (c >= 0x80) {
        while ((*s & 0xC0) == 0x80)
            s++;
        c = '?';
    } else if (c < 32 || c > 126) {
        c = '?';
    }
    *ps = (const char *)s;
    return c;
}

static int text_width(const char *s, int sc) {
    int n = 0;
    while (*s)
        next_char(&s), n++;
    return n ? (n * GLYPH_ADV - 1) * sc : 0;
}

/* Draws s with its cap box's top-left corner at (x, y), font pixels scaled by sc. up: the text
 * runs bottom-to-top (a y-axis label), (x, y) is then the bottom-left corner as seen rotated.
 * bold: each stroke one pixel wider. */
static void draw_text(image *im, int x, int y, const char *s, int sc, rgb c, int up, int bold) {
    for (int pen = 0; *s; pen += GLYPH_ADV * sc) {
        const uint8_t *g = g_glyph[next_char(&s) - 32];
        for (int r = 0; r < GLYPH_ROWS; r++)
            for (int col = 0; col < GLYPH_COLS; col++) {
                if (!(g[r] >> (GLYPH_COLS - 1 - col) & 1)) continue;
                for (int i = 0; i < sc + (bold ? 1 : 0); i++)
                    for (int j = 0; j < sc; j++) {
                        int gx = pen + col * sc + i, gy = r * sc + j;
                        if (up)
                            blend(im, x + gy, y - gx, c, 1);
                        else
                            blend(im, x + gx, y + gy, c, 1);
                    }
            }
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Axes and ticks                                                                              */

typedef struct {
    double lo, hi; /* in drawing space: data for linear, log10(data) for log */
    int log;
} axis;

typedef struct {
    double v;  /* drawing space */
    int major; /* labelled, with a grid line */
    char label[32];
} tick;

static double axis_t(const axis *a, double v) {
    if (a->log) v = log10(v);
    return (v - a->lo) / (a->hi - a->lo);
}

/* Label for a linear tick at step spacing: as many decimals as the step needs. */
static void fmt_lin(char *out, size_t n, double v, double step) {
    if (fabs(v) < step * 1e-6) v = 0; /* no "-0" or "1e-17" at the origin */
    double mag = fmax(fabs(v), step);
    if (mag >= 1e6 || step < 1e-5) {
        snprintf(out, n, "%.6g", v);
        return;
    }
    int dec = (int)-floor(log10(step) + 1e-9);
    snprintf(out, n, "%.*f", dec > 0 ? dec : 0, v);
}

/* Ticks at 1-2-5 x 10^k steps inside [lo, hi], at most target of them. Returns the count. */
static int lin_ticks(double lo, double hi, int target, tick *t, int log_space) {
    double raw = (hi - lo) / (target > 1 ? target : 1);
    double mag = pow(10, floor(log10(raw)));
    static const double k_mult[] = {1, 2, 5, 10};
    double step = 10 * mag;
    for (int i = 0; i < 4; i++)
        if ((hi - lo) / (k_mult[i] * mag) <= target) {
            step = k_mult[i] * mag;
            break;
        }
    int n = 0;
    for (double k = ceil(lo / step - 1e-9); n < MAX_TICKS; k++) {
        double v = k * step;
        if (v > hi + step * 1e-9) break;
        t[n].v = log_space ? log10(v) : v;
        t[n].major = 1;
        fmt_lin(t[n].label, sizeof t[n].label, v, step);
        n++;
    }
    return n;
}

static void fmt_log(char *out, size_t n, int m, int e) {
    if (e >= -4 && e <= 5)
        snprintf(out, n, "%.*f", e < 0 ? -e : 0, m * pow(10, e));
    else
        snprintf(out, n, "%de%d", m, e);
}

/* Decades (1, 10, 100, ...), or 1-2-5 per decade, or 1..9 per decade, whichever first gives
 * at least 3 labels; the other mantissas become unlabelled minor ticks. A range under a
 * decade with too few of those falls back to linear 1-2-5 ticks placed on the log scale. */
static int log_ticks(double lo, double hi, int max_major, tick *t) {
    static const int k_sets[3][10] = {{1}, {1, 2, 5}, {1, 2, 3, 4, 5, 6, 7, 8, 9}};
    static const int k_sizes[3] = {1, 3, 9};
    int e0 = (int)floor(lo) - 1, e1 = (int)ceil(hi) + 1;
    int n_dec = e1 - e0;
    for (int s = 0; s < 3; s++) {
        int count = 0;
        for (int e = e0; e <= e1; e++)
            for (int i = 0; i < k_sizes[s]; i++) {
                double l = log10(k_sets[s][i]) + e;
                count += l >= lo - 1e-9 && l <= hi + 1e-9;
            }
        if (count < 3 && !(s == 2 && count >= 2)) continue;
        /* Many decades: label every every-th one only, and drop the minor ticks. */
        int every = s == 0 && count > max_major ? (count + max_major - 1) / max_major : 1;
        int minors = every == 1 && s < 2 && n_dec <= 10;
        int n = 0;
        for (int e = e0; e <= e1 && n < MAX_TICKS; e++)
            for (int m = 1; m <= 9 && n < MAX_TICKS; m++) {
                int major = 0;
                for (int i = 0; i < k_sizes[s]; i++)
                    major |= k_sets[s][i] == m;
                major = major && (m != 1 || e % every == 0);
                double l = log10(m) + e;
                if (l < lo - 1e-9 || l > hi + 1e-9 || (!major && !minors)) continue;
                t[n].v = l;
                t[n].major = major;
                t[n].label[0] = 0;
                if (major) fmt_log(t[n].label, sizeof t[n].label, m, e);
                n++;
            }
        return n;
    }
    return lin_ticks(pow(10, lo), pow(10, hi), 5, t, 1);
}

/* Data range [lo, hi] to an axis range padded by frac of its span on each side (so markers at
 * the ends stay inside the frame); a single value gets a span around it. */
static void axis_range(axis *a, double lo, double hi, double frac, int log) {
    a->log = log;
    if (log) lo = log10(lo), hi = log10(hi);
    if (hi - lo <= fabs(hi) * 1e-12) {
        double d = log ? 0.1 : (hi != 0 ? fabs(hi) * 0.05 : 0.5);
        lo -= d;
        hi += d;
    }
    double pad = (hi - lo) * frac;
    a->lo = lo - pad;
    a->hi = hi + pad;
}

/* ------------------------------------------------------------------------------------------ */
/* Chart                                                                                       */

typedef struct {
    rect plot; /* the frame */
    axis ax, ay;
    int nx, ny; /* tick counts */
    tick xt[MAX_TICKS], yt[MAX_TICKS];
    int sc; /* text scale */
} layout;

static int max_label_width(const tick *t, int n, int sc) {
    int w = 0;
    for (int i = 0; i < n; i++) {
        int tw = text_width(t[i].label, sc);
        if (tw > w) w = tw;
    }
    return w;
}

/* Places the frame so titles, labels and tick labels fit around it, and picks the ticks. */
static int do_layout(const options *o, const char *xlabel, layout *L) {
    const int sc = o->width >= 600 && o->height >= 360 ? 2 : 1;
    const int th = CAP_ROWS * sc, desc = 2 * sc;
    const int pad = 6 * sc, tick_len = 3 * sc, gap = 3 * sc;
    L->sc = sc;
    int top = pad + (o->title && *o->title ? th + desc + 2 * pad : th / 2);
    int bottom = tick_len + gap + th + desc + pad + (xlabel && *xlabel ? th + desc + gap : 0);
    int y0 = top, y1 = o->height - 1 - bottom;
    int plot_h = y1 - y0;
    if (plot_h < 40) return fail("--height %d leaves no room for the plot", o->height);

    int target = plot_h / (th * 3);
    if (target < 2) target = 2;
    if (target > 10) target = 10;
    if (L->ay.log)
        L->ny = log_ticks(L->ay.lo, L->ay.hi, target, L->yt);
    else
        L->ny = lin_ticks(L->ay.lo, L->ay.hi, target, L->yt, 0);
    int left = pad + (o->ylabel && *o->ylabel ? th + desc + 2 * gap : 0) +
               max_label_width(L->yt, L->ny, sc) + gap + tick_len;
    int right = pad + 4 * sc;
    int x0 = left, x1 = o->width - 1 - right;
    /* Two passes: the last x label may stick out past the frame and need a wider margin. */
    for (int pass = 0; pass < 2; pass++) {
        int plot_w = x1 - x0;
        if (plot_w < 40) return fail("--width %d leaves no room for the plot", o->width);
        for (target = 10; target >= 2; target--) {
            L->nx = lin_ticks(L->ax.lo, L->ax.hi, target, L->xt, 0);
            int lw = max_label_width(L->xt, L->nx, sc);
            if (L->nx <= 1 || (double)plot_w / L->nx >= lw + 8.0 * sc) break;
        }
        if (L->nx > 0) {
            const tick *last = &L->xt[L->nx - 1];
            double px = x0 + (last->v - L->ax.lo) / (L->ax.hi - L->ax.lo) * plot_w;
            int overhang = (int)ceil(px + text_width(last->label, sc) / 2.0) - (o->width - 1 - pad);
            if (overhang > 0 && pass == 0) x1 -= overhang;
        }
    }
    L->plot = (rect){x0, y0, x1, y1};
    return 0;
}

static double map_x(const layout *L, double x) {
    return L->plot.x0 + axis_t(&L->ax, x) * (L->plot.x1 - L->plot.x0);
}

static double map_y(const layout *L, double y) {
    return L->plot.y1 - axis_t(&L->ay, y) * (L->plot.y1 - L->plot.y0);
}

/* The marker radius: dots only while they stay apart (dense logs get plain lines). */
static double marker_radius(const layout *L, const table *t) {
    double per_px = (double)t->n_rows / (L->plot.x1 - L->plot.x0 + 1);
    return per_px > 1.0 / 8 ? 0 : (L->sc >= 2 ? 2.6 : 1.8);
}

static void draw_series(image *im, mask *m, const layout *L, const table *t, int s, uint8_t *occ) {
    const double hw = L->sc >= 2 ? 1.0 : 0.75, r = marker_radius(L, t);
    m->clip = (rect){L->plot.x0 + 1, L->plot.y0 + 1, L->plot.x1 - 1, L->plot.y1 - 1};
    int have_prev = 0;
    double px = 0, py = 0;
    for (size_t i = 0; i < t->n_rows; i++) {
        double v = t->y[i * (size_t)t->n_series + (size_t)s];
        if (isnan(v)) continue;
        double cx = map_x(L, t->x[i]), cy = map_y(L, v);
        if (have_prev)
            mask_segment(m, px, py, cx, cy, hw);
        else
            mask_disc(m, cx, cy, hw); /* a lone point still shows without markers */
        if (r > 0) mask_disc(m, cx, cy, r);
        px = cx, py = cy, have_prev = 1;
    }
    mask_flush(m, im, k_palette[s], occ);
}

/* Grid lines at the ticks, drawn first (under the series); the minor ones fainter. */
static void draw_grid(image *im, const layout *L) {
    const rect P = L->plot;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < L->ny; i++) {
            if (L->yt[i].major != pass) continue;
            int y =
                (int)lround(P.y1 - (L->yt[i].v - L->ay.lo) / (L->ay.hi - L->ay.lo) * (P.y1 - P.y0));
            if (y > P.y0 && y < P.y1)
                fill_rect(im, P.x0 + 1, y, P.x1 - 1, y, pass ? k_grid : k_grid_minor, 1);
        }
    }
    for (int i = 0; i < L->nx; i++) {
        int x = (int)lround(map_x(L, L->xt[i].v));
        if (x > P.x0 && x < P.x1) fill_rect(im, x, P.y0 + 1, x, P.y1 - 1, k_grid, 1);
    }
}

/* Frame, ticks, tick labels, axis labels and title: drawn over the series. */
static void draw_frame(image *im, const layout *L, const char *xlabel, const options *o) {
    const rect P = L->plot;
    const int sc = L->sc, th = CAP_ROWS * sc, desc = 2 * sc, tick_len = 3 * sc, gap = 3 * sc;
    const int pad = 6 * sc;
    fill_rect(im, P.x0, P.y0, P.x1, P.y0, k_frame, 1);
    fill_rect(im, P.x0, P.y1, P.x1, P.y1, k_frame, 1);
    fill_rect(im, P.x0, P.y0, P.x0, P.y1, k_frame, 1);
    fill_rect(im, P.x1, P.y0, P.x1, P.y1, k_frame, 1);
    for (int i = 0; i < L->ny; i++) {
        const tick *t = &L->yt[i];
        int y = (int)lround(P.y1 - (t->v - L->ay.lo) / (L->ay.hi - L->ay.lo) * (P.y1 - P.y0));
        int len = t->major ? tick_len : (tick_len + 1) / 2;
        fill_rect(im, P.x0 - len, y, P.x0 - 1, y, k_frame, 1);
        if (t->major)
            draw_text(im, P.x0 - tick_len - gap - text_width(t->label, sc), y - th / 2, t->label,
                      sc, k_tick_text, 0, 0);
    }
    for (int i = 0; i < L->nx; i++) {
        const tick *t = &L->xt[i];
        int x = (int)lround(map_x(L, t->v));
        fill_rect(im, x, P.y1 + 1, x, P.y1 + tick_len, k_frame, 1);
        draw_text(im, x - text_width(t->label, sc) / 2, P.y1 + tick_len + gap, t->label, sc,
                  k_tick_text, 0, 0);
    }
    int cx = (P.x0 + P.x1) / 2, cy = (P.y0 + P.y1) / 2;
    if (xlabel && *xlabel)
        draw_text(im, cx - text_width(xlabel, sc) / 2, P.y1 + tick_len + gap + th + desc + gap,
                  xlabel, sc, k_text, 0, 0);
    if (o->ylabel && *o->ylabel)
        draw_text(im, pad, cy + text_width(o->ylabel, sc) / 2, o->ylabel, sc, k_text, 1, 0);
    if (o->title && *o->title)
        draw_text(im, cx - (text_width(o->title, sc) + 1) / 2, pad, o->title, sc, k_text, 0, 1);
}

/* Legend box in the top-right corner of the frame; if that would hide data, the corner that
 * hides least (top-left, bottom-right, bottom-left, in that order on ties). */
static void draw_legend(image *im, mask *m, const layout *L, const table *t, const uint8_t *occ) {
    const int sc = L->sc, th = CAP_ROWS * sc, inset = 5 * sc, in = 4 * sc;
    const int row_h = (GLYPH_ROWS + 2) * sc, swatch = 12 * sc;
    int tw = 0;
    for (int s = 0; s < t->n_series; s++) {
        int w = text_width(t->names[s], sc);
        if (w > tw) tw = w;
    }
    int bw = in + swatch + 3 * sc + tw + in, bh = in + t->n_series * row_h - 2 * sc + in;
    const rect P = L->plot;
    int xs[2] = {P.x1 - inset - bw, P.x0 + inset}, ys[2] = {P.y0 + inset, P.y1 - inset - bh};
    static const int k_order[4][2] = {{0, 0}, {1, 0}, {0, 1}, {1, 1}};
    int best = 0;
    long best_hits = -1;
    for (int k = 0; k < 4; k++) {
        int bx = xs[k_order[k][0]], by = ys[k_order[k][1]];
        long hits = 0;
        for (int y = by; y < by + bh; y++)
            for (int x = bx; x < bx + bw; x++)
                if (x >= 0 && y >= 0 && x < im->w && y < im->h)
                    hits += occ[(size_t)y * (size_t)im->w + (size_t)x];
        if (best_hits < 0 || hits < best_hits) best = k, best_hits = hits;
        if (hits == 0) break;
    }
    int bx = xs[k_order[best][0]], by = ys[k_order[best][1]];
    fill_rect(im, bx, by, bx + bw - 1, by + bh - 1, k_white, 0.88);
    fill_rect(im, bx, by, bx + bw - 1, by, k_legend_edge, 1);
    fill_rect(im, bx, by + bh - 1, bx + bw - 1, by + bh - 1, k_legend_edge, 1);
    fill_rect(im, bx, by, bx, by + bh - 1, k_legend_edge, 1);
    fill_rect(im, bx + bw - 1, by, bx + bw - 1, by + bh - 1, k_legend_edge, 1);
    const double hw = sc >= 2 ? 1.0 : 0.75, r = marker_radius(L, t);
    m->clip = (rect){bx + 1, by + 1, bx + bw - 2, by + bh - 2};
    for (int s = 0; s < t->n_series; s++) {
        int ty = by + in + s * row_h, my = ty + th / 2;
        mask_segment(m, bx + in, my, bx + in + swatch, my, hw);
        if (r > 0) mask_disc(m, bx + in + swatch / 2.0, my, r);
        mask_flush(m, im, k_palette[s], NULL);
        draw_text(im, bx + in + swatch + 3 * sc, ty, t->names[s], sc, k_text, 0, 0);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* PNG output                                                                                  */

static void png_on_error(png_structp png, png_const_charp msg) {
    fail("libpng: %s", msg);
    png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
    (void)png;
    (void)msg;
}

static void png_rows(png_structp png, const image *im) {
    for (int y = 0; y < im->h; y++)
        png_write_row(png, im->px + (size_t)y * (size_t)im->w * 3);
}

static int png_write(FILE *fp, const image *im) {
    png_structp png =
        png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, png_on_error, png_on_warning);
    if (!png) return fail("out of memory (libpng)");
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return fail("out of memory (libpng)");
    }
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        return -1;
    }
    png_init_io(png, fp);
    png_set_IHDR(png, info, (png_uint_32)im->w, (png_uint_32)im->h, 8, PNG_COLOR_TYPE_RGB,
                 PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
    png_write_info(png, info);
    png_rows(png, im);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    return 0;
}

/* Writes path.tmp.XXXXXX next to path, then renames it over path: readers never see a
 * half-written PNG, and a failure leaves any previous file untouched. */
static int save_png(const char *path, const image *im) {
    size_t n = strlen(path);
    char *tmp = malloc(n + 16);
    if (!tmp) return fail("out of memory");
    snprintf(tmp, n + 16, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        fail("cannot create '%s': %s", tmp, strerror(errno));
        free(tmp);
        return -1;
    }
    mode_t um = umask(0); /* mkstemp makes 0600; give the PNG the usual 0666 & ~umask */
    umask(um);
    int rc = fchmod(fd, 0666 & ~um) ? fail("cannot chmod '%s': %s", tmp, strerror(errno)) : 0;
    FILE *fp = fdopen(fd, "wb");
    if (!fp) {
        close(fd);
        rc = fail("cannot open '%s': %s", tmp, strerror(errno));
    }
    if (rc == 0) rc = png_write(fp, im);
    if (fp) {
        if (rc == 0 && fflush(fp) != 0) rc = fail("cannot write '%s': %s", tmp, strerror(errno));
        if (rc == 0 && fsync(fileno(fp)) != 0 && errno != EINVAL)
            rc = fail("cannot sync '%s': %s", tmp, strerror(errno));
        if (fclose(fp) != 0 && rc == 0) rc = fail("cannot write '%s': %s", tmp, strerror(errno));
    }
    if (rc == 0 && rename(tmp, path) != 0)
        rc = fail("cannot rename '%s' to '%s': %s", tmp, path, strerror(errno));
    if (rc) unlink(tmp);
    free(tmp);
    return rc;
}

/* ------------------------------------------------------------------------------------------ */
/* main                                                                                        */

static int run(const options *o) {
    table t;
    if (load_csv(o->csv, &t)) return -1;
    int rc = 0;
    double xmin = HUGE_VAL, xmax = -HUGE_VAL, ymin = HUGE_VAL, ymax = -HUGE_VAL;
    for (size_t i = 0; i < t.n_rows; i++) {
        xmin = fmin(xmin, t.x[i]);
        xmax = fmax(xmax, t.x[i]);
        for (int s = 0; s < t.n_series; s++) {
            double v = t.y[i * (size_t)t.n_series + (size_t)s];
            if (isnan(v)) continue;
            if (o->logy && !(v > 0)) {
                rc = fail("--logy needs positive values: series '%s' has %g at %s = %g", t.names[s],
                          v, t.xname, t.x[i]);
                goto done;
            }
            ymin = fmin(ymin, v);
            ymax = fmax(ymax, v);
        }
    }
    if (!(ymin <= ymax)) {
        rc = fail("no data points: every series field is empty");
        goto done;
    }
    /* Spans that overflow double (e.g. -1e308..1e308) cannot be mapped to pixels. */
    if (!isfinite(xmax - xmin) || !isfinite(ymax - ymin)) {
        rc = fail("data range too large to plot");
        goto done;
    }
    const char *xlabel = o->xlabel ? o->xlabel : t.xname;
    layout *L = calloc(1, sizeof *L);
    image im = {o->width, o->height, NULL};
    size_t npx = (size_t)o->width * (size_t)o->height;
    mask m = {o->width, o->height, NULL, {0, 0, 0, 0}};
    uint8_t *occ = calloc(npx, 1);
    im.px = malloc(npx * 3);
    m.a = calloc(npx, sizeof *m.a);
    if (!L || !occ || !im.px || !m.a) {
        rc = fail("out of memory");
    } else {
        axis_range(&L->ax, xmin, xmax, 0.03, 0);
        axis_range(&L->ay, ymin, ymax, 0.05, o->logy);
        rc = do_layout(o, xlabel, L);
    }
    if (rc == 0) {
        memset(im.px, 255, npx * 3);
        draw_grid(&im, L);
        for (int s = 0; s < t.n_series; s++)
            draw_series(&im, &m, L, &t, s, occ);
        draw_frame(&im, L, xlabel, o);
        draw_legend(&im, &m, L, &t, occ);
        rc = save_png(o->out, &im);
    }
    if (rc == 0 && o->print_layout) {
        const rect P = L->plot;
        double ylo = L->ay.log ? pow(10, L->ay.lo) : L->ay.lo;
        double yhi = L->ay.log ? pow(10, L->ay.hi) : L->ay.hi;
        printf("plot %d %d %d %d\n", P.x0, P.y0, P.x1, P.y1);
        printf("x %.17g %.17g\n", L->ax.lo, L->ax.hi);
        printf("y %.17g %.17g %s\n", ylo, yhi, L->ay.log ? "log" : "lin");
        if (fflush(stdout) != 0) rc = fail("cannot write the layout to stdout");
    }
    free(L);
    free(occ);
    free(im.px);
    free(m.a);
done:
    table_free(&t);
    return rc;
}

int main(int argc, char **argv) {
    options o;
    int r = parse_args(argc, argv, &o);
    if (r == 1) {
        fputs(k_usage, stdout);
        return 0;
    }
    font_init();
    if (r == 0) r = run(&o);
    if (r) {
        fprintf(stderr, "plot_curve: %s\n", g_err[0] ? g_err : "failed");
        return 1;
    }
    return 0;
}
