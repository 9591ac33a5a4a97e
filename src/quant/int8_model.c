/* int8_model.c - writes the W8A8 model file of int8_model.h from a float model and its
 * calibrated input quantisers. */
#include "quant/int8_model.h"
#include "core.h"
#include "io/tensor_map_internal.h"
#include "quant/quant.h"
#include "tinysam.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The quantised layer (index) a float tensor of src belongs to, or -1: for P = "X.c" the
 * tensors "X.c.*" and "X.bn.*", else "P.weight" and "P.bias". */
static int owner_layer(const ts_tiny_vit_qlayer *ql, int n, const char *name) {
    for (int i = 0; i < n; i++) {
        const char *P = ql[i].name;
        size_t lp = strlen(P);
        if (lp > 2 && !strcmp(P + lp - 2, ".c")) {
            size_t lb = lp - 2; /* "X" */
            if (!strncmp(name, P, lb) && (!strncmp(name + lb, ".c.", 3) ||
                                          !strncmp(name + lb, ".bn.", 4)))
                return i;
        } else if (!strncmp(name, P, lp) &&
                   (!strcmp(name + lp, ".weight") || !strcmp(name + lp, ".bias"))) {
            return i;
        }
    }
    return -1;
}

/* A float weight stored weight-only int8 (int8_model.h). */
static int store_int8(const ts_tensor *t) {
    size_t l = strlen(t->name);
    return t->dtype == TS_DTYPE_F32 && t->ndim >= 2 && t->numel >= TS_INT8_STORE_MIN &&
           l > 7 && !strcmp(t->name + l - 7, ".weight");
}

typedef struct {
    int8_t *codes;
    float *scale, *bias, step, zp;
} qdata;

ts_tensor *ts_int8_map_add(ts_tensor_map *m, const char *P, const char *suffix, ts_dtype dt,
                           void *data, int64_t d0, int64_t d1) {
    char name[256];
    snprintf(name, sizeof name, "%.160s.%.32s", P, suffix);
    ts_tensor *t = ts_map_add(m, name);
    if (!t) return NULL;
    t->dtype = t->file_dtype = dt;
    t->ndim = d1 ? 2 : 1;
    t->shape[0] = d0;
    t->shape[1] = d1;
    t->numel = d1 ? d0 * d1 : d0;
    t->data = data;
    t->used = 1;
    return t;
}

int ts_int8_map_copy(ts_tensor_map *m, const ts_tensor *t, void **block) {
    *block = NULL;
    ts_tensor *c = ts_map_add(m, t->name);
    if (!c) return TINYSAM_E_NOMEM;
    char *name = c->name;
    *c = *t;
    c->name = name;
    if (!store_int8(t)) return 0;
    /* weight-only: codes + one scale per index of dim 0 */
    int64_t rows = t->shape[0], cols = t->numel / rows;
    uint8_t *buf = ts_malloc((size_t)t->numel + sizeof(float) * (size_t)rows + 4);
    if (!buf) return TINYSAM_E_NOMEM;
    *block = buf;
    float *sc = (float *)(buf + ((size_t)t->numel + 3) / 4 * 4);
    ts_quant_weights(t->data, (int)rows, (int)cols, (int)cols, (int8_t *)buf, sc);
    c->dtype = c->file_dtype = TS_DTYPE_I8;
    c->data = buf;
    char sn[160];
    snprintf(sn, sizeof sn, "%.*s", (int)(strlen(t->name) - 7), t->name);
    return ts_int8_map_add(m, sn, "weight_scale", TS_DTYPE_F32, sc, rows, 0) ? 0
                                                                             : TINYSAM_E_NOMEM;
}

static int add_layer(ts_tensor_map *m, const ts_tiny_vit_qlayer *q, qdata *d) {
    if (q->taps == 9) { /* a 3x3 conv: the official [co][ci][3][3] */
        ts_tensor *t = ts_int8_map_add(m, q->name, "weight", TS_DTYPE_I8, d->codes, q->N, q->K);
        if (!t) return TINYSAM_E_NOMEM;
        t->ndim = 4;
        t->shape[1] = q->K / 9;
        t->shape[2] = t->shape[3] = 3;
    }
    // clang-format off
    if ((q->taps != 9 &&
         !ts_int8_map_add(m, q->name, "weight",           TS_DTYPE_I8,  d->codes, q->N, q->K)) ||
        !ts_int8_map_add(m, q->name, "weight_scale",     TS_DTYPE_F32, d->scale, q->N, 0)    ||
        !ts_int8_map_add(m, q->name, "bias",             TS_DTYPE_F32, d->bias,  q->N, 0)    ||
        !ts_int8_map_add(m, q->name, "input_step",       TS_DTYPE_F32, &d->step, 1, 0)       ||
        !ts_int8_map_add(m, q->name, "input_zero_point", TS_DTYPE_F32, &d->zp,   1, 0))
        return TINYSAM_E_NOMEM;
    // clang-format on
    return 0;
}

int ts_int8_model_save(const char *path, const ts_tensor_map *src, const ts_tiny_vit *enc,
                       const float *step, const int *zp, int n_meta, const char *const *keys,
                       const char *const *values) {
    return ts_int8_model_save_layers(path, src, enc, step, zp, TS_TINY_VIT_N_ENCODER, NULL,
                                     n_meta, keys, values);
}

int ts_int8_model_save_layers(const char *path, const ts_tensor_map *src,
                              const ts_tiny_vit *enc, const float *step, const int *zp, int nq,
                              const float *attn_steps, int n_meta, const char *const *keys,
                              const char *const *values) {
    return ts_int8_model_save_layers_ws(path, src, enc, step, zp, NULL, nq, attn_steps, n_meta,
                                        keys, values);
}

int ts_int8_model_save_layers_ws(const char *path, const ts_tensor_map *src,
                                 const ts_tiny_vit *enc, const float *step, const int *zp,
                                 const float *const *w_scale, int nq, const float *attn_steps,
                                 int n_meta, const char *const *keys,
                                 const char *const *values) {
    if (!path || !src || !enc || !step || !zp || n_meta < 0 || (n_meta && (!keys || !values)) ||
        nq < 0 || nq > TS_TINY_VIT_N_QLAYERS)
        return ts_error(TINYSAM_E_ARG, "ts_int8_model_save: bad argument");
    enum { NQ = TS_TINY_VIT_N_QLAYERS };
    ts_tiny_vit_qlayer ql[NQ];
    qdata qd[NQ];
    memset(qd, 0, sizeof qd);
    ts_tensor_map *m = ts_calloc(1, sizeof *m);
    const char **mk = ts_calloc((size_t)n_meta + 1, sizeof *mk);
    const char **mv = ts_calloc((size_t)n_meta + 1, sizeof *mv);
    char *emitted = ts_calloc(NQ, 1);
    void **extra = ts_calloc((size_t)src->n + 1, sizeof(void *)); /* weight-only buffers */
    int n_extra = 0;
    int rc = TINYSAM_E_NOMEM;
    if (!m || !mk || !mv || !emitted || !extra) goto done;
    for (int i = 0; i < nq; i++) {
        if ((rc = ts_tiny_vit_qlayer_get(enc, i, &ql[i]))) goto done;
        const ts_tiny_vit_qlayer *q = &ql[i];
        if (!q->w) {
            rc = ts_error(TINYSAM_E_ARG, "%s: the encoder is already quantised", q->name);
            goto done;
        }
        if (!(step[i] > 0.0f) || zp[i] < 0 || zp[i] > 255) {
            rc = ts_error(TINYSAM_E_ARG, "%s: bad input quantiser (step %g, zero point %d)",
                          q->name, (double)step[i], zp[i]);
            goto done;
        }
        rc = TINYSAM_E_NOMEM;
        qd[i].codes = ts_malloc((size_t)q->N * q->K);
        qd[i].scale = ts_malloc(sizeof(float) * (size_t)q->N);
        qd[i].bias = ts_calloc((size_t)q->N, sizeof(float));
        if (!qd[i].codes || !qd[i].scale || !qd[i].bias) goto done;
        if (w_scale && w_scale[i]) { /* searched scales (the Hessian method) */
            memcpy(qd[i].scale, w_scale[i], sizeof(float) * (size_t)q->N);
            ts_quant_weights_scaled(q->w, q->N, q->K, q->K, qd[i].scale, qd[i].codes);
        } else {
            ts_quant_weights(q->w, q->N, q->K, q->K, qd[i].codes, qd[i].scale);
        }
        if (q->taps == 9) { /* codes [co][ky][kx][ci] -> the official [co][ci][ky][kx] */
            const int ci = q->K / 9;
            int8_t *perm = ts_malloc((size_t)q->N * q->K);
            if (!perm) goto done;
            for (int o = 0; o < q->N; o++)
                for (int c = 0; c < ci; c++)
                    for (int k = 0; k < 9; k++)
                        perm[((size_t)o * ci + c) * 9 + k] = qd[i].codes[((size_t)o * 9 + k) * ci + c];
            free(qd[i].codes);
            qd[i].codes = perm;
        }
        if (q->b) memcpy(qd[i].bias, q->b, sizeof(float) * (size_t)q->N);
        qd[i].step = step[i];
        qd[i].zp = (float)zp[i];
    }
    /* the float file's tensors in order, each quantised layer where its first tensor was */
    for (int i = 0; i < src->n; i++) {
        const ts_tensor *t = &src->t[i];
        int o = owner_layer(ql, nq, t->name);
        if (o >= 0) {
            if (!emitted[o] && (rc = add_layer(m, &ql[o], &qd[o]))) goto done;
            emitted[o] = 1;
            continue;
        }
        void *block = NULL;
        int bad = ts_int8_map_copy(m, t, &block);
        if (block) extra[n_extra++] = block;
        if (bad) goto done;
    }
    for (int i = 0; i < nq; i++)
        if (!emitted[i] && (rc = add_layer(m, &ql[i], &qd[i]))) goto done;
    for (int i = 0; attn_steps && i < TS_TINY_VIT_N_ATTN; i++) {
        ts_tiny_vit_attn a;
        if ((rc = ts_tiny_vit_attn_get(enc, i, &a))) goto done;
        for (int k = 0; k < 4; k++)
            if (!(attn_steps[4 * i + k] > 0.0f)) {
                rc = ts_error(TINYSAM_E_ARG, "%s: bad product step %g", a.name,
                              (double)attn_steps[4 * i + k]);
                goto done;
            }
        rc = TINYSAM_E_NOMEM;
        if (!ts_int8_map_add(m, a.name, "product_steps", TS_DTYPE_F32, (void *)(attn_steps + 4 * i), 4, 0))
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
    if (m) { /* names are ours, data is src's or qd's */
        for (int i = 0; i < m->n; i++) free(m->t[i].name);
        free(m->t);
        free(m);
    }
    for (int i = 0; i < NQ; i++) {
        free(qd[i].codes);
        free(qd[i].scale);
        free(qd[i].bias);
    }
    for (int i = 0; extra && i < n_extra; i++) free(extra[i]);
    free(extra);
    free(mk);
    free(mv);
    free(emitted);
    return rc;
}

int ts_int8_model_expand(ts_tensor_map *m) {
    if (!m) return ts_error(TINYSAM_E_ARG, "ts_int8_model_expand: NULL argument");
    for (int i = 0; i < m->n; i++) {
        ts_tensor *t = &m->t[i];
        size_t l = strlen(t->name);
        if (t->dtype != TS_DTYPE_I8 || l <= 7 || strcmp(t->name + l - 7, ".weight")) continue;
        char name[192];
        snprintf(name, sizeof name, "%.*s.input_step", (int)(l - 7), t->name);
        if (ts_map_get(m, name)) continue; /* a W8A8 GEMM: the encoder packs the codes */
        snprintf(name, sizeof name, "%.*s.weight_scale", (int)(l - 7), t->name);
        ts_tensor *s = NULL;
        for (int j = 0; j < m->n && !s; j++)
            if (!strcmp(m->t[j].name, name)) s = &m->t[j];
        if (!s) continue; /* left for the loader to reject */
        if (s->dtype != TS_DTYPE_F32 || s->ndim != 1 || t->ndim < 1 || s->numel != t->shape[0] ||
            t->shape[0] <= 0)
            return ts_error(TINYSAM_E_FORMAT, "tensor %s does not match %s", name, t->name);
        const int64_t rows = t->shape[0], cols = t->numel / rows;
        float *f = ts_malloc(sizeof(float) * (size_t)(t->numel ? t->numel : 1));
        if (!f) return TINYSAM_E_NOMEM;
        const int8_t *q = t->data;
        const float *sc = s->data;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t c = 0; c < cols; c++) f[r * cols + c] = sc[r] * (float)q[r * cols + c];
        const uint8_t *lo = m->map_base, *d = t->data;
        if (!(lo && d >= lo && d < lo + m->map_size)) free(t->data);
        t->data = f;
        t->dtype = TS_DTYPE_F32; /* file_dtype stays I8 */
        s->used = 1;
    }
    return 0;
}
