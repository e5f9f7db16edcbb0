/* turnout.telemetry._usage: `usage_of` in C, the same function as meter.py's `_usage_of`; `count`, the
 * delta count (`bytes.count`); and `Meter`, meter.py's `PyStreamMeter` (below). The Python code is the
 * reference, and what runs when this module was not built.
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

#define _GNU_SOURCE /* memrchr */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <string.h>
#include <structmember.h>

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

/* Where the `n` bytes at `needle` first occur in [p, end), or NULL. Found through glibc's memchr (SIMD)
 * on the needle's byte at `pivot`, a byte rarer than the others in what is searched (`{` in a delta object),
 * then memcmp: memmem is glibc's generic C here, ~450 instructions a call on a 160-byte chunk and ~2.5 a
 * byte (callgrind, EPYC VM), where this costs a few dozen per chunk. */
static const char *find_lit(const char *p, const char *end, const char *needle, Py_ssize_t n, Py_ssize_t pivot) {
    if (end - p < n) return NULL;
    const char *q = p + pivot, *stop = end - (n - pivot - 1); /* the pivot byte of a candidate lies in [q, stop) */
    while (q < stop) {
        const char *hit = memchr(q, needle[pivot], (size_t)(stop - q));
        if (hit == NULL) return NULL;
        /* the byte before the pivot first: most hits fail there, without a call */
        if ((pivot == 0 || hit[-1] == needle[pivot - 1]) && memcmp(hit - pivot, needle, (size_t)n) == 0)
            return hit - pivot;
        q = hit + 1;
    }
    return NULL;
}

/* Where the `n` bytes at `needle` last occur wholly in [lo, hi) (bytes.rfind), or NULL; memrchr on the
 * byte at `pivot`, as find_lit. */
static cursor rfind_lit(cursor lo, cursor hi, const char *needle, Py_ssize_t n, Py_ssize_t pivot) {
    if (hi - lo < n) return NULL;
    cursor first = lo + pivot, limit = hi - n + pivot + 1; /* the pivot byte of a candidate lies in [first, limit) */
    while (limit > first) {
        cursor hit = memrchr(first, needle[pivot], (size_t)(limit - first));
        if (hit == NULL) return NULL;
        if (memcmp(hit - pivot, needle, (size_t)n) == 0) return hit - pivot;
        limit = hit;
    }
    return NULL;
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

/* usage_of on `size` bytes at `body`, from `start` (0 <= start). */
static PyObject *usage_in(cursor body, Py_ssize_t size, Py_ssize_t start) {
    cursor end = body + size;
    static const char key[] = "\"usage\"";
    const size_t key_n = sizeof key - 1;

    /* body.rfind(b'"usage"', start), through its `g` */
    cursor at = start < size ? rfind_lit(body + start, end, key, (Py_ssize_t)key_n, 4) : NULL;
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
    return usage_in((cursor)PyBytes_AS_STRING(args[0]), size, start);
}

/* Occurrences of the `n` bytes at `needle` (n > 0) in the `left` bytes at `p`, not overlapping, as
 * bytes.count counts them; found through the byte at `pivot` (find_lit). */
static Py_ssize_t count_in(const char *p, Py_ssize_t left, const char *needle, Py_ssize_t n, Py_ssize_t pivot) {
    Py_ssize_t found = 0;
    const char *end = p + left;
    while (end - p >= n) {
        const char *at = find_lit(p, end, needle, n, pivot);
        if (at == NULL) break;
        found++; /* occurrences do not overlap: the search goes on after this one */
        p = at + n;
    }
    return found;
}

/* count(data, needle) -> data.count(needle), for bytes. A stream's meter counts its deltas with it once
 * per chunk: `bytes.count` parses its arguments as a tuple (METH_VARARGS) and costs ~1,300 instructions a
 * call on a 160-byte chunk under callgrind; this is a fast call and find_lit. */
static PyObject *count(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2 || !PyBytes_CheckExact(args[0]) || !PyBytes_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "count() takes two bytes");
        return NULL;
    }
    Py_ssize_t size = PyBytes_GET_SIZE(args[0]), n = PyBytes_GET_SIZE(args[1]);
    if (n == 0) return PyLong_FromSsize_t(size + 1); /* as bytes.count: every position */
    const char *needle = PyBytes_AS_STRING(args[1]), *brace = memchr(needle, '{', (size_t)n);
    Py_ssize_t pivot = brace != NULL ? brace - needle : 0;
    return PyLong_FromSsize_t(count_in(PyBytes_AS_STRING(args[0]), size, needle, n, pivot));
}

/* --- Meter: meter.StreamMeter in C ------------------------------------------------------------------
 *
 * The same object as meter.py's `PyStreamMeter` (the reference, and what runs where this module was not
 * built), for app.relay_stream's one call per chunk, `see(chunk)`. In Python the meter's per-chunk lines
 * (a branch on the state, the delta count, the rotation of the last three chunks) cost ~2,400
 * instructions a chunk when chunks come one by one (callgrind, EPYC VM), the first-content regex
 * ~3,400 and the usage look at the end (`last_events`, a join) ~2,500 per stream. What it finds is
 * what the reference finds: tests/test_usage_parse.py feeds both the same streams, cut at random. */

/* The first content `_CONTENT` (meter.py) matches in [body, end): the regex
 * `ent(?:(?<="content)|(?<=_content)|s(?<="arguments))":\s*"(?!")`, where a match starts at `ent` and
 * has `":` right after the key. Each `:` is looked at (memchr) for a key ending in `"` before it: the
 * later a colon, the later the match it ends, so the first that passes is the regex's first match. Its
 * start and end in *from and *to; 0 when there is none. */
static int find_content(cursor body, cursor end, cursor *from, cursor *to) {
    cursor p = body;
    while (p < end) {
        cursor colon = memchr(p, ':', (size_t)(end - p));
        if (colon == NULL) return 0;
        p = colon + 1;
        cursor at = NULL; /* where `ent` starts */
        Py_ssize_t before = colon - body;
        if (before >= 9 && colon[-1] == '"' && memcmp(colon - 4, "ent", 3) == 0 &&
            (colon[-9] == '"' || colon[-9] == '_') && memcmp(colon - 8, "cont", 4) == 0) {
            at = colon - 4; /* "content": or _content": */
        } else if (before >= 11 && colon[-1] == '"' && memcmp(colon - 11, "\"arguments", 10) == 0) {
            at = colon - 5;
        }
        if (at == NULL) continue;
        cursor q = skip_space(colon + 1, end);
        if (q >= end || *q != '"') continue;
        if (q + 1 < end && q[1] == '"') continue; /* an empty string */
        *from = at;
        *to = q + 1;
        return 1;
    }
    return 0;
}

/* meter.last_events: where the third-last `\ndata:` starts in the `size` bytes at `body`, -1 when fewer. */
static Py_ssize_t third_last_event(cursor body, Py_ssize_t size) {
    cursor hi = body + size;
    for (int found = 0; found < 3; found++) {
        cursor at = rfind_lit(body, hi, "\ndata:", 6, 0);
        if (at == NULL) return -1;
        hi = at; /* occurrences cannot overlap: the next one ends at or before this one's start */
    }
    return hi - body;
}

typedef struct {
    PyObject_HEAD
    double started;
    PyObject *first_content; /* a float once the first content went by, else NULL (None) */
    PyObject *error;         /* str or NULL (None): set by proxy.StreamReply when the stream fails */
    PyObject *tail[3];       /* the last three chunks, oldest first; b"" until there are three */
    const char *delta;       /* this stream's spelling of a non-empty delta object, once the first content came */
    Py_ssize_t delta_n, count, after, event;
    char sized;
} Meter;

static PyObject *perf_counter; /* time.perf_counter: first_content is on its clock, as `started` is */
static PyObject *empty_bytes;

/* Every slot valid from the start, so that a Meter made without __init__ (Meter.__new__) is empty, not broken. */
static PyObject *meter_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    (void)args;
    (void)kwargs;
    Meter *self = (Meter *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    for (int i = 0; i < 3; i++) self->tail[i] = Py_NewRef(empty_bytes);
    return (PyObject *)self;
}

static int meter_init(Meter *self, PyObject *args, PyObject *kwargs) {
    double started;
    static char *names[] = {"started", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "d:StreamMeter", names, &started)) return -1;
    self->started = started;
    Py_CLEAR(self->first_content);
    Py_CLEAR(self->error);
    for (int i = 0; i < 3; i++) {
        Py_INCREF(empty_bytes);
        Py_XSETREF(self->tail[i], empty_bytes);
    }
    self->delta = NULL;
    self->delta_n = self->count = self->after = self->event = 0;
    self->sized = 0;
    return 0;
}

static void meter_dealloc(Meter *self) {
    Py_XDECREF(self->first_content);
    Py_XDECREF(self->error);
    for (int i = 0; i < 3; i++) Py_XDECREF(self->tail[i]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* PyStreamMeter.first: before the first content, look for it in the chunk. */
static int meter_first(Meter *self, cursor body, Py_ssize_t size) {
    cursor end = body + size, from, to;
    if (!find_content(body, end, &from, &to)) return 0;
    PyObject *now = PyObject_CallNoArgs(perf_counter);
    if (now == NULL) return -1;
    Py_XSETREF(self->first_content, now);
    static const char spaced[] = "\"delta\": {\"", tight[] = "\"delta\":{\"";
    cursor at = rfind_lit(body, from, "\"delta\"", 7, 1); /* the delta object the first content is in */
    if (at != NULL && end - at >= 9 && memcmp(at, "\"delta\": ", 9) == 0) {
        self->delta = spaced;
        self->delta_n = sizeof spaced - 1;
    } else {
        self->delta = tight;
        self->delta_n = sizeof tight - 1;
    }
    if (self->sized) { /* the first content event's size (to its blank line), and the bytes after it */
        cursor begin = rfind_lit(body, from, "data:", 5, 0);
        cursor blank = (cursor)find_lit((const char *)to, (const char *)end, "\n\n", 2, 0);
        cursor stop = blank != NULL ? (cursor)blank + 2 : end;
        self->event = (stop - body) - (begin != NULL ? begin - body : 0);
        self->after = end - stop;
        self->count = 1;
    } else {
        self->count += 1 + count_in((const char *)to, end - to, self->delta, self->delta_n, self->delta_n - 2);
    }
    return 0;
}

static PyObject *meter_see(Meter *self, PyObject *chunk) {
    if (!PyBytes_Check(chunk)) {
        PyErr_SetString(PyExc_TypeError, "see() takes bytes");
        return NULL;
    }
    Py_INCREF(chunk);
    Py_DECREF(self->tail[0]);
    self->tail[0] = self->tail[1];
    self->tail[1] = self->tail[2];
    self->tail[2] = chunk;
    const char *body = PyBytes_AS_STRING(chunk);
    Py_ssize_t size = PyBytes_GET_SIZE(chunk);
    if (self->delta == NULL) {
        if (meter_first(self, (cursor)body, size) < 0) return NULL;
    } else if (self->sized) {
        self->after += size;
    } else {
        self->count += count_in(body, size, self->delta, self->delta_n, self->delta_n - 2);
    }
    Py_RETURN_NONE;
}

/* PyStreamMeter.usage: the usage event is in one of the last three events. */
static PyObject *meter_usage(Meter *self, PyObject *unused) {
    (void)unused;
    PyObject *last = self->tail[2];
    cursor body = (cursor)PyBytes_AS_STRING(last);
    Py_ssize_t size = PyBytes_GET_SIZE(last);
    Py_ssize_t older = PyBytes_GET_SIZE(self->tail[0]), before = PyBytes_GET_SIZE(self->tail[1]);
    Py_ssize_t start = third_last_event(body, size);
    if (start >= 0 || (older == 0 && before == 0)) /* all three events are in the last chunk: no join */
        return usage_in(body, size, start < 0 ? 0 : start);
    Py_ssize_t total = older + before + size;
    unsigned char *joined = PyMem_Malloc((size_t)total + 1);
    if (joined == NULL) return PyErr_NoMemory();
    memcpy(joined, PyBytes_AS_STRING(self->tail[0]), (size_t)older);
    memcpy(joined + older, PyBytes_AS_STRING(self->tail[1]), (size_t)before);
    memcpy(joined + older + before, body, (size_t)size);
    start = third_last_event(joined, total);
    PyObject *out = usage_in(joined, total, start < 0 ? 0 : start);
    PyMem_Free(joined);
    return out;
}

static PyObject *meter_deltas(Meter *self, void *closure) {
    (void)closure;
    if (self->event) { /* 1 + max(round(after / event) - 1, 0): round half to even, as Python's round */
        double runs = nearbyint((double)self->after / (double)self->event);
        return PyLong_FromSsize_t(1 + (runs > 1 ? (Py_ssize_t)runs - 1 : 0));
    }
    return PyLong_FromSsize_t(self->count);
}

static PyObject *meter_ttft_ms(Meter *self, void *closure) {
    (void)closure;
    if (self->first_content == NULL) Py_RETURN_NONE;
    return PyFloat_FromDouble((PyFloat_AS_DOUBLE(self->first_content) - self->started) * 1000);
}

static PyObject *meter_get_error(Meter *self, void *closure) {
    (void)closure;
    PyObject *error = self->error != NULL ? self->error : Py_None;
    Py_INCREF(error);
    return error;
}

static int meter_set_error(Meter *self, PyObject *value, void *closure) {
    (void)closure;
    if (value != NULL && value != Py_None && !PyUnicode_Check(value)) {
        PyErr_SetString(PyExc_TypeError, "error must be a str or None");
        return -1;
    }
    if (value == Py_None) value = NULL;
    Py_XINCREF(value);
    Py_XSETREF(self->error, value);
    return 0;
}

static PyObject *meter_get_first_content(Meter *self, void *closure) {
    (void)closure;
    PyObject *out = self->first_content != NULL ? self->first_content : Py_None;
    Py_INCREF(out);
    return out;
}

static PyObject *meter_get_sized(Meter *self, void *closure) {
    (void)closure;
    return PyBool_FromLong(self->sized);
}

static int meter_set_sized(Meter *self, PyObject *value, void *closure) {
    (void)closure;
    int truth = value == NULL ? 0 : PyObject_IsTrue(value);
    if (truth < 0) return -1;
    self->sized = (char)truth;
    return 0;
}

static PyMethodDef meter_methods[] = {
    {"see", (PyCFunction)meter_see, METH_O, "see(chunk): one chunk of the stream, as it went by."},
    {"usage", (PyCFunction)meter_usage, METH_NOARGS,
     "usage() -> (prompt_tokens, completion_tokens, cached_tokens) from the stream's usage event, if sent."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef meter_members[] = {
    {"started", T_DOUBLE, offsetof(Meter, started), READONLY, "perf_counter() when the request started."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef meter_getset[] = {
    {"first_content", (getter)meter_get_first_content, NULL, "perf_counter() at the first content, or None.", NULL},
    {"error", (getter)meter_get_error, (setter)meter_set_error, "why the stream failed mid-way, or None.", NULL},
    {"sized", (getter)meter_get_sized, (setter)meter_set_sized, "usage was asked for: bytes are summed.", NULL},
    {"deltas", (getter)meter_deltas, NULL, "non-empty deltas counted (sized: estimated).", NULL},
    {"ttft_ms", (getter)meter_ttft_ms, NULL, "milliseconds to the first content, or None.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject MeterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turnout.telemetry._usage.Meter",
    .tp_doc = "Meter(started): meter.PyStreamMeter in C.",
    .tp_basicsize = sizeof(Meter),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = meter_new,
    .tp_init = (initproc)meter_init,
    .tp_dealloc = (destructor)meter_dealloc,
    .tp_methods = meter_methods,
    .tp_members = meter_members,
    .tp_getset = meter_getset,
};

/* --- strip_usage: proxy.UsageFilter's search of whole events, in C ------------------------------
 *
 * proxy._strip_usage(whole) is the reference: `whole` (whole SSE events) without its usage events (an
 * event with `"choices":[]` or `"choices": []` and `"usage"`), found from the first `[]` on. CPython's
 * bytes.find scans a short needle at ~1 ns a byte: on gatebench's 3 KB stream in one chunk, the Python
 * version cost ~7 us per stream (its first `find(b"[]")` alone ~3.5 us), +15 % CPU per stream with
 * `stream_usage` on (telemetry_ab.py --together, EPYC VM). */

static const char CHOICES[] = "\"choices\":[]", CHOICES_SPACED[] = "\"choices\": []";

/* Python's data.find(needle, lo, hi) (lo <= hi), as an offset, or -1. */
static Py_ssize_t find_in(cursor data, Py_ssize_t lo, Py_ssize_t hi, const char *needle, Py_ssize_t n, Py_ssize_t pivot) {
    const char *at = find_lit((const char *)data + lo, (const char *)data + hi, needle, n, pivot);
    return at == NULL ? -1 : (cursor)at - data;
}

/* Python's data.rfind(needle, lo, hi), as an offset, or -1. */
static Py_ssize_t rfind_in(cursor data, Py_ssize_t lo, Py_ssize_t hi, const char *needle, Py_ssize_t n, Py_ssize_t pivot) {
    cursor at = lo <= hi ? rfind_lit(data + lo, data + hi, needle, n, pivot) : NULL;
    return at == NULL ? -1 : at - data;
}

static PyObject *strip_usage(PyObject *self, PyObject *arg) {
    (void)self;
    if (!PyBytes_CheckExact(arg)) {
        PyErr_SetString(PyExc_TypeError, "strip_usage() takes bytes");
        return NULL;
    }
    cursor whole = (cursor)PyBytes_AS_STRING(arg);
    Py_ssize_t size = PyBytes_GET_SIZE(arg);
    Py_ssize_t first = find_in(whole, 0, size, "[]", 2, 1);
    if (first < 0) return Py_NewRef(arg);
    PyObject *out = NULL; /* made at the first usage event: until then nothing is taken out */
    char *to = NULL;
    Py_ssize_t start = 0, look = first - 12 > 0 ? first - 12 : 0;
    for (;;) {
        Py_ssize_t at = find_in(whole, look, size, CHOICES, sizeof CHOICES - 1, 10);
        Py_ssize_t spaced = find_in(whole, look, at >= 0 ? at : size, CHOICES_SPACED, sizeof CHOICES_SPACED - 1, 11);
        if (spaced >= 0 && (at < 0 || spaced < at)) at = spaced;
        if (at < 0) break;
        /* the event around `at`: proxy._event_start and _event_end */
        Py_ssize_t lf = rfind_in(whole, start, at, "\n\n", 2, 0);
        Py_ssize_t crlf = rfind_in(whole, lf > start ? lf : start, at, "\r\n\r\n", 4, 0);
        Py_ssize_t begin = lf >= 0 ? lf + 2 : start, after_crlf = crlf >= 0 ? crlf + 4 : start;
        if (after_crlf > begin) begin = after_crlf;
        Py_ssize_t end_lf = find_in(whole, at, size, "\n\n", 2, 0), end_crlf = find_in(whole, at, size, "\r\n\r\n", 4, 0);
        Py_ssize_t end = end_crlf >= 0 && (end_lf < 0 || end_crlf < end_lf) ? end_crlf + 4 : end_lf >= 0 ? end_lf + 2 : size;
        Py_ssize_t keep = find_in(whole, begin, end, "\"usage\"", 7, 4) >= 0 ? begin : end; /* whole[start:keep] stays */
        if (keep == begin) { /* a usage event: it goes */
            if (out == NULL) { /* everything before this event stays as it came */
                if ((out = PyBytes_FromStringAndSize(NULL, size)) == NULL) return NULL;
                to = PyBytes_AS_STRING(out);
                memcpy(to, whole, (size_t)start);
                to += start;
            }
        }
        if (out != NULL) {
            memcpy(to, whole + start, (size_t)(keep - start));
            to += keep - start;
        }
        start = look = end;
    }
    if (out == NULL) return Py_NewRef(arg); /* no usage event: the chunk as it came */
    memcpy(to, whole + start, (size_t)(size - start));
    to += size - start;
    if (_PyBytes_Resize(&out, to - PyBytes_AS_STRING(out)) < 0) return NULL;
    return out;
}

static PyMethodDef methods[] = {
    {"count", (PyCFunction)(void (*)(void))count, METH_FASTCALL,
     "count(data, needle) -> int: data.count(needle) for bytes, as a fast call."},
    {"strip_usage", (PyCFunction)strip_usage, METH_O,
     "strip_usage(whole) -> bytes: whole SSE events without their usage events (proxy._strip_usage)."},
    {"usage_of", (PyCFunction)(void (*)(void))usage_of, METH_FASTCALL,
     "usage_of(body, start=0) -> (prompt_tokens, completion_tokens, cached_tokens): see meter._usage_of."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef usage_module = {
    PyModuleDef_HEAD_INIT, "turnout.telemetry._usage", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__usage(void) {
    PyObject *time = PyImport_ImportModule("time");
    if (time == NULL) return NULL;
    perf_counter = PyObject_GetAttrString(time, "perf_counter");
    Py_DECREF(time);
    if (perf_counter == NULL) return NULL;
    empty_bytes = PyBytes_FromStringAndSize(NULL, 0);
    if (empty_bytes == NULL || PyType_Ready(&MeterType) < 0) return NULL;
    PyObject *module = PyModule_Create(&usage_module);
    if (module == NULL) return NULL;
    Py_INCREF(&MeterType);
    if (PyModule_AddObject(module, "Meter", (PyObject *)&MeterType) < 0) {
        Py_DECREF(&MeterType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
