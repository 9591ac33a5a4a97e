/* embedding_file.c - embeddings on disk with their sidecar (see
 * embedding_file.h). */
#include "cli/embedding_file.h"
#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensor_map_internal.h"
#include "model/sam.h"
#include "model/transforms.h"
#include "sha256.h"
#include "threads.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A hash list: SHA-256 of each tensor's header and data, then of those digests
 * (the one-shot SHA-256 we have needs the bytes in one piece). The tensors' digests are
 * independent: they are spread over the pool (a 40 MB model hashes in ~0.1 s on one core). */
typedef struct {
    const ts_tensor_map *map;
    char *all; /* 64 digest bytes per tensor */
} fingerprint_job;

static void fingerprint_tensor(void *ctx, int i, int tid) {
    (void)tid;
    const fingerprint_job *j = ctx;
    const ts_tensor *t = &j->map->t[i];
    char head[512], h1[65], h2[65];
    int hl = snprintf(head, sizeof head, "%s|%d|%d", t->name, (int)t->dtype, t->ndim);
    for (int d = 0; d < t->ndim && hl < (int)sizeof head - 24; d++)
        hl += snprintf(head + hl, sizeof head - (size_t)hl, "|%lld", (long long)t->shape[d]);
    ts_sha256_hex(head, (size_t)TS_MIN(hl, (int)sizeof head - 1), h1);
    size_t bytes = (size_t)t->numel * ts_dtype_size(t->dtype);
    ts_sha256_hex(t->data ? t->data : "", t->data ? bytes : 0, h2);
    memcpy(j->all + (size_t)i * 64, h1, 32);
    memcpy(j->all + (size_t)i * 64 + 32, h2, 32);
}

int ts_model_fingerprint(const tinysam_model *m, char hex[65]) {
    const ts_tensor_map *map = m->map;
    if (!map) return ts_error(TINYSAM_E_UNSUPPORTED, "this model keeps no tensors to fingerprint");
    char *all = ts_malloc(66 * (size_t)(map->n + 1));
    if (!all) return TINYSAM_E_NOMEM;
    fingerprint_job j = {map, all};
    ts_parallel_for(map->n, fingerprint_tensor, &j);
    ts_sha256_hex(all, (size_t)map->n * 64, hex);
    free(all);
    return 0;
}

int ts_embedding_sidecar_write(const char *npy_path, const tinysam_embedding *e,
                               const tinysam_model *m) {
    char hex[65], path[4200];
    int rc = ts_model_fingerprint(m, hex);
    if (rc) return rc;
    if ((size_t)snprintf(path, sizeof path, "%s.json", npy_path) >= sizeof path)
        return ts_error(TINYSAM_E_ARG, "%s: path too long", npy_path);
    FILE *f = fopen(path, "w");
    if (!f) return ts_error(TINYSAM_E_IO, "%s: cannot write", path);
    fprintf(f,
            "{\"original_size\": [%d, %d], \"input_size\": [%d, %d], "
            "\"model_family\": \"%s\", "
            "\"model_sha256\": \"%s\"}\n",
            e->orig_h, e->orig_w, e->input_h, e->input_w, m->info.family, hex);
    if (fclose(f) != 0) return ts_error(TINYSAM_E_IO, "%s: write failed", path);
    return 0;
}

int ts_embedding_load_checked(const char *npy_path, const tinysam_model *m,
                              tinysam_embedding **out) {
    *out = NULL;
    char path[4200], hex[65];
    if ((size_t)snprintf(path, sizeof path, "%s.json", npy_path) >= sizeof path)
        return ts_error(TINYSAM_E_ARG, "%s: path too long", npy_path);
    ts_json *j = NULL;
    int rc = ts_json_load(path, &j);
    if (rc)
        return ts_error_prefix(rc,
                               "--embedding %s: its sidecar %s (written by tinysam embed) "
                               "is missing or unreadable",
                               npy_path, path);
    const ts_json *size = ts_json_get(j, "original_size"), *sha = ts_json_get(j, "model_sha256");
    int H = 0, W = 0;
    if (size && size->type == TS_JSON_ARRAY && size->n == 2 &&
        size->items[0].type == TS_JSON_NUMBER && size->items[1].type == TS_JSON_NUMBER) {
        double h = size->items[0].number, w = size->items[1].number;
        if (h >= 1 && w >= 1 && h <= 1 << 20 && w <= 1 << 20 && h == (int)h && w == (int)w) {
            H = (int)h;
            W = (int)w;
        }
    }
    if (!H || !sha || sha->type != TS_JSON_STRING || strlen(sha->string) != 64) {
        ts_json_free(j);
        return ts_error(TINYSAM_E_FORMAT, "%s: needs original_size [H, W] and model_sha256", path);
    }
    rc = ts_model_fingerprint(m, hex);
    if (!rc && strcmp(hex, sha->string))
        rc = ts_error(TINYSAM_E_ARG,
                      "--embedding %s was made by another model (its sha256 %.12s..., this "
                      "model's %.12s...): run tinysam embed with this model",
                      npy_path, sha->string, hex);
    ts_json_free(j);
    if (rc) return rc;
    ts_npy a;
    if ((rc = ts_npy_load(npy_path, &a))) return rc;
    int ok = (a.dtype == TS_DTYPE_F32 || a.dtype == TS_DTYPE_F16) &&
             a.numel == (int64_t)TINYSAM_EMBED_DIM * TINYSAM_EMBED_SIDE * TINYSAM_EMBED_SIDE &&
             a.shape[a.ndim - 1] == TINYSAM_EMBED_SIDE && a.shape[a.ndim - 2] == TINYSAM_EMBED_SIDE;
    if (!ok) {
        ts_npy_free(&a);
        return ts_error(TINYSAM_E_FORMAT, "%s: not an embedding (float32 or float16 1x256x64x64)",
                        npy_path);
    }
    if (a.dtype == TS_DTYPE_F16 && (rc = ts_npy_to_f32(&a))) {
        ts_npy_free(&a);
        return rc;
    }
    tinysam_embedding *e = ts_calloc(1, sizeof *e);
    if (e) e->data = ts_malloc_aligned(sizeof(float) * (size_t)a.numel);
    if (!e || !e->data) {
        free(e);
        ts_npy_free(&a);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    memcpy(e->data, a.data, sizeof(float) * (size_t)a.numel);
    ts_npy_free(&a);
    e->orig_w = W;
    e->orig_h = H;
    ts_preprocess_shape(H, W, TINYSAM_INPUT_SIDE, &e->input_h, &e->input_w);
    *out = e;
    return 0;
}
