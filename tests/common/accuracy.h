/* accuracy.h - a quantised model against its float model on the fixtures' reference prompt
 * cases (what the quantisation tests and bench_quant_accuracy report): the embedding cosine of
 * each image and the IoU of the two models' best masks for each prompt case; and the setup the
 * quantisation tests share. */
#ifndef TS_TESTS_ACCURACY_H
#define TS_TESTS_ACCURACY_H

#include "tinysam.h"

typedef struct {
    double iou_sum, iou_min, cos_min; /* start at 0, 1, 1 */
    int n;                            /* cases */
} test_acc;

/* Every prompt case of reference/IMAGE/prompts on images/FILE, added to *a; verbose prints
 * the cosine and each case's IoU. Returns 0, or -1 with a message in tinysam_last_error()
 * when the image, its encoding or a case cannot be had (a case the models cannot predict is
 * left out). */
int test_acc_image(tinysam_model *fm, tinysam_model *qm, const char *image, const char *file,
                   int verbose, test_acc *a);

/* The quantisation tests' fixtures: the float model (path under the fixtures) loaded into *fm,
 * the calibration images picture3.jpg and shapes_grey.png (not among the evaluated ones) named
 * in p0 and p1 (512 bytes each). 1, or 0 when a fixture is missing (silently) or the model
 * does not load (a line printed). */
int test_quant_fixtures(const char *model, tinysam_model **fm, char *p0, char *p1);
/* After the int8 file qpath is written: loads it into *qm and saves fm as float safetensors
 * to fpath (the size comparison). 1, or 0 (a line printed when the int8 model does not load). */
int test_quant_reload(tinysam_model *fm, const char *qpath, tinysam_model **qm,
                      const char *fpath);

#endif
