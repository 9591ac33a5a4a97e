/* module_tree.h - whole-model pickles (torch.save(model)): what pth.c's module-tree reader
 * adds to a tensor map, and the helpers it uses (module_tree.c).
 *
 * A map loaded from such a file has format "pth-module" and metadata_json (the same shape as
 * a safetensors __metadata__ object, all values strings):
 *   "tinysam.source":        "pth-module"
 *   "tinysam.module_classes": JSON object text, "module.Class" -> count of modules
 *   "tinysam.quant_layers":   JSON object text, module path -> "Class mode" for each of the
 *                             quantisation layers (InferQuantLinear, InferQuantLinearPost,
 *                             InferQuantConv2d, InferQuantConvTranspose2d; mode "raw" or
 *                             "quant_forward"); their steps are tensors "path.w_interval" etc.
 * The quantisation metadata travels into a converted safetensors file unchanged. */
#ifndef TS_MODULE_TREE_H
#define TS_MODULE_TREE_H

#include "io/tensor_map.h"

/* Whether cls (a bare class name) is one of the four quantisation classes. */
int ts_module_is_quant_class(const char *cls);

/* For each "X.ab" of m (TinyViT attention's cached biases, as the official eval forward uses
 * them): checks that it is a gather of one value per distance by "X.attention_bias_idxs",
 * makes "X.attention_biases" hold those values, and removes ab and the index table from m.
 * E_FORMAT when ab is not such a gather. */
int ts_module_fold_ab(ts_tensor_map *m, const char *what);

#endif
