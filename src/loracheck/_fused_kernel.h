/* One instruction-set variant of the fused side pass (see _fused.c for the contract).
 *
 * _fused.c includes this file once per variant, with these macros defined:
 *   SFX(name)  the name with the variant's suffix (name_base, name_avx2)
 *   KATTR      the variant's function attributes (e.g. target("avx2,fma,f16c"))
 *   VW         float64 lanes per vector: 2 (SSE2 / NEON), 4 (AVX2) or 8 (AVX-512)
 *   X86_LEVEL  0 portable C; 1 AVX2/F16C intrinsics for the decode sweep and the horizontal
 *              sums; 2 the same with AVX-512 vectors (the decode sweep 16 lanes wide)
 *
 * Every function here is static and carries KATTR, so the compiler may inline them into one
 * another; the shared scalar helpers of _fused.c (no target attribute) inline into them too.
 *
 * Layouts (all float64, row-major, zero padding where noted):
 *   X        the stored factor: rows mode X (r, len) gives G = X·Xᵀ; cols mode X (len, r) gives
 *            G = Xᵀ·X.  Either way G_ij = Σ_k x_i(k)·x_j(k) over the len "vectors" x(k) ∈ R^r.
 *   S        rows mode: a block's decoded values in source order, r rows of ld doubles
 *            (row i holds x_i(k0 .. k0+kb)); cols mode kb·r contiguous doubles.
 *   D        cols mode: the block padded, kb rows of rp doubles (row k holds x(k0+k), zeros
 *            after r), for the outer-product kernel; S itself when r = rp.
 *   Gacc     the upper triangle (i ≤ j) of the rp×rp Gram accumulator.
 *
 * A block's values sit in nseg "segments" of seglen doubles, ld apart (rows mode: the r rows
 * of S; cols mode: one segment of kb·r).  The statistics sweeps keep their vector
 * accumulators across segments and reduce once per block, not once per row.
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

static inline KATTR double SFX(decode_one)(const unsigned char *src, int dtype, Py_ssize_t k)
{
    if (dtype == DT_F16)
        return f16_to_f64(load_u16(src + 2 * k));
    if (dtype == DT_BF16)
        return bf16_to_f64(load_u16(src + 2 * k));
    if (dtype == DT_F32) {
        float f;
        memcpy(&f, src + 4 * k, 4);
        return (double)f;
    }
    double d;
    memcpy(&d, src + 8 * k, 8);
    return d;
}

#if !X86_LEVEL
/* the portable decode (the x86 variants decode inside decode_stats' sweep) */
static KATTR void SFX(decode)(const unsigned char *src, int dtype, double *dst, Py_ssize_t m)
{
    if (dtype == DT_F64) {
        memcpy(dst, src, (size_t)m * sizeof(double));
        return;
    }
    for (Py_ssize_t k = 0; k < m; k++)
        dst[k] = SFX(decode_one)(src, dtype, k);
}
#endif

/* ---- per-block statistics over finite data ---------------------------------------------- */

/* Σx, min, max and the count of x == ±0 over nseg segments of m doubles at p (ld apart),
 * assuming every entry is finite (a non-finite entry makes Σx non-finite, and the caller then
 * redoes the block with blockstats_slow).  Two vectors per step keep the add chains
 * independent. */
static KATTR void SFX(seg_stats)(const double *p, Py_ssize_t ld, Py_ssize_t nseg, Py_ssize_t m,
                                 blockstats *b)
{
    const VD zero = SFX(vsplat)(0.0);
    VD s0 = zero, s1 = zero;
    VD lo0 = SFX(vsplat)(INFINITY), lo1 = lo0;
    VD hi0 = SFX(vsplat)(-INFINITY), hi1 = hi0;
    VL z0 = (VL)zero, z1 = (VL)zero;
    double s = 0.0, lo = b->lo, hi = b->hi;
    long long z = 0;
    for (Py_ssize_t g = 0; g < nseg; g++, p += ld) {
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
        for (; k < m; k++) {
            double x = p[k];
            s += x;
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
            z += x == 0.0;
        }
    }
    s += SFX(vhsum)(s0 + s1);
    for (int l = 0; l < VW; l++) {
        lo = lo0[l] < lo ? lo0[l] : lo;
        lo = lo1[l] < lo ? lo1[l] : lo;
        hi = hi0[l] > hi ? hi0[l] : hi;
        hi = hi1[l] > hi ? hi1[l] : hi;
        z += z0[l] + z1[l];
    }
    b->sum += s;
    b->lo = lo;
    b->hi = hi;
    b->zeros += z;
}

/* Σd², Σd³, Σd⁴ with d = x − mu over nseg segments of m finite doubles at p, ld apart (the
 * block's central power sums, about the block mean, so nothing cancels). */
static KATTR void SFX(seg_moments)(const double *p, Py_ssize_t ld, Py_ssize_t nseg,
                                   Py_ssize_t m, double mu, double out[3])
{
    const VD vmu = SFX(vsplat)(mu), zero = SFX(vsplat)(0.0);
    VD a2 = zero, a3 = zero, a4 = zero, b2 = zero, b3 = zero, b4 = zero;
    double s2 = 0.0, s3 = 0.0, s4 = 0.0;
    for (Py_ssize_t g = 0; g < nseg; g++, p += ld) {
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
        for (; k < m; k++) {
            double d = p[k] - mu, d2 = d * d;
            s2 += d2;
            s3 += d2 * d;
            s4 += d2 * d2;
        }
    }
    out[0] += s2 + SFX(vhsum)(a2 + b2);
    out[1] += s3 + SFX(vhsum)(a3 + b3);
    out[2] += s4 + SFX(vhsum)(a4 + b4);
}

#if X86_LEVEL
/* The x86 decode and statistics in one sweep: fp16/bf16/fp32 are decoded to float32 (exact),
 * whose min, max and zero count are taken in float32 (the same values), then widened to
 * float64 for Σx (four accumulators) and the store into dst.  AVX2 takes 16 entries a step
 * as two 8-lane float32 vectors, AVX-512 32 as two 16-lane ones (half the instructions per
 * entry: at r = 16 this sweep is a third of the pass).  A segment's last m mod step entries
 * are decoded one by one. */
#if X86_LEVEL == 2
#define DS_W 16 /* float32 lanes */
typedef __m512 SFX(vf);
#define DS_FMIN _mm512_min_ps
#define DS_FMAX _mm512_max_ps
/* zeros: the lanes where f == ±0 add 1 to the count (a mask, no compare vector) */
#define DS_ZADD(z, f)                                                                          \
    _mm512_mask_add_epi32(z, _mm512_cmp_ps_mask(f, _mm512_setzero_ps(), _CMP_EQ_OQ), z, one)
#define DS_LO(f) _mm512_cvtps_pd(_mm512_castps512_ps256(f))
#define DS_HI(f) _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1)))
#define DS_ADDD _mm512_add_pd
#define DS_STORED _mm512_storeu_pd
#define LOAD_F16(i) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(s + 2 * (i))))
#define LOAD_BF16(i)                                                                           \
    _mm512_castsi512_ps(_mm512_slli_epi32(                                                     \
        _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(s + 2 * (i)))), 16))
#define LOAD_F32(i) _mm512_loadu_ps((const float *)(s + 4 * (i)))
typedef __m512i SFX(vz);
typedef __m512d SFX(vdd);
#else
#define DS_W 8
typedef __m256 SFX(vf);
#define DS_FMIN _mm256_min_ps
#define DS_FMAX _mm256_max_ps
#define DS_ZADD(z, f)                                                                          \
    _mm256_sub_epi32(z, _mm256_castps_si256(_mm256_cmp_ps(f, _mm256_setzero_ps(), _CMP_EQ_OQ)))
#define DS_LO(f) _mm256_cvtps_pd(_mm256_castps256_ps128(f))
#define DS_HI(f) _mm256_cvtps_pd(_mm256_extractf128_ps(f, 1))
#define DS_ADDD _mm256_add_pd
#define DS_STORED _mm256_storeu_pd
#define LOAD_F16(i) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + 2 * (i))))
#define LOAD_BF16(i)                                                                           \
    _mm256_castsi256_ps(_mm256_slli_epi32(                                                     \
        _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(s + 2 * (i)))), 16))
#define LOAD_F32(i) _mm256_loadu_ps((const float *)(s + 4 * (i)))
typedef __m256i SFX(vz);
typedef __m256d SFX(vdd);
#endif

/* all segments of one dtype: the vector steps, then the segment's tail entry by entry */
#define DS_SEGMENTS(LOAD)                                                                      \
    for (Py_ssize_t g = 0; g < nseg; g++) {                                                    \
        const unsigned char *s = src + (size_t)(g * sstride) * (size_t)isz;                    \
        double *d = dst + g * ld;                                                              \
        Py_ssize_t k = 0;                                                                      \
        for (; k + 2 * DS_W <= m; k += 2 * DS_W) {                                             \
            SFX(vf) f0 = LOAD(k), f1 = LOAD(k + DS_W);                                         \
            lo0 = DS_FMIN(f0, lo0), lo1 = DS_FMIN(f1, lo1);                                    \
            hi0 = DS_FMAX(f0, hi0), hi1 = DS_FMAX(f1, hi1);                                    \
            z0 = DS_ZADD(z0, f0), z1 = DS_ZADD(z1, f1);                                        \
            SFX(vdd) d0 = DS_LO(f0), d1 = DS_HI(f0), d2 = DS_LO(f1), d3 = DS_HI(f1);           \
            s0 = DS_ADDD(s0, d0), s1 = DS_ADDD(s1, d1);                                        \
            s2 = DS_ADDD(s2, d2), s3 = DS_ADDD(s3, d3);                                        \
            DS_STORED(d + k, d0), DS_STORED(d + k + DS_W / 2, d1);                             \
            DS_STORED(d + k + DS_W, d2), DS_STORED(d + k + 3 * DS_W / 2, d3);                  \
        }                                                                                      \
        for (; k < m; k++) {                                                                   \
            const double x = SFX(decode_one)(s, dtype, k);                                     \
            d[k] = x;                                                                          \
            ts += x;                                                                           \
            lo = x < lo ? x : lo;                                                              \
            hi = x > hi ? x : hi;                                                              \
            tz += x == 0.0;                                                                    \
        }                                                                                      \
    }

/* decode nseg segments of m values (source segments sstride values apart, destination ld
 * apart) and add their Σx, min, max, zeros to b (finite data assumed, as in seg_stats) */
static KATTR void SFX(decode_stats)(const unsigned char *src, Py_ssize_t sstride, int dtype,
                                    double *dst, Py_ssize_t ld, Py_ssize_t nseg, Py_ssize_t m,
                                    blockstats *b)
{
    const Py_ssize_t isz = itemsize(dtype);
    if (dtype == DT_F64) { /* already float64: copy, with seg_stats' sweep */
        for (Py_ssize_t g = 0; g < nseg; g++)
            memcpy(dst + g * ld, src + (size_t)(g * sstride) * 8, (size_t)m * sizeof(double));
        SFX(seg_stats)(dst, ld, nseg, m, b);
        return;
    }
#if X86_LEVEL == 2
    const __m512i one = _mm512_set1_epi32(1);
    __m512 lo0 = _mm512_set1_ps(INFINITY), lo1 = lo0, hi0 = _mm512_set1_ps(-INFINITY), hi1 = hi0;
    __m512i z0 = _mm512_setzero_si512(), z1 = z0;
    __m512d s0 = _mm512_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
#else
    __m256 lo0 = _mm256_set1_ps(INFINITY), lo1 = lo0, hi0 = _mm256_set1_ps(-INFINITY), hi1 = hi0;
    __m256i z0 = _mm256_setzero_si256(), z1 = z0;
    __m256d s0 = _mm256_setzero_pd(), s1 = s0, s2 = s0, s3 = s0;
#endif
    double ts = 0.0, lo = b->lo, hi = b->hi; /* the tails' Σx, and min/max of all */
    long long tz = 0;
    if (dtype == DT_F16)
        DS_SEGMENTS(LOAD_F16)
    else if (dtype == DT_BF16)
        DS_SEGMENTS(LOAD_BF16)
    else
        DS_SEGMENTS(LOAD_F32)
    float lo8[DS_W], hi8[DS_W];
    int32_t zc[DS_W];
    double s4[DS_W / 2];
#if X86_LEVEL == 2
    _mm512_storeu_ps(lo8, _mm512_min_ps(lo0, lo1));
    _mm512_storeu_ps(hi8, _mm512_max_ps(hi0, hi1));
    _mm512_storeu_si512(zc, _mm512_add_epi32(z0, z1));
    _mm512_storeu_pd(s4, _mm512_add_pd(_mm512_add_pd(s0, s1), _mm512_add_pd(s2, s3)));
#else
    _mm256_storeu_ps(lo8, _mm256_min_ps(lo0, lo1));
    _mm256_storeu_ps(hi8, _mm256_max_ps(hi0, hi1));
    _mm256_storeu_si256((__m256i *)zc, _mm256_add_epi32(z0, z1));
    _mm256_storeu_pd(s4, _mm256_add_pd(_mm256_add_pd(s0, s1), _mm256_add_pd(s2, s3)));
#endif
    double vs = 0.0;
    for (int l = 0; l < DS_W; l++) {
        lo = lo8[l] < lo ? lo8[l] : lo;
        hi = hi8[l] > hi ? hi8[l] : hi;
        tz += zc[l];
    }
    for (int l = 0; l < DS_W / 2; l++)
        vs += s4[l];
    b->sum += vs + ts;
    b->lo = lo, b->hi = hi, b->zeros += tz;
}
#undef DS_SEGMENTS
#undef DS_W
#undef DS_FMIN
#undef DS_FMAX
#undef DS_ZADD
#undef DS_LO
#undef DS_HI
#undef DS_ADDD
#undef DS_STORED
#undef LOAD_F16
#undef LOAD_BF16
#undef LOAD_F32
#else
static KATTR void SFX(decode_stats)(const unsigned char *src, Py_ssize_t sstride, int dtype,
                                    double *dst, Py_ssize_t ld, Py_ssize_t nseg, Py_ssize_t m,
                                    blockstats *b)
{
    const Py_ssize_t isz = itemsize(dtype);
    for (Py_ssize_t g = 0; g < nseg; g++)
        SFX(decode)(src + (size_t)(g * sstride) * (size_t)isz, dtype, dst + g * ld, m);
    SFX(seg_stats)(dst, ld, nseg, m, b);
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
 * zero), nk = kb rounded up to VW.  Tile: DOT_MR rows i × 4 rows j, 4·DOT_MR vector
 * accumulators
 *   c[a][t] += S[i+a][k..k+VW) ∘ S[j+t][k..k+VW),   G_ij = Σ_lanes c,
 * summed across lanes into Gacc once per tile and block (so a block is DOT_MIN_K vectors
 * long at least).  Per step it loads DOT_MR + 4 vectors for 4·DOT_MR FMAs: AVX-512 runs
 * 4 × 4 tiles (8 loads, 16 FMAs; its 32 registers hold them), AVX2 3 × 4 (7 loads, 12 FMAs:
 * 12 accumulators and 3 x vectors fill 15 of its 16 registers, each y a memory operand;
 * 2 × 4 tiles, 8 add chains, ran at 14 GFMA/s against 17 at r = 64 on a Zen 3, measured
 * ad hoc), the portable
 * variant 2 × 4.  Only tiles reaching the upper triangle are run (j-block end ≥ i); with rp
 * a multiple of 4, at r = 64 that is 2176 products per vector x(k) for the 2080 of i ≤ j
 * (2236 with AVX2's 3-row tiles).
 *
 * Rows mode takes this kernel at every rank: S is already "k-contiguous", where the outer
 * kernel needs a transposed copy (its shuffles share the FMA port) and pads r to its
 * 16-wide column blocks.  The j rows are taken in panels of about DOT_PANEL_DOUBLES that
 * stay in L1 while every i tile above them streams past (S itself is rp·kb doubles: L2 at
 * high rank). */
#if VW == 8
#define DOT_MR 4
#elif VW == 4
#define DOT_MR 3 /* 12 accumulators, 3 x vectors; y is the FMAs' memory operand */
#else
#define DOT_MR 2
#endif

/* the number of tiles gram_dot runs (to spread the prefetches over them) */
static KATTR Py_ssize_t SFX(dot_tiles)(Py_ssize_t rp)
{
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < rp; i += DOT_MR)
        n += (rp - i / 4 * 4) / 4;
    return n;
}

/* one tile: rows i .. i+mr of S against rows j .. j+4, added into G's rows i .. i+mr */
static inline __attribute__((always_inline)) KATTR void
SFX(dot_tile)(const double *S, Py_ssize_t rp, Py_ssize_t ld, Py_ssize_t nk, Py_ssize_t i,
              Py_ssize_t j, const int mr, double *G)
{
    VD c[DOT_MR][4];
#pragma GCC unroll 4
    for (int a = 0; a < DOT_MR; a++)
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++)
            c[a][t] = SFX(vsplat)(0.0);
    for (Py_ssize_t k = 0; k < nk; k += VW) {
        VD x[DOT_MR];
#pragma GCC unroll 4
        for (int a = 0; a < DOT_MR; a++)
            if (a < mr)
                x[a] = SFX(vload)(S + (i + a) * ld + k);
#pragma GCC unroll 4
        for (int t = 0; t < 4; t++) {
            const VD y = SFX(vload)(S + (j + t) * ld + k);
#pragma GCC unroll 4
            for (int a = 0; a < DOT_MR; a++)
                if (a < mr)
                    c[a][t] += x[a] * y;
        }
    }
#pragma GCC unroll 4
    for (int a = 0; a < DOT_MR; a++)
        if (a < mr)
            SFX(hsum4_add)(G + (i + a) * rp + j, c[a][0], c[a][1], c[a][2], c[a][3]);
}

static KATTR void SFX(gram_dot)(const double *S, Py_ssize_t rp, Py_ssize_t ld, Py_ssize_t nk,
                                double *G, prefetcher *pf)
{
    Py_ssize_t panel = DOT_PANEL_DOUBLES / (ld > 0 ? ld : 1) / 4 * 4; /* j rows a panel */
    if (panel < 4)
        panel = 4;
    for (Py_ssize_t p0 = 0; p0 < rp; p0 += panel) {
        const Py_ssize_t p1 = p0 + panel < rp ? p0 + panel : rp;
        for (Py_ssize_t i = 0; i < p1; i += DOT_MR) {
#if DOT_MR == 3
            /* the last tile may be short (rp is a multiple of 4, not of 3); a tile's rows past
             * the panel only meet its columns below the diagonal */
            const int mr = rp - i < DOT_MR ? (int)(rp - i) : DOT_MR;
#endif
            const Py_ssize_t jstart = i / 4 * 4 > p0 ? i / 4 * 4 : p0;
            for (Py_ssize_t j = jstart; j < p1; j += 4) {
#if DOT_MR == 3
                switch (mr) { /* mr a constant in each call: accumulators in registers */
                case 3:
                    SFX(dot_tile)(S, rp, ld, nk, i, j, 3, G);
                    break;
                case 2:
                    SFX(dot_tile)(S, rp, ld, nk, i, j, 2, G);
                    break;
                default:
                    SFX(dot_tile)(S, rp, ld, nk, i, j, 1, G);
                    break;
                }
#else /* DOT_MR divides 4, so every tile is whole */
                SFX(dot_tile)(S, rp, ld, nk, i, j, DOT_MR, G);
#endif
                prefetch_some(pf, pf->quota);
            }
        }
    }
}

/* Outer-product kernel.  D holds kb rows of rp doubles (row k = x(k), zero-padded); rp is a
 * multiple of the column block OUTER_NV·VW.  A tile is VW rows i0..i0+VW × nv vectors of
 * columns starting at j, with VW·nv vector accumulators
 *   c[a][t] += D[k][i0+a] · D[k][j+t·VW .. +VW)   (a broadcast times a vector),
 * added into Gacc once per block.  Per k it loads nv vectors and VW scalars for VW·nv FMAs:
 * with AVX-512, 10 loads for 16 FMAs, and 16 independent add chains (the 4-cycle FMA
 * latency on two ports needs 8).
 *
 * The upper triangle: a column block j0..j0+OUTER_NV·VW is run for the row blocks i0 ≤ its
 * last column, and in a row block at or below j0 the vectors wholly left of the diagonal
 * (columns < i0) are skipped, so the waste is the diagonal VW×VW squares' lower halves: at
 * r = 64 with AVX-512, 2304 products per vector x(k) for the 2080 of i ≤ j (the 4×16 tiles
 * before this ran 2560). */
#if VW == 8
#define OUTER_NV 2 /* 8 rows × 16 columns: 16 of the 32 zmm registers accumulate */
#elif VW == 4
#define OUTER_NV 2 /* 4 × 8: 8 of the 16 ymm registers (4 × 12 would pad r = 16 to 24) */
#else
#define OUTER_NV 4 /* 2 × 8: 8 of the 16 (SSE2) or 32 (NEON) registers */
#endif

static inline __attribute__((always_inline)) KATTR void
SFX(outer_tile)(const double *D, Py_ssize_t rp, Py_ssize_t kb, Py_ssize_t i0, Py_ssize_t j,
                const int nv, double *G)
{
    VD c[VW][OUTER_NV];
#pragma GCC unroll 8
    for (int a = 0; a < VW; a++)
#pragma GCC unroll 4
        for (int t = 0; t < OUTER_NV; t++)
            c[a][t] = SFX(vsplat)(0.0);
    const double *p = D;
    for (Py_ssize_t k = 0; k < kb; k++, p += rp) {
        VD y[OUTER_NV];
#pragma GCC unroll 4
        for (int t = 0; t < OUTER_NV; t++)
            if (t < nv)
                y[t] = SFX(vload)(p + j + t * VW);
#pragma GCC unroll 8
        for (int a = 0; a < VW; a++) {
            const VD x = SFX(vsplat)(p[i0 + a]);
#pragma GCC unroll 4
            for (int t = 0; t < OUTER_NV; t++)
                if (t < nv)
                    c[a][t] += x * y[t];
        }
    }
#pragma GCC unroll 8
    for (int a = 0; a < VW; a++) {
        double *g = G + (i0 + a) * rp + j;
#pragma GCC unroll 4
        for (int t = 0; t < OUTER_NV; t++)
            if (t < nv)
                SFX(vstore)(g + t * VW, SFX(vload)(g + t * VW) + c[a][t]);
    }
}

/* the number of tiles gram_outer runs */
static KATTR Py_ssize_t SFX(outer_tiles)(Py_ssize_t rp)
{
    Py_ssize_t n = 0;
    for (Py_ssize_t j0 = 0; j0 < rp; j0 += OUTER_NV * VW)
        n += (j0 + OUTER_NV * VW) / VW;
    return n;
}

static KATTR void SFX(gram_outer)(const double *D, Py_ssize_t rp, Py_ssize_t kb, double *G,
                                  prefetcher *pf)
{
    const Py_ssize_t jb = OUTER_NV * VW;
    for (Py_ssize_t j0 = 0; j0 < rp; j0 += jb) {
        for (Py_ssize_t i0 = 0; i0 < j0 + jb; i0 += VW) {
            /* vectors of this column block wholly left of the diagonal in rows i0..i0+VW */
            const Py_ssize_t skip = i0 > j0 ? (i0 - j0) / VW : 0;
            const Py_ssize_t j = j0 + skip * VW;
            switch (OUTER_NV - skip) { /* nv a constant in each call: accumulators in registers */
#if OUTER_NV > 3
            case 4:
                SFX(outer_tile)(D, rp, kb, i0, j, 4, G);
                break;
#endif
#if OUTER_NV > 2
            case 3:
                SFX(outer_tile)(D, rp, kb, i0, j, 3, G);
                break;
#endif
            case 2:
                SFX(outer_tile)(D, rp, kb, i0, j, 2, G);
                break;
            default:
                SFX(outer_tile)(D, rp, kb, i0, j, 1, G);
                break;
            }
            prefetch_some(pf, pf->quota);
        }
    }
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
    const int use_dot = rows_mode; /* see gram_dot */
    /* padded order: the dot kernel's tiles are DOT_MR × 4 rows, the outer kernel's column
     * blocks OUTER_NV·VW wide */
    const Py_ssize_t rpa = use_dot ? 4 : OUTER_NV * VW;
    const Py_ssize_t rp = r > 0 ? (r + rpa - 1) / rpa * rpa : rpa;
    const unsigned char *src = (const unsigned char *)P->src;

    /* Block length kb ≤ kbmax vectors.  The dot kernel's S (rp × kb) and a cols-mode D
     * (kb × rp) are about BLOCK_DOUBLES (L1); at high rank the kernels take at least
     * DOT_MIN_K or OUTER_MIN_K vectors a block (S or D then sits in L2, but the dot kernel
     * works in L1-sized panels and an outer tile streams one column block of D), so that
     * adding the accumulators into Gacc stays rare. */
    Py_ssize_t kbmax = BLOCK_DOUBLES / rp;
    if (use_dot) {
        if (kbmax < DOT_MIN_K)
            kbmax = DOT_MIN_K;
        kbmax = kbmax / VW * VW;
    } else if (kbmax < OUTER_MIN_K) {
        kbmax = OUTER_MIN_K;
    }
    if (kbmax > len)
        kbmax = use_dot ? (len + VW - 1) / VW * VW : len;
    const Py_ssize_t ld = kbmax; /* row stride of S in rows mode */

    /* G (rp × rp, zeroed: it accumulates), then S: rows mode rp rows of ld, cols mode
     * kbmax × r, which is D itself when r = rp; else D (kbmax × rp) after it.  The padding the
     * kernels read (S's rows r..rp, D's columns r..rp; S's lanes kb..nk are zeroed block by
     * block) only enters Gram entries that are dropped, but is zeroed so that no NaN or
     * subnormal left by an earlier pass reaches the FMAs.  Each region is 64-byte aligned. */
    double *G = NULL, *S = NULL, *D = NULL;
    int status = -1;
    if (r > 0 && len > 0) {
        const size_t g_count = (size_t)rp * (size_t)rp;
        const size_t s_count = rows_mode ? (size_t)rp * (size_t)ld
                               : (size_t)kbmax * (size_t)(r == rp ? rp : r);
        const size_t d_count = !rows_mode && r != rp ? (size_t)kbmax * (size_t)rp : 0;
        const size_t g_span = (g_count + 7) / 8 * 8, s_span = (s_count + 7) / 8 * 8;
        G = scratch_take(P->mem, g_span + s_span + d_count);
        if (!G)
            goto done;
        memset(G, 0, g_count * sizeof(double));
        S = G + g_span;
        if (rows_mode)
            memset(S + r * ld, 0, (size_t)(rp - r) * (size_t)ld * sizeof(double));
        else if (r == rp)
            D = S; /* already k-major */
        else {
            D = S + s_span;
            memset(D, 0, d_count * sizeof(double));
        }
    }

    const Py_ssize_t tiles = use_dot ? SFX(dot_tiles)(rp) : SFX(outer_tiles)(rp);
    compsum total = {0.0, 0.0};
    moments mom = {0.0, 0.0, 0.0, 0.0, 0.0};
    long long zeros = 0, nonfinite = 0;
    double lo = INFINITY, hi = -INFINITY;

    for (Py_ssize_t k0 = 0; r > 0 && k0 < len; k0 += kbmax) {
        const Py_ssize_t kb = len - k0 < kbmax ? len - k0 : kbmax;
        const Py_ssize_t nk = (kb + VW - 1) / VW * VW;
        /* segments of S holding this block's values: rows mode r rows of kb at stride ld,
         * cols mode one run of kb·r (in D itself when D needs no padding) */
        const Py_ssize_t nseg = rows_mode ? r : 1, seglen = rows_mode ? kb : kb * r;

        /* 1. decode, with Σx, min, max, zeros; redone entry by entry if the block holds NaN/Inf
         * (then Σx comes out non-finite) */
        blockstats bs = {0.0, INFINITY, -INFINITY, 0, 0};
        if (rows_mode)
            SFX(decode_stats)(src + (size_t)k0 * (size_t)isz, len, P->dtype, S, ld, r, kb, &bs);
        else
            SFX(decode_stats)(src + (size_t)(k0 * r) * (size_t)isz, 0, P->dtype, S, 0, 1,
                              kb * r, &bs);
        /* the next block's bytes, asked for while this block's Gram runs: the stored factor
         * comes from the page cache (DRAM), the r row streams of rows mode defeat the
         * hardware prefetcher, and its one stream of cols mode stops while the Gram runs
         * (10-15% of rows mode and ~8% of cols mode at r = 64, read from a file) */
        const Py_ssize_t kn = len - k0 - kb < kbmax ? len - k0 - kb : kbmax;
        prefetcher pf;
        if (rows_mode)
            prefetch_plan(&pf, src + (size_t)(k0 + kb) * (size_t)isz, r, len * isz, kn * isz,
                          tiles);
        else
            prefetch_plan(&pf, src + (size_t)((k0 + kb) * r) * (size_t)isz, 1, 0,
                          kn * r * isz, tiles);
        if (use_dot && kb < nk) /* the dot kernel reads whole vectors */
            for (Py_ssize_t i = 0; i < r; i++)
                for (Py_ssize_t k = kb; k < nk; k++)
                    S[i * ld + k] = 0.0;
        if (!isfinite(bs.sum))
            blockstats_slow(S, nseg, seglen, ld, &bs);
        compsum_add(&total, bs.sum);
        zeros += bs.zeros;
        nonfinite += bs.nonfinite;
        lo = bs.lo < lo ? bs.lo : lo;
        hi = bs.hi > hi ? bs.hi : hi;

        /* 2. central moments of the block about its own mean, merged into the running ones */
        const double nfin = (double)(nseg * seglen - bs.nonfinite);
        if (P->moments && nfin > 0) {
            double mu = bs.sum / nfin, pw[3] = {0.0, 0.0, 0.0};
            if (bs.nonfinite == 0)
                SFX(seg_moments)(S, ld, nseg, seglen, mu, pw);
            else
                moments_slow(S, nseg, seglen, ld, mu, pw);
            moments_merge(&mom, nfin, mu, pw[0], pw[1], pw[2]);
        }

        /* 3. the Gram */
        if (use_dot) {
            SFX(gram_dot)(S, rp, ld, nk, G, &pf);
        } else {
            if (D != S)
                for (Py_ssize_t k = 0; k < kb; k++) /* pad each row from r to rp */
                    memcpy(D + k * rp, S + k * r, (size_t)r * sizeof(double));
            SFX(gram_outer)(D, rp, kb, G, &pf);
        }
        prefetch_some(&pf, PY_SSIZE_T_MAX); /* what the tiles left */
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
    return status;
}

#undef OUTER_NV
#undef DOT_MR
#undef VD
#undef VL
