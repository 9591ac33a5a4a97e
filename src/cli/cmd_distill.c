/* cmd_distill.c - `tinysam distill`: TinySAM's full-stage distillation (spec/DISTILL.md) of a
 * vit_t student from a SAM-family teacher's stored embeddings, prompt encoder and decoder. */
#include "cli/args.h"
#include "cli/commands.h"
#include "core.h"
#include "everything/amg.h"
#include "io/tensor_map.h"
#include "tinysam.h"
#include "train/dataset.h"
#include "train/trainer.h"

#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *distill_usage =
    "usage: tinysam distill --teacher T (--student S | --init random) --images DIR\n"
    "                       --embeddings E --masks DIR [--pseudo-masks] (--steps N | --epochs N)\n"
    "                       --out student.safetensors [options]\n"
    "\n"
    "Distils the student (a vit_t checkpoint: TinySAM, MobileSAM) from the teacher (any SAM-family\n"
    "checkpoint; only its prompt encoder and mask decoder run) as in the TinySAM paper: ℓ1 terms on\n"
    "the image embedding, the decoder tokens and the mask logits with hard mask weighting, SAM's\n"
    "focal + dice and IoU losses, online hard prompt sampling (t = 0..9 rounds). One step = one\n"
    "image with up to --prompts of its masks. For every image DIR/NAME.jpg|png it reads the\n"
    "teacher embedding E/NAME.npy (`tinysam embed --model T --images DIR --out-dir E`) and the\n"
    "ground truth MASKS/NAME.json (SA-1B: annotations[].segmentation in COCO RLE, or the records\n"
    "of `tinysam everything`). With --pseudo-masks, images without MASKS/NAME.json first get the\n"
    "teacher's segment-everything masks written there (the paper's recipe without SA-1B labels).\n"
    "\n"
    "  --lr X               peak learning rate (2e-5)\n"
    "  --warmup N           linear warm-up steps (250); --no-lr-drops: no x0.1 at 2/3 and 96%\n"
    "  --prompts N          prompt sets per step, 1..64 (64)\n"
    "  --rounds K           fixed sampling rounds instead of t drawn from 0..9\n"
    "  --seed N             the run's random stream (0)\n"
    "  --alpha/--beta/--gamma W   embedding / token / output distillation weights (1; 0 = off)\n"
    "  --mask-weight W, --iou-weight W   ground-truth terms (1; 0 = off)\n"
    "  --no-hard-weights    output term without hard mask weighting\n"
    "  --train all|encoder|decoder   which student parts are updated (all)\n"
    "  --decoder-from teacher|student   initial prompt encoder + decoder (teacher; spec 1.3)\n"
    "  --init random        random image encoder (architecture from --student, else the teacher)\n"
    "  --checkpoint-every K write OUT.ckpt.safetensors every K steps (and on Ctrl-C)\n"
    "  --resume CKPT        continue a run bit for bit (same options)\n"
    "  --log FILE           one JSON object per step (OUT.log.jsonl)\n"
    "  --threads N, --max-pixels P\n";

/* Ctrl-C: finish the current step, write a checkpoint, stop; a second Ctrl-C aborts. */
static volatile sig_atomic_t g_stop;
static void on_sigint(int sig) {
    if (g_stop) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    g_stop = 1;
    static const char msg[] = "\ndistill: stopping after this step to write a checkpoint "
                              "(Ctrl-C again to abort without one)\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
}

static int file_exists(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

typedef struct {
    char **img, **emb, **gt; /* paths of the usable images */
    int n;
} file_list;

static void files_free(file_list *f) {
    for (int i = 0; i < f->n; i++) free(f->img[i]), free(f->emb[i]), free(f->gt[i]);
    free(f->img), free(f->emb), free(f->gt);
}

static char *path_join(const char *dir, const char *name, const char *ext) {
    size_t n = strlen(dir) + strlen(name) + strlen(ext) + 2;
    char *p = malloc(n);
    if (p) snprintf(p, n, "%s/%s%s", dir, name, ext);
    return p;
}

/* Images that have both an embedding and a ground-truth file; the others are counted. */
static int list_files(const char *images, const char *embs, const char *masks, file_list *f) {
    char **names = NULL;
    int n = 0, rc = ts_dataset_list_images(images, &names, &n);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tinysam_last_error());
        return ts_error(TINYSAM_E_IO, "--images: %s", msg);
    }
    memset(f, 0, sizeof *f);
    if ((rc = ts_dataset_check_stems(names, n, "distill"))) {
        ts_dataset_free_list(names, n);
        return rc;
    }
    f->img = calloc((size_t)n + 1, sizeof(char *));
    f->emb = calloc((size_t)n + 1, sizeof(char *));
    f->gt = calloc((size_t)n + 1, sizeof(char *));
    int no_emb = 0, no_gt = 0;
    if (!f->img || !f->emb || !f->gt) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
    for (int i = 0; !rc && i < n; i++) {
        char stem[256];
        ts_dataset_stem(names[i], stem, sizeof stem);
        char *ip = path_join(images, names[i], ""), *ep = path_join(embs, stem, ".npy");
        char *gp = path_join(masks, stem, ".json");
        if (!ip || !ep || !gp) {
            free(ip), free(ep), free(gp);
            rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
            break;
        }
        int he = file_exists(ep), hg = file_exists(gp);
        if (he && hg) {
            f->img[f->n] = ip, f->emb[f->n] = ep, f->gt[f->n] = gp;
            f->n++;
            continue;
        }
        no_emb += !he;
        no_gt += he && !hg;
        free(ip), free(ep), free(gp);
    }
    ts_dataset_free_list(names, n);
    if (rc) return rc;
    if (no_emb || no_gt)
        fprintf(stderr, "distill: %d of %d images left out (%d without an embedding in %s, %d "
                        "without ground truth in %s)\n", no_emb + no_gt, n, no_emb, embs, no_gt,
                masks);
    if (!f->n)
        return ts_error(TINYSAM_E_ARG, "distill: no image in '%s' has both %s/NAME.npy and "
                                       "%s/NAME.json", images, embs, masks);
    return 0;
}

static void fmt_eta(double s, char *out, size_t cap) {
    if (!(s >= 0) || s > 1e8) snprintf(out, cap, "?");
    else if (s >= 3600) snprintf(out, cap, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else if (s >= 60) snprintf(out, cap, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
    else snprintf(out, cap, "%.0fs", s);
}

static void log_step(FILE *f, const ts_step_report *r, const char *image, double ms) {
    const ts_loss_result *L = &r->loss;
    fprintf(f, "{\"step\": %ld, \"image\": ", r->step);
    ts_json_write_string(f, image);
    fprintf(f, ", \"sets\": %d, \"t\": %d, \"lr\": %.6g, \"L_total\": %.7g, \"L_emb\": %.7g, "
               "\"L_tok\": %.7g, \"L_out_weighted\": %.7g, \"L_out_mean\": %.7g, \"L_mask\": "
               "%.7g, \"L_iou\": %.7g, \"ms\": %.0f, \"ms_phases\": {\"encoder_fwd\": %.0f, "
               "\"sampling\": %.0f, \"decoders_fwd\": %.0f, \"losses\": %.0f, \"decoder_bwd\": "
               "%.0f, \"encoder_bwd\": %.0f, \"adam\": %.0f}}\n",
            r->N, r->t, r->lr, L->L_total, L->L_emb, L->L_tok, L->L_out_weighted, L->L_out_mean,
            L->L_mask, L->L_iou, ms, r->ms[0], r->ms[1], r->ms[2], r->ms[3], r->ms[4], r->ms[5],
            r->ms[6]);
    fflush(f);
}

/* The teacher's everything-mode masks for every image without MASKS/NAME.json, written there
 * as SA-1B-style JSON (image size + annotations = the generator's records). */
static int make_pseudo_masks(const char *teacher, const char *images, const char *masks,
                             long long max_pixels) {
    char **names = NULL;
    int n = 0, todo = 0, rc = ts_dataset_list_images(images, &names, &n);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tinysam_last_error());
        return ts_error(TINYSAM_E_IO, "--images: %s", msg);
    }
    if ((rc = ts_mkdirs(masks))) goto done;
    for (int i = 0; i < n; i++) {
        char stem[256], *gp;
        ts_dataset_stem(names[i], stem, sizeof stem);
        if (!(gp = path_join(masks, stem, ".json"))) {
            rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
            goto done;
        }
        todo += !file_exists(gp);
        free(gp);
    }
    if (!todo) goto done;
    tinysam_model *m = NULL;
    if ((rc = tinysam_model_load(teacher, &m))) goto done;
    tinysam_everything_options eo;
    tinysam_everything_defaults(&eo);
    fprintf(stderr, "distill: pseudo masks from the teacher's everything mode for %d images\n",
            todo);
    int k = 0;
    double t0 = ts_now_ms();
    for (int i = 0; !rc && i < n; i++) {
        char stem[256];
        ts_dataset_stem(names[i], stem, sizeof stem);
        char *gp = path_join(masks, stem, ".json"), *ip = path_join(images, names[i], "");
        char *tmp = path_join(masks, stem, ".json.tmp");
        tinysam_image img = {0};
        tinysam_everything_result r = {0};
        FILE *f = NULL;
        if (!gp || !ip || !tmp) rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
        if (!rc && !file_exists(gp)) {
            k++;
            rc = tinysam_image_load(ip, max_pixels, &img);
            if (!rc) rc = tinysam_everything(m, &img, NULL, &eo, &r);
            if (!rc && !(f = fopen(tmp, "w")))
                rc = ts_error(TINYSAM_E_IO, "cannot write '%s'", tmp);
            if (!rc) {
                fprintf(f, "{\"image\": {\"file_name\": ");
                ts_json_write_string(f, names[i]);
                fprintf(f, ", \"width\": %d, \"height\": %d},\n\"annotations\": ", img.width,
                        img.height);
                rc = ts_everything_write_json(f, &r);
                fprintf(f, "}\n");
                if (fclose(f) || rc) rc = rc ? rc : ts_error(TINYSAM_E_IO, "cannot write '%s'", tmp);
                f = NULL;
                if (!rc && rename(tmp, gp)) rc = ts_error(TINYSAM_E_IO, "cannot write '%s'", gp);
                if (rc) remove(tmp);
            }
            if (!rc) {
                const double per = (ts_now_ms() - t0) / k / 1000.0;
                char eta[32];
                fmt_eta(per * (todo - k), eta, sizeof eta);
                fprintf(stderr, "pseudo masks [%d/%d] %s: %d masks, eta %s\n", k, todo, names[i],
                        r.n, eta);
            }
        }
        if (f) fclose(f);
        tinysam_everything_free(&r);
        tinysam_image_free(&img);
        free(gp), free(ip), free(tmp);
    }
    tinysam_model_free(m);
done:
    ts_dataset_free_list(names, n);
    return rc;
}

typedef struct {
    const char *teacher, *student, *images, *embs, *masks, *out, *resume, *log;
    long steps, epochs;
    int every, threads, init_random, dec_from_teacher, pseudo;
    long long max_pixels;
    ts_train_config c;
} options;

static int parse(int argc, char **argv, options *o, int *help) {
    const char *v;
    ts_train_config_default(&o->c);
    o->dec_from_teacher = 1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        double d;
        int k;
#define VAL() ts_arg_value(argc, argv, &i, &v)
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            *help = 1;
            return 0;
        } else if (!strcmp(a, "--teacher")) {
            if (VAL()) return -1;
            o->teacher = v;
        } else if (!strcmp(a, "--student")) {
            if (VAL()) return -1;
            o->student = v;
        } else if (!strcmp(a, "--init")) {
            if (VAL()) return -1;
            if (strcmp(v, "random"))
                return ts_error(TINYSAM_E_ARG, "--init: only 'random' (or give --student S)");
            o->init_random = 1;
        } else if (!strcmp(a, "--images")) {
            if (VAL()) return -1;
            o->images = v;
        } else if (!strcmp(a, "--embeddings")) {
            if (VAL()) return -1;
            o->embs = v;
        } else if (!strcmp(a, "--masks")) {
            if (VAL()) return -1;
            o->masks = v;
        } else if (!strcmp(a, "--pseudo-masks")) {
            o->pseudo = 1;
        } else if (!strcmp(a, "--out")) {
            if (VAL()) return -1;
            o->out = v;
        } else if (!strcmp(a, "--resume")) {
            if (VAL()) return -1;
            o->resume = v;
        } else if (!strcmp(a, "--log")) {
            if (VAL()) return -1;
            o->log = v;
        } else if (!strcmp(a, "--steps")) {
            if (VAL() || ts_arg_int("--steps", v, 1, 2000000000, &k)) return -1;
            o->steps = k;
        } else if (!strcmp(a, "--epochs")) {
            if (VAL() || ts_arg_int("--epochs", v, 1, 1000000, &k)) return -1;
            o->epochs = k;
        } else if (!strcmp(a, "--checkpoint-every")) {
            if (VAL() || ts_arg_int("--checkpoint-every", v, 1, 2000000000, &o->every)) return -1;
        } else if (!strcmp(a, "--threads")) {
            if (VAL() || ts_arg_int("--threads", v, 1, 1024, &o->threads)) return -1;
        } else if (!strcmp(a, "--max-pixels")) {
            if (VAL() || ts_arg_ll("--max-pixels", v, 1, 1LL << 40, &o->max_pixels)) return -1;
        } else if (!strcmp(a, "--lr")) {
            if (VAL() || ts_arg_double_range("--lr", v, 0, 1, &o->c.lr)) return -1;
        } else if (!strcmp(a, "--warmup")) {
            if (VAL() || ts_arg_int("--warmup", v, 0, 100000000, &o->c.warmup)) return -1;
        } else if (!strcmp(a, "--no-lr-drops")) {
            o->c.lr_drops = 0;
        } else if (!strcmp(a, "--prompts")) {
            if (VAL() || ts_arg_int("--prompts", v, 1, 64, &o->c.max_sets)) return -1;
        } else if (!strcmp(a, "--rounds")) {
            if (VAL() || ts_arg_int("--rounds", v, 0, 9, &o->c.fixed_t)) return -1;
        } else if (!strcmp(a, "--seed")) {
            long long s;
            if (VAL() || ts_arg_ll("--seed", v, 0, (1LL << 62), &s)) return -1;
            o->c.seed = (uint64_t)s;
        } else if (!strcmp(a, "--alpha") || !strcmp(a, "--beta") || !strcmp(a, "--gamma") ||
                   !strcmp(a, "--mask-weight") || !strcmp(a, "--iou-weight")) {
            if (VAL() || ts_arg_double_range(a, v, 0, 1e6, &d)) return -1;
            float *w = !strcmp(a, "--alpha")   ? &o->c.loss.alpha
                       : !strcmp(a, "--beta")  ? &o->c.loss.beta
                       : !strcmp(a, "--gamma") ? &o->c.loss.gamma
                       : !strcmp(a, "--mask-weight") ? &o->c.loss.w_mask
                                                     : &o->c.loss.w_iou;
            *w = (float)d;
        } else if (!strcmp(a, "--no-hard-weights")) {
            o->c.loss.hard_weights = 0;
        } else if (!strcmp(a, "--train")) {
            if (VAL()) return -1;
            o->c.train_encoder = !strcmp(v, "all") || !strcmp(v, "encoder");
            o->c.train_decoder = !strcmp(v, "all") || !strcmp(v, "decoder");
            if (!o->c.train_encoder && !o->c.train_decoder)
                return ts_error(TINYSAM_E_ARG, "--train: all, encoder or decoder, not '%s'", v);
        } else if (!strcmp(a, "--decoder-from")) {
            if (VAL()) return -1;
            if (strcmp(v, "teacher") && strcmp(v, "student"))
                return ts_error(TINYSAM_E_ARG, "--decoder-from: teacher or student, not '%s'", v);
            o->dec_from_teacher = !strcmp(v, "teacher");
        } else {
            return ts_error(TINYSAM_E_ARG, "distill: unknown option '%s' (see --help)", a);
        }
#undef VAL
    }
    if (!o->teacher || !o->images || !o->embs || !o->masks || !o->out)
        return ts_error(TINYSAM_E_ARG, "distill: --teacher, --images, --embeddings, --masks and "
                                       "--out are required (see --help)");
    if (!o->student && !o->init_random)
        return ts_error(TINYSAM_E_ARG, "distill: give --student S or --init random");
    if (!!o->steps == !!o->epochs)
        return ts_error(TINYSAM_E_ARG, "distill: give one of --steps N and --epochs N");
    return 0;
}

int ts_cli_distill(int argc, char **argv) {
    options o;
    memset(&o, 0, sizeof o);
    int help = 0;
    if (parse(argc, argv, &o, &help)) return ts_cli_fail();
    if (help) {
        fputs(distill_usage, stdout);
        return 0;
    }
    if (o.threads) tinysam_set_num_threads(o.threads);
    file_list files = {0};
    ts_tensor_map *tm = NULL, *sm = NULL;
    ts_trainer *tr = NULL;
    ts_train_example ex = {0};
    FILE *logf = NULL;
    char *ckpt = NULL, *logp = NULL;
    int rc = o.pseudo ? make_pseudo_masks(o.teacher, o.images, o.masks, o.max_pixels) : 0;
    if (!rc) rc = list_files(o.images, o.embs, o.masks, &files);
    if (rc) goto done;
    const long total = o.steps ? o.steps : o.epochs * files.n;
    o.c.total_steps = total;
    if ((rc = ts_map_load(o.teacher, &tm))) goto done;
    if (o.student && (rc = ts_map_load(o.student, &sm))) goto done;
    if ((rc = ts_trainer_create(&o.c, sm ? sm : tm, tm, o.dec_from_teacher, &tr))) {
        if (!sm && o.init_random) {
            char msg[400];
            snprintf(msg, sizeof msg, "%s", tinysam_last_error());
            rc = ts_error(rc, "--init random takes the student's architecture from the teacher, "
                              "which is not a vit_t model (%s): add --student S", msg);
        }
        goto done;
    }
    ts_map_free(tm), ts_map_free(sm);
    tm = sm = NULL;
    if (o.init_random && !o.resume) ts_trainer_init_encoder_random(tr);
    ckpt = malloc(strlen(o.out) + 32);
    logp = o.log ? NULL : malloc(strlen(o.out) + 32);
    if (!ckpt || (!o.log && !logp)) {
        rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
        goto done;
    }
    sprintf(ckpt, "%s.ckpt.safetensors", o.out);
    if (logp) sprintf(logp, "%s.log.jsonl", o.out);
    if (o.resume && (rc = ts_trainer_load_checkpoint(tr, o.resume))) goto done;
    long done_steps = ts_trainer_steps_done(tr);
    if (done_steps >= total) {
        rc = ts_error(TINYSAM_E_ARG, "distill: the checkpoint is at step %ld of %ld: nothing "
                                     "left to do", done_steps, total);
        goto done;
    }
    logf = fopen(o.log ? o.log : logp, o.resume ? "a" : "w");
    if (!logf) {
        rc = ts_error(TINYSAM_E_IO, "cannot write the log '%s'", o.log ? o.log : logp);
        goto done;
    }
    fprintf(stderr, "distill: %d images, %ld steps (from %ld), up to %d prompt sets per step, "
                    "lr %.3g, trainer memory %.0f MB\n", files.n, total, done_steps,
            o.c.max_sets, o.c.lr, ts_trainer_memory(tr) / 1048576.0);
    signal(SIGINT, on_sigint);
    double t_start = ts_now_ms();
    long first = done_steps;
    int skipped_in_a_row = 0;
    while (!rc && ts_trainer_steps_done(tr) < total) {
        if (g_stop) {
            fprintf(stderr, "\ndistill: interrupted after step %ld; ",
                    ts_trainer_steps_done(tr));
            if (!(rc = ts_trainer_save_checkpoint(tr, ckpt)))
                fprintf(stderr, "checkpoint %s (continue with --resume %s)\n", ckpt, ckpt);
            if (!rc) rc = ts_error(TINYSAM_E_ARG, "distill: interrupted");
            break;
        }
        int k = ts_trainer_next_image(tr, files.n);
        if (k < 0) {
            rc = k;
            break;
        }
        double t0 = ts_now_ms();
        if ((rc = ts_example_load(files.img[k], files.emb[k], files.gt[k], o.max_pixels, &ex)))
            break;
        ts_step_report r;
        rc = ts_trainer_step(tr, &ex, &r);
        if (!rc && r.N == 0) {
            fprintf(stderr, "distill: %s has no usable mask (non-empty, <= 90%% of the image): "
                            "skipped\n", ex.name);
            if (++skipped_in_a_row >= files.n)
                rc = ts_error(TINYSAM_E_ARG, "distill: no image has a usable mask");
        } else if (!rc) {
            skipped_in_a_row = 0;
            const double ms = ts_now_ms() - t0;
            const long s = r.step;
            const double per = (ts_now_ms() - t_start) / (double)(s - first) / 1000.0;
            char eta[32];
            fmt_eta(per * (double)(total - s), eta, sizeof eta);
            fprintf(stderr, "step %ld/%ld %s: sets %d t %d | L %.4f emb %.4f tok %.4f out %.4f "
                            "mask %.4f iou %.4f | lr %.2e | %.1f s, eta %s\n",
                    s, total, ex.name, r.N, r.t, r.loss.L_total, r.loss.L_emb, r.loss.L_tok,
                    r.loss.L_out_weighted, r.loss.L_mask, r.loss.L_iou, r.lr, ms / 1000.0, eta);
            log_step(logf, &r, ex.name, ms);
            if (o.every && s % o.every == 0 && s < total)
                rc = ts_trainer_save_checkpoint(tr, ckpt);
        }
        ts_example_free(&ex);
    }
    signal(SIGINT, SIG_DFL);
    if (!rc) rc = ts_trainer_save_model(tr, o.out);
    if (!rc) {
        if (o.every) rc = ts_trainer_save_checkpoint(tr, ckpt);
        fprintf(stderr, "distill: %ld steps in %.1f s; wrote %s\n",
                ts_trainer_steps_done(tr) - first, (ts_now_ms() - t_start) / 1000.0, o.out);
    }
done:
    if (logf) fclose(logf);
    ts_example_free(&ex);
    ts_trainer_free(tr);
    ts_map_free(tm), ts_map_free(sm);
    files_free(&files);
    free(ckpt), free(logp);
    return rc ? ts_cli_fail() : 0;
}
