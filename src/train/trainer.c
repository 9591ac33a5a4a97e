/* trainer.c - the distillation step (spec/DISTILL.md 0, 3.2, 5.1, 5.4) and its checkpoints. */
#include "train/trainer.h"

#include "core.h"
#include "model/sam_decoder.h"
#include "train/decoder_grad.h"
#include "train/encoder_grad.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define C_ TS_LOWRES_CELLS
#define NE TS_LOSS_EMB
#define GAUSS_NAME "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"

/* A student tensor outside both layouts (classifier head, integer buffers): kept as loaded. */
typedef struct {
    ts_tensor t; /* name and data owned */
} extra_tensor;

struct ts_trainer {
    ts_train_config c;
    ts_eg_layout EL;
    ts_dg_layout DL;
    float *ep, *eg, *em, *ev;       /* encoder params, grads, Adam moments */
    float *dp, *dg, *dm, *dv;       /* student decoder */
    float *tp;                      /* teacher decoder params */
    float gauss[256];               /* the teacher's PE matrix, shared by both */
    ts_egf *enc;
    ts_dgf *dec_s;                  /* the student decoder with its tape (backward) */
    /* Forward passes without gradient run on the inference decoder (batched, several times
     * faster), built once over dp / tp; the student's packed weight copies are refreshed after
     * each Adam update. The backward recomputes each set's forward into its own tape. */
    ts_tensor *view_s, *view_t;     /* map views over dp / tp and the PE matrix */
    ts_tensor_map map_s, map_t;
    ts_prompt_encoder *pe_s, *pe_t;
    ts_mask_decoder *md_s, *md_t;
    /* step buffers, sized for max_sets */
    float *emb_s, *demb;
    float *z_s, *z_t, *dz, *mask_buf;
    float *u_s, *u_t, *du;
    float *tok_s, *tok_t, *dtok;
    uint8_t *g1024;                 /* one unpacked ground truth */
    int *usable, *chosen, cap_masks; /* grow-only: mask lists of the step's image */
    int *n_real;
    const uint8_t **gp;
    ts_sample_set *sets;
    ts_prompt_set *ps;
    float *coords;                  /* max_sets x 2 * TS_SAMPLE_MAX_POINTS */
    /* run state */
    long step;
    ts_rng rng;
    int *order, n_order, pos;       /* the current epoch's image order */
    long epoch;
    /* the student map's other tensors and the order of all names for saving */
    int n_names;
    char **names;                   /* every student tensor name, in the map's order */
    extra_tensor *extra;
    int n_extra;
    size_t bytes;
};

void ts_train_config_default(ts_train_config *c) {
    memset(c, 0, sizeof *c);
    ts_loss_config_default(&c->loss);
    c->max_sets = 64;
    c->fixed_t = -1;
    c->train_encoder = 1;
    c->train_decoder = 1;
    c->lr = 2e-5;
    c->warmup = 250;
    c->lr_drops = 1;
    c->total_steps = 0;
    c->beta1 = 0.9;
    c->beta2 = 0.999;
    c->eps = 1e-8;
    c->seed = 0;
    c->images_per_step = 1;
}

/* ---- creation ------------------------------------------------------------------------------ */

static void view(ts_tensor *o, const char *name, int ndim, const int *shape, float *data);

/* A tensor map over a decoder layout's array and the PE matrix, for the inference loaders. */
static int decoder_view(const ts_dg_layout *L, float *params, float *gauss, ts_tensor **arr,
                        ts_tensor_map *m) {
    static const int gshape[2] = {2, 128};
    *arr = calloc((size_t)L->n + 1, sizeof **arr);
    if (!*arr) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    for (int i = 0; i < L->n; i++)
        view(&(*arr)[i], L->t[i].name, L->t[i].ndim, L->t[i].shape, params + L->t[i].off);
    view(&(*arr)[L->n], GAUSS_NAME, 2, gshape, gauss);
    memset(m, 0, sizeof *m);
    m->n = m->cap = L->n + 1;
    m->t = *arr;
    return 0;
}

/* (Re)loads an inference prompt encoder + mask decoder over a map view. */
static int load_inference(ts_tensor_map *m, ts_prompt_encoder **pe, ts_mask_decoder **md) {
    ts_prompt_encoder_free(*pe);
    ts_mask_decoder_free(*md);
    *pe = NULL;
    *md = NULL;
    int rc = ts_prompt_encoder_load(m, pe);
    if (!rc) rc = ts_mask_decoder_load(m, md);
    return rc;
}

static void *talloc(ts_trainer *t, size_t n, int zero) {
    void *p = zero ? calloc(1, n ? n : 1) : malloc(n ? n : 1);
    if (p) t->bytes += n;
    return p;
}

static int in_layouts(const ts_trainer *t, const char *name) {
    return ts_eg_find(&t->EL, name) >= 0 || ts_dg_find(&t->DL, name) >= 0 ||
           !strcmp(name, GAUSS_NAME);
}

/* Float copy of a decoder layout's tensors (and the PE matrix) from a map. */
static int load_decoder(const ts_dg_layout *L, const ts_tensor_map *m, float *dst,
                        float gauss[256]) {
    double *tmp = malloc(sizeof(double) * L->total), g[256];
    if (!tmp) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    int rc = ts_dg_load(L, m, tmp, g);
    if (!rc) {
        for (size_t i = 0; i < L->total; i++) dst[i] = (float)tmp[i];
        if (gauss)
            for (int i = 0; i < 256; i++) gauss[i] = (float)g[i];
    }
    free(tmp);
    return rc;
}

static int keep_extras(ts_trainer *t, const ts_tensor_map *m) {
    t->names = calloc((size_t)m->n, sizeof *t->names);
    t->extra = calloc((size_t)m->n, sizeof *t->extra);
    if (!t->names || !t->extra) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    for (int i = 0; i < m->n; i++) {
        const ts_tensor *s = &m->t[i];
        if (!(t->names[i] = strdup(s->name))) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        t->n_names = i + 1;
        if (in_layouts(t, s->name)) continue;
        size_t es = s->dtype == TS_DTYPE_I64 || s->dtype == TS_DTYPE_F64 ? 8
                    : s->dtype == TS_DTYPE_F32 || s->dtype == TS_DTYPE_I32 ? 4 : 1;
        extra_tensor *e = &t->extra[t->n_extra];
        e->t = *s;
        e->t.name = t->names[i];
        e->t.data = talloc(t, (size_t)s->numel * es, 0);
        if (!e->t.data) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        memcpy(e->t.data, s->data, (size_t)s->numel * es);
        t->n_extra++;
    }
    return 0;
}

void ts_trainer_free(ts_trainer *t) {
    if (!t) return;
    ts_egf_free(t->enc);
    ts_dgf_free(t->dec_s);
    ts_prompt_encoder_free(t->pe_s), ts_prompt_encoder_free(t->pe_t);
    ts_mask_decoder_free(t->md_s), ts_mask_decoder_free(t->md_t);
    free(t->view_s), free(t->view_t);
    float *f[] = {t->ep, t->eg, t->em, t->ev, t->dp, t->dg, t->dm, t->dv, t->tp, t->emb_s,
                  t->demb, t->z_s, t->z_t, t->dz, t->mask_buf, t->u_s, t->u_t, t->du,
                  t->tok_s, t->tok_t, t->dtok, t->coords};
    for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) free(f[i]);
    free(t->g1024), free(t->usable), free(t->chosen), free(t->n_real), free(t->gp);
    free(t->sets), free(t->ps), free(t->order);
    for (int i = 0; i < t->n_extra; i++) free(t->extra[i].t.data);
    free(t->extra);
    for (int i = 0; i < t->n_names; i++) free(t->names[i]);
    free(t->names);
    free(t);
}

#define MAX_MASKS 100000 /* ground-truth masks per image (SA-1B has at most a few hundred) */

int ts_trainer_create(const ts_train_config *c, const ts_tensor_map *student,
                      const ts_tensor_map *teacher, int decoder_from_teacher,
                      ts_trainer **out) {
    *out = NULL;
    if (c->max_sets < 1 || c->max_sets > TS_SAMPLE_MAX_SETS)
        return ts_error(TINYSAM_E_ARG, "prompt sets per step must be 1..%d, not %d",
                        TS_SAMPLE_MAX_SETS, c->max_sets);
    if (c->fixed_t > TS_SAMPLE_MAX_T)
        return ts_error(TINYSAM_E_ARG, "t must be 0..%d, not %d", TS_SAMPLE_MAX_T, c->fixed_t);
    if (c->images_per_step < 1 || c->images_per_step > TS_TRAIN_MAX_IMAGES_PER_STEP)
        return ts_error(TINYSAM_E_ARG, "images per step must be 1..%d, not %d",
                        TS_TRAIN_MAX_IMAGES_PER_STEP, c->images_per_step);
    if (!(c->lr >= 0 && c->lr < 1) || c->warmup < 0 || !(c->beta1 >= 0 && c->beta1 < 1) ||
        !(c->beta2 >= 0 && c->beta2 < 1) || !(c->eps > 0))
        return ts_error(TINYSAM_E_ARG, "bad optimiser settings");
    ts_trainer *t = calloc(1, sizeof *t);
    if (!t) return ts_error(TINYSAM_E_NOMEM, "out of memory");
    t->c = *c;
    ts_rng_seed(&t->rng, c->seed);
    int rc;
    ts_eg_config ec;
    ts_eg_config_vit_t(&ec);
    ts_dg_config dc;
    ts_dg_config_sam(&dc);
    if ((rc = ts_eg_layout_init(&t->EL, &ec)) || (rc = ts_dg_layout_init(&t->DL, &dc))) goto fail;
    const size_t ne = t->EL.total, nd = t->DL.total, S = (size_t)c->max_sets;
    t->ep = talloc(t, ne * 4, 0), t->eg = talloc(t, ne * 4, 1);
    t->em = talloc(t, ne * 4, 1), t->ev = talloc(t, ne * 4, 1);
    t->dp = talloc(t, nd * 4, 0), t->dg = talloc(t, nd * 4, 1);
    t->dm = talloc(t, nd * 4, 1), t->dv = talloc(t, nd * 4, 1), t->tp = talloc(t, nd * 4, 0);
    t->emb_s = talloc(t, NE * 4, 0), t->demb = talloc(t, NE * 4, 1);
    t->z_s = talloc(t, S * 4 * C_ * 4, 0), t->z_t = talloc(t, S * 4 * C_ * 4, 0);
    t->dz = talloc(t, S * 4 * C_ * 4, 1), t->mask_buf = talloc(t, S * C_ * 4, 1);
    t->u_s = talloc(t, S * 16, 0), t->u_t = talloc(t, S * 16, 0), t->du = talloc(t, S * 16, 1);
    t->tok_s = talloc(t, S * TS_LOSS_TOK * 4, 0), t->tok_t = talloc(t, S * TS_LOSS_TOK * 4, 0);
    t->dtok = talloc(t, S * TS_LOSS_TOK * 4, 1);
    t->g1024 = talloc(t, (size_t)TS_FRAME * TS_FRAME, 0);
    t->n_real = talloc(t, S * sizeof(int), 0);
    t->gp = talloc(t, S * sizeof(*t->gp), 0);
    t->sets = talloc(t, S * sizeof(*t->sets), 1);
    t->ps = talloc(t, S * sizeof(*t->ps), 1);
    t->coords = talloc(t, S * 2 * TS_SAMPLE_MAX_POINTS * 4, 1);
    if (!t->ep || !t->eg || !t->em || !t->ev || !t->dp || !t->dg || !t->dm || !t->dv || !t->tp ||
        !t->emb_s || !t->demb || !t->z_s || !t->z_t || !t->dz || !t->mask_buf || !t->u_s ||
        !t->u_t || !t->du || !t->tok_s || !t->tok_t || !t->dtok || !t->g1024 || !t->n_real ||
        !t->gp || !t->sets || !t->ps || !t->coords) {
        rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
        goto fail;
    }
    if ((rc = ts_eg_load(&t->EL, student, t->ep))) goto fail;
    if ((rc = load_decoder(&t->DL, teacher, t->tp, t->gauss))) goto fail;
    if (decoder_from_teacher)
        memcpy(t->dp, t->tp, nd * 4);
    else if ((rc = load_decoder(&t->DL, student, t->dp, NULL)))
        goto fail;
    if ((rc = keep_extras(t, student))) goto fail;
    if ((rc = ts_egf_create(&t->EL, t->ep, &t->enc)) ||
        (rc = ts_dgf_create(&t->DL, t->dp, t->gauss, &t->dec_s)) ||
        (rc = decoder_view(&t->DL, t->dp, t->gauss, &t->view_s, &t->map_s)) ||
        (rc = decoder_view(&t->DL, t->tp, t->gauss, &t->view_t, &t->map_t)) ||
        (rc = load_inference(&t->map_t, &t->pe_t, &t->md_t)) ||
        (rc = load_inference(&t->map_s, &t->pe_s, &t->md_s)))
        goto fail;
    size_t tape, scratch;
    ts_egf_memory(t->enc, &tape, &scratch);
    t->bytes += tape + scratch;
    *out = t;
    return 0;
fail:
    ts_trainer_free(t);
    return rc;
}

/* ---- random encoder initialisation --------------------------------------------------------- */

static double trunc_normal(ts_rng *r, double std) {
    for (;;) { /* timm's trunc_normal_: cut at +-2 (absolute), i.e. +-100 std at 0.02 */
        double v = std * ts_rng_normal(r);
        if (v >= -2.0 && v <= 2.0) return v;
    }
}

static int ends_with(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && !strcmp(s + a - b, suf);
}

void ts_trainer_init_encoder_random(ts_trainer *t) {
    for (int i = 0; i < t->EL.n; i++) {
        const ts_eg_tensor *T = &t->EL.t[i];
        float *p = t->ep + T->off;
        const char *n = T->name;
        double v = 0;
        int normal = 0;
        double std = 0;
        if (ends_with(n, "running_var")) v = 1;
        else if (ends_with(n, "running_mean") || ends_with(n, "bias") ||
                 ends_with(n, "attention_biases"))
            v = 0;
        else if (T->ndim == 1) v = 1; /* BatchNorm / LayerNorm weights */
        else if (T->ndim == 2) normal = 2, std = 0.02;
        else { /* convolution: Kaiming normal, fan-out, ReLU gain (TinyViT's conv init) */
            const double fan_out = (double)T->shape[0] * T->shape[2] * T->shape[3];
            normal = 1, std = sqrt(2.0 / fan_out);
        }
        for (size_t k = 0; k < T->numel; k++)
            p[k] = (float)(normal == 2 ? trunc_normal(&t->rng, std)
                           : normal ? std * ts_rng_normal(&t->rng) : v);
    }
}

/* ---- schedule and Adam --------------------------------------------------------------------- */

double ts_trainer_lr(const ts_train_config *c, long step) {
    double f = 1.0;
    if (c->warmup > 0 && step < c->warmup) f = (double)step / (double)c->warmup;
    if (c->lr_drops && c->total_steps > 0) {
        if ((double)step >= (double)c->total_steps * 2.0 / 3.0) f *= 0.1;
        if ((double)step >= (double)c->total_steps * 86666.0 / 90000.0) f *= 0.1;
    }
    return c->lr * f;
}

/* PyTorch 1.13's single-tensor Adam in float32 (5.4): scalars from double, element-wise float. */
static void adam(float *p, const float *g, float *m, float *v, size_t n, long step, double lr,
                 const ts_train_config *c) {
    const double bc1 = 1.0 - pow(c->beta1, (double)step), bc2 = 1.0 - pow(c->beta2, (double)step);
    const float b1 = (float)c->beta1, a1 = (float)(1.0 - c->beta1);
    const float b2 = (float)c->beta2, a2 = (float)(1.0 - c->beta2);
    const float bc2s = (float)sqrt(bc2), eps = (float)c->eps, ss = (float)(-lr / bc1);
    for (size_t i = 0; i < n; i++) {
        m[i] = m[i] * b1 + a1 * g[i];
        v[i] = v[i] * b2 + a2 * g[i] * g[i];
        const float denom = sqrtf(v[i]) / bc2s + eps;
        p[i] = p[i] + ss * (m[i] / denom);
    }
}

static void adam_all(ts_trainer *t, double lr) {
    const long s = t->step;
    if (t->c.train_encoder)
        for (int i = 0; i < t->EL.n; i++) {
            const ts_eg_tensor *T = &t->EL.t[i];
            if (T->frozen) continue;
            adam(t->ep + T->off, t->eg + T->off, t->em + T->off, t->ev + T->off, T->numel, s, lr,
                 &t->c);
        }
    if (t->c.train_decoder)
        adam(t->dp, t->dg, t->dm, t->dv, t->DL.total, s, lr, &t->c);
}

/* ---- the step ------------------------------------------------------------------------------ */

static void build_prompts(ts_trainer *t, int N, const ts_sample_set *sets,
                          const float *const *mask_in) {
    for (int i = 0; i < N; i++)
        ts_sample_to_prompt(&sets[i], mask_in ? mask_in[i] : NULL,
                            t->coords + (size_t)i * 2 * TS_SAMPLE_MAX_POINTS, &t->ps[i]);
}

/* The training round on prompts already in t->ps: both decoders, the losses, and (update)
 * the backward and Adam. */
static int round_grads(ts_trainer *t, const ts_train_example *ex, int N,
                       const ts_sample_set *sets, const int *gt, int update, ts_loss_result *res,
                       double ms[7], float *eg, float *dg) {
    double t0 = ts_now_ms();
    int rc;
    if ((rc = ts_sam_decode_tokens(t->pe_s, t->md_s, t->emb_s, N, t->ps, t->z_s, t->u_s,
                                   t->tok_s)) ||
        (rc = ts_sam_decode_tokens(t->pe_t, t->md_t, ex->emb_t, N, t->ps, t->z_t, t->u_t,
                                   t->tok_t)))
        return rc;
    double t1 = ts_now_ms();
    for (int i = 0; i < N; i++) {
        if (gt[i] < 0 || gt[i] >= ex->n_masks)
            return ts_error(TINYSAM_E_ARG, "prompt set %d: ground truth %d of %d masks", i, gt[i],
                            ex->n_masks);
        t->n_real[i] = ts_sample_n_real(&sets[i]);
        t->gp[i] = ex->glow + (size_t)gt[i] * C_;
    }
    ts_loss_inputs in = {.N = N, .emb_s = t->emb_s, .emb_t = ex->emb_t, .tok_s = t->tok_s,
                         .tok_t = t->tok_t, .z_s = t->z_s, .z_t = t->z_t, .u_s = t->u_s,
                         .u_t = t->u_t, .g = t->gp, .n_real = t->n_real};
    const int enc = update && t->c.train_encoder;
    if (update) {
        memset(t->dz, 0, sizeof(float) * (size_t)N * 4 * C_);
        memset(t->du, 0, sizeof(float) * (size_t)N * 4);
        memset(t->dtok, 0, sizeof(float) * (size_t)N * TS_LOSS_TOK);
        memset(t->demb, 0, sizeof(float) * NE);
    }
    ts_loss_grads lg = {.emb = enc ? t->demb : NULL, .tok = t->dtok, .z = t->dz, .u = t->du};
    if ((rc = ts_loss_step(&t->c.loss, &in, res, update ? &lg : NULL))) return rc;
    double t2 = ts_now_ms();
    if (ms) ms[2] += t1 - t0, ms[3] += t2 - t1;
    if (!update) return 0;
    if (t->c.train_decoder) memset(dg, 0, sizeof(float) * t->DL.total);
    if (t->c.train_decoder || enc)
        if ((rc = ts_dgf_backward(t->dec_s, t->emb_s, N, t->ps, t->dz, t->du, t->dtok,
                                  t->c.train_decoder ? dg : NULL, enc ? t->demb : NULL)))
            return rc;
    double t3 = ts_now_ms();
    if (enc) {
        memset(eg, 0, sizeof(float) * t->EL.total);
        if ((rc = ts_egf_backward(t->enc, t->demb, eg))) return rc;
    }
    if (ms) ms[4] += t3 - t2, ms[5] += ts_now_ms() - t3;
    return 0;
}

static void take_adam_step(ts_trainer *t, double ms[7]) {
    double t4 = ts_now_ms();
    t->step++;
    adam_all(t, ts_trainer_lr(&t->c, t->step));
    if (t->c.train_decoder) ts_mask_decoder_refresh(t->md_s);
    if (ms) ms[6] += ts_now_ms() - t4;
}

/* One image's training round into the trainer's gradients and (update) the Adam step. */
static int train_round(ts_trainer *t, const ts_train_example *ex, int N, const ts_sample_set *sets,
                       const int *gt, int update, ts_loss_result *res, double ms[7]) {
    int rc = round_grads(t, ex, N, sets, gt, update, res, ms, t->eg, t->dg);
    if (!rc && update) take_adam_step(t, ms);
    return rc;
}

static void report_init(ts_step_report *rep) {
    if (rep) memset(rep, 0, sizeof *rep);
}

int ts_trainer_step_given(ts_trainer *t, const ts_train_example *ex, int N,
                          const ts_sample_set *sets, const float *const *mask_in, const int *gt,
                          ts_step_report *rep) {
    if (N < 1 || N > t->c.max_sets)
        return ts_error(TINYSAM_E_ARG, "%d prompt sets (1..%d)", N, t->c.max_sets);
    ts_step_report local;
    if (!rep) rep = &local;
    report_init(rep);
    double t0 = ts_now_ms();
    int rc = ts_egf_forward(t->enc, ex->input, t->emb_s);
    if (rc) return rc;
    rep->ms[0] = ts_now_ms() - t0;
    build_prompts(t, N, sets, mask_in);
    rep->N = N;
    rep->t = -1;
    if ((rc = train_round(t, ex, N, sets, gt, 1, &rep->loss, rep->ms))) return rc;
    rep->step = t->step;
    rep->lr = ts_trainer_lr(&t->c, t->step);
    return 0;
}

int ts_trainer_eval(ts_trainer *t, const ts_train_example *ex, int N, const ts_sample_set *sets,
                    const float *const *mask_in, const int *gt, ts_loss_result *out) {
    if (N < 1 || N > t->c.max_sets)
        return ts_error(TINYSAM_E_ARG, "%d prompt sets (1..%d)", N, t->c.max_sets);
    int rc = ts_egf_forward(t->enc, ex->input, t->emb_s);
    if (rc) return rc;
    build_prompts(t, N, sets, mask_in);
    return train_round(t, ex, N, sets, gt, 0, out, NULL);
}

/* Mask choice, t and the sampling rounds of one image from rng (3.2), leaving the training
 * round's prompts in t->ps and the chosen masks in t->chosen. fixed_T >= 0: the step's t
 * (drawn by the caller); else t as configured, drawn after the mask choice. Returns N through
 * rep (0: no usable mask, nothing else done). */
static int sample_sets(ts_trainer *t, ts_rng *rng, int fixed_T, const ts_train_example *ex,
                       ts_step_report *rep) {
    if (ex->n_masks > MAX_MASKS)
        return ts_error(TINYSAM_E_LIMIT, "%s: %d masks (at most %d)", ex->name, ex->n_masks,
                        MAX_MASKS);
    if (ex->n_masks + 1 > t->cap_masks) { /* grows with the largest image seen, then stays */
        int cap = ex->n_masks + 1;
        int *u = realloc(t->usable, sizeof(int) * (size_t)cap);
        if (u) t->usable = u;
        int *c = u ? realloc(t->chosen, sizeof(int) * (size_t)cap) : NULL;
        if (c) t->chosen = c;
        if (!u || !c) return ts_error(TINYSAM_E_NOMEM, "out of memory");
        t->cap_masks = cap;
    }
    int *usable = t->usable, *chosen = t->chosen;
    int U = 0;
    for (int k = 0; k < ex->n_masks; k++)
        if (ts_example_usable(ex, k)) usable[U++] = k;
    int rc = 0;
    const int N = ts_sample_choose_masks(rng, usable, U, t->c.max_sets, chosen);
    rep->N = N;
    if (N == 0) return 0; /* nothing to learn from this image: no update */
    const int T = fixed_T >= 0 ? fixed_T
                  : t->c.fixed_t >= 0 ? t->c.fixed_t : ts_sample_rounds(rng);
    rep->t = T;
    double t0 = ts_now_ms();
    if ((rc = ts_egf_forward(t->enc, ex->input, t->emb_s))) return rc;
    double t1 = ts_now_ms();
    rep->ms[0] = t1 - t0;
    for (int i = 0; i < N; i++) {
        ts_gt_unpack(ex->g1024_bits + (size_t)chosen[i] * TS_FRAME_BITS, t->g1024);
        if ((rc = ts_sample_init(rng, t->g1024, ex->newh, ex->neww, &t->sets[i]))) return rc;
        t->gp[i] = ex->glow + (size_t)chosen[i] * C_;
    }
    for (int j = 0; j < T; j++) {
        for (int i = 0; i < N; i++)
            ts_sample_to_prompt(&t->sets[i], j ? t->mask_buf + (size_t)i * C_ : NULL,
                                t->coords + (size_t)i * 2 * TS_SAMPLE_MAX_POINTS, &t->ps[i]);
        if ((rc = ts_sam_decode(t->pe_s, t->md_s, t->emb_s, N, t->ps, t->z_s, t->u_s))) return rc;
        if ((rc = ts_sample_round(rng, N, t->z_s, t->u_s, t->gp, ex->valid, t->sets,
                                  t->mask_buf, NULL)))
            return rc;
    }
    rep->ms[1] = ts_now_ms() - t1;
    for (int i = 0; i < N; i++)
        ts_sample_to_prompt(&t->sets[i], T ? t->mask_buf + (size_t)i * C_ : NULL,
                            t->coords + (size_t)i * 2 * TS_SAMPLE_MAX_POINTS, &t->ps[i]);
    return 0;
}

int ts_trainer_step(ts_trainer *t, const ts_train_example *ex, ts_step_report *rep) {
    ts_step_report local;
    if (!rep) rep = &local;
    report_init(rep);
    if (t->c.images_per_step != 1)
        return ts_error(TINYSAM_E_ARG, "ts_trainer_step: one image per step only (B = %d)",
                        t->c.images_per_step);
    int rc = sample_sets(t, &t->rng, -1, ex, rep);
    if (rc || rep->N == 0) return rc;
    if ((rc = train_round(t, ex, rep->N, t->sets, t->chosen, 1, &rep->loss, rep->ms))) return rc;
    rep->step = t->step;
    rep->lr = ts_trainer_lr(&t->c, t->step);
    return 0;
}

/* ---- several images per step (B > 1) ------------------------------------------------------- */

/* Streams of B > 1, keyed so that they depend on (seed, what, a, b) only, never on which
 * process or rank draws them: SplitMix64's finaliser over a chain of the keys. */
enum { STREAM_EPOCH = 1, STREAM_STEP_T = 2, STREAM_SLOT = 3 };

static uint64_t mix64(uint64_t z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void stream(ts_rng *r, uint64_t seed, int what, uint64_t a, uint64_t b) {
    ts_rng_seed(r, mix64(mix64(mix64(mix64(seed) ^ (uint64_t)what) ^ a) ^ b));
}

size_t ts_trainer_grad_len(const ts_trainer *t) {
    return (t->c.train_encoder ? t->EL.total : 0) + (t->c.train_decoder ? t->DL.total : 0);
}

int ts_trainer_next_batch(ts_trainer *t, int n_images, int *idx) {
    if (n_images < 1) return ts_error(TINYSAM_E_ARG, "no images");
    for (int s = 0; s < t->c.images_per_step; s++) {
        if (!t->order || t->n_order != n_images || t->pos >= t->n_order) {
            if (!t->order || t->n_order != n_images) {
                free(t->order);
                if (!(t->order = malloc(sizeof(int) * (size_t)n_images)))
                    return ts_error(TINYSAM_E_NOMEM, "out of memory");
                t->n_order = n_images;
                t->epoch = 0;
            } else {
                t->epoch++;
            }
            ts_rng r;
            stream(&r, t->c.seed, STREAM_EPOCH, (uint64_t)t->epoch, 0);
            for (int i = 0; i < n_images; i++) t->order[i] = i;
            ts_rng_shuffle(&r, t->order, n_images);
            t->pos = 0;
        }
        idx[s] = t->order[t->pos++];
    }
    return 0;
}

int ts_trainer_step_rounds(const ts_trainer *t) {
    if (t->c.fixed_t >= 0) return t->c.fixed_t;
    ts_rng r;
    stream(&r, t->c.seed, STREAM_STEP_T, (uint64_t)(t->step + 1), 0);
    return ts_sample_rounds(&r);
}

int ts_trainer_slot_grad(ts_trainer *t, int slot, const ts_train_example *ex, float *grad,
                         ts_step_report *rep) {
    ts_step_report local;
    if (!rep) rep = &local;
    report_init(rep);
    if (slot < 0 || slot >= t->c.images_per_step)
        return ts_error(TINYSAM_E_ARG, "slot %d of %d", slot, t->c.images_per_step);
    memset(grad, 0, sizeof(float) * ts_trainer_grad_len(t)); /* an unusable image adds zeros */
    ts_rng r;
    stream(&r, t->c.seed, STREAM_SLOT, (uint64_t)(t->step + 1), (uint64_t)slot);
    int rc = sample_sets(t, &r, ts_trainer_step_rounds(t), ex, rep);
    if (rc || rep->N == 0) return rc;
    float *eg = grad, *dg = grad + (t->c.train_encoder ? t->EL.total : 0);
    if ((rc = round_grads(t, ex, rep->N, t->sets, t->chosen, 1, &rep->loss, rep->ms, eg, dg)))
        return rc;
    rep->step = t->step + 1;
    rep->lr = ts_trainer_lr(&t->c, t->step + 1);
    return 0;
}

int ts_trainer_apply(ts_trainer *t, const float *gsum, int n_usable, double *ms_adam) {
    if (n_usable < 1 || n_usable > t->c.images_per_step)
        return ts_error(TINYSAM_E_ARG, "%d images with a usable mask of %d", n_usable,
                        t->c.images_per_step);
    const float n = (float)n_usable;
    const float *s = gsum;
    if (t->c.train_encoder) {
        for (size_t i = 0; i < t->EL.total; i++) t->eg[i] = s[i] / n;
        s += t->EL.total;
    }
    if (t->c.train_decoder)
        for (size_t i = 0; i < t->DL.total; i++) t->dg[i] = s[i] / n;
    double ms[7] = {0};
    take_adam_step(t, ms);
    if (ms_adam) *ms_adam = ms[6];
    return 0;
}

/* FNV-1a over 64-bit words of the state a run continues from. */
static uint64_t hash_words(uint64_t h, const void *p, size_t bytes) {
    const unsigned char *b = p;
    for (size_t i = 0; i < bytes; i++) h = (h ^ b[i]) * 0x100000001B3ull;
    return h;
}

uint64_t ts_trainer_state_hash(const ts_trainer *t) {
    uint64_t h = 0xcbf29ce484222325ull;
    const size_t ne = t->EL.total * 4, nd = t->DL.total * 4;
    h = hash_words(h, t->ep, ne), h = hash_words(h, t->em, ne), h = hash_words(h, t->ev, ne);
    h = hash_words(h, t->dp, nd), h = hash_words(h, t->dm, nd), h = hash_words(h, t->dv, nd);
    h = hash_words(h, t->tp, nd), h = hash_words(h, t->gauss, sizeof t->gauss);
    long st[4] = {t->step, t->epoch, t->pos, t->order ? t->n_order : 0};
    h = hash_words(h, st, sizeof st);
    if (t->order) h = hash_words(h, t->order, sizeof(int) * (size_t)t->n_order);
    h = hash_words(h, &t->rng, sizeof t->rng);
    return h;
}

int ts_trainer_next_image(ts_trainer *t, int n_images) {
    if (!t->order || t->n_order != n_images || t->pos >= t->n_order) {
        if (!t->order || t->n_order != n_images) {
            free(t->order);
            t->order = malloc(sizeof(int) * (size_t)(n_images > 0 ? n_images : 1));
            if (!t->order) return ts_error(TINYSAM_E_NOMEM, "out of memory");
            t->n_order = n_images;
            t->epoch = 0;
        } else {
            t->epoch++;
        }
        for (int i = 0; i < n_images; i++) t->order[i] = i;
        ts_rng_shuffle(&t->rng, t->order, n_images);
        t->pos = 0;
    }
    return t->order[t->pos++];
}

long ts_trainer_steps_done(const ts_trainer *t) { return t->step; }

size_t ts_trainer_memory(const ts_trainer *t) { return t->bytes; }

const float *ts_trainer_param(const ts_trainer *t, const char *name, size_t *numel) {
    int i = ts_eg_find(&t->EL, name);
    if (i >= 0) {
        if (numel) *numel = t->EL.t[i].numel;
        return t->ep + t->EL.t[i].off;
    }
    i = ts_dg_find(&t->DL, name);
    if (i >= 0) {
        if (numel) *numel = t->DL.t[i].numel;
        return t->dp + t->DL.t[i].off;
    }
    if (!strcmp(name, GAUSS_NAME)) {
        if (numel) *numel = 256;
        return t->gauss;
    }
    return NULL;
}

/* ---- saving -------------------------------------------------------------------------------- */

/* A float tensor of a layout as a ts_tensor pointing into data. */
static void view(ts_tensor *o, const char *name, int ndim, const int *shape, float *data) {
    memset(o, 0, sizeof *o);
    o->name = (char *)name;
    o->dtype = o->file_dtype = TS_DTYPE_F32;
    o->ndim = ndim;
    o->numel = 1;
    for (int k = 0; k < ndim; k++) o->shape[k] = shape[k], o->numel *= shape[k];
    o->data = data;
}

/* The student's tensors in the map's order; with_optim adds the moments of every trainable
 * tensor. Returns the count, or -1 (error set). */
static int collect(const ts_trainer *t, ts_tensor *out, char (*names)[TS_EG_NAME + 24],
                   int with_optim) {
    int n = 0;
    static const int gshape[2] = {2, 128};
    for (int i = 0; i < t->n_names; i++) {
        const char *nm = t->names[i];
        int k;
        if ((k = ts_eg_find(&t->EL, nm)) >= 0)
            view(&out[n++], nm, t->EL.t[k].ndim, t->EL.t[k].shape, t->ep + t->EL.t[k].off);
        else if ((k = ts_dg_find(&t->DL, nm)) >= 0)
            view(&out[n++], nm, t->DL.t[k].ndim, t->DL.t[k].shape, t->dp + t->DL.t[k].off);
        else if (!strcmp(nm, GAUSS_NAME))
            view(&out[n++], nm, 2, gshape, (float *)t->gauss);
        else
            for (int e = 0; e < t->n_extra; e++)
                if (t->extra[e].t.name == nm) out[n++] = t->extra[e].t;
    }
    if (!with_optim) return n;
    int q = 0;
    for (int i = 0; i < t->EL.n; i++) {
        const ts_eg_tensor *T = &t->EL.t[i];
        if (T->frozen) continue;
        snprintf(names[q], sizeof names[q], "optim.exp_avg.%s", T->name);
        view(&out[n++], names[q++], T->ndim, T->shape, t->em + T->off);
        snprintf(names[q], sizeof names[q], "optim.exp_avg_sq.%s", T->name);
        view(&out[n++], names[q++], T->ndim, T->shape, t->ev + T->off);
    }
    for (int i = 0; i < t->DL.n; i++) {
        const ts_dg_tensor *T = &t->DL.t[i];
        snprintf(names[q], sizeof names[q], "optim.exp_avg.%s", T->name);
        view(&out[n++], names[q++], T->ndim, T->shape, t->dm + T->off);
        snprintf(names[q], sizeof names[q], "optim.exp_avg_sq.%s", T->name);
        view(&out[n++], names[q++], T->ndim, T->shape, t->dv + T->off);
    }
    return n;
}

/* The settings a resumed run must share with the run that wrote the checkpoint. */
static void config_text(const ts_train_config *c, char *buf, size_t cap) {
    snprintf(buf, cap,
             "sets %d t %d enc %d dec %d lr %.17g warmup %d drops %d total %ld b1 %.17g b2 %.17g "
             "eps %.17g seed %" PRIu64 " loss %.9g %.9g %.9g %.9g %.9g %d",
             c->max_sets, c->fixed_t, c->train_encoder, c->train_decoder, c->lr, c->warmup,
             c->lr_drops, c->total_steps, c->beta1, c->beta2, c->eps, c->seed,
             (double)c->loss.alpha, (double)c->loss.beta, (double)c->loss.gamma,
             (double)c->loss.w_mask, (double)c->loss.w_iou, c->loss.hard_weights);
    /* B > 1 only, so that the checkpoints of one image per step keep their text */
    if (c->images_per_step > 1) {
        size_t len = strlen(buf);
        snprintf(buf + len, cap - len, " images_per_step %d", c->images_per_step);
    }
}

static int save(const ts_trainer *t, const char *path, int checkpoint) {
    const int cap = t->n_names + 2 * (t->EL.n + t->DL.n) + 4;
    ts_tensor *ts = calloc((size_t)cap, sizeof *ts);
    char(*names)[TS_EG_NAME + 24] = calloc((size_t)cap, sizeof *names);
    char *order = NULL;
    if (!ts || !names) {
        free(ts), free(names);
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    }
    int n = collect(t, ts, names, checkpoint);
    int32_t *ord32 = NULL;
    if (checkpoint && t->order) { /* the epoch order as an int32 tensor */
        ord32 = malloc(sizeof(int32_t) * (size_t)t->n_order);
        if (!ord32) {
            free(ts), free(names);
            return ts_error(TINYSAM_E_NOMEM, "out of memory");
        }
        for (int i = 0; i < t->n_order; i++) ord32[i] = t->order[i];
        ts_tensor *o = &ts[n++];
        memset(o, 0, sizeof *o);
        o->name = (char *)"train.epoch_order";
        o->dtype = o->file_dtype = TS_DTYPE_I32;
        o->ndim = 1;
        o->shape[0] = o->numel = t->n_order;
        o->data = ord32;
    }
    ts_tensor_map m = {.n = n, .cap = cap, .t = ts};
    char steps[32], state[96], cfg[512];
    snprintf(steps, sizeof steps, "%ld", t->step);
    snprintf(state, sizeof state, "%016" PRIx64 " %" PRIu64 " %ld %d %d", t->rng.s, t->rng.draws,
             t->epoch, t->pos, t->order ? t->n_order : 0);
    config_text(&t->c, cfg, sizeof cfg);
    const char *keys[] = {"format", "tinysam.family", "tinysam.distill.steps",
                          "tinysam.distill.state", "tinysam.distill.config"};
    const char *vals[] = {"pt", "vit_t", steps, state, cfg};
    int rc = ts_safetensors_save(path, &m, checkpoint ? 5 : 3, keys, vals);
    free(ord32), free(order), free(ts), free(names);
    return rc;
}

int ts_trainer_save_model(const ts_trainer *t, const char *path) { return save(t, path, 0); }
int ts_trainer_save_checkpoint(const ts_trainer *t, const char *path) { return save(t, path, 1); }

/* Copies a float tensor of the checkpoint into dst, checking its size. */
static int restore(const ts_tensor_map *m, const char *name, float *dst, size_t numel,
                   const char *path) {
    const ts_tensor *s = ts_map_get(m, name);
    if (!s || s->dtype != TS_DTYPE_F32 || (size_t)s->numel != numel)
        return ts_error(TINYSAM_E_FORMAT, "%s: checkpoint tensor %s missing or of the wrong size",
                        path, name);
    memcpy(dst, s->data, numel * sizeof(float));
    return 0;
}

static const char *meta_value(const ts_json *meta, const char *key) {
    const ts_json *v = meta ? ts_json_get(meta, key) : NULL;
    return v && v->type == TS_JSON_STRING ? v->string : NULL;
}

int ts_trainer_load_checkpoint(ts_trainer *t, const char *path) {
    ts_tensor_map *m = NULL;
    ts_json *meta = NULL;
    int rc = ts_safetensors_load(path, &m);
    if (rc) return rc;
    if (!m->metadata_json || ts_json_parse(m->metadata_json, strlen(m->metadata_json), &meta)) {
        rc = ts_error(TINYSAM_E_FORMAT, "%s: not a tinysam distill checkpoint (no metadata)", path);
        goto done;
    }
    const char *steps = meta_value(meta, "tinysam.distill.steps");
    const char *state = meta_value(meta, "tinysam.distill.state");
    const char *cfg = meta_value(meta, "tinysam.distill.config");
    if (!steps || !state || !cfg) {
        rc = ts_error(TINYSAM_E_FORMAT,
                      "%s: not a tinysam distill checkpoint (a model? checkpoints come from "
                      "--checkpoint-every)", path);
        goto done;
    }
    /* the run must be the same run: compare the configuration text */
    char mine[512];
    config_text(&t->c, mine, sizeof mine);
    if (strcmp(mine, cfg)) {
        rc = ts_error(TINYSAM_E_ARG,
                      "%s: the checkpoint was written by a run with other settings (%s); resume "
                      "with the same options", path, cfg);
        goto done;
    }
    uint64_t s, draws;
    long epoch;
    int pos, n_order;
    char *end;
    long st = strtol(steps, &end, 10);
    if (*end || st < 0 ||
        sscanf(state, "%" SCNx64 " %" SCNu64 " %ld %d %d", &s, &draws, &epoch, &pos, &n_order) != 5 ||
        pos < 0 || n_order < 0 || pos > n_order) {
        rc = ts_error(TINYSAM_E_FORMAT, "%s: malformed checkpoint state", path);
        goto done;
    }
    for (int i = 0; i < t->EL.n && !rc; i++) {
        const ts_eg_tensor *T = &t->EL.t[i];
        char nm[TS_EG_NAME + 24];
        rc = restore(m, T->name, t->ep + T->off, T->numel, path);
        if (rc || T->frozen) continue;
        snprintf(nm, sizeof nm, "optim.exp_avg.%s", T->name);
        if (!(rc = restore(m, nm, t->em + T->off, T->numel, path))) {
            snprintf(nm, sizeof nm, "optim.exp_avg_sq.%s", T->name);
            rc = restore(m, nm, t->ev + T->off, T->numel, path);
        }
    }
    for (int i = 0; i < t->DL.n && !rc; i++) {
        const ts_dg_tensor *T = &t->DL.t[i];
        char nm[TS_DG_NAME + 24];
        rc = restore(m, T->name, t->dp + T->off, T->numel, path);
        snprintf(nm, sizeof nm, "optim.exp_avg.%s", T->name);
        if (!rc) rc = restore(m, nm, t->dm + T->off, T->numel, path);
        snprintf(nm, sizeof nm, "optim.exp_avg_sq.%s", T->name);
        if (!rc) rc = restore(m, nm, t->dv + T->off, T->numel, path);
    }
    if (!rc) rc = restore(m, GAUSS_NAME, t->gauss, 256, path);
    if (rc) goto done;
    free(t->order);
    t->order = NULL;
    t->n_order = 0;
    if (n_order) {
        const ts_tensor *o = ts_map_get(m, "train.epoch_order");
        if (!o || o->dtype != TS_DTYPE_I32 || o->numel != n_order) {
            rc = ts_error(TINYSAM_E_FORMAT, "%s: checkpoint epoch order missing", path);
            goto done;
        }
        if (!(t->order = malloc(sizeof(int) * (size_t)n_order))) {
            rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
            goto done;
        }
        const int32_t *od = o->data;
        for (int i = 0; i < n_order; i++) {
            if (od[i] < 0 || od[i] >= n_order) {
                rc = ts_error(TINYSAM_E_FORMAT, "%s: bad epoch order", path);
                goto done;
            }
            t->order[i] = od[i];
        }
        t->n_order = n_order;
    }
    ts_mask_decoder_refresh(t->md_s);
    t->step = st;
    t->rng.s = s;
    t->rng.draws = draws;
    t->epoch = epoch;
    t->pos = pos;
done:
    ts_json_free(meta);
    ts_map_free(m);
    return rc;
}
