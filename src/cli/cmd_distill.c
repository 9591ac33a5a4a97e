/* cmd_distill.c - `tinysam distill`: TinySAM's full-stage distillation (spec/DISTILL.md) of a
 * vit_t student from a SAM-family teacher's stored embeddings, prompt encoder and decoder. */
#include "cli/args.h"
#include "cli/commands.h"
#include "core.h"
#include "dist/comm.h"
#include "everything/amg.h"
#include "io/tensor_map.h"
#include "tinysam.h"
#include "train/dataset.h"
#include "train/trainer.h"

#include <inttypes.h>
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
    "  --threads N, --max-pixels P\n"
    "  --images-per-step B  images per optimiser step, the mean of their gradients (1; under MPI\n"
    "                       the number of ranks R, a multiple of R: each rank runs B/R of them)\n"
    "\n"
    "Built with `make MPI=1`, `mpirun -np R tinysam distill ...` (or `srun -n R`) trains data-\n"
    "parallel: each rank holds the model and runs B/R of a step's images, the gradients are summed\n"
    "in image order (the files are byte-identical to one process with the same B), rank 0 alone\n"
    "writes the model, checkpoints and log. Ctrl-C, SIGTERM or SIGUSR1 on any rank: all ranks\n"
    "stop after the same step and rank 0 writes a checkpoint.\n";

/* Ctrl-C, SIGTERM (Slurm before a time limit), SIGUSR1: finish the current step, write a
 * checkpoint, stop; a second signal aborts. */
static volatile sig_atomic_t g_stop;
static void on_sigint(int sig) {
    if (g_stop) {
        signal(sig, SIG_DFL);
        raise(sig);
        return;
    }
    g_stop = 1;
    static const char msg[] = "\ndistill: stopping after this step to write a checkpoint "
                              "(a second signal aborts without one)\n";
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
                             long long max_pixels, int rank, int ranks) {
    char **names = NULL;
    int n = 0, todo = 0, rc = ts_dataset_list_images(images, &names, &n);
    if (rc) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", tinysam_last_error());
        return ts_error(TINYSAM_E_IO, "--images: %s", msg);
    }
    if ((rc = ts_mkdirs(masks))) goto done;
    /* under MPI each rank makes the images i = rank (mod ranks): each file written once */
    for (int i = rank; i < n; i += ranks) {
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
    for (int i = rank; !rc && i < n; i += ranks) {
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
    int every, threads, init_random, dec_from_teacher, pseudo, ips;
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
        } else if (!strcmp(a, "--images-per-step")) {
            if (VAL() || ts_arg_int("--images-per-step", v, 1, TS_TRAIN_MAX_IMAGES_PER_STEP,
                                    &o->ips))
                return -1;
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

/* ---- start-up agreement of the ranks --------------------------------------------------------- */

static uint64_t fnv(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001B3ull;
    return h;
}

/* Everything in the options that changes the results (paths may differ between machines). */
static uint64_t options_hash(const options *o, long total) {
    const ts_train_config *c = &o->c;
    char t[1024];
    snprintf(t, sizeof t,
             "total %ld every %d init %d decfrom %d pseudo %d maxpix %lld resume %d student %d "
             "sets %d t %d enc %d dec %d lr %.17g warmup %d drops %d b1 %.17g b2 %.17g eps %.17g "
             "seed %" PRIu64 " B %d loss %.9g %.9g %.9g %.9g %.9g %d",
             total, o->every, o->init_random, o->dec_from_teacher, o->pseudo, o->max_pixels,
             !!o->resume, !!o->student, c->max_sets, c->fixed_t, c->train_encoder,
             c->train_decoder, c->lr, c->warmup, c->lr_drops, c->beta1, c->beta2, c->eps,
             c->seed, c->images_per_step, (double)c->loss.alpha, (double)c->loss.beta,
             (double)c->loss.gamma, (double)c->loss.w_mask, (double)c->loss.w_iou,
             c->loss.hard_weights);
    return fnv(0xcbf29ce484222325ull, t, strlen(t));
}

static const char *base_name(const char *p) {
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* The image list as the ranks see it: every file's name and size, in order. */
static uint64_t files_hash(const file_list *f) {
    uint64_t h = fnv(0xcbf29ce484222325ull, &f->n, sizeof f->n);
    for (int i = 0; i < f->n; i++) {
        const char *p[3] = {f->img[i], f->emb[i], f->gt[i]};
        for (int k = 0; k < 3; k++) {
            struct stat st;
            long long size = stat(p[k], &st) ? -1 : (long long)st.st_size;
            const char *b = base_name(p[k]);
            h = fnv(h, b, strlen(b) + 1);
            h = fnv(h, &size, sizeof size);
        }
    }
    return h;
}

/* ---- B > 1 images per step, over R ranks ------------------------------------------------------ */

typedef struct {
    int32_t N, t;
    double L[7]; /* L_total, L_emb, L_tok, L_out_weighted, L_out_mean, L_mask, L_iou */
    double ms[7];
} slot_info;

/* What each rank tells the others after computing its slots, every step. */
typedef struct {
    int32_t rc, stop;
    double ms; /* the rank's slots: load + sampling + forward + backward */
    char msg[240];
} rank_head;

static void stem_of(const char *path, char *out, int cap) {
    ts_dataset_stem(base_name(path), out, cap);
}

static void log_batch(FILE *f, long step, const file_list *files, const int *idx, int B,
                      const slot_info *si, const double mean[7], int n_usable, int sets, int T,
                      double lr, double ms, double ms_slow, double ms_fast, double ms_comb,
                      uint64_t bytes) {
    fprintf(f, "{\"step\": %ld, \"images\": [", step);
    for (int s = 0; s < B; s++) {
        char stem[256];
        stem_of(files->img[idx[s]], stem, sizeof stem);
        fprintf(f, "%s", s ? ", " : "");
        ts_json_write_string(f, stem);
    }
    fprintf(f, "], \"usable\": %d, \"sets\": %d, \"t\": %d, \"lr\": %.6g, \"L_total\": %.7g, "
               "\"L_emb\": %.7g, \"L_tok\": %.7g, \"L_out_weighted\": %.7g, \"L_out_mean\": %.7g, "
               "\"L_mask\": %.7g, \"L_iou\": %.7g, \"L_total_per_image\": [",
            n_usable, sets, T, lr, mean[0], mean[1], mean[2], mean[3], mean[4], mean[5], mean[6]);
    for (int s = 0; s < B; s++)
        if (si[s].N) fprintf(f, "%s%.9g", s ? ", " : "", si[s].L[0]);
        else fprintf(f, "%snull", s ? ", " : "");
    fprintf(f, "], \"ms\": %.0f, \"ms_rank_slowest\": %.0f, \"ms_rank_fastest\": %.0f, "
               "\"ms_combine\": %.1f, \"bytes_sent\": %" PRIu64 "}\n",
            ms, ms_slow, ms_fast, ms_comb, bytes);
    fflush(f);
}

/* The training loop of B > 1 (any R dividing B): every rank runs its B/R slots, the status of
 * every rank is exchanged (errors and stop requests included, so that all ranks leave the
 * loop after the same step), the gradients are combined in slot order and every rank takes
 * the same Adam step. Rank 0 alone writes. */
static int train_batches(ts_comm *comm, const options *o, const file_list *files, ts_trainer *tr,
                         long total, FILE *logf, const char *ckpt) {
    const int R = ts_comm_size(comm), me = ts_comm_rank(comm), B = o->c.images_per_step;
    const int L = B / R;
    const size_t G = ts_trainer_grad_len(tr);
    const size_t blob = sizeof(rank_head) + (size_t)L * sizeof(slot_info);
    float *gbuf = malloc(sizeof(float) * (G * (size_t)L + 1));
    float *gsum = malloc(sizeof(float) * (G + 1));
    int *idx = malloc(sizeof(int) * (size_t)B);
    unsigned char *st_me = calloc(1, blob), *st_all = calloc((size_t)R, blob);
    slot_info *si = malloc(sizeof(slot_info) * (size_t)B);
    ts_train_example ex = {0};
    int rc = 0;
    if (!gbuf || !gsum || !idx || !st_me || !st_all || !si)
        rc = ts_error(TINYSAM_E_NOMEM, "out of memory (%zu MB of gradients)",
                      (G * (size_t)(L + 1) * 4) >> 20);
    if (!rc) rc = ts_comm_combine_reserve(comm, L, G);
    if ((rc = ts_comm_agree_rc(comm, rc))) goto done;
    const long first = ts_trainer_steps_done(tr);
    const double t_start = ts_now_ms();
    int skipped = 0;
    while (ts_trainer_steps_done(tr) < total) {
        rank_head *h = (rank_head *)st_me;
        slot_info *mine = (slot_info *)(st_me + sizeof(rank_head));
        memset(st_me, 0, blob);
        const double t0 = ts_now_ms();
        int lrc = ts_trainer_next_batch(tr, files->n, idx);
        const int T = ts_trainer_step_rounds(tr);
        for (int j = 0; !lrc && j < L; j++) {
            const int slot = me * L + j, k = idx[slot];
            ts_step_report r;
            lrc = ts_example_load(files->img[k], files->emb[k], files->gt[k], o->max_pixels, &ex);
            if (!lrc) lrc = ts_trainer_slot_grad(tr, slot, &ex, gbuf + (size_t)j * G, &r);
            ts_example_free(&ex);
            if (lrc) break;
            const ts_loss_result *Ls = &r.loss;
            slot_info *q = &mine[j];
            q->N = r.N, q->t = r.N ? r.t : T;
            const double v[7] = {Ls->L_total, Ls->L_emb, Ls->L_tok, Ls->L_out_weighted,
                                 Ls->L_out_mean, Ls->L_mask, Ls->L_iou};
            memcpy(q->L, v, sizeof v);
            memcpy(q->ms, r.ms, sizeof q->ms);
        }
        h->rc = lrc;
        if (lrc) snprintf(h->msg, sizeof h->msg, "%s", tinysam_last_error());
        h->stop = g_stop != 0;
        h->ms = ts_now_ms() - t0;
        if ((rc = ts_comm_allgather(comm, st_me, blob, st_all))) {
            ts_cli_fail(); /* the ranks may no longer meet: end the job */
            ts_comm_abort(comm, 1);
        }
        int stop = 0, n_usable = 0, sets = 0;
        double slow = 0, fast = 1e300;
        for (int k = 0; k < R; k++) {
            const rank_head *hk = (const rank_head *)(st_all + (size_t)k * blob);
            if (hk->rc && !rc)
                rc = lrc ? lrc : ts_error(hk->rc, "rank %d: %.*s", k, (int)sizeof hk->msg - 1,
                                          hk->msg);
            stop |= hk->stop;
            slow = hk->ms > slow ? hk->ms : slow;
            fast = hk->ms < fast ? hk->ms : fast;
            memcpy(si + (size_t)k * L, st_all + (size_t)k * blob + sizeof(rank_head),
                   sizeof(slot_info) * (size_t)L);
        }
        if (rc) break; /* every rank leaves at the same step */
        for (int s = 0; s < B; s++) n_usable += si[s].N > 0, sets += si[s].N;
        if (n_usable == 0) { /* no image of this step has a usable mask: no update */
            if (me == 0)
                fprintf(stderr, "distill: none of the step's %d images has a usable mask "
                                "(non-empty, <= 90%% of the image): skipped\n", B);
            if ((skipped += B) >= files->n) {
                rc = ts_error(TINYSAM_E_ARG, "distill: no image has a usable mask");
                break;
            }
        } else {
            skipped = 0;
            uint64_t bytes = 0;
            const double t1 = ts_now_ms();
            if ((rc = ts_comm_combine(comm, gbuf, L, G, gsum, &bytes))) {
                ts_cli_fail();
                ts_comm_abort(comm, 1);
            }
            const double ms_comb = ts_now_ms() - t1;
            if ((rc = ts_trainer_apply(tr, gsum, n_usable, NULL))) break;
            const long s = ts_trainer_steps_done(tr);
            if (me == 0) {
                double mean[7] = {0};
                for (int q = 0; q < B; q++) /* slot order, as the gradients */
                    for (int k = 0; k < 7; k++) mean[k] += si[q].N ? si[q].L[k] : 0.0;
                for (int k = 0; k < 7; k++) mean[k] /= n_usable;
                const double ms = ts_now_ms() - t0;
                const double per = (ts_now_ms() - t_start) / (double)(s - first) / 1000.0;
                char eta[32], first_img[256];
                fmt_eta(per * (double)(total - s), eta, sizeof eta);
                stem_of(files->img[idx[0]], first_img, sizeof first_img);
                const double lr = ts_trainer_lr(&o->c, s);
                fprintf(stderr, "step %ld/%ld %s+%d: images %d/%d sets %d t %d | L %.4f emb %.4f "
                                "tok %.4f out %.4f mask %.4f iou %.4f | lr %.2e | %.1f s (rank "
                                "slowest %.1f s, fastest %.1f s, combine %.2f s, %.1f MB "
                                "sent), eta %s\n",
                        s, total, first_img, B - 1, n_usable, B, sets, T, mean[0], mean[1],
                        mean[2], mean[3], mean[5], mean[6], lr, ms / 1000.0, slow / 1000.0,
                        fast / 1000.0, ms_comb / 1000.0, (double)bytes / 1e6, eta);
                log_batch(logf, s, files, idx, B, si, mean, n_usable, sets, T, lr, ms, slow,
                          fast, ms_comb, bytes);
                if (o->every && s % o->every == 0 && s < total && !stop)
                    rc = ts_trainer_save_checkpoint(tr, ckpt);
            }
            if ((rc = ts_comm_agree_rc(comm, rc))) break; /* rank 0's write failed */
        }
        if (stop && ts_trainer_steps_done(tr) < total) {
            if (me == 0) {
                fprintf(stderr, "\ndistill: interrupted after step %ld; ", ts_trainer_steps_done(tr));
                if (!(rc = ts_trainer_save_checkpoint(tr, ckpt)))
                    fprintf(stderr, "checkpoint %s (continue with --resume %s)\n", ckpt, ckpt);
            }
            if (!(rc = ts_comm_agree_rc(comm, rc))) rc = ts_error(TINYSAM_E_ARG, "distill: interrupted");
            break;
        }
    }
    if (!rc && me == 0)
        fprintf(stderr, "distill: %ld steps of %d images on %d rank%s in %.1f s\n",
                ts_trainer_steps_done(tr) - first, B, R, R > 1 ? "s" : "",
                (ts_now_ms() - t_start) / 1000.0);
done:
    ts_example_free(&ex);
    free(gbuf), free(gsum), free(idx), free(st_me), free(st_all), free(si);
    return rc;
}

/* The loop of one image per step, one process (the trainer's one-stream path). */
static int train_single(const options *o, const file_list *files, ts_trainer *tr, long total,
                        FILE *logf, const char *ckpt) {
    ts_train_example ex = {0};
    int rc = 0;
    double t_start = ts_now_ms();
    long first = ts_trainer_steps_done(tr);
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
        int k = ts_trainer_next_image(tr, files->n);
        if (k < 0) {
            rc = k;
            break;
        }
        double t0 = ts_now_ms();
        if ((rc = ts_example_load(files->img[k], files->emb[k], files->gt[k], o->max_pixels,
                                  &ex)))
            break;
        ts_step_report r;
        rc = ts_trainer_step(tr, &ex, &r);
        if (!rc && r.N == 0) {
            fprintf(stderr, "distill: %s has no usable mask (non-empty, <= 90%% of the image): "
                            "skipped\n", ex.name);
            if (++skipped_in_a_row >= files->n)
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
            if (o->every && s % o->every == 0 && s < total)
                rc = ts_trainer_save_checkpoint(tr, ckpt);
        }
        ts_example_free(&ex);
    }
    if (!rc)
        fprintf(stderr, "distill: %ld steps in %.1f s; ", ts_trainer_steps_done(tr) - first,
                (ts_now_ms() - t_start) / 1000.0);
    return rc;
}

static int distill(ts_comm *comm, int argc, char **argv) {
    const int R = ts_comm_size(comm), me = ts_comm_rank(comm);
    options o;
    memset(&o, 0, sizeof o);
    int help = 0;
    int rc = ts_comm_agree_rc(comm, parse(argc, argv, &o, &help));
    if (rc) return rc;
    /* a rank must never leave alone (MPI_Finalize would wait for the others): agree first */
    if ((rc = ts_comm_agree_u64(comm, (uint64_t)help, "distill: --help on some ranks only")))
        return rc;
    if (help) {
        if (me == 0) fputs(distill_usage, stdout);
        return 0;
    }
    o.c.images_per_step = o.ips ? o.ips : R;
    if (o.c.images_per_step % R)
        rc = ts_error(TINYSAM_E_ARG, "distill: --images-per-step %d is not a multiple of the %d "
                                     "ranks", o.c.images_per_step, R);
    if ((rc = ts_comm_agree_rc(comm, rc))) return rc;
    if (o.threads) tinysam_set_num_threads(o.threads);
    file_list files = {0};
    ts_tensor_map *tm = NULL, *sm = NULL;
    ts_trainer *tr = NULL;
    FILE *logf = NULL;
    char *ckpt = NULL, *logp = NULL;
    const int B = o.c.images_per_step;
    long done_steps = 0;
    /* every phase ends with the ranks' agreement on its result (a barrier too) */
    rc = o.pseudo ? make_pseudo_masks(o.teacher, o.images, o.masks, o.max_pixels, me, R) : 0;
    if ((rc = ts_comm_agree_rc(comm, rc))) goto done;
    rc = list_files(o.images, o.embs, o.masks, &files);
    if ((rc = ts_comm_agree_rc(comm, rc))) goto done;
    const long total = o.steps ? o.steps : (o.epochs * files.n + B - 1) / B;
    o.c.total_steps = total;
    if ((rc = ts_map_load(o.teacher, &tm))) goto agree;
    if (o.student && (rc = ts_map_load(o.student, &sm))) goto agree;
    if ((rc = ts_trainer_create(&o.c, sm ? sm : tm, tm, o.dec_from_teacher, &tr))) {
        if (!sm && o.init_random) {
            char msg[400];
            snprintf(msg, sizeof msg, "%s", tinysam_last_error());
            rc = ts_error(rc, "--init random takes the student's architecture from the teacher, "
                              "which is not a vit_t model (%s): add --student S", msg);
        }
        goto agree;
    }
    ts_map_free(tm), ts_map_free(sm);
    tm = sm = NULL;
    if (o.init_random && !o.resume) ts_trainer_init_encoder_random(tr);
    ckpt = malloc(strlen(o.out) + 32);
    logp = o.log ? NULL : malloc(strlen(o.out) + 32);
    if (!ckpt || (!o.log && !logp)) {
        rc = ts_error(TINYSAM_E_NOMEM, "out of memory");
        goto agree;
    }
    sprintf(ckpt, "%s.ckpt.safetensors", o.out);
    if (logp) sprintf(logp, "%s.log.jsonl", o.out);
    if (o.resume && (rc = ts_trainer_load_checkpoint(tr, o.resume))) goto agree;
    done_steps = ts_trainer_steps_done(tr);
    if (done_steps >= total)
        rc = ts_error(TINYSAM_E_ARG, "distill: the checkpoint is at step %ld of %ld: nothing "
                                     "left to do", done_steps, total);
agree:
    if ((rc = ts_comm_agree_rc(comm, rc))) goto done;
    /* the ranks must run the same job: options, image list and starting point */
    if ((rc = ts_comm_agree_u64(comm, options_hash(&o, total),
                                "distill: the options differ between the ranks (every rank "
                                "must run the same command)")) ||
        (rc = ts_comm_agree_u64(comm, files_hash(&files),
                                "distill: the image lists differ between the ranks (names or "
                                "sizes of the images, embeddings or masks)")) ||
        (rc = ts_comm_agree_u64(comm, ts_trainer_state_hash(tr),
                                "distill: the starting weights differ between the ranks "
                                "(teacher, student or --resume checkpoint)")))
        goto done;
    /* the handlers before rank 0's first line, so that a signal after it never kills a rank */
    signal(SIGINT, on_sigint);
    signal(SIGTERM, on_sigint);
    signal(SIGUSR1, on_sigint);
    if (me == 0) { /* rank 0 alone writes */
        logf = fopen(o.log ? o.log : logp, o.resume ? "a" : "w");
        if (!logf) rc = ts_error(TINYSAM_E_IO, "cannot write the log '%s'", o.log ? o.log : logp);
        else
            fprintf(stderr, "distill: %d images, %ld steps (from %ld) of %d image%s on %d rank%s "
                            "(%s), up to %d prompt sets per image, lr %.3g, trainer memory %.0f "
                            "MB\n", files.n, total, done_steps, B, B > 1 ? "s" : "", R,
                    R > 1 ? "s" : "", ts_comm_library(comm), o.c.max_sets, o.c.lr,
                    ts_trainer_memory(tr) / 1048576.0);
    }
    if ((rc = ts_comm_agree_rc(comm, rc))) goto done;
    rc = B == 1 ? train_single(&o, &files, tr, total, logf, ckpt)
                : train_batches(comm, &o, &files, tr, total, logf, ckpt);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    if (!rc && me == 0) {
        rc = ts_trainer_save_model(tr, o.out);
        if (!rc && o.every) rc = ts_trainer_save_checkpoint(tr, ckpt);
        if (!rc) fprintf(stderr, "%swrote %s\n", B == 1 ? "" : "distill: ", o.out);
    }
    if (B > 1) rc = ts_comm_agree_rc(comm, rc); /* every rank fails if rank 0 could not write */
done:
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGUSR1, SIG_DFL);
    if (logf) fclose(logf);
    ts_trainer_free(tr);
    ts_map_free(tm), ts_map_free(sm);
    files_free(&files);
    free(ckpt), free(logp);
    return rc;
}

int ts_cli_distill(int argc, char **argv) {
    ts_comm *comm = NULL;
    if (ts_comm_init(&argc, &argv, &comm)) return ts_cli_fail();
    int rc = distill(comm, argc, argv);
    if (rc) ts_cli_fail();
    ts_comm_finalize(comm);
    return rc ? 1 : 0;
}
