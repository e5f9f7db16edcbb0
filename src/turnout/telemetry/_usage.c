/* turnout.telemetry._usage: `usage_of` in C, the same function as meter.py's `_usage_of` (which is the
 * reference, and what runs when this module was not built).
 *
 * Why C: reading the three counts out of an upstream's answer is the largest single piece of what
 * telemetry adds per request. In Python the best of several versions costs ~10,500 instructions per JSON
 * answer (callgrind, EPYC VM): one `rfind` (~1,450), a regex match of the usual shape (~4,700) and
 * `int()` per count (~1,450 each); orjson or msgspec parse the whole body, which costs more as answers
 * grow. This scans only from the last `"usage"` key on and costs a few hundred.
 *
 * What it matches is exactly what meter.py's regexes match; tests/test_usage_parse.py checks both
 * against each other on thousands of generated bodies. `\s` is bytes-regex whitespace (space, \t, \n,
 * \r, \f, \v), `\d` an ASCII digit. Every read is bounds-checked against the body's length. */

#define _GNU_SOURCE /* memmem */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

typedef const unsigned char *cursor;

static int is_space(unsigned char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static cursor skip_space(cursor p, cursor end) {
    while (p < end && is_space(*p)) p++;
    return p;
}

/* `p` past `lit` when the bytes at `p` are `lit`, else NULL. */
static cursor literal(cursor p, cursor end, const char *lit, size_t n) {
    if (p == NULL || (size_t)(end - p) < n || memcmp(p, lit, n) != 0) return NULL;
    return p + n;
}

/* `\s*:\s*(\d+)` at `p`: the digits' span in [*from, *to), and the cursor after them; NULL if no match. */
static cursor colon_digits(cursor p, cursor end, cursor *from, cursor *to) {
    if (p == NULL) return NULL;
    p = skip_space(p, end);
    if (p >= end || *p != ':') return NULL;
    p = skip_space(p + 1, end);
    if (p >= end || *p < '0' || *p > '9') return NULL;
    *from = p;
    while (p < end && *p >= '0' && *p <= '9') p++;
    *to = p;
    return p;
}

/* int(digits), as Python reads them (any length). */
static PyObject *number(cursor from, cursor to) {
    Py_ssize_t n = to - from;
    if (n <= 18) {
        long long v = 0;
        for (cursor p = from; p < to; p++) v = v * 10 + (*p - '0');
        return PyLong_FromLongLong(v);
    }
    char *copy = PyMem_Malloc((size_t)n + 1);
    if (copy == NULL) return PyErr_NoMemory();
    memcpy(copy, from, (size_t)n);
    copy[n] = '\0';
    PyObject *out = PyLong_FromString(copy, NULL, 10);
    PyMem_Free(copy);
    return out;
}

/* The first `"key"\s*:\s*(\d+)` at or after `p` (a regex search), with `key` or, if given, `other` (tried
 * second at each position, as a regex alternation does): the digits' span, or 0 when none. */
static int search(cursor p, cursor end, const char *key, size_t n, const char *other, size_t m, cursor *from,
                  cursor *to) {
    while (p < end) {
        cursor quote = memchr(p, '"', (size_t)(end - p));
        if (quote == NULL) return 0;
        if (colon_digits(literal(quote, end, key, n), end, from, to) != NULL) return 1;
        if (other != NULL && colon_digits(literal(quote, end, other, m), end, from, to) != NULL) return 1;
        p = quote + 1;
    }
    return 0;
}

static PyObject *triple(PyObject *prompt, PyObject *completion, PyObject *cached) {
    /* The tuple of the three, stealing their references (NULL stands for None); NULL if it cannot be made. */
    PyObject *items[3] = {prompt, completion, cached};
    for (int i = 0; i < 3; i++) {
        if (items[i] == NULL) {
            items[i] = Py_None;
            Py_INCREF(Py_None);
        }
    }
    PyObject *out = PyTuple_New(3);
    if (out == NULL) {
        for (int i = 0; i < 3; i++) Py_DECREF(items[i]);
        return NULL;
    }
    for (int i = 0; i < 3; i++) PyTuple_SET_ITEM(out, i, items[i]);
    return out;
}

static PyObject *usage_of(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs < 1 || nargs > 2) {
        PyErr_SetString(PyExc_TypeError, "usage_of(body, start=0)");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "usage_of: body must be bytes");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]);
    Py_ssize_t start = 0;
    if (nargs == 2) {
        start = PyLong_AsSsize_t(args[1]);
        if (start == -1 && PyErr_Occurred()) return NULL;
        if (start < 0) start = start + size < 0 ? 0 : start + size; /* as bytes.rfind reads a negative start */
    }
    cursor body = (cursor)PyBytes_AS_STRING(args[0]);
    cursor end = body + size;
    static const char key[] = "\"usage\"";
    const size_t key_n = sizeof key - 1;

    /* body.rfind(b'"usage"', start) */
    cursor at = NULL;
    for (Py_ssize_t i = size - (Py_ssize_t)key_n; i >= start; i--) {
        if (body[i] == '"' && memcmp(body + i, key, key_n) == 0) {
            at = body + i;
            break;
        }
    }
    if (at == NULL) return triple(NULL, NULL, NULL);

    /* The cached count, in either spelling (OpenAI's and vLLM's, DeepSeek's). */
    static const char cached_key[] = "\"cached_tokens\"", hit_key[] = "\"prompt_cache_hit_tokens\"";
    cursor from, to;
    PyObject *cached = NULL;
    if (search(at, end, cached_key, sizeof cached_key - 1, hit_key, sizeof hit_key - 1, &from, &to)) {
        cached = number(from, to);
        if (cached == NULL) return NULL;
    }

    /* The usual shape: "usage"\s*:\s*\{\s*"prompt_tokens"\s*:\s*(\d+)\s*,\s*"completion_tokens"\s*:\s*(\d+) */
    cursor p = skip_space(at + key_n, end), p_from, p_to, c_from, c_to;
    int opened = p < end && *p == ':';
    if (opened) {
        p = skip_space(p + 1, end);
        opened = p < end && *p == '{';
    }
    if (!opened) { /* `"usage": null`, or no object after the key */
        Py_XDECREF(cached);
        return triple(NULL, NULL, NULL);
    }
    static const char prompt_key[] = "\"prompt_tokens\"", completion_key[] = "\"completion_tokens\"";
    cursor q = literal(skip_space(p + 1, end), end, prompt_key, sizeof prompt_key - 1);
    q = colon_digits(q, end, &p_from, &p_to);
    if (q != NULL) {
        q = skip_space(q, end);
        q = (q < end && *q == ',') ? skip_space(q + 1, end) : NULL;
        q = colon_digits(literal(q, end, completion_key, sizeof completion_key - 1), end, &c_from, &c_to);
    }
    PyObject *prompt = NULL, *completion = NULL;
    if (q == NULL) { /* another key order: each count searched for on its own */
        int has_p = search(at, end, prompt_key, sizeof prompt_key - 1, NULL, 0, &p_from, &p_to);
        int has_c = search(at, end, completion_key, sizeof completion_key - 1, NULL, 0, &c_from, &c_to);
        if (has_p && (prompt = number(p_from, p_to)) == NULL) goto fail;
        if (has_c && (completion = number(c_from, c_to)) == NULL) goto fail;
    } else {
        if ((prompt = number(p_from, p_to)) == NULL) goto fail;
        if ((completion = number(c_from, c_to)) == NULL) goto fail;
    }
    return triple(prompt, completion, cached);
fail:
    Py_XDECREF(prompt);
    Py_XDECREF(cached);
    return NULL;
}

/* count(data, needle) -> data.count(needle), for bytes. A stream's meter counts its deltas with it once
 * per chunk: `bytes.count` parses its arguments as a tuple (METH_VARARGS) and costs ~1,300 instructions a
 * call on a 160-byte chunk under callgrind; this is a fast call and glibc's memmem. */
static PyObject *count(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "count() takes two bytes");
        return NULL;
    }
    const char *p = PyBytes_AS_STRING(args[0]), *needle = PyBytes_AS_STRING(args[1]);
    Py_ssize_t left = PyBytes_GET_SIZE(args[0]), n = PyBytes_GET_SIZE(args[1]), found = 0;
    if (n == 0) return PyLong_FromSsize_t(left + 1); /* as bytes.count: every position */
    while (left >= n) {
        const char *at = memmem(p, (size_t)left, needle, (size_t)n);
        if (at == NULL) break;
        found++; /* occurrences do not overlap: the search goes on after this one */
        left -= (at - p) + n;
        p = at + n;
    }
    return PyLong_FromSsize_t(found);
}

static PyMethodDef methods[] = {
    {"count", (PyCFunction)(void (*)(void))count, METH_FASTCALL,
     "count(data, needle) -> int: data.count(needle) for bytes, as a fast call."},
    {"usage_of", (PyCFunction)(void (*)(void))usage_of, METH_FASTCALL,
     "usage_of(body, start=0) -> (prompt_tokens, completion_tokens, cached_tokens): see meter._usage_of."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef usage_module = {
    PyModuleDef_HEAD_INIT, "turnout.telemetry._usage", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__usage(void) { return PyModule_Create(&usage_module); }
