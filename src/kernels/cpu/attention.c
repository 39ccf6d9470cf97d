// attention.c — ATTENTION on the CPU (the oracle): one kv head of one layer for every row of the
// batch. Appends the rows' k/v to the paged cache, then runs causal softmax attention for the G
// query heads of the group with an online (running max / running sum) softmax, so no buffer of
// sequence length is needed.
#include "matvec.h"

// Positions whose scores are computed together before the running softmax is updated.
#define SCORE_BLOCK 64

// ---- per-head preparation --------------------------------------------------------------------

// dst = RoPE(RMSNorm(x)) for one head of D elements, each step rounded to bf16 as a bf16 model
// stores it. RMSNorm when norm_w != NULL: x * rsqrt(mean(x^2) + eps) * norm_w. RoPE
// (rotate-half) when inv_freq != NULL: with a_i = pos * inv_freq[i] for i < D/2,
//   dst[i]       = x[i] cos a_i - x[i + D/2] sin a_i
//   dst[i + D/2] = x[i + D/2] cos a_i + x[i] sin a_i.
static void prepare_head(const mpk_bf16 *x, const mpk_bf16 *norm_w, const float *inv_freq,
                         int32_t pos, int32_t D, float eps, float *dst) {
    float t[MPK_ATTENTION_MAX_HEAD_DIM];  // (D) after the norm
    if (norm_w) {
        float scale = mpk_cpu_rms_scale(x, D, eps);
        for (int32_t d = 0; d < D; d++) t[d] = mpk_cpu_rms_elem(x[d], scale, norm_w[d]);
    } else {
        for (int32_t d = 0; d < D; d++) t[d] = mpk_bf16_to_f32(x[d]);
    }
    if (!inv_freq) {
        memcpy(dst, t, sizeof *dst * (size_t)D);
        return;
    }
    int32_t half = D / 2;
    for (int32_t i = 0; i < half; i++) {
        float a = (float)pos * inv_freq[i];
        float c = cosf(a), s = sinf(a);
        float x1 = t[i], x2 = t[i + half];
        dst[i] = mpk_round_bf16(x1 * c - x2 * s);
        dst[i + half] = mpk_round_bf16(x2 * c + x1 * s);
    }
    if (D % 2) dst[D - 1] = t[D - 1];  // an odd D (rejected by the layer) keeps its last element
}

// Where position p of a row's request lives in this head's cache, or -1 when the batch does not
// map it (never for a batch from mpk_batch_prepare; checked so a bad blob cannot write wildly).
static int64_t cache_offset(const mpk_batch *batch, const int32_t *page_table, int32_t p,
                            int32_t D, int32_t page_size, int64_t page_stride) {
    if (p < 0 || page_size <= 0 || p / page_size >= batch->max_pages_per_request) return -1;
    int32_t page = page_table[p / page_size];
    if (page < 0 || page >= batch->num_pages) return -1;
    return (int64_t)page * page_stride + (int64_t)(p % page_size) * D;
}

// The page table of row r's request.
static const int32_t *row_page_table(const mpk_batch *batch, int32_t r) {
    const int32_t *row_entry = MPK_BATCH_CARRAY(batch, off_row_entry, int32_t);
    const int32_t *entry_slot = MPK_BATCH_CARRAY(batch, off_entry_slot, int32_t);
    return MPK_BATCH_CARRAY(batch, off_page_table, int32_t) +
           (int64_t)entry_slot[row_entry[r]] * batch->max_pages_per_request;
}

static float dot(const float *q, const mpk_bf16 *k, int32_t D) {
    float acc[MPK_CPU_LANES] = {0};
    mpk_cpu_dot_accumulate(acc, q, k, D);
    return mpk_cpu_lane_sum(acc);
}

// ---- attention ---------------------------------------------------------------------------------

// Where attend finds the keys and values of this batch's own positions when it does not read
// them from the cache (a task that does not append them): row r's request has its positions of
// this batch in rows r - (pos - t) for t <= pos, as mpk_batch_prepare lays rows out.
typedef struct fresh_kv {
    const mpk_bf16 *qkv;  // the head group's columns of row 0; k at + G * D, v at + (G + 1) * D
    const mpk_bf16 *k_norm;
    const float *inv_freq;
    int32_t ld_qkv, G, r;  // r: the attending row
    float eps;
    const mpk_batch *batch;
} fresh_kv;

// The row of this batch that holds position t of row f->r's request, or -1.
static int32_t fresh_row(const fresh_kv *f, int32_t pos, int32_t t) {
    const int32_t *row_entry = MPK_BATCH_CARRAY(f->batch, off_row_entry, int32_t);
    const int32_t *row_pos = MPK_BATCH_CARRAY(f->batch, off_row_pos, int32_t);
    int32_t rr = f->r - (pos - t);
    if (rr < 0 || row_entry[rr] != row_entry[f->r] || row_pos[rr] != t) return -1;
    return rr;
}

// The online softmax of q . k_t * scale over t in [t0, t1), unnormalised: *m the running max,
// *l the sum of exp(score - m), acc (D) the sum of exp(score - m) v_t (m = -inf, l = 0 when no
// position was attendable). Scores are taken in blocks: the running max and sum are rescaled once
// per block. With f, this batch's positions come from qkv (the key prepared exactly as the cache
// holds it) instead of the cache; pos is the attending row's position.
static void attend_range(const float *q, const mpk_bf16 *k_cache, const mpk_bf16 *v_cache,
                         const mpk_batch *batch, const int32_t *page_table, int32_t pos, int32_t t0,
                         int32_t t1, int32_t D, int32_t page_size, int64_t page_stride, float scale,
                         const fresh_kv *f, float *acc, float *m_out, float *l_out) {
    float sc[SCORE_BLOCK];
    const mpk_bf16 *vp[SCORE_BLOCK];
    float m = -INFINITY, l = 0.0f;
    for (int32_t d = 0; d < D; d++) acc[d] = 0.0f;
    for (int32_t tb = t0; tb < t1; tb += SCORE_BLOCK) {
        int32_t nb = t1 - tb < SCORE_BLOCK ? t1 - tb : SCORE_BLOCK;
        float bm = -INFINITY;
        for (int32_t i = 0; i < nb; i++) {
            int32_t rr = f ? fresh_row(f, pos, tb + i) : -1;
            if (rr >= 0) {
                const mpk_bf16 *kr = f->qkv + (int64_t)rr * f->ld_qkv + (int64_t)f->G * D;
                float kf[MPK_ATTENTION_MAX_HEAD_DIM];
                mpk_bf16 kb[MPK_ATTENTION_MAX_HEAD_DIM];
                prepare_head(kr, f->k_norm, f->inv_freq, tb + i, D, f->eps, kf);
                for (int32_t d = 0; d < D; d++) kb[d] = mpk_f32_to_bf16(kf[d]);
                vp[i] = kr + D;
                sc[i] = dot(q, kb, D) * scale;
            } else {
                int64_t off = cache_offset(batch, page_table, tb + i, D, page_size, page_stride);
                vp[i] = off < 0 ? NULL : v_cache + off;
                sc[i] = off < 0 ? -INFINITY : dot(q, k_cache + off, D) * scale;
            }
            if (sc[i] > bm) bm = sc[i];
        }
        if (!(bm > m)) bm = m;  // the new running maximum (NaN scores leave it alone)
        if (bm == -INFINITY) continue;  // nothing attendable yet
        float corr = expf(m - bm);  // 0 on the first block (m = -inf)
        l *= corr;
        for (int32_t d = 0; d < D; d++) acc[d] *= corr;
        m = bm;
        for (int32_t i = 0; i < nb; i++) {
            if (!vp[i]) continue;
            float p = expf(sc[i] - m);
            const mpk_bf16 *v = vp[i];
            l += p;
            for (int32_t d = 0; d < D; d++) acc[d] += p * mpk_bf16_to_f32(v[d]);
        }
    }
    *m_out = m;
    *l_out = l;
}

// softmax(q . k_t * scale) over t in [0, pos], times v_t, into out (D).
static void attend(const float *q, const mpk_bf16 *k_cache, const mpk_bf16 *v_cache,
                   const mpk_batch *batch, const int32_t *page_table, int32_t pos, int32_t D,
                   int32_t page_size, int64_t page_stride, float scale, const fresh_kv *f,
                   mpk_bf16 *out) {
    float acc[MPK_ATTENTION_MAX_HEAD_DIM];  // (D) sum of p_t v_t at the running max
    float m, l;
    attend_range(q, k_cache, v_cache, batch, page_table, pos, 0, pos + 1, D, page_size, page_stride,
                 scale, f, acc, &m, &l);
    float inv = l > 0.0f ? 1.0f / l : NAN;  // NaN when no position was readable: loud, not silent
    for (int32_t d = 0; d < D; d++) out[d] = mpk_f32_to_bf16(acc[d] * inv);
}

// Appends every row's k (normalised, rotated, rounded) and v to the cache.
static void append_rows(const mpk_bf16 *qkv, mpk_bf16 *k_cache, mpk_bf16 *v_cache,
                        const mpk_bf16 *k_norm, const float *inv_freq, const mpk_batch *batch,
                        int32_t G, int32_t D, int32_t ld_qkv, int32_t page_size,
                        int64_t page_stride, float eps) {
    const int32_t *row_pos = MPK_BATCH_CARRAY(batch, off_row_pos, int32_t);
    float buf[MPK_ATTENTION_MAX_HEAD_DIM];
    for (int32_t r = 0; r < batch->num_tokens; r++) {
        int64_t off = cache_offset(batch, row_page_table(batch, r), row_pos[r], D, page_size, page_stride);
        if (off < 0) continue;
        const mpk_bf16 *k = qkv + (int64_t)r * ld_qkv + (int64_t)G * D;  // (D), then v (D)
        prepare_head(k, k_norm, inv_freq, row_pos[r], D, eps, buf);
        for (int32_t d = 0; d < D; d++) k_cache[off + d] = mpk_f32_to_bf16(buf[d]);
        memcpy(v_cache + off, k + D, sizeof *v_cache * (size_t)D);
    }
}

// The G query heads of every row into out (row stride ld_out), after the rows' keys are in the
// cache, or, with fresh, with this batch's positions read from qkv instead (fresh_kv).
static void attend_rows(const mpk_bf16 *qkv, const mpk_bf16 *k_cache, const mpk_bf16 *v_cache,
                        const mpk_bf16 *q_norm, const mpk_bf16 *k_norm, const float *inv_freq,
                        const mpk_batch *batch, int32_t G, int32_t D, int32_t ld_qkv,
                        int32_t page_size, int64_t page_stride, float eps, float scale, int fresh,
                        mpk_bf16 *out, int32_t ld_out) {
    const int32_t *row_pos = MPK_BATCH_CARRAY(batch, off_row_pos, int32_t);
    float buf[MPK_ATTENTION_MAX_HEAD_DIM];  // (D) the q head being prepared
    for (int32_t r = 0; r < batch->num_tokens; r++) {
        const int32_t *pt = row_page_table(batch, r);
        fresh_kv f = {qkv, k_norm, inv_freq, ld_qkv, G, r, eps, batch};
        for (int32_t g = 0; g < G; g++) {
            const mpk_bf16 *q = qkv + (int64_t)r * ld_qkv + (int64_t)g * D;  // (D)
            prepare_head(q, q_norm, inv_freq, row_pos[r], D, eps, buf);
            attend(buf, k_cache, v_cache, batch, pt, row_pos[r], D, page_size, page_stride, scale,
                   fresh ? &f : NULL, out + (int64_t)r * ld_out + (int64_t)g * D);
        }
    }
}

// ---- attention split over positions (task.h: mpk_attention_split_range) -----------------------

// Split sp->s of the only row's attention: positions [t0, t1) into the split's slot of the head's
// workspace; the last of the A active splits to arrive combines their slots into out.
static void attend_split(const mpk_bf16 *qkv, const mpk_bf16 *k_cache, const mpk_bf16 *v_cache,
                         const mpk_bf16 *q_norm, const float *inv_freq, const mpk_batch *batch,
                         int32_t G, int32_t D, int32_t page_size, int64_t page_stride, float eps,
                         float scale, int32_t t0, int32_t t1, int32_t A,
                         const mpk_attention_split *sp, mpk_bf16 *out) {
    const int32_t *pt = row_page_table(batch, 0);
    const int32_t pos = MPK_BATCH_CARRAY(batch, off_row_pos, int32_t)[0];
    const int64_t unit = D + 2;  // acc[D], max, sum
    float *slots = sp->ws + MPK_ATTENTION_SPLIT_HEADER;  // (S, G, D + 2)
    float q[MPK_ATTENTION_MAX_HEAD_DIM];
    for (int32_t g = 0; g < G; g++) {
        float *u = slots + ((int64_t)sp->s * G + g) * unit;
        prepare_head(qkv + (int64_t)g * D, q_norm, inv_freq, pos, D, eps, q);
        attend_range(q, k_cache, v_cache, batch, pt, pos, t0, t1, D, page_size, page_stride, scale,
                     NULL, u, &u[D], &u[D + 1]);
    }
    // The ticket: acq_rel, so the last arrival sees every split's slot.
    uint32_t *ticket = (uint32_t *)sp->ws;
    if (__atomic_fetch_add(ticket, 1u, __ATOMIC_ACQ_REL) != (uint32_t)A - 1) return;
    for (int32_t g = 0; g < G; g++) {
        float M = -INFINITY;
        for (int32_t s = 0; s < A; s++) M = fmaxf(M, slots[((int64_t)s * G + g) * unit + D]);
        float acc[MPK_ATTENTION_MAX_HEAD_DIM] = {0}, den = 0.0f;
        for (int32_t s = 0; s < A; s++) {
            const float *u = slots + ((int64_t)s * G + g) * unit;
            if (!(u[D + 1] > 0.0f)) continue;  // the split attended to nothing
            const float f = expf(u[D] - M);
            den += f * u[D + 1];
            for (int32_t d = 0; d < D; d++) acc[d] += f * u[d];
        }
        const float inv = den > 0.0f ? 1.0f / den : NAN;
        for (int32_t d = 0; d < D; d++) out[(int64_t)g * D + d] = mpk_f32_to_bf16(acc[d] * inv);
    }
    __atomic_store_n(ticket, 0u, __ATOMIC_RELEASE);  // for the next iteration (ordered by its events)
}

void mpk_attention_cpu(const mpk_bf16 *qkv, mpk_bf16 *k_cache, mpk_bf16 *v_cache,
                       const mpk_bf16 *q_norm, const mpk_bf16 *k_norm, const float *inv_freq,
                       mpk_bf16 *out, const mpk_batch *batch, int32_t G, int32_t D,
                       int32_t ld_qkv, int32_t ld_out, int32_t page_size, int64_t page_stride,
                       float eps, float scale, const mpk_attention_split *split) {
    if (G <= 0 || D <= 0) return;
    const int32_t S = split ? split->S : 1, s = split ? split->s : 0;
    int32_t t0, t1;
    const int32_t A = mpk_attention_split_range(S, s, batch->num_tokens,
                                                MPK_BATCH_CARRAY(batch, off_row_pos, int32_t)[0], &t0, &t1);
    if (A ? s >= A : s != 0) return;  // (unsplit: split 0 runs the whole attention)
    if (D > MPK_ATTENTION_MAX_HEAD_DIM) {
        if (s != 0) return;
        for (int32_t r = 0; r < batch->num_tokens; r++)
            for (int32_t c = 0; c < G * D; c++)
                out[(int64_t)r * ld_out + c] = mpk_f32_to_bf16(NAN);
        return;
    }
    if (A) {
        if (s == A - 1)  // the split that holds the row's position appends its key and value
            append_rows(qkv, k_cache, v_cache, k_norm, inv_freq, batch, G, D, ld_qkv, page_size,
                        page_stride, eps);
        attend_split(qkv, k_cache, v_cache, q_norm, inv_freq, batch, G, D, page_size, page_stride,
                     eps, scale, t0, t1, A, split, out);
        return;
    }
    // Every row's k and v first: a prefill chunk's rows attend to each other's positions.
    append_rows(qkv, k_cache, v_cache, k_norm, inv_freq, batch, G, D, ld_qkv, page_size, page_stride, eps);
    attend_rows(qkv, k_cache, v_cache, q_norm, k_norm, inv_freq, batch, G, D, ld_qkv, page_size,
                page_stride, eps, scale, 0, out, ld_out);
}

// ---- attention and the output projection -------------------------------------------------------

void mpk_attention_linear_cpu(const mpk_bf16 *qkv, mpk_bf16 *k_cache, mpk_bf16 *v_cache,
                              const mpk_bf16 *q_norm, const mpk_bf16 *k_norm,
                              const float *inv_freq, const mpk_bf16 *w, float *part,
                              const mpk_batch *batch, int32_t G, int32_t D, int32_t ld_qkv,
                              int32_t ld_w, int32_t page_size, int64_t page_stride, int32_t hpt,
                              int32_t n, int32_t ld_part, float eps, float scale, int append) {
    // The heads' outputs of every row, (rows, hpt * G * D) bf16: the layer bounds them to
    // MPK_ATTENTION_LINEAR_MAX_ROW_BYTES.
    static _Thread_local mpk_bf16 heads[MPK_ATTENTION_LINEAR_MAX_ROW_BYTES / 2];
    const int32_t rows = batch->num_tokens, Kg = hpt * G * D;
    if (rows <= 0 || G <= 0 || D <= 0 || hpt <= 0) return;
    if (D > MPK_ATTENTION_MAX_HEAD_DIM || (int64_t)rows * Kg * 2 > MPK_ATTENTION_LINEAR_MAX_ROW_BYTES) {
        for (int32_t r = 0; r < rows; r++)
            for (int32_t j = 0; j < n; j++) part[(int64_t)r * ld_part + j] = NAN;
        return;
    }
    for (int32_t h = 0; h < hpt; h++) {
        const mpk_bf16 *qh = qkv + (int64_t)h * (G + 2) * D;
        mpk_bf16 *kc = k_cache + (int64_t)h * page_size * D, *vc = v_cache + (int64_t)h * page_size * D;
        if (append) append_rows(qh, kc, vc, k_norm, inv_freq, batch, G, D, ld_qkv, page_size, page_stride, eps);
        attend_rows(qh, kc, vc, q_norm, k_norm, inv_freq, batch, G, D, ld_qkv, page_size, page_stride,
                    eps, scale, !append, heads + (int64_t)h * G * D, Kg);
    }
    mpk_cpu_plain x = {heads, Kg};
    mpk_cpu_rows src = {NULL, mpk_cpu_plain_rows_load, &x};
    mpk_cpu_matvec_f32(&src, w, part, rows, Kg, n, ld_w, ld_part);
}
