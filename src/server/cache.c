/* cache.c - embedding cache with LRU eviction and per-image low-res handles. */
#include "server/cache.h"

#include "core.h"
#include "sha256.h"

#include <stdlib.h>
#include <string.h>

enum { ENCODING, READY, FAILED };

struct ts_cache_entry {
    char id[65];
    int state, refs;
    tinysam_image img;
    tinysam_embedding *emb;
    double encode_ms;
    size_t bytes;
    int next_handle;
    struct {
        int handle, n;
        float *low_res;
    } prev[TS_CACHE_HANDLES];
    ts_cache_entry *next;
};

int ts_cache_init(ts_cache *c, size_t limit_bytes) {
    memset(c, 0, sizeof *c);
    c->limit = limit_bytes;
    if (pthread_mutex_init(&c->mu, NULL)) return ts_error(TINYSAM_E_NOMEM, "mutex init failed");
    if (pthread_cond_init(&c->ready, NULL)) {
        pthread_mutex_destroy(&c->mu);
        return ts_error(TINYSAM_E_NOMEM, "condition variable init failed");
    }
    return 0;
}

static void entry_free(ts_cache_entry *e) {
    tinysam_image_free(&e->img);
    tinysam_embedding_free(e->emb);
    for (int i = 0; i < TS_CACHE_HANDLES; i++) free(e->prev[i].low_res);
    free(e);
}

void ts_cache_destroy(ts_cache *c) {
    for (ts_cache_entry *e = c->head, *n; e; e = n) {
        n = e->next;
        entry_free(e);
    }
    c->head = NULL;
    pthread_cond_destroy(&c->ready);
    pthread_mutex_destroy(&c->mu);
}

/* Unlinks e (mutex held). */
static void unlink_entry(ts_cache *c, ts_cache_entry *e) {
    for (ts_cache_entry **p = &c->head; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            c->bytes -= e->bytes;
            c->count--;
            return;
        }
}

/* Moves e to the front (mutex held). */
static void touch(ts_cache *c, ts_cache_entry *e) {
    if (c->head == e) return;
    for (ts_cache_entry **p = &c->head; *p; p = &(*p)->next)
        if (*p == e) {
            *p = e->next;
            break;
        }
    e->next = c->head;
    c->head = e;
}

/* Evicts unheld entries from the tail until the cache fits (mutex held). Entries held by
 * a request stay: the bound is exceeded rather than a request failing. */
static void evict(ts_cache *c) {
    while (c->bytes > c->limit) {
        ts_cache_entry *victim = NULL;
        for (ts_cache_entry *e = c->head; e; e = e->next)
            if (e->refs == 0 && e->state != ENCODING) victim = e; /* the last one is the LRU */
        if (!victim) return;
        unlink_entry(c, victim);
        entry_free(victim);
    }
}

/* Drops a reference to a failed entry, freeing it with the last one (mutex held). */
static void drop_failed(ts_cache *c, ts_cache_entry *e) {
    if (--e->refs == 0) {
        unlink_entry(c, e);
        entry_free(e);
    }
}

static ts_cache_entry *lookup(ts_cache *c, const char *id) {
    for (ts_cache_entry *e = c->head; e; e = e->next)
        if (!strcmp(e->id, id)) return e;
    return NULL;
}

ts_cache_entry *ts_cache_find(ts_cache *c, const char *id64) {
    pthread_mutex_lock(&c->mu);
    ts_cache_entry *e = lookup(c, id64);
    if (e) {
        e->refs++;
        while (e->state == ENCODING) pthread_cond_wait(&c->ready, &c->mu);
        if (e->state != READY) {
            drop_failed(c, e);
            e = NULL;
        } else {
            touch(c, e);
        }
    }
    pthread_mutex_unlock(&c->mu);
    return e;
}

int ts_cache_add(ts_cache *c, tinysam_model *m, const void *data, size_t size,
                 long long max_pixels, ts_cache_entry **out, int *cached) {
    char id[65];
    ts_sha256_hex(data, size, id);
    *out = NULL;
    *cached = 0;
    pthread_mutex_lock(&c->mu);
    ts_cache_entry *e = lookup(c, id);
    if (e && e->state != FAILED) {
        e->refs++;
        while (e->state == ENCODING) pthread_cond_wait(&c->ready, &c->mu);
        if (e->state == READY) {
            touch(c, e);
            pthread_mutex_unlock(&c->mu);
            *out = e;
            *cached = 1;
            return 0;
        }
        /* the other upload of these bytes failed: they fail here too, for the same reason,
         * but the message is that thread's; decode again for ours */
        drop_failed(c, e);
    }
    e = calloc(1, sizeof *e);
    if (!e) {
        pthread_mutex_unlock(&c->mu);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    memcpy(e->id, id, sizeof id);
    e->state = ENCODING;
    e->refs = 1;
    e->next = c->head;
    c->head = e;
    c->count++;
    pthread_mutex_unlock(&c->mu);

    /* decode and encode outside the lock; concurrent uploads of the same bytes wait */
    double t0 = ts_now_ms();
    int rc = tinysam_image_decode(data, size, max_pixels, &e->img);
    if (!rc && m) rc = tinysam_encode(m, &e->img, &e->emb); /* no model: decode only (fuzzing) */
    double t1 = ts_now_ms();

    pthread_mutex_lock(&c->mu);
    if (rc) {
        e->state = FAILED;
        drop_failed(c, e);
    } else {
        e->state = READY;
        e->encode_ms = t1 - t0;
        e->bytes = sizeof *e + (size_t)e->img.width * e->img.height * 3 +
                   (size_t)TINYSAM_EMBED_DIM * TINYSAM_EMBED_SIDE * TINYSAM_EMBED_SIDE * 4;
        c->bytes += e->bytes;
        evict(c);
        *out = e;
    }
    pthread_cond_broadcast(&c->ready);
    pthread_mutex_unlock(&c->mu);
    return rc;
}

void ts_cache_release(ts_cache *c, ts_cache_entry *e) {
    if (!e) return;
    pthread_mutex_lock(&c->mu);
    e->refs--;
    evict(c);
    pthread_mutex_unlock(&c->mu);
}

ts_cache_view ts_cache_get(const ts_cache_entry *e) {
    ts_cache_view v = {e->id, &e->img, e->emb, e->encode_ms};
    return v;
}

int ts_cache_put_lowres(ts_cache *c, ts_cache_entry *e, const float *low_res, int n) {
    size_t sz = (size_t)n * TINYSAM_LOWRES * TINYSAM_LOWRES * sizeof(float);
    float *copy = malloc(sz);
    if (!copy) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    memcpy(copy, low_res, sz);
    pthread_mutex_lock(&c->mu);
    int h = ++e->next_handle, slot = (h - 1) % TS_CACHE_HANDLES;
    if (e->prev[slot].low_res) {
        size_t old = (size_t)e->prev[slot].n * TINYSAM_LOWRES * TINYSAM_LOWRES * sizeof(float);
        e->bytes -= old;
        c->bytes -= old;
        free(e->prev[slot].low_res);
    }
    e->prev[slot].handle = h;
    e->prev[slot].n = n;
    e->prev[slot].low_res = copy;
    e->bytes += sz;
    c->bytes += sz;
    evict(c);
    pthread_mutex_unlock(&c->mu);
    return h;
}

int ts_cache_get_lowres(ts_cache *c, ts_cache_entry *e, int handle, int index, float *out) {
    int rc = -1;
    pthread_mutex_lock(&c->mu);
    if (handle > 0) {
        int slot = (handle - 1) % TS_CACHE_HANDLES;
        if (e->prev[slot].handle == handle && e->prev[slot].low_res && index >= 0 &&
            index < e->prev[slot].n) {
            memcpy(out, e->prev[slot].low_res + (size_t)index * TINYSAM_LOWRES * TINYSAM_LOWRES,
                   TINYSAM_LOWRES * TINYSAM_LOWRES * sizeof(float));
            rc = 0;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

void ts_cache_stats(ts_cache *c, int *count, size_t *bytes) {
    pthread_mutex_lock(&c->mu);
    *count = c->count;
    *bytes = c->bytes;
    pthread_mutex_unlock(&c->mu);
}
