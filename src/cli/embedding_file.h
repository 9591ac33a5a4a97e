/* embedding_file.h - an embedding written by `tinysam embed` and read back by
 * `tinysam segment --embedding`: E.npy plus the sidecar E.npy.json holding the
 * original image size and the model's fingerprint, so that a mismatched pair is
 * refused instead of giving silently wrong masks. */
#ifndef TS_CLI_EMBEDDING_FILE_H
#define TS_CLI_EMBEDDING_FILE_H

#include "tinysam.h"

/* SHA-256 over the model's tensors in order (name, dtype, shape and data of
 * each), hex. */
int ts_model_fingerprint(const tinysam_model *m, char hex[65]);
/* Writes npy_path + ".json": {"original_size": [H, W], "input_size": [h, w],
 * "model_sha256": "..."}. */
int ts_embedding_sidecar_write(const char *npy_path, const tinysam_embedding *e,
                               const tinysam_model *m);
/* Loads npy_path (1x256x64x64 or 256x64x64, float32 or float16) and its
 * sidecar, checks the fingerprint against m's, and builds an embedding as
 * tinysam_encode would have made it. */
int ts_embedding_load_checked(const char *npy_path, const tinysam_model *m,
                              tinysam_embedding **out);

#endif
