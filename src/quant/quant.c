/* quant.c - the quantisers and scale searches of quant.h. */
#include "quant/quant.h"
#include "core.h"
#include "nn/nn.h"

#include <math.h>
#include <stdlib.h>

/* round-half-even of r already rounded, clamped to [lo, hi] in float (no out-of-range
 * float -> int conversion); NaN gives 0 clamped into the range. */
static int clamp_code(float r, int lo, int hi) {
    if (r != r) r = 0.0f;
    if (r < (float)lo) return lo;
    if (r > (float)hi) return hi;
    return (int)r;
}

static int qround(float x, float step, int lo, int hi) {
    return clamp_code(nearbyintf(x / step), lo, hi);
}

/* ---- weights ---------------------------------------------------------------------------- */

void ts_quant_weights_scaled(const float *W, int N, int K, int ldw, const float *scale,
                             int8_t *Wq) {
    for (int n = 0; n < N; n++) {
        const float *w = W + (size_t)n * ldw;
        int8_t *q = Wq + (size_t)n * K;
        float s = scale[n];
        for (int k = 0; k < K; k++)
            q[k] = (int8_t)(s > 0.0f ? qround(w[k], s, -TS_QW_MAX, TS_QW_MAX) : 0);
    }
}

void ts_quant_weights(const float *W, int N, int K, int ldw, int8_t *Wq, float *scale) {
    for (int n = 0; n < N; n++) {
        const float *w = W + (size_t)n * ldw;
        float mx = 0.0f;
        for (int k = 0; k < K; k++) mx = fmaxf(mx, fabsf(w[k]));
        scale[n] = mx > 0.0f && isfinite(mx) ? mx / (float)TS_QW_MAX : 1.0f;
    }
    ts_quant_weights_scaled(W, N, K, ldw, scale, Wq);
}

/* ---- element quantisers ----------------------------------------------------------------- */

int ts_quant_sym(float x, float step, int qmin, int qmax) {
    return qround(x, step, qmin, qmax);
}

int ts_quant_asym(float x, float step, float bias) {
    return qround(x - bias, step, -128, 127);
}

float ts_dequant_asym(int q, float step, float bias) {
    return (float)q * step + bias;
}

int ts_quant_u8(float x, float step) {
    return qround(x, step, 0, 255);
}

uint8_t ts_quant_u8_range(float x, float step, int zp, int qlo, int qhi) {
    return (uint8_t)(qround(x, step, qlo, qhi) + zp);
}

uint8_t ts_quant_u8_zp(float x, float step, int zp) {
    return ts_quant_u8_range(x, step, zp, -zp, 255 - zp);
}

void ts_twin_gelu_quant(float x, float step_pos, int *qp, int *qn) {
    *qp = qround(x, step_pos, 0, 127);
    *qn = qround(x, TS_TWIN_GELU_NEG_STEP, -128, 0);
}

float ts_twin_gelu_dequant(int qp, int qn, float step_pos) {
    return (float)qp * step_pos + (float)qn * TS_TWIN_GELU_NEG_STEP;
}

float ts_twin_gelu_fq(float x, float step_pos) {
    int qp, qn;
    ts_twin_gelu_quant(x, step_pos, &qp, &qn);
    return ts_twin_gelu_dequant(qp, qn, step_pos);
}

static float clampf(float x, float lo, float hi) {
    return x < lo ? lo : x > hi ? hi : x; /* torch.clamp; NaN passes through */
}

void ts_twin_softmax_quant(float x, float split, float step_lo, int *q_hi, int *q_lo) {
    *q_hi = clamp_code(nearbyintf(clampf(x, split, 1.0f) * 127.0f), 0, 127);
    *q_lo = qround(clampf(x, 0.0f, split), step_lo, 0, 127);
}

void ts_twin_softmax_quant_region(float x, float split, float step_lo, int *q_hi, int *q_lo) {
    if (x >= split) {
        *q_hi = clamp_code(nearbyintf(clampf(x, split, 1.0f) * 127.0f), 0, 127);
        *q_lo = 0;
    } else {
        *q_hi = 0;
        *q_lo = qround(clampf(x, 0.0f, split), step_lo, 0, 127);
    }
}

float ts_twin_softmax_dequant(int q_hi, int q_lo, float step_lo) {
    return (float)q_hi / 127.0f + (float)q_lo * step_lo;
}

float ts_twin_softmax_fq(float x, float split, float step_lo) {
    int qh, ql;
    ts_twin_softmax_quant(x, split, step_lo, &qh, &ql);
    return ts_twin_softmax_dequant(qh, ql, step_lo);
}

/* ---- arrays ------------------------------------------------------------------------------ */

void ts_fq_sym(float *x, size_t n, float step, int qmin, int qmax) {
    for (size_t i = 0; i < n; i++) x[i] = (float)qround(x[i], step, qmin, qmax) * step;
}

void ts_fq_asym(float *x, size_t n, float step, float bias) {
    for (size_t i = 0; i < n; i++)
        x[i] = ts_dequant_asym(ts_quant_asym(x[i], step, bias), step, bias);
}

void ts_fq_u8(float *x, size_t n, float step) {
    for (size_t i = 0; i < n; i++) x[i] = (float)ts_quant_u8(x[i], step) * step;
}

void ts_fq_twin_gelu(float *x, size_t n, float step_pos) {
    for (size_t i = 0; i < n; i++) x[i] = ts_twin_gelu_fq(x[i], step_pos);
}

void ts_fq_twin_softmax(float *x, size_t n, float split, float step_lo) {
    for (size_t i = 0; i < n; i++) x[i] = ts_twin_softmax_fq(x[i], split, step_lo);
}

/* ---- scale searches ---------------------------------------------------------------------- */

float ts_quant_search_step_mse(const float *x, size_t n, int qmin, int qmax, int n_grid,
                               float lo_ratio, double *mse) {
    float range = 0.0f;
    for (size_t i = 0; i < n; i++) {
        float v = qmin < 0 ? fabsf(x[i]) : x[i];
        if (v > range) range = v; /* NaN never wins */
    }
    if (!(range > 0.0f) || !isfinite(range) || qmax <= 0) {
        if (mse) *mse = 0.0;
        return 1.0f;
    }
    if (n_grid < 1) n_grid = 1;
    float best_step = range / (float)qmax;
    double best = INFINITY;
    for (int g = 0; g < n_grid; g++) {
        float r =
            n_grid == 1 ? 1.0f : lo_ratio + (1.0f - lo_ratio) * (float)g / (float)(n_grid - 1);
        float step = r * range / (float)qmax;
        if (!(step > 0.0f)) continue;
        double e = 0.0;
        for (size_t i = 0; i < n; i++) {
            double d = (double)((float)qround(x[i], step, qmin, qmax) * step) - (double)x[i];
            e += d * d;
        }
        if (e < best) {
            best = e;
            best_step = step;
        }
    }
    if (mse) *mse = n ? best / (double)n : 0.0;
    return best_step;
}

int ts_quant_search_step_layer(const float *X, int n, int k, const float *W, int m,
                               const float *w_scale, const float *cand, int n_cand, int qmin,
                               int qmax, double *err) {
    if (!X || !W || !cand || n <= 0 || k <= 0 || m <= 0 || n_cand <= 0)
        return ts_error(TINYSAM_E_ARG, "ts_quant_search_step_layer: bad arguments");
    size_t nk = (size_t)n * k, km = (size_t)k * m, nm = (size_t)n * m;
    float *Wd = ts_malloc(sizeof(float) * km);
    float *Xq = ts_malloc(sizeof(float) * nk);
    float *Y = ts_malloc(sizeof(float) * nm), *Yq = ts_malloc(sizeof(float) * nm);
    int best = TINYSAM_E_NOMEM;
    if (!Wd || !Xq || !Y || !Yq) goto done;
    /* deq(q(W)), per output column */
    for (int j = 0; j < m; j++) {
        float s;
        if (w_scale) {
            s = w_scale[j];
        } else {
            float mx = 0.0f;
            for (int i = 0; i < k; i++) mx = fmaxf(mx, fabsf(W[(size_t)i * m + j]));
            s = mx > 0.0f ? mx / (float)TS_QW_MAX : 1.0f;
        }
        for (int i = 0; i < k; i++) {
            size_t o = (size_t)i * m + j;
            Wd[o] = s > 0.0f ? (float)qround(W[o], s, -TS_QW_MAX, TS_QW_MAX) * s : 0.0f;
        }
    }
    ts_gemm(n, m, k, X, k, W, m, 0, Y, m, 0.0f);
    double best_e = INFINITY;
    best = 0;
    for (int c = 0; c < n_cand; c++) {
        for (size_t i = 0; i < nk; i++) Xq[i] = X[i];
        ts_fq_sym(Xq, nk, cand[c], qmin, qmax);
        ts_gemm(n, m, k, Xq, k, Wd, m, 0, Yq, m, 0.0f);
        double e = 0.0;
        for (size_t i = 0; i < nm; i++) {
            double d = (double)Yq[i] - (double)Y[i];
            e += d * d;
        }
        if (e < best_e) {
            best_e = e;
            best = c;
        }
    }
    if (err) *err = best_e;
done:
    free(Wd);
    free(Xq);
    free(Y);
    free(Yq);
    if (best == TINYSAM_E_NOMEM) return ts_error(TINYSAM_E_NOMEM, "ts_quant_search_step_layer");
    return best;
}
