/* basecli's CPU kernels for 4- and 8-bit weights: a Llama decode step in one call.
 *
 * Why C: on a 2-core CPU a decode step of a 135M model is bounded by two things torch cannot
 * fix from Python: bytes of weights read per token (torch has no fast 4-bit matmul on AVX2
 * CPUs) and the cost per call into torch (about 2,000 small calls per step, 3-5 us each).
 * Here a whole step is one call, and weights are read in llama.cpp's block formats:
 *
 *   Q4_1: 32 weights = fp16 scale d, fp16 minimum m, 16 bytes of 4-bit values  (5 bits a weight)
 *   Q8_0: 32 weights = fp16 scale d, 32 signed bytes                           (8.5 bits a weight)
 *
 * Activations are quantised per block of 32 to 8 bits (scale = max|x| / 127) right before each
 * matmul, so the inner product is integer arithmetic (AVX2 maddubs), as in llama.cpp.
 * Everything else (norms, rope, attention, softmax, silu) is fp32.
 *
 * Built once per machine by basecli/engine/native.py with the system C compiler
 * (-O3 -ffp-contract=off -march=native -fopenmp); without AVX2 the plain C loops below are used instead.
 *
 * Every build gives the same bits (tests/test_native_builds.py): the plain C loops add in the SIMD
 * loops' order, 8 lanes of partial sums reduced by the same tree (hsum8, pair_sum8 below), with fmaf
 * wherever the SIMD code fuses a multiply-add and a plain multiply and add wherever it does not, and
 * exp is one polynomial (exp8, exp1), not libm's, whose results vary with the CPU's code path.
 * -ffp-contract=off keeps the compiler from fusing on its own; no fast-math may reassociate.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __FAST_MATH__
#error "no -ffast-math: every build of native.c must add in the written order"
#endif
/* -DBASECLI_PORTABLE (BASECLI_NATIVE_BUILD=portable) keeps the plain C loops on any CPU, so tests compare them with the SIMD ones */
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && !defined(BASECLI_PORTABLE)
#include <immintrin.h>
#define BASECLI_AVX2 1
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#define QK 32

/* Built with -DBASECLI_PROFILE (bench/profile_step.py --quantize q4), a decode step adds the seconds
 * it spends in each part to `profile`: matmuls, attention, everything else (norms, rope, silu, quantising). */
#ifdef BASECLI_PROFILE
#include <time.h>
static double profile[3];
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define TICK(part) do { double t_ = now(); profile[part] += t_ - tick_; tick_ = t_; } while (0)
#define TICK_START double tick_ = now()
#else
#define TICK(part) do { } while (0)
#define TICK_START do { } while (0)
#endif
enum { MATMUL = 0, ATTENTION = 1, OTHER = 2 };

/* Seconds per part since the last call (zeros unless built with -DBASECLI_PROFILE); resets them. */
void basecli_profile(double *out) {
#ifdef BASECLI_PROFILE
    for (int i = 0; i < 3; i++) { out[i] = profile[i]; profile[i] = 0; }
#else
    for (int i = 0; i < 3; i++) out[i] = 0;
#endif
}

typedef struct { uint16_t d, m; uint8_t qs[QK / 2]; } block_q4_1;  /* element j in the low nibble of qs[j], j+16 in its high nibble */
typedef struct { uint16_t d; int8_t qs[QK]; } block_q8_0;
/* an activation block; s = d * the sum of its 32 int8 values, as llama.cpp's Q8_1: a Q4_1 product is then
 * d_w d Σ q_w q + m s = Σ (d_w q_w + m) (d q), the weights times the rounded inputs, whose errors the centred
 * weights cancel; with the inputs' exact sum, the rounding errors met the uncentred q_w (0..15) alone,
 * about twice the error, and several times llama.cpp's KL from fp32 (bench/README.md, accuracy) */
typedef struct { float d, s; int8_t qs[QK]; } block_act;

enum { Q4_1 = 0, Q8_0 = 1, Q4_K = 2, Q5_K = 3, Q6_K = 4, F32_ROWS = -1 };  /* F32_ROWS: plain fp32 rows (an embedding) */

/* ---- fp16 <-> fp32 (IEEE half, round to nearest even) ---- */

static inline float half_to_float(uint16_t h) {
#ifdef BASECLI_AVX2
    return _cvtsh_ss(h);
#else
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) bits = sign;
        else {  /* subnormal: normalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) bits = sign | 0x7f800000 | (man << 13);
    else bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    float f; memcpy(&f, &bits, 4); return f;
#endif
}

static inline uint16_t float_to_half(float f) {
#ifdef BASECLI_AVX2
    return _cvtss_sh(f, 0);
#else
    uint32_t x; memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp), half = 1u << (shift - 1), rest = man & ((1u << shift) - 1);
        uint32_t h = man >> shift;
        if (rest > half || (rest == half && (h & 1))) h++;
        return (uint16_t)(sign | h);
    }
    uint32_t h = sign | ((uint32_t)exp << 10) | (man >> 13), rest = man & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;  /* a carry into the exponent is still right */
    return (uint16_t)h;
#endif
}

/* ---- the order of every sum: the plain C loops keep 8 lanes as the SIMD ones do, and reduce them alike ---- */

static inline float hsum8(const float *v) {  /* hsum's tree: halves, then quarters, then the last pair */
    return ((v[0] + v[4]) + (v[2] + v[6])) + ((v[1] + v[5]) + (v[3] + v[7]));
}

static inline float pair_sum8(const float *v) {  /* score_keys' tree (two hadds, then the halves) */
    return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

#ifdef BASECLI_AVX2
static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#endif

/* exp(x), one float, in exactly exp8's operations (below), for the plain C loops and the SIMD loops' tails */
static inline float exp1(float x) {
    x = x > -87.3f ? x : -87.3f;  /* max_ps, then min_ps, as exp8 */
    x = x < 88.7f ? x : 88.7f;
    float n = nearbyintf(x * 1.44269504088896341f);  /* to nearest even, as round_ps */
    float r = fmaf(-n, 0.693359375f, x);
    r = fmaf(-n, -2.12194440e-4f, r);
    float p = 1.9875691500e-4f;
    p = fmaf(p, r, 1.3981999507e-3f);
    p = fmaf(p, r, 8.3334519073e-3f);
    p = fmaf(p, r, 4.1665795894e-2f);
    p = fmaf(p, r, 1.6666665459e-1f);
    p = fmaf(p, r, 5.0000001201e-1f);
    p = fmaf(p, r * r, r + 1.0f);
    int32_t e = ((int32_t)n + 127) << 23;
    float two_n;
    memcpy(&two_n, &e, 4);
    return p * two_n;
}

#ifdef BASECLI_AVX2
/* exp(x) for 8 floats: Cody-Waite reduction x = n ln2 + r and Cephes' expf polynomial (about 1 ulp);
 * inputs below -87.3 give about 1e-38 instead of 0, which no softmax or sigmoid here can tell apart. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.3f)), _mm256_set1_ps(88.7f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}
#endif

#include "kquants.c"

/* ---- quantisation ---- */

static void quantize_block_q4_1(const float *x, block_q4_1 *y) {
    float lo = x[0], hi = x[0];
    for (int j = 1; j < QK; j++) { lo = x[j] < lo ? x[j] : lo; hi = x[j] > hi ? x[j] : hi; }
    float d = (hi - lo) / 15.0f, id = d ? 1.0f / d : 0.0f;
    y->d = float_to_half(d);
    y->m = float_to_half(lo);
    for (int j = 0; j < QK / 2; j++) {
        int a = (int)((x[j] - lo) * id + 0.5f), b = (int)((x[j + QK / 2] - lo) * id + 0.5f);
        a = a > 15 ? 15 : a; b = b > 15 ? 15 : b;
        y->qs[j] = (uint8_t)(a | (b << 4));
    }
}

static void quantize_block_q8_0(const float *x, block_q8_0 *y) {
    float amax = 0;
    for (int j = 0; j < QK; j++) amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
    float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
    y->d = float_to_half(d);
    for (int j = 0; j < QK; j++) y->qs[j] = (int8_t)lrintf(x[j] * id);
}

/* Bytes of a (rows, cols) matrix in `type`; cols must be a multiple of 32 (of 256 for the K-quants). */
int64_t basecli_matrix_bytes(int type, int64_t rows, int64_t cols) {
    if (is_k(type)) return rows * (cols / QK_K) * k_block_bytes(type);
    if (type == F32_ROWS) return rows * cols * (int64_t)sizeof(float);
    int64_t blocks = rows * (cols / QK);
    return blocks * (type == Q4_1 ? (int64_t)sizeof(block_q4_1) : (int64_t)sizeof(block_q8_0));
}

void basecli_quantize(int type, const float *x, void *out, int64_t rows, int64_t cols) {
    int64_t nb = cols / QK;
    #pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < rows; r++)
        for (int64_t b = 0; b < nb; b++) {
            const float *src = x + r * cols + b * QK;
            if (type == Q4_1) quantize_block_q4_1(src, (block_q4_1 *)out + r * nb + b);
            else quantize_block_q8_0(src, (block_q8_0 *)out + r * nb + b);
        }
}

void basecli_dequantize(int type, const void *w, float *out, int64_t rows, int64_t cols) {
    if (is_k(type)) { k_dequantize(type, w, out, rows, cols); return; }
    if (type == F32_ROWS) { memcpy(out, w, sizeof(float) * rows * cols); return; }
    int64_t nb = cols / QK;
    for (int64_t i = 0; i < rows * nb; i++) {
        float *y = out + i * QK;
        if (type == Q4_1) {
            const block_q4_1 *b = (const block_q4_1 *)w + i;
            float d = half_to_float(b->d), m = half_to_float(b->m);
            for (int j = 0; j < QK / 2; j++) { y[j] = (b->qs[j] & 15) * d + m; y[j + QK / 2] = (b->qs[j] >> 4) * d + m; }
        } else {
            const block_q8_0 *b = (const block_q8_0 *)w + i;
            float d = half_to_float(b->d);
            for (int j = 0; j < QK; j++) y[j] = b->qs[j] * d;
        }
    }
}

static void quantize_act_row(const float *x, block_act *y, int64_t n) {
    for (int64_t b = 0; b < n / QK; b++, x += QK, y++) {
#ifdef BASECLI_AVX2
        const __m256 sign = _mm256_set1_ps(-0.0f);
        __m256 v0 = _mm256_loadu_ps(x), v1 = _mm256_loadu_ps(x + 8), v2 = _mm256_loadu_ps(x + 16), v3 = _mm256_loadu_ps(x + 24);
        __m256 amax = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                    _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float d = _mm_cvtss_f32(m4) / 127.0f, id = d ? 1.0f / d : 0.0f;
        y->d = d;
        __m256 vid = _mm256_set1_ps(id);  /* cvtps rounds to nearest even, as lrintf does */
        __m256i i0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, vid)), i1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, vid));
        __m256i i2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, vid)), i3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, vid));
        /* |sum| <= 32 * 127: exact in fp32, in any order */
        y->s = d * hsum(_mm256_cvtepi32_ps(_mm256_add_epi32(_mm256_add_epi32(i0, i1), _mm256_add_epi32(i2, i3))));
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));  /* packs work per 128-bit lane */
        _mm256_storeu_si256((__m256i *)y->qs, _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
#else
        float amax = 0;
        for (int j = 0; j < QK; j++) { float a = fabsf(x[j]); amax = a > amax ? a : amax; }
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        int sum = 0;
        for (int j = 0; j < QK; j++) { y->qs[j] = (int8_t)lrintf(x[j] * id); sum += y->qs[j]; }
        y->d = d; y->s = d * (float)sum;
#endif
    }
}

/* ---- dot products of one weight row with one activation row ---- */


static float dot_q4_1(const void *wv, const block_act *a, int64_t nb) {
    const block_q4_1 *w = wv;
#ifdef BASECLI_AVX2
    /* the same operations in the same order as one row of tile_q4_1, so a row's result never depends on
     * whether its batch had a multiple of 4 rows (resample row i equals the same sample run alone) */
    const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();
    float mins = 0;
    for (int64_t i = 0; i < nb; i++) {
        __m128i raw = _mm_loadu_si128((const __m128i *)w[i].qs);
        __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(raw, 4), raw), low);
        __m256i y = _mm256_loadu_si256((const __m256i *)a[i].qs);
        __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), ones);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(w[i].d) * a[i].d), _mm256_cvtepi32_ps(p), acc);
        mins = fmaf(half_to_float(w[i].m), a[i].s, mins);
    }
    return hsum(acc) + mins;
#else
    /* lane l of the SIMD code holds elements 4l..4l+3 (the low nibbles are elements 0-15, the high ones 16-31) */
    float acc[8] = {0}, mins = 0;
    for (int64_t i = 0; i < nb; i++) {
        float dd = half_to_float(w[i].d) * a[i].d;
        for (int l = 0; l < 8; l++) {
            int p = 0;
            for (int j = 4 * l; j < 4 * l + 4; j++) p += (j < QK / 2 ? w[i].qs[j] & 15 : w[i].qs[j - QK / 2] >> 4) * a[i].qs[j];
            acc[l] = fmaf(dd, (float)p, acc[l]);
        }
        mins = fmaf(half_to_float(w[i].m), a[i].s, mins);
    }
    return hsum8(acc) + mins;
#endif
}

static float dot_q8_0(const void *wv, const block_act *a, int64_t nb) {
    const block_q8_0 *w = wv;
#ifdef BASECLI_AVX2
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc = _mm256_setzero_ps();  /* as one row of tile_q8_0, in the same order (see dot_q4_1) */
    for (int64_t i = 0; i < nb; i++) {
        __m256i q = _mm256_loadu_si256((const __m256i *)w[i].qs);
        __m256i y = _mm256_loadu_si256((const __m256i *)a[i].qs);
        /* maddubs takes unsigned x signed: |q| times y with q's sign moved onto y */
        __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(q, q), _mm256_sign_epi8(y, q)), ones);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(half_to_float(w[i].d) * a[i].d), _mm256_cvtepi32_ps(p), acc);
    }
    return hsum(acc);
#else
    float acc[8] = {0};  /* lanes as in dot_q4_1 */
    for (int64_t i = 0; i < nb; i++) {
        float dd = half_to_float(w[i].d) * a[i].d;
        for (int l = 0; l < 8; l++) {
            int p = 0;
            for (int j = 4 * l; j < 4 * l + 4; j++) p += w[i].qs[j] * a[i].qs[j];
            acc[l] = fmaf(dd, (float)p, acc[l]);
        }
    }
    return hsum8(acc);
#endif
}

#ifdef BASECLI_AVX2
/* Two weight rows against 4 activation rows: each weight block is unpacked once for four rows and each
 * activation block loaded once for two; the 8 accumulators stay in registers. */
#define TILE_MADD(q, a) _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(q, a), ones))

/* ds: for each block i of the four rows, their scales d then their sums s (8 floats), laid out by matmul_q
 * so that a block's four scales are one load instead of four */
static void tile_q4_1(const void *w0v, const void *w1v, const block_act *a, const float *ds, int64_t nb,
                      float *out, int64_t ostride) {
    const block_q4_1 *w0 = w0v, *w1 = w1v;
    const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
    __m256 c[2][4];
    for (int i = 0; i < 4; i++) c[0][i] = c[1][i] = _mm256_setzero_ps();
    __m128 m0 = _mm_setzero_ps(), m1 = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m128i r0 = _mm_loadu_si128((const __m128i *)w0[i].qs), r1 = _mm_loadu_si128((const __m128i *)w1[i].qs);
        __m256i q0 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r0, 4), r0), low);
        __m256i q1 = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(r1, 4), r1), low);
        __m128 ad = _mm_loadu_ps(ds + 8 * i), as = _mm_loadu_ps(ds + 8 * i + 4);
        __m128 d0 = _mm_mul_ps(_mm_set1_ps(half_to_float(w0[i].d)), ad), d1 = _mm_mul_ps(_mm_set1_ps(half_to_float(w1[i].d)), ad);
        m0 = _mm_fmadd_ps(_mm_set1_ps(half_to_float(w0[i].m)), as, m0);
        m1 = _mm_fmadd_ps(_mm_set1_ps(half_to_float(w1[i].m)), as, m1);
        float s0[4], s1[4];
        _mm_storeu_ps(s0, d0); _mm_storeu_ps(s1, d1);
        for (int r = 0; r < 4; r++) {
            __m256i y = _mm256_loadu_si256((const __m256i *)a[r * nb + i].qs);
            c[0][r] = _mm256_fmadd_ps(_mm256_set1_ps(s0[r]), TILE_MADD(q0, y), c[0][r]);
            c[1][r] = _mm256_fmadd_ps(_mm256_set1_ps(s1[r]), TILE_MADD(q1, y), c[1][r]);
        }
    }
    float mm0[4], mm1[4];
    _mm_storeu_ps(mm0, m0); _mm_storeu_ps(mm1, m1);
    for (int r = 0; r < 4; r++) { out[r * ostride] = hsum(c[0][r]) + mm0[r]; out[r * ostride + 1] = hsum(c[1][r]) + mm1[r]; }
}

static void tile_q8_0(const void *w0v, const void *w1v, const block_act *a, const float *ds, int64_t nb,
                      float *out, int64_t ostride) {
    const block_q8_0 *w0 = w0v, *w1 = w1v;
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 c[2][4];
    for (int i = 0; i < 4; i++) c[0][i] = c[1][i] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m256i q0 = _mm256_loadu_si256((const __m256i *)w0[i].qs), q1 = _mm256_loadu_si256((const __m256i *)w1[i].qs);
        __m256i u0 = _mm256_sign_epi8(q0, q0), u1 = _mm256_sign_epi8(q1, q1);  /* |q|; q's sign goes onto the activations */
        __m128 ad = _mm_loadu_ps(ds + 8 * i);
        float s0[4], s1[4];
        _mm_storeu_ps(s0, _mm_mul_ps(_mm_set1_ps(half_to_float(w0[i].d)), ad));
        _mm_storeu_ps(s1, _mm_mul_ps(_mm_set1_ps(half_to_float(w1[i].d)), ad));
        for (int r = 0; r < 4; r++) {
            __m256i y = _mm256_loadu_si256((const __m256i *)a[r * nb + i].qs);
            c[0][r] = _mm256_fmadd_ps(_mm256_set1_ps(s0[r]), TILE_MADD(u0, _mm256_sign_epi8(y, q0)), c[0][r]);
            c[1][r] = _mm256_fmadd_ps(_mm256_set1_ps(s1[r]), TILE_MADD(u1, _mm256_sign_epi8(y, q1)), c[1][r]);
        }
    }
    for (int r = 0; r < 4; r++) { out[r * ostride] = hsum(c[0][r]); out[r * ostride + 1] = hsum(c[1][r]); }
}
#undef TILE_MADD
#endif

/* out[r * ldo + c] = sum_k W[c, k] x[r, k] for r < M, c < N, with x already quantised (M rows of K/32 blocks).
 * Split over output columns: each thread reads its own share of the weights once for all M rows. */
static void matmul_q(int type, const void *W, const block_act *x, int64_t M, int64_t K, float *out, int64_t N, int64_t ldo) {
    int64_t nb = K / QK, tiled_m = 0, pairs = 0;
    float *ds = NULL;
#ifdef BASECLI_AVX2
    tiled_m = M / 4 * 4;
    pairs = tiled_m ? N / 2 : 0;
    if (pairs && !(ds = malloc(sizeof(float) * 8 * nb * (tiled_m / 4)))) pairs = 0;  /* no memory: the one-row path */
    for (int64_t r = 0; r < (pairs ? tiled_m : 0); r++)
        for (int64_t i = 0; i < nb; i++) {
            float *at = ds + (r / 4 * nb + i) * 8;
            at[r % 4] = x[r * nb + i].d;
            at[4 + r % 4] = x[r * nb + i].s;
        }
#endif
    const size_t row_bytes = (size_t)basecli_matrix_bytes(type, 1, K);
    float (*dot)(const void *, const block_act *, int64_t) = type == Q4_1 ? dot_q4_1 : dot_q8_0;
#ifdef BASECLI_AVX2
    void (*tile)(const void *, const void *, const block_act *, const float *, int64_t, float *, int64_t) =
        type == Q4_1 ? tile_q4_1 : tile_q8_0;
#endif
    #pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < pairs + (N - 2 * pairs); p++) {
        int64_t c = p < pairs ? 2 * p : pairs + p;  /* the pairs, then the columns left over */
        int64_t width = p < pairs ? 2 : 1, r = 0;
        const char *w = (const char *)W + c * row_bytes;
#ifdef BASECLI_AVX2
        if (width == 2) for (; r < tiled_m; r += 4) tile(w, w + row_bytes, x + r * nb, ds + r / 4 * nb * 8, nb, out + r * ldo + c, ldo);
#endif
        for (int64_t k = 0; k < width; k++)
            for (int64_t rr = r; rr < M; rr++) out[rr * ldo + c + k] = dot(w + k * row_bytes, x + rr * nb, nb);
    }
    free(ds);
}

static void quantize_act(const float *x, block_act *y, int64_t M, int64_t K) {
    #pragma omp parallel for schedule(static) if (M >= 64)  /* a decode step's few rows: not worth waking a thread */
    for (int64_t r = 0; r < M; r++) quantize_act_row(x + r * K, y + r * (K / QK), K);
}

/* F.linear(x, W) for fp32 x (M, K) and a quantised W (N, K). Returns 0, or -1 if out of memory. */
int basecli_linear(int type, const void *W, const float *x, int64_t M, int64_t K, float *out, int64_t N) {
    if (is_k(type)) return k_linear(type, W, x, M, K, out, N, N);  /* K-quants round x their own way */
    block_act *q = malloc(sizeof(block_act) * M * (K / QK));
    if (!q) return -1;
    quantize_act(x, q, M, K);
    matmul_q(type, W, q, M, K, out, N, N);
    free(q);
    return 0;
}

/* ---- fp32 helpers ---- */

static inline float dot_f32(const float *a, const float *b, int64_t n) {
    int64_t i = 0;
#ifdef BASECLI_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum(acc);
#else
    float acc[8] = {0};
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] = fmaf(a[i + l], b[i + l], acc[l]);
    float s = hsum8(acc);
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline void axpy(float *y, float a, const float *x, int64_t n) {  /* y += a x, fused element by element */
    int64_t i = 0;
#ifdef BASECLI_AVX2
    __m256 va = _mm256_set1_ps(a);
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(va, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
    for (; i < n; i++) y[i] = fmaf(a, x[i], y[i]);
}

static void rms_norm(const float *x, const float *w, float *out, int64_t n, float eps) {
    float ss;  /* in fp32 over 8 lanes, then added up, as torch's vectorised reduction does */
    int64_t i = 0;
#ifdef BASECLI_AVX2
    __m256 acc = _mm256_setzero_ps();
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(x + i), acc);
    ss = hsum(acc);
#else
    float acc[8] = {0};
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) acc[l] = fmaf(x[i + l], x[i + l], acc[l]);
    ss = hsum8(acc);
#endif
    for (; i < n; i++) ss += x[i] * x[i];
    float r = 1.0f / sqrtf(ss / n + eps);
    for (i = 0; i < n; i++) out[i] = x[i] * r * w[i];
}

/* LayerNorm (GPT-2): (x - mean) / sqrt(var + eps) * w + b, the mean and variance in two passes */
static void layer_norm(const float *x, const float *w, const float *b, float *out, int64_t n, float eps) {
    float mean = 0, var = 0;
    for (int64_t i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int64_t i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    float r = 1.0f / sqrtf(var / n + eps);
    for (int64_t i = 0; i < n; i++) out[i] = (x[i] - mean) * r * w[i] + b[i];
}

/* GELU with the tanh approximation (GPT-2's gelu_new), in place: 0.5 x (1 + tanh(y)) = x sigmoid(2y),
 * y = sqrt(2/pi) (x + 0.044715 x^3) */
static void gelu_tanh(float *x, int64_t n) {
    const float c = 2.0f * 0.7978845608028654f;
    int64_t i = 0;
#ifdef BASECLI_AVX2
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 y = _mm256_mul_ps(_mm256_set1_ps(c), _mm256_add_ps(v, _mm256_mul_ps(_mm256_set1_ps(0.044715f), _mm256_mul_ps(v, _mm256_mul_ps(v, v)))));
        __m256 sig = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), y))));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(v, sig));
    }
#endif
    for (; i < n; i++) {  /* as the 8 lanes above */
        float v = x[i], y = c * (v + 0.044715f * (v * (v * v)));
        x[i] = v * (1.0f / (1.0f + exp1(0.0f - y)));
    }
}

static void add_bias(float *y, const float *b, int64_t B, int64_t n) {  /* each of B rows of y += b (no bias: nothing) */
    if (b)
        for (int64_t r = 0; r < B; r++)
            for (int64_t i = 0; i < n; i++) y[r * n + i] += b[i];
}

static void silu_mul(const float *gate, const float *up, float *out, int64_t n) {  /* silu(gate) * up */
    int64_t i = 0;
#ifdef BASECLI_AVX2
    for (; i + 8 <= n; i += 8) {
        __m256 g = _mm256_loadu_ps(gate + i);
        __m256 sig = _mm256_div_ps(_mm256_set1_ps(1.0f), _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), g))));
        _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_mul_ps(g, sig), _mm256_loadu_ps(up + i)));
    }
#endif
    for (; i < n; i++) out[i] = gate[i] * (1.0f / (1.0f + exp1(0.0f - gate[i]))) * up[i];  /* as the 8 lanes above */
}

/* s[j] = scale * (q . K[j]) for n keys stored one after another (hd floats each). Four keys at a time,
 * so four independent chains of fmadds hide each other's latency. */
static void score_keys(const float *q, const float *K, int64_t n, int64_t hd, float scale, float *s) {
    int64_t j = 0;
#ifdef BASECLI_AVX2
    if (hd % 8 == 0)  /* eight keys at a time: eight independent chains of fmadds keep both FMA pipes busy */
        for (; j + 8 <= n; j += 8) {
            const float *k = K + j * hd;
            __m256 a[8];
            for (int t = 0; t < 8; t++) a[t] = _mm256_setzero_ps();
            for (int64_t d = 0; d < hd; d += 8) {
                __m256 qv = _mm256_loadu_ps(q + d);
                for (int t = 0; t < 8; t++) a[t] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + t * hd + d), a[t]);
            }
            for (int half = 0; half < 2; half++) {  /* each key reduced exactly as in the four-key loop below */
                __m256 *h4 = a + 4 * half;
                __m256 t4 = _mm256_hadd_ps(_mm256_hadd_ps(h4[0], h4[1]), _mm256_hadd_ps(h4[2], h4[3]));
                __m128 r = _mm_add_ps(_mm256_castps256_ps128(t4), _mm256_extractf128_ps(t4, 1));
                _mm_storeu_ps(s + j + 4 * half, _mm_mul_ps(r, _mm_set1_ps(scale)));
            }
        }
    if (hd % 8 == 0)
        for (; j + 4 <= n; j += 4) {
            const float *k = K + j * hd;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t d = 0; d < hd; d += 8) {
                __m256 qv = _mm256_loadu_ps(q + d);
                a0 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + d), a0);
                a1 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + hd + d), a1);
                a2 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 2 * hd + d), a2);
                a3 = _mm256_fmadd_ps(qv, _mm256_loadu_ps(k + 3 * hd + d), a3);
            }
            __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));  /* per half: a0 a1 a2 a3 */
            __m128 r = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
            _mm_storeu_ps(s + j, _mm_mul_ps(r, _mm_set1_ps(scale)));
        }
#endif
#ifdef BASECLI_AVX2
    /* the keys left over, each summed in exactly the order of a lane of the four-key reduction above, so a key's
     * score never depends on where its run of keys starts (resample's shared prefix vs one run alone) */
    if (hd % 8 == 0)
        for (; j < n; j++) {
            __m256 a = _mm256_setzero_ps(), z = _mm256_setzero_ps();
            for (int64_t d = 0; d < hd; d += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(q + d), _mm256_loadu_ps(K + j * hd + d), a);
            __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(a, z), _mm256_hadd_ps(z, z));
            __m128 r = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
            s[j] = _mm_cvtss_f32(_mm_mul_ps(r, _mm_set1_ps(scale)));
        }
#else
    if (hd % 8 == 0)  /* each key's 8 lanes reduced by the SIMD loops' tree */
        for (; j < n; j++) {
            float a[8] = {0};
            for (int64_t d = 0; d < hd; d += 8)
                for (int l = 0; l < 8; l++) a[l] = fmaf(q[d + l], K[j * hd + d + l], a[l]);
            s[j] = pair_sum8(a) * scale;
        }
#endif
    for (; j < n; j++) s[j] = dot_f32(q, K + j * hd, hd) * scale;
}

/* out += sum_j p[j] V[j] for n values stored one after another; 64 dimensions at a time held in registers. */
static void weigh_values(float *out, const float *p, const float *V, int64_t n, int64_t hd) {
    int64_t d0 = 0;
#ifdef BASECLI_AVX2
    for (; d0 + 64 <= hd; d0 += 64) {
        __m256 acc[8];
        for (int i = 0; i < 8; i++) acc[i] = _mm256_loadu_ps(out + d0 + 8 * i);
        for (int64_t j = 0; j < n; j++) {
            __m256 w = _mm256_set1_ps(p[j]);
            const float *v = V + j * hd + d0;
            for (int i = 0; i < 8; i++) acc[i] = _mm256_fmadd_ps(w, _mm256_loadu_ps(v + 8 * i), acc[i]);
        }
        for (int i = 0; i < 8; i++) _mm256_storeu_ps(out + d0 + 8 * i, acc[i]);
    }
#endif
    if (d0 < hd)
        for (int64_t j = 0; j < n; j++) axpy(out + d0, p[j], V + j * hd + d0, hd - d0);
}

static float exp_sum(float *s, int64_t n, float top) {  /* s = exp(s - top) in place; returns the sum */
    int64_t i = 0;
    float total = 0;
#ifdef BASECLI_AVX2
    __m256 acc = _mm256_setzero_ps(), vt = _mm256_set1_ps(top);
    for (; i + 8 <= n; i += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + i), vt));
        _mm256_storeu_ps(s + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    total = hsum(acc);
#else
    float acc[8] = {0};
    for (; i + 8 <= n; i += 8)
        for (int l = 0; l < 8; l++) { s[i + l] = exp1(s[i + l] - top); acc[l] += s[i + l]; }
    total = hsum8(acc);
#endif
    for (; i < n; i++) { s[i] = exp1(s[i] - top); total += s[i]; }
    return total;
}

/* ---- the model and one decode step ---- */

/* A weight matrix as up to three stacked by rows (q, k, v; gate, up), each in its own block type: a
 * GGUF file may hold v in Q6_K beside q and k in Q4_K (llama.cpp's Q4_K_M), and each is used where it lies. */
typedef struct { const void *w[3]; int64_t rows[3]; int type[3]; int parts; } Matrix;

typedef struct {
    int64_t dim, hidden, layers, heads, kv, head_dim, vocab;
    float eps;
    int etype;                 /* the embedding's rows: F32_ROWS, or a block type (dequantised a row per token) */
    const void *embed;         /* (vocab, dim) for the token lookup */
    const float *norm;         /* final norm */
    const Matrix *head;        /* (vocab, dim) */
    const float *inv_freq;     /* (head_dim / 2) */
    const float **norm1, **norm2;
    const Matrix *qkv, *o, *gate_up, *down;  /* per layer; qkv is q, k, v stacked, gate_up gate then up */
    /* GPT-2 and Llamas with biases (Qwen2); NULL where the model has none */
    const float *pos_embed;    /* (positions, dim) learned positions, added to the token's row; then inv_freq is NULL: no rope */
    const float *norm_bias;    /* with it, every norm is a LayerNorm with biases (GPT-2), else an RMSNorm */
    const float **norm1_bias, **norm2_bias;
    const float **qkv_bias, **o_bias, **up_bias, **down_bias;  /* per layer, or NULL; an entry may be NULL too */
    int gelu;                  /* 1: the MLP is down(gelu_tanh(up x + b)), gate_up holding up alone (GPT-2); 0: down(silu(gate x) * up x) */
} Model;

#define LAYER_PTR(m, field, l) ((m)->field ? (m)->field[l] : NULL)

/* out (M, total rows) = x times each stacked part, side by side; x as blocks, and as floats xf for K-quant parts. */
static void matmul_m(const Matrix *w, const block_act *x, const float *xf, int64_t M, int64_t K, float *out) {
    int64_t total = 0, at = 0;
    for (int p = 0; p < w->parts; p++) total += w->rows[p];
    for (int p = 0; p < w->parts; p++) {
        if (is_k(w->type[p])) k_linear(w->type[p], w->w[p], xf, M, K, out + at, w->rows[p], total);
        else matmul_q(w->type[p], w->w[p], x, M, K, out + at, w->rows[p], total);
        at += w->rows[p];
    }
}

typedef struct {               /* the KV cache of engine/lean.py's KVCache, as pointers and strides (in floats) */
    float *k, *v;              /* per-row buffers (layers, B, kv, capacity, head_dim), contiguous */
    int64_t capacity, column;  /* this step's column in the per-row buffers */
    const float *pk, *pv;      /* the shared prefix (layers, 1, kv, shared, head_dim), or NULL */
    int64_t p_layer, p_head, shared;
} Cache;

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* x += add (when given), then h = rms_norm(x) and its int8 blocks, row by row; rows on threads when there are
 * enough of them to pay for waking one (each row's arithmetic is the same either way) */
static void add_norm_quantize(float *x, const float *add, const float *w, const float *bias, float *h, block_act *q8, int64_t B,
                              int64_t dim, float eps) {
    #pragma omp parallel for schedule(static) if (B >= 8)
    for (int64_t b = 0; b < B; b++) {
        float *xr = x + b * dim;
        if (add)
            for (int64_t i = 0; i < dim; i++) xr[i] += add[b * dim + i];
        if (bias) layer_norm(xr, w, bias, h + b * dim, dim, eps);
        else rms_norm(xr, w, h + b * dim, dim, eps);
        quantize_act_row(h + b * dim, q8 + b * (dim / QK), dim);
    }
}

/* Attention of one decode step when the prompt's keys and values are kept once for every row (resample).
 * The prefix is read once per kv head for all the rows' queries that use it, in blocks of keys that stay
 * in L1, instead of once per row and head; each score and each output adds in exactly the order of the
 * one-run path above (scores in four-key groups from the run's start, values key after key), so a row's
 * result is the same, to the bit, as its prompt decoded alone. Every row sees every key (first == 0). */
#define PREFIX_BLOCK 32

/* One pass over the shared prefix for every query that uses each kv head: its keys' scores (values == 0),
 * or its values weighed into the outputs (values == 1), PREFIX_BLOCK keys at a time for all those
 * queries; work split by kv head and halves of its queries. */
static void prefix_pass(const Model *m, const Cache *c, int64_t l, int64_t B, const float *qkv, float scale, int64_t keys,
                        float *scores, float *h, int values) {
    const int64_t H = m->heads, KV = m->kv, hd = m->head_dim, group = H / KV, qkv_n = (H + 2 * KV) * hd;
    const int64_t per_kv = B * group, shared = c->shared;
    #pragma omp parallel for schedule(static)
    for (int64_t task = 0; task < KV * 2; task++) {
        int64_t g = task / 2, lo = task % 2 ? per_kv / 2 : 0, hi = task % 2 ? per_kv : per_kv / 2;
        const float *run = (values ? c->pv : c->pk) + l * c->p_layer + g * c->p_head;
        for (int64_t kb = 0; kb < shared; kb += PREFIX_BLOCK) {
            int64_t n = shared - kb < PREFIX_BLOCK ? shared - kb : PREFIX_BLOCK;
            for (int64_t i = lo; i < hi; i++) {
                int64_t b = i / group, head = g * group + i % group;
                float *sc = scores + (b * H + head) * keys + kb;
                if (values) weigh_values(h + b * H * hd + head * hd, sc, run + kb * hd, n, hd);
                else score_keys(qkv + b * qkv_n + head * hd, run + kb * hd, n, hd, scale, sc);
            }
        }
    }
}

static void attend_shared(const Model *m, const Cache *c, int64_t l, int64_t B, const float *qkv, const float *kl,
                          const float *vl, int64_t keys, float scale, float *scores, float *h, float *totals) {
    const int64_t H = m->heads, KV = m->kv, hd = m->head_dim, group = H / KV, qkv_n = (H + 2 * KV) * hd;
    const int64_t row_stride = KV * c->capacity * hd, shared = c->shared;
    prefix_pass(m, c, l, B, qkv, scale, keys, scores, h, 0);  /* 1. the prefix's scores */
    /* 2. each row's own keys, the softmax over both */
    #pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, head = bh % H, g = head / group;
        const float *ok = kl + b * row_stride + g * c->capacity * hd;
        float *sc = scores + bh * keys;
        score_keys(qkv + b * qkv_n + head * hd, ok, keys - shared, hd, scale, sc + shared);
        float top = -INFINITY;
        for (int64_t j = 0; j < keys; j++) top = sc[j] > top ? sc[j] : top;
        totals[bh] = exp_sum(sc, keys, top);
        memset(h + b * H * hd + head * hd, 0, sizeof(float) * hd);
    }
    prefix_pass(m, c, l, B, qkv, scale, keys, scores, h, 1);  /* 3. the prefix's values, read as its keys were */
    /* 4. then each row's own values, after the prefix's as in the one-run order, and the normalisation */
    #pragma omp parallel for schedule(static)
    for (int64_t bh = 0; bh < B * H; bh++) {
        int64_t b = bh / H, head = bh % H, g = head / group;
        float *out = h + b * H * hd + head * hd;
        weigh_values(out, scores + bh * keys + shared, vl + b * row_stride + g * c->capacity * hd, keys - shared, hd);
        for (int64_t i = 0; i < hd; i++) out[i] /= totals[bh];
    }
}

/* One decode step for B rows: tokens (B), positions (B), first (B: the first key each row may see,
 * counting the shared prefix's columns first) -> logits (B, vocab). Writes each row's key and value
 * at cache->column. Returns 0, or -1 if out of memory. */
int basecli_decode_step(const Model *m, int64_t B, const int64_t *tokens, const int64_t *positions,
                        const int64_t *first, const Cache *c, float *logits) {
    const int64_t dim = m->dim, hid = m->hidden, H = m->heads, KV = m->kv, hd = m->head_dim;
    const int64_t qkv_n = (H + 2 * KV) * hd, group = H / KV, keys = c->shared + c->column + 1;
    const int64_t widest = max64(max64(dim, hid), H * hd);
    float *x = malloc(sizeof(float) * B * dim), *h = malloc(sizeof(float) * B * max64(dim, H * hd));
    float *qkv = malloc(sizeof(float) * B * qkv_n), *gu = malloc(sizeof(float) * B * 2 * hid);
    float *act = malloc(sizeof(float) * B * hid), *tmp = malloc(sizeof(float) * B * dim);
    float *scores = malloc(sizeof(float) * B * H * keys), *rope = malloc(sizeof(float) * B * hd);
    block_act *q8 = malloc(sizeof(block_act) * B * (widest / QK));
    float *totals = malloc(sizeof(float) * B * H);
    int status = 0;
    if (!x || !h || !qkv || !gu || !act || !tmp || !scores || !rope || !q8 || !totals) { status = -1; goto done; }

    for (int64_t b = 0; b < B; b++) {
        basecli_dequantize(m->etype, (const char *)m->embed + tokens[b] * basecli_matrix_bytes(m->etype, 1, dim), x + b * dim, 1, dim);
        if (m->pos_embed)
            for (int64_t i = 0; i < dim; i++) x[b * dim + i] += m->pos_embed[positions[b] * dim + i];
        for (int64_t i = 0; m->inv_freq && i < hd / 2; i++) {  /* cos, then sin, of position * inv_freq (an fp32 product, as torch computes it) */
            float f = (float)positions[b] * m->inv_freq[i];
            rope[b * hd + i] = (float)cos((double)f);  /* in double, then rounded: libm's cosf/sinf may take */
            rope[b * hd + hd / 2 + i] = (float)sin((double)f);  /* another code path on another CPU */
        }
    }
    TICK_START;
    const float scale = 1.0f / sqrtf((float)hd);
    const int64_t row_stride = KV * c->capacity * hd;  /* one row's buffer within a layer */

    for (int64_t l = 0; l < m->layers; l++) {
        add_norm_quantize(x, l ? tmp : NULL, m->norm1[l], LAYER_PTR(m, norm1_bias, l), h, q8, B, dim, m->eps);  /* the last layer's MLP output joins here */
        TICK(OTHER);
        matmul_m(&m->qkv[l], q8, h, B, dim, qkv);
        add_bias(qkv, LAYER_PTR(m, qkv_bias, l), B, qkv_n);
        TICK(MATMUL);

        float *kl = c->k + l * B * row_stride, *vl = c->v + l * B * row_stride;
        #pragma omp parallel for schedule(static) if (B >= 8)
        for (int64_t b = 0; b < B; b++) {
            float *row = qkv + b * qkv_n;
            const float *cs = rope + b * hd, *sn = rope + b * hd + hd / 2;
            for (int64_t head = 0; m->inv_freq && head < H + KV; head++) {  /* rotate q and k: x cos + rotate_half(x) sin */
                float *v = row + head * hd;
                for (int64_t i = 0; i < hd / 2; i++) {
                    float a = v[i], z = v[i + hd / 2];
                    v[i] = a * cs[i] - z * sn[i];
                    v[i + hd / 2] = z * cs[i] + a * sn[i];
                }
            }
            for (int64_t g = 0; g < KV; g++) {
                memcpy(kl + b * row_stride + (g * c->capacity + c->column) * hd, row + (H + g) * hd, sizeof(float) * hd);
                memcpy(vl + b * row_stride + (g * c->capacity + c->column) * hd, row + (H + KV + g) * hd, sizeof(float) * hd);
            }
        }

        TICK(OTHER);
        if (c->shared) attend_shared(m, c, l, B, qkv, kl, vl, keys, scale, scores, h, totals);
        else {
            #pragma omp parallel for schedule(static)
            for (int64_t bh = 0; bh < B * H; bh++) {
                int64_t b = bh / H, head = bh % H, g = head / group;
                const float *q = qkv + b * qkv_n + head * hd;
                const float *ok = kl + b * row_stride + g * c->capacity * hd, *ov = vl + b * row_stride + g * c->capacity * hd;
                float *sc = scores + bh * keys, *out = h + b * H * hd + head * hd;
                int64_t f = first[b];
                score_keys(q, ok + f * hd, keys - f, hd, scale, sc + f);
                float top = -INFINITY;
                for (int64_t j = f; j < keys; j++) top = sc[j] > top ? sc[j] : top;
                float total = exp_sum(sc + f, keys - f, top);
                memset(out, 0, sizeof(float) * hd);
                weigh_values(out, sc + f, ov + f * hd, keys - f, hd);
                for (int64_t i = 0; i < hd; i++) out[i] /= total;
            }
        }

        TICK(ATTENTION);
        quantize_act(h, q8, B, H * hd);
        TICK(OTHER);
        matmul_m(&m->o[l], q8, h, B, H * hd, tmp);
        add_bias(tmp, LAYER_PTR(m, o_bias, l), B, dim);
        TICK(MATMUL);
        add_norm_quantize(x, tmp, m->norm2[l], LAYER_PTR(m, norm2_bias, l), h, q8, B, dim, m->eps);
        TICK(OTHER);
        matmul_m(&m->gate_up[l], q8, h, B, dim, gu);  /* (B, 2 hid), or (B, hid) for GPT-2's up alone */
        TICK(MATMUL);
        #pragma omp parallel for schedule(static) if (B >= 8)
        for (int64_t b = 0; b < B; b++) {
            float *a = act + b * hid;
            if (m->gelu) {  /* gu holds up x alone: (B, hid) */
                a = gu + b * hid;
                add_bias(a, LAYER_PTR(m, up_bias, l), 1, hid);
                gelu_tanh(a, hid);
            } else silu_mul(gu + b * 2 * hid, gu + b * 2 * hid + hid, a, hid);
            quantize_act_row(a, q8 + b * (hid / QK), hid);
        }
        TICK(OTHER);
        matmul_m(&m->down[l], q8, m->gelu ? gu : act, B, hid, tmp);
        add_bias(tmp, LAYER_PTR(m, down_bias, l), B, dim);
        TICK(MATMUL);
    }
    add_norm_quantize(x, m->layers ? tmp : NULL, m->norm, m->norm_bias, h, q8, B, dim, m->eps);
    TICK(OTHER);
    matmul_m(m->head, q8, h, B, dim, logits);
    TICK(MATMUL);
done:
    free(x); free(h); free(qkv); free(gu); free(act); free(tmp); free(scores); free(rope); free(q8); free(totals);
    return status;
}

void basecli_set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}

int basecli_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

int basecli_has_avx2(void) {
#ifdef BASECLI_AVX2
    return 1;
#else
    return 0;
#endif
}
