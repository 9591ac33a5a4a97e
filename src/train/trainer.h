/* trainer.h - one optimiser step of TinySAM's full-stage distillation (spec/DISTILL.md 0):
 * the student encoder forward with its tape, hard prompt sampling on the student decoder,
 * the training round through the student and the teacher decoders, the losses of section 2,
 * the backward into every student parameter, and Adam (5.4) under SAM's learning-rate
 * schedule (4.2).
 *
 * Parameters: the student's image encoder (ts_eg_layout, BatchNorm statistics frozen) and its
 * prompt encoder + mask decoder (ts_dg_layout) as flat float arrays; the teacher contributes
 * only its prompt encoder + mask decoder (its embeddings are stored on disk). Everything a
 * step needs is allocated at ts_trainer_create; a step allocates nothing.
 *
 * Random numbers: one SplitMix64 stream for the whole run (3.6), in the spec's order: the
 * epoch shuffle, then per step mask selection, t, initial prompts, one draw per set and round.
 * A checkpoint stores the stream's state, the epoch order and position, the parameters and
 * the Adam moments, so that a resumed run continues bit for bit. */
#ifndef TS_TRAIN_TRAINER_H
#define TS_TRAIN_TRAINER_H

#include "io/tensor_map.h"
#include "train/dataset.h"
#include "train/losses.h"
#include "train/sampling.h"

#include <stdint.h>

typedef struct {
    ts_loss_config loss;
    int max_sets;         /* prompt sets per image and step (64) */
    int fixed_t;          /* -1: t drawn from 0..9 per step; else this t (benchmarks) */
    int train_encoder;    /* switches: which student parts Adam updates */
    int train_decoder;
    double lr;            /* peak learning rate */
    int warmup;           /* linear warm-up steps from 0 (SAM: 250; 0: none) */
    int lr_drops;         /* SAM's x0.1 at 2/3 and at 86666/90000 of total_steps */
    long total_steps;     /* for the schedule */
    double beta1, beta2, eps;
    uint64_t seed;
    /* B: images per step (1). B = 1 runs the one stream above; B > 1 draws every epoch's
     * shuffle from (seed, epoch), the step's t from (seed, step) and each slot's sampling from
     * (seed, step, slot), so that a slot draws the same whichever process runs it. */
    int images_per_step;
} ts_train_config;

#define TS_TRAIN_MAX_IMAGES_PER_STEP 4096

/* The spec's reference values: 64 sets, t random, everything trained, lr 2e-5, warm-up 250,
 * drops on, Adam 0.9 / 0.999 / 1e-8, seed 0. */
void ts_train_config_default(ts_train_config *c);

typedef struct ts_trainer ts_trainer;

/* student: the student's checkpoint map (a vit_t model: image encoder, prompt encoder, mask
 * decoder); teacher: any SAM-family map (only prompt_encoder.* and mask_decoder.* are read).
 * decoder_from_teacher: start the student's prompt encoder and mask decoder from the teacher's
 * (spec 1.3); the PE Gaussian matrix is always the teacher's. The maps may be freed after. */
int ts_trainer_create(const ts_train_config *c, const ts_tensor_map *student,
                      const ts_tensor_map *teacher, int decoder_from_teacher,
                      ts_trainer **out);
void ts_trainer_free(ts_trainer *t);

/* Reinitialises the image encoder randomly (DISTILL.md 1.3 "from scratch": TinyViT's own
 * initialisation: linear weights truncated normal std 0.02 and zero bias, LayerNorm and
 * BatchNorm 1 / 0 with running statistics 0 / 1, convolutions Kaiming-normal fan-out,
 * attention bias tables zero), from the run's generator. */
void ts_trainer_init_encoder_random(ts_trainer *t);

typedef struct {
    long step;            /* the step just taken (1-based) */
    int N, t;             /* prompt sets, sampling rounds */
    double lr;
    ts_loss_result loss;  /* every term of the training round */
    /* milliseconds: encoder forward, sampling rounds, decoders forward (student + teacher),
     * losses, decoder backward, encoder backward, Adam */
    double ms[7];
} ts_step_report;

/* One step on one image: sampling from the run's generator, then the update. */
int ts_trainer_step(ts_trainer *t, const ts_train_example *ex, ts_step_report *rep);

/* One step on given prompt sets (no sampling; variant A of 6.4 and the fixture cases):
 * sets[i] with optional mask input mask_in[i] (256 x 256 logits, may be NULL) and ground
 * truth index gt[i] into ex's masks. */
int ts_trainer_step_given(ts_trainer *t, const ts_train_example *ex, int N,
                          const ts_sample_set *sets, const float *const *mask_in, const int *gt,
                          ts_step_report *rep);

/* Losses of the current student on given prompt sets, without an update (evaluation). */
int ts_trainer_eval(ts_trainer *t, const ts_train_example *ex, int N, const ts_sample_set *sets,
                    const float *const *mask_in, const int *gt, ts_loss_result *out);

/* ---- B > 1 images per step (the data-parallel trainer, src/dist) ----------------------------
 * Per step: ts_trainer_next_batch for the B image indices (every process calls it, to keep the
 * epoch position in step), ts_trainer_slot_grad for each slot the process runs, the gradients
 * summed over slots 0..B-1 in slot order (acc = 0; acc += g[slot]), then ts_trainer_apply. */

/* Floats of one image's gradient: the encoder's (when trained), then the decoder's. */
size_t ts_trainer_grad_len(const ts_trainer *t);
/* The next B image indices of the epoch order (runs on across epochs). */
int ts_trainer_next_batch(ts_trainer *t, int n_images, int *idx);
/* The sampling rounds t of the next step (--rounds, or drawn from (seed, step)). */
int ts_trainer_step_rounds(const ts_trainer *t);
/* One slot's image at the current weights: sampling, training round and backward into grad
 * (ts_trainer_grad_len floats; all zero when the image has no usable mask: rep->N = 0). */
int ts_trainer_slot_grad(ts_trainer *t, int slot, const ts_train_example *ex, float *grad,
                         ts_step_report *rep);
/* The Adam step on gsum / n_usable (the mean over the images that had a usable mask). */
int ts_trainer_apply(ts_trainer *t, const float *gsum, int n_usable, double *ms_adam);
/* A hash of everything a run continues from (weights, moments, step, epoch order, stream). */
uint64_t ts_trainer_state_hash(const ts_trainer *t);

/* The learning rate of a (1-based) step under the configured schedule. */
double ts_trainer_lr(const ts_train_config *c, long step);

/* The epoch order of a run over n images: returns the image index of the next step, drawing a
 * new shuffle at each epoch start (3.6), and advances the position. */
int ts_trainer_next_image(ts_trainer *t, int n_images);

long ts_trainer_steps_done(const ts_trainer *t);
/* Student tensor values (encoder or decoder layouts) by checkpoint name, or NULL. */
const float *ts_trainer_param(const ts_trainer *t, const char *name, size_t *numel);
/* Writes the student as safetensors: every tensor of the student's map with the trained values
 * (BatchNorm unfolded, as `convert` writes), metadata from the student's map plus
 * tinysam.distill.steps. */
int ts_trainer_save_model(const ts_trainer *t, const char *path);
/* A checkpoint: the model plus Adam's moments ("optim.exp_avg.NAME", "optim.exp_avg_sq.NAME"),
 * and in the metadata the step, the generator state, the epoch order and position, and the
 * configuration. */
int ts_trainer_save_checkpoint(const ts_trainer *t, const char *path);
/* Restores a checkpoint written by ts_trainer_save_checkpoint into a trainer created with the
 * same configuration (the schedule and loss switches must agree: checked). */
int ts_trainer_load_checkpoint(ts_trainer *t, const char *path);

/* Bytes allocated by the trainer (tape, scratch, parameters, gradients, moments, buffers). */
size_t ts_trainer_memory(const ts_trainer *t);

#endif
