/* prompt_case.h - one reference prompt of the fixtures (reference/IMAGE/prompts/CASE):
 * prompt.json's points, labels and box as a tinysam_prompt in image pixels, plus
 * mask_input.npy when the case has one and the caller wants it; and the case's reference
 * outputs. */
#ifndef TS_TEST_PROMPT_CASE_H
#define TS_TEST_PROMPT_CASE_H

#include "io/json.h"
#include "io/npy.h"
#include "tinysam.h"

typedef struct {
    float points[2 * TINYSAM_MAX_POINTS];
    int labels[TINYSAM_MAX_POINTS];
    tinysam_prompt prompt; /* points into the arrays above, mask_input into mask */
    ts_json *json;         /* the whole prompt.json (best, iou_predictions, ...) */
    ts_npy mask;           /* mask_input.npy, when loaded */
} test_prompt_case;

/* dir: the case's folder relative to the fixtures. Returns 0, or -1 with a message in
 * tinysam_last_error(). Free with test_prompt_case_free either way. */
int test_prompt_case_load(const char *dir, int with_mask_input, test_prompt_case *c);
void test_prompt_case_free(test_prompt_case *c);

/* A case's reference outputs: low_res.npy, iou.npy and masks.npy of the folder dir (relative to
 * the fixtures). Returns 0, or -1 with a message naming the file in tinysam_last_error(). Free
 * with test_case_outputs_free either way. */
typedef struct {
    ts_npy low_res, iou, masks;
} test_case_outputs;
int test_case_outputs_load(const char *dir, test_case_outputs *o);
void test_case_outputs_free(test_case_outputs *o);

#endif
