/* dataset.c - image directories, SA-1B ground truth, stored teacher embeddings, and the
 * training grids of spec/DISTILL.md 4.3. */
#include "train/dataset.h"

#include "core.h"
#include "everything/amg.h"
#include "io/npy.h"
#include "model/transforms.h"
#include "tinysam.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* ---- directories --------------------------------------------------------------------------- */

static int has_image_ext(const char *name) {
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    return !strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg") || !strcasecmp(dot, ".png");
}

static int cmp_str(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

void ts_dataset_free_list(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

int ts_dataset_list_images(const char *dir, char ***out, int *n_out) {
    *out = NULL;
    *n_out = 0;
    DIR *d = opendir(dir);
    if (!d) return ts_error(TINYSAM_E_IO, "cannot open directory '%s': %s", dir, strerror(errno));
    char **v = NULL;
    int n = 0, cap = 0, rc = 0;
    size_t dlen = strlen(dir);
    struct dirent *de;
    while (!rc && (de = readdir(d))) {
        if (de->d_name[0] == '.' || !has_image_ext(de->d_name)) continue;
        /* regular files (links followed): no directories named x.jpg */
        char *full = malloc(dlen + strlen(de->d_name) + 2);
        struct stat st;
        if (!full) {
            rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
            break;
        }
        sprintf(full, "%s/%s", dir, de->d_name);
        int reg = stat(full, &st) == 0 && S_ISREG(st.st_mode);
        free(full);
        if (!reg) continue;
        if (n == cap) {
            int nc = cap ? cap * 2 : 16;
            char **nv = realloc(v, (size_t)nc * sizeof *nv);
            if (!nv) {
                rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
                break;
            }
            v = nv;
            cap = nc;
        }
        if (!(v[n] = strdup(de->d_name))) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
        else n++;
    }
    closedir(d);
    if (rc) {
        ts_dataset_free_list(v, n);
        return rc;
    }
    if (n) qsort(v, (size_t)n, sizeof *v, cmp_str);
    *out = v;
    *n_out = n;
    return 0;
}

int ts_dataset_check_stems(char **names, int n, const char *what) {
    char **stems = calloc((size_t)n + 1, sizeof *stems);
    int rc = stems ? 0 : ts_error(TINYSAM_E_NOMEM, "out of memory");
    int k = 0;
    for (; !rc && k < n; k++) {
        const char *dot = strrchr(names[k], '.');
        if (!(stems[k] = strndup(names[k], dot ? (size_t)(dot - names[k]) : strlen(names[k]))))
            rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    if (!rc) qsort(stems, (size_t)k, sizeof *stems, cmp_str);
    for (int i = 1; !rc && i < k; i++)
        if (!strcmp(stems[i - 1], stems[i])) {
            const char *a = NULL, *b = NULL; /* name both files */
            const size_t len = strlen(stems[i]);
            for (int j = 0; j < n; j++) {
                const char *dot = strrchr(names[j], '.');
                if (!dot || (size_t)(dot - names[j]) != len || strncmp(names[j], stems[i], len))
                    continue;
                if (!a) a = names[j];
                else if (!b) b = names[j];
            }
            rc = ts_error(TINYSAM_E_ARG, "%s: '%s' and '%s' have the same stem (both would be %s)",
                          what, a, b, stems[i]);
        }
    if (stems) ts_dataset_free_list(stems, k);
    return rc;
}

void ts_dataset_stem(const char *name, char *out, int cap) {
    snprintf(out, (size_t)cap, "%s", name);
    char *dot = strrchr(out, '.');
    if (dot && dot != out) *dot = 0;
}

/* ---- SA-1B segmentation -------------------------------------------------------------------- */

int ts_sa1b_segmentation_rle(const ts_json *seg, int W, int H, const char *where,
                             ts_rle *out) {
    memset(out, 0, sizeof *out);
    const ts_json *size = seg && seg->type == TS_JSON_OBJECT ? ts_json_get(seg, "size") : NULL;
    const ts_json *counts = size ? ts_json_get(seg, "counts") : NULL;
    if (!size || size->type != TS_JSON_ARRAY || size->n != 2 || !counts ||
        size->items[0].type != TS_JSON_NUMBER || size->items[1].type != TS_JSON_NUMBER)
        return ts_error(TINYSAM_E_FORMAT, "%s: segmentation needs size [h, w] and counts", where);
    if (size->items[0].number != H || size->items[1].number != W)
        return ts_error(TINYSAM_E_FORMAT,
                        "%s: segmentation size %gx%g differs from the image %dx%d", where,
                        size->items[1].number, size->items[0].number, W, H);
    int rc = 0;
    if (counts->type == TS_JSON_STRING) {
        rc = ts_rle_from_string(counts->string, out);
    } else if (counts->type == TS_JSON_ARRAY) { /* uncompressed RLE */
        for (int i = 0; i < counts->n && !rc; i++) {
            double c = counts->items[i].number;
            if (counts->items[i].type != TS_JSON_NUMBER || !(c >= 0 && c <= 4294967295.0) ||
                c != floor(c))
                rc = ts_error(TINYSAM_E_FORMAT, "%s: bad RLE count", where);
            else if (ts_rle_push(out, (uint32_t)c))
                rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
        }
    } else {
        rc = ts_error(TINYSAM_E_FORMAT, "%s: counts must be a string or an array", where);
    }
    /* the runs must cover the image exactly */
    unsigned long long total = 0;
    for (int i = 0; !rc && i < out->n; i++) total += out->counts[i];
    if (!rc && total != (unsigned long long)W * (unsigned long long)H)
        rc = ts_error(TINYSAM_E_FORMAT, "%s: RLE counts sum to %llu, not %d x %d", where, total, W,
                      H);
    if (rc && rc != TINYSAM_E_NOMEM && strncmp(tinysam_last_error(), where, strlen(where))) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tinysam_last_error());
        rc = ts_error(rc, "%s: %s", where, msg);
    }
    if (rc) ts_rle_free(out);
    return rc;
}

int ts_sa1b_decode_segmentation(const ts_json *seg, int W, int H, const char *where,
                                uint8_t *mask) {
    ts_rle r;
    int rc = ts_sa1b_segmentation_rle(seg, W, H, where, &r);
    if (rc) return rc;
    rc = ts_rle_decode(r.counts, r.n, W, H, mask);
    if (rc && rc != TINYSAM_E_NOMEM) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tinysam_last_error());
        rc = ts_error(rc, "%s: %s", where, msg);
    }
    ts_rle_free(&r);
    return rc;
}

/* ---- grids (4.3) --------------------------------------------------------------------------- */

long long ts_gt_to_grids(const uint8_t *mask, int W, int H, int newh, int neww,
                         uint8_t *g1024_bits, uint8_t *glow) {
    memset(g1024_bits, 0, TS_FRAME_BITS);
    memset(glow, 0, TS_LOWRES_CELLS);
    static _Thread_local int xs[TS_FRAME];
    for (int x = 0; x < neww; x++) {
        int sx = (int)floor((x + 0.5) * (double)W / (double)neww);
        xs[x] = sx < W - 1 ? sx : W - 1;
    }
    long long area = 0;
    /* low-res counts of the current band of 4 rows */
    int cnt[TS_LOWRES];
    for (int y = 0; y < TS_FRAME; y++) {
        if (y % 4 == 0) memset(cnt, 0, sizeof cnt);
        if (y < newh) {
            int sy = (int)floor((y + 0.5) * (double)H / (double)newh);
            if (sy > H - 1) sy = H - 1;
            const uint8_t *row = mask + (size_t)sy * W;
            uint8_t *bits = g1024_bits + (size_t)y * (TS_FRAME / 8);
            for (int x = 0; x < neww; x++)
                if (row[xs[x]]) {
                    bits[x >> 3] |= (uint8_t)(0x80 >> (x & 7));
                    cnt[x >> 2]++;
                    area++;
                }
        }
        if (y % 4 == 3)
            for (int c = 0; c < TS_LOWRES; c++) glow[(y / 4) * TS_LOWRES + c] = cnt[c] >= 8;
    }
    return area;
}

void ts_gt_valid(int newh, int neww, uint8_t *valid) {
    for (int r = 0; r < TS_LOWRES; r++)
        for (int c = 0; c < TS_LOWRES; c++)
            valid[r * TS_LOWRES + c] = 4 * r + 2 < newh && 4 * c + 2 < neww;
}

void ts_gt_unpack(const uint8_t *bits, uint8_t *out) {
    for (size_t i = 0; i < (size_t)TS_FRAME * TS_FRAME; i++)
        out[i] = (bits[i >> 3] >> (7 - (i & 7))) & 1;
}

/* ---- examples ------------------------------------------------------------------------------ */

void ts_example_free(ts_train_example *ex) {
    free(ex->input);
    free(ex->emb_t);
    free(ex->g1024_bits);
    free(ex->glow);
    free(ex->area1024);
    memset(ex, 0, sizeof *ex);
}

int ts_example_alloc(ts_train_example *ex, int n_masks) {
    memset(ex, 0, sizeof *ex);
    size_t m = (size_t)(n_masks > 0 ? n_masks : 1);
    ex->input = malloc(sizeof(float) * 3 * TS_FRAME * TS_FRAME);
    ex->emb_t = malloc(sizeof(float) * 256 * 64 * 64);
    ex->g1024_bits = malloc(m * TS_FRAME_BITS);
    ex->glow = malloc(m * TS_LOWRES_CELLS);
    ex->area1024 = malloc(m * sizeof(long long));
    if (!ex->input || !ex->emb_t || !ex->g1024_bits || !ex->glow || !ex->area1024) {
        ts_example_free(ex);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    ex->n_masks = n_masks;
    return 0;
}

int ts_example_usable(const ts_train_example *ex, int k) {
    const uint8_t *g = ex->glow + (size_t)k * TS_LOWRES_CELLS;
    long long low = 0;
    for (int i = 0; i < TS_LOWRES_CELLS; i++) low += g[i] != 0;
    return low > 0 && (double)ex->area1024[k] <= 0.9 * (double)ex->newh * (double)ex->neww;
}

static int load_embedding(const char *path, float *dst) {
    ts_npy a = {0};
    int rc = ts_npy_load(path, &a);
    if (!rc && a.dtype != TS_DTYPE_F32 && a.dtype != TS_DTYPE_F16)
        rc = ts_error(TINYSAM_E_FORMAT, "%s: a teacher embedding is float32 or float16 256x64x64",
                      path);
    if (!rc) rc = ts_npy_to_f32(&a);
    if (!rc && a.numel != 256 * 64 * 64)
        rc = ts_error(TINYSAM_E_FORMAT, "%s: a teacher embedding has 256x64x64 values, not %lld",
                      path, (long long)a.numel);
    if (!rc) memcpy(dst, a.data, sizeof(float) * 256 * 64 * 64);
    ts_npy_free(&a);
    return rc;
}

int ts_example_load(const char *image_path, const char *emb_path, const char *gt_path,
                    long long max_pixels, ts_train_example *ex) {
    memset(ex, 0, sizeof *ex);
    ts_json *gt = NULL;
    tinysam_image img = {0};
    uint8_t *resized = NULL, *mask = NULL;
    int rc = ts_json_load(gt_path, &gt);
    if (rc) return rc;
    /* SA-1B's per-image object, or a bare list of records (`tinysam everything` output) */
    const ts_json *anns = gt->type == TS_JSON_ARRAY    ? gt
                          : gt->type == TS_JSON_OBJECT ? ts_json_get(gt, "annotations")
                                                       : NULL;
    if (!anns || anns->type != TS_JSON_ARRAY) {
        rc = ts_error(TINYSAM_E_FORMAT, "%s: no 'annotations' array", gt_path);
        goto done;
    }
    if ((rc = tinysam_image_load(image_path, max_pixels, &img))) goto done;
    if ((rc = ts_example_alloc(ex, anns->n))) goto done;
    const char *base = strrchr(image_path, '/');
    ts_dataset_stem(base ? base + 1 : image_path, ex->name, sizeof ex->name);
    const int W = img.width, H = img.height;
    ts_preprocess_shape(H, W, TS_FRAME, &ex->newh, &ex->neww);
    resized = malloc((size_t)ex->newh * ex->neww * 3);
    mask = malloc((size_t)W * H);
    if (!resized || !mask) {
        rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
        goto done;
    }
    if ((rc = ts_resize_rgb_pil(img.rgb, W, H, resized, ex->neww, ex->newh))) goto done;
    ts_normalize_pad(resized, ex->newh, ex->neww, ex->input);
    if ((rc = load_embedding(emb_path, ex->emb_t))) goto done;
    for (int i = 0; i < anns->n; i++) {
        char where[600];
        snprintf(where, sizeof where, "%s: annotation %d", gt_path, i);
        const ts_json *a = &anns->items[i];
        const ts_json *seg = a->type == TS_JSON_OBJECT ? ts_json_get(a, "segmentation") : NULL;
        if ((rc = ts_sa1b_decode_segmentation(seg, W, H, where, mask))) goto done;
        ex->area1024[i] = ts_gt_to_grids(mask, W, H, ex->newh, ex->neww,
                                         ex->g1024_bits + (size_t)i * TS_FRAME_BITS,
                                         ex->glow + (size_t)i * TS_LOWRES_CELLS);
    }
    ts_gt_valid(ex->newh, ex->neww, ex->valid);
done:
    free(resized);
    free(mask);
    tinysam_image_free(&img);
    ts_json_free(gt);
    if (rc) ts_example_free(ex);
    return rc;
}
