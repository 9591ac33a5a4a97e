/* tensor_map.h - a named set of tensors read from a checkpoint file.
 *
 * Every loader (pth.c for PyTorch files, safetensors.c) produces a ts_tensor_map.
 * Floating-point tensors are always presented as float32 (float16/bfloat16/float64
 * storages are converted at load); integer tensors keep their type. Tensors stored densely
 * in the loaded type (float32 in safetensors files and in .pth files loaded by path) point
 * into a read-only memory mapping of the file: never write through ts_tensor.data, and do
 * not modify the file while the map is alive. Other tensors are private copies. */
#ifndef TS_TENSOR_MAP_H
#define TS_TENSOR_MAP_H

#include <stddef.h>
#include <stdint.h>

#define TS_MAX_DIMS 8

typedef enum {
    TS_DTYPE_F32 = 0,
    TS_DTYPE_I64,
    TS_DTYPE_I32,
    TS_DTYPE_I8,
    TS_DTYPE_U8,
    TS_DTYPE_F16, /* only in files; never in a loaded map */
    TS_DTYPE_BF16,
    TS_DTYPE_F64,
} ts_dtype;

typedef struct {
    char *name;
    ts_dtype dtype;          /* F32, I64, I32, I8 or U8 once loaded */
    ts_dtype file_dtype;     /* dtype as stored in the file */
    int ndim;
    int64_t shape[TS_MAX_DIMS];
    int64_t numel;
    void *data;              /* contiguous, C order */
    int used;                /* set by ts_map_take */
} ts_tensor;

typedef struct ts_tensor_map {
    int n, cap;
    ts_tensor *t;
    char format[32];         /* "pth-zip", "pth-legacy", "safetensors" */
    char *metadata_json;     /* safetensors __metadata__ object as JSON text, or NULL */
    void *map_base;          /* mmap'd file, or the caller's buffer (safetensors_load_memory);
                              * NULL when every tensor is a copy */
    size_t map_size;
    int borrowed;            /* map_base belongs to the caller (load_memory): free nothing in it */
    char key_prefix[16];     /* the wrapper prefix ts_map_strip_wrapper_prefix removed, or "" */
    char integrity[16];      /* what was checked at load: "crc32" (pth-zip records), "xxh3-64"
                              * (our safetensors' digest), "" (nothing to check) */
    /* our safetensors' load cache (below): its tensors, kept out of t[]; cache_ok set by the
     * model loader when the tag is the running one (else the cache is not read) */
    ts_tensor *cache;
    int n_cache, cache_ok;
    char cache_tag[64];
    size_t cache_begin, cache_end; /* its bytes in the mapping (kept by ts_map_release_pages) */
    struct ts_digest_job *digest_job; /* the data digest being checked (ts_map_load_async) */
} ts_tensor_map;

/* The load cache `convert` writes into a float safetensors file, beside (never in place of)
 * the plain tensors: what the load would otherwise compute from them, computed by the very
 * same code, so that a load taking it builds the same model bit for bit: the GEMM weights
 * packed for the writer's ISA (TS_CACHE_WPACK_DATA, U8, and TS_CACHE_WPACK_DIR, I32 [n][5]:
 * nn.h, ts_wpack_image) and the prompt encoder's dense positional encoding
 * (TS_CACHE_DENSE_PE, F32 [4096][256], token layout). Its tensors are
 * named TS_CACHE_PREFIX..., lie after the others (the first 64-byte aligned in the file), and
 * the metadata key TS_CACHE_TAG_KEY holds the tag (ts_wpack_layout_tag: layout version,
 * ISA). At load they leave the tensor list (nothing checks, converts or re-saves them: no
 * stale copy), and they are kept only when the data digest was checked (then our writer
 * wrote them with the tensors); the model loader reads them in place when the tag is the
 * running one, else computes as for a file without them (another ISA, an older version, a
 * file from elsewhere). */
#define TS_CACHE_PREFIX "tinysam.cache."
#define TS_CACHE_WPACK_DATA TS_CACHE_PREFIX "wpack.data"
#define TS_CACHE_WPACK_DIR TS_CACHE_PREFIX "wpack.dir"
#define TS_CACHE_DENSE_PE TS_CACHE_PREFIX "dense_pe"
#define TS_CACHE_TAG_KEY "tinysam.cache"

/* A tensor of the load cache when the map holds a usable one (cache_ok), else NULL. */
const ts_tensor *ts_map_cache_get(const ts_tensor_map *m, const char *name);


/* The safetensors metadata key of the data section's digest ("xxh3-64:<16 hex digits>"),
 * written by ts_safetensors_save and checked at load when present. */
#define TS_ST_DIGEST_KEY "tinysam.digest"

/* A checkpoint saved from a model wrapped in DistributedDataParallel ("module.") or compiled
 * with torch.compile ("_orig_mod.") has every key prefixed: when every key carries one such
 * prefix, it is removed (once) and recorded in key_prefix. Returns 1 when a prefix was
 * stripped, else 0. */
int ts_map_strip_wrapper_prefix(ts_tensor_map *m);

/* Loads a file, detecting the format from its first bytes (ZIP "PK\3\4" -> pth-zip,
 * pickle PROTO 0x80 -> pth-legacy, otherwise safetensors). */
int ts_map_load(const char *path, ts_tensor_map **out);
/* The same, except that a safetensors file's data digest is checked on a thread of its own
 * while the caller goes on (the model load builds the networks meanwhile):
 * ts_map_wait_checks then returns its result (0, or the error ts_map_load would have
 * returned); nothing read from the map may be trusted before. ts_map_free waits too. */
int ts_map_load_async(const char *path, ts_tensor_map **out);
int ts_map_wait_checks(ts_tensor_map *m);
int ts_pth_load(const char *path, ts_tensor_map **out);
/* Copies every tensor: data may be freed once this returns. */
int ts_pth_load_memory(const uint8_t *data, size_t size, ts_tensor_map **out);
int ts_safetensors_load(const char *path, ts_tensor_map **out);
int ts_safetensors_load_async(const char *path, ts_tensor_map **out); /* see ts_map_load_async */
int ts_safetensors_load_memory(const uint8_t *data, size_t size, ts_tensor_map **out);
/* Writes tensors (as F32 or their integer dtype) plus a __metadata__ string map
 * (n_meta key/value pairs; may be 0). */
int ts_safetensors_save(const char *path, const ts_tensor_map *m, int n_meta,
                        const char *const *meta_keys, const char *const *meta_values);
/* The same followed by a load cache (tensor_map.h): cache's tensors, in its order, all named
 * TS_CACHE_PREFIX..., and tag (NULL cache: none). */
int ts_safetensors_save_cached(const char *path, const ts_tensor_map *m, int n_meta,
                               const char *const *meta_keys, const char *const *meta_values,
                               const ts_tensor_map *cache, const char *tag);
void ts_map_free(ts_tensor_map *m);
/* Lets the kernel drop the mapped file's pages from this process (they stay in the page
 * cache): once the networks hold their packed / folded copies, most of the file is no longer
 * read, and a later read faults its page back in. Keeps the peak memory of a run down. */
void ts_map_release_pages(ts_tensor_map *m);

const ts_tensor *ts_map_get(const ts_tensor_map *m, const char *name);
/* Finds a float32 tensor by name, checks its exact shape (ndim values follow), marks it
 * used and returns its data. On failure returns NULL with an error naming the key
 * ("missing tensor X" / "tensor X has shape [a,b], expected [c,d]"). */
const float *ts_map_take(ts_tensor_map *m, const char *name, int ndim, ...);
/* Fails naming the first tensor that no ts_map_take claimed, except names for which
 * ignore(name) returns nonzero. */
int ts_map_check_all_used(const ts_tensor_map *m, int (*ignore)(const char *name));

#endif
