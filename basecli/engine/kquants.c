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

#include "kquants_matmul.c"  /* the kernels and k_linear */
