/* safetensors.c - the project's own checkpoint format: an 8-byte little-endian header length,
 * a JSON header {name: {dtype, shape, data_offsets}}, then the raw data. Loaded by mmap;
 * float32 tensors are used in place. */
#include "core.h"
#include "io/json.h"
#include "io/tensor_map.h"
#include "io/tensor_map_internal.h"

#include <xxhash.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ST_MAX_HEADER (100u << 20) /* as the reference implementation */
#define ST_MAX_TENSORS 100000

static const struct {
    const char *name;
    ts_dtype t;
} st_dtypes[] = {
    {"F32", TS_DTYPE_F32}, {"F16", TS_DTYPE_F16}, {"BF16", TS_DTYPE_BF16}, {"F64", TS_DTYPE_F64},
    {"I64", TS_DTYPE_I64}, {"I32", TS_DTYPE_I32}, {"I8", TS_DTYPE_I8},     {"U8", TS_DTYPE_U8},
    {"BOOL", TS_DTYPE_U8},
};

typedef struct {
    uint64_t begin, end;
    int index;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin;
}

static int cmp_name(const void *a, const void *b) {
    const ts_tensor *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* The digest of the data section (every byte after the header) as our writer stores it:
 * "xxh3-64:" and 16 lower-case hex digits of XXH3_64bits (libxxhash, seed 0). */
static void digest_string(const void *data, size_t n, char out[32]) {
    snprintf(out, 32, "xxh3-64:%016llx", (unsigned long long)XXH3_64bits(data, n));
}

static int check_digest(const char *want, const uint8_t *data, uint64_t n, const char *what) {
    if (strncmp(want, "xxh3-64:", 8) || strlen(want) != 24)
        return ts_error(TINYSAM_E_FORMAT, "%s: unknown data digest '%.40s' in the metadata", what,
                        want);
    char got[32];
    digest_string(data, (size_t)n, got);
    if (strcmp(got, want))
        return ts_error(TINYSAM_E_FORMAT,
                        "%s: the data fails its XXH3 digest check (file corrupted?)", what);
    return 0;
}

/* The load cache (tensor_map.h): its tensors leave t[] for map->cache, kept only when the
 * data digest was checked and the metadata holds a tag; else dropped. */
static int take_cache(ts_tensor_map *map, int digest_checked) {
    size_t pl = strlen(TS_CACHE_PREFIX);
    int n = 0;
    for (int i = 0; i < map->n; i++) n += !strncmp(map->t[i].name, TS_CACHE_PREFIX, pl);
    if (!n) return 0;
    const char *tag = NULL;
    ts_json *meta = NULL;
    if (map->metadata_json &&
        !ts_json_parse(map->metadata_json, strlen(map->metadata_json), &meta)) {
        const ts_json *v = ts_json_get(meta, TS_CACHE_TAG_KEY);
        if (v && v->type == TS_JSON_STRING) tag = v->string;
    }
    int keep = digest_checked && tag && strlen(tag) < sizeof map->cache_tag && map->map_base;
    if (keep) snprintf(map->cache_tag, sizeof map->cache_tag, "%s", tag);
    ts_json_free(meta);
    if (keep && !(map->cache = ts_calloc((size_t)n, sizeof *map->cache))) return TINYSAM_E_NOMEM;
    const uint8_t *lo = map->map_base, *hi = lo ? lo + map->map_size : NULL;
    size_t begin = map->map_size, end = 0;
    int j = 0;
    for (int i = 0; i < map->n; i++) {
        ts_tensor *t = &map->t[i];
        if (strncmp(t->name, TS_CACHE_PREFIX, pl)) {
            map->t[j++] = *t;
            continue;
        }
        const uint8_t *d = t->data;
        if (keep) {
            if (d >= lo && d < hi) {
                size_t o = (size_t)(d - lo), e = o + (size_t)t->numel * ts_dtype_size(t->dtype);
                begin = o < begin ? o : begin;
                end = e > end ? e : end;
            }
            map->cache[map->n_cache++] = *t;
        } else {
            if (!(lo && d >= lo && d < hi)) free(t->data);
            free(t->name);
        }
    }
    map->n = j;
    map->cache_begin = begin < end ? begin : 0;
    map->cache_end = begin < end ? end : 0;
    return 0;
}

/* A data digest checked on a thread of its own (ts_safetensors_load_async). */
struct ts_digest_job {
    pthread_t th;
    char want[32], got[32], what[512];
    const uint8_t *data;
    uint64_t n;
};

static void *digest_thread(void *ctx) {
    struct ts_digest_job *j = ctx;
    digest_string(j->data, (size_t)j->n, j->got);
    return NULL;
}

int ts_map_wait_checks(ts_tensor_map *m) {
    struct ts_digest_job *j = m ? m->digest_job : NULL;
    if (!j) return 0;
    pthread_join(j->th, NULL);
    m->digest_job = NULL;
    int bad = strcmp(j->got, j->want) != 0;
    if (!bad) snprintf(m->integrity, sizeof m->integrity, "xxh3-64");
    int rc = bad ? ts_error(TINYSAM_E_FORMAT,
                            "%s: the data fails its XXH3 digest check (file corrupted?)", j->what)
                 : 0;
    free(j);
    return rc;
}

/* Starts the check of data against want (a well-formed "xxh3-64:" digest); 0 when it could
 * not start (the caller then checks at once). */
static int start_digest(ts_tensor_map *map, const char *want, const uint8_t *data, uint64_t n,
                        const char *what) {
    struct ts_digest_job *j = calloc(1, sizeof *j);
    if (!j) return 0;
    snprintf(j->want, sizeof j->want, "%s", want);
    snprintf(j->what, sizeof j->what, "%s", what);
    j->data = data;
    j->n = n;
    if (pthread_create(&j->th, NULL, digest_thread, j)) {
        free(j);
        return 0;
    }
    map->digest_job = j;
    return 1;
}

static int parse(const uint8_t *buf, size_t size, ts_tensor_map *map, const char *what,
                 int async) {
    if (size < 8) return ts_error(TINYSAM_E_FORMAT, "%s: too short for safetensors", what);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen < 2 || hlen > ST_MAX_HEADER || hlen > size - 8)
        return ts_error(TINYSAM_E_FORMAT, "%s: not a safetensors file (header length %llu)", what,
                        (unsigned long long)hlen);
    if (buf[8] != '{')
        return ts_error(TINYSAM_E_FORMAT, "%s: not a safetensors file (header is not JSON)", what);
    ts_json *h;
    int rc = ts_json_parse((const char *)buf + 8, (size_t)hlen, &h);
    if (rc) return ts_error_prefix(rc, "%s: safetensors header", what);
    const uint8_t *data = buf + 8 + hlen;
    uint64_t dsize = size - 8 - hlen;
    const char *digest = NULL; /* our writer's digest of the data section, in the metadata */
    span *spans = NULL;
    int n_spans = 0;
    if (h->type != TS_JSON_OBJECT || h->n > ST_MAX_TENSORS) {
        rc = ts_error(TINYSAM_E_FORMAT, "%s: safetensors header is not an object", what);
        goto done;
    }
    spans = ts_calloc((size_t)h->n + 1, sizeof *spans);
    if (!spans) {
        rc = TINYSAM_E_NOMEM;
        goto done;
    }
    for (int i = 0; i < h->n; i++) {
        const char *name = h->keys[i];
        const ts_json *e = &h->items[i];
        if (!strcmp(name, "__metadata__")) {
            if (e->type != TS_JSON_OBJECT) {
                rc = ts_error(TINYSAM_E_FORMAT, "%s: __metadata__ is not an object", what);
                goto done;
            }
            char *txt = NULL;
            size_t tl = 0;
            FILE *f = open_memstream(&txt, &tl);
            if (!f) {
                rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
                goto done;
            }
            fputc('{', f);
            for (int k = 0; k < e->n; k++) {
                if (e->items[k].type == TS_JSON_STRING && !strcmp(e->keys[k], TS_ST_DIGEST_KEY))
                    digest = e->items[k].string;
                if (e->items[k].type != TS_JSON_STRING) { /* as the reference library */
                    fclose(f);
                    free(txt);
                    rc = ts_error(TINYSAM_E_FORMAT, "%s: __metadata__ value '%s' is not a string",
                                  what, e->keys[k]);
                    goto done;
                }
                if (k) fputc(',', f);
                ts_json_write_string(f, e->keys[k]);
                fputc(':', f);
                ts_json_write_string(f, e->items[k].string);
            }
            fputc('}', f);
            fclose(f);
            free(map->metadata_json);
            map->metadata_json = txt;
            continue;
        }
        const ts_json *dt = ts_json_get(e, "dtype"), *sh = ts_json_get(e, "shape"),
                      *of = ts_json_get(e, "data_offsets");
        if (!dt || dt->type != TS_JSON_STRING || !sh || sh->type != TS_JSON_ARRAY || !of ||
            of->type != TS_JSON_ARRAY || of->n != 2 || sh->n > TS_MAX_DIMS) {
            rc = ts_error(TINYSAM_E_FORMAT, "%s: bad header entry for '%s'", what, name);
            goto done;
        }
        int found = 0;
        ts_dtype ft = TS_DTYPE_F32;
        for (size_t k = 0; k < sizeof st_dtypes / sizeof st_dtypes[0]; k++)
            if (!strcmp(dt->string, st_dtypes[k].name)) {
                ft = st_dtypes[k].t;
                found = 1;
            }
        if (!found) {
            rc = ts_error(TINYSAM_E_FORMAT, "%s: tensor '%s' has unsupported dtype '%s'", what,
                          name,
                          dt->string);
            goto done;
        }
        ts_tensor *t = ts_map_add(map, name);
        if (!t) {
            rc = TINYSAM_E_NOMEM;
            goto done;
        }
        t->file_dtype = ft;
        t->dtype = ts_dtype_loaded(ft);
        t->ndim = sh->n;
        int64_t numel = 1;
        for (int d = 0; d < sh->n; d++) {
            double v = sh->items[d].number;
            if (sh->items[d].type != TS_JSON_NUMBER || v < 0 || v > 1e12 ||
                v != (double)(int64_t)v) {
                rc = ts_error(TINYSAM_E_FORMAT, "%s: tensor '%s' has a bad shape", what, name);
                goto done;
            }
            t->shape[d] = (int64_t)v;
            if (t->shape[d] && numel > ((int64_t)1 << 40) / t->shape[d]) {
                rc = ts_error(TINYSAM_E_FORMAT, "%s: tensor '%s' is too large", what, name);
                goto done;
            }
            numel *= t->shape[d];
        }
        t->numel = numel;
        double b = of->items[0].number, en = of->items[1].number;
        if (of->items[0].type != TS_JSON_NUMBER || of->items[1].type != TS_JSON_NUMBER || b < 0 ||
            en < b || en > (double)dsize || b != (double)(uint64_t)b ||
            en != (double)(uint64_t)en ||
            (uint64_t)(en - b) != (uint64_t)numel * (uint64_t)ts_dtype_size(ft)) {
            rc = ts_error(TINYSAM_E_FORMAT,
                          "%s: tensor '%s' has data offsets [%.0f, %.0f] that do not fit its shape "
                          "and dtype or the file (%llu data bytes)",
                          what, name, b, en, (unsigned long long)dsize);
            goto done;
        }
        spans[n_spans++] = (span){(uint64_t)b, (uint64_t)en, map->n - 1};
        const uint8_t *src = data + (uint64_t)b;
        /* zero-copy: points into the mapping; an empty tensor may sit at the very end, where a
         * pointer would lie outside the mapping (ts_map_free would take it for a copy) */
        if (t->dtype == ft && numel > 0 && ((uintptr_t)src % (unsigned)ts_dtype_size(ft)) == 0) {
            t->data = (void *)src;
        } else {
            size_t bytes = (size_t)numel * (size_t)ts_dtype_size(t->dtype);
            t->data = malloc(bytes ? bytes : 1);
            if (!t->data) {
                rc = ts_error(TINYSAM_E_NOMEM, "out of memory for '%s'", name);
                goto done;
            }
            ts_convert_elements(ft, src, (size_t)numel, t->data);
        }
    }
    qsort(spans, (size_t)n_spans, sizeof *spans, cmp_span);
    for (int i = 1; i < n_spans; i++)
        if (spans[i].begin < spans[i - 1].end) {
            rc = ts_error(TINYSAM_E_FORMAT, "%s: tensors '%s' and '%s' overlap", what,
                          map->t[spans[i - 1].index].name, map->t[spans[i].index].name);
            goto done;
        }
    /* duplicate names (sorted, not pairwise: a header may list 100000 tensors) */
    const ts_tensor **order = ts_calloc((size_t)map->n + 1, sizeof *order);
    if (!order) {
        rc = TINYSAM_E_NOMEM;
        goto done;
    }
    for (int i = 0; i < map->n; i++) order[i] = &map->t[i];
    qsort(order, (size_t)map->n, sizeof *order, cmp_name);
    for (int i = 1; i < map->n && !rc; i++)
        if (!strcmp(order[i - 1]->name, order[i]->name))
            rc = ts_error(TINYSAM_E_FORMAT, "%s: duplicate tensor '%s'", what, order[i]->name);
    free(order);
    if (rc) goto done;
    if (map->n == 0) rc = ts_error(TINYSAM_E_FORMAT, "%s: the file holds no tensors", what);
    if (!rc && digest && async && !strncmp(digest, "xxh3-64:", 8) && strlen(digest) == 24 &&
        start_digest(map, digest, data, dsize, what))
        ; /* checked meanwhile: ts_map_wait_checks */
    else if (!rc && digest && !(rc = check_digest(digest, data, dsize, what)))
        snprintf(map->integrity, sizeof map->integrity, "xxh3-64");
    if (!rc) rc = take_cache(map, digest != NULL);
done:
    free(spans);
    ts_json_free(h);
    return rc;
}

int ts_safetensors_load_memory(const uint8_t *data, size_t size, ts_tensor_map **out) {
    *out = NULL;
    ts_tensor_map *map = ts_calloc(1, sizeof *map);
    if (!map) return TINYSAM_E_NOMEM;
    snprintf(map->format, sizeof map->format, "safetensors");
    map->map_base = (void *)data;
    map->map_size = size;
    map->borrowed = 1;
    int rc = parse(data, size, map, "safetensors", 0);
    if (rc) {
        ts_map_free(map);
        return rc;
    }
    *out = map;
    return 0;
}

static int safetensors_load(const char *path, ts_tensor_map **out, int async) {
    *out = NULL;
    uint8_t *base;
    size_t size;
    int rc = ts_file_map(path, &base, &size);
    if (rc) return rc;
    if (size < 8) {
        ts_file_unmap(base, size);
        return ts_error(TINYSAM_E_FORMAT, "%s: too short for safetensors", path);
    }
    ts_tensor_map *map = ts_calloc(1, sizeof *map);
    if (!map) {
        ts_file_unmap(base, size);
        return TINYSAM_E_NOMEM;
    }
    snprintf(map->format, sizeof map->format, "safetensors");
    map->map_base = base;
    map->map_size = size;
    rc = parse(base, size, map, path, async);
    if (rc) {
        ts_map_free(map);
        return rc;
    }
    *out = map;
    return 0;
}

int ts_safetensors_load(const char *path, ts_tensor_map **out) {
    return safetensors_load(path, out, 0);
}

int ts_safetensors_load_async(const char *path, ts_tensor_map **out) {
    return safetensors_load(path, out, 1);
}

static const char *st_name(ts_dtype t) {
    switch (t) {
    case TS_DTYPE_F32: return "F32";
    case TS_DTYPE_I64: return "I64";
    case TS_DTYPE_I32: return "I32";
    case TS_DTYPE_I8: return "I8";
    case TS_DTYPE_U8: return "U8";
    default: return NULL;
    }
}

int ts_safetensors_save(const char *path, const ts_tensor_map *m, int n_meta,
                        const char *const *meta_keys, const char *const *meta_values) {
    return ts_safetensors_save_cached(path, m, n_meta, meta_keys, meta_values, NULL, NULL);
}

static size_t tensor_bytes(const ts_tensor *t) {
    return (size_t)t->numel * (size_t)ts_dtype_size(t->dtype);
}

int ts_safetensors_save_cached(const char *path, const ts_tensor_map *m, int n_meta,
                               const char *const *meta_keys, const char *const *meta_values,
                               const ts_tensor_map *cache, const char *tag) {
    if (cache && (!cache->n || !tag)) cache = NULL;
    for (int i = 0; cache && i < cache->n; i++)
        if (strncmp(cache->t[i].name, TS_CACHE_PREFIX, strlen(TS_CACHE_PREFIX)) ||
            !st_name(cache->t[i].dtype))
            return ts_error(TINYSAM_E_ARG, "bad load cache tensor '%s'", cache->t[i].name);
    /* file order: the tensors by name, then the load cache */
    const int nc = cache ? cache->n : 0, nt = m->n + nc;
    const ts_tensor **order = ts_calloc((size_t)nt + 1, sizeof *order);
    if (!order) return TINYSAM_E_NOMEM;
    for (int i = 0; i < m->n; i++) order[i] = &m->t[i];
    qsort(order, (size_t)m->n, sizeof *order, cmp_name);
    for (int i = 0; i < nc; i++) order[m->n + i] = &cache->t[i];
    char *hdr = NULL;
    size_t hl = 0;
    FILE *hf = open_memstream(&hdr, &hl);
    if (!hf) {
        free(order);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    /* the digest of the data section: the tensors' bytes in file order */
    XXH3_state_t *xs = XXH3_createState();
    if (!xs) {
        fclose(hf), free(hdr), free(order);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    XXH3_64bits_reset(xs);
    for (int i = 0; i < nt; i++)
        if (st_name(order[i]->dtype)) XXH3_64bits_update(xs, order[i]->data, tensor_bytes(order[i]));
    char digest[32];
    snprintf(digest, sizeof digest, "xxh3-64:%016llx", (unsigned long long)XXH3_64bits_digest(xs));
    XXH3_freeState(xs);
    fputs("{\"__metadata__\":{", hf);
    for (int i = 0; i < n_meta; i++) {
        if (!strcmp(meta_keys[i], TS_ST_DIGEST_KEY)) continue; /* ours replaces a stale one */
        ts_json_write_string(hf, meta_keys[i]);
        fputc(':', hf);
        ts_json_write_string(hf, meta_values[i]);
        fputc(',', hf);
    }
    if (cache) {
        ts_json_write_string(hf, TS_CACHE_TAG_KEY);
        fputc(':', hf);
        ts_json_write_string(hf, tag);
        fputc(',', hf);
    }
    ts_json_write_string(hf, TS_ST_DIGEST_KEY);
    fputc(':', hf);
    ts_json_write_string(hf, digest);
    fputc('}', hf);
    uint64_t offset = 0, cache_at = 0;
    int rc = 0;
    for (int i = 0; i < nt; i++) {
        const ts_tensor *t = order[i];
        const char *dn = st_name(t->dtype);
        if (!dn) {
            rc = ts_error(TINYSAM_E_ARG, "cannot write tensor '%s' of this dtype", t->name);
            break;
        }
        if (i == m->n) cache_at = offset;
        uint64_t bytes = tensor_bytes(t);
        fputc(',', hf);
        ts_json_write_string(hf, t->name);
        fprintf(hf, ":{\"dtype\":\"%s\",\"shape\":[", dn);
        for (int d = 0; d < t->ndim; d++)
            fprintf(hf, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        fprintf(hf, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                (unsigned long long)(offset + bytes));
        offset += bytes;
    }
    fputc('}', hf);
    fclose(hf);
    if (rc) {
        free(hdr);
        free(order);
        return rc;
    }
    /* pad with spaces so that the data starts 8-byte aligned (with a load cache: 4-byte, the
     * cache 64-byte aligned in the file, as the mapping then is) */
    size_t padded = (hl + 7) & ~(size_t)7;
    if (cache)
        while ((8 + padded + cache_at) % 64 != 0 && padded < hl + 64) padded += 4;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (!f) {
        free(hdr);
        free(order);
        return ts_error(TINYSAM_E_IO, "%s: cannot write: %s", path, strerror(errno));
    }
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, hl, f) == hl;
    for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', f) != EOF;
    for (int i = 0; ok && i < nt; i++) {
        size_t bytes = tensor_bytes(order[i]);
        ok = bytes == 0 || fwrite(order[i]->data, 1, bytes, f) == bytes;
    }
    if (fclose(f) != 0) ok = 0;
    free(hdr);
    free(order);
    if (!ok || rename(tmp, path) != 0) {
        remove(tmp);
        return ts_error(TINYSAM_E_IO, "%s: write failed: %s", path, strerror(errno));
    }
    return 0;
}
