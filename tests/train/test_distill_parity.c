/* test_distill_parity.c - spec/DISTILL.md 6.2, forward side: the inference engine as the
 * student's and the teacher's forward pass, the losses of src/train/losses.c and the sampling
 * of src/train/sampling.c against the PyTorch autograd reference (fixtures distill/).
 *
 * Student = distill/student_fp16.pth on the normalised padded reference/picture1/resized.npy;
 * teacher = models/tinysam_vit_t_random.pth with E_T = reference/picture1/embedding.npy (the
 * reference's own teacher embedding); ground truths distill/gt/picture1*.
 * Case A: the 8 fixed prompt sets, every value of case_a/expected.json except gradients.
 * Case B: seed 11, the sampled prompts of case_b/run.json round by round, then the losses of
 * the training round. Pass criteria as in 6.2: H, selections and IoU counts equal; values
 * within 1e-4 relative (1e-6 absolute below 1e-2); prompts equal. */
#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "model/image_encoder.h"
#include "model/sam.h"
#include "model/sam_decoder.h"
#include "model/transforms.h"
#include "test.h"
#include "train/losses.h"
#include "train/sampling.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define TEACHER "models/tinysam_vit_t_random.pth"
#define STUDENT "distill/student_fp16.pth"
#define C_ TS_LOSS_CELLS
#define NSET 8
#define FR 1024

typedef struct {
    int ok;
    tinysam_model *student, *teacher;
    float *emb_s, *emb_t;       /* 256 x 64 x 64 */
    uint8_t *g1024, *glow;      /* 8 masks each */
    uint8_t valid[C_];
    int newh, neww;
} setup;

static setup S;

static uint8_t *unpack_bits(const ts_npy *a, size_t count) {
    uint8_t *out = malloc(count);
    if (!out) return NULL;
    const uint8_t *b = a->data;
    for (size_t i = 0; i < count; i++) out[i] = (b[i / 8] >> (7 - i % 8)) & 1;
    return out;
}

/* Loads both networks, runs the student encoder once and reads the ground truths. */
static int load_setup(void) {
    if (S.ok) return S.ok > 0;
    S.ok = -1;
    ts_npy rs = {0}, et = {0}, g1 = {0}, gl = {0}, va = {0};
    ts_json *gj = NULL;
    int good = 0;
    float *input = malloc(sizeof(float) * 3 * FR * FR);
    S.emb_s = malloc(sizeof(float) * TS_LOSS_EMB);
    S.emb_t = malloc(sizeof(float) * TS_LOSS_EMB);
    if (!input || !S.emb_s || !S.emb_t) goto done;
    if (tinysam_model_load(fixture(STUDENT), &S.student) ||
        tinysam_model_load(fixture(TEACHER), &S.teacher)) {
        printf("  load: %s\n", tinysam_last_error());
        goto done;
    }
    if (ts_npy_load(fixture("reference/picture1/resized.npy"), &rs) ||
        ts_npy_load(fixture("reference/picture1/embedding.npy"), &et) ||
        ts_npy_load(fixture("distill/gt/picture1_g1024_bits.npy"), &g1) ||
        ts_npy_load(fixture("distill/gt/picture1_glow_bits.npy"), &gl) ||
        ts_npy_load(fixture("distill/gt/picture1_valid.npy"), &va) ||
        ts_json_load(fixture("distill/gt/picture1.json"), &gj))
        goto done;
    if (rs.dtype != TS_DTYPE_U8 || rs.ndim != 3 || et.numel != TS_LOSS_EMB || va.numel != C_ ||
        va.dtype != TS_DTYPE_U8 || g1.numel != NSET * FR * FR / 8 || gl.numel != NSET * C_ / 8)
        goto done;
    const ts_json *isz = ts_json_get(gj, "input_size");
    S.newh = (int)ts_json_at(isz, 0)->number;
    S.neww = (int)ts_json_at(isz, 1)->number;
    if (rs.shape[0] != S.newh || rs.shape[1] != S.neww) goto done;
    ts_normalize_pad(rs.data, S.newh, S.neww, input);
    double t0 = ts_now_ms();
    if (ts_tiny_vit_forward(S.student->encoder, input, S.emb_s, NULL, NULL)) goto done;
    printf("  student encoder forward %.0f ms\n", ts_now_ms() - t0);
    memcpy(S.emb_t, et.data, sizeof(float) * TS_LOSS_EMB);
    memcpy(S.valid, va.data, C_);
    S.g1024 = unpack_bits(&g1, (size_t)NSET * FR * FR);
    S.glow = unpack_bits(&gl, (size_t)NSET * C_);
    good = S.g1024 && S.glow;
    /* the valid map of the fixture follows spec 4.3 */
    for (int q = 0; good && q < C_; q++)
        if (S.valid[q] != (4 * (q / 256) + 2 < S.newh && 4 * (q % 256) + 2 < S.neww)) good = 0;
done:
    free(input);
    ts_npy_free(&rs), ts_npy_free(&et), ts_npy_free(&g1), ts_npy_free(&gl), ts_npy_free(&va);
    ts_json_free(gj);
    S.ok = good ? 1 : -1;
    return good;
}

static void free_setup(void) {
    tinysam_model_free(S.student);
    tinysam_model_free(S.teacher);
    free(S.emb_s), free(S.emb_t), free(S.g1024), free(S.glow);
    memset(&S, 0, sizeof S);
}

/* Both networks on the same N prompt sets (each with its own embedding) into the loss inputs. */
typedef struct {
    float *z_s, *z_t, *tok_s, *tok_t, u_s[4 * NSET], u_t[4 * NSET];
} outputs;

static int outputs_alloc(outputs *o) {
    memset(o, 0, sizeof *o);
    o->z_s = malloc(sizeof(float) * NSET * 4 * C_);
    o->z_t = malloc(sizeof(float) * NSET * 4 * C_);
    o->tok_s = malloc(sizeof(float) * NSET * TS_LOSS_TOK);
    o->tok_t = malloc(sizeof(float) * NSET * TS_LOSS_TOK);
    return o->z_s && o->z_t && o->tok_s && o->tok_t;
}

static void outputs_free(outputs *o) { free(o->z_s), free(o->z_t), free(o->tok_s), free(o->tok_t); }

static int decode_student(int n, const ts_prompt_set *ps, float *z, float *u, float *tok) {
    return ts_sam_decode_tokens(S.student->prompt_encoder, S.student->mask_decoder, S.emb_s, n,
                                ps, z, u, tok);
}

static int decode_both(int n, const ts_prompt_set *ps, outputs *o) {
    if (decode_student(n, ps, o->z_s, o->u_s, o->tok_s)) return -1;
    return ts_sam_decode_tokens(S.teacher->prompt_encoder, S.teacher->mask_decoder, S.emb_t, n,
                                ps, o->z_t, o->u_t, o->tok_t);
}

/* ---- comparisons --------------------------------------------------------------------------- */

static double g_worst_rel; /* the largest relative difference of a compared value */
static const char *g_worst_name;

/* 6.2: relative <= 1e-4, or absolute <= 1e-6 for values below 1e-2. */
static void cmp_val(const char *what, int set, double got, double ref) {
    double d = fabs(got - ref), r = d / fmax(fabs(ref), 1e-30);
    int ok = fabs(ref) < 1e-2 ? d <= 1e-6 : r <= 1e-4;
    if (fabs(ref) >= 1e-2 && r > g_worst_rel) {
        g_worst_rel = r;
        g_worst_name = what;
    }
    CHECK(ok, "%s (set %d): %.9g vs reference %.9g (rel %.2g)", what, set, got, ref, r);
}

static double jnum(const ts_json *o, const char *k) { return ts_json_num(o, k, NAN); }
static double jat(const ts_json *o, const char *k, int i) {
    const ts_json *a = ts_json_at(ts_json_get(o, k), i);
    return a ? a->number : NAN;
}

/* Number of cells of a map with |logit| < 1e-4: the only cells whose side of 0 float noise
 * may flip. */
static long long near_zero(const float *z) {
    long long n = 0;
    for (int q = 0; q < C_; q++) n += fabsf(z[q]) < 1e-4f;
    return n;
}

/* Compares the loss result with an expected.json; when an IoU count differs, checks that the
 * difference is within the near-zero cells and asks for a rerun with the reference's H and
 * selections (*rerun = 1). */
static void compare_expected(const ts_json *ex, const ts_loss_result *r, const outputs *o, int N,
                             int *rerun) {
    const ts_json *sets = ts_json_get(ex, "sets");
    *rerun = 0;
    for (int i = 0; i < N; i++) {
        const ts_json *e = ts_json_at(sets, i), *ic = ts_json_get(e, "iou_counts");
        for (int k = 0; k < 4; k++) {
            int in = 0;
            for (int j = 0; j < ts_json_get(e, "eligible")->n; j++)
                in |= (int)jat(e, "eligible", j) == k;
            CHECK(in == r->eligible[i][k], "set %d: eligible set differs at k = %d", i, k);
        }
        CHECK(r->sel_s[i] == (int)jnum(e, "selected_student") &&
                  r->sel_t[i] == (int)jnum(e, "selected_teacher"),
              "set %d: selected %d/%d, reference %d/%d", i, r->sel_s[i], r->sel_t[i],
              (int)jnum(e, "selected_student"), (int)jnum(e, "selected_teacher"));
        long long got[4] = {r->t_inter[i], r->t_union[i], r->s_inter[i], r->s_union[i]};
        const char *names[4] = {"teacher_inter", "teacher_union", "student_inter",
                                "student_union"};
        for (int c = 0; c < 4; c++) {
            long long ref = (long long)jnum(ic, names[c]);
            if (got[c] == ref) continue;
            const float *z = c < 2 ? o->z_t + ((size_t)i * 4 + r->sel_t[i]) * C_
                                   : o->z_s + ((size_t)i * 4 + r->sel_s[i]) * C_;
            long long nz = near_zero(z);
            printf("  set %d: %s %lld vs %lld (%lld cells with |logit| < 1e-4)\n", i, names[c],
                   got[c], ref, nz);
            CHECK(llabs(got[c] - ref) <= nz, "set %d: %s %lld vs reference %lld", i, names[c],
                  got[c], ref);
            *rerun = 1;
        }
        CHECK((float)jnum(e, "H") == r->H[i] || *rerun, "set %d: H %.9g vs %.9g", i, r->H[i],
              jnum(e, "H"));
        cmp_val("H", i, r->H[i], jnum(e, "H"));
        cmp_val("L_out", i, r->L_out[i], jnum(e, "L_out"));
        CHECK(r->k_min[i] == (int)jnum(e, "ell_min_k"), "set %d: ell_min_k %d vs %d", i,
              r->k_min[i], (int)jnum(e, "ell_min_k"));
        for (int k = 0; k < 4; k++) {
            cmp_val("ell", i, r->ell[i][k], jat(e, "ell", k));
            cmp_val("v", i, r->v[i][k], jat(e, "v", k));
            cmp_val("u_student", i, o->u_s[4 * i + k], jat(e, "u_student", k));
            cmp_val("u_teacher", i, o->u_t[4 * i + k], jat(e, "u_teacher", k));
        }
    }
    cmp_val("L_emb", -1, r->L_emb, jnum(ex, "L_emb"));
    cmp_val("L_tok", -1, r->L_tok, jnum(ex, "L_tok"));
    cmp_val("L_out_weighted", -1, r->L_out_weighted, jnum(ex, "L_out_weighted"));
    cmp_val("L_out_mean", -1, r->L_out_mean, jnum(ex, "L_out_mean"));
    cmp_val("L_mask", -1, r->L_mask, jnum(ex, "L_mask"));
    cmp_val("L_iou", -1, r->L_iou, jnum(ex, "L_iou"));
    cmp_val("L_total", -1, r->L_total, jnum(ex, "L_total"));
}

/* Losses of a decoded step against expected.json (with the 6.2 fallback to the reference's
 * H and selections when an IoU count differs within the near-zero cells). */
static void losses_vs_expected(const ts_json *ex, outputs *o, const int *gt_index,
                               const int *n_real, int N) {
    const uint8_t *gp[NSET];
    for (int i = 0; i < N; i++) gp[i] = S.glow + (size_t)gt_index[i] * C_;
    ts_loss_inputs in = {.N = N, .emb_s = S.emb_s, .emb_t = S.emb_t, .tok_s = o->tok_s,
                         .tok_t = o->tok_t, .z_s = o->z_s, .z_t = o->z_t, .u_s = o->u_s,
                         .u_t = o->u_t, .g = gp, .n_real = n_real};
    ts_loss_config c;
    ts_loss_config_default(&c);
    ts_loss_result r;
    REQUIRE(ts_loss_step(&c, &in, &r, NULL) == 0, "loss step");
    int rerun;
    g_worst_rel = 0;
    g_worst_name = "-";
    compare_expected(ex, &r, o, N, &rerun);
    if (rerun) {
        const ts_json *sets = ts_json_get(ex, "sets");
        float H[NSET];
        int ss[NSET], st[NSET];
        for (int i = 0; i < N; i++) {
            const ts_json *e = ts_json_at(sets, i);
            H[i] = (float)jnum(e, "H");
            ss[i] = (int)jnum(e, "selected_student");
            st[i] = (int)jnum(e, "selected_teacher");
        }
        in.given_H = H, in.given_sel_s = ss, in.given_sel_t = st;
        REQUIRE(ts_loss_step(&c, &in, &r, NULL) == 0, "loss step");
        printf("  IoU counts differed within near-zero logits: values rechecked with the "
               "reference's H and selections\n");
        compare_expected(ex, &r, o, N, &rerun);
    }
    printf("  L_emb %.7f L_tok %.7f L_out_w %.7f L_mask %.7f L_iou %.7f L_total %.7f\n", r.L_emb,
           r.L_tok, r.L_out_weighted, r.L_mask, r.L_iou, r.L_total);
    printf("  largest relative difference %.2g (%s); aggregate terms: emb %.1e tok %.1e "
           "out %.1e mask %.1e iou %.1e total %.1e\n", g_worst_rel, g_worst_name,
           fabs(r.L_emb / jnum(ex, "L_emb") - 1), fabs(r.L_tok / jnum(ex, "L_tok") - 1),
           fabs(r.L_out_weighted / jnum(ex, "L_out_weighted") - 1),
           fabs(r.L_mask / jnum(ex, "L_mask") - 1), fabs(r.L_iou / jnum(ex, "L_iou") - 1),
           fabs(r.L_total / jnum(ex, "L_total") - 1));
}

/* ---- case A -------------------------------------------------------------------------------- */

static void test_case_a(void) {
    if (!fixture_exists(STUDENT) || !fixture_exists(TEACHER) ||
        !fixture_exists("distill/case_a/expected.json"))
        SKIP("fixtures distill/ or the teacher model missing");
    REQUIRE(load_setup(), "setup failed: %s", tinysam_last_error());
    ts_json *pj = NULL, *ex = NULL;
    REQUIRE(ts_json_load(fixture("distill/case_a/prompts.json"), &pj) == 0, "prompts.json");
    REQUIRE(ts_json_load(fixture("distill/case_a/expected.json"), &ex) == 0, "expected.json");
    const ts_json *sets = ts_json_get(pj, "sets");
    REQUIRE(sets && sets->n == NSET, "8 sets");
    ts_sample_set ss[NSET];
    ts_prompt_set ps[NSET];
    float coords[NSET][2 * TS_SAMPLE_MAX_POINTS];
    ts_npy masks[NSET];
    memset(masks, 0, sizeof masks);
    int gt[NSET], n_real[NSET];
    for (int i = 0; i < NSET; i++) {
        const ts_json *s = ts_json_at(sets, i), *pts = ts_json_get(s, "points");
        const ts_json *box = ts_json_get(s, "box"), *mi = ts_json_get(s, "mask_input");
        memset(&ss[i], 0, sizeof ss[i]);
        REQUIRE(pts->n <= TS_SAMPLE_MAX_POINTS, "points");
        ss[i].n_points = pts->n;
        for (int p = 0; p < pts->n; p++) {
            ss[i].points[p][0] = ts_json_at(ts_json_at(pts, p), 0)->number;
            ss[i].points[p][1] = ts_json_at(ts_json_at(pts, p), 1)->number;
            ss[i].labels[p] = (int)jat(s, "labels", p);
        }
        if (box && box->type == TS_JSON_ARRAY) {
            ss[i].has_box = 1;
            for (int k = 0; k < 4; k++) ss[i].box[k] = ts_json_at(box, k)->number;
        }
        const float *mask = NULL;
        if (mi && mi->type == TS_JSON_STRING) {
            char rel[256];
            snprintf(rel, sizeof rel, "distill/case_a/%s", mi->string);
            REQUIRE(ts_npy_load(fixture(rel), &masks[i]) == 0 && masks[i].numel == C_ &&
                        masks[i].dtype == TS_DTYPE_F32,
                    "%s", rel);
            mask = masks[i].data;
        }
        ts_sample_to_prompt(&ss[i], mask, coords[i], &ps[i]);
        CHECK(ts_sample_tokens(&ss[i]) == (int)jnum(s, "tokens"), "set %d: %d tokens", i,
              ts_sample_tokens(&ss[i]));
        gt[i] = (int)jnum(s, "gt");
        n_real[i] = ts_sample_n_real(&ss[i]);
    }
    outputs o;
    REQUIRE(outputs_alloc(&o), "out of memory");
    double t0 = ts_now_ms();
    REQUIRE(decode_both(NSET, ps, &o) == 0, "decode: %s", tinysam_last_error());
    printf("  decoders (8 sets, both networks) %.0f ms\n", ts_now_ms() - t0);
    losses_vs_expected(ex, &o, gt, n_real, NSET);
    /* the sets one by one give the same outputs (another code path: no shared projections,
     * upscaling spread over the pool), tokens included */
    float *z1 = malloc(sizeof(float) * 4 * C_), u1[4], tok1[TS_LOSS_TOK];
    REQUIRE(z1, "out of memory");
    double dz = 0, du = 0, dt = 0, zmax = 0;
    for (int i = 0; i < NSET; i++) {
        REQUIRE(decode_student(1, &ps[i], z1, u1, tok1) == 0, "decode");
        for (size_t q = 0; q < 4 * C_; q++) {
            dz = fmax(dz, fabs(z1[q] - o.z_s[(size_t)i * 4 * C_ + q]));
            zmax = fmax(zmax, fabs(z1[q]));
        }
        for (int k = 0; k < 4; k++) du = fmax(du, fabs(u1[k] - o.u_s[4 * i + k]));
        for (int q = 0; q < TS_LOSS_TOK; q++)
            dt = fmax(dt, fabs(tok1[q] - o.tok_s[(size_t)i * TS_LOSS_TOK + q]));
    }
    printf("  one by one vs together: logits %.2g (of max %.1f), IoU %.2g, tokens %.2g\n", dz,
           zmax, du, dt);
    CHECK(dz <= 1e-5 * zmax && du <= 1e-5 && dt <= 1e-5, "one-by-one decoding differs");
    free(z1);
    outputs_free(&o);
    for (int i = 0; i < NSET; i++) ts_npy_free(&masks[i]);
    ts_json_free(pj);
    ts_json_free(ex);
}

/* ---- case B -------------------------------------------------------------------------------- */

/* A set of run.json (initial_prompts / final_prompts) equals ours exactly. */
static int same_prompts(const ts_json *f, const ts_sample_set *s) {
    const ts_json *pts = ts_json_get(f, "points"), *box = ts_json_get(f, "box");
    if (!pts || pts->n != s->n_points) return 0;
    for (int p = 0; p < s->n_points; p++)
        if (ts_json_at(ts_json_at(pts, p), 0)->number != s->points[p][0] ||
            ts_json_at(ts_json_at(pts, p), 1)->number != s->points[p][1] ||
            (int)jat(f, "labels", p) != s->labels[p])
            return 0;
    int fb = box && box->type == TS_JSON_ARRAY;
    if (fb != s->has_box) return 0;
    for (int k = 0; fb && k < 4; k++)
        if (ts_json_at(box, k)->number != s->box[k]) return 0;
    return 1;
}

static void test_case_b(void) {
    if (!fixture_exists(STUDENT) || !fixture_exists(TEACHER) ||
        !fixture_exists("distill/case_b/run.json"))
        SKIP("fixtures distill/ or the teacher model missing");
    REQUIRE(load_setup(), "setup failed: %s", tinysam_last_error());
    ts_json *run = NULL, *ex = NULL;
    REQUIRE(ts_json_load(fixture("distill/case_b/run.json"), &run) == 0, "run.json");
    REQUIRE(ts_json_load(fixture("distill/case_b/expected.json"), &ex) == 0, "expected.json");
    int usable[NSET], U = 0;
    for (int m = 0; m < NSET; m++)
        if (ts_sample_usable(S.g1024 + (size_t)m * FR * FR, S.glow + (size_t)m * C_, S.newh,
                             S.neww))
            usable[U++] = m;
    ts_rng r;
    ts_rng_seed(&r, (uint64_t)jnum(run, "seed"));
    int chosen[NSET];
    int N = ts_sample_choose_masks(&r, usable, U, TS_SAMPLE_MAX_SETS, chosen);
    REQUIRE(N == (int)jnum(run, "N"), "N = %d", N);
    for (int i = 0; i < N; i++)
        CHECK(chosen[i] == (int)jat(run, "chosen_gt", i), "chosen[%d] = %d", i, chosen[i]);
    int t = ts_sample_rounds(&r);
    REQUIRE(t == (int)jnum(run, "t"), "t = %d", t);
    ts_sample_set sets[NSET];
    const uint8_t *gl[NSET];
    int prompts_equal = 1, skipped = 0;
    for (int i = 0; i < N; i++) {
        REQUIRE(ts_sample_init(&r, S.g1024 + (size_t)chosen[i] * FR * FR, S.newh, S.neww,
                               &sets[i]) == 0,
                "init");
        gl[i] = S.glow + (size_t)chosen[i] * C_;
        int eq = same_prompts(ts_json_at(ts_json_get(run, "initial_prompts"), i), &sets[i]);
        CHECK(eq, "set %d: initial prompt differs", i);
        prompts_equal &= eq;
    }
    outputs o;
    float *mask_in = malloc(sizeof(float) * NSET * C_);
    float *mask_next = malloc(sizeof(float) * NSET * C_);
    REQUIRE(outputs_alloc(&o) && mask_in && mask_next, "out of memory");
    ts_prompt_set ps[NSET];
    float coords[NSET][2 * TS_SAMPLE_MAX_POINTS];
    double worst_logit = 0;
    for (int j = 0; j < t; j++) {
        for (int i = 0; i < N; i++)
            ts_sample_to_prompt(&sets[i], j ? mask_in + (size_t)i * C_ : NULL, coords[i], &ps[i]);
        REQUIRE(decode_student(N, ps, o.z_s, o.u_s, NULL) == 0, "decode: %s",
                tinysam_last_error());
        ts_sample_info info[NSET];
        REQUIRE(ts_sample_round(&r, N, o.z_s, o.u_s, gl, S.valid, sets, mask_next, info) == 0,
                "round");
        const ts_json *fr = ts_json_at(ts_json_get(run, "rounds"), j);
        for (int i = 0; i < N; i++) {
            const ts_json *f = ts_json_at(fr, i);
            double flog = jnum(f, "logit");
            /* the prompt: selection, drawn cell and label */
            int same = info[i].selected == (int)jnum(f, "selected") &&
                       info[i].label == (int)jnum(f, "label");
            if (info[i].label >= 0)
                same &= info[i].row == (int)jnum(f, "row") && info[i].col == (int)jnum(f, "col");
            if (!same && fabs(flog) < 1e-4) {
                /* 6.2 skip rule: a near-zero reference logit; continue with its point */
                skipped++;
                ts_sample_set *s = &sets[i];
                s->points[s->n_points - 1][0] = 4.0 * jnum(f, "col") + 1.5;
                s->points[s->n_points - 1][1] = 4.0 * jnum(f, "row") + 1.5;
                s->labels[s->n_points - 1] = (int)jnum(f, "label");
                continue;
            }
            CHECK(same, "round %d set %d: selected %d cell (%d,%d) label %d; reference %d "
                  "(%d,%d) %d", j, i, info[i].selected, info[i].row, info[i].col, info[i].label,
                  (int)jnum(f, "selected"), (int)jnum(f, "row"), (int)jnum(f, "col"),
                  (int)jnum(f, "label"));
            prompts_equal &= same;
            if (!same) continue;
            if (info[i].label >= 0) worst_logit = fmax(worst_logit, fabs(info[i].logit - flog));
            /* region size and drawn index: equal, or off by cells whose logit is within 1e-4
             * of 0 (a cell on the other side of 0 in float32 noise) */
            long long dc = info[i].error_cells - (long long)jnum(f, "error_cells");
            long long di = info[i].cell_index - (long long)jnum(f, "cell_index");
            if (dc || (info[i].label >= 0 && di)) {
                const float *zsel = o.z_s + ((size_t)i * 4 + info[i].selected) * C_;
                long long nz = 0;
                for (int q = 0; q < C_; q++) nz += S.valid[q] && fabsf(zsel[q]) < 1e-4f;
                printf("  round %d set %d: error cells %+lld, drawn index %+lld against the "
                       "reference (same cell; %lld valid cells with |logit| < 1e-4)\n",
                       j, i, dc, di, nz);
                CHECK(llabs(dc) <= nz && llabs(di) <= nz, "round %d set %d: region differs", j,
                      i);
            }
        }
        float *tmp = mask_in;
        mask_in = mask_next;
        mask_next = tmp;
    }
    CHECK(r.draws == (uint64_t)jnum(run, "draws"), "draws %llu vs %g",
          (unsigned long long)r.draws, jnum(run, "draws"));
    int n_real[NSET];
    for (int i = 0; i < N; i++) {
        int eq = same_prompts(ts_json_at(ts_json_get(run, "final_prompts"), i), &sets[i]);
        CHECK(eq, "set %d: final prompts differ", i);
        prompts_equal &= eq;
        n_real[i] = ts_sample_n_real(&sets[i]);
        CHECK(ts_sample_tokens(&sets[i]) == t + 2, "set %d tokens", i);
        ts_sample_to_prompt(&sets[i], t ? mask_in + (size_t)i * C_ : NULL, coords[i], &ps[i]);
    }
    printf("  sampled prompts equal: %s (%d near-zero skips), largest drawn-cell logit "
           "difference %.2g\n", prompts_equal ? "yes" : "no", skipped, worst_logit);
    /* training round: both networks on the final prompts and the student's fed-back logits */
    REQUIRE(decode_both(N, ps, &o) == 0, "decode: %s", tinysam_last_error());
    losses_vs_expected(ex, &o, chosen, n_real, N);
    outputs_free(&o);
    free(mask_in);
    free(mask_next);
    ts_json_free(run);
    ts_json_free(ex);
}

int main(void) {
    RUN(test_case_a);
    RUN(test_case_b);
    free_setup();
    return test_summary();
}
