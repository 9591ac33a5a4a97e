/* prompt_case.h - one reference prompt of the fixtures (reference/IMAGE/prompts/CASE):
 * prompt.json's points, labels and box as a tinysam_prompt in image pixels, plus
 * mask_input.npy when the case has one and the caller wants it. */
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

#endif
