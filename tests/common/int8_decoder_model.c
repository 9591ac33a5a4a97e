/* int8_decoder_model.c - see int8_decoder_model.h. */
#include "int8_decoder_model.h"

#include "io/tensor_map.h"
#include "model/sam.h"
#include "quant/calibrate_decoder.h"

#include <stdio.h>
#include <unistd.h>

tinysam_model *int8_decoder_model(const tinysam_model *m, const char *tag) {
    ts_dec_quant q = {{0.03f, 0.012f, 0.01f, 0.03f, 0.03f, 0.03f, 0.03f, 0.03f},
                      {128, 14, 14, 128, 128, 128, 128, 128}, {0}, {0}};
    for (int i = 0; i < TS_DEC_N_TOK; i++) { /* the token-side Linears quantize makes int8 */
        char P[128];
        int N, K, relu;
        ts_dec_tok_layer(i, P, sizeof P, &N, &K, &relu);
        if (ts_dec_tok_kept_float(i)) continue;
        q.step[TS_DEC_SITE_TOK0 + i] = relu ? 0.02f : 0.03f;
        q.zp[TS_DEC_SITE_TOK0 + i] = relu ? 0 : 128;
    }
    ts_int8_decoder_view *v;
    char path[256];
    snprintf(path, sizeof path, "/tmp/%s_int8_%d.safetensors", tag, (int)getpid());
    tinysam_model *r = NULL;
    if (ts_int8_decoder_view_new(m->map, &q, &v)) return NULL;
    static const char *keys[] = {"format", "tinysam.bench"};
    static const char *vals[] = {"pt", "int8 decoder"};
    if (!ts_safetensors_save(path, ts_int8_decoder_view_map(v), 2, keys, vals))
        tinysam_model_load(path, &r);
    ts_int8_decoder_view_free(v);
    remove(path);
    return r;
}
