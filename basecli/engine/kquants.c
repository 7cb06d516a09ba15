/* llama.cpp's K-quant blocks (Q4_K, Q5_K, Q6_K), read where they lie in a GGUF file: their layouts,
 * dequantisation and matmul against basecli's 8-bit activation blocks. Included by native.c, after its
 * fp16 helpers and block_act.
 *
 * A K-quant super-block holds 256 weights of one row (so a row's length must be a multiple of 256):
 *
 *   Q4_K (144 bytes, 4.5 bits a weight): fp16 d, fp16 dmin, 12 bytes of eight 6-bit scales and eight 6-bit
 *        minimums, 128 bytes of 4-bit values. Sub-block j (32 weights) = d*sc[j]*q - dmin*m[j]; its values are
 *        the low nibbles of qs[32*(j/2) ..] for even j, the high nibbles for odd j.
 *   Q5_K (176 bytes, 5.5 bits): as Q4_K, plus qh[32]: bit j of qh[l] is the fifth bit (16) of value l of sub-block j.
 *   Q6_K (210 bytes, 6.56 bits): ql[128] low 4 bits, qh[64] high 2 bits, sixteen int8 scales (one per 16
 *        weights), fp16 d last; weight = d*scale*(q - 32). In each half of 128 weights, value v takes its low bits
 *        from ql[v % 64] (low nibble for v < 64, high nibble after) and its high bits from qh[v % 32] >> 2*(v/32).
 *
 * The scales' packing (get_scale_min_k4 in llama.cpp): bytes 0-3 hold sc[0..3] in their low 6 bits, bytes 4-7
 * m[0..3]; sc[4..7] and m[4..7] take their low 4 bits from bytes 8-11 (low, high nibble) and their top 2 bits
 * from the top 2 bits of bytes 0-3 (sc) and 4-7 (m).
 *
 * The matmul keeps native.c's activations: blocks of 32 with their own scale, so sub-block j of a super-block
 * meets exactly one activation block; the minimum term uses that block's rounded sum (s), as the dequantised
 * matrix times the rounded activations would: d*sc*q is large where the minimum is, and their roundings cancel.
 */

#define QK_K 256

typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_K;
typedef struct { uint16_t d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_K;
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; uint16_t d; } block_q6_K;
_Static_assert(sizeof(block_q4_K) == 144, "Q4_K is 144 bytes in llama.cpp");
_Static_assert(sizeof(block_q5_K) == 176, "Q5_K is 176 bytes in llama.cpp");
_Static_assert(sizeof(block_q6_K) == 210, "Q6_K is 210 bytes in llama.cpp");

static int is_k(int type) { return type == Q4_K || type == Q5_K || type == Q6_K; }

static int64_t k_block_bytes(int type) {
    return type == Q4_K ? (int64_t)sizeof(block_q4_K) : type == Q5_K ? (int64_t)sizeof(block_q5_K) : (int64_t)sizeof(block_q6_K);
}

/* The 6-bit scale and minimum of sub-block j of a Q4_K or Q5_K super-block. */
static inline void k_scale_min(const uint8_t *s, int j, int *sc, int *m) {
    if (j < 4) { *sc = s[j] & 63; *m = s[j + 4] & 63; }
    else { *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4); *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4); }
}

/* The 32 unsigned values (0..63) of sub-block j of super-block b, in order. */
static void k_values(int type, const void *b, int j, uint8_t *q) {
    if (type == Q6_K) {
        const block_q6_K *x = b;
        int h = j / 4, g = j % 4;
        const uint8_t *ql = x->ql + 64 * h + 32 * (g & 1), *qh = x->qh + 32 * h;
        for (int l = 0; l < 32; l++) q[l] = (uint8_t)(((ql[l] >> (g >= 2 ? 4 : 0)) & 15) | (((qh[l] >> (2 * g)) & 3) << 4));
        return;
    }
    const uint8_t *qs = (type == Q4_K ? ((const block_q4_K *)b)->qs : ((const block_q5_K *)b)->qs) + 32 * (j / 2);
    for (int l = 0; l < 32; l++) q[l] = (qs[l] >> (j & 1 ? 4 : 0)) & 15;
    if (type == Q5_K) {
        const uint8_t *qh = ((const block_q5_K *)b)->qh;
        for (int l = 0; l < 32; l++) q[l] |= ((qh[l] >> j) & 1) << 4;
    }
}

/* y = the 256 weights of super-block b, computed as gguf.quants' reference does, in fp32:
 * (d * sc) * q - (dmin * m) for Q4_K and Q5_K, (d * scale) * (q - 32) for Q6_K (no fused multiply-adds). */
static void k_dequantize_block(int type, const void *b, float *y) {
    uint8_t q[32];
    for (int j = 0; j < 8; j++, y += 32) {
        k_values(type, b, j, q);
        if (type == Q6_K) {
            const block_q6_K *x = b;
            float d = half_to_float(x->d), d0 = d * (float)x->scales[2 * j], d1 = d * (float)x->scales[2 * j + 1];
            for (int l = 0; l < 32; l++) y[l] = (l < 16 ? d0 : d1) * (float)((int)q[l] - 32);
        } else {
            const block_q4_K *x = b;  /* Q5_K begins with the same d, dmin and scales */
            int sc, m;
            k_scale_min(x->scales, j, &sc, &m);
            float ds = half_to_float(x->d) * (float)sc, dm = half_to_float(x->dmin) * (float)m;
            for (int l = 0; l < 32; l++) y[l] = ds * (float)q[l] - dm;
        }
    }
}

static void k_dequantize(int type, const void *w, float *out, int64_t rows, int64_t cols) {
    int64_t n = rows * (cols / QK_K), size = k_block_bytes(type);
    #pragma omp parallel for schedule(static) if (n >= 4096)
    for (int64_t i = 0; i < n; i++) k_dequantize_block(type, (const char *)w + i * size, out + i * QK_K);
}

#ifndef BASECLI_AVX2
/* Per sub-block j of super-block b: the factor of its integer dot product and of its activation block's sum
 * (Q4_K/Q5_K: d*sc[j] and -dmin*m[j]; Q6_K: d, with its two int scales in sc16[2j], sc16[2j+1]). */
static void k_factors(int type, const void *b, float *mul, float *min, int16_t *sc16) {
    if (type == Q6_K) {
        const block_q6_K *x = b;
        float d = half_to_float(x->d);
        for (int j = 0; j < 8; j++) mul[j] = d, min[j] = 0;
        for (int i = 0; i < 16; i++) sc16[i] = x->scales[i];
        return;
    }
    const block_q4_K *x = b;
    float d = half_to_float(x->d), dmin = half_to_float(x->dmin);
    for (int j = 0; j < 8; j++) {
        int sc, m;
        k_scale_min(x->scales, j, &sc, &m);
        mul[j] = d * (float)sc;
        min[j] = dmin * (float)m;
    }
}
#endif

#ifdef BASECLI_AVX2
/* Sub-block j's 32 values as unsigned bytes, the vector form of k_values. */
static inline __m256i k_values8(int type, const void *b, int j) {
    const __m256i low = _mm256_set1_epi8(15);
    if (type == Q6_K) {
        const block_q6_K *x = b;
        int h = j / 4, g = j % 4;
        __m256i ql = _mm256_loadu_si256((const __m256i *)(x->ql + 64 * h + 32 * (g & 1)));
        __m256i qh = _mm256_loadu_si256((const __m256i *)(x->qh + 32 * h));
        ql = _mm256_and_si256(g >= 2 ? _mm256_srli_epi16(ql, 4) : ql, low);
        qh = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * g)), _mm256_set1_epi8(3));
        return _mm256_or_si256(ql, _mm256_slli_epi16(qh, 4));  /* 0..3 << 4 stays inside its byte */
    }
    const uint8_t *qs = (type == Q4_K ? ((const block_q4_K *)b)->qs : ((const block_q5_K *)b)->qs) + 32 * (j / 2);
    __m256i raw = _mm256_loadu_si256((const __m256i *)qs);
    __m256i q = _mm256_and_si256(j & 1 ? _mm256_srli_epi16(raw, 4) : raw, low);
    if (type == Q5_K) {
        const __m256i bit = _mm256_set1_epi8((char)(1 << j));
        __m256i qh = _mm256_loadu_si256((const __m256i *)((const block_q5_K *)b)->qh);
        q = _mm256_or_si256(q, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(qh, bit), bit), _mm256_set1_epi8(16)));
    }
    return q;
}
#endif

#ifdef BASECLI_AVX2
/* Q4_K/Q5_K: the eight 6-bit scales and minimums of a super-block as floats times d and dmin. The 12 bytes as
 * three words: scales 0-3 and minimums 0-3 are the low 6 bits of words 0 and 1; scales and minimums 4-7 take
 * word 2's low and high nibbles, and the top 2 bits of words 0 and 1. */
static inline void k_scales8(const block_q4_K *x, __m256 *mul, __m256 *min) {
    uint32_t u[3], sc[2], m[2];
    memcpy(u, x->scales, 12);
    sc[0] = u[0] & 0x3f3f3f3f;
    m[0] = u[1] & 0x3f3f3f3f;
    sc[1] = (u[2] & 0x0f0f0f0f) | ((u[0] >> 6) & 0x03030303) << 4;
    m[1] = ((u[2] >> 4) & 0x0f0f0f0f) | ((u[1] >> 6) & 0x03030303) << 4;
    __m256 s8 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, (int)sc[1], (int)sc[0])));
    __m256 m8 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_set_epi32(0, 0, (int)m[1], (int)m[0])));
    *mul = _mm256_mul_ps(_mm256_set1_ps(half_to_float(x->d)), s8);
    *min = _mm256_mul_ps(_mm256_set1_ps(half_to_float(x->dmin)), m8);
}

/* out[r * ostride] = weight row w . activation row r for R <= 4 rows; ad, asq: each row's activation scales and
 * rounded sums, nb a row (stride nb). Written once per block type (TYPE a constant) so the unpacking has no
 * branches. Each sub-block is unpacked once for the R rows; a row's sums run in the same order whatever R is,
 * so its result does not depend on the rows beside it in its batch. The minimums go into the same accumulator
 * (its lanes are added up at the end anyway). */
static inline __attribute__((always_inline)) void k_rows_avx2(const int TYPE, const int R, const void *w, const block_act *a,
                                                               const float *ad, const float *asq, int64_t nb, float *out, int64_t ostride) {
    const int64_t size = k_block_bytes(TYPE), supers = nb / 8;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int64_t i = 0; i < supers; i++) {
        const void *b = (const char *)w + i * size;
        __m256 mul, min, s[4];
        __m256i sc32[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        if (TYPE == Q6_K) {  /* the sixteen int8 scales, each in both int16 halves of an int32 (one permute picks a pair) */
            mul = _mm256_set1_ps(half_to_float(((const block_q6_K *)b)->d)), min = _mm256_setzero_ps();
            __m128i raw = _mm_loadu_si128((const __m128i *)((const block_q6_K *)b)->scales);
            for (int h = 0; h < 2; h++) {
                __m256i v = _mm256_cvtepi8_epi32(h ? _mm_srli_si128(raw, 8) : raw);
                sc32[h] = _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(v, 16));
            }
        }
        else k_scales8(b, &mul, &min);
        for (int r = 0; r < R; r++) {
            s[r] = _mm256_mul_ps(mul, _mm256_loadu_ps(ad + r * nb + i * 8));  /* per sub-block: weight scale x activation scale */
            if (TYPE != Q6_K) acc[r] = _mm256_fnmadd_ps(min, _mm256_loadu_ps(asq + r * nb + i * 8), acc[r]);
        }
        #pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            __m256i q = k_values8(TYPE, b, j), scales = ones, sign = q;
            if (TYPE == Q6_K) {  /* q - 32 as |q - 32| with its sign moved onto the activations (maddubs takes unsigned x signed) */
                const int k = 2 * j % 8;  /* scales 2j (low half of the 32 values) and 2j + 1 (high half) */
                scales = _mm256_permutevar8x32_epi32(sc32[j / 4], _mm256_setr_epi32(k, k, k, k, k + 1, k + 1, k + 1, k + 1));
                sign = _mm256_sub_epi8(q, _mm256_set1_epi8(32));
                q = _mm256_sign_epi8(sign, sign);
            }
            const __m256i lane = _mm256_set1_epi32(j);
            for (int64_t r = 0; r < R; r++) {
                __m256i v = _mm256_loadu_si256((const __m256i *)a[r * nb + i * 8 + j].qs);
                if (TYPE == Q6_K) v = _mm256_sign_epi8(v, sign);
                __m256i p = _mm256_maddubs_epi16(q, v);  /* pairs of products, within int16 for |q| < 64 */
                p = _mm256_madd_epi16(p, scales);  /* Q6_K: each half of 16 by its own scale */
                acc[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(s[r], lane), _mm256_cvtepi32_ps(p), acc[r]);
            }
        }
    }
    for (int64_t r = 0; r < R; r++) out[r * ostride] = hsum(acc[r]);
}
#endif

/* out[r * ostride] = weight row w . activation row r, for R <= 4 rows of nb activation blocks each (stride nb). */
static void k_rows(int type, const void *w, const block_act *a, const float *ad, const float *asq, int64_t nb, int64_t R,
                   float *out, int64_t ostride) {
#ifdef BASECLI_AVX2
    /* R a constant: 4 rows (the accumulators and scales stay in registers), else one at a time (the same sums) */
    if (R == 4) {
        if (type == Q4_K) k_rows_avx2(Q4_K, 4, w, a, ad, asq, nb, out, ostride);
        else if (type == Q5_K) k_rows_avx2(Q5_K, 4, w, a, ad, asq, nb, out, ostride);
        else k_rows_avx2(Q6_K, 4, w, a, ad, asq, nb, out, ostride);
        return;
    }
    for (int64_t r = 0; r < R; r++) {
        const block_act *ar = a + r * nb;
        if (type == Q4_K) k_rows_avx2(Q4_K, 1, w, ar, ad + r * nb, asq + r * nb, nb, out + r * ostride, ostride);
        else if (type == Q5_K) k_rows_avx2(Q5_K, 1, w, ar, ad + r * nb, asq + r * nb, nb, out + r * ostride, ostride);
        else k_rows_avx2(Q6_K, 1, w, ar, ad + r * nb, asq + r * nb, nb, out + r * ostride, ostride);
    }
#else
    /* k_rows_avx2's order, lane for lane: per super-block, lane j takes sub-block j's minimum term, then every
     * sub-block j adds to lane l its products of values 4l..4l+3 (times their Q6_K scale) times its scales */
    (void)ad; (void)asq;
    const int64_t size = k_block_bytes(type), supers = nb / 8;
    float mul[8], min[8], acc[4][8] = {{0}};
    int16_t sc16[16];
    uint8_t q[32];
    for (int64_t i = 0; i < supers; i++) {
        const void *b = (const char *)w + i * size;
        k_factors(type, b, mul, min, sc16);
        if (type != Q6_K)
            for (int64_t r = 0; r < R; r++)
                for (int j = 0; j < 8; j++) acc[r][j] = fmaf(-min[j], a[r * nb + i * 8 + j].s, acc[r][j]);
        for (int j = 0; j < 8; j++) {
            k_values(type, b, j, q);
            for (int64_t r = 0; r < R; r++) {
                const block_act *y = a + r * nb + i * 8 + j;
                float s = mul[j] * y->d;
                for (int l = 0; l < 8; l++) {
                    int p = 0;
                    for (int e = 4 * l; e < 4 * l + 4; e++) p += (type == Q6_K ? (int)q[e] - 32 : (int)q[e]) * y->qs[e];
                    if (type == Q6_K) p *= sc16[2 * j + l / 4];
                    acc[r][l] = fmaf(s, (float)p, acc[r][l]);
                }
            }
        }
    }
    for (int64_t r = 0; r < R; r++) out[r * ostride] = hsum8(acc[r]);
#endif
}

/* out[r * ldo + c] = W[c] . x[r] for a K-quant W (N rows of K weights). Activation rows go in chunks that stay
 * in cache while every weight row passes over them; weight rows are split over threads, 4 activation rows at a time.
 * The activations' scales and rounded sums are first laid out contiguously, eight (one super-block's) per load. */
#define K_CHUNK 64
static void k_matmul(int type, const void *W, const block_act *x, int64_t M, int64_t K, float *out, int64_t N, int64_t ldo) {
    const int64_t nb = K / QK, row_bytes = K / QK_K * k_block_bytes(type);
    float *ad = malloc(sizeof(float) * 2 * M * nb), *asq = ad + M * nb;
    if (!ad) { for (int64_t r = 0; r < M; r++) for (int64_t c = 0; c < N; c++) out[r * ldo + c] = NAN; return; }
    for (int64_t i = 0; i < M * nb; i++) ad[i] = x[i].d, asq[i] = x[i].s;
    for (int64_t r0 = 0; r0 < M; r0 += K_CHUNK) {
        int64_t m = M - r0 < K_CHUNK ? M - r0 : K_CHUNK;
        #pragma omp parallel for schedule(static)
        for (int64_t c = 0; c < N; c++)
            for (int64_t r = 0; r < m; r += 4)
                k_rows(type, (const char *)W + c * row_bytes, x + (r0 + r) * nb, ad + (r0 + r) * nb, asq + (r0 + r) * nb, nb,
                       m - r < 4 ? m - r : 4, out + (r0 + r) * ldo + c, ldo);
    }
    free(ad);
}
