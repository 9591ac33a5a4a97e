/* test_trainer.c - the distillation step as a whole (src/train/trainer.c, dataset.c):
 *  (a) the ground-truth grids of spec/DISTILL.md 4.3 (packing, the 4x4 rule, the valid map)
 *      against the fixture's, and the nearest sampling on a hand case;
 *  (b) one step on case A's prompts (6.2): the losses against case_a/expected.json and every
 *      student tensor after one Adam step (lr 1e-4) against case_a/adam_after_val.npy;
 *  (c) a checkpoint taken after step 1 and resumed in a fresh trainer gives, at step 2, the
 *      same losses and bit-identical parameters as the uninterrupted run (sampling on). */
#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensor_map.h"
#include "model/transforms.h"
#include "test.h"
#include "train/dataset.h"
#include "train/trainer.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "distill_case.h"

/* ---- (a) grids ----------------------------------------------------------------------------- */

static void test_grids(void) {
    if (!fixture_exists("distill/gt/picture1_g1024_bits.npy")) SKIP("fixtures distill/ missing");
    ts_train_example ex;
    REQUIRE(dc_example_load("picture1", &ex), "fixture example");
    uint8_t *full = malloc((size_t)TS_FRAME * TS_FRAME), *bits = malloc(TS_FRAME_BITS);
    uint8_t *glow = malloc(TS_LOWRES_CELLS), valid[TS_LOWRES_CELLS];
    REQUIRE(full && bits && glow, "out of memory");
    /* the fixture's 1024-frame masks through the grids at the identity size: same bits, and
     * the 4x4 rule gives the fixture's low-res masks */
    for (int k = 0; k < DC_NSET; k++) {
        const uint8_t *fb = ex.g1024_bits + (size_t)k * TS_FRAME_BITS;
        ts_gt_unpack(fb, full);
        long long area = ts_gt_to_grids(full, TS_FRAME, TS_FRAME, TS_FRAME, TS_FRAME, bits, glow);
        CHECK(area == ex.area1024[k], "mask %d: area %lld vs fixture %lld", k, area,
              ex.area1024[k]);
        CHECK(!memcmp(bits, fb, TS_FRAME_BITS), "mask %d: packed bits differ", k);
        CHECK(!memcmp(glow, ex.glow + (size_t)k * TS_LOWRES_CELLS, TS_LOWRES_CELLS),
              "mask %d: low-res mask differs from the fixture's", k);
    }
    ts_gt_valid(ex.newh, ex.neww, valid);
    CHECK(!memcmp(valid, ex.valid, TS_LOWRES_CELLS), "valid map differs from the fixture's");
    /* nearest sampling by hand: a 3 x 2 mask (W x H) with its middle column set, resized to
     * neww 6, newh 4: source column floor((x + 0.5) * 3 / 6) = 0,0,1,1,2,2 */
    const uint8_t m[6] = {0, 1, 0, 0, 1, 0};
    uint8_t *g8 = malloc((size_t)TS_FRAME * TS_FRAME);
    REQUIRE(g8, "out of memory");
    long long area = ts_gt_to_grids(m, 3, 2, 4, 6, bits, glow);
    ts_gt_unpack(bits, g8);
    CHECK(area == 8, "hand case area %lld (8 expected)", area);
    for (int y = 0; y < 8; y++)
        for (int x = 0; x < 8; x++) {
            int want = y < 4 && (x == 2 || x == 3);
            CHECK(g8[y * TS_FRAME + x] == want, "hand case pixel (%d, %d)", x, y);
        }
    /* a 4x4 block with 8 of 16 pixels is set, with 7 not */
    memset(full, 0, (size_t)TS_FRAME * TS_FRAME);
    for (int i = 0; i < 8; i++) full[(i / 4) * TS_FRAME + (i % 4)] = 1;        /* cell (0,0) */
    for (int i = 0; i < 7; i++) full[(i / 4) * TS_FRAME + 4 + (i % 4)] = 1;    /* cell (0,1) */
    ts_gt_to_grids(full, TS_FRAME, TS_FRAME, TS_FRAME, TS_FRAME, bits, glow);
    CHECK(glow[0] == 1 && glow[1] == 0, "4x4 rule: %d %d (1 0 expected)", glow[0], glow[1]);
    free(g8), free(full), free(bits), free(glow);
    ts_example_free(&ex);
}

/* ---- (b) case A through the trainer -------------------------------------------------------- */

static float ulpf(float x) { return nextafterf(fabsf(x), INFINITY) - fabsf(x); }

static int is_key_bias(const char *name) { /* analytically zero gradients (see test_decoder_grad) */
    return strstr(name, "k_proj.bias") != NULL;
}

static void test_case_a_step(void) {
    if (!dc_fixtures_present() || !fixture_exists("distill/case_a/adam_after_val.npy"))
        SKIP("fixtures distill/ or the teacher model missing");
    ts_train_example ex;
    REQUIRE(dc_example_load("picture1", &ex), "fixture example");
    dc_case_a A;
    REQUIRE(dc_case_a_load(&A), "case_a prompts");
    ts_tensor_map *sm = NULL, *tm = NULL;
    ts_json *ex_j = NULL, *gj = NULL;
    ts_npy gi = {0}, gv = {0}, ga = {0};
    REQUIRE(ts_map_load(fixture(DC_STUDENT), &sm) == 0 && ts_map_load(fixture(DC_TEACHER), &tm) == 0,
            "maps: %s", tinysam_last_error());
    REQUIRE(ts_json_load(fixture("distill/case_a/expected.json"), &ex_j) == 0 &&
                ts_json_load(fixture("distill/case_a/grads.json"), &gj) == 0 &&
                ts_npy_load(fixture("distill/case_a/grad_idx.npy"), &gi) == 0 &&
                ts_npy_load(fixture("distill/case_a/grad_val.npy"), &gv) == 0 &&
                ts_npy_load(fixture("distill/case_a/adam_after_val.npy"), &ga) == 0,
            "case_a files");
    ts_train_config c;
    ts_train_config_default(&c);
    const ts_json *ad = ts_json_get(gj, "adam");
    c.lr = ts_json_num(ad, "lr", NAN);
    c.beta1 = ts_json_at(ts_json_get(ad, "betas"), 0)->number;
    c.beta2 = ts_json_at(ts_json_get(ad, "betas"), 1)->number;
    c.eps = ts_json_num(ad, "eps", NAN);
    c.warmup = 0, c.lr_drops = 0, c.max_sets = DC_NSET;
    ts_trainer *tr = NULL;
    REQUIRE(ts_trainer_create(&c, sm, tm, 0, &tr) == 0, "create: %s", tinysam_last_error());
    printf("  trainer memory %.0f MB\n", ts_trainer_memory(tr) / 1048576.0);
    /* the values before the step, to know which samples moved */
    const float *mi[DC_NSET];
    for (int i = 0; i < DC_NSET; i++) mi[i] = A.ps[i].mask_input;
    ts_step_report rep;
    double t0 = ts_now_ms();
    REQUIRE(ts_trainer_step_given(tr, &ex, DC_NSET, A.ss, mi, A.gt, &rep) == 0, "step: %s",
            tinysam_last_error());
    printf("  step %.0f ms (encoder fwd %.0f, decoders %.0f, losses %.0f, decoder bwd %.0f, "
           "encoder bwd %.0f, Adam %.0f)\n", ts_now_ms() - t0, rep.ms[0], rep.ms[2], rep.ms[3],
           rep.ms[4], rep.ms[5], rep.ms[6]);
    const char *terms[] = {"L_emb", "L_tok", "L_out_weighted", "L_out_mean", "L_mask", "L_iou",
                           "L_total"};
    const double got[] = {rep.loss.L_emb, rep.loss.L_tok, rep.loss.L_out_weighted,
                          rep.loss.L_out_mean, rep.loss.L_mask, rep.loss.L_iou, rep.loss.L_total};
    for (int k = 0; k < 7; k++) {
        double ref = ts_json_num(ex_j, terms[k], NAN), d = fabs(got[k] - ref);
        printf("  %-15s %.7f (reference %.7f)\n", terms[k], got[k], ref);
        CHECK(d <= (fabs(ref) < 1e-2 ? 1e-6 : 1e-4 * fabs(ref)), "%s: %.9g vs %.9g", terms[k],
              got[k], ref);
    }
    CHECK(rep.step == 1 && ts_trainer_steps_done(tr) == 1, "step count");
    /* Adam (5.4) where |g_ref| > 1e-3 max |g_ref| (Adam's first step is ~ lr * sign(g)) */
    const ts_json *ts = ts_json_get(gj, "tensors");
    const int32_t *idx = gi.data;
    const float *gval = gv.data, *after = ga.data;
    int n_t = 0, n_cmp = 0, n_bad = 0;
    double worst = 0;
    const char *worst_name = "-";
    for (int j = 0; ts && j < ts->n; j++) {
        const ts_json *e = ts_json_at(ts, j);
        const char *name = ts_json_get(e, "name")->string;
        size_t numel = 0;
        const float *p = ts_trainer_param(tr, name, &numel);
        CHECK(p != NULL, "%s: not a student tensor of the trainer", name);
        if (!p) continue;
        n_t++;
        if (is_key_bias(name)) continue;
        const int off = (int)ts_json_num(e, "offset", -1), cnt = (int)ts_json_num(e, "count", -1);
        const double gmax = ts_json_num(e, "grad_max_abs", NAN);
        for (int k = 0; k < cnt; k++) {
            if (!(fabs(gval[off + k]) > 1e-3 * gmax) || (size_t)idx[off + k] >= numel) continue;
            const float ours = p[idx[off + k]], ref = after[off + k];
            const double tol = 1e-3 * c.lr + 2 * ulpf(ref), r = fabs((double)ours - ref) / tol;
            if (r > worst) worst = r, worst_name = name;
            n_cmp++;
            if (r > 1 && n_bad++ < 5)
                printf("  %s[%d]: %.9g vs reference %.9g\n", name, idx[off + k], ours, ref);
        }
    }
    printf("  %d tensors, %d values compared after Adam, worst |p - p_ref| / (1e-3 lr + 2 ulp) "
           "%.3g (%s)\n", n_t, n_cmp, worst, worst_name);
    CHECK(n_t == 353, "%d student tensors in grads.json (353 expected)", n_t);
    CHECK(n_bad == 0, "%d parameters differ from the reference after Adam", n_bad);
    ts_trainer_free(tr);
    ts_map_free(sm), ts_map_free(tm);
    ts_json_free(ex_j), ts_json_free(gj);
    ts_npy_free(&gi), ts_npy_free(&gv), ts_npy_free(&ga);
    dc_case_a_free(&A);
    ts_example_free(&ex);
}

/* ---- (c) checkpoint and resume ------------------------------------------------------------- */

static int file_equal(const char *a, const char *b) {
    FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
    int eq = fa && fb;
    while (eq) {
        int ca = fgetc(fa), cb = fgetc(fb);
        if (ca != cb) eq = 0;
        if (ca == EOF || cb == EOF) break;
    }
    if (fa) fclose(fa);
    if (fb) fclose(fb);
    return eq;
}

static void test_resume(void) {
    if (!dc_fixtures_present() || !fixture_exists("distill/gt/shapes_g1024_bits.npy"))
        SKIP("fixtures distill/ or the teacher model missing");
    ts_train_example ex[2];
    REQUIRE(dc_example_load("picture1", &ex[0]) && dc_example_load("shapes", &ex[1]), "examples");
    ts_tensor_map *sm = NULL, *tm = NULL;
    REQUIRE(ts_map_load(fixture(DC_STUDENT), &sm) == 0 && ts_map_load(fixture(DC_TEACHER), &tm) == 0,
            "maps: %s", tinysam_last_error());
    ts_train_config c;
    ts_train_config_default(&c);
    c.max_sets = 3, c.seed = 5, c.warmup = 2, c.total_steps = 3, c.lr = 1e-4;
    char dir[] = "/tmp/tinysam_resume_XXXXXX";
    REQUIRE(mkdtemp(dir), "mkdtemp");
    char whole[128], ckpt[128], resumed[128];
    snprintf(whole, sizeof whole, "%s/whole.safetensors", dir);
    snprintf(ckpt, sizeof ckpt, "%s/ckpt.safetensors", dir);
    snprintf(resumed, sizeof resumed, "%s/resumed.safetensors", dir);
    /* the uninterrupted run: 2 steps */
    ts_trainer *a = NULL, *b = NULL;
    ts_step_report ra[2], rb;
    REQUIRE(ts_trainer_create(&c, sm, tm, 1, &a) == 0, "create: %s", tinysam_last_error());
    for (int s = 0; s < 2; s++) {
        int k = ts_trainer_next_image(a, 2);
        REQUIRE(ts_trainer_step(a, &ex[k], &ra[s]) == 0, "step: %s", tinysam_last_error());
        printf("  step %ld on %s: N %d, t %d, lr %.3g, L_total %.6f\n", ra[s].step, ex[k].name,
               ra[s].N, ra[s].t, ra[s].lr, ra[s].loss.L_total);
        if (s == 0) REQUIRE(ts_trainer_save_checkpoint(a, ckpt) == 0, "checkpoint: %s",
                            tinysam_last_error());
    }
    REQUIRE(ts_trainer_save_model(a, whole) == 0, "save: %s", tinysam_last_error());
    CHECK(fabs(ra[0].lr - 0.5e-4) < 1e-12 && fabs(ra[1].lr - 1e-5) < 1e-12,
          "schedule: lr %g, %g (warm-up 1/2, then x0.1 at 2/3 of 3 steps)", ra[0].lr, ra[1].lr);
    ts_trainer_free(a);
    /* resumed from the checkpoint of step 1 in a fresh trainer */
    REQUIRE(ts_trainer_create(&c, sm, tm, 1, &b) == 0, "create: %s", tinysam_last_error());
    REQUIRE(ts_trainer_load_checkpoint(b, ckpt) == 0, "resume: %s", tinysam_last_error());
    CHECK(ts_trainer_steps_done(b) == 1, "resumed at step %ld", ts_trainer_steps_done(b));
    int k = ts_trainer_next_image(b, 2);
    REQUIRE(ts_trainer_step(b, &ex[k], &rb) == 0, "step: %s", tinysam_last_error());
    REQUIRE(ts_trainer_save_model(b, resumed) == 0, "save: %s", tinysam_last_error());
    printf("  resumed step %ld on %s: N %d, t %d, L_total %.6f\n", rb.step, ex[k].name, rb.N,
           rb.t, rb.loss.L_total);
    CHECK(rb.N == ra[1].N && rb.t == ra[1].t && rb.loss.L_total == ra[1].loss.L_total &&
              rb.loss.L_emb == ra[1].loss.L_emb,
          "step 2 differs after resuming");
    CHECK(file_equal(whole, resumed), "the resumed model differs from the uninterrupted one");
    /* a checkpoint of other settings is refused */
    ts_trainer_free(b);
    c.lr = 2e-4;
    REQUIRE(ts_trainer_create(&c, sm, tm, 1, &b) == 0, "create");
    CHECK(ts_trainer_load_checkpoint(b, ckpt) == TINYSAM_E_ARG, "other settings accepted");
    printf("  other settings: %s\n", tinysam_last_error());
    CHECK(ts_trainer_load_checkpoint(b, whole) == TINYSAM_E_FORMAT, "a model taken for a "
          "checkpoint");
    ts_trainer_free(b);
    /* the trained model loads as a model */
    tinysam_model *m = NULL;
    CHECK(tinysam_model_load(whole, &m) == 0, "trained model does not load: %s",
          tinysam_last_error());
    tinysam_model_free(m);
    unlink(whole), unlink(ckpt), unlink(resumed), rmdir(dir);
    ts_map_free(sm), ts_map_free(tm);
    ts_example_free(&ex[0]), ts_example_free(&ex[1]);
}

int main(void) {
    RUN(test_grids);
    RUN(test_case_a_step);
    RUN(test_resume);
    return test_summary();
}
