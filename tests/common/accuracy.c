/* accuracy.c - see accuracy.h. */
#include "accuracy.h"

#include "compare.h"
#include "core.h"
#include "prompt_case.h"
#include "test.h"

#include <dirent.h>
#include <stdio.h>

int test_acc_image(tinysam_model *fm, tinysam_model *qm, const char *image, const char *file,
                   int verbose, test_acc *a) {
    char rel[256];
    snprintf(rel, sizeof rel, "images/%s", file);
    tinysam_image img;
    if (tinysam_image_load(fixture(rel), 0, &img)) return -1;
    tinysam_embedding *ef = NULL, *eq = NULL;
    int rc = -1;
    if (tinysam_encode(fm, &img, &ef) || tinysam_encode(qm, &img, &eq)) goto out;
    double cs = test_cosine(tinysam_embedding_data(ef), tinysam_embedding_data(eq), 256 * 64 * 64);
    if (verbose) printf("  %s: embedding cosine %.5f\n", image, cs);
    if (cs < a->cos_min) a->cos_min = cs;
    snprintf(rel, sizeof rel, "reference/%s/prompts", image);
    DIR *dir = opendir(fixture(rel));
    if (!dir) {
        ts_error(TINYSAM_E_IO, "%s: no prompt cases", image);
        goto out;
    }
    struct dirent *de;
    while ((de = readdir(dir))) {
        if (de->d_name[0] == '.') continue;
        char base[512];
        snprintf(base, sizeof base, "reference/%s/prompts/%s", image, de->d_name);
        static test_prompt_case pc;
        if (test_prompt_case_load(base, 1, &pc)) {
            test_prompt_case_free(&pc);
            closedir(dir);
            goto out;
        }
        tinysam_prediction pf, pq;
        if (tinysam_predict(fm, ef, &pc.prompt, TINYSAM_PREDICT_MASKS, &pf) == 0) {
            if (tinysam_predict(qm, eq, &pc.prompt, TINYSAM_PREDICT_MASKS, &pq) == 0) {
                size_t plane = (size_t)pf.width * pf.height;
                double iou = test_mask_iou(pf.masks + (size_t)pf.best * plane,
                                           pq.masks + (size_t)pq.best * plane, plane);
                if (verbose) printf("  %s/%s: best-mask IoU %.4f\n", image, de->d_name, iou);
                a->iou_sum += iou;
                a->iou_min = iou < a->iou_min ? iou : a->iou_min;
                a->n++;
                tinysam_prediction_free(&pq);
            }
            tinysam_prediction_free(&pf);
        }
        test_prompt_case_free(&pc);
    }
    closedir(dir);
    rc = 0;
out:
    tinysam_embedding_free(ef);
    tinysam_embedding_free(eq);
    tinysam_image_free(&img);
    return rc;
}

int test_quant_fixtures(const char *model, tinysam_model **fm, char *p0, char *p1) {
    if (!fixture_exists(model) || !fixture_exists("images/picture3.jpg") ||
        !fixture_exists("images/shapes_grey.png"))
        return 0;
    if (tinysam_model_load(fixture(model), fm)) {
        printf("  float model: %s\n", tinysam_last_error());
        return 0;
    }
    snprintf(p0, 512, "%s", fixture("images/picture3.jpg"));
    snprintf(p1, 512, "%s", fixture("images/shapes_grey.png"));
    return 1;
}

int test_quant_reload(tinysam_model *fm, const char *qpath, tinysam_model **qm,
                      const char *fpath) {
    if (tinysam_model_load(qpath, qm)) {
        printf("  int8 model: %s\n", tinysam_last_error());
        return 0;
    }
    return !tinysam_model_save_safetensors(fm, fpath);
}
