/* draw.h - minimal drawing on RGB images for the overlays the CLI writes. */
#ifndef TS_CLI_DRAW_H
#define TS_CLI_DRAW_H

#include <stdint.h>

/* Blends colour into pixels where mask is nonzero: out = (1-alpha)*pixel + alpha*colour,
 * and darkens the mask's boundary pixels so that adjacent masks stay distinguishable. */
void ts_draw_mask(uint8_t *rgb, int w, int h, const uint8_t *mask, const uint8_t color[3],
                  float alpha);
/* Filled disc with a white rim. */
void ts_draw_point(uint8_t *rgb, int w, int h, float x, float y, float radius,
                   const uint8_t color[3]);
/* Rectangle outline of the given thickness. */
void ts_draw_box(uint8_t *rgb, int w, int h, float x0, float y0, float x1, float y1,
                 int thickness, const uint8_t color[3]);
/* A distinct colour for index i (golden-ratio hue steps). */
void ts_draw_palette(int i, uint8_t color[3]);

#endif
