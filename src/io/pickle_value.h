/* pickle_value.h - the values of pth.c's pickle interpreter, shared with module_tree.c
 * (which flattens an unpickled nn.Module tree into a state dict). Internal to src/io. */
#ifndef TS_PICKLE_VALUE_H
#define TS_PICKLE_VALUE_H

#include "io/tensor_map.h"

#include <stdint.h>

typedef enum {
    V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_TUPLE, V_LIST, V_DICT, V_GLOBAL, V_STORAGE, V_TENSOR,
    V_OBJECT /* an instance of a class GLOBAL, built without arguments; its BUILD state */
} vkind;

/* G_CLASS: any GLOBAL outside the allow-list, an opaque name that is never resolved. */
typedef enum {
    G_ORDERED_DICT, G_REBUILD_TENSOR, G_REBUILD_PARAMETER, G_STORAGE, G_SET, G_CLASS
} gkind;

typedef struct {
    int64_t offset, ndim, shape[TS_MAX_DIMS], stride[TS_MAX_DIMS];
} tgeom;

typedef struct val val;
struct val {
    vkind kind;
    gkind g;                /* GLOBAL */
    ts_dtype dtype;         /* GLOBAL storage class, STORAGE, TENSOR */
    int n, cap;             /* items in TUPLE/LIST/DICT (a DICT stores key, value alternately) */
    int64_t i;              /* INT, BOOL; STORAGE: element count; GLOBAL G_CLASS and OBJECT:
                             * offset of the class name in s */
    double f;               /* FLOAT; INT from LONG1: its byte length */
    char *s;                /* STR (NUL-terminated, length in n); STORAGE: key; G_CLASS and
                             * OBJECT: "module.Class" */
    val **items;
    val *storage;           /* TENSOR */
    tgeom *geo;             /* TENSOR */
    val *state;             /* OBJECT: the dict BUILD gave it, or NULL */
    int mark;               /* OBJECT: on the current path of the flattening walk */
};

/* One state-dict entry of a flattened module tree. */
typedef struct {
    char *name;
    const val *tensor;
} ts_flat_entry;

typedef struct {
    ts_flat_entry *e;
    int n, cap;
    char *metadata_json; /* {"tinysam.source": "pth-module", "tinysam.module_classes": ...,
                          *  "tinysam.quant_layers": ...}: JSON object of strings */
} ts_flat;

/* Flattens the module tree rooted at obj (an OBJECT) into f (names "prefix.name" through
 * _modules, _parameters then _buffers, as Module.state_dict; plus TinyViT attention's
 * non-persistent ab / attention_bias_idxs, see module_tree.c). what names the file in
 * messages. */
int ts_module_tree_flatten(const val *obj, const char *what, ts_flat *f);
void ts_flat_free(ts_flat *f);

#endif
