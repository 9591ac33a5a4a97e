/* api.c - the public model and encoding entry points of tinysam.h: load a checkpoint,
 * build the three networks from it, encode images into embeddings. */
#include "core.h"
#include "io/json.h"
#include "io/tensor_map.h"
#include "model/sam.h"
#include "model/sam_decoder_internal.h" /* the dense PE tables, for the load cache */
#include "model/transforms.h"
#include "nn/gemm_i8.h"
#include "nn/nn.h"
#include "quant/int8_model.h"
#include "quant/sim_model.h"
#include "threads.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Tensors the checkpoint carries that inference never reads. */
static int ignored_tensor(const char *name) {
    size_t n = strlen(name);
    static const char *suffix = ".num_batches_tracked";
    if (n >= strlen(suffix) && !strcmp(name + n - strlen(suffix), suffix)) return 1;
    /* the scale of a weight-only int8 tensor already expanded to float32 (a converted int8
     * model: quant/int8_model.h) */
    if (n > 13 && !strcmp(name + n - 13, ".weight_scale")) return 1;
    return !strncmp(name, "image_encoder.norm_head.", 24) || !strncmp(name, "image_encoder.head.", 19);
}

static int detect_family(const ts_tensor_map *m, char *family, size_t cap) {
    if (ts_map_get(m, "image_encoder.patch_embed.seq.0.c.weight")) {
        snprintf(family, cap, "vit_t");
        return TINYSAM_OK;
    }
    if (ts_map_get(m, "image_encoder.patch_embed.proj.weight")) {
        snprintf(family, cap, "vit");
        return TINYSAM_OK;
    }
    return ts_error(TINYSAM_E_UNSUPPORTED,
                    "not a SAM-family checkpoint: no image encoder patch embedding found (first "
                    "tensor: '%s')",
                    m->n ? m->t[0].name : "(none)");
}

static void fill_info(tinysam_model *model) {
    const ts_tensor_map *m = model->map;
    tinysam_model_info *inf = &model->info;
    inf->n_tensors = m->n;
    int n_f32 = 0, n_f16 = 0, n_other = 0;
    for (int i = 0; i < m->n; i++) {
        const ts_tensor *t = &m->t[i];
        inf->n_values += t->numel;
        /* parameters, not buffers: BatchNorm statistics and the fixed PE matrix are state */
        int buffer = strstr(t->name, ".running_mean") || strstr(t->name, ".running_var") ||
                     strstr(t->name, "positional_encoding_gaussian_matrix") ||
                     /* Q-TinySAM's steps and block counts (quant/sim_layers.h) */
                     strstr(t->name, "_interval") || t->dtype == TS_DTYPE_I32 ||
                     (strlen(t->name) > 7 && !strcmp(t->name + strlen(t->name) - 7, ".a_bias"));
        if (t->used && !buffer) inf->n_params_used += t->numel;
        if (t->dtype != TS_DTYPE_F32) continue;
        if (t->file_dtype == TS_DTYPE_F32) n_f32++;
        else if (t->file_dtype == TS_DTYPE_F16) n_f16++;
        else n_other++;
    }
    const char *dt = n_other || (n_f32 && n_f16) ? "mixed" : n_f16 ? "float16" : "float32";
    if (model->encoder && ts_tiny_vit_n_int8(model->encoder))
        dt = "w8a8"; /* int8 encoder GEMMs, the rest float32 (quant/int8_model.h) */
    if (model->vit && ts_sam_vit_n_int8(model->vit))
        dt = "w8a8"; /* int8 ViT linears (quant/int8_vit.h) */
    if (model->sim) dt = "w8a8-sim"; /* Q-TinySAM's simulated quantisation (quant/sim_model.h) */
    snprintf(inf->source_dtype, sizeof inf->source_dtype, "%s", dt);
    snprintf(inf->source_format, sizeof inf->source_format, "%s", m->format);
    if (model->encoder) {
        snprintf(inf->config, sizeof inf->config,
                 "{\"encoder\":\"TinyViT\",\"embed_dims\":[64,128,160,320],\"depths\":[2,2,6,2],"
                 "\"num_heads\":[2,4,5,10],\"window_sizes\":[7,7,14,7],\"img_size\":1024,"
                 "\"prompt_embed_dim\":256}");
    } else {
        const ts_sam_vit_config *c = ts_sam_vit_get_config(model->vit);
        char g[256] = "";
        for (int i = 0; i < c->n_global; i++) {
            size_t l = strlen(g);
            snprintf(g + l, sizeof g - l, "%s%d", i ? "," : "", c->global_idx[i]);
        }
        snprintf(inf->config, sizeof inf->config,
                 "{\"encoder\":\"ViT\",\"embed_dim\":%d,\"depth\":%d,\"num_heads\":%d,"
                 "\"head_dim\":%d,\"global_attn_indexes\":[%s],\"window_size\":%d,"
                 "\"patch_size\":%d,\"out_chans\":%d,\"img_size\":1024,\"prompt_embed_dim\":256}",
                 c->embed_dim, c->depth, c->num_heads, c->head_dim, g, c->window_size, c->patch,
                 c->out_chans);
    }
}

/* Marks the map's load cache (io/tensor_map.h) usable when its tag is the running ISA's and
 * layout's; returns 1 with image set when it holds the packed GEMM weights. */
static int use_load_cache(ts_tensor_map *m, ts_wpack_image *image) {
    memset(image, 0, sizeof *image);
    if (!m->n_cache) return 0;
    char tag[sizeof m->cache_tag];
    ts_wpack_layout_tag(NULL, tag, sizeof tag);
    m->cache_ok = !strcmp(m->cache_tag, tag);
    const ts_tensor *dir = ts_map_cache_get(m, TS_CACHE_WPACK_DIR),
                    *data = ts_map_cache_get(m, TS_CACHE_WPACK_DATA);
    if (!dir || !data || dir->dtype != TS_DTYPE_I32 || dir->ndim != 2 || dir->shape[1] != 5 ||
        dir->shape[0] > (1 << 20) || data->dtype != TS_DTYPE_U8 || data->ndim != 1)
        return 0;
    *image = (ts_wpack_image){.tag = m->cache_tag, .dir = dir->data, .n = (int)dir->shape[0],
                              .data = data->data, .bytes = (size_t)data->numel};
    return 1;
}

/* Build with -DTS_LOAD_PROFILE for the load's parts on stderr: wall / process CPU ms. */
#ifdef TS_LOAD_PROFILE
#include <time.h>
static double prof_clock(clockid_t c) {
    struct timespec t;
    clock_gettime(c, &t);
    return (double)t.tv_sec * 1e3 + (double)t.tv_nsec * 1e-6;
}
#define PROF0 double pw_ = prof_clock(CLOCK_MONOTONIC), pc_ = prof_clock(CLOCK_PROCESS_CPUTIME_ID)
#define PROF(s)                                                                                \
    do {                                                                                       \
        double w_ = prof_clock(CLOCK_MONOTONIC), c_ = prof_clock(CLOCK_PROCESS_CPUTIME_ID);    \
        fprintf(stderr, "load %-8s %6.1f / %6.1f ms\n", s, w_ - pw_, c_ - pc_);               \
        pw_ = w_;                                                                              \
        pc_ = c_;                                                                              \
    } while (0)
#else
#define PROF0   ((void)0)
#define PROF(s) ((void)0)
#endif

tinysam_status tinysam_model_load(const char *path, tinysam_model **out) {
    if (!path || !out) return ts_error(TINYSAM_E_ARG, "tinysam_model_load: NULL argument");
    *out = NULL;
    ts_error_clear();
    tinysam_model *model = ts_calloc(1, sizeof *model);
    if (!model) return TINYSAM_E_NOMEM;
    PROF0;
    ts_wpack_batch *batch = NULL;
    /* our safetensors' data digest is checked on a thread of its own meanwhile (waited for
     * below, before anything is returned) */
    int rc = ts_map_load_async(path, &model->map);
    PROF("map_load");
    if (rc) goto fail;
    ts_map_strip_wrapper_prefix(model->map); /* DistributedDataParallel, torch.compile */
    /* an int8 model file: weight-only int8 tensors back to float32 (the W8A8 encoder GEMMs
     * stay int8 and are packed by the encoder loader) */
    if ((rc = ts_int8_model_expand(model->map))) goto fail;
    /* Q-TinySAM quantisation layers (a module-tree pickle or its conversion) */
    if ((rc = ts_simq_model_load(model->map, &model->sim))) goto fail;
    PROF("expand");
    if ((rc = detect_family(model->map, model->info.family, sizeof model->info.family))) goto fail;
    /* every GEMM weight of the three networks packed at the end, together, in parallel */
    batch = ts_wpack_batch_begin();
    ts_i8pack_batch_begin(); /* int8 encoder / decoder layers, likewise */
    /* our safetensors' load cache: read in place when made for this ISA and layout */
    ts_wpack_image image;
    if (use_load_cache(model->map, &image)) ts_wpack_batch_use_image(batch, &image);
    ts_wpack_batch_keep_list(batch, &model->packs, &model->n_packs);
    /* the prompt encoder first: its dense PE table is computed on a thread of its own while
     * the other networks load (it has no packs: the batch's order is unchanged) */
    if ((rc = ts_prompt_encoder_load_async(model->map, &model->prompt_encoder))) goto fail;
    PROF("prompt");
    if (!strcmp(model->info.family, "vit_t")) rc = ts_tiny_vit_load(model->map, &model->encoder);
    else rc = ts_sam_vit_load(model->map, &model->vit);
    PROF("encoder");
    if (rc) goto fail;
    if ((rc = ts_mask_decoder_load(model->map, &model->mask_decoder))) goto fail;
    PROF("decoder");
    ts_i8pack_batch_end(1);
    rc = ts_wpack_batch_end(batch, 1);
    batch = NULL;
    ts_prompt_encoder_ready(model->prompt_encoder);
    PROF("pack");
    if (rc) goto fail;
    if ((rc = ts_map_wait_checks(model->map))) goto fail;
    PROF("digest");
    ts_map_release_pages(model->map);
    ts_mask_decoder_prepare(model->mask_decoder); /* its first call's scratch, now */
    if ((rc = ts_map_check_all_used(model->map, ignored_tensor))) goto fail;
    fill_info(model);
    *out = model;
    return TINYSAM_OK;
fail:
    ts_i8pack_batch_end(0); /* (none open: nothing) */
    if (batch) ts_wpack_batch_end(batch, 0);
    /* a corrupted file is reported as such, whatever else its data made fail */
    if (model->map && model->map->digest_job) {
        int rd = ts_map_wait_checks(model->map);
        if (rd) rc = rd;
    }
    ts_error_prefix(rc, "%s", path);
    tinysam_model_free(model);
    return rc;
}

void tinysam_model_free(tinysam_model *m) {
    if (!m) return;
    if (m->encoder) ts_tiny_vit_free(m->encoder);
    if (m->vit) ts_sam_vit_free(m->vit);
    if (m->prompt_encoder) ts_prompt_encoder_free(m->prompt_encoder);
    if (m->mask_decoder) ts_mask_decoder_free(m->mask_decoder);
    ts_simq_model_free(m->sim);
    free(m->packs);
    if (m->map) ts_map_free(m->map);
    free(m);
}

tinysam_status tinysam_model_get_info(const tinysam_model *m, tinysam_model_info *out) {
    if (!m || !out) return ts_error(TINYSAM_E_ARG, "tinysam_model_get_info: NULL argument");
    *out = m->info;
    return TINYSAM_OK;
}

/* Rewrites the safetensors file at path (just written from a float model) with a load
 * cache (io/tensor_map.h) of the file loaded back: exactly what a load of it computes. */
static int add_load_cache(const char *path, int n, const char **keys, const char **values) {
    tinysam_model *m = NULL;
    int rc = tinysam_model_load(path, &m);
    if (rc) return rc;
    char tag[64];
    ts_wpack_layout_tag(NULL, tag, sizeof tag);
    size_t bytes = ts_wpack_image_bytes(m->packs, m->n_packs);
    int32_t *dir = malloc(sizeof(int32_t) * 5 * (size_t)(m->n_packs + 1));
    float *data = ts_malloc_aligned(bytes + 64);
    float *pe = ts_malloc_aligned(sizeof(float) * 4096 * 256);
    if (!dir || !data || !pe) {
        rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
    } else if (m->n_packs && !ts_wpack_image_write(m->packs, m->n_packs, dir, data)) {
        memcpy(pe, m->prompt_encoder->dense_pe_tok, sizeof(float) * 4096 * 256);
        /* the packs first: the first tensor is 64-byte aligned, and each is a multiple of 64 */
        ts_tensor t[3] = {
            {.name = TS_CACHE_WPACK_DATA, .dtype = TS_DTYPE_U8, .ndim = 1,
             .shape = {(int64_t)bytes}, .numel = (int64_t)bytes, .data = data},
            {.name = TS_CACHE_DENSE_PE, .dtype = TS_DTYPE_F32, .ndim = 2,
             .shape = {4096, 256}, .numel = 4096 * 256, .data = pe},
            {.name = TS_CACHE_WPACK_DIR, .dtype = TS_DTYPE_I32, .ndim = 2,
             .shape = {m->n_packs, 5}, .numel = 5 * (int64_t)m->n_packs, .data = dir},
        };
        ts_tensor_map cache = {.n = 3, .cap = 3, .t = t};
        rc = ts_safetensors_save_cached(path, m->map, n, keys, values, &cache, tag);
    }
    free(dir);
    ts_free_aligned(data);
    ts_free_aligned(pe);
    tinysam_model_free(m);
    return rc;
}

tinysam_status tinysam_model_save_safetensors(const tinysam_model *m, const char *path) {
    return ts_model_save_safetensors_opts(m, path, 1);
}

int ts_model_save_safetensors_opts(const tinysam_model *m, const char *path, int load_cache) {
    if (!m || !path) return ts_error(TINYSAM_E_ARG, "tinysam_model_save_safetensors: NULL argument");
    /* The config travels in the metadata so that a reader needs no file-name convention. */
    const char *keys[7] = {"format", "tinysam.family", "tinysam.version", "tinysam.config"};
    const char *values[7] = {"pt", m->info.family, TINYSAM_VERSION, m->info.config};
    int n = 4;
    /* a module tree's classes and quantisation layers travel too (io/module_tree.h), so that
     * the converted file runs the same layers */
    ts_json *meta = NULL;
    if (m->map->metadata_json &&
        !ts_json_parse(m->map->metadata_json, strlen(m->map->metadata_json), &meta)) {
        static const char *const carry[3] = {"tinysam.source", "tinysam.module_classes",
                                             "tinysam.quant_layers"};
        for (int i = 0; i < 3; i++) {
            const ts_json *v = ts_json_get(meta, carry[i]);
            if (v && v->type == TS_JSON_STRING) {
                keys[n] = carry[i];
                values[n++] = v->string;
            }
        }
    }
    int rc = ts_safetensors_save(path, m->map, n, keys, values);
    /* float models get a load cache (io/tensor_map.h), made from the file just written */
    int quantised = (m->encoder && ts_tiny_vit_n_int8(m->encoder)) ||
                    (m->vit && ts_sam_vit_n_int8(m->vit)) || m->sim;
    if (!rc && !quantised && load_cache) rc = add_load_cache(path, n, keys, values);
    ts_json_free(meta);
    return rc;
}

int ts_encoder_input_make(const tinysam_image *img, ts_encoder_input *out) {
    memset(out, 0, sizeof *out);
    if (!img->rgb || img->width <= 0 || img->height <= 0)
        return ts_error(TINYSAM_E_ARG, "tinysam_encode: empty image");
    int newh, neww;
    ts_preprocess_shape(img->height, img->width, TINYSAM_INPUT_SIDE, &newh, &neww);
    uint8_t *resized = ts_malloc((size_t)newh * neww * 3);
    float *input = ts_malloc_aligned((size_t)3 * TINYSAM_INPUT_SIDE * TINYSAM_INPUT_SIDE * sizeof(float));
    int rc = TINYSAM_E_NOMEM;
    if (resized && input && !(rc = ts_resize_rgb_pil(img->rgb, img->width, img->height, resized,
                                                     neww, newh))) {
        ts_normalize_pad(resized, newh, neww, input);
        *out = (ts_encoder_input){input, img->width, img->height, neww, newh};
        input = NULL;
    }
    free(resized);
    ts_free_aligned(input);
    return rc;
}

void ts_encoder_input_free(ts_encoder_input *in) {
    ts_free_aligned(in->input);
    memset(in, 0, sizeof *in);
}

int ts_encoder_input_new(const tinysam_image *img, void **out) {
    *out = NULL;
    ts_encoder_input *in = ts_malloc(sizeof *in);
    if (!in) return TINYSAM_E_NOMEM;
    int rc = ts_encoder_input_make(img, in);
    if (rc) free(in);
    else *out = in;
    return rc;
}

void ts_encoder_input_delete(void *in) {
    if (!in) return;
    ts_encoder_input_free(in);
    free(in);
}

int ts_encode_input(tinysam_model *m, const ts_encoder_input *in, tinysam_embedding **out) {
    *out = NULL;
    tinysam_embedding *e = ts_calloc(1, sizeof *e);
    float *data = ts_malloc_aligned((size_t)TINYSAM_EMBED_DIM * TINYSAM_EMBED_SIDE * TINYSAM_EMBED_SIDE * sizeof(float));
    int rc = TINYSAM_E_NOMEM;
    if (e && data)
        rc = m->sim       ? ts_simq_encode(m->sim, in->input, data)
             : m->encoder ? ts_tiny_vit_forward(m->encoder, in->input, data, NULL, NULL)
                          : ts_sam_vit_forward(m->vit, in->input, data);
    if (rc) {
        free(e);
        ts_free_aligned(data);
        return rc;
    }
    *e = (tinysam_embedding){data, in->orig_w, in->orig_h, in->input_w, in->input_h};
    *out = e;
    return TINYSAM_OK;
}

/* The first encode's input is made on one thread while the pool's other thread faults in
 * the pages that encode will write: the decoder's one-prompt scratch (faulted in by the
 * per-image preparation below), then the encoder's activation arena, until the input is
 * ready. Fresh pages are what made a first encode slower than a warm one (issue 20). */
typedef struct {
    tinysam_model *m;
    const tinysam_image *img;
    ts_encoder_input *in;
    int rc;
    char err[1024]; /* its message: errors are per thread, and either thread may make it */
    atomic_int input_ready;
} first_input_job;

static void first_input_task(void *ctx, int i, int tid) {
    (void)tid;
    first_input_job *j = ctx;
    if (i == 0) {
        j->rc = ts_encoder_input_make(j->img, j->in);
        if (j->rc) snprintf(j->err, sizeof j->err, "%s", tinysam_last_error());
        atomic_store(&j->input_ready, 1);
    } else if (ts_sam_decode_warm(j->m->mask_decoder, &j->input_ready)) {
        ts_tiny_vit_warm(j->m->encoder, &j->input_ready);
    }
}

static int input_make_warming(tinysam_model *m, const tinysam_image *img,
                              ts_encoder_input *in) {
    if (m->sim || !m->encoder || !m->mask_decoder || ts_num_threads() < 2 ||
        atomic_exchange(&m->warmed, 1)) /* once: what it leaves is faulted in by use */
        return ts_encoder_input_make(img, in);
    first_input_job j = {.m = m, .img = img, .in = in};
    atomic_init(&j.input_ready, 0);
    ts_parallel_for(2, first_input_task, &j);
    return j.rc ? ts_error(j.rc, "%s", j.err) : 0;
}

tinysam_status tinysam_encode(tinysam_model *m, const tinysam_image *img,
                              tinysam_embedding **out) {
    if (!m || !img || !out) return ts_error(TINYSAM_E_ARG, "tinysam_encode: NULL argument");
    *out = NULL;
    ts_encoder_input in;
    int rc = input_make_warming(m, img, &in);
    if (!rc) rc = ts_encode_input(m, &in, out);
    ts_encoder_input_free(&in);
    /* set_image's per-image decoder work, now rather than in the first predict */
    if (!rc && (rc = ts_embedding_prepare(m, *out))) {
        tinysam_embedding_free(*out);
        *out = NULL;
    }
    return rc;
}

void tinysam_embedding_free(tinysam_embedding *e) {
    if (!e) return;
    ts_free_aligned(e->data);
    free(e);
}

const float *tinysam_embedding_data(const tinysam_embedding *e) {
    return e ? e->data : NULL;
}

void tinysam_embedding_size(const tinysam_embedding *e, int *orig_w, int *orig_h, int *input_w,
                            int *input_h) {
    if (orig_w) *orig_w = e->orig_w;
    if (orig_h) *orig_h = e->orig_h;
    if (input_w) *input_w = e->input_w;
    if (input_h) *input_h = e->input_h;
}
