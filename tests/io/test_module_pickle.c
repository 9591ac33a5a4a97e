/* test_module_pickle.c - torch.save(model) pickles read as data (io/module_tree.h):
 * the float module-tree fixture against the float16 state-dict fixture it was made from
 * (same tensors bit for bit, same outputs on every picture1 prompt case), hand-built module
 * trees (flattening, containers, non-persistent buffers, the cached ab), and hostile pickles
 * that must be refused cleanly without anything being executed: a class GLOBAL reduced with
 * arguments, __reduce__-style payloads, BUILD on a non-object, deep nesting, cycles in
 * _modules, an unknown class with its own weights. */
#include "core.h"
#include "io/npy.h"
#include "io/tensor_map.h"
#include "model/sam.h"
#include "pickle_writer.h"
#include "prompt_case.h"
#include "test.h"
#include "tinysam.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ fixtures */

#define WHOLE "whole/whole_float_fp16.pth"
#define LEGACY16 "models/tinysam_vit_t_random_fp16_legacy.pth"

static void test_whole_float_same_tensors(void) {
    if (!fixture_exists(WHOLE) || !fixture_exists(LEGACY16)) SKIP("fixtures missing");
    ts_tensor_map *a = NULL, *b = NULL;
    REQUIRE(ts_map_load(fixture(WHOLE), &a) == 0, "%s", tinysam_last_error());
    REQUIRE(ts_map_load(fixture(LEGACY16), &b) == 0, "%s", tinysam_last_error());
    CHECK(!strcmp(a->format, "pth-module"), "format %s", a->format);
    CHECK(a->n == b->n && a->n == 439, "%d tensors vs %d", a->n, b->n);
    int diff = 0;
    for (int i = 0; i < b->n; i++) {
        const ts_tensor *x = ts_map_get(a, b->t[i].name), *y = &b->t[i];
        if (!x || x->dtype != y->dtype || x->ndim != y->ndim || x->numel != y->numel ||
            memcmp(x->shape, y->shape, sizeof x->shape) ||
            memcmp(x->data, y->data, (size_t)x->numel * (x->dtype == TS_DTYPE_I64 ? 8 : 4))) {
            if (!diff++) printf("  first difference: %s\n", y->name);
        }
    }
    CHECK(diff == 0, "%d tensors differ", diff);
    CHECK(a->metadata_json && strstr(a->metadata_json, "modeling.tiny_vit_sam.Attention\\\":10"),
          "class counts: %s", a->metadata_json ? a->metadata_json : "(none)");
    ts_map_free(a);
    ts_map_free(b);
}

static const char *const cases[] = {"point", "box", "box_point", "corner", "five_points",
                                    "fractional", "point_neg", "point_mask"};

/* Both models on every picture1 prompt case (the official embedding as input) and on the
 * encoder: outputs identical (the tensors are the same bits, so any difference would be a
 * loading error). */
static void test_whole_float_same_outputs(void) {
    if (!fixture_exists(WHOLE) || !fixture_exists(LEGACY16) ||
        !fixture_exists("reference/picture1/embedding.npy"))
        SKIP("fixtures missing");
    tinysam_model *mw = NULL, *ml = NULL;
    REQUIRE(tinysam_model_load(fixture(WHOLE), &mw) == 0, "%s", tinysam_last_error());
    REQUIRE(tinysam_model_load(fixture(LEGACY16), &ml) == 0, "%s", tinysam_last_error());
    CHECK(mw->sim == NULL, "a float tree has no quantised layers");
    tinysam_image img;
    REQUIRE(tinysam_image_load(fixture("images/picture1.jpg"), 0, &img) == 0, "image");
    tinysam_embedding *ew = NULL, *el = NULL;
    REQUIRE(tinysam_encode(mw, &img, &ew) == 0 && tinysam_encode(ml, &img, &el) == 0, "encode");
    tinysam_image_free(&img);
    CHECK(!memcmp(tinysam_embedding_data(ew), tinysam_embedding_data(el), 256 * 4096 * 4),
          "embeddings differ");
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        char dir[256];
        snprintf(dir, sizeof dir, "reference/picture1/prompts/%s", cases[c]);
        test_prompt_case pc;
        REQUIRE(test_prompt_case_load(dir, 1, &pc) == 0, "%s", tinysam_last_error());
        tinysam_prediction pw, pl;
        REQUIRE(tinysam_predict(mw, ew, &pc.prompt, TINYSAM_PREDICT_MASKS, &pw) == 0, "predict");
        REQUIRE(tinysam_predict(ml, el, &pc.prompt, TINYSAM_PREDICT_MASKS, &pl) == 0, "predict");
        size_t plane = (size_t)pw.width * pw.height;
        CHECK(!memcmp(pw.masks, pl.masks, 3 * plane), "%s: masks differ", cases[c]);
        CHECK(!memcmp(pw.iou, pl.iou, sizeof pw.iou), "%s: IoU differ", cases[c]);
        CHECK(!memcmp(pw.low_res, pl.low_res, 3 * 65536 * sizeof(float)), "%s: low-res differ",
              cases[c]);
        tinysam_prediction_free(&pw);
        tinysam_prediction_free(&pl);
        test_prompt_case_free(&pc);
    }
    tinysam_embedding_free(ew);
    tinysam_embedding_free(el);
    tinysam_model_free(mw);
    tinysam_model_free(ml);
}

/* ------------------------------------------------------------------ a tiny pickle writer */

static void od_begin(pk_buf *o) { /* OrderedDict() then MARK for its items */
    pk_global(o, "collections", "OrderedDict");
    pk_op(o, ')');
    pk_op(o, 'R');
    pk_op(o, '(');
}
static void od_end(pk_buf *o) {
    pk_op(o, 'u');
}
static void od_empty(pk_buf *o) {
    pk_global(o, "collections", "OrderedDict");
    pk_op(o, ')');
    pk_op(o, 'R');
}

/* Storages of the hand-built files: "f" float32 0.5 * i (64 values), "l" int64 (4 values
 * 0, 1, 1, 0: a 2x2 distance table), "z" float32 zeros (8). */
static void ptensor_dims(pk_buf *o, const char *key, int off, int nd, const int *shape) {
    pk_global(o, "torch._utils", "_rebuild_tensor_v2");
    pk_op(o, '(');
    pk_op(o, '(');
    pk_str(o, "storage");
    pk_global(o, "torch", key[0] == 'l' ? "LongStorage" : "FloatStorage");
    pk_str(o, key);
    pk_str(o, "cpu");
    pk_int(o, key[0] == 'f' ? 64 : key[0] == 'l' ? 4 : 8);
    pk_op(o, 'N');
    pk_op(o, 't');
    pk_op(o, 'Q');
    pk_int(o, off);
    pk_op(o, '(');
    for (int i = 0; i < nd; i++) pk_int(o, shape[i]);
    pk_op(o, 't');
    pk_op(o, '(');
    for (int i = 0; i < nd; i++) {
        int st = 1;
        for (int j = i + 1; j < nd; j++) st *= shape[j];
        pk_int(o, st);
    }
    pk_op(o, 't');
    pk_op(o, 0x89);
    od_empty(o);
    pk_op(o, 't');
    pk_op(o, 'R');
}
static void ptensor(pk_buf *o, int off, int rows, int cols) {
    int s[2] = {rows, cols};
    ptensor_dims(o, "f", off, 2, s);
}

/* Starts a module: cls() by NEWOBJ, then its state dict opened with a MARK. */
static void mod_begin(pk_buf *o, const char *mod, const char *cls) {
    pk_global(o, mod, cls);
    pk_op(o, ')');
    pk_op(o, 0x81);
    pk_op(o, '}');
    pk_op(o, '(');
    pk_str(o, "training");
    pk_op(o, 0x89);
}
static void mod_end(pk_buf *o) {
    pk_op(o, 'u');
    pk_op(o, 'b');
}
/* A torch Linear with weight rows x cols from storage offset off and bias None. */
static void linear(pk_buf *o, int off, int rows, int cols) {
    mod_begin(o, "torch.nn.modules.linear", "Linear");
    pk_str(o, "_parameters");
    od_begin(o);
    pk_str(o, "weight");
    pk_global(o, "torch._utils", "_rebuild_parameter");
    ptensor(o, off, rows, cols);
    pk_op(o, 0x88);
    od_empty(o);
    pk_op(o, 0x87);
    pk_op(o, 'R');
    pk_str(o, "bias");
    pk_op(o, 'N');
    od_end(o);
    pk_str(o, "_buffers");
    od_empty(o);
    pk_str(o, "_modules");
    od_empty(o);
    pk_str(o, "in_features");
    pk_int(o, cols);
    mod_end(o);
}

/* The legacy container around a data pickle (already ending in STOP). */
static pk_buf legacy_file(const pk_buf *data) {
    pk_buf o = {0};
    pk_legacy_magic(&o);
    pk_op(&o, 0x80), pk_op(&o, 2), pk_op(&o, '}'), pk_op(&o, '.');
    pk_put(&o, data->b, data->n);
    /* the key list names the storages the data pickle uses (a listed one must be used) */
    int used[3] = {0};
    const char keys[3] = {'f', 'l', 'z'};
    for (size_t i = 0; i + 6 <= data->n; i++)
        for (int k = 0; k < 3; k++)
            if (!memcmp(data->b + i, "X\x01\x00\x00\x00", 5) && data->b[i + 5] == (uint8_t)keys[k])
                used[k] = 1;
    pk_op(&o, 0x80), pk_op(&o, 2), pk_op(&o, ']'), pk_op(&o, '(');
    for (int k = 0; k < 3; k++)
        if (used[k]) {
            char key[2] = {keys[k], 0};
            pk_str(&o, key);
        }
    pk_op(&o, 'e'), pk_op(&o, '.');
    if (used[0]) {
        pk_le(&o, 64, 8);
        for (int i = 0; i < 64; i++) {
            float f = 0.5f * (float)i;
            pk_put(&o, &f, 4);
        }
    }
    if (used[1]) {
        pk_le(&o, 4, 8);
        const int64_t idx[4] = {0, 1, 1, 0};
        pk_put(&o, idx, sizeof idx);
    }
    if (used[2]) {
        pk_le(&o, 8, 8);
        for (int i = 0; i < 8; i++) pk_le(&o, 0, 4);
    }
    return o;
}

static ts_tensor_map *load(const pk_buf *data, int *rc) {
    pk_buf f = legacy_file(data);
    ts_tensor_map *m = NULL;
    *rc = ts_pth_load_memory(f.b, f.n, &m);
    free(f.b);
    return m;
}

static void start(pk_buf *o) {
    o->n = 0;
    pk_op(o, 0x80);
    pk_op(o, 2);
}

/* Root Sam-like module with the given children emitted by fn between its _modules MARK and
 * SETITEMS. */
static void root_begin(pk_buf *o, const char *mod, const char *cls) {
    mod_begin(o, mod, cls);
    pk_str(o, "_parameters");
    od_empty(o);
    pk_str(o, "_buffers");
    od_begin(o);
    pk_str(o, "pixel_mean");
    ptensor(o, 0, 1, 3);
    od_end(o);
    pk_str(o, "_non_persistent_buffers_set");
    pk_global(o, "builtins", "set");
    pk_op(o, ']');
    pk_op(o, '(');
    pk_str(o, "pixel_mean");
    pk_op(o, 'e');
    pk_op(o, 0x85);
    pk_op(o, 'R');
    pk_str(o, "_modules");
    od_begin(o);
}
static void root_end(pk_buf *o) {
    od_end(o);
    mod_end(o);
    pk_op(o, '.');
}

static void test_hand_tree(void) {
    pk_buf o = {0};
    start(&o);
    root_begin(&o, "somewhere.modeling.sam", "Sam");
    pk_str(&o, "lin");
    linear(&o, 4, 2, 3);
    pk_str(&o, "wrap"); /* an unknown class holding nothing itself: a pure container */
    mod_begin(&o, "my.project", "Wrapper");
    pk_str(&o, "_parameters");
    od_empty(&o);
    pk_str(&o, "_modules");
    od_begin(&o);
    pk_str(&o, "inner");
    linear(&o, 10, 1, 2);
    pk_str(&o, "gone");
    pk_op(&o, 'N');
    od_end(&o);
    mod_end(&o);
    root_end(&o);
    int rc;
    ts_tensor_map *m = load(&o, &rc);
    REQUIRE(rc == 0 && m, "load: %s", tinysam_last_error());
    CHECK(!strcmp(m->format, "pth-module"), "format %s", m->format);
    CHECK(m->n == 2, "%d tensors (pixel_mean is non-persistent)", m->n);
    const ts_tensor *a = ts_map_get(m, "lin.weight"), *b = ts_map_get(m, "wrap.inner.weight");
    REQUIRE(a && b, "names");
    const float *fa = a->data, *fb = b->data;
    CHECK(a->shape[0] == 2 && a->shape[1] == 3 && fa[0] == 2.0f && fa[5] == 4.5f, "lin values");
    CHECK(b->numel == 2 && fb[0] == 5.0f && fb[1] == 5.5f, "inner values");
    CHECK(strstr(m->metadata_json, "my.project.Wrapper\\\":1") &&
              strstr(m->metadata_json, "torch.nn.modules.linear.Linear\\\":2"),
          "classes: %s", m->metadata_json);
    ts_map_free(m);
    free(o.b);
}

/* TinyViT attention whose cached ab differs from its parameter (the official eval forward
 * uses ab): the biases become ab's values, ab and the index table are dropped. */
static void attention(pk_buf *o, int ab_key_off, const char *ab_key) {
    mod_begin(o, "tinysam.modeling.tiny_vit_sam", "Attention");
    pk_str(o, "_parameters");
    od_begin(o);
    pk_str(o, "attention_biases");
    ptensor(o, 2, 1, 2); /* [1, 2] = 1.0, 1.5 */
    od_end(o);
    pk_str(o, "_buffers");
    od_begin(o);
    pk_str(o, "attention_bias_idxs");
    int s2[2] = {2, 2}, s3[3] = {1, 2, 2};
    ptensor_dims(o, "l", 0, 2, s2);
    pk_str(o, "ab");
    ptensor_dims(o, ab_key, ab_key_off, 3, s3);
    od_end(o);
    pk_str(o, "_non_persistent_buffers_set");
    pk_global(o, "__builtin__", "set");
    pk_op(o, ']');
    pk_op(o, '(');
    pk_str(o, "ab");
    pk_str(o, "attention_bias_idxs");
    pk_op(o, 'e');
    pk_op(o, 0x85);
    pk_op(o, 'R');
    pk_str(o, "_modules");
    od_empty(o);
    mod_end(o);
}

static void test_hand_ab(void) {
    pk_buf o = {0};
    /* ab = zeros (a model saved before .eval() refreshed it) */
    start(&o);
    root_begin(&o, "m", "TinyViT");
    pk_str(&o, "attn");
    attention(&o, 0, "z");
    root_end(&o);
    int rc;
    ts_tensor_map *m = load(&o, &rc);
    REQUIRE(rc == 0 && m, "load: %s", tinysam_last_error());
    const ts_tensor *b = ts_map_get(m, "attn.attention_biases");
    REQUIRE(b && m->n == 1, "only the biases are left (%d tensors)", m->n);
    CHECK(((float *)b->data)[0] == 0.0f && ((float *)b->data)[1] == 0.0f, "biases = ab");
    ts_map_free(m);
    /* ab = f[0..3] = 0, 0.5, 0.5, 1.5 with idx 0 1 1 0: index 0 would be 0 and 1.5 */
    start(&o);
    root_begin(&o, "m", "TinyViT");
    pk_str(&o, "attn");
    attention(&o, 0, "f");
    root_end(&o);
    m = load(&o, &rc);
    CHECK(rc == TINYSAM_E_FORMAT && !m && strstr(tinysam_last_error(), "not a gather"),
          "inconsistent ab: rc %d %s", rc, tinysam_last_error());
    ts_map_free(m);
    free(o.b);
}

static void expect_refused(const char *label, const pk_buf *data, int want_rc, const char *needle) {
    int rc;
    ts_tensor_map *m = load(data, &rc);
    CHECK(rc == want_rc && !m, "%s: rc %d (want %d): %s", label, rc, want_rc, tinysam_last_error());
    CHECK(!needle || strstr(tinysam_last_error(), needle), "%s: message '%s' lacks '%s'", label,
          tinysam_last_error(), needle);
    ts_map_free(m);
}

static void test_refused(void) {
    pk_buf o = {0};
    /* a class GLOBAL reduced with arguments */
    start(&o);
    pk_global(&o, "tinysam.modeling.sam", "Sam");
    pk_str(&o, "x");
    pk_op(&o, 0x85);
    pk_op(&o, 'R');
    pk_op(&o, '.');
    expect_refused("class REDUCE with arguments", &o, TINYSAM_E_FORMAT, "with arguments");
    /* __reduce__-style payloads: posix.system("..."), builtins.eval, subprocess via getattr */
    const char *const evil[][2] = {{"posix", "system"}, {"builtins", "eval"},
                                   {"subprocess", "check_output"}, {"builtins", "getattr"}};
    for (int i = 0; i < 4; i++) {
        start(&o);
        pk_global(&o, evil[i][0], evil[i][1]);
        pk_str(&o, "touch /tmp/tinysam_pwned");
        pk_op(&o, 0x85);
        pk_op(&o, 'R');
        pk_op(&o, '.');
        expect_refused(evil[i][1], &o, TINYSAM_E_FORMAT, evil[i][1]);
    }
    /* NEWOBJ with arguments, NEWOBJ of a storage class, NEWOBJ_EX with kwargs */
    start(&o);
    pk_global(&o, "torch.nn.modules.linear", "Linear");
    pk_int(&o, 3);
    pk_op(&o, 0x85);
    pk_op(&o, 0x81);
    pk_op(&o, '.');
    expect_refused("NEWOBJ with arguments", &o, TINYSAM_E_FORMAT, "with arguments");
    start(&o);
    pk_global(&o, "torch", "FloatStorage");
    pk_op(&o, ')');
    pk_op(&o, 0x81);
    pk_op(&o, '.');
    expect_refused("NEWOBJ of a storage", &o, TINYSAM_E_FORMAT, "NEWOBJ");
    start(&o);
    pk_global(&o, "m", "Sam");
    pk_op(&o, ')');
    pk_op(&o, '}');
    pk_str(&o, "k");
    pk_int(&o, 1);
    pk_op(&o, 's');
    pk_op(&o, 0x92);
    pk_op(&o, '.');
    expect_refused("NEWOBJ_EX with kwargs", &o, TINYSAM_E_FORMAT, "keyword");
    /* BUILD on a non-object (an int, a tensor, a list), a second BUILD, a non-dict state */
    start(&o);
    pk_int(&o, 5);
    pk_op(&o, '}');
    pk_op(&o, 'b');
    pk_op(&o, '.');
    expect_refused("BUILD on an int", &o, TINYSAM_E_FORMAT, "BUILD");
    start(&o);
    ptensor(&o, 0, 1, 1);
    pk_op(&o, '}');
    pk_op(&o, 'b');
    pk_op(&o, '.');
    expect_refused("BUILD on a tensor", &o, TINYSAM_E_FORMAT, "BUILD");
    start(&o);
    pk_global(&o, "m", "Sam");
    pk_op(&o, ')');
    pk_op(&o, 0x81);
    pk_op(&o, '}');
    pk_op(&o, 'b');
    pk_op(&o, '}');
    pk_op(&o, 'b');
    pk_op(&o, '.');
    expect_refused("BUILD twice", &o, TINYSAM_E_FORMAT, "second state");
    start(&o);
    pk_global(&o, "m", "Sam");
    pk_op(&o, ')');
    pk_op(&o, 0x81);
    pk_int(&o, 1);
    pk_op(&o, 'b');
    pk_op(&o, '.');
    expect_refused("BUILD with an int state", &o, TINYSAM_E_FORMAT, "not a dict");
    /* an object never built (no state) */
    start(&o);
    pk_global(&o, "m", "Sam");
    pk_op(&o, ')');
    pk_op(&o, 0x81);
    pk_op(&o, '.');
    expect_refused("no state", &o, TINYSAM_E_FORMAT, "no state");
    /* deep nesting: 100 containers */
    start(&o);
    for (int d = 0; d < 100; d++) {
        mod_begin(&o, "torch.nn.modules.container", "Sequential");
        pk_str(&o, "_modules");
        od_begin(&o);
        pk_str(&o, "0");
    }
    pk_op(&o, 'N');
    for (int d = 0; d < 100; d++) {
        od_end(&o);
        mod_end(&o);
    }
    pk_op(&o, '.');
    expect_refused("deep nesting", &o, TINYSAM_E_FORMAT, "nested more than");
    /* a cycle: root._modules["again"] = root (memo), built after its state refers to it */
    start(&o);
    pk_global(&o, "m", "Sam");
    pk_op(&o, ')');
    pk_op(&o, 0x81);
    pk_op(&o, 'q'), pk_op(&o, 1); /* BINPUT 1: the object */
    pk_op(&o, '}');
    pk_op(&o, '(');
    pk_str(&o, "_modules");
    od_begin(&o);
    pk_str(&o, "again");
    pk_op(&o, 'h'), pk_op(&o, 1); /* BINGET 1 */
    od_end(&o);
    pk_op(&o, 'u');
    pk_op(&o, 'b');
    pk_op(&o, '.');
    expect_refused("cycle in _modules", &o, TINYSAM_E_FORMAT, "cycle");
    /* an unknown class with its own weight (a LoRA-style wrapper) */
    start(&o);
    root_begin(&o, "m", "Sam");
    pk_str(&o, "lora");
    mod_begin(&o, "peft.tuners.lora", "LoraLinear");
    pk_str(&o, "_parameters");
    od_begin(&o);
    pk_str(&o, "lora_A");
    ptensor(&o, 0, 2, 2);
    od_end(&o);
    pk_str(&o, "_modules");
    od_empty(&o);
    mod_end(&o);
    root_end(&o);
    expect_refused("LoRA wrapper", &o, TINYSAM_E_UNSUPPORTED,
                   "'lora' is of class 'peft.tuners.lora.LoraLinear'");
    /* a submodule that is not a module object */
    start(&o);
    root_begin(&o, "m", "Sam");
    pk_str(&o, "bad");
    pk_int(&o, 7);
    root_end(&o);
    expect_refused("submodule not an object", &o, TINYSAM_E_FORMAT, "not a module object");
    /* set() with something else than a list */
    start(&o);
    pk_global(&o, "builtins", "set");
    pk_int(&o, 1);
    pk_op(&o, 0x85);
    pk_op(&o, 'R');
    pk_op(&o, '.');
    expect_refused("set(int)", &o, TINYSAM_E_FORMAT, "set()");
    free(o.b);
}

/* A quantisation layer with a mode other than raw / quant_forward, or not 8-bit. */
static void test_quant_attrs_refused(void) {
    pk_buf o = {0};
    for (int k = 0; k < 2; k++) {
        start(&o);
        root_begin(&o, "m", "Sam");
        pk_str(&o, "q");
        mod_begin(&o, "quantization_layer.layers", "InferQuantLinear");
        pk_str(&o, "_parameters");
        od_empty(&o);
        pk_str(&o, "_modules");
        od_empty(&o);
        pk_str(&o, "mode");
        pk_str(&o, k ? "quant_forward" : "calibration_step2");
        pk_str(&o, "w_bit");
        pk_int(&o, k ? 4 : 8);
        mod_end(&o);
        root_end(&o);
        expect_refused(k ? "4-bit" : "mode", &o, k ? TINYSAM_E_UNSUPPORTED : TINYSAM_E_FORMAT,
                       k ? "8-bit" : "mode");
    }
    free(o.b);
}

int main(void) {
    RUN(test_hand_tree);
    RUN(test_hand_ab);
    RUN(test_refused);
    RUN(test_quant_attrs_refused);
    RUN(test_whole_float_same_tensors);
    RUN(test_whole_float_same_outputs);
    return test_summary();
}
