/* dataset_gen.c - generated image folders with matching oracle scenes (dataset_gen.h). */
#include "dataset_gen.h"

#include "cli_run.h"
#include "core.h"
#include "io/image.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    int id, parent;
    const char *name;
    double iou, gain;
    char type; /* 'r' rect, 'e' ellipse */
    double cx, cy, rx, ry;
    int hole; /* a centred elliptic hole of a third of the radii */
    unsigned char rgb[3];
} obj;

/* scene_a's main objects (1200 x 900 frame). */
static const obj k_objs[] = {
    {15, -1, "wall", 0.93, 100, 'r', 600, 220, 600, 222, 0, {180, 170, 150}},
    {16, -1, "floor", 0.92, 100, 'r', 600, 672, 600, 230, 0, {120, 100, 80}},
    {1, -1, "table", 0.95, 120, 'r', 600, 640, 520, 200, 0, {150, 90, 40}},
    {2, 1, "plate1", 0.96, 160, 'e', 330, 640, 170, 120, 0, {240, 240, 235}},
    {3, 2, "food1", 0.93, 200, 'e', 330, 640, 70, 50, 0, {200, 60, 40}},
    {5, 1, "plate2", 0.97, 160, 'e', 800, 630, 200, 130, 0, {230, 230, 240}},
    {6, 5, "cheese", 0.94, 200, 'r', 800, 630, 90, 60, 0, {250, 210, 60}},
    {8, -1, "ring", 0.95, 140, 'e', 200, 200, 110, 110, 1, {60, 120, 200}},
    {9, -1, "box", 0.92, 180, 'r', 620, 200, 120, 90, 0, {40, 160, 90}},
    {12, -1, "doubtful", 0.8, 160, 'e', 1130, 90, 50, 50, 0, {160, 60, 160}},
};
#define N_OBJS ((int)(sizeof k_objs / sizeof k_objs[0]))

/* The object scaled to W x H; the variant shifts the small objects. */
static obj place(const obj *o, int W, int H, int v) {
    obj p = *o;
    double sx = W / 1200.0, sy = H / 900.0;
    double shift = (o->rx < 300) ? ((v * 37) % 61 - 30) : 0;
    p.cx = (o->cx + shift) * sx;
    p.cy = (o->cy + shift / 2) * sy;
    p.rx = o->rx * sx;
    p.ry = o->ry * sy;
    return p;
}

static double field(const obj *p, double X, double Y) {
    double f;
    if (p->type == 'e') {
        double dx = (X - p->cx) / p->rx, dy = (Y - p->cy) / p->ry;
        f = (1 - dx * dx) - dy * dy;
    } else {
        double a = 1 - (X > p->cx ? X - p->cx : p->cx - X) / p->rx;
        double b = 1 - (Y > p->cy ? Y - p->cy : p->cy - Y) / p->ry;
        f = a < b ? a : b;
    }
    if (p->hole) {
        double dx = (X - p->cx) / (p->rx / 3), dy = (Y - p->cy) / (p->ry / 3);
        double h = (1 - dx * dx) - dy * dy;
        if (-h < f) f = -h;
    }
    return f;
}

int dg_write_scene(const char *path, int W, int H, int v) {
    FILE *f = fopen(path, "w");
    if (!f) return -1;
    fprintf(f, "{\"name\": \"gen_%d\", \"width\": %d, \"height\": %d,\n"
               " \"background\": {\"radius\": 24.0, \"gain\": 10.0, \"iou\": [0.6, 0.5, 0.4]},\n"
               " \"duplicate_penalty\": 0.15,\n \"objects\": [",
            v, W, H);
    for (int i = 0; i < N_OBJS; i++) {
        obj p = place(&k_objs[i], W, H, v);
        fprintf(f, "%s\n  {\"id\": %d, \"name\": \"%s\", \"parent\": ", i ? "," : "", p.id, p.name);
        if (p.parent < 0) fprintf(f, "null");
        else fprintf(f, "%d", p.parent);
        fprintf(f, ", \"iou\": %.2f, \"gain\": %.1f, \"shapes\": [{\"type\": \"%s\", \"cx\": %.3f, "
                   "\"cy\": %.3f, \"rx\": %.3f, \"ry\": %.3f}]",
                p.iou, p.gain, p.type == 'e' ? "ellipse" : "rect", p.cx, p.cy, p.rx, p.ry);
        if (p.hole)
            fprintf(f, ", \"holes\": [{\"type\": \"ellipse\", \"cx\": %.3f, \"cy\": %.3f, "
                       "\"rx\": %.3f, \"ry\": %.3f}]",
                    p.cx, p.cy, p.rx / 3, p.ry / 3);
        fprintf(f, "}");
    }
    fprintf(f, "\n ]}\n");
    return fclose(f) ? -1 : 0;
}

int dg_write_image(const char *path, int W, int H, int v) {
    unsigned char *rgb = malloc((size_t)W * H * 3);
    if (!rgb) return -1;
    obj p[N_OBJS];
    for (int i = 0; i < N_OBJS; i++) p[i] = place(&k_objs[i], W, H, v);
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            unsigned char *px = rgb + 3 * ((size_t)y * W + x);
            px[0] = (unsigned char)(90 + (x * 50) / W);
            px[1] = (unsigned char)(90 + (y * 50) / H);
            px[2] = 100;
            for (int i = 0; i < N_OBJS; i++)
                if (field(&p[i], x + 0.5, y + 0.5) > 0) memcpy(px, p[i].rgb, 3);
            /* a little texture so that JPEG-like smoothness is not all there is */
            px[0] = (unsigned char)(px[0] ^ ((x * 7 + y * 13 + v) & 7));
        }
    int rc = ts_png_write(path, rgb, W, H, 3);
    free(rgb);
    return rc ? -1 : 0;
}

static int is_dir(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int dg_make_dataset(const char *images, const char *scenes, int n) {
    static const struct { const char *file, *ext; int w, h; } fx[] = {
        {"images/picture1.jpg", "jpg", 769, 770},
        {"images/shapes.png", "png", 640, 480},
        {"images/shapes_rgba.png", "png", 640, 480},
        {"images/shapes_palette.png", "png", 640, 480},
    };
    static const int sizes[][2] = {{500, 400}, {360, 240}, {700, 520}, {420, 600},
                                   {640, 360}, {300, 300}, {560, 420}, {480, 640}};
    if (mkdir(images, 0755) && !is_dir(images)) return -1;
    if (scenes && mkdir(scenes, 0755) && !is_dir(scenes)) return -1;
    char path[1024];
    int k = 0;
    for (int i = 0; i < n; i++) {
        int W, H, from_fixture = i % 2 == 1 && k < 4 && fixture_exists(fx[k].file);
        if (from_fixture) {
            snprintf(path, sizeof path, "%s/fix_%02d.%s", images, i, fx[k].ext);
            if (cli_copy_file(fixture(fx[k].file), path)) return -1;
            W = fx[k].w;
            H = fx[k].h;
            k++;
            snprintf(path, sizeof path, "%s/fix_%02d.json", scenes ? scenes : "", i);
        } else {
            W = sizes[i % 8][0];
            H = sizes[i % 8][1];
            snprintf(path, sizeof path, "%s/img_%02d.png", images, i);
            if (dg_write_image(path, W, H, i)) return -1;
            snprintf(path, sizeof path, "%s/img_%02d.json", scenes ? scenes : "", i);
        }
        if (scenes && dg_write_scene(path, W, H, i)) return -1;
    }
    return 0;
}
