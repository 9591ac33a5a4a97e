/* int8_vit.c - the W8A8 SAM ViT encoder's int8 linear layers and their model file
 * (int8_vit.h). */
#include "quant/int8_vit.h"
#include "core.h"
#include "io/tensor_map_internal.h"
#include "nn/gemm_i8.h"
#include "nn/nn.h"
#include "quant/int8_model.h"
#include "quant/quant.h"
#include "tinysam.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    ts_i8pack *pk; /* NULL: the layer is float */
    const float *bias;
    float step;
    int zp;
} i8_layer;

struct ts_vit_i8 {
    int n, count;
    i8_layer *L;
};

int ts_vit_layer_describe(int depth, int C, int id, ts_vit_layer_desc *d) {
    memset(d, 0, sizeof *d);
    if (depth < 1 || C < 1 || id < 0 || id >= TS_VIT_N_LAYERS(depth)) return -1;
    d->has_bias = 1;
    if (id == TS_VIT_L_PATCH(depth)) {
        snprintf(d->name, sizeof d->name, "image_encoder.patch_embed.proj");
        d->N = C;
        d->K = 3 * 16 * 16;
    } else if (id == TS_VIT_L_NECK0(depth)) {
        snprintf(d->name, sizeof d->name, "image_encoder.neck.0");
        d->N = 256;
        d->K = C;
        d->has_bias = 0;
    } else {
        static const char *const part[4] = {"attn.qkv", "attn.proj", "mlp.lin1", "mlp.lin2"};
        static const int n_mul[4] = {3, 1, 4, 1}, k_mul[4] = {1, 1, 1, 4};
        const int kind = id % 4;
        snprintf(d->name, sizeof d->name, "image_encoder.blocks.%d.%s", id / 4, part[kind]);
        d->N = n_mul[kind] * C;
        d->K = k_mul[kind] * C;
        d->post_gelu = kind == TS_VIT_L_FC2;
    }
    return 0;
}

/* A float32 [n] tensor, marked used, or NULL with an error naming it. */
static const float *take_vec(ts_tensor_map *m, const char *name, int n) {
    ts_tensor *t = (ts_tensor *)ts_map_get(m, name);
    if (!t || t->dtype != TS_DTYPE_F32 || t->ndim != 1 || t->shape[0] != n) {
        ts_error(TINYSAM_E_FORMAT, "tensor %s: expected float32 [%d]", name, n);
        return NULL;
    }
    t->used = 1;
    return t->data;
}

static int load_layer(ts_tensor_map *m, const ts_vit_layer_desc *d, i8_layer *l) {
    const char *P = d->name;
    const int N = d->N, K = d->K;
    char name[160];
    snprintf(name, sizeof name, "%s.weight", P);
    ts_tensor *t = (ts_tensor *)ts_map_get(m, name);
    if (!t || t->dtype != TS_DTYPE_I8 || t->ndim < 2 || t->shape[0] != N || t->numel != (int64_t)N * K)
        return ts_error(TINYSAM_E_FORMAT, "tensor %s: expected int8 [%d, ...] of %d values", name,
                        N, N * K);
    t->used = 1;
    const float *sc, *st, *zp;
    snprintf(name, sizeof name, "%s.weight_scale", P);
    if (!(sc = take_vec(m, name, N))) return TINYSAM_E_FORMAT;
    l->bias = NULL;
    if (d->has_bias) {
        snprintf(name, sizeof name, "%s.bias", P);
        if (!(l->bias = take_vec(m, name, N))) return TINYSAM_E_FORMAT;
    }
    snprintf(name, sizeof name, "%s.input_step", P);
    if (!(st = take_vec(m, name, 1))) return TINYSAM_E_FORMAT;
    snprintf(name, sizeof name, "%s.input_zero_point", P);
    if (!(zp = take_vec(m, name, 1))) return TINYSAM_E_FORMAT;
    if (ts_i8_check_layer_steps(P, st[0], zp[0], sc, l->bias, N)) return TINYSAM_E_FORMAT;
    /* Linear [N][K], Conv2d [N][3][16][16] (column = c*256 + ky*16 + kx, the order of the
     * encoder's patch columns) and [N][C][1][1] are all [N][K] row-major */
    if (!(l->pk = ts_i8pack_new(t->data, N, K, K, sc))) return ts_error_prefix(TINYSAM_E_NOMEM, "%s", P);
    l->step = st[0];
    l->zp = (int)zp[0];
    return 0;
}

int ts_vit_i8_load(ts_tensor_map *m, int depth, int C, ts_vit_i8 **out) {
    if (!m || !out || depth < 1 || C < 1) return ts_error(TINYSAM_E_ARG, "ts_vit_i8_load: bad argument");
    *out = NULL;
    const int n = TS_VIT_N_LAYERS(depth);
    ts_vit_i8 *q = ts_calloc(1, sizeof *q);
    if (!q || !(q->L = ts_calloc((size_t)n, sizeof *q->L))) {
        free(q);
        return TINYSAM_E_NOMEM;
    }
    q->n = n;
    for (int id = 0; id < n; id++) {
        ts_vit_layer_desc d;
        ts_vit_layer_describe(depth, C, id, &d);
        char name[160];
        snprintf(name, sizeof name, "%s.input_step", d.name);
        if (!ts_map_get(m, name)) continue;
        int rc = load_layer(m, &d, &q->L[id]);
        if (rc) {
            ts_vit_i8_free(q);
            return rc;
        }
        q->count++;
    }
    if (!q->count) {
        ts_vit_i8_free(q);
        return 0;
    }
    *out = q;
    return 0;
}

void ts_vit_i8_free(ts_vit_i8 *q) {
    if (!q) return;
    for (int i = 0; q->L && i < q->n; i++) ts_i8pack_free(q->L[i].pk);
    free(q->L);
    free(q);
}

int ts_vit_i8_has(const ts_vit_i8 *q, int id) {
    return q && id >= 0 && id < q->n && q->L[id].pk;
}

int ts_vit_i8_count(const ts_vit_i8 *q) {
    return q ? q->count : 0;
}

void ts_vit_i8_linear(const ts_vit_i8 *q, int id, int M, const float *X, int ldx, float *Y,
                      int ldy, int accumulate, int act) {
    const i8_layer *l = &q->L[id];
    ts_i8_out o = {.bias = l->bias, .act = act, .accumulate = accumulate, .C = Y, .ldc = ldy};
    ts_gemm_i8_f32(M, X, ldx, l->step, l->zp, l->pk, &o);
}

void ts_vit_i8_mlp(const ts_vit_i8 *q, int id1, int id2, int M, const float *X, int ldx,
                   uint8_t *H, float *Y, int ldy) {
    const i8_layer *l1 = &q->L[id1], *l2 = &q->L[id2];
    const int N1 = ts_i8pack_n(l1->pk);
    ts_i8_out o1 = {.bias = l1->bias, .act = TS_ACT_GELU, .Cq = H, .ldc = N1,
                    .out_step = l2->step, .out_zp = l2->zp};
    ts_gemm_i8_f32(M, X, ldx, l1->step, l1->zp, l1->pk, &o1);
    ts_i8_out o2 = {.bias = l2->bias, .accumulate = 1, .C = Y, .ldc = ldy};
    ts_gemm_i8(M, H, N1, l2->step, l2->zp, l2->pk, &o2);
}

/* ---- the model file --------------------------------------------------------------------- */

/* The layer (index into d) a tensor name belongs to: "P.weight" or "P.bias", else -1. */
static int owner(const ts_vit_layer_desc *d, const float *step, int n, const char *name) {
    for (int i = 0; i < n; i++) {
        size_t lp = strlen(d[i].name);
        if (step[i] > 0.0f && !strncmp(name, d[i].name, lp) &&
            (!strcmp(name + lp, ".weight") || !strcmp(name + lp, ".bias")))
            return i;
    }
    return -1;
}

typedef struct {
    int8_t *codes;
    float *scale, *bias, step, zp;
} qbuf;

int ts_vit_i8_save(const char *path, const ts_tensor_map *src, int depth, int C,
                   const float *step, const int *zp, int n_meta, const char *const *keys,
                   const char *const *values) {
    if (!path || !src || !step || !zp || depth < 1 || C < 1 || n_meta < 0 ||
        (n_meta && (!keys || !values)))
        return ts_error(TINYSAM_E_ARG, "ts_vit_i8_save: bad argument");
    const int n = TS_VIT_N_LAYERS(depth);
    ts_vit_layer_desc *d = ts_calloc((size_t)n, sizeof *d);
    qbuf *qb = ts_calloc((size_t)n, sizeof *qb);
    char *emitted = ts_calloc((size_t)n, 1);
    ts_tensor_map *m = ts_calloc(1, sizeof *m);
    const char **mk = ts_calloc((size_t)n_meta + 1, sizeof *mk);
    const char **mv = ts_calloc((size_t)n_meta + 1, sizeof *mv);
    void **extra = ts_calloc((size_t)src->n + 1, sizeof(void *));
    int n_extra = 0, rc = TINYSAM_E_NOMEM;
    if (!d || !qb || !emitted || !m || !mk || !mv || !extra) goto done;
    for (int i = 0; i < n; i++) {
        ts_vit_layer_describe(depth, C, i, &d[i]);
        if (!(step[i] > 0.0f)) continue; /* stays float */
        if (!isfinite(step[i]) || zp[i] < 0 || zp[i] > 255) {
            rc = ts_error(TINYSAM_E_ARG, "%s: bad input quantiser (step %g, zero point %d)",
                          d[i].name, (double)step[i], zp[i]);
            goto done;
        }
        char name[160];
        snprintf(name, sizeof name, "%s.weight", d[i].name);
        const ts_tensor *w = ts_map_get(src, name);
        if (!w || w->dtype != TS_DTYPE_F32 || w->numel != (int64_t)d[i].N * d[i].K ||
            w->shape[0] != d[i].N) {
            rc = ts_error(TINYSAM_E_ARG, "%s: not a float weight of %d x %d", name, d[i].N, d[i].K);
            goto done;
        }
        const float *b = NULL;
        if (d[i].has_bias) {
            snprintf(name, sizeof name, "%s.bias", d[i].name);
            const ts_tensor *bt = ts_map_get(src, name);
            if (!bt || bt->dtype != TS_DTYPE_F32 || bt->numel != d[i].N) {
                rc = ts_error(TINYSAM_E_ARG, "%s: not a float bias of %d", name, d[i].N);
                goto done;
            }
            b = bt->data;
        }
        rc = TINYSAM_E_NOMEM;
        qb[i].codes = ts_malloc((size_t)d[i].N * d[i].K);
        qb[i].scale = ts_malloc(sizeof(float) * (size_t)d[i].N);
        if (!qb[i].codes || !qb[i].scale) goto done;
        ts_quant_weights(w->data, d[i].N, d[i].K, d[i].K, qb[i].codes, qb[i].scale);
        if (b) {
            if (!(qb[i].bias = ts_malloc(sizeof(float) * (size_t)d[i].N))) goto done;
            memcpy(qb[i].bias, b, sizeof(float) * (size_t)d[i].N);
        }
        qb[i].step = step[i];
        qb[i].zp = (float)zp[i];
    }
    rc = TINYSAM_E_NOMEM;
    for (int i = 0; i < src->n; i++) {
        const ts_tensor *t = &src->t[i];
        int o = owner(d, step, n, t->name);
        if (o >= 0) {
            if (emitted[o]) continue;
            emitted[o] = 1;
            char wn[160];
            snprintf(wn, sizeof wn, "%s.weight", d[o].name);
            const ts_tensor *w = ts_map_get(src, wn);
            ts_tensor *c = ts_map_add(m, wn);
            if (!c) goto done;
            char *keep = c->name;
            *c = *w; /* the float weight's shape */
            c->name = keep;
            c->dtype = c->file_dtype = TS_DTYPE_I8;
            c->data = qb[o].codes;
            c->used = 1;
            // clang-format off
            if (!ts_int8_map_add(m, d[o].name, "weight_scale", TS_DTYPE_F32, qb[o].scale, d[o].N, 0) ||
                (qb[o].bias && !ts_int8_map_add(m, d[o].name, "bias", TS_DTYPE_F32, qb[o].bias, d[o].N, 0)) ||
                !ts_int8_map_add(m, d[o].name, "input_step", TS_DTYPE_F32, &qb[o].step, 1, 0) ||
                !ts_int8_map_add(m, d[o].name, "input_zero_point", TS_DTYPE_F32, &qb[o].zp, 1, 0))
                goto done;
            // clang-format on
            continue;
        }
        void *block = NULL;
        int bad = ts_int8_map_copy(m, t, &block);
        if (block) extra[n_extra++] = block;
        if (bad) goto done;
    }
    for (int i = 0; i < n; i++)
        if (step[i] > 0.0f && !emitted[i]) {
            rc = ts_error(TINYSAM_E_ARG, "%s: no float weight in the model", d[i].name);
            goto done;
        }
    mk[0] = "tinysam.quantization";
    mv[0] = "w8a8";
    for (int i = 0; i < n_meta; i++) {
        mk[i + 1] = keys[i];
        mv[i + 1] = values[i];
    }
    rc = ts_safetensors_save(path, m, n_meta + 1, mk, mv);
done:
    if (m) { /* names are ours, data is src's, qb's or extra's */
        for (int i = 0; i < m->n; i++) free(m->t[i].name);
        free(m->t);
        free(m);
    }
    for (int i = 0; qb && i < n; i++) {
        free(qb[i].codes);
        free(qb[i].scale);
        free(qb[i].bias);
    }
    for (int i = 0; i < n_extra; i++) free(extra[i]);
    free(extra);
    free(qb);
    free(d);
    free(emitted);
    free(mk);
    free(mv);
    return rc;
}
