/* test_sam_family.c - a SAM ViT checkpoint through the whole engine: detected from its shapes,
 * loaded from the float16 ZIP container, embedding and every prompt case (with SAM's
 * multimask_output switch) against segment-anything's own SamPredictor outputs
 * (fixtures reference/sam_vit_tiny). */
#include "compare.h"
#include "core.h"
#include "io/json.h"
#include "io/npy.h"
#include "io/tensor_map.h"
#include "model/sam.h"
#include "prompt_case.h"
#include "test.h"

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SAM "models/sam_vit_tiny_random_fp16.pth"

static void test_detect_and_info(void) {
    if (!fixture_exists(SAM)) SKIP("fixtures missing");
    tinysam_model *m;
    REQUIRE(tinysam_model_load(fixture(SAM), &m) == 0, "%s", tinysam_last_error());
    tinysam_model_info inf;
    tinysam_model_get_info(m, &inf);
    CHECK(!strcmp(inf.family, "vit"), "family %s", inf.family);
    CHECK(!strcmp(inf.source_dtype, "float16") && !strcmp(inf.source_format, "pth-zip"),
          "dtype %s format %s", inf.source_dtype, inf.source_format);
    CHECK(strstr(inf.config, "\"embed_dim\":128") && strstr(inf.config, "\"depth\":4") &&
              strstr(inf.config, "\"num_heads\":4") && strstr(inf.config, "[1,3]"),
          "config %s", inf.config);
    /* convert keeps the config in the metadata and loads back to the same model */
    const char *p = tmp_path("sam.safetensors");
    REQUIRE(tinysam_model_save_safetensors(m, p) == 0, "%s", tinysam_last_error());
    ts_tensor_map *map;
    REQUIRE(ts_map_load(p, &map) == 0, "%s", tinysam_last_error());
    CHECK(map->metadata_json && strstr(map->metadata_json, "tinysam.family\":\"vit\""), "metadata");
    ts_map_free(map);
    tinysam_model *m2;
    CHECK(tinysam_model_load(p, &m2) == 0, "reload: %s", tinysam_last_error());
    if (m2) tinysam_model_free(m2);
    remove(p);
    tinysam_model_free(m);
}

/* A checkpoint whose tensors fit no family is rejected naming the offending key. */
static void test_unknown_family(void) {
    if (!fixture_exists(SAM)) SKIP("fixtures missing");
    ts_tensor_map *map;
    REQUIRE(ts_map_load(fixture(SAM), &map) == 0, "%s", tinysam_last_error());
    const char *p = tmp_path("odd.safetensors");
    /* 1: an extra block of a shape that fits nothing */
    for (int i = 0; i < map->n; i++)
        if (!strcmp(map->t[i].name, "image_encoder.blocks.2.mlp.lin1.weight")) {
            free(map->t[i].name);
            map->t[i].name = strdup("image_encoder.blocks.2.mlp.fc9.weight");
        }
    REQUIRE(ts_safetensors_save(p, map, 0, NULL, NULL) == 0, "%s", tinysam_last_error());
    tinysam_model *m = NULL;
    int rc = tinysam_model_load(p, &m);
    CHECK(rc != 0 && m == NULL, "odd checkpoint accepted");
    CHECK(strstr(tinysam_last_error(), "image_encoder.blocks.2.mlp"), "message: %s", tinysam_last_error());
    /* 2: no image encoder at all */
    for (int i = 0; i < map->n; i++)
        if (!strncmp(map->t[i].name, "image_encoder.", 14)) map->t[i].name[0] = 'X';
    REQUIRE(ts_safetensors_save(p, map, 0, NULL, NULL) == 0, "%s", tinysam_last_error());
    rc = tinysam_model_load(p, &m);
    CHECK(rc == TINYSAM_E_UNSUPPORTED && strstr(tinysam_last_error(), "not a SAM-family"),
          "message: %s", tinysam_last_error());
    ts_map_free(map);
    remove(p);
}

static void test_sam_vit_tiny_prompts(void) {
    if (!fixture_exists(SAM)) SKIP("fixtures missing");
    tinysam_model *m;
    REQUIRE(tinysam_model_load(fixture(SAM), &m) == 0, "%s", tinysam_last_error());
    tinysam_image img;
    REQUIRE(tinysam_image_load(fixture("images/picture1.jpg"), 0, &img) == 0, "image");
    tinysam_embedding *e;
    REQUIRE(tinysam_encode(m, &img, &e) == 0, "%s", tinysam_last_error());
    ts_npy ref;
    REQUIRE(ts_npy_load(fixture("reference/sam_vit_tiny/picture1/embedding.npy"), &ref) == 0, "emb");
    double de = test_max_abs_diff(tinysam_embedding_data(e), ref.data, 256 * 4096);
    printf("  embedding (full pipeline from the JPEG) max abs err %.2e\n", de);
    CHECK(de <= 1e-3, "embedding max abs error %g", de);
    ts_npy_free(&ref);
    DIR *dir = opendir(fixture("reference/sam_vit_tiny/picture1/prompts"));
    REQUIRE(dir, "prompts dir");
    struct dirent *d;
    int n_cases = 0;
    while ((d = readdir(dir))) {
        if (d->d_name[0] == '.') continue;
        char base[512];
        snprintf(base, sizeof base, "reference/sam_vit_tiny/picture1/prompts/%s", d->d_name);
        static test_prompt_case pc;
        REQUIRE(test_prompt_case_load(base, 0, &pc) == 0, "prompt: %s", tinysam_last_error());
        const tinysam_prompt pr = pc.prompt;
        const ts_json *mm = ts_json_get(pc.json, "multimask_output");
        int single = mm && mm->number == 0;
        tinysam_prediction p;
        REQUIRE(tinysam_predict(m, e, &pr, TINYSAM_PREDICT_MASKS | (single ? TINYSAM_PREDICT_SINGLE : 0),
                                &p) == 0, "%s", tinysam_last_error());
        test_case_outputs want;
        REQUIRE(test_case_outputs_load(base, &want) == 0, "%s", tinysam_last_error());
        int K = (int)want.low_res.shape[0];
        CHECK(p.n_masks == K, "%s: %d masks, reference %d", d->d_name, p.n_masks, K);
        double dl = test_max_abs_diff(p.low_res, want.low_res.data, (size_t)K * 65536);
        double di = test_max_abs_diff(p.iou, want.iou.data, (size_t)K);
        double frac = test_mask_agreement(p.masks, want.masks.data,
                                          (size_t)K * img.width * img.height);
        printf("  %s (%d mask%s): low-res %.2e  iou %.2e  masks %.5f%%\n", d->d_name, K,
               K > 1 ? "s" : "", dl, di, 100 * frac);
        CHECK(dl <= 5e-3, "%s: low-res max abs error %g", d->d_name, dl);
        CHECK(di <= 1e-3, "%s: IoU error %g", d->d_name, di);
        CHECK(frac >= 0.999, "%s: masks agree on %.5f", d->d_name, frac);
        n_cases++;
        tinysam_prediction_free(&p);
        test_case_outputs_free(&want);
        test_prompt_case_free(&pc);
    }
    closedir(dir);
    CHECK(n_cases == 3, "%d cases", n_cases);
    tinysam_embedding_free(e);
    tinysam_image_free(&img);
    tinysam_model_free(m);
}

int main(void) {
    RUN(test_detect_and_info);
    RUN(test_unknown_family);
    RUN(test_sam_vit_tiny_prompts);
    return test_summary();
}
