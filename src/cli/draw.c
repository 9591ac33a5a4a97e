/* draw.c - overlay drawing: mask tints, prompt points, boxes. */
#include "cli/draw.h"

#include <math.h>
#include <stddef.h>

static void put(uint8_t *rgb, int w, int h, int x, int y, const uint8_t c[3]) {
    if (x < 0 || y < 0 || x >= w || y >= h) return;
    uint8_t *p = rgb + ((size_t)y * w + x) * 3;
    p[0] = c[0];
    p[1] = c[1];
    p[2] = c[2];
}

void ts_draw_mask(uint8_t *rgb, int w, int h, const uint8_t *mask, const uint8_t color[3],
                  float alpha) {
    for (int y = 0; y < h; y++) {
        for (int x = 0; x < w; x++) {
            size_t i = (size_t)y * w + x;
            if (!mask[i]) continue;
            int edge = (x == 0 || !mask[i - 1]) || (x == w - 1 || !mask[i + 1]) ||
                       (y == 0 || !mask[i - (size_t)w]) || (y == h - 1 || !mask[i + (size_t)w]);
            float a = edge ? 0.9f : alpha;
            uint8_t *p = rgb + i * 3;
            for (int c = 0; c < 3; c++)
                p[c] = (uint8_t)lrintf((1.0f - a) * p[c] + a * (edge ? color[c] * 0.6f : color[c]));
        }
    }
}

void ts_draw_point(uint8_t *rgb, int w, int h, float x, float y, float radius,
                   const uint8_t color[3]) {
    static const uint8_t white[3] = {255, 255, 255};
    float rim = radius + fmaxf(1.5f, radius * 0.3f);
    int r = (int)ceilf(rim);
    for (int dy = -r; dy <= r; dy++)
        for (int dx = -r; dx <= r; dx++) {
            float d = sqrtf((float)(dx * dx + dy * dy));
            if (d <= radius) put(rgb, w, h, (int)x + dx, (int)y + dy, color);
            else if (d <= rim) put(rgb, w, h, (int)x + dx, (int)y + dy, white);
        }
}

void ts_draw_box(uint8_t *rgb, int w, int h, float x0, float y0, float x1, float y1,
                 int thickness, const uint8_t color[3]) {
    int ix0 = (int)x0, iy0 = (int)y0, ix1 = (int)x1, iy1 = (int)y1;
    for (int t = 0; t < thickness; t++) {
        for (int x = ix0 - t; x <= ix1 + t; x++) {
            put(rgb, w, h, x, iy0 - t, color);
            put(rgb, w, h, x, iy1 + t, color);
        }
        for (int y = iy0 - t; y <= iy1 + t; y++) {
            put(rgb, w, h, ix0 - t, y, color);
            put(rgb, w, h, ix1 + t, y, color);
        }
    }
}

void ts_draw_palette(int i, uint8_t color[3]) {
    float hue = fmodf(0.61803398875f * (float)i + 0.1f, 1.0f) * 6.0f;
    float s = 0.75f, v = 0.95f;
    int k = (int)hue;
    float f = hue - (float)k, p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
    float r, g, b;
    switch (k % 6) {
    case 0: r = v, g = t, b = p; break;
    case 1: r = q, g = v, b = p; break;
    case 2: r = p, g = v, b = t; break;
    case 3: r = p, g = q, b = v; break;
    case 4: r = t, g = p, b = v; break;
    default: r = v, g = p, b = q; break;
    }
    color[0] = (uint8_t)(r * 255.0f);
    color[1] = (uint8_t)(g * 255.0f);
    color[2] = (uint8_t)(b * 255.0f);
}
