/* cache.h - the server's image cache: decoded image + embedding per upload, keyed by the
 * SHA-256 of the uploaded bytes, bounded in memory (least recently used entries that no
 * request holds are evicted first). Each entry also keeps the low-res logits of its last
 * few predictions under small integer handles, so that a refinement can send a handle
 * instead of 256 KB of logits. Thread-safe. */
#ifndef TS_SERVER_CACHE_H
#define TS_SERVER_CACHE_H

#include "tinysam.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define TS_CACHE_HANDLES 16 /* low-res predictions kept per image (768 KB each) */

typedef struct ts_cache_entry ts_cache_entry;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t ready; /* an entry left the "encoding" state */
    ts_cache_entry *head; /* all entries, most recently used first */
    size_t bytes, limit;
    int count;
} ts_cache;

/* What a request may read from an entry it holds (never changes while held). */
typedef struct {
    const char *id;
    const tinysam_image *img;
    const tinysam_embedding *emb;
    double encode_ms;
} ts_cache_view;

int ts_cache_init(ts_cache *c, size_t limit_bytes);
void ts_cache_destroy(ts_cache *c);

/* Returns the entry for id64 (64 hex digits), holding it, or NULL (unknown or evicted).
 * Waits while the entry is being encoded by another request. */
ts_cache_entry *ts_cache_find(ts_cache *c, const char *id64);
/* Finds or creates the entry of an upload: hashes data, decodes and encodes it unless an
 * entry with that hash exists (*cached = 1). Returns a status; on success *out is held. */
int ts_cache_add(ts_cache *c, tinysam_model *m, const void *data, size_t size,
                 long long max_pixels, ts_cache_entry **out, int *cached);
void ts_cache_release(ts_cache *c, ts_cache_entry *e);
ts_cache_view ts_cache_get(const ts_cache_entry *e);

/* Stores a copy of n x 256 x 256 low-res logits; returns its handle (> 0) or a status. */
int ts_cache_put_lowres(ts_cache *c, ts_cache_entry *e, const float *low_res, int n);
/* Copies mask `index` of handle into out (256 x 256); 0, or -1 if the handle is unknown
 * (never issued, or pushed out by newer ones) or index out of range. */
int ts_cache_get_lowres(ts_cache *c, ts_cache_entry *e, int handle, int index, float *out);

void ts_cache_stats(ts_cache *c, int *count, size_t *bytes);

#endif
