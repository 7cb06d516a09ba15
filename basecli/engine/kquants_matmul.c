/* The K-quant matmul kernels (portable C, AVX2, 8-row tiles with VNNI) and k_linear, against the activations
 * of kquants.c ("the matmul", there, defines the integer sums and the float step every path computes). Included
 * by kquants.c. */

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
    block_q8_K *q = malloc(sizeof(block_q8_K) * (M * nb > 0 ? M * nb : 1));  /* no rows: not an allocation failure */
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
