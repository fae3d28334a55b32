/* loracheck._json_line: one JSON object (a report's per-layer line) written in C.
 *
 * flat_json(obj) gives exactly what json.JSONEncoder(ensure_ascii=True, allow_nan=False,
 * separators=(", ", ": ")).encode(clean(obj)) gives, for obj built of dicts with str keys,
 * lists and tuples (exactly those types), str, int, float (and their subclasses), bool and
 * None (see render/json_out.py), except that a non-finite float is written as null (as
 * clean() makes it) instead of refused. Anything else raises TypeError, and the caller
 * encodes that object the usual way.
 *
 * Why: a 224-layer report holds 8,000-19,000 floats, and float.__repr__ (David Gay's dtoa,
 * arbitrary precision) costs ~0.4 us each: most of the JSON time. Here a finite normal double
 * gets the same digits from one 64x126-bit product per bound, as in R. Giulietti's
 * "Schubfach" (The Schubfach way to render doubles, 2020), written afresh from the paper's
 * method; zero and subnormals go to CPython's own PyOS_double_to_string, which *is* repr.
 *
 * The digits repr picks: the shortest decimal d that reads back as v under round-to-nearest-
 * even, and of those the one nearest v (a tie to the even last digit). The formatting: repr's
 * (fixed notation for a decimal exponent in [-4, 16), else d.ddde+XX with two exponent digits
 * at least). tests/test_json_line.py compares both with repr on millions of doubles.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "_pow10.h"

/* ---- the high 64 bits of a 64x64-bit product (the low ones are a * b) ------------------- */

#if defined(__SIZEOF_INT128__)
static inline uint64_t mul_hi(uint64_t a, uint64_t b)
{
    return (uint64_t)(((unsigned __int128)a * b) >> 64);
}
#else
static inline uint64_t mul_hi(uint64_t a, uint64_t b)
{
    const uint64_t a0 = (uint32_t)a, a1 = a >> 32, b0 = (uint32_t)b, b1 = b >> 32;
    const uint64_t p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
    const uint64_t mid = (p00 >> 32) + (uint32_t)p01 + (uint32_t)p10;
    return p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}
#endif

#define MASK63 ((UINT64_C(1) << 63) - 1)

/* ⌊g·cp / 2^127⌋ rounded to odd (the low bit set when the discarded part is not zero, as far
 * as the two high words of the product tell), g = hi·2^63 + lo: an integer result is exact, so
 * comparing it with a multiple of 4 is comparing the exact product (the paper's Theorem). */
static inline uint64_t scaled(uint64_t hi, uint64_t lo, uint64_t cp)
{
    const uint64_t x1 = mul_hi(lo, cp);
    const uint64_t y0 = hi * cp, y1 = mul_hi(hi, cp); /* the product's low and high words */
    const uint64_t z = (y0 >> 1) + x1;
    const uint64_t whole = y1 + (z >> 63);
    return whole | (((z & MASK63) + MASK63) >> 63);
}

/* v = c·2^q, a finite positive normal double (biased exponent ≥ 1): its shortest round-trip
 * decimal digits·10^exp10, digits without trailing zeros. */
static void shortest(uint64_t c, int q, int lower_closer, uint64_t *digits, int *exp10)
{
    /* Four times the rounding interval's bounds, in units of 2^(q-2): [cbl, cbr] around
     * cb = 4c, closed when c is even (ties round to even); the gap below a power of two
     * is half the gap above. */
    const int open = (int)(c & 1);
    const uint64_t cb = c << 2, cbr = cb + 2, cbl = lower_closer ? cb - 1 : cb - 2;
    const int k = lower_closer ? FLOOR_LOG10_THREE_QUARTERS_POW2(q) : FLOOR_LOG10_POW2(q);
    const int h = q + FLOOR_LOG2_POW10(-k) + 2; /* 2..5: cb·2^h < 2^60 */
    const uint64_t *g = POW10_G[-k - POW10_E_MIN];
    /* 4·v·10^-k and the bounds likewise, rounded to odd: s = ⌊v·10^-k⌋ has 16 or 17 digits */
    const uint64_t vb = scaled(g[0], g[1], cb << h);
    const uint64_t vbl = scaled(g[0], g[1], cbl << h);
    const uint64_t vbr = scaled(g[0], g[1], cbr << h);
    const uint64_t s = vb >> 2;
    uint64_t d;
    int e = k;
    /* The interval is narrower than 10 units of 10^k: at most one multiple of 10 lies in it,
     * and when one does every shorter decimal in it is that one. */
    const uint64_t sp10 = s / 10 * 10, tp10 = sp10 + 10;
    const int sp10_in = vbl + (uint64_t)open <= sp10 << 2;
    const int tp10_in = (tp10 << 2) + (uint64_t)open <= vbr;
    if (sp10_in != tp10_in) {
        d = sp10_in ? sp10 : tp10;
    } else {
        /* else the candidates of this length nearest v: s and s + 1, at least one inside */
        const uint64_t t = s + 1;
        const int s_in = vbl + (uint64_t)open <= s << 2;
        const int t_in = (t << 2) + (uint64_t)open <= vbr;
        if (s_in != t_in) {
            d = s_in ? s : t;
        } else { /* both: the nearer, a tie to the even one */
            const uint64_t mid = (s + t) << 1; /* 4·(s + ½) */
            d = vb < mid || (vb == mid && (s & 1) == 0) ? s : t;
        }
    }
    while (d % 10 == 0) {
        d /= 10;
        e++;
    }
    *digits = d;
    *exp10 = e;
}

/* repr(v) of a finite double into out (at least 32 bytes); returns its length. */
static int float_repr(double v, char *out)
{
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    const int biased = (int)((bits >> 52) & 0x7ff);
    const uint64_t fraction = bits & ((UINT64_C(1) << 52) - 1);
    if (biased == 0) { /* zero or subnormal: CPython's own repr */
        char *text = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
        if (text == NULL)
            return -1;
        const int n = (int)strlen(text);
        memcpy(out, text, (size_t)n);
        PyMem_Free(text);
        return n;
    }
    uint64_t digits;
    int exp10;
    shortest(fraction | (UINT64_C(1) << 52), biased - 1075, fraction == 0 && biased > 1, &digits,
             &exp10);
    char dig[20];
    int nd = 0;
    for (uint64_t d = digits; d; d /= 10)
        dig[nd++] = (char)('0' + d % 10);
    for (int i = 0; i < nd / 2; i++) { /* most significant first */
        const char t = dig[i];
        dig[i] = dig[nd - 1 - i];
        dig[nd - 1 - i] = t;
    }
    const int point = nd + exp10; /* v = 0.dig × 10^point */
    char *p = out;
    if (bits >> 63)
        *p++ = '-';
    if (point <= -4 || point > 16) {
        *p++ = dig[0];
        if (nd > 1) {
            *p++ = '.';
            memcpy(p, dig + 1, (size_t)(nd - 1));
            p += nd - 1;
        }
        int x = point - 1;
        *p++ = 'e';
        *p++ = x < 0 ? '-' : '+';
        if (x < 0)
            x = -x;
        if (x >= 100)
            *p++ = (char)('0' + x / 100);
        *p++ = (char)('0' + x / 10 % 10);
        *p++ = (char)('0' + x % 10);
    } else if (point <= 0) {
        *p++ = '0';
        *p++ = '.';
        for (int i = 0; i < -point; i++)
            *p++ = '0';
        memcpy(p, dig, (size_t)nd);
        p += nd;
    } else if (point >= nd) {
        memcpy(p, dig, (size_t)nd);
        p += nd;
        for (int i = nd; i < point; i++)
            *p++ = '0';
        *p++ = '.';
        *p++ = '0';
    } else {
        memcpy(p, dig, (size_t)point);
        p += point;
        *p++ = '.';
        memcpy(p, dig + point, (size_t)(nd - point));
        p += nd - point;
    }
    return (int)(p - out);
}

/* ---- the writer ------------------------------------------------------------------------- */

typedef struct {
    char *buf;
    Py_ssize_t len, cap;
} text;

static int reserve(text *t, Py_ssize_t more)
{
    if (t->len + more <= t->cap)
        return 0;
    Py_ssize_t cap = t->cap ? t->cap : 1024;
    while (cap < t->len + more)
        cap *= 2;
    char *grown = PyMem_Realloc(t->buf, (size_t)cap);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->buf = grown;
    t->cap = cap;
    return 0;
}

static int put(text *t, const char *s, Py_ssize_t n)
{
    if (reserve(t, n) < 0)
        return -1;
    memcpy(t->buf + t->len, s, (size_t)n);
    t->len += n;
    return 0;
}

static const char HEX[] = "0123456789abcdef";

static char *put_u_escape(char *p, Py_UCS4 c)
{
    *p++ = '\\';
    *p++ = 'u';
    *p++ = HEX[(c >> 12) & 0xf];
    *p++ = HEX[(c >> 8) & 0xf];
    *p++ = HEX[(c >> 4) & 0xf];
    *p++ = HEX[c & 0xf];
    return p;
}

/* a str as json's ASCII encoder writes it: printable ASCII but " and \ as is, the short
 * escapes, other code points as \uXXXX (lowercase hex; UTF-16 surrogate pairs above U+FFFF) */
static int put_string(text *t, PyObject *s)
{
#if PY_VERSION_HEX < 0x030c0000
    if (PyUnicode_READY(s) < 0) /* a legacy str made by the old C API */
        return -1;
#endif
    const Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    if (reserve(t, 2 + 12 * n) < 0)
        return -1;
    const int kind = PyUnicode_KIND(s);
    const void *data = PyUnicode_DATA(s);
    char *p = t->buf + t->len;
    *p++ = '"';
    for (Py_ssize_t i = 0; i < n; i++) {
        const Py_UCS4 c = PyUnicode_READ(kind, data, i);
        if (c >= ' ' && c <= '~' && c != '\\' && c != '"') {
            *p++ = (char)c;
            continue;
        }
        switch (c) {
        case '\\': *p++ = '\\'; *p++ = '\\'; break;
        case '"': *p++ = '\\'; *p++ = '"'; break;
        case '\b': *p++ = '\\'; *p++ = 'b'; break;
        case '\f': *p++ = '\\'; *p++ = 'f'; break;
        case '\n': *p++ = '\\'; *p++ = 'n'; break;
        case '\r': *p++ = '\\'; *p++ = 'r'; break;
        case '\t': *p++ = '\\'; *p++ = 't'; break;
        default:
            if (c >= 0x10000) {
                const Py_UCS4 v = c - 0x10000;
                p = put_u_escape(p, 0xd800 | ((v >> 10) & 0x3ff));
                p = put_u_escape(p, 0xdc00 | (v & 0x3ff));
            } else {
                p = put_u_escape(p, c);
            }
        }
    }
    *p++ = '"';
    t->len = p - t->buf;
    return 0;
}

static int put_value(text *t, PyObject *v, int depth);

static int refuse(PyObject *v)
{
    PyErr_Format(PyExc_TypeError, "flat_json: %.100s is not written here", Py_TYPE(v)->tp_name);
    return -1;
}

static int put_value(text *t, PyObject *v, int depth)
{
    if (v == Py_None)
        return put(t, "null", 4);
    if (v == Py_True)
        return put(t, "true", 4);
    if (v == Py_False)
        return put(t, "false", 5);
    if (PyUnicode_Check(v))
        return put_string(t, v);
    if (PyLong_Check(v)) {
        int overflow = 0;
        const long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (x == -1 && PyErr_Occurred())
            return -1;
        if (!overflow) {
            char digits[24];
            const int n = snprintf(digits, sizeof digits, "%lld", x);
            return put(t, digits, n);
        }
        PyObject *repr = PyLong_Type.tp_repr(v); /* what json writes for an int */
        if (repr == NULL)
            return -1;
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(repr, &n);
        const int status = s == NULL ? -1 : put(t, s, n);
        Py_DECREF(repr);
        return status;
    }
    if (PyFloat_Check(v)) {
        const double x = PyFloat_AS_DOUBLE(v);
        if (!isfinite(x))
            return put(t, "null", 4);
        if (reserve(t, 32) < 0)
            return -1;
        const int n = float_repr(x, t->buf + t->len);
        if (n < 0)
            return -1;
        t->len += n;
        return 0;
    }
    if (depth >= 8)
        return refuse(v);
    /* Exact lists, tuples and dicts only: a subclass's __iter__ or items() is Python code that
     * could change the container under this loop (json's encoder runs it; the caller falls
     * back to json for them).  Nothing else here runs Python code, but each item is held. */
    if (PyList_CheckExact(v) || PyTuple_CheckExact(v)) {
        const int is_list = PyList_CheckExact(v);
        int status = put(t, "[", 1);
        for (Py_ssize_t i = 0; status == 0; i++) {
            const Py_ssize_t n = is_list ? PyList_GET_SIZE(v) : PyTuple_GET_SIZE(v);
            if (i >= n)
                break;
            PyObject *item = is_list ? PyList_GET_ITEM(v, i) : PyTuple_GET_ITEM(v, i);
            Py_INCREF(item);
            if (i > 0)
                status = put(t, ", ", 2);
            if (status == 0)
                status = put_value(t, item, depth + 1);
            Py_DECREF(item);
        }
        return status == 0 ? put(t, "]", 1) : status;
    }
    if (PyDict_CheckExact(v)) {
        Py_ssize_t pos = 0, i = 0;
        PyObject *key, *value;
        if (put(t, "{", 1) < 0)
            return -1;
        while (PyDict_Next(v, &pos, &key, &value)) {
            if (!PyUnicode_CheckExact(key))
                return refuse(key);
            Py_INCREF(key);
            Py_INCREF(value);
            const int status = (i++ > 0 && put(t, ", ", 2) < 0) || put_string(t, key) < 0 ||
                               put(t, ": ", 2) < 0 || put_value(t, value, depth + 1) < 0;
            Py_DECREF(key);
            Py_DECREF(value);
            if (status)
                return -1;
        }
        return put(t, "}", 1);
    }
    return refuse(v);
}

static PyObject *py_flat_json(PyObject *self, PyObject *obj)
{
    (void)self;
    text t = {NULL, 0, 0};
    PyObject *result = NULL;
    if (put_value(&t, obj, 0) == 0) {
        result = PyUnicode_New(t.len, 127);
        if (result != NULL)
            memcpy(PyUnicode_DATA(result), t.buf, (size_t)t.len);
    }
    PyMem_Free(t.buf);
    return result;
}

static PyMethodDef methods[] = {
    {"flat_json", py_flat_json, METH_O,
     "flat_json(obj) -> str: compact ASCII JSON of plain data (see the module's source)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_json_line", "A report's per-layer JSON lines (see render/json_out.py).",
    -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__json_line(void) { return PyModule_Create(&module); }
