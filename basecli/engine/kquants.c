/* llama.cpp's K-quant blocks (Q4_K, Q5_K, Q6_K), read where they lie in a GGUF file: their layouts,
 * dequantisation and matmul against 8-bit activations rounded per 256 values. Included by native.c, after its
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
 * The matmul rounds its activations itself (k_linear takes float rows; native.c's per-32 blocks are for Q4_1 and
 * Q8_0): see "the matmul" below. The minimum term of Q4_K/Q5_K uses the rounded activations' sums, as the
 * dequantised matrix times the rounded activations would: d*sc*q is large where the minimum is, and their
 * roundings cancel.
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

/* ---- the matmul, against activations rounded to 8 bits per 256 values ----
 * An activation super-block (llama.cpp's Q8_K, plus a 4-bit scale per 32): 256 int8 values, value l of sub-block
 * j being xd * sa[j] * qs[l], with xd = max|x| / (127 * 15) and sa[j] = ceil(15 max|x_j| / max|x|) in 1..15 (each
 * run of 32 rounded on a scale near its own, as finely as a float scale per 32 would within 1/15 of the largest:
 * one scale per 256 alone doubled the KL from the fp32 model), and the sums of its sixteen runs of 16 int8 values
 * (Q6_K's offset and the minimums of Q4_K/Q5_K need them). A weight super-block times an activation super-block
 * is then exact integer sums (sa multiplies the weights' integer scales; every sum stays within int32) and one
 * float step each, in this order for every row:
 *   acc = acc + (xd * d) * (float)Σ_j sc[j] sa[j] Σ_l q y          (Q6_K: Σ_h scale[h] sa[h/2] Σ_l (q - 32) y, per 16)
 *   acc = acc - (xd * dmin) * (float)Σ_j m[j] sa[j] Σ_l y           (Q4_K/Q5_K)
 * with no fused multiply-add. Every path (portable C, AVX2, the 8-row tiles with VNNI) computes the integers its
 * own way and then does exactly these float operations, so every build gives the same bits, and a row's result
 * does not depend on the rows beside it in its batch. */
#define K_SUB 15  /* the largest sub-scale */
typedef struct { float d; int8_t qs[QK_K]; int16_t bsums[QK_K / 16]; uint8_t sa[8]; } block_q8_K;

/* Eight activation rows' super-block i interleaved for the tiles: qs[j][k][r][4] holds values 32j + 4k .. + 3
 * of row r, so one 32-byte load is four values of each of the eight rows; sa[j][r] the row's sub-scale, b16[h][r]
 * its sum over values 16h .. 16h + 15, b32[j][r] sa[j] times its sum over sub-block j. */
typedef struct { float d[8]; int32_t sa[8][8], b16[16][8], b32[8][8]; int8_t qs[8][8][8][4]; } block_q8_Kx8;

static inline void k_float_step(float *acc, float xd, float d, float dmin, int32_t isum, int32_t imin, int mins) {
    float t = xd * d;
    *acc = *acc + t * (float)isum;
    if (mins) {
        t = xd * dmin;
        *acc = *acc - t * (float)imin;
    }
}

#ifdef BASECLI_AVX2
static inline int hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)));
}
#endif

/* The sub-scales of a super-block from its largest |x| (amax) and each sub-block's (sub): the same float steps in
 * every build. Returns xd; id[j] = 1 / (xd sa[j]), the factor that rounds sub-block j. */
static float k_sub_scales(float amax, const float *sub, uint8_t *sa, float *id) {
    float d = amax / (127.0f * K_SUB);
    for (int j = 0; j < 8; j++) {
        int s = amax > 0 ? (int)ceilf((float)K_SUB * (sub[j] / amax)) : 1;
        sa[j] = (uint8_t)(s < 1 ? 1 : s > K_SUB ? K_SUB : s);
        id[j] = d > 0 ? 1.0f / (d * (float)sa[j]) : 0.0f;
    }
    return d;
}

static void k_quantize_act_row(const float *x, block_q8_K *y, int64_t n) {
    for (int64_t b = 0; b < n / QK_K; b++, x += QK_K, y++) {
        float sub[8], id[8], amax = 0;
#ifdef BASECLI_AVX2
        const __m256 sign = _mm256_set1_ps(-0.0f);
        for (int j = 0; j < 8; j++) {
            __m256 m = _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 32 * j));
            for (int l = 8; l < 32; l += 8) m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 32 * j + l)));
            __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
            m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
            sub[j] = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
            amax = sub[j] > amax ? sub[j] : amax;
        }
        y->d = k_sub_scales(amax, sub, y->sa, id);
        for (int j = 0; j < QK_K; j += 32) {
            const __m256 vid = _mm256_set1_ps(id[j / 32]);  /* cvtps rounds to nearest even, as lrintf does */
            __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j), vid));
            __m256i i1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 8), vid));
            __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 16), vid));
            __m256i i3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + j + 24), vid));
            y->bsums[j / 16] = (int16_t)hsum_i32(_mm256_add_epi32(i0, i1));
            y->bsums[j / 16 + 1] = (int16_t)hsum_i32(_mm256_add_epi32(i2, i3));
            __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));  /* per 128-bit lane */
            _mm256_storeu_si256((__m256i *)(y->qs + j), _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
        }
#else
        for (int j = 0; j < 8; j++) {
            sub[j] = 0;
            for (int l = 0; l < 32; l++) { float a = fabsf(x[32 * j + l]); sub[j] = a > sub[j] ? a : sub[j]; }
            amax = sub[j] > amax ? sub[j] : amax;
        }
        y->d = k_sub_scales(amax, sub, y->sa, id);
        for (int j = 0; j < QK_K; j++) y->qs[j] = (int8_t)lrintf(x[j] * id[j / 32]);
        for (int i = 0; i < QK_K / 16; i++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += y->qs[16 * i + j];
            y->bsums[i] = (int16_t)s;
        }
#endif
    }
}

/* Q4_K/Q5_K: the eight 6-bit scales (sm[0..7]) and minimums (sm[8..15]) of a super-block, k_scale_min for all
 * j at once. The 12 bytes as three words: scales and minimums 0-3 are the low 6 bits of words 0 and 1; 4-7 take
 * word 2's low and high nibbles and the top 2 bits of words 0 and 1. */
static inline void k_scales_mins(const uint8_t *s, uint8_t *sm) {
    uint32_t u[3], v[4];
    memcpy(u, s, 12);
    v[0] = u[0] & 0x3f3f3f3f;
    v[1] = (u[2] & 0x0f0f0f0f) | ((u[0] >> 6) & 0x03030303) << 4;
    v[2] = u[1] & 0x3f3f3f3f;
    v[3] = ((u[2] >> 4) & 0x0f0f0f0f) | ((u[1] >> 6) & 0x03030303) << 4;
    memcpy(sm, v, 16);  /* little-endian, as the file is */
}

#ifndef BASECLI_AVX2
/* out = weight row w . activation row a (nb super-blocks), in plain C. */
static float k_row_portable(int type, const void *w, const block_q8_K *a, int64_t nb) {
    const int64_t size = k_block_bytes(type);
    float acc = 0;
    uint8_t q[32], sm[16];
    for (int64_t i = 0; i < nb; i++) {
        const void *b = (const char *)w + i * size;
        const block_q8_K *y = a + i;
        int32_t isum = 0, imin = 0;
        if (type != Q6_K) k_scales_mins(((const block_q4_K *)b)->scales, sm);
        for (int j = 0; j < 8; j++) {
            k_values(type, b, j, q);
            const int8_t *v = y->qs + 32 * j;
            if (type == Q6_K) {
                const int8_t *sc = ((const block_q6_K *)b)->scales;
                int s0 = 0, s1 = 0;
                for (int l = 0; l < 16; l++) s0 += ((int)q[l] - 32) * v[l], s1 += ((int)q[l + 16] - 32) * v[l + 16];
                isum += (s0 * sc[2 * j] + s1 * sc[2 * j + 1]) * y->sa[j];
            } else {
                int s = 0;
                for (int l = 0; l < 32; l++) s += q[l] * v[l];
                isum += s * sm[j] * y->sa[j];
                imin += sm[8 + j] * y->sa[j] * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
            }
        }
        if (type == Q6_K) k_float_step(&acc, y->d, half_to_float(((const block_q6_K *)b)->d), 0, isum, 0, 0);
        else k_float_step(&acc, y->d, half_to_float(((const block_q4_K *)b)->d), half_to_float(((const block_q4_K *)b)->dmin), isum, imin, 1);
    }
    return acc;
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

/* k_scales_mins in a vector (bytes 0-7 the scales, 8-15 the minimums), read from the 12 bytes at s (and 4 bytes
 * after them, unused: a block's values follow its scales): no scalar stores for the vector code to wait on. */
static inline __m128i k_scales_mins8(const uint8_t *s) {
    const __m128i x = _mm_loadu_si128((const __m128i *)s);
    const __m128i a = _mm_shuffle_epi32(x, _MM_SHUFFLE(2, 1, 2, 0)), b = _mm_shuffle_epi32(x, _MM_SHUFFLE(1, 1, 0, 0));  /* u0 u2 u1 u2, u0 u0 u1 u1 */
    const __m128i low = _mm_and_si128(_mm_srlv_epi32(a, _mm_setr_epi32(0, 0, 0, 4)), _mm_setr_epi32(0x3f3f3f3f, 0x0f0f0f0f, 0x3f3f3f3f, 0x0f0f0f0f));
    const __m128i top = _mm_and_si128(_mm_srli_epi32(b, 6), _mm_setr_epi32(0, 0x03030303, 0, 0x03030303));
    return _mm_or_si128(low, _mm_slli_epi32(top, 4));
}

/* out[r * ostride] = weight row w . activation row r for R <= 4 rows of nb super-blocks (stride nb). Written once
 * per block type (TYPE a constant) so the unpacking has no branches; each sub-block is unpacked once for the R
 * rows. The integer sums: maddubs (unsigned weights x signed activations, pairs within int16 for |q| < 64), then
 * madd by the sub-block's scale; Q6_K's q - 32 as |q - 32| with its sign moved onto the activations. */
static inline __attribute__((always_inline)) void k_rows_avx2(const int TYPE, const int R, const void *w, const block_q8_K *a,
                                                               int64_t nb, float *out, int64_t ostride) {
    const int64_t size = k_block_bytes(TYPE);
    float acc[4] = {0, 0, 0, 0};
    for (int64_t i = 0; i < nb; i++) {
        const void *b = (const char *)w + i * size;
        __m256i sumi[4] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
        __m256i sc32[2] = {_mm256_setzero_si256(), _mm256_setzero_si256()};
        uint8_t sm[16] = {0};
        if (TYPE == Q6_K) {  /* the sixteen int8 scales, each in both int16 halves of an int32 (one permute picks a pair) */
            __m128i raw = _mm_loadu_si128((const __m128i *)((const block_q6_K *)b)->scales);
            for (int h = 0; h < 2; h++) {
                __m256i v = _mm256_cvtepi8_epi32(h ? _mm_srli_si128(raw, 8) : raw);
                sc32[h] = _mm256_or_si256(_mm256_and_si256(v, _mm256_set1_epi32(0xffff)), _mm256_slli_epi32(v, 16));
            }
        } else
            _mm_storeu_si128((__m128i *)sm, k_scales_mins8(((const block_q4_K *)b)->scales));
        #pragma GCC unroll 8
        for (int j = 0; j < 8; j++) {
            __m256i q = k_values8(TYPE, b, j), scales, sign = q;
            if (TYPE == Q6_K) {
                const int s = 2 * j % 8;  /* scales 2j (first 16 values) and 2j + 1 */
                scales = _mm256_permutevar8x32_epi32(sc32[j / 4], _mm256_setr_epi32(s, s, s, s, s + 1, s + 1, s + 1, s + 1));
                sign = _mm256_sub_epi8(q, _mm256_set1_epi8(32));
                q = _mm256_sign_epi8(sign, sign);
            } else
                scales = _mm256_set1_epi16(sm[j]);
            for (int r = 0; r < R; r++) {  /* the weights' scales times the row's sub-scale: within int16 */
                const block_q8_K *y = a + r * nb + i;
                __m256i v = _mm256_loadu_si256((const __m256i *)(y->qs + 32 * j));
                if (TYPE == Q6_K) v = _mm256_sign_epi8(v, sign);
                __m256i rs = _mm256_mullo_epi16(scales, _mm256_set1_epi16(y->sa[j]));
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(_mm256_maddubs_epi16(q, v), rs));
            }
        }
        const __m128i mins = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)(sm + 8)));
        for (int r = 0; r < R; r++) {
            const block_q8_K *y = a + r * nb + i;
            if (TYPE == Q6_K) {
                k_float_step(&acc[r], y->d, half_to_float(((const block_q6_K *)b)->d), 0, hsum_i32(sumi[r]), 0, 0);
                continue;
            }
            /* Σ_j m[j] sa[j] (bsums[2j] + bsums[2j + 1]) */
            __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)y->bsums), _mm_loadu_si128((const __m128i *)(y->bsums + 8)));
            __m128i s = _mm_madd_epi16(pairs, _mm_mullo_epi16(mins, _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)y->sa))));
            s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            int32_t imin = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)));
            k_float_step(&acc[r], y->d, half_to_float(((const block_q4_K *)b)->d), half_to_float(((const block_q4_K *)b)->dmin),
                         hsum_i32(sumi[r]), imin, 1);
        }
    }
    for (int r = 0; r < R; r++) out[r * ostride] = acc[r];
}

/* 32 unsigned bytes times 32 signed, summed in fours into eight int32 lanes, added to acc: one VNNI instruction
 * where the CPU has it, else maddubs (pairs within int16 for weights < 64) and madd by ones. */
static inline __m256i k_dot4(__m256i acc, __m256i u, __m256i s) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return _mm256_dpbusd_epi32(acc, u, s);
#elif defined(__AVXVNNI__)
    return _mm256_dpbusd_avx_epi32(acc, u, s);
#else
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
#endif
}

/* weight row w . activation row a (nb super-blocks), one row alone (a decode step). Each sub-block's 32 products
 * go into eight int32 lanes (k_dot4) of their own; two levels of hadd turn eight such vectors into the sixteen sums
 * of 16 values, and one multiply by the sixteen integer scales (weights' scale x the row's sub-scale) per
 * super-block replaces one per sub-block. Lane order after the hadds: [j0 h0, j1 h0, j2 h0, j3 h0, j0 h1, ...]
 * for sub-blocks 0-3 (h the half of 16), the same for 4-7; the scales and sums of 16 are permuted to match. */
static inline __attribute__((always_inline)) float k_row1_avx2(const int TYPE, const void *w, const block_q8_K *a, int64_t nb) {
    const int64_t size = k_block_bytes(TYPE);
    const __m256i halves = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7), lo4 = _mm256_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3);
    const __m256i hi4 = _mm256_setr_epi32(4, 5, 6, 7, 4, 5, 6, 7);
    float acc = 0;
    for (int64_t i = 0; i < nb; i++) {
        const void *b = (const char *)w + i * size;
        const block_q8_K *y = a + i;
        __m256i dot[8];
        #pragma GCC unroll 8
        for (int j = 0; j < 8; j++) dot[j] = k_dot4(_mm256_setzero_si256(), k_values8(TYPE, b, j), _mm256_loadu_si256((const __m256i *)(y->qs + 32 * j)));
        __m256i s16[2];
        for (int g = 0; g < 2; g++)
            s16[g] = _mm256_hadd_epi32(_mm256_hadd_epi32(dot[4 * g], dot[4 * g + 1]), _mm256_hadd_epi32(dot[4 * g + 2], dot[4 * g + 3]));
        const __m256i sa = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)y->sa));
        __m256i sc[2];
        int32_t imin = 0;
        if (TYPE == Q6_K) {
            const __m128i raw = _mm_loadu_si128((const __m128i *)((const block_q6_K *)b)->scales);
            const __m256i bs = _mm256_loadu_si256((const __m256i *)y->bsums);
            for (int g = 0; g < 2; g++) {
                __m256i nat = _mm256_cvtepi8_epi32(g ? _mm_srli_si128(raw, 8) : raw);  /* scales 8g .. 8g + 7 */
                sc[g] = _mm256_mullo_epi32(_mm256_permutevar8x32_epi32(nat, halves), _mm256_permutevar8x32_epi32(sa, g ? hi4 : lo4));
                __m256i off = _mm256_cvtepi16_epi32(g ? _mm256_extracti128_si256(bs, 1) : _mm256_castsi256_si128(bs));
                s16[g] = _mm256_sub_epi32(s16[g], _mm256_slli_epi32(_mm256_permutevar8x32_epi32(off, halves), 5));  /* q - 32 */
            }
        } else {
            const __m128i sm = k_scales_mins8(((const block_q4_K *)b)->scales);
            const __m256i p = _mm256_mullo_epi32(_mm256_cvtepu8_epi32(sm), sa);
            sc[0] = _mm256_permutevar8x32_epi32(p, lo4), sc[1] = _mm256_permutevar8x32_epi32(p, hi4);
            /* Σ_j m[j] sa[j] (bsums[2j] + bsums[2j + 1]) */
            const __m128i pairs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)y->bsums), _mm_loadu_si128((const __m128i *)(y->bsums + 8)));
            const __m128i mins = _mm_mullo_epi16(_mm_cvtepu8_epi16(_mm_srli_si128(sm, 8)),
                                                 _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)y->sa)));
            __m128i s = _mm_madd_epi16(pairs, mins);
            s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
            imin = _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 1)));
        }
        const int32_t isum = hsum_i32(_mm256_add_epi32(_mm256_mullo_epi32(s16[0], sc[0]), _mm256_mullo_epi32(s16[1], sc[1])));
        if (TYPE == Q6_K) k_float_step(&acc, y->d, half_to_float(((const block_q6_K *)b)->d), 0, isum, 0, 0);
        else k_float_step(&acc, y->d, half_to_float(((const block_q4_K *)b)->d), half_to_float(((const block_q4_K *)b)->dmin), isum, imin, 1);
    }
    return acc;
}

/* out[(8 t + r) * ostride + n] = weight row n (of NC <= 4 rows from w, row_bytes apart) . row r of tile t, for NT <= 2
 * interleaved tiles of 8 activation rows (nb super-blocks each, tiles nb apart): lane r of every vector is row r.
 * Each weight super-block is unpacked once to bytes; each 4 of its values are broadcast once and met with the
 * same 4 values of every row (k_dot4), one load of those serving the NC weight rows; a sub-block's scale is
 * applied once to 8 rows. NC x NT independent sums keep the VNNI units busy. */
static inline __attribute__((always_inline)) void k_tile8_avx2(const int TYPE, const int NC, const int NT, const char *w, int64_t row_bytes,
                                                                const block_q8_Kx8 *a, int64_t nb, float *out, int64_t ostride) {
    const int64_t size = k_block_bytes(TYPE);
    __m256 acc[2][4];
    _Alignas(32) uint8_t q[4][QK_K];
    for (int t = 0; t < NT; t++)
        for (int n = 0; n < NC; n++) acc[t][n] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        uint8_t sm[4][16];
        float d[4], dmin[4] = {0, 0, 0, 0};
        __m256i isum[2][4], imin[2][4];
        for (int n = 0; n < NC; n++) {
            const void *b = w + n * row_bytes + i * size;
            for (int j = 0; j < 8; j++) _mm256_store_si256((__m256i *)(q[n] + 32 * j), k_values8(TYPE, b, j));
            if (TYPE == Q6_K) d[n] = half_to_float(((const block_q6_K *)b)->d);
            else {
                _mm_storeu_si128((__m128i *)sm[n], k_scales_mins8(((const block_q4_K *)b)->scales));
                d[n] = half_to_float(((const block_q4_K *)b)->d), dmin[n] = half_to_float(((const block_q4_K *)b)->dmin);
            }
            for (int t = 0; t < NT; t++) isum[t][n] = imin[t][n] = _mm256_setzero_si256();
        }
        for (int j = 0; j < 8; j++) {
            __m256i dot[2][4];
            for (int h = 0; h < 2; h++) {  /* halves of 16 values (Q6_K's scales are per 16); Q4_K/Q5_K scale both at once */
                for (int t = 0; t < NT; t++)
                    for (int n = 0; n < NC && (h == 0 || TYPE == Q6_K); n++) dot[t][n] = _mm256_setzero_si256();
                for (int k = 4 * h; k < 4 * h + 4; k++) {
                    __m256i v[2];
                    for (int t = 0; t < NT; t++) v[t] = _mm256_load_si256((const __m256i *)a[i + t * nb].qs[j][k]);
                    for (int n = 0; n < NC; n++) {
                        const __m256i u = _mm256_set1_epi32(((const int32_t *)(q[n] + 32 * j))[k]);
                        for (int t = 0; t < NT; t++) dot[t][n] = k_dot4(dot[t][n], u, v[t]);
                    }
                }
                for (int t = 0; t < NT; t++) {
                    const block_q8_Kx8 *y = a + i + t * nb;
                    if (TYPE == Q6_K) {
                        const __m256i off = _mm256_slli_epi32(_mm256_load_si256((const __m256i *)y->b16[2 * j + h]), 5);  /* q - 32 */
                        for (int n = 0; n < NC; n++) {
                            const int sc = ((const block_q6_K *)(w + n * row_bytes + i * size))->scales[2 * j + h];
                            const __m256i scv = _mm256_mullo_epi32(_mm256_set1_epi32(sc), _mm256_load_si256((const __m256i *)y->sa[j]));
                            isum[t][n] = _mm256_add_epi32(isum[t][n], _mm256_mullo_epi32(_mm256_sub_epi32(dot[t][n], off), scv));
                        }
                    } else if (h) {
                        const __m256i s = _mm256_load_si256((const __m256i *)y->b32[j]), sa = _mm256_load_si256((const __m256i *)y->sa[j]);
                        for (int n = 0; n < NC; n++) {
                            const __m256i scv = _mm256_mullo_epi32(_mm256_set1_epi32(sm[n][j]), sa);
                            isum[t][n] = _mm256_add_epi32(isum[t][n], _mm256_mullo_epi32(dot[t][n], scv));
                            imin[t][n] = _mm256_add_epi32(imin[t][n], _mm256_mullo_epi32(s, _mm256_set1_epi32(sm[n][8 + j])));
                        }
                    }
                }
            }
        }
        for (int t = 0; t < NT; t++) {
            const __m256 xd = _mm256_load_ps(a[i + t * nb].d);  /* k_float_step, lane by lane */
            for (int n = 0; n < NC; n++) {
                acc[t][n] = _mm256_add_ps(acc[t][n], _mm256_mul_ps(_mm256_mul_ps(xd, _mm256_set1_ps(d[n])), _mm256_cvtepi32_ps(isum[t][n])));
                if (TYPE != Q6_K)
                    acc[t][n] = _mm256_sub_ps(acc[t][n], _mm256_mul_ps(_mm256_mul_ps(xd, _mm256_set1_ps(dmin[n])), _mm256_cvtepi32_ps(imin[t][n])));
            }
        }
    }
    for (int t = 0; t < NT; t++)
        for (int n = 0; n < NC; n++) {
            _Alignas(32) float o[8];
            _mm256_store_ps(o, acc[t][n]);
            for (int r = 0; r < 8; r++) out[(8 * t + r) * ostride + n] = o[r];
        }
}

/* k_tile8_avx2 with TYPE, NC and NT as constants: 4 weight rows, else one at a time; tiles two at a time, else one */
static void k_tile8(int type, int nc, int nt, const char *w, int64_t row_bytes, const block_q8_Kx8 *a, int64_t nb, float *out,
                    int64_t ostride) {
#define K_TILE(T, NT) \
    if (nc == 4) k_tile8_avx2(T, 4, NT, w, row_bytes, a, nb, out, ostride); \
    else for (int n = 0; n < nc; n++) k_tile8_avx2(T, 1, NT, w + n * row_bytes, row_bytes, a, nb, out + n, ostride);
#define K_TILES(T) if (nt == 2) { K_TILE(T, 2) } else { K_TILE(T, 1) }
    if (type == Q4_K) { K_TILES(Q4_K) }
    else if (type == Q5_K) { K_TILES(Q5_K) }
    else { K_TILES(Q6_K) }
#undef K_TILES
#undef K_TILE
}

/* Rows r0 .. r0 + 7 of a (nb super-blocks each) interleaved into t (nb tiles). */
static void k_interleave8(const block_q8_K *a, int64_t nb, block_q8_Kx8 *t) {
    for (int64_t i = 0; i < nb; i++)
        for (int r = 0; r < 8; r++) {
            const block_q8_K *y = a + r * nb + i;
            t[i].d[r] = y->d;
            for (int h = 0; h < 16; h++) t[i].b16[h][r] = y->bsums[h];
            for (int j = 0; j < 8; j++) {
                t[i].sa[j][r] = y->sa[j];
                t[i].b32[j][r] = y->sa[j] * (y->bsums[2 * j] + y->bsums[2 * j + 1]);
                for (int k = 0; k < 8; k++) memcpy(t[i].qs[j][k][r], y->qs + 32 * j + 4 * k, 4);
            }
        }
}
#endif

/* out[r * ostride] = weight row w . activation row r, for R <= 4 rows of nb super-blocks each (stride nb). */
static void k_rows(int type, const void *w, const block_q8_K *a, int64_t nb, int64_t R, float *out, int64_t ostride) {
#ifdef BASECLI_AVX2
    /* R a constant: 4 rows (the accumulators stay in registers), else one at a time (the same sums) */
    if (R == 4) {
        if (type == Q4_K) k_rows_avx2(Q4_K, 4, w, a, nb, out, ostride);
        else if (type == Q5_K) k_rows_avx2(Q5_K, 4, w, a, nb, out, ostride);
        else k_rows_avx2(Q6_K, 4, w, a, nb, out, ostride);
        return;
    }
    for (int64_t r = 0; r < R; r++)
        out[r * ostride] = type == Q4_K ? k_row1_avx2(Q4_K, w, a + r * nb, nb)
                         : type == Q5_K ? k_row1_avx2(Q5_K, w, a + r * nb, nb) : k_row1_avx2(Q6_K, w, a + r * nb, nb);
#else
    for (int64_t r = 0; r < R; r++) out[r * ostride] = k_row_portable(type, w, a + r * nb, nb);
#endif
}

/* out[r * ldo + c] = W[c] . x[r] for fp32 x (M, K) and a K-quant W (N rows of K weights): x rounded to Q8_K
 * blocks, then activation rows in chunks that stay in cache while every weight row passes over them, weight rows
 * split over threads. With AVX2, each 8 rows of a chunk are interleaved into tiles; rows left over go 4 or 1
 * at a time. Returns 0, or -1 (out all NaN) if out of memory. */
#define K_CHUNK 32
static int k_linear(int type, const void *W, const float *x, int64_t M, int64_t K, float *out, int64_t N, int64_t ldo) {
    const int64_t nb = K / QK_K, row_bytes = nb * k_block_bytes(type);
    int64_t tiled = 0;  /* rows in 8-row tiles */
    block_q8_K *q = malloc(sizeof(block_q8_K) * (M * nb ? M * nb : 1));  /* no rows: not an allocation failure */
    block_q8_Kx8 *t = NULL;
#ifdef BASECLI_AVX2
    tiled = M / 8 * 8;
    if (tiled && !(t = aligned_alloc(32, sizeof(block_q8_Kx8) * (tiled / 8) * nb))) tiled = 0;  /* no memory: rows 4 at a time */
#else
    (void)tiled;
#endif
    if (!q) {
        for (int64_t r = 0; r < M; r++) for (int64_t c = 0; c < N; c++) out[r * ldo + c] = NAN;
        free(t);
        return -1;
    }
    #pragma omp parallel for schedule(static) if (M >= 64)
    for (int64_t r = 0; r < M; r++) k_quantize_act_row(x + r * K, q + r * nb, K);
#ifdef BASECLI_AVX2
    #pragma omp parallel for schedule(static) if (tiled >= 64)
    for (int64_t g = 0; g < tiled / 8; g++) k_interleave8(q + g * 8 * nb, nb, t + g * nb);
#endif
    for (int64_t r0 = 0; r0 < M; r0 += K_CHUNK) {
        int64_t m = M - r0 < K_CHUNK ? M - r0 : K_CHUNK;
        #pragma omp parallel for schedule(static)
        for (int64_t c0 = 0; c0 < N; c0 += 4) {  /* weight rows 4 at a time */
            const int64_t nc = N - c0 < 4 ? N - c0 : 4;
            int64_t r = 0;
#ifdef BASECLI_AVX2
            for (int nt; (nt = (int)((tiled - r0 - r < m - r ? tiled - r0 - r : m - r) / 8)) > 0; r += 8 * (nt > 2 ? 2 : nt)) {
                nt = nt > 2 ? 2 : nt;
                k_tile8(type, (int)nc, nt, (const char *)W + c0 * row_bytes, row_bytes, t + (r0 + r) / 8 * nb, nb, out + (r0 + r) * ldo + c0, ldo);
            }
#endif
            for (int64_t c = c0; c < c0 + nc; c++)
                for (int64_t rr = r; rr < m; rr += 4)
                    k_rows(type, (const char *)W + c * row_bytes, q + (r0 + rr) * nb, nb, m - rr < 4 ? m - rr : 4, out + (r0 + rr) * ldo + c, ldo);
        }
    }
    free(q);
    free(t);
    return 0;
}
