/* One instruction-set variant of the fused side pass (see _fused.c for the contract).
 *
 * _fused.c includes this file once per variant, with these macros defined:
 *   SFX(name)  the name with the variant's suffix (name_base, name_avx2)
 *   KATTR      the variant's function attributes (e.g. target("avx2,fma,f16c"))
 *   VW         float64 lanes per vector: 2 (SSE2 / NEON), 4 (AVX2) or 8 (AVX-512)
 *   X86_LEVEL  0 portable C; 1 AVX2/F16C intrinsics for the decode sweep and the horizontal
 *              sums; 2 the same, with AVX-512 vectors in the Gram and moment kernels
 *
 * Every function here is static and carries KATTR, so the compiler may inline them into one
 * another; the shared scalar helpers of _fused.c (no target attribute) inline into them too.
 *
 * Layouts (all float64, row-major, zero padding where noted):
 *   X        the stored factor: rows mode X (r, len) gives G = X·Xᵀ; cols mode X (len, r) gives
 *            G = Xᵀ·X.  Either way G_ij = Σ_k x_i(k)·x_j(k) over the len "vectors" x(k) ∈ R^r.
 *   S        a block's decoded values in source order: rows mode r rows of ld doubles
 *            (row i holds x_i(k0 .. k0+kb)); cols mode kb·r contiguous doubles.
 *   D        the same block "k-major": kb rows of rp doubles (row k holds x(k0+k), padded to rp
 *            with zeros), for the outer-product kernel.
 *   Gacc     the upper triangle (i ≤ j) of the rp×rp Gram accumulator.
 */

typedef double SFX(vd) __attribute__((vector_size(VW * 8)));
typedef long long SFX(vl) __attribute__((vector_size(VW * 8)));
#define VD SFX(vd)
#define VL SFX(vl)

static inline KATTR VD SFX(vload)(const double *p)
{
    VD v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline KATTR void SFX(vstore)(double *p, VD v) { memcpy(p, &v, sizeof v); }

static inline KATTR VD SFX(vsplat)(double x)
{
#if VW == 2
    return (VD){x, x};
#elif VW == 4
    return (VD){x, x, x, x};
#else
    return (VD){x, x, x, x, x, x, x, x};
#endif
}

/* c ? a : b, lane by lane (c is all-ones or all-zeros per lane) */
static inline KATTR VD SFX(vselect)(VL c, VD a, VD b)
{
    return (VD)(((VL)a & c) | ((VL)b & ~c));
}

static inline KATTR VD SFX(vmin)(VD x, VD lo)
{
#if defined(__SSE2__) && VW == 2
    return (VD)_mm_min_pd((__m128d)x, (__m128d)lo);
#else
    return SFX(vselect)((VL)(x < lo), x, lo);
#endif
}

static inline KATTR VD SFX(vmax)(VD x, VD hi)
{
#if defined(__SSE2__) && VW == 2
    return (VD)_mm_max_pd((__m128d)x, (__m128d)hi);
#else
    return SFX(vselect)((VL)(x > hi), x, hi);
#endif
}

static inline KATTR double SFX(vhsum)(VD v)
{
    double s = v[0];
    for (int l = 1; l < VW; l++)
        s += v[l];
    return s;
}

/* ---- decode: m stored values at src into m float64 at dst, exactly ----------------------- */

static KATTR void SFX(decode)(const unsigned char *src, int dtype, double *dst, Py_ssize_t m)
{
    Py_ssize_t k = 0;
    switch (dtype) {
    case DT_F16:
#if X86_LEVEL
        /* F16C: 8 halves -> 8 floats (exact, subnormals included) -> 2 x 4 doubles (exact) */
        for (; k + 8 <= m; k += 8) {
            __m256 f = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * k)));
            _mm256_storeu_pd(dst + k, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
            _mm256_storeu_pd(dst + k + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
        }
#endif
        for (; k < m; k++)
            dst[k] = f16_to_f64(load_u16(src + 2 * k));
        break;
    case DT_BF16:
#if X86_LEVEL
        /* bf16 is the top half of a float32: widen, shift left 16, convert (exact) */
        for (; k + 8 <= m; k += 8) {
            __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + 2 * k)));
            __m256 f = _mm256_castsi256_ps(_mm256_slli_epi32(w, 16));
            _mm256_storeu_pd(dst + k, _mm256_cvtps_pd(_mm256_castps256_ps128(f)));
            _mm256_storeu_pd(dst + k + 4, _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1)));
        }
#endif
        for (; k < m; k++)
            dst[k] = bf16_to_f64(load_u16(src + 2 * k));
        break;
    case DT_F32:
        for (; k < m; k++) {
            float f;
            memcpy(&f, src + 4 * k, 4);
            dst[k] = (double)f;
        }
        break;
    default: /* DT_F64 */
        memcpy(dst, src, (size_t)m * sizeof(double));
        break;
    }
}

/* ---- per-block statistics over finite data ---------------------------------------------- */

/* Σx, min, max and the count of x == ±0 over seglen doubles at p, assuming every entry is
 * finite (a non-finite entry makes Σx non-finite, and the caller then redoes the block with
 * blockstats_slow).  Two vectors per step keep the add chains independent. */
static KATTR void SFX(seg_stats)(const double *p, Py_ssize_t m, blockstats *b)
{
    const VD zero = SFX(vsplat)(0.0);
    VD s0 = zero, s1 = zero;
    VD lo0 = SFX(vsplat)(INFINITY), lo1 = lo0;
    VD hi0 = SFX(vsplat)(-INFINITY), hi1 = hi0;
    VL z0 = (VL)zero, z1 = (VL)zero;
    Py_ssize_t k = 0;
    for (; k + 2 * VW <= m; k += 2 * VW) {
        VD x0 = SFX(vload)(p + k), x1 = SFX(vload)(p + k + VW);
        s0 += x0;
        s1 += x1;
        lo0 = SFX(vmin)(x0, lo0);
        lo1 = SFX(vmin)(x1, lo1);
        hi0 = SFX(vmax)(x0, hi0);
        hi1 = SFX(vmax)(x1, hi1);
        z0 -= (VL)(x0 == zero); /* a true lane is -1 */
        z1 -= (VL)(x1 == zero);
    }
    double s = SFX(vhsum)(s0 + s1), lo = b->lo, hi = b->hi;
    long long z = 0;
    for (int l = 0; l < VW; l++) {
        lo = lo0[l] < lo ? lo0[l] : lo;
        lo = lo1[l] < lo ? lo1[l] : lo;
        hi = hi0[l] > hi ? hi0[l] : hi;
        hi = hi1[l] > hi ? hi1[l] : hi;
        z += z0[l] + z1[l];
    }
    for (; k < m; k++) {
        double x = p[k];
        s += x;
        lo = x < lo ? x : lo;
        hi = x > hi ? x : hi;
        z += x == 0.0;
    }
    b->sum += s;
    b->lo = lo;
    b->hi = hi;
    b->zeros += z;
}

/* Σd², Σd³, Σd⁴ with d = x − mu over m finite doubles at p (the block's central power sums,
 * about the block mean, so nothing cancels). */
static KATTR void SFX(seg_moments)(const double *p, Py_ssize_t m, double mu, double out[3])
{
    const VD vmu = SFX(vsplat)(mu), zero = SFX(vsplat)(0.0);
    VD a2 = zero, a3 = zero, a4 = zero, b2 = zero, b3 = zero, b4 = zero;
    Py_ssize_t k = 0;
    for (; k + 2 * VW <= m; k += 2 * VW) {
        VD d = SFX(vload)(p + k) - vmu, e = SFX(vload)(p + k + VW) - vmu;
        VD d2 = d * d, e2 = e * e;
        a2 += d2;
        a3 += d2 * d;
        a4 += d2 * d2;
        b2 += e2;
        b3 += e2 * e;
        b4 += e2 * e2;
    }
    double s2 = SFX(vhsum)(a2 + b2), s3 = SFX(vhsum)(a3 + b3), s4 = SFX(vhsum)(a4 + b4);
    for (; k < m; k++) {
        double d = p[k] - mu, d2 = d * d;
        s2 += d2;
        s3 += d2 * d;
        s4 += d2 * d2;
    }
    out[0] += s2;
    out[1] += s3;
    out[2] += s4;
}

#if X86_LEVEL
/* The x86 decode and statistics in one sweep, 16 entries a step: fp16/bf16/fp32 are decoded
 * to 8-lane float32 (exact), whose min, max and zero count are taken in float32 (the same
 * values), then widened to float64 for Σx (four accumulators) and the store into dst. */
#define DS_STEP(LOAD8)                                                                         \
    for (; k + 16 <= m; k += 16) {                                                             \
        __m256 f0 = LOAD8(k), f1 = LOAD8(k + 8);                                               \
        lo0 = _mm256_min_ps(f0, lo0), lo1 = _mm256_min_ps(f1, lo1);                            \
        hi0 = _mm256_max_ps(f0, hi0), hi1 = _mm256_max_ps(f1, hi1);                            \
        z0 = _mm256_sub_epi32(z0, _mm256_castps_si256(_mm256_cmp_ps(f0, fz, _CMP_EQ_OQ)));     \
        z1 = _mm256_sub_epi32(z1, _mm256_castps_si256(_mm256_cmp_ps(f1, fz, _CMP_EQ_OQ)));     \
        __m256d d0 = _mm256_cvtps_pd(_mm256_castps256_ps128(f0));                              \
        __m256d d1 = _mm256_cvtps_pd(_mm256_extractf128_ps(f0, 1));                            \
        __m256d d2 = _mm256_cvtps_pd(_mm256_castps256_ps128(f1));                              \
        __m256d d3 = _mm256_cvtps_pd(_mm256_extractf128_ps(f1, 1));                            \
        s0 = _mm256_add_pd(s0, d0), s1 = _mm256_add_pd(s1, d1);                                \
        s2 = _mm256_add_pd(s2, d2), s3 = _mm256_add_pd(s3, d3);                                \
        _mm256_storeu_pd(dst + k, d0), _mm256_storeu_pd(dst + k + 4, d1);                      \
        _mm256_storeu_pd(dst + k + 8, d2), _mm256_storeu_pd(dst + k + 12, d3);                 \
    }
#define LOAD_F16(i) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(src + 2 * (i))))
#define LOAD_BF16(i)                                                                           \
    _mm256_castsi256_ps(_mm256_slli_epi32(                                                     \
        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(src + 2 * (i)))), 16))
#define LOAD_F32(i) _mm256_loadu_ps((const float *)(src + 4 * (i)))

/* decode m values into dst and add their Σx, min, max, zeros to b (finite data assumed, as
 * in seg_stats) */
static KATTR void SFX(decode_stats)(const unsigned char *src, int dtype, double *dst,
                                    Py_ssize_t m, blockstats *b)
{
    Py_ssize_t k = 0;
    if (dtype == DT_F64) { /* already float64: copy, with seg_stats' sweep */
        SFX(decode)(src, dtype, dst, m);
        SFX(seg_stats)(dst, m, b);
        return;
    }
    const __m256 fz = _mm256_setzero_ps();
    __m256 lo0 = _mm256_set1_ps(INFINITY), lo1 = lo0, hi0 = _mm256_set1_ps(-INFINITY), hi1 = hi0;
    __m256i z0 = _mm256_setzero_si256(), z1 = z0;
    __m256d s0 = _mm256_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
    if (dtype == DT_F16)
        DS_STEP(LOAD_F16)
    else if (dtype == DT_BF16)
        DS_STEP(LOAD_BF16)
    else
        DS_STEP(LOAD_F32)
    float lo8[8], hi8[8];
    int32_t zc[8];
    double s4[4];
    _mm256_storeu_ps(lo8, _mm256_min_ps(lo0, lo1));
    _mm256_storeu_ps(hi8, _mm256_max_ps(hi0, hi1));
    _mm256_storeu_si256((__m256i *)zc, _mm256_add_epi32(z0, z1));
    _mm256_storeu_pd(s4, _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3)));
    double lo = b->lo, hi = b->hi;
    long long z = 0;
    for (int l = 0; l < 8; l++) {
        lo = lo8[l] < lo ? lo8[l] : lo;
        hi = hi8[l] > hi ? hi8[l] : hi;
        z += zc[l];
    }
    b->sum += (s4[0] + s4[1]) + (s4[2] + s4[3]);
    b->lo = lo, b->hi = hi, b->zeros += z;
    if (k < m) { /* the tail */
        SFX(decode)(src + k * itemsize(dtype), dtype, dst + k, m - k);
        SFX(seg_stats)(dst + k, m - k, b);
    }
}
#undef DS_STEP
#undef LOAD_F16
#undef LOAD_BF16
#undef LOAD_F32
#else
static KATTR void SFX(decode_stats)(const unsigned char *src, int dtype, double *dst,
                                    Py_ssize_t m, blockstats *b)
{
    SFX(decode)(src, dtype, dst, m);
    SFX(seg_stats)(dst, m, b);
}
#endif

/* ---- Gram kernels ----------------------------------------------------------------------- */

/* Gacc[i][j] += Σ_l c_t[l] for t = 0..3, j = j0 + t: the four horizontal sums of one tile row */
static inline KATTR void SFX(hsum4_add)(double *g, VD c0, VD c1, VD c2, VD c3)
{
#if X86_LEVEL
#if VW == 8 /* fold each 8-lane accumulator to 4 lanes first */
    __m256d a0 = _mm256_add_pd(_mm512_castpd512_pd256((__m512d)c0), _mm512_extractf64x4_pd((__m512d)c0, 1));
    __m256d a1 = _mm256_add_pd(_mm512_castpd512_pd256((__m512d)c1), _mm512_extractf64x4_pd((__m512d)c1, 1));
    __m256d a2 = _mm256_add_pd(_mm512_castpd512_pd256((__m512d)c2), _mm512_extractf64x4_pd((__m512d)c2, 1));
    __m256d a3 = _mm256_add_pd(_mm512_castpd512_pd256((__m512d)c3), _mm512_extractf64x4_pd((__m512d)c3, 1));
#else
    __m256d a0 = (__m256d)c0, a1 = (__m256d)c1, a2 = (__m256d)c2, a3 = (__m256d)c3;
#endif
    __m256d t0 = _mm256_hadd_pd(a0, a1); /* c0₀+c0₁, c1₀+c1₁, c0₂+c0₃, c1₂+c1₃ */
    __m256d t1 = _mm256_hadd_pd(a2, a3);
    __m256d s = _mm256_add_pd(_mm256_permute2f128_pd(t0, t1, 0x20),
                              _mm256_permute2f128_pd(t0, t1, 0x31)); /* Σc0, Σc1, Σc2, Σc3 */
    _mm256_storeu_pd(g, _mm256_add_pd(_mm256_loadu_pd(g), s));
#else
    g[0] += SFX(vhsum)(c0);
    g[1] += SFX(vhsum)(c1);
    g[2] += SFX(vhsum)(c2);
    g[3] += SFX(vhsum)(c3);
#endif
}

/* Dot-product kernel, rows mode: S holds rp rows of ld doubles (rows ≥ r and lanes ≥ kb are
 * zero), nk = kb rounded up to VW.  Tile: 2 rows i × 4 rows j, 8 vector accumulators
 *   c[a][t] += S[i+a][k..k+VW) ∘ S[j+t][k..k+VW),   G_ij = Σ_lanes c.
 * Only tiles reaching the upper triangle are run (j-block end ≥ i). */
static KATTR void SFX(gram_dot)(const double *S, Py_ssize_t rp, Py_ssize_t ld, Py_ssize_t nk,
                                double *G)
{
    for (Py_ssize_t i = 0; i < rp; i += 2) {
        const double *a0 = S + i * ld, *a1 = a0 + ld;
        for (Py_ssize_t j = i / 4 * 4; j < rp; j += 4) {
            const double *b0 = S + j * ld, *b1 = b0 + ld, *b2 = b1 + ld, *b3 = b2 + ld;
            VD c00 = SFX(vsplat)(0.0), c01 = c00, c02 = c00, c03 = c00;
            VD c10 = c00, c11 = c00, c12 = c00, c13 = c00;
            for (Py_ssize_t k = 0; k < nk; k += VW) {
                VD x0 = SFX(vload)(a0 + k), x1 = SFX(vload)(a1 + k), y;
                y = SFX(vload)(b0 + k);
                c00 += x0 * y;
                c10 += x1 * y;
                y = SFX(vload)(b1 + k);
                c01 += x0 * y;
                c11 += x1 * y;
                y = SFX(vload)(b2 + k);
                c02 += x0 * y;
                c12 += x1 * y;
                y = SFX(vload)(b3 + k);
                c03 += x0 * y;
                c13 += x1 * y;
            }
            SFX(hsum4_add)(G + i * rp + j, c00, c01, c02, c03);
            SFX(hsum4_add)(G + (i + 1) * rp + j, c10, c11, c12, c13);
        }
    }
}

/* Outer-product kernel: D holds kb rows of rp doubles (row k = x(k), zero-padded).  Tile:
 * 4 rows i × 2·VW columns j, 8 vector accumulators
 *   c[a][t] += D[k][i+a] · D[k][j+t·VW .. +VW)   (a broadcast times a vector),
 * added into Gacc once per block.  Only tiles reaching the upper triangle are run. */
static KATTR void SFX(gram_outer)(const double *D, Py_ssize_t rp, Py_ssize_t kb, double *G)
{
    for (Py_ssize_t i = 0; i < rp; i += 4) {
        for (Py_ssize_t j = i / (2 * VW) * (2 * VW); j < rp; j += 2 * VW) {
            VD c00 = SFX(vsplat)(0.0), c01 = c00, c10 = c00, c11 = c00;
            VD c20 = c00, c21 = c00, c30 = c00, c31 = c00;
            const double *p = D;
            for (Py_ssize_t k = 0; k < kb; k++, p += rp) {
                VD y0 = SFX(vload)(p + j), y1 = SFX(vload)(p + j + VW), x;
                x = SFX(vsplat)(p[i]);
                c00 += x * y0;
                c01 += x * y1;
                x = SFX(vsplat)(p[i + 1]);
                c10 += x * y0;
                c11 += x * y1;
                x = SFX(vsplat)(p[i + 2]);
                c20 += x * y0;
                c21 += x * y1;
                x = SFX(vsplat)(p[i + 3]);
                c30 += x * y0;
                c31 += x * y1;
            }
            double *g = G + i * rp + j;
            SFX(vstore)(g, SFX(vload)(g) + c00);
            SFX(vstore)(g + VW, SFX(vload)(g + VW) + c01);
            g += rp;
            SFX(vstore)(g, SFX(vload)(g) + c10);
            SFX(vstore)(g + VW, SFX(vload)(g + VW) + c11);
            g += rp;
            SFX(vstore)(g, SFX(vload)(g) + c20);
            SFX(vstore)(g + VW, SFX(vload)(g + VW) + c21);
            g += rp;
            SFX(vstore)(g, SFX(vload)(g) + c30);
            SFX(vstore)(g + VW, SFX(vload)(g + VW) + c31);
        }
    }
}

/* D[k][i] = S[i][k0 + k] for i < r, k < kb: a rows-mode block made k-major for gram_outer.
 * x86: 4×4 tiles transposed in registers (unpack, then swap 128-bit halves). */
static KATTR void SFX(transpose)(const double *S, Py_ssize_t r, Py_ssize_t ld, Py_ssize_t k0,
                                 Py_ssize_t kb, double *D, Py_ssize_t rp)
{
    Py_ssize_t i = 0;
#if X86_LEVEL
    for (; i + 4 <= r; i += 4) {
        const double *s0 = S + i * ld + k0, *s1 = s0 + ld, *s2 = s1 + ld, *s3 = s2 + ld;
        Py_ssize_t k = 0;
        for (; k + 4 <= kb; k += 4) {
            __m256d a = _mm256_loadu_pd(s0 + k), b = _mm256_loadu_pd(s1 + k);
            __m256d c = _mm256_loadu_pd(s2 + k), d = _mm256_loadu_pd(s3 + k);
            __m256d ab0 = _mm256_unpacklo_pd(a, b), ab1 = _mm256_unpackhi_pd(a, b);
            __m256d cd0 = _mm256_unpacklo_pd(c, d), cd1 = _mm256_unpackhi_pd(c, d);
            double *t = D + k * rp + i;
            _mm256_storeu_pd(t, _mm256_permute2f128_pd(ab0, cd0, 0x20));
            _mm256_storeu_pd(t + rp, _mm256_permute2f128_pd(ab1, cd1, 0x20));
            _mm256_storeu_pd(t + 2 * rp, _mm256_permute2f128_pd(ab0, cd0, 0x31));
            _mm256_storeu_pd(t + 3 * rp, _mm256_permute2f128_pd(ab1, cd1, 0x31));
        }
        for (; k < kb; k++) {
            double *t = D + k * rp + i;
            t[0] = s0[k], t[1] = s1[k], t[2] = s2[k], t[3] = s3[k];
        }
    }
#endif
    for (; i < r; i++)
        for (Py_ssize_t k = 0; k < kb; k++)
            D[k * rp + i] = S[i * ld + k0 + k];
}

/* ---- the pass --------------------------------------------------------------------------- */

/* Runs the pass described by P (see pass_t); returns 0, or -1 when a buffer could not be
 * allocated.  Called without the GIL. */
static KATTR int SFX(run)(pass_t *P)
{
    const int rows_mode = P->mode == MODE_ROWS;
    const Py_ssize_t r = rows_mode ? P->rows : P->cols;   /* the Gram's order */
    const Py_ssize_t len = rows_mode ? P->cols : P->rows; /* the number of vectors x(k) */
    const Py_ssize_t isz = itemsize(P->dtype);
    const Py_ssize_t rpa = 2 * VW > 4 ? 2 * VW : 4; /* tile multiple of both kernels */
    const Py_ssize_t rp = r > 0 ? (r + rpa - 1) / rpa * rpa : rpa;
    const int use_dot = rows_mode && rp <= DOT_MAX_RANK;
    const unsigned char *src = (const unsigned char *)P->src;

    /* Block length kb ≤ kbmax vectors, so that D is about BLOCK_DOUBLES (L1).  A rows-mode
     * block for the outer kernel is decoded ROWS_BLOCK_MIN at a time at least (long rows
     * for the decode sweep), then made k-major kdmax vectors at a time. */
    Py_ssize_t kdmax = BLOCK_DOUBLES / rp;
    if (kdmax < 2 * VW)
        kdmax = 2 * VW;
    Py_ssize_t kbmax = kdmax;
    if (use_dot)
        kbmax = kbmax / VW * VW;
    else if (rows_mode && kbmax < ROWS_BLOCK_MIN)
        kbmax = ROWS_BLOCK_MIN;
    if (kbmax > len)
        kbmax = (len + VW - 1) / VW * VW;
    if (kdmax > kbmax)
        kdmax = kbmax;
    const Py_ssize_t ld = kbmax; /* row stride of S in rows mode */

    buffer gbuf = {0}, sbuf = {0}, dbuf = {0};
    double *G = NULL, *S = NULL, *D = NULL;
    int status = -1;
    if (r > 0 && len > 0) {
        G = buffer_zeros(&gbuf, (size_t)rp * (size_t)rp);
        S = buffer_zeros(&sbuf, (size_t)(use_dot ? rp : r) * (size_t)ld);
        if (!rows_mode && r == rp)
            D = S; /* a cols-mode block is already k-major */
        else if (!use_dot)
            D = buffer_zeros(&dbuf, (size_t)kdmax * (size_t)rp);
        if (!G || !S || (!use_dot && !D))
            goto done;
    }

    compsum total = {0.0, 0.0};
    moments mom = {0.0, 0.0, 0.0, 0.0, 0.0};
    long long zeros = 0, nonfinite = 0;
    double lo = INFINITY, hi = -INFINITY;

    for (Py_ssize_t k0 = 0; r > 0 && k0 < len; k0 += kbmax) {
        const Py_ssize_t kb = len - k0 < kbmax ? len - k0 : kbmax;
        const Py_ssize_t nk = (kb + VW - 1) / VW * VW;
        /* segments of S holding this block's values: rows mode r rows of kb at stride ld */
        const Py_ssize_t nseg = rows_mode ? r : 1, seglen = rows_mode ? kb : kb * r;

        /* 1. decode, with Σx, min, max, zeros; redone entry by entry if the block holds NaN/Inf
         * (then Σx comes out non-finite) */
        blockstats bs = {0.0, INFINITY, -INFINITY, 0, 0};
        if (rows_mode) {
            for (Py_ssize_t i = 0; i < r; i++) {
                SFX(decode_stats)(src + (size_t)(i * len + k0) * (size_t)isz, P->dtype,
                                  S + i * ld, kb, &bs);
                for (Py_ssize_t k = kb; k < nk; k++)
                    S[i * ld + k] = 0.0; /* the dot kernel reads whole vectors */
            }
        } else {
            SFX(decode_stats)(src + (size_t)(k0 * r) * (size_t)isz, P->dtype, S, kb * r, &bs);
        }
        if (!isfinite(bs.sum))
            blockstats_slow(S, nseg, seglen, ld, &bs);
        compsum_add(&total, bs.sum);
        zeros += bs.zeros;
        nonfinite += bs.nonfinite;
        lo = bs.lo < lo ? bs.lo : lo;
        hi = bs.hi > hi ? bs.hi : hi;

        /* 3. central moments of the block about its own mean, merged into the running ones */
        const double nfin = (double)(nseg * seglen - bs.nonfinite);
        if (P->moments && nfin > 0) {
            double mu = bs.sum / nfin, pw[3] = {0.0, 0.0, 0.0};
            if (bs.nonfinite == 0) {
                for (Py_ssize_t s = 0; s < nseg; s++)
                    SFX(seg_moments)(S + s * ld, seglen, mu, pw);
            } else {
                moments_slow(S, nseg, seglen, ld, mu, pw);
            }
            moments_merge(&mom, nfin, mu, pw[0], pw[1], pw[2]);
        }

        /* 4. the Gram */
        if (use_dot) {
            SFX(gram_dot)(S, rp, ld, nk, G);
        } else {
            if (rows_mode) {
                for (Py_ssize_t c0 = 0; c0 < kb; c0 += kdmax) {
                    const Py_ssize_t kd = kb - c0 < kdmax ? kb - c0 : kdmax;
                    SFX(transpose)(S, r, ld, c0, kd, D, rp);
                    SFX(gram_outer)(D, rp, kd, G);
                }
            } else {
                if (D != S)
                    for (Py_ssize_t k = 0; k < kb; k++) /* pad each row from r to rp */
                        memcpy(D + k * rp, S + k * r, (size_t)r * sizeof(double));
                SFX(gram_outer)(D, rp, kb, G);
            }
        }
    }

    /* results: the Gram mirrored from its upper triangle */
    for (Py_ssize_t i = 0; i < r; i++)
        for (Py_ssize_t j = 0; j < r; j++)
            P->gram[i * r + j] = !G ? 0.0 : i <= j ? G[i * rp + j] : G[j * rp + i];
    P->sum = compsum_value(&total);
    P->zeros = zeros;
    P->nonfinite = nonfinite;
    P->min = lo <= hi ? lo : NAN; /* no finite entry: NaN */
    P->max = lo <= hi ? hi : NAN;
    P->m2 = P->moments ? mom.m2 : NAN;
    P->m4 = P->moments ? mom.m4 : NAN;
    status = 0;
done:
    buffer_free(&gbuf);
    buffer_free(&sbuf);
    buffer_free(&dbuf);
    return status;
}

#undef VD
#undef VL
