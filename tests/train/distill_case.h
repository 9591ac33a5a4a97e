/* distill_case.h - shared setup of the distillation parity tests (spec/DISTILL.md 6.2):
 * header-only (the Makefile links only the tests/common sources), static inline helpers.
 *
 * dc_setup: student = distill/student_fp16.pth run by the inference encoder on the normalised
 * padded reference/picture1/resized.npy (E_S), teacher = models/tinysam_vit_t_random.pth with
 * E_T = reference/picture1/embedding.npy, low-res ground truths distill/gt/picture1*.
 * dc_case_a: the 8 prompt sets of distill/case_a/prompts.json.
 * dc_example_load: a fixture image (picture1, shapes) as a training example. */
#ifndef TS_TESTS_DISTILL_CASE_H
#define TS_TESTS_DISTILL_CASE_H

#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "model/image_encoder.h"
#include "model/sam.h"
#include "model/sam_decoder.h"
#include "model/transforms.h"
#include "test.h"
#include "train/losses.h"
#include "train/dataset.h"
#include "train/sampling.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DC_TEACHER "models/tinysam_vit_t_random.pth"
#define DC_STUDENT "distill/student_fp16.pth"
#define DC_NSET 8
#define DC_FR 1024

typedef struct {
    tinysam_model *student, *teacher;
    float *emb_s, *emb_t; /* 256 x 64 x 64 */
    uint8_t *glow;        /* 8 low-res masks, 256 x 256 each */
    int newh, neww;
} dc_setup;

static inline int dc_fixtures_present(void) {
    return fixture_exists(DC_STUDENT) && fixture_exists(DC_TEACHER) &&
           fixture_exists("distill/case_a/prompts.json");
}

static inline void dc_free(dc_setup *s) {
    tinysam_model_free(s->student);
    tinysam_model_free(s->teacher);
    free(s->emb_s), free(s->emb_t), free(s->glow);
    memset(s, 0, sizeof *s);
}

/* Loads both networks, runs the student encoder once, reads the low-res ground truths.
 * Returns 1 on success (0 with s freed otherwise). */
static inline int dc_load(dc_setup *s) {
    memset(s, 0, sizeof *s);
    ts_npy rs = {0}, et = {0}, gl = {0};
    ts_json *gj = NULL;
    int good = 0;
    float *input = malloc(sizeof(float) * 3 * DC_FR * DC_FR);
    s->emb_s = malloc(sizeof(float) * TS_LOSS_EMB);
    s->emb_t = malloc(sizeof(float) * TS_LOSS_EMB);
    s->glow = malloc((size_t)DC_NSET * TS_LOSS_CELLS);
    if (!input || !s->emb_s || !s->emb_t || !s->glow) goto done;
    if (tinysam_model_load(fixture(DC_STUDENT), &s->student) ||
        tinysam_model_load(fixture(DC_TEACHER), &s->teacher))
        goto done;
    if (ts_npy_load(fixture("reference/picture1/resized.npy"), &rs) ||
        ts_npy_load(fixture("reference/picture1/embedding.npy"), &et) ||
        ts_npy_load(fixture("distill/gt/picture1_glow_bits.npy"), &gl) ||
        ts_json_load(fixture("distill/gt/picture1.json"), &gj))
        goto done;
    if (rs.dtype != TS_DTYPE_U8 || rs.ndim != 3 || et.numel != TS_LOSS_EMB ||
        gl.numel != DC_NSET * TS_LOSS_CELLS / 8)
        goto done;
    const ts_json *isz = ts_json_get(gj, "input_size");
    s->newh = (int)ts_json_at(isz, 0)->number;
    s->neww = (int)ts_json_at(isz, 1)->number;
    if (rs.shape[0] != s->newh || rs.shape[1] != s->neww) goto done;
    ts_normalize_pad(rs.data, s->newh, s->neww, input);
    if (ts_tiny_vit_forward(s->student->encoder, input, s->emb_s, NULL, NULL)) goto done;
    memcpy(s->emb_t, et.data, sizeof(float) * TS_LOSS_EMB);
    const uint8_t *b = gl.data;
    for (size_t i = 0; i < (size_t)DC_NSET * TS_LOSS_CELLS; i++)
        s->glow[i] = (b[i / 8] >> (7 - i % 8)) & 1;
    good = 1;
done:
    free(input);
    ts_npy_free(&rs), ts_npy_free(&et), ts_npy_free(&gl);
    ts_json_free(gj);
    if (!good) {
        printf("  setup: %s\n", tinysam_last_error());
        dc_free(s);
    }
    return good;
}

/* Case A prompts: the sets as ts_prompt_set (coords and masks owned by the struct). */
typedef struct {
    ts_sample_set ss[DC_NSET];
    ts_prompt_set ps[DC_NSET];
    float coords[DC_NSET][2 * TS_SAMPLE_MAX_POINTS];
    ts_npy masks[DC_NSET];
    int gt[DC_NSET], n_real[DC_NSET];
} dc_case_a;

static inline void dc_case_a_free(dc_case_a *a) {
    for (int i = 0; i < DC_NSET; i++) ts_npy_free(&a->masks[i]);
}

/* Returns 1 on success. */
static inline int dc_case_a_load(dc_case_a *a) {
    memset(a, 0, sizeof *a);
    ts_json *pj = NULL;
    if (ts_json_load(fixture("distill/case_a/prompts.json"), &pj)) return 0;
    const ts_json *sets = ts_json_get(pj, "sets");
    int good = sets && sets->n == DC_NSET;
    for (int i = 0; good && i < DC_NSET; i++) {
        const ts_json *s = ts_json_at(sets, i), *pts = ts_json_get(s, "points");
        const ts_json *box = ts_json_get(s, "box"), *mi = ts_json_get(s, "mask_input");
        if (!pts || pts->n > TS_SAMPLE_MAX_POINTS) {
            good = 0;
            break;
        }
        ts_sample_set *q = &a->ss[i];
        q->n_points = pts->n;
        for (int p = 0; p < pts->n; p++) {
            q->points[p][0] = ts_json_at(ts_json_at(pts, p), 0)->number;
            q->points[p][1] = ts_json_at(ts_json_at(pts, p), 1)->number;
            q->labels[p] = (int)ts_json_at(ts_json_get(s, "labels"), p)->number;
        }
        if (box && box->type == TS_JSON_ARRAY) {
            q->has_box = 1;
            for (int k = 0; k < 4; k++) q->box[k] = ts_json_at(box, k)->number;
        }
        const float *mask = NULL;
        if (mi && mi->type == TS_JSON_STRING) {
            char rel[256];
            snprintf(rel, sizeof rel, "distill/case_a/%s", mi->string);
            if (ts_npy_load(fixture(rel), &a->masks[i]) || a->masks[i].numel != TS_LOSS_CELLS ||
                a->masks[i].dtype != TS_DTYPE_F32) {
                good = 0;
                break;
            }
            mask = a->masks[i].data;
        }
        ts_sample_to_prompt(q, mask, a->coords[i], &a->ps[i]);
        a->gt[i] = (int)ts_json_num(s, "gt", -1);
        a->n_real[i] = ts_sample_n_real(q);
    }
    ts_json_free(pj);
    if (!good) dc_case_a_free(a);
    return good;
}

/* One fixture image as a training example: resized.npy, the reference embedding as E_T, the
 * 8 ground truths of distill/gt/. */
static inline int dc_example_load(const char *name, ts_train_example *ex) {
    char p[256];
    ts_npy rs = {0}, et = {0}, g1 = {0}, gl = {0}, va = {0};
    ts_json *gj = NULL;
    int good = 0;
    if (ts_example_alloc(ex, DC_NSET)) return 0;
    snprintf(ex->name, sizeof ex->name, "%s", name);
#define LOAD(rel, arr) (snprintf(p, sizeof p, rel, name), ts_npy_load(fixture(p), &(arr)) == 0)
    if (!LOAD("reference/%s/resized.npy", rs) || !LOAD("reference/%s/embedding.npy", et) ||
        !LOAD("distill/gt/%s_g1024_bits.npy", g1) || !LOAD("distill/gt/%s_glow_bits.npy", gl) ||
        !LOAD("distill/gt/%s_valid.npy", va))
        goto done;
#undef LOAD
    snprintf(p, sizeof p, "distill/gt/%s.json", name);
    if (ts_json_load(fixture(p), &gj)) goto done;
    const ts_json *isz = ts_json_get(gj, "input_size");
    ex->newh = (int)ts_json_at(isz, 0)->number;
    ex->neww = (int)ts_json_at(isz, 1)->number;
    if (rs.shape[0] != ex->newh || rs.shape[1] != ex->neww || et.numel != TS_LOSS_EMB ||
        g1.numel != (int64_t)DC_NSET * TS_FRAME_BITS || va.numel != TS_LOWRES_CELLS ||
        gl.numel != (int64_t)DC_NSET * TS_LOWRES_CELLS / 8)
        goto done;
    ts_normalize_pad(rs.data, ex->newh, ex->neww, ex->input);
    memcpy(ex->emb_t, et.data, sizeof(float) * TS_LOSS_EMB);
    memcpy(ex->g1024_bits, g1.data, (size_t)DC_NSET * TS_FRAME_BITS);
    memcpy(ex->valid, va.data, TS_LOWRES_CELLS);
    const uint8_t *b = gl.data;
    for (size_t i = 0; i < (size_t)DC_NSET * TS_LOWRES_CELLS; i++)
        ex->glow[i] = (b[i / 8] >> (7 - i % 8)) & 1;
    const ts_json *area = ts_json_get(gj, "area_1024");
    for (int k = 0; k < DC_NSET; k++) ex->area1024[k] = (long long)ts_json_at(area, k)->number;
    good = 1;
done:
    ts_npy_free(&rs), ts_npy_free(&et), ts_npy_free(&g1), ts_npy_free(&gl), ts_npy_free(&va);
    ts_json_free(gj);
    if (!good) ts_example_free(ex);
    return good;
}

/* ---- the 6.2 gradient criteria -------------------------------------------------------------- */

typedef struct {
    double worst_sample, worst_norm, worst_max, min_cos; /* ratios to the allowed error */
    const char *n_sample, *n_norm, *n_max, *n_min_cos;
} dc_crit; /* start with {.min_cos = 1.0} */

/* One tensor's whole gradient (n values, double gd or float gf) against the fixture's norm,
 * max and samples (6.2: sampled |g - g_ref| <= 2e-3 max|g_ref|, norm and max within 1e-3,
 * cosine >= 0.9999 where the samples carry weight). zero_analytic > 0: the gradient is exactly
 * zero in exact arithmetic (softmax shift invariance: a key bias moves every logit of a query
 * row equally), so the reference holds float32 rounding noise that no other computation
 * reproduces: ours must stay below zero_analytic and the reference below 1e-7; reported apart,
 * not in the worst ratios. Returns 1 when all pass. */
static inline int dc_grad_criteria(dc_crit *cr, const char *name, const double *gd,
                                   const float *gf, size_t n, double ref_norm, double ref_max,
                                   const int32_t *idx, const float *val, int count,
                                   double zero_analytic, int verbose) {
#define DC_G(k) (gd ? gd[k] : (double)gf[k])
    double nrm = 0, mx = 0;
    for (size_t k = 0; k < n; k++) nrm += DC_G(k) * DC_G(k), mx = fmax(mx, fabs(DC_G(k)));
    nrm = sqrt(nrm);
    double dmax = 0, sg = 0, sr = 0, sgr = 0;
    int in_range = 1;
    for (int j = 0; j < count; j++) {
        if (idx[j] < 0 || (size_t)idx[j] >= n) {
            in_range = 0;
            continue;
        }
        double a = DC_G((size_t)idx[j]), b = val[j];
        dmax = fmax(dmax, fabs(a - b));
        sg += a * a, sr += b * b, sgr += a * b;
    }
#undef DC_G
    CHECK(in_range, "%s: sample index out of range", name);
    if (zero_analytic > 0) {
        int ok = mx <= zero_analytic && ref_max <= 1e-7;
        CHECK(ok, "%s: analytically zero gradient: ours max %.3g, reference max %.3g", name, mx,
              ref_max);
        printf("  %-66s analytically zero: ours max %.2g, reference max %.2g (float noise)\n",
               name, mx, ref_max);
        return ok;
    }
    double tol_s = 2e-3 * ref_max + 1e-8;
    double tol_n = 1e-3 * ref_norm + 1e-8, tol_m = 1e-3 * ref_max + 1e-8;
    double rs = dmax / tol_s, rn = fabs(nrm - ref_norm) / tol_n, rm = fabs(mx - ref_max) / tol_m;
    double cosv = sg > 0 && sr > 0 ? sgr / sqrt(sg * sr) : 1.0;
    int need_cos = sqrt(sr) > 1e-3 * ref_norm;
    if (rs > cr->worst_sample) cr->worst_sample = rs, cr->n_sample = name;
    if (rn > cr->worst_norm) cr->worst_norm = rn, cr->n_norm = name;
    if (rm > cr->worst_max) cr->worst_max = rm, cr->n_max = name;
    if (need_cos && cosv < cr->min_cos) cr->min_cos = cosv, cr->n_min_cos = name;
    int ok = rs <= 1 && rn <= 1 && rm <= 1 && (!need_cos || cosv >= 0.9999);
    if (verbose)
        printf("    %-62s sample %.3f norm %.3f max %.3f cos %.7f\n", name, rs, rn, rm, cosv);
    CHECK(ok, "%s: sampled |g - ref| %.3g (allowed %.3g), norm %.7g vs %.7g, max %.7g vs %.7g, "
          "cosine %.7f%s", name, dmax, tol_s, nrm, ref_norm, mx, ref_max, cosv,
          need_cos ? "" : " (not required)");
    return ok;
}

/* 6.2 on the loss step r of case A's N sets (ex: the expected sets): each IoU count may differ
 * from the reference's only by cells whose logit is within 1e-4 of 0 (zt, zs: the teacher's
 * and the student's logits, 4 masks of C cells per set), and the selections must be the
 * reference's. When counts differ (test_distill_parity shows the differing cells are near-zero
 * logits), in takes the reference's H and selections (H, ss, st: N each, the caller's) for
 * the gradients. */
static inline void dc_check_counts(const ts_json *ex, const ts_loss_result *r, int N,
                                   const float *zt, const float *zs, size_t C, float *H, int *ss,
                                   int *st, ts_loss_inputs *in) {
    const ts_json *esets = ts_json_get(ex, "sets");
    int differ = 0;
    for (int i = 0; i < N; i++) {
        const ts_json *e = ts_json_at(esets, i), *ic = ts_json_get(e, "iou_counts");
        H[i] = (float)ts_json_num(e, "H", NAN);
        ss[i] = (int)ts_json_num(e, "selected_student", -1);
        st[i] = (int)ts_json_num(e, "selected_teacher", -1);
        long long got[4] = {r->t_inter[i], r->t_union[i], r->s_inter[i], r->s_union[i]};
        const char *nm[4] = {"teacher_inter", "teacher_union", "student_inter", "student_union"};
        for (int k = 0; k < 4; k++) {
            const long long ref = (long long)ts_json_num(ic, nm[k], -1);
            if (got[k] == ref) continue;
            /* 6.2: the difference must lie in cells whose logit is within 1e-4 of 0 */
            const float *zm = k < 2 ? zt + ((size_t)i * 4 + r->sel_t[i]) * C
                                    : zs + ((size_t)i * 4 + r->sel_s[i]) * C;
            long long nz = 0;
            for (size_t q = 0; q < C; q++) nz += fabsf(zm[q]) < 1e-4f;
            printf("  set %d: %s %lld vs reference %lld (%lld cells with |logit| < 1e-4)\n", i,
                   nm[k], got[k], ref, nz);
            CHECK(llabs(got[k] - ref) <= nz, "set %d: %s differs beyond the near-zero cells", i,
                  nm[k]);
            differ = 1;
        }
        CHECK(ss[i] == r->sel_s[i] && st[i] == r->sel_t[i], "set %d: selections %d/%d vs %d/%d", i,
              r->sel_s[i], r->sel_t[i], ss[i], st[i]);
    }
    if (differ) {
        in->given_H = H, in->given_sel_s = ss, in->given_sel_t = st;
        printf("  IoU counts differ in near-zero cells: using the reference's H and selections\n");
    }
}

#endif
