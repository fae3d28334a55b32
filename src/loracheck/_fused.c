/* loracheck._fused: the statistics of one LoRA factor in a single pass over its stored bytes.
 *
 *   side_pass(raw, rows, cols, dtype, mode, moments, gram_out, variant)
 *       -> (n, sum, zeros, nonfinite, min, max, m2, m4, sumsq, norm_mean, norm_spread)
 *   side_pass_many([(raw, rows, cols, dtype, mode, moments, gram_out), ...], variant)
 *       -> [(n, sum, ...), ...]   the same passes, one after another, the GIL released once
 *
 * raw       the stored 2-D tensor (rows, cols), C-contiguous, any buffer: F16/BF16 as 16-bit
 *           words, F32, F64 (native byte order, as numpy views them)
 * dtype     0 F16, 1 BF16, 2 F32, 3 F64
 * mode      0 rows: G = X·Xᵀ (r = rows), 1 cols: G = Xᵀ·X (r = cols)
 * moments   non-zero: also the central power sums m2 = Σ(x−μ)², m4 = Σ(x−μ)⁴ (else NaN)
 * sumsq, norm_mean, norm_spread   from G's diagonal: Σx² = tr G, and the mean and the spread
 *           (population std) of the r norms √G_ii (rows of X in rows mode, columns in cols)
 * gram_out  a writable buffer of r·r float64: receives G (symmetric, row-major)
 * variant   0 the best this CPU runs, 1 the portable baseline, 2 AVX2 (where the CPU has it)
 *
 *   drop_pages(mapping, start, length) -> bool   madvise(MADV_DONTNEED) without the GIL, for
 *           the loader's workers (see py_drop_pages)
 *
 * Over the n = rows·cols entries x: sum = Σx over the finite ones, zeros = #(x == ±0),
 * nonfinite = #(NaN, ±Inf), min/max over the finite ones (NaN when none), μ = sum/#finite.
 * G_ij = Σ_k x_i(k)·x_j(k) over all entries (NaN/Inf propagate as in any float64 product).
 *
 * Method: the factor is decoded exactly to float64 in blocks of about BLOCK_DOUBLES values
 * (32 KiB: L1-resident; at high rank at least DOT_MIN_K or OUTER_MIN_K vectors, in L2), and
 * each block is used while it is in cache (the next block's bytes are prefetched meanwhile):
 *   - Σx, min, max, zeros in one vectorised sweep; a block whose Σx comes out non-finite is
 *     redone entry by entry (NaN/Inf counted, the finite entries kept);
 *   - the central power sums of the block about its own mean μ_b (d = x − μ_b, no
 *     cancellation), merged into the running ones by the pairwise formulas of Chan et al.
 *     and Pébay (2008) — as exact as numpy's two-pass Σ(x − μ)^p;
 *   - the Gram, accumulated in float64 by a register-tiled kernel into the upper triangle:
 *     dot-product tiles along the stored rows in rows mode, outer-product tiles over the
 *     stored rows x(k) in cols mode (see _fused_kernel.h).
 * Σx over blocks is compensated (Neumaier).  Memory: two blocks and the r×r accumulator,
 * nothing proportional to the tensor.  The GIL is released for the pass.
 *
 * Variants: a baseline (2-lane vectors: SSE2 on x86-64, NEON on arm64), and on x86-64
 * AVX2+FMA+F16C and AVX-512F ones chosen at run time (function target attributes and CPUID,
 * no -march flags).  GCC or Clang is needed (vector
 * extensions); elsewhere the extension does not build and loracheck uses numpy.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__unix__) || defined(__APPLE__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#if !defined(__GNUC__) && !defined(__clang__)
#error "loracheck._fused needs GCC or Clang (vector extensions); loracheck falls back to numpy"
#endif

#if defined(__x86_64__)
#define HAVE_AVX2_VARIANT 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define HAVE_AVX2_VARIANT 0
#endif

enum { DT_F16 = 0, DT_BF16 = 1, DT_F32 = 2, DT_F64 = 3 };
enum { MODE_ROWS = 0, MODE_COLS = 1 };

#define BLOCK_DOUBLES 4096 /* doubles per block: 32 KiB */
#define DOT_MIN_K 256     /* rows mode (dot kernel): at least this many vectors x(k) a block */
#define DOT_PANEL_DOUBLES 4096 /* dot kernel: j rows taken in panels of about 32 KiB */
#define OUTER_MIN_K 64    /* cols mode (outer kernel): at least this many vectors a block */

typedef struct scratch_s scratch;

typedef struct {
    /* in */
    const void *src;
    Py_ssize_t rows, cols;
    int dtype, mode, moments;
    double *gram; /* r·r out */
    scratch *mem; /* the call's scratch (see scratch) */
    /* out */
    long long zeros, nonfinite;
    double sum, min, max, m2, m4;
} pass_t;

typedef struct {
    double sum, lo, hi;
    long long zeros, nonfinite;
} blockstats;

static Py_ssize_t itemsize(int dtype) { return dtype <= DT_BF16 ? 2 : dtype == DT_F32 ? 4 : 8; }

/* ---- exact decoding of 16-bit floats ------------------------------------------------------ */

static inline uint16_t load_u16(const unsigned char *p)
{
    uint16_t h;
    memcpy(&h, p, 2);
    return h;
}

static inline double bits_f64(uint64_t b)
{
    double d;
    memcpy(&d, &b, 8);
    return d;
}

/* IEEE half: sign s, exponent e (5 bits, bias 15), mantissa m (10 bits)
 *   e = 0:       (−1)^s · m · 2^−24               (zero, subnormal)
 *   0 < e < 31:  (−1)^s · 2^(e−15) · (1 + m/2^10)  -> float64 exponent e − 15 + 1023
 *   e = 31:      ±Inf (m = 0), NaN (m ≠ 0) */
static inline double f16_to_f64(uint16_t h)
{
    const uint64_t sign = (uint64_t)(h & 0x8000u) << 48;
    const uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    if (e == 0x1f)
        return bits_f64(sign | 0x7ff0000000000000ull | ((uint64_t)m << 42));
    if (e != 0)
        return bits_f64(sign | ((uint64_t)(e + 1008) << 52) | ((uint64_t)m << 42));
    const double v = (double)m * 0x1p-24;
    return sign ? -v : v;
}

/* bfloat16: the top 16 bits of a float32 — exponent 8 bits (bias 127), mantissa 7 bits
 *   e = 0: m · 2^−133;  0 < e < 255: 2^(e−127)·(1 + m/2^7);  e = 255: Inf/NaN.
 * Built directly as float64 bits, so a denormals-are-zero FPU mode cannot flush it. */
static inline double bf16_to_f64(uint16_t h)
{
    const uint64_t sign = (uint64_t)(h & 0x8000u) << 48;
    const uint32_t e = (h >> 7) & 0xffu, m = h & 0x7fu;
    if (e == 0xff)
        return bits_f64(sign | 0x7ff0000000000000ull | ((uint64_t)m << 45));
    if (e != 0)
        return bits_f64(sign | ((uint64_t)(e + 896) << 52) | ((uint64_t)m << 45));
    const double v = (double)m * 0x1p-133;
    return sign ? -v : v;
}

/* ---- accumulators --------------------------------------------------------------------------- */

/* Neumaier's compensated sum: s + c carries the rounding error of every s += x */
typedef struct {
    double s, c;
} compsum;

static void compsum_add(compsum *a, double x)
{
    const double t = a->s + x;
    if (!isfinite(t)) {
        a->s = t;
        return;
    }
    a->c += fabs(a->s) >= fabs(x) ? (a->s - t) + x : (x - t) + a->s;
    a->s = t;
}

static double compsum_value(const compsum *a) { return isfinite(a->s) ? a->s + a->c : a->s; }

/* count n, mean mu and central power sums M_p = Σ(x − mu)^p, p = 2, 3, 4 */
typedef struct {
    double n, mu, m2, m3, m4;
} moments;

/* Merges a block (nb, mub, M2b, M3b, M4b) into a: with δ = mub − mua, n = na + nb,
 *   M2 = M2a + M2b + δ²·na·nb/n
 *   M3 = M3a + M3b + δ³·na·nb·(na − nb)/n² + 3δ·(na·M2b − nb·M2a)/n
 *   M4 = M4a + M4b + δ⁴·na·nb·(na² − na·nb + nb²)/n³ + 6δ²·(na²·M2b + nb²·M2a)/n²
 *        + 4δ·(na·M3b − nb·M3a)/n
 *   mu = mua + δ·nb/n          (Pébay 2008, eq. 3.1 and 2.1; Chan, Golub, LeVeque 1979) */
static void moments_merge(moments *a, double nb, double mub, double m2b, double m3b,
                          double m4b)
{
    if (a->n == 0.0) {
        a->n = nb, a->mu = mub, a->m2 = m2b, a->m3 = m3b, a->m4 = m4b;
        return;
    }
    const double na = a->n, n = na + nb, d = mub - a->mu, dn = d / n;
    const double dn2 = dn * dn, t = d * dn * na * nb; /* t = δ²·na·nb/n */
    a->m4 += m4b + t * dn2 * (na * na - na * nb + nb * nb) + 6.0 * dn2 * (na * na * m2b + nb * nb * a->m2)
             + 4.0 * dn * (na * m3b - nb * a->m3);
    a->m3 += m3b + t * dn * (na - nb) + 3.0 * dn * (na * m2b - nb * a->m2);
    a->m2 += m2b + t;
    a->mu += dn * nb;
    a->n = n;
}

/* The slow path for a block holding NaN/Inf: every statistic over the finite entries only. */
static void blockstats_slow(const double *S, Py_ssize_t nseg, Py_ssize_t seglen, Py_ssize_t ld,
                            blockstats *b)
{
    double sum = 0.0, lo = INFINITY, hi = -INFINITY;
    long long zeros = 0, nonfinite = 0;
    for (Py_ssize_t s = 0; s < nseg; s++) {
        const double *p = S + s * ld;
        for (Py_ssize_t k = 0; k < seglen; k++) {
            const double x = p[k];
            zeros += x == 0.0;
            if (!isfinite(x)) {
                nonfinite++;
                continue;
            }
            sum += x;
            lo = x < lo ? x : lo;
            hi = x > hi ? x : hi;
        }
    }
    b->sum = sum, b->lo = lo, b->hi = hi, b->zeros = zeros, b->nonfinite = nonfinite;
}

static void moments_slow(const double *S, Py_ssize_t nseg, Py_ssize_t seglen, Py_ssize_t ld,
                         double mu, double out[3])
{
    for (Py_ssize_t s = 0; s < nseg; s++) {
        const double *p = S + s * ld;
        for (Py_ssize_t k = 0; k < seglen; k++) {
            if (!isfinite(p[k]))
                continue;
            const double d = p[k] - mu, d2 = d * d;
            out[0] += d2;
            out[1] += d2 * d;
            out[2] += d2 * d2;
        }
    }
}

/* The next block's bytes, asked for a few cache lines at a time between the Gram's tiles, so
 * that they arrive while this block's Gram runs.  (A burst of the whole block's prefetches
 * fills the line-fill buffers and stalls; a prefetch past the end does not fault.)
 * Lines: rows runs of bytes each, stride bytes apart from p. */
typedef struct {
    const unsigned char *p;
    Py_ssize_t rows, stride, bytes; /* the runs */
    Py_ssize_t row, off;            /* the next line to ask for */
    Py_ssize_t quota;               /* lines per tile */
} prefetcher;

static void prefetch_plan(prefetcher *f, const unsigned char *p, Py_ssize_t rows,
                          Py_ssize_t stride, Py_ssize_t bytes, Py_ssize_t tiles)
{
    f->p = p, f->rows = bytes > 0 ? rows : 0, f->stride = stride, f->bytes = bytes;
    f->row = 0, f->off = 0;
    const Py_ssize_t lines = f->rows * ((bytes + 63) / 64);
    f->quota = tiles > 0 ? (lines + tiles - 1) / tiles : lines;
}

static inline void prefetch_some(prefetcher *f, Py_ssize_t lines)
{
    for (; lines > 0 && f->row < f->rows; lines--) {
        __builtin_prefetch(f->p + f->row * f->stride + f->off);
        f->off += 64;
        if (f->off >= f->bytes)
            f->off = 0, f->row++;
    }
}

/* ---- scratch: 64-byte aligned, reused by the passes of one call ---------------------------- */

/* One call's scratch (side_pass_many runs a chunk's passes in it one after another): each pass
 * takes what it needs and zeroes only what it reads before writing.  Before, every pass
 * calloc'd its own blocks: 448 × 32 KiB of zeroing for a 7B adapter at r = 16, and from
 * r = 64 each block above malloc's mmap threshold cost 32 page faults and an munmap. */
struct scratch_s {
    void *base;
    size_t bytes; /* usable from the aligned start */
};

/* count doubles from s, 64-byte aligned, grown when too small (the old contents are lost);
 * NULL when they cannot be allocated */
static double *scratch_take(scratch *s, size_t count)
{
    const size_t need = count * sizeof(double);
    if (s->base == NULL || s->bytes < need) {
        free(s->base);
        s->base = malloc(need + 64);
        s->bytes = s->base ? need : 0;
        if (!s->base)
            return NULL;
    }
    return (double *)(((uintptr_t)s->base + 63) & ~(uintptr_t)63);
}

static void scratch_free(scratch *s)
{
    free(s->base);
    s->base = NULL;
    s->bytes = 0;
}

/* ---- the variants ------------------------------------------------------------------------- */

#define SFX(name) name##_base
#define KATTR
#define VW 2
#define X86_LEVEL 0
#include "_fused_kernel.h"
#undef SFX
#undef KATTR
#undef VW
#undef X86_LEVEL

#if HAVE_AVX2_VARIANT
#define SFX(name) name##_avx2
#define KATTR __attribute__((target("avx2,fma,f16c")))
#define VW 4
#define X86_LEVEL 1
#include "_fused_kernel.h"
#undef SFX
#undef KATTR
#undef VW
#undef X86_LEVEL

#define SFX(name) name##_avx512
#define KATTR __attribute__((target("avx2,fma,f16c,avx512f")))
#define VW 8
#define X86_LEVEL 2
#include "_fused_kernel.h"
#undef SFX
#undef KATTR
#undef VW
#undef X86_LEVEL

static int cpu_level = 0; /* 0 baseline, 1 AVX2+FMA+F16C, 2 and AVX-512F */

static void detect_cpu(void)
{
    unsigned int a, b, c, d;
    __builtin_cpu_init();
    /* CPUID.1:ECX bit 29 = F16C; __builtin_cpu_supports also checks that the OS saves the
     * YMM/ZMM state */
    const int f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 29));
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c)
        cpu_level = __builtin_cpu_supports("avx512f") ? 2 : 1;
}

/* The x86 conversions of float32 honour MXCSR.DAZ (denormals-are-zero), which a library
 * built with -ffast-math may have set: then the baseline's bit-exact decoding runs. */
static int fpu_flushes_denormals(void) { return (_mm_getcsr() & 0x0040) != 0; }
#endif

static const char *best_variant(void)
{
#if HAVE_AVX2_VARIANT
    if (cpu_level == 2)
        return "avx512f";
    if (cpu_level == 1)
        return "avx2+fma";
#endif
    return "baseline";
}

/* ---- one pass ---------------------------------------------------------------------------- */

/* The variant that runs P: the best the CPU has (variant 0), the baseline (1) or AVX2 (2). */
static int pass_level(const pass_t *P, int variant)
{
#if HAVE_AVX2_VARIANT
    int level = variant == 0 && !fpu_flushes_denormals() ? cpu_level
                : variant == 2 && cpu_level >= 1 ? 1 : 0;
    const Py_ssize_t r = P->mode == MODE_ROWS ? P->rows : P->cols;
    if (level == 2 && r <= 8)
        level = 1; /* AVX-512 tiles pad r to 16: four times the work at r ≤ 4 */
    return level;
#else
    (void)P, (void)variant;
    return 0;
#endif
}

/* Runs P without the GIL; 0, or -1 when scratch could not be allocated. */
static int run_pass(pass_t *P, int level)
{
#if HAVE_AVX2_VARIANT
    if (level == 2)
        return run_avx512(P);
    if (level == 1)
        return run_avx2(P);
#endif
    (void)level;
    return run_base(P);
}

/* ---- Python ------------------------------------------------------------------------------- */

/* Checks one pass's arguments against its buffers and fills P; -1 with ValueError set. */
static int prepare_pass(pass_t *P, const Py_buffer *raw, Py_ssize_t rows, Py_ssize_t cols,
                        int dtype, int mode, int moments_flag, Py_buffer *gram)
{
    if (dtype < DT_F16 || dtype > DT_F64 || (mode != MODE_ROWS && mode != MODE_COLS)) {
        PyErr_SetString(PyExc_ValueError, "side_pass: unknown dtype or mode");
        return -1;
    }
    const Py_ssize_t isz = itemsize(dtype);
    if (rows < 0 || cols < 0 || (cols > 0 && rows > PY_SSIZE_T_MAX / cols / isz)
        || raw->len != rows * cols * isz) {
        PyErr_SetString(PyExc_ValueError, "side_pass: buffer size does not match rows x cols");
        return -1;
    }
    const Py_ssize_t r = mode == MODE_ROWS ? rows : cols;
    if (gram->len != r * r * (Py_ssize_t)sizeof(double)) {
        PyErr_SetString(PyExc_ValueError, "side_pass: gram_out must hold r*r float64");
        return -1;
    }
    memset(P, 0, sizeof *P);
    P->src = raw->buf, P->rows = rows, P->cols = cols, P->dtype = dtype, P->mode = mode;
    P->moments = moments_flag != 0, P->gram = (double *)gram->buf;
    return 0;
}

/* From the Gram's diagonal G_ii = ‖x_i‖²: Σ G_ii (Σx²), and the mean and spread of the r
 * norms √G_ii (the spread two-pass, √(Σ(‖x_i‖ − mean)²/r), as numpy's std), each summed in
 * index order; NaN for r = 0. */
static void diagonal_stats(const double *G, Py_ssize_t r, double *sumsq, double *mean,
                           double *spread)
{
    double sq = 0.0, norms = 0.0;
    for (Py_ssize_t i = 0; i < r; i++) {
        const double d = G[i * r + i];
        sq += d;
        norms += sqrt(d > 0.0 ? d : 0.0); /* never negative; NaN only beside NaN entries */
    }
    const double mu = r > 0 ? norms / (double)r : NAN;
    double dev = 0.0;
    for (Py_ssize_t i = 0; i < r; i++) {
        const double d = G[i * r + i], e = sqrt(d > 0.0 ? d : 0.0) - mu;
        dev += e * e;
    }
    *sumsq = sq;
    *mean = mu;
    *spread = r > 0 ? sqrt(dev / (double)r) : NAN;
}

static PyObject *pass_result(const pass_t *P)
{
    const Py_ssize_t r = P->mode == MODE_ROWS ? P->rows : P->cols;
    double sumsq, mean, spread;
    diagonal_stats(P->gram, r, &sumsq, &mean, &spread);
    return Py_BuildValue("(ndLLddddddd)", P->rows * P->cols, P->sum, P->zeros, P->nonfinite,
                         P->min, P->max, P->m2, P->m4, sumsq, mean, spread);
}

static PyObject *py_side_pass(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer raw, gram;
    Py_ssize_t rows, cols;
    int dtype, mode, moments_flag, variant;
    if (!PyArg_ParseTuple(args, "y*nniiiw*i", &raw, &rows, &cols, &dtype, &mode, &moments_flag,
                          &gram, &variant))
        return NULL;
    PyObject *result = NULL;
    pass_t P;
    if (prepare_pass(&P, &raw, rows, cols, dtype, mode, moments_flag, &gram) == 0) {
        int status;
        scratch mem = {NULL, 0};
        P.mem = &mem;
        Py_BEGIN_ALLOW_THREADS
        status = run_pass(&P, pass_level(&P, variant));
        scratch_free(&mem);
        Py_END_ALLOW_THREADS
        if (status != 0)
            PyErr_NoMemory();
        else
            result = pass_result(&P);
    }
    PyBuffer_Release(&raw);
    PyBuffer_Release(&gram);
    return result;
}

/* side_pass_many(items, variant): items a list of (raw, rows, cols, dtype, mode, moments,
 * gram_out), each as side_pass takes them; the passes run one after another without the GIL
 * (one release for all of them) and the results come back in the items' order. */
static PyObject *py_side_pass_many(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *items;
    int variant;
    if (!PyArg_ParseTuple(args, "O!i", &PyList_Type, &items, &variant))
        return NULL;
    const Py_ssize_t count = PyList_GET_SIZE(items);
    const size_t slots = (size_t)(count > 0 ? count : 1);
    Py_buffer *bufs = PyMem_Calloc(slots * 2, sizeof(Py_buffer));
    pass_t *passes = PyMem_Calloc(slots, sizeof(pass_t));
    PyObject *result = NULL;
    Py_ssize_t held = 0; /* items whose two buffers are held */
    if (!bufs || !passes) {
        PyErr_NoMemory();
        goto out;
    }
    for (; held < count; held++) {
        Py_ssize_t rows, cols;
        int dtype, mode, moments_flag;
        PyObject *item = PyList_GET_ITEM(items, held);
        if (!PyTuple_Check(item)) {
            PyErr_SetString(PyExc_TypeError, "side_pass_many: each item must be a tuple");
            goto out;
        }
        if (!PyArg_ParseTuple(item, "y*nniiiw*", &bufs[2 * held], &rows, &cols, &dtype, &mode,
                              &moments_flag, &bufs[2 * held + 1]))
            goto out;
        if (prepare_pass(&passes[held], &bufs[2 * held], rows, cols, dtype, mode, moments_flag,
                         &bufs[2 * held + 1]) != 0) {
            held++; /* its buffers are held: release them below */
            goto out;
        }
    }
    int failed = 0;
    scratch mem = {NULL, 0};
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < count && !failed; i++) {
        passes[i].mem = &mem;
        failed = run_pass(&passes[i], pass_level(&passes[i], variant)) != 0;
    }
    scratch_free(&mem);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_NoMemory();
        goto out;
    }
    result = PyList_New(count);
    for (Py_ssize_t i = 0; result && i < count; i++) {
        PyObject *one = pass_result(&passes[i]);
        if (!one)
            Py_CLEAR(result);
        else
            PyList_SET_ITEM(result, i, one);
    }
out:
    for (Py_ssize_t i = 0; i < held; i++) {
        PyBuffer_Release(&bufs[2 * i]);
        PyBuffer_Release(&bufs[2 * i + 1]);
    }
    PyMem_Free(bufs);
    PyMem_Free(passes);
    return result;
}

/* drop_pages(buffer, start, length) -> bool: madvise(MADV_DONTNEED) on the bytes
 * [start, start + length) of a buffer that is a file mapping (an mmap: its first byte starts
 * a page; start must too), without the GIL, so a worker thread drops the pages it has read
 * while the caller's thread runs Python (mmap.madvise holds the GIL). The pages stay in the
 * page cache and fault back in if touched.  False where madvise is missing or refuses. */
static PyObject *py_drop_pages(PyObject *self, PyObject *args)
{
    (void)self;
    Py_buffer buf;
    Py_ssize_t start, length;
    if (!PyArg_ParseTuple(args, "y*nn", &buf, &start, &length))
        return NULL;
    if (start < 0 || length < 0 || start > buf.len || length > buf.len - start) {
        PyBuffer_Release(&buf);
        PyErr_SetString(PyExc_ValueError, "drop_pages: the span lies outside the buffer");
        return NULL;
    }
    int dropped = 0;
#if (defined(__unix__) || defined(__APPLE__)) && defined(MADV_DONTNEED)
    const long page = sysconf(_SC_PAGESIZE);
    const uintptr_t first = (uintptr_t)buf.buf + (uintptr_t)start;
    if (page > 0 && first % (uintptr_t)page == 0 && length > 0) {
        Py_BEGIN_ALLOW_THREADS
        dropped = madvise((void *)first, (size_t)length, MADV_DONTNEED) == 0;
        Py_END_ALLOW_THREADS
    }
#endif
    PyBuffer_Release(&buf);
    return PyBool_FromLong(dropped);
}

static PyObject *py_variant(PyObject *self, PyObject *noargs)
{
    (void)self, (void)noargs;
    return PyUnicode_FromString(best_variant());
}

static PyMethodDef methods[] = {
    {"side_pass", py_side_pass, METH_VARARGS,
     "side_pass(raw, rows, cols, dtype, mode, moments, gram_out, variant)"
     " -> (n, sum, zeros, nonfinite, min, max, m2, m4, sumsq, norm_mean, norm_spread)"},
    {"side_pass_many", py_side_pass_many, METH_VARARGS,
     "side_pass_many(items, variant) -> [side_pass's tuple for each item]"},
    {"drop_pages", py_drop_pages, METH_VARARGS,
     "drop_pages(mapping, start, length) -> bool: madvise(MADV_DONTNEED) without the GIL"},
    {"variant", py_variant, METH_NOARGS, "The instruction set side_pass uses by default."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fused", "Fused single-pass factor statistics (see fused.py).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fused(void)
{
#if HAVE_AVX2_VARIANT
    detect_cpu();
#endif
    return PyModule_Create(&module);
}
