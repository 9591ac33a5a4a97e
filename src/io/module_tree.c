/* module_tree.c - a torch.save(model) pickle (an nn.Module tree, read as data by pth.c)
 * flattened into the state dict Module.state_dict() would give: "prefix.name" through
 * _modules, each module's _parameters then its persistent _buffers. Which classes are
 * accepted, and why:
 *   - torch.nn modules, the SAM-family modeling classes (TinySAM, segment-anything,
 *     MobileSAM: recognised by class name, whatever the module path) and the four
 *     quantisation classes of TinySAM's quantization_layer/layers.py: their computation is
 *     what our model code (or quant/sim_layers) does for the names and shapes they hold;
 *   - any other class only as a pure container (no parameters, buffers or tensor
 *     attributes of its own): a LoRA or adapter wrapper with weights changes the
 *     computation, so it is refused with its class and path.
 * TinyViT's attention caches ab = attention_biases[:, attention_bias_idxs] (a non-persistent
 * buffer, or a plain attribute in older code) and its eval-mode forward uses ab, not the
 * parameter (spec TINYSAM.md 4.9): both are kept here and ts_module_fold_ab turns them into
 * the attention_biases our encoder reads. */
#include "core.h"
#include "io/module_tree.h"
#include "io/pickle_value.h"
#include "io/tensor_map_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MODULE_MAX_DEPTH 64     /* _modules nesting (the vit_t tree is 7 deep) */
#define MODULE_MAX_VISITS 200000 /* modules visited, shared ones counted per path */
#define MODULE_MAX_CLASSES 256  /* distinct classes listed in the metadata */

static const char *const modeling_classes[] = {
    /* TinySAM / MobileSAM (tiny_vit_sam.py) */
    "TinyViT", "PatchEmbed", "Conv2d_BN", "ConvLayer", "MBConv", "PatchMerging", "BasicLayer",
    "TinyViTBlock", "Attention", "Mlp", "LayerNorm2d", "DropPath",
    /* segment-anything (sam.py, image_encoder.py, prompt_encoder.py, mask_decoder.py,
     * transformer.py, common.py) */
    "Sam", "ImageEncoderViT", "Block", "PromptEncoder", "PositionEmbeddingRandom",
    "MaskDecoder", "TwoWayTransformer", "TwoWayAttentionBlock", "MLPBlock", "MLP",
};

static const char *const quant_classes[] = {
    "InferQuantLinear", "InferQuantLinearPost", "InferQuantConv2d", "InferQuantConvTranspose2d",
};

static int in_list(const char *name, const char *const *list, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!strcmp(name, list[i])) return 1;
    return 0;
}

int ts_module_is_quant_class(const char *cls) {
    return in_list(cls, quant_classes, sizeof quant_classes / sizeof *quant_classes);
}

/* ---- a growing text buffer for the metadata */

typedef struct {
    char *s;
    size_t n, cap;
    int oom;
} sbuf;

static void sb_put(sbuf *b, const char *txt, size_t len) {
    if (b->oom) return;
    if (b->n + len + 1 > b->cap) {
        size_t nc = b->cap ? b->cap : 1024;
        while (nc < b->n + len + 1) nc *= 2;
        char *ns = realloc(b->s, nc);
        if (!ns) {
            b->oom = 1;
            return;
        }
        b->s = ns;
        b->cap = nc;
    }
    memcpy(b->s + b->n, txt, len);
    b->n += len;
    b->s[b->n] = 0;
}

static void sb_str(sbuf *b, const char *t) {
    sb_put(b, t, strlen(t));
}

/* t as the body of a JSON string (quotes and backslashes escaped, controls dropped). */
static void sb_esc(sbuf *b, const char *t) {
    for (; *t; t++) {
        if (*t == '"' || *t == '\\') sb_put(b, "\\", 1);
        if ((unsigned char)*t >= 0x20) sb_put(b, t, 1);
    }
}

/* ---- the walk */

typedef struct {
    const char *what;
    ts_flat *f;
    int visits;
    struct { const char *name; int count; } cls[MODULE_MAX_CLASSES];
    int n_cls;
    sbuf quant; /* the quant_layers object, without braces */
    int n_quant;
} walk_t;

static const val *dget(const val *d, const char *key) {
    if (!d || d->kind != V_DICT) return NULL;
    for (int i = 0; i + 1 < d->n; i += 2)
        if (d->items[i]->kind == V_STR && !strcmp(d->items[i]->s, key)) return d->items[i + 1];
    return NULL;
}

static int in_set(const val *set, const char *name) {
    if (!set || set->kind != V_LIST) return 0;
    for (int i = 0; i < set->n; i++)
        if (set->items[i]->kind == V_STR && !strcmp(set->items[i]->s, name)) return 1;
    return 0;
}

static int emit(walk_t *w, const char *prefix, const char *name, const val *t) {
    ts_flat *f = w->f;
    if (f->n >= 1000000) return ts_error(TINYSAM_E_FORMAT, "%s: too many tensors", w->what);
    if (f->n == f->cap) {
        int nc = f->cap ? 2 * f->cap : 256;
        ts_flat_entry *ne = realloc(f->e, (size_t)nc * sizeof *ne);
        if (!ne) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        f->e = ne;
        f->cap = nc;
    }
    size_t lp = strlen(prefix), ln = strlen(name);
    char *full = malloc(lp + ln + 1);
    if (!full) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    memcpy(full, prefix, lp);
    memcpy(full + lp, name, ln + 1);
    f->e[f->n].name = full;
    f->e[f->n].tensor = t;
    f->n++;
    return 0;
}

static int count_class(walk_t *w, const char *qualified) {
    for (int i = 0; i < w->n_cls; i++)
        if (!strcmp(w->cls[i].name, qualified)) return ++w->cls[i].count, 0;
    if (w->n_cls >= MODULE_MAX_CLASSES)
        return ts_error(TINYSAM_E_FORMAT, "%s: more than %d module classes", w->what,
                        MODULE_MAX_CLASSES);
    w->cls[w->n_cls].name = qualified;
    w->cls[w->n_cls++].count = 1;
    return 0;
}

/* The path for messages: "prefix" without its trailing dot, or "(root)". */
static const char *path_of(const char *prefix, char *buf, size_t cap) {
    size_t l = strlen(prefix);
    if (!l) return "(root)";
    snprintf(buf, cap, "%.*s", (int)(l - 1), prefix);
    return buf;
}

static int int_attr(const val *state, const char *key, int64_t def) {
    const val *v = dget(state, key);
    return v && v->kind == V_INT ? (int)v->i : (int)def;
}

/* A quantisation layer: its class and mode go to the metadata (the steps are buffers). */
static int record_quant(walk_t *w, const val *obj, const char *cls, const char *path) {
    const val *mode = dget(obj->state, "mode");
    if (!mode || mode->kind != V_STR || (strcmp(mode->s, "raw") && strcmp(mode->s, "quant_forward")))
        return ts_error(TINYSAM_E_FORMAT,
                        "%s: quantisation layer '%s' (%s) has no mode \"raw\" or "
                        "\"quant_forward\"",
                        w->what, path, cls);
    if (int_attr(obj->state, "w_bit", 8) != 8 || int_attr(obj->state, "a_bit", 8) != 8)
        return ts_error(TINYSAM_E_UNSUPPORTED,
                        "%s: quantisation layer '%s' (%s) is not 8-bit (w_bit/a_bit)", w->what,
                        path, cls);
    sb_str(&w->quant, w->n_quant++ ? ",\"" : "\"");
    sb_esc(&w->quant, path);
    sb_str(&w->quant, "\":\"");
    sb_str(&w->quant, cls);
    sb_str(&w->quant, mode->s[0] == 'r' ? " raw\"" : " quant_forward\"");
    return w->quant.oom ? ts_error(TINYSAM_E_NOMEM, "out of memory") : 0;
}

static int visit(walk_t *w, val *obj, char *prefix, size_t plen, int depth) {
    char pb[512];
    const char *qual = obj->s, *cls = obj->s + obj->i;
    if (depth > MODULE_MAX_DEPTH)
        return ts_error(TINYSAM_E_FORMAT, "%s: modules nested more than %d deep at '%s'", w->what,
                        MODULE_MAX_DEPTH, path_of(prefix, pb, sizeof pb));
    if (obj->mark)
        return ts_error(TINYSAM_E_FORMAT, "%s: cycle in _modules: '%s' (%s) contains itself",
                        w->what, path_of(prefix, pb, sizeof pb), qual);
    if (++w->visits > MODULE_MAX_VISITS)
        return ts_error(TINYSAM_E_FORMAT, "%s: more than %d modules", w->what, MODULE_MAX_VISITS);
    const val *st = obj->state;
    if (!st)
        return ts_error(TINYSAM_E_FORMAT, "%s: '%s' (%s) has no state (not an nn.Module)", w->what,
                        path_of(prefix, pb, sizeof pb), qual);
    const val *params = dget(st, "_parameters"), *bufs = dget(st, "_buffers"),
              *mods = dget(st, "_modules"), *np = dget(st, "_non_persistent_buffers_set");
    if ((params && params->kind != V_DICT) || (bufs && bufs->kind != V_DICT) ||
        (mods && mods->kind != V_DICT) || (!params && !bufs && !mods))
        return ts_error(TINYSAM_E_FORMAT, "%s: '%s' (%s) is not an nn.Module state", w->what,
                        path_of(prefix, pb, sizeof pb), qual);
    int torch_nn = !strncmp(qual, "torch.nn.", 9);
    int quant = ts_module_is_quant_class(cls);
    int known = torch_nn || quant ||
                in_list(cls, modeling_classes, sizeof modeling_classes / sizeof *modeling_classes);
    int attention = !strcmp(cls, "Attention");
    int rc = count_class(w, qual);
    if (rc) return rc;
    /* what the module holds itself */
    int own = 0;
    for (int pass = 0; pass < 2; pass++) {
        const val *d = pass ? bufs : params;
        if (!d) continue;
        for (int i = 0; i + 1 < d->n; i += 2) {
            const val *k = d->items[i], *t = d->items[i + 1];
            if (k->kind != V_STR)
                return ts_error(TINYSAM_E_FORMAT, "%s: '%s': a parameter name is not a string",
                                w->what, path_of(prefix, pb, sizeof pb));
            if (t->kind == V_NONE) continue;
            if (t->kind != V_TENSOR)
                return ts_error(TINYSAM_E_FORMAT, "%s: '%s%s' is not a tensor", w->what, prefix,
                                k->s);
            own = 1;
            if (!known) continue;
            /* non-persistent buffers are not in a state dict; TinyViT's cached biases are
             * kept for ts_module_fold_ab */
            if (pass && in_set(np, k->s) &&
                !(attention && (!strcmp(k->s, "ab") || !strcmp(k->s, "attention_bias_idxs"))))
                continue;
            if ((rc = emit(w, prefix, k->s, t))) return rc;
        }
    }
    /* tensors among the plain attributes: only ab (older TinyViT code caches it there) */
    for (int i = 0; i + 1 < st->n; i += 2) {
        const val *k = st->items[i], *t = st->items[i + 1];
        if (k->kind != V_STR || t->kind != V_TENSOR) continue;
        own = 1;
        if (known && attention && !strcmp(k->s, "ab") && (rc = emit(w, prefix, "ab", t)))
            return rc;
    }
    if (!known && own)
        return ts_error(TINYSAM_E_UNSUPPORTED,
                        "%s: module '%s' is of class '%s', which is not a SAM-family, torch.nn or "
                        "TinySAM quantisation class and holds its own parameters or tensors (a "
                        "wrapper such as LoRA or an adapter changes the computation): refused",
                        w->what, path_of(prefix, pb, sizeof pb), qual);
    if (quant && (rc = record_quant(w, obj, cls, path_of(prefix, pb, sizeof pb)))) return rc;
    if (!mods) return 0;
    obj->mark = 1;
    for (int i = 0; i + 1 < mods->n && !rc; i += 2) {
        const val *k = mods->items[i];
        val *c = mods->items[i + 1];
        if (k->kind != V_STR || !k->n || strchr(k->s, '.'))
            rc = ts_error(TINYSAM_E_FORMAT, "%s: '%s': a submodule name is empty, has a dot or "
                          "is not a string", w->what, path_of(prefix, pb, sizeof pb));
        else if (c->kind == V_NONE)
            continue;
        else if (c->kind != V_OBJECT)
            rc = ts_error(TINYSAM_E_FORMAT, "%s: submodule '%s%s' is not a module object", w->what,
                          prefix, k->s);
        else if (plen + (size_t)k->n + 2 > 4096)
            rc = ts_error(TINYSAM_E_FORMAT, "%s: module path longer than 4096 bytes", w->what);
        else {
            memcpy(prefix + plen, k->s, (size_t)k->n);
            prefix[plen + (size_t)k->n] = '.';
            prefix[plen + (size_t)k->n + 1] = 0;
            rc = visit(w, c, prefix, plen + (size_t)k->n + 1, depth + 1);
            prefix[plen] = 0;
        }
    }
    obj->mark = 0;
    return rc;
}

int ts_module_tree_flatten(const val *root, const char *what, ts_flat *f) {
    memset(f, 0, sizeof *f);
    walk_t *w = calloc(1, sizeof *w);
    char *prefix = malloc(4096 + 2);
    int rc = w && prefix ? 0 : ts_error(TINYSAM_E_NOMEM, "out of memory");
    if (!rc) {
        w->what = what;
        w->f = f;
        prefix[0] = 0;
        /* the walk marks objects on its path; the values are the loader's own */
        rc = visit(w, (val *)root, prefix, 0, 0);
    }
    if (!rc) {
        sbuf inner = {0}, meta = {0};
        sb_str(&inner, "{");
        for (int i = 0; i < w->n_cls; i++) {
            sb_str(&inner, i ? ",\"" : "\"");
            sb_esc(&inner, w->cls[i].name);
            char num[32];
            snprintf(num, sizeof num, "\":%d", w->cls[i].count);
            sb_str(&inner, num);
        }
        sb_str(&inner, "}");
        sb_str(&meta, "{\"tinysam.source\":\"pth-module\",\"tinysam.module_classes\":\"");
        if (inner.s) sb_esc(&meta, inner.s);
        sb_str(&meta, "\",\"tinysam.quant_layers\":\"{");
        if (w->quant.s) sb_esc(&meta, w->quant.s);
        sb_str(&meta, "}\"}");
        free(inner.s);
        if (inner.oom || meta.oom) {
            free(meta.s);
            rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
        } else {
            f->metadata_json = meta.s;
        }
    }
    if (w) free(w->quant.s);
    free(w);
    free(prefix);
    if (rc) ts_flat_free(f);
    return rc;
}

void ts_flat_free(ts_flat *f) {
    for (int i = 0; i < f->n; i++) free(f->e[i].name);
    free(f->e);
    free(f->metadata_json);
    memset(f, 0, sizeof *f);
}

/* ---- TinyViT's cached attention biases */

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && !strcmp(s + a - b, suffix);
}

static ts_tensor *find(ts_tensor_map *m, const char *base, const char *suffix) {
    size_t lb = strlen(base);
    for (int i = 0; i < m->n; i++)
        if (!strncmp(m->t[i].name, base, lb) && !strcmp(m->t[i].name + lb, suffix))
            return &m->t[i];
    return NULL;
}

static int owned(const ts_tensor_map *m, const void *p) {
    const uint8_t *lo = m->map_base, *d = p;
    return !(lo && d >= lo && d < lo + m->map_size);
}

static void drop(ts_tensor_map *m, ts_tensor *t) {
    if (owned(m, t->data)) free(t->data);
    free(t->name);
    int i = (int)(t - m->t);
    memmove(&m->t[i], &m->t[i + 1], (size_t)(m->n - i - 1) * sizeof *t);
    m->n--;
}

int ts_module_fold_ab(ts_tensor_map *m, const char *what) {
    for (int i = 0; i < m->n; i++) {
        if (!ends_with(m->t[i].name, ".ab")) continue;
        char base[4200];
        snprintf(base, sizeof base, "%.*s", (int)(strlen(m->t[i].name) - 2), m->t[i].name);
        ts_tensor *ab = &m->t[i], *bias = find(m, base, "attention_biases"),
                  *idx = find(m, base, "attention_bias_idxs");
        if (!bias || !idx || ab->dtype != TS_DTYPE_F32 || bias->dtype != TS_DTYPE_F32 ||
            idx->dtype != TS_DTYPE_I64 || ab->ndim != 3 || bias->ndim != 2 || idx->ndim != 2 ||
            ab->shape[0] != bias->shape[0] || ab->shape[1] != idx->shape[0] ||
            ab->shape[2] != idx->shape[1])
            return ts_error(TINYSAM_E_FORMAT,
                            "%s: '%s' is not the cached gather of '%sattention_biases' by "
                            "'%sattention_bias_idxs' (missing tensor or shapes)",
                            what, ab->name, base, base);
        int64_t H = bias->shape[0], P = bias->shape[1], NN = idx->shape[0] * idx->shape[1];
        const int64_t *ix = idx->data;
        const float *a = ab->data;
        float *nb = malloc((size_t)(H * P) * sizeof *nb + 1);
        unsigned char *set = calloc((size_t)P + 1, 1);
        int rc = nb && set ? 0 : ts_error(TINYSAM_E_NOMEM, "out of memory");
        if (!rc) memcpy(nb, bias->data, (size_t)(H * P) * sizeof *nb);
        for (int64_t j = 0; j < NN && !rc; j++)
            if (ix[j] < 0 || ix[j] >= P)
                rc = ts_error(TINYSAM_E_FORMAT, "%s: '%sattention_bias_idxs' out of range", what,
                              base);
        /* ab[h][j] = biases[h][idx[j]] for one biases tensor: derive it, check consistency */
        for (int64_t h = 0; h < H && !rc; h++) {
            memset(set, 0, (size_t)P);
            for (int64_t j = 0; j < NN && !rc; j++) {
                float v = a[h * NN + j];
                int64_t p = ix[j];
                if (set[p] && memcmp(&nb[h * P + p], &v, sizeof v))
                    rc = ts_error(TINYSAM_E_FORMAT,
                                  "%s: '%s' is not a gather of one bias per distance (two values "
                                  "for index %lld)",
                                  what, ab->name, (long long)p);
                nb[h * P + p] = v;
                set[p] = 1;
            }
        }
        free(set);
        if (rc) {
            free(nb);
            return rc;
        }
        /* the official eval forward uses ab: the biases become ab's values */
        if (memcmp(nb, bias->data, (size_t)(H * P) * sizeof *nb)) {
            if (owned(m, bias->data)) free(bias->data);
            bias->data = nb;
        } else {
            free(nb);
        }
        /* drop ab and the index table (pointers move: drop the later one first) */
        ts_tensor *first = ab < idx ? ab : idx, *second = ab < idx ? idx : ab;
        drop(m, second);
        drop(m, first);
        i = -1; /* restart: indices moved */
    }
    for (int i = 0; i < m->n; i++)
        if (ends_with(m->t[i].name, ".attention_bias_idxs")) drop(m, &m->t[i--]);
    return 0;
}
