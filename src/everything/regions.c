/* regions.c - remove_small_regions of segment_anything/utils/amg.py: 8-connected components
 * (OpenCV connectedComponentsWithStats semantics), holes filled / islands dropped below an
 * area. Component order follows OpenCV's 2x2-block raster order, which only matters for the
 * "keep the largest" tie-break. */
#include "core.h"
#include "everything/amg.h"

#include <stdlib.h>

static int find(int *parent, int x) {
    while (parent[x] != x) {
        parent[x] = parent[parent[x]];
        x = parent[x];
    }
    return x;
}

static void unite(int *parent, int a, int b) {
    a = find(parent, a);
    b = find(parent, b);
    if (a < b) parent[b] = a;
    else if (b < a) parent[a] = b;
}

int ts_remove_small_regions(uint8_t *mask, int W, int H, int min_area, int islands, int *changed) {
    size_t n = (size_t)W * H;
    *changed = 0;
    int *lab = malloc(sizeof(int) * (n ? n : 1));
    if (!lab) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    /* pixels of the working mask: foreground for islands, background for holes */
    uint8_t want = islands ? 1 : 0;
    for (size_t i = 0; i < n; i++) lab[i] = (mask[i] != 0) == want ? (int)i : -1;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            size_t i = (size_t)y * W + x;
            if (lab[i] < 0) continue;
            if (x > 0 && lab[i - 1] >= 0) unite(lab, (int)i, (int)(i - 1));
            if (y > 0) {
                size_t u = i - (size_t)W;
                if (lab[u] >= 0) unite(lab, (int)i, (int)u);
                if (x > 0 && lab[u - 1] >= 0) unite(lab, (int)i, (int)(u - 1));
                if (x + 1 < W && lab[u + 1] >= 0) unite(lab, (int)i, (int)(u + 1));
            }
        }
    /* roots are each component's first pixel in raster order; sizes and OpenCV order keys */
    int *size = calloc(n ? n : 1, sizeof(int));
    long long *key = malloc(sizeof(long long) * (n ? n : 1));
    if (!size || !key) {
        free(lab);
        free(size);
        free(key);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    int bw = (W + 1) / 2;
    for (size_t i = 0; i < n; i++) key[i] = -1;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            size_t i = (size_t)y * W + x;
            if (lab[i] < 0) continue;
            int r = find(lab, (int)i);
            lab[i] = r;
            size[r]++;
            long long k = (long long)(y / 2) * bw + x / 2;
            if (key[r] < 0 || k < key[r]) key[r] = k;
        }
    int any_small = 0, any_big = 0;
    for (size_t i = 0; i < n; i++)
        if (lab[i] == (int)i) {
            if (size[i] < min_area) any_small = 1;
            else any_big = 1;
        }
    if (any_small) {
        *changed = 1;
        if (!islands) {
            for (size_t i = 0; i < n; i++)
                if (lab[i] >= 0 && size[lab[i]] < min_area) mask[i] = 1;
        } else {
            int keep_root = -1;
            if (!any_big) { /* every island is small: keep the largest, first in label order */
                for (size_t i = 0; i < n; i++)
                    if (lab[i] == (int)i &&
                        (keep_root < 0 || size[i] > size[keep_root] ||
                         (size[i] == size[keep_root] && key[i] < key[keep_root])))
                        keep_root = (int)i;
            }
            for (size_t i = 0; i < n; i++)
                if (lab[i] >= 0 && size[lab[i]] < min_area && lab[i] != keep_root) mask[i] = 0;
        }
    }
    free(lab);
    free(size);
    free(key);
    return 0;
}
