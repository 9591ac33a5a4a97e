/* transforms.h - the predictor's pre- and post-processing, bit-exact with the
 * official pipeline (spec TINYSAM.md section 3). */
#ifndef TS_TRANSFORMS_H
#define TS_TRANSFORMS_H

#include <stdint.h>

/* get_preprocess_shape: long side -> target, (int)(side*scale + 0.5) in double. */
void ts_preprocess_shape(int h, int w, int target, int *newh, int *neww);

/* PIL-exact antialiased bilinear resize of an RGB uint8 image (section 3.3).
 * dst must hold dst_h*dst_w*3 bytes. Returns 0, TINYSAM_E_ARG or TINYSAM_E_NOMEM. */
int ts_resize_rgb_pil(const uint8_t *src, int src_w, int src_h, uint8_t *dst, int dst_w,
                      int dst_h);

/* Normalise (float32 (u - mean) / std) and zero-pad to 3 x 1024 x 1024 CHW (section 3.4). */
void ts_normalize_pad(const uint8_t *resized, int newh, int neww, float *out);

/* apply_coords for one coordinate: x * (neww / W) in double (section 3.5). */
double ts_apply_coord(double v, int new_len, int orig_len);

/* postprocess_masks for one 256x256 logit map (section 3.6): bilinear to 1024x1024,
 * crop to newh x neww, bilinear to H x W, exactly as torch 1.13 (bit-exact). out: H*W
 * floats. Streams rows, so the scratch is small: ts_postprocess_scratch_size(newh, neww,
 * H, W) floats (about 3*neww + 2*W + 4*(newh+neww+H+W)); tmp may be NULL (allocated).
 * Single-threaded and reentrant: callers may run several masks in parallel with
 * separate scratch. Returns 0, TINYSAM_E_ARG or TINYSAM_E_NOMEM. */
long long ts_postprocess_scratch_size(int newh, int neww, int h, int w);
int ts_postprocess_mask(const float *low_res, int newh, int neww, int h, int w, float *out,
                        float *tmp);
/* Output rows [y0, y1) only, written from out (which holds row y0): for splitting one mask
 * over threads. The rows are identical to those of the whole-mask call. */
int ts_postprocess_mask_rows(const float *low_res, int newh, int neww, int h, int w, float *out,
                             int y0, int y1, float *tmp);

/* The taps of one axis of torch's bilinear up-sampling (align_corners=False) used by
 * ts_postprocess_mask, for outputs 0..n-1 of an in -> out axis: each pass computes
 * fmaf(src[i0[o]], l0[o], src[i1[o]] * l1[o]). For code that evaluates chosen pixels of
 * ts_postprocess_mask's output with the same operations (everything/mask_post.c). */
void ts_upsample_taps(int in, int out, int n, int *i0, int *i1, float *l0, float *l1);

#endif
