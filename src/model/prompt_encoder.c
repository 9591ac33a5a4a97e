/* prompt_encoder.c - SAM's prompt encoder (spec TINYSAM.md sections 5.1-5.3).
 * ref: tinysam/modeling/prompt_encoder.py */
#include "core.h"
#include "model/sam_decoder.h"
#include "model/sam_decoder_internal.h"
#include "nn/nn.h"
#include "threads.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TWO_PI_F 6.2831855f /* 2*pi rounded to float32, 0x40C90FDB */

/* PositionEmbeddingRandom._pe_encoding for one normalised (x, y): sines then cosines. */
static void pe_encode(const float *G, float x, float y, float *out) {
    float u = 2.0f * x - 1.0f, v = 2.0f * y - 1.0f;
    for (int k = 0; k < 128; k++) {
        float f = (u * G[k] + v * G[128 + k]) * TWO_PI_F;
        out[k] = sinf(f);
        out[128 + k] = cosf(f);
    }
}

/* get_dense_pe's row i (of 64): cell (i, j) at ((j + 0.5) / 64, (i + 0.5) / 64), in token
 * layout. Rows are independent: the load spreads them over the pool. */
static void dense_pe_row(void *ctx, int i, int tid) {
    (void)tid;
    ts_prompt_encoder *pe = ctx;
    float *row = pe->dense_pe_tok + (size_t)i * 64 * 256;
    for (int j = 0; j < 64; j++)
        pe_encode(pe->gauss, (j + 0.5f) / 64.0f, (i + 0.5f) / 64.0f, row + (size_t)j * 256);
}

static void *dense_pe_thread(void *ctx) {
    for (int i = 0; i < 64; i++) dense_pe_row(ctx, i, 0);
    return NULL;
}

static int prompt_encoder_load(ts_tensor_map *m, ts_prompt_encoder **out, int async) {
    *out = NULL;
    ts_prompt_encoder *pe = ts_calloc(1, sizeof *pe);
    if (!pe) return TINYSAM_E_NOMEM;
    char name[128];
    // clang-format off
    pe->gauss       = ts_map_take(m, "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
                                  2, 2, 128);
    for (int i = 0; i < 4; i++) {
        snprintf(name, sizeof name, "prompt_encoder.point_embeddings.%d.weight", i);
        pe->point_emb[i] = ts_map_take(m, name, 2, 1, 256);
    }
    pe->not_a_point = ts_map_take(m, "prompt_encoder.not_a_point_embed.weight", 2, 1, 256);
    pe->no_mask     = ts_map_take(m, "prompt_encoder.no_mask_embed.weight", 2, 1, 256);
    pe->c0_w = ts_map_take(m, "prompt_encoder.mask_downscaling.0.weight", 4, 4, 1, 2, 2);
    pe->c0_b = ts_map_take(m, "prompt_encoder.mask_downscaling.0.bias", 1, 4);
    pe->n1_w = ts_map_take(m, "prompt_encoder.mask_downscaling.1.weight", 1, 4);
    pe->n1_b = ts_map_take(m, "prompt_encoder.mask_downscaling.1.bias", 1, 4);
    pe->c3_w = ts_map_take(m, "prompt_encoder.mask_downscaling.3.weight", 4, 16, 4, 2, 2);
    pe->c3_b = ts_map_take(m, "prompt_encoder.mask_downscaling.3.bias", 1, 16);
    pe->n4_w = ts_map_take(m, "prompt_encoder.mask_downscaling.4.weight", 1, 16);
    pe->n4_b = ts_map_take(m, "prompt_encoder.mask_downscaling.4.bias", 1, 16);
    pe->c6_w = ts_map_take(m, "prompt_encoder.mask_downscaling.6.weight", 4, 256, 16, 1, 1);
    pe->c6_b = ts_map_take(m, "prompt_encoder.mask_downscaling.6.bias", 1, 256);
    // clang-format on
    const void *all[] = {pe->gauss, pe->point_emb[0], pe->point_emb[1], pe->point_emb[2],
                         pe->point_emb[3], pe->not_a_point, pe->no_mask, pe->c0_w, pe->c0_b,
                         pe->n1_w, pe->n1_b, pe->c3_w, pe->c3_b, pe->n4_w, pe->n4_b, pe->c6_w,
                         pe->c6_b};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        if (!all[i]) {
            free(pe);
            return TINYSAM_E_FORMAT;
        }
    /* get_dense_pe, once: from the file's load cache (the same values, written by this code:
     * io/tensor_map.h) when it has it, else computed */
    const ts_tensor *c = ts_map_cache_get(m, TS_CACHE_DENSE_PE);
    if (c && c->dtype == TS_DTYPE_F32 && c->ndim == 2 && c->shape[0] == 4096 &&
        c->shape[1] == 256 && ((uintptr_t)c->data & 63) == 0) {
        pe->dense_pe_tok = c->data;
        pe->dense_pe_cached = 1;
        *out = pe;
        return 0;
    }
    pe->dense_pe_tok = ts_malloc_aligned(sizeof(float) * 4096 * 256);
    if (!pe->dense_pe_tok) {
        ts_prompt_encoder_free(pe);
        return TINYSAM_E_NOMEM;
    }
    /* the same rows, the same code: on a thread of its own, or over the pool */
    if (async && pthread_create(&pe->pe_thread, NULL, dense_pe_thread, pe) == 0)
        pe->dense_pe_pending = 1;
    else
        ts_parallel_for(64, dense_pe_row, pe);
    *out = pe;
    return 0;
}

int ts_prompt_encoder_load(ts_tensor_map *m, ts_prompt_encoder **out) {
    return prompt_encoder_load(m, out, 0);
}

int ts_prompt_encoder_load_async(ts_tensor_map *m, ts_prompt_encoder **out) {
    return prompt_encoder_load(m, out, 1);
}

void ts_prompt_encoder_ready(ts_prompt_encoder *pe) {
    if (pe && pe->dense_pe_pending) {
        pthread_join(pe->pe_thread, NULL);
        pe->dense_pe_pending = 0;
    }
}

void ts_prompt_encoder_free(ts_prompt_encoder *pe) {
    if (!pe) return;
    ts_prompt_encoder_ready(pe);
    if (!pe->dense_pe_cached) ts_free_aligned(pe->dense_pe_tok);
    free(pe);
}

const float *ts_prompt_dense_pe(const ts_prompt_encoder *pe) {
    return pe->dense_pe_tok;
}

void ts_prompt_sparse(const ts_prompt_encoder *pe, const ts_prompt_set *s, float *out, int *k) {
    int n = 0;
    /* points, then the padding point when there is no box; no points at all (box or mask
     * input only) means no point tokens, as _embed_points is then not called */
    for (int i = 0; s->n_points > 0 && i <= s->n_points; i++) {
        int pad = i == s->n_points;
        if (pad && s->has_box) break;
        int label = pad ? -1 : s->labels[i];
        float *e = out + (size_t)n++ * 256;
        if (label == -1) {
            memcpy(e, pe->not_a_point, 256 * sizeof(float));
            continue;
        }
        pe_encode(pe->gauss, s->coords[2 * i], s->coords[2 * i + 1], e);
        if (label == 0 || label == 1)
            for (int c = 0; c < 256; c++) e[c] += pe->point_emb[label][c];
    }
    if (s->has_box)
        for (int corner = 0; corner < 2; corner++) {
            float *e = out + (size_t)n++ * 256;
            pe_encode(pe->gauss, s->box[2 * corner], s->box[2 * corner + 1], e);
            for (int c = 0; c < 256; c++) e[c] += pe->point_emb[2 + corner][c];
        }
    *k = n;
}

/* LayerNorm2d over C channels of an HWC pixel, eps 1e-6, true division. */
static void ln2d_pixel(float *x, int C, const float *w, const float *b) {
    float u = 0.0f, s = 0.0f;
    for (int c = 0; c < C; c++) u += x[c];
    u /= (float)C;
    for (int c = 0; c < C; c++) s += (x[c] - u) * (x[c] - u);
    s /= (float)C;
    float d = sqrtf(s + 1e-6f);
    for (int c = 0; c < C; c++) x[c] = w[c] * ((x[c] - u) / d) + b[c];
}

static float gelu1(float x) {
    return x * 0.5f * (1.0f + erff(x * 0.70710678118654752f));
}

int ts_prompt_dense(const ts_prompt_encoder *pe, const float *mask, float *out) {
    float *scratch = NULL;
    if (mask && !(scratch = malloc(sizeof(float) * TS_PROMPT_DENSE_SCRATCH)))
        return ts_error(TINYSAM_E_NOMEM, "out of memory");
    ts_prompt_dense_ws(pe, mask, out, scratch);
    free(scratch);
    return 0;
}

void ts_prompt_dense_ws(const ts_prompt_encoder *pe, const float *mask, float *out,
                        float *scratch) {
    if (!mask) {
        for (int c = 0; c < 256; c++)
            for (int i = 0; i < 4096; i++) out[(size_t)c * 4096 + i] = pe->no_mask[c];
        return;
    }
    /* mask_downscaling: conv 1->4 k2s2, LN2d, GELU, conv 4->16 k2s2, LN2d, GELU, conv 16->256 */
    float *a = scratch, *b = scratch + 128 * 128 * 4;
    for (int y = 0; y < 128; y++)
        for (int x = 0; x < 128; x++) {
            float *p = a + (size_t)(y * 128 + x) * 4;
            for (int o = 0; o < 4; o++) {
                float acc = pe->c0_b[o];
                for (int ky = 0; ky < 2; ky++)
                    for (int kx = 0; kx < 2; kx++)
                        acc += mask[(2 * y + ky) * 256 + 2 * x + kx] *
                               pe->c0_w[o * 4 + ky * 2 + kx];
                p[o] = acc;
            }
            ln2d_pixel(p, 4, pe->n1_w, pe->n1_b);
            for (int o = 0; o < 4; o++) p[o] = gelu1(p[o]);
        }
    for (int y = 0; y < 64; y++)
        for (int x = 0; x < 64; x++) {
            float *p = b + (size_t)(y * 64 + x) * 16;
            for (int o = 0; o < 16; o++) {
                float acc = pe->c3_b[o];
                for (int c = 0; c < 4; c++)
                    for (int ky = 0; ky < 2; ky++)
                        for (int kx = 0; kx < 2; kx++)
                            acc += a[(size_t)((2 * y + ky) * 128 + 2 * x + kx) * 4 + c] *
                                   pe->c3_w[((o * 4 + c) * 2 + ky) * 2 + kx];
                p[o] = acc;
            }
            ln2d_pixel(p, 16, pe->n4_w, pe->n4_b);
            for (int o = 0; o < 16; o++) p[o] = gelu1(p[o]);
        }
    /* the 1x1 conv 16 -> 256 as one GEMM, written channel-major: out = W b^T + bias */
    ts_gemm(256, 4096, 16, pe->c6_w, 16, b, 16, 1, out, 4096, 0.0f);
    for (int o = 0; o < 256; o++)
        for (int i = 0; i < 4096; i++) out[(size_t)o * 4096 + i] += pe->c6_b[o];
}
