/* turnout.telemetry._record: a finished request's RequestRecord and its audit row, built in C.
 *
 * `Builder(prices, fallback)(*inputs)` is record.build_record(models, *inputs) and `audit_row(record)` is
 * audit._audit_row(record). The Python functions are the reference and what runs when this module was
 * not built; tests/test_record_c.py checks both against each other on thousands of generated requests.
 *
 * Why C: once per request, the interpreter on these machines spends ~12,700 instructions building the
 * record (a 29-field dataclass: ~6,600 for its __init__ alone, the rest rounding, cost and reading the
 * decision) and ~4,100 making its audit row (callgrind, EPYC VM). Records and rows are made in batches
 * on the event loop; this takes each to a few hundred instructions.
 *
 * How: RequestRecord, RequestContext, Decision and Target are slotted dataclasses; `prepare` looks up the
 * offset of every field's slot once (from its member descriptor), so a field is read or set with a load
 * or a store. A record is allocated with its type's tp_alloc and its slots filled; RequestRecord has no
 * __post_init__ (record.py checks), so this is what its __init__ would do. Anything off the common path
 * (no decision, a failed request, a value of an unexpected type, a slot never set)
 * goes to the Python function, which also raises what Python would raise. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <limits.h>
#include <math.h>

/* --- field offsets ----------------------------------------------------------------------------- */

static const char *const RECORD_FIELDS[] = {
    "request_id", "started_at", "endpoint", "status", "error", "router", "route", "model", "upstream",
    "strategy", "reason", "confidence", "scores", "threshold", "margin", "provenance", "decision_ms",
    "trace", "attempts", "stream", "latency_ms", "ttft_ms", "prompt_tokens", "completion_tokens",
    "cached_tokens", "tokens_estimated", "cost_usd", "cache", "guards",
};
enum {
    R_REQUEST_ID, R_STARTED_AT, R_ENDPOINT, R_STATUS, R_ERROR, R_ROUTER, R_ROUTE, R_MODEL, R_UPSTREAM,
    R_STRATEGY, R_REASON, R_CONFIDENCE, R_SCORES, R_THRESHOLD, R_MARGIN, R_PROVENANCE, R_DECISION_MS,
    R_TRACE, R_ATTEMPTS, R_STREAM, R_LATENCY_MS, R_TTFT_MS, R_PROMPT_TOKENS, R_COMPLETION_TOKENS,
    R_CACHED_TOKENS, R_TOKENS_ESTIMATED, R_COST_USD, R_CACHE, R_GUARDS, R_N
};
static const char *const CONTEXT_FIELDS[] = {"stream", "decision", "target", "attempts", "body", "features"};
enum { C_STREAM, C_DECISION, C_TARGET, C_ATTEMPTS, C_BODY, C_FEATURES, C_N };
static const char *const DECISION_FIELDS[] = {
    "route", "strategy", "router", "confidence", "reason", "scores", "threshold", "margin", "provenance",
    "trace", "elapsed_ms",
};
enum {
    D_ROUTE, D_STRATEGY, D_ROUTER, D_CONFIDENCE, D_REASON, D_SCORES, D_THRESHOLD, D_MARGIN, D_PROVENANCE,
    D_TRACE, D_ELAPSED_MS, D_N
};
static const char *const TARGET_FIELDS[] = {"key", "upstream"};
enum { T_KEY, T_UPSTREAM, T_N };

static PyTypeObject *record_type, *context_type, *decision_type, *target_type;
static Py_ssize_t record_off[R_N], context_off[C_N], decision_off[D_N], target_off[T_N];
static PyObject *cache_default; /* RequestRecord.cache's default; guards' is a new empty list */
static PyObject *chat, *messages_key, *content_key; /* "chat", "messages", "content" */
static PyObject *estimate_prompt; /* record.estimate_prompt_tokens */

/* The slot of `obj` at `offset` (borrowed; NULL if it was never set). */
#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

/* record.estimate_prompt_tokens(ctx) where it is plain: no features yet, and every message a dict whose
 * `content`, if a str, is ASCII (len // 4 tokens each, as features.estimate_tokens counts ASCII text).
 * NULL without an error set where the Python function must answer (features known, text that is not
 * ASCII, a message or content of a subclass, `messages` not a list). In Python the estimate cost ~3,000
 * instructions per request whose upstream reported no usage (callgrind, EPYC VM). */
static PyObject *ascii_prompt_estimate(PyObject *ctx) {
    PyObject *features = SLOT(ctx, context_off[C_FEATURES]), *body = SLOT(ctx, context_off[C_BODY]);
    if (features != Py_None || body == NULL || !PyDict_CheckExact(body)) return NULL;
    PyObject *messages = PyDict_GetItemWithError(body, messages_key);
    if (messages == NULL) {
        if (!PyErr_Occurred()) return PyLong_FromLong(0); /* `.get("messages", ())` */
        PyErr_Clear();
        return NULL;
    }
    if (!PyList_CheckExact(messages)) return NULL;
    Py_ssize_t total = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(messages); i++) {
        PyObject *m = PyList_GET_ITEM(messages, i);
        if (!PyDict_CheckExact(m)) {
            if (PyDict_Check(m)) return NULL;
            continue; /* not a dict: no content */
        }
        PyObject *content = PyDict_GetItemWithError(m, content_key);
        if (content == NULL) {
            if (!PyErr_Occurred()) continue;
            PyErr_Clear();
            return NULL;
        }
        if (!PyUnicode_CheckExact(content)) {
            if (PyUnicode_Check(content)) return NULL;
            continue; /* parts, None: not counted */
        }
        if (!PyUnicode_IS_ASCII(content)) return NULL;
        total += PyUnicode_GET_LENGTH(content) / 4;
    }
    return PyLong_FromSsize_t(total);
}


/* The offsets of `names`' slots in `type`, each a member descriptor holding an object. */
static int offsets(PyTypeObject *type, const char *const *names, Py_ssize_t n, Py_ssize_t *out) {
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *descr = PyDict_GetItemString(type->tp_dict, names[i]); /* borrowed */
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, names[i]);
            return -1;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX || (member->flags & READONLY)) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a writable object slot", type->tp_name, names[i]);
            return -1;
        }
        out[i] = member->offset;
    }
    return 0;
}

static int take_type(PyObject *obj, PyTypeObject **slot) {
    if (!PyType_Check(obj)) {
        PyErr_SetString(PyExc_TypeError, "prepare() takes classes");
        return -1;
    }
    Py_INCREF(obj);
    Py_XSETREF(*slot, (PyTypeObject *)obj);
    return 0;
}

/* prepare(RequestRecord, RequestContext, Decision, Target, cache_default, estimate_prompt_tokens): done
 * once, by record.py. */
static PyObject *prepare(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "prepare() takes 6 arguments");
        return NULL;
    }
    Py_XSETREF(estimate_prompt, Py_NewRef(args[5]));
    if (take_type(args[0], &record_type) < 0 || take_type(args[1], &context_type) < 0 ||
        take_type(args[2], &decision_type) < 0 || take_type(args[3], &target_type) < 0)
        return NULL;
    if (offsets(record_type, RECORD_FIELDS, R_N, record_off) < 0 ||
        offsets(context_type, CONTEXT_FIELDS, C_N, context_off) < 0 ||
        offsets(decision_type, DECISION_FIELDS, D_N, decision_off) < 0 ||
        offsets(target_type, TARGET_FIELDS, T_N, target_off) < 0) {
        Py_CLEAR(record_type); /* not prepared: every call goes to the Python functions */
        return NULL;
    }
    Py_INCREF(args[4]);
    Py_XSETREF(cache_default, args[4]);
    Py_RETURN_NONE;
}

/* --- numbers, as numbers.py and ModelConfig.cost_usd compute them -------------------------------- */

/* numbers.round3 / round4: floor(x * scale + 0.5) / scale (Python's floor returns an int, which the
 * division turns back into the same double). -1 for a value Python's floor would refuse. */
static int rounded(PyObject *value, double scale, PyObject **out) {
    if (!PyFloat_CheckExact(value)) return -1;
    double x = PyFloat_AS_DOUBLE(value) * scale + 0.5;
    if (!isfinite(x)) return -1;
    *out = PyFloat_FromDouble(floor(x) / scale);
    return *out == NULL ? -2 : 0;
}

/* A token count as a C integer: 0 and *ok=0 when it is not an exact int within range. */
static long long count_of(PyObject *v, int *ok) {
    if (!PyLong_CheckExact(v)) {
        *ok = 0;
        return 0;
    }
    int overflow = 0;
    long long n = PyLong_AsLongLongAndOverflow(v, &overflow);
    if (overflow || (n == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        *ok = 0;
        return 0;
    }
    return n;
}

/* --- Builder ----------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *prices;   /* {model key: (input, output, cached input) USD per 1M tokens}, priced models only */
    PyObject *fallback; /* functools.partial(build_record, models) */
    vectorcallfunc vectorcall;
} Builder;

static PyObject *builder_call(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames);

static PyObject *builder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *prices, *fallback;
    static char *kwlist[] = {"prices", "fallback", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!O:Builder", kwlist, &PyDict_Type, &prices, &fallback))
        return NULL;
    Builder *self = (Builder *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    Py_INCREF(prices);
    self->prices = prices;
    Py_INCREF(fallback);
    self->fallback = fallback;
    self->vectorcall = builder_call;
    return (PyObject *)self;
}

static int builder_traverse(Builder *self, visitproc visit, void *arg) {
    Py_VISIT(self->prices);
    Py_VISIT(self->fallback);
    return 0;
}

static int builder_clear(Builder *self) {
    Py_CLEAR(self->prices);
    Py_CLEAR(self->fallback);
    return 0;
}

static void builder_dealloc(Builder *self) {
    PyObject_GC_UnTrack(self);
    builder_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The cost of one answer: NULL with no error when it cannot be worked out here. */
static PyObject *cost_of(Builder *self, PyObject *model, PyObject *prompt, PyObject *completion, PyObject *cached,
                         int *ok) {
    PyObject *price = PyDict_GetItemWithError(self->prices, model); /* borrowed */
    if (price == NULL) {
        if (PyErr_Occurred()) PyErr_Clear(); /* an unhashable key: Python raises there too */
        Py_RETURN_NONE;
    }
    if (!PyTuple_CheckExact(price) || PyTuple_GET_SIZE(price) != 3) {
        *ok = 0;
        return NULL;
    }
    long long p = count_of(prompt, ok), c = count_of(completion, ok), k = 0;
    if (cached != Py_None) k = count_of(cached, ok);
    double in = PyFloat_AsDouble(PyTuple_GET_ITEM(price, 0));
    double out = PyFloat_AsDouble(PyTuple_GET_ITEM(price, 1));
    double cp = PyFloat_AsDouble(PyTuple_GET_ITEM(price, 2));
    if (PyErr_Occurred()) {
        PyErr_Clear();
        *ok = 0;
    }
    if (!*ok) return NULL;
    /* ModelConfig.cost_usd, term by term in the same order (no fused multiply-add: setup.py) */
    if (k <= 0) return PyFloat_FromDouble(((double)p * in + (double)c * out) / 1e6);
    if (k > p) k = p;
    return PyFloat_FromDouble(((double)(p - k) * in + (double)k * cp + (double)c * out) / 1e6);
}

static PyObject *fallback(Builder *self, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
}

/* build_record's arguments after `models`: request_id, started_at, endpoint, status, latency_ms, ctx,
 * error, usage, ttft_ms, deltas. */
static PyObject *builder_call(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Builder *self = (Builder *)callable;
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (record_type == NULL || kwnames != NULL || nargs != 10) return fallback(self, args, nargsf, kwnames);
    PyObject *endpoint = args[2], *status = args[3], *ctx = args[5], *usage = args[7], *ttft = args[8];
    if (!Py_IS_TYPE(ctx, context_type)) return fallback(self, args, nargsf, kwnames);
    PyObject *d = SLOT(ctx, context_off[C_DECISION]), *target = SLOT(ctx, context_off[C_TARGET]);
    PyObject *attempts = SLOT(ctx, context_off[C_ATTEMPTS]), *stream = SLOT(ctx, context_off[C_STREAM]);
    if (d == NULL || target == NULL || attempts == NULL || stream == NULL || !Py_IS_TYPE(d, decision_type) ||
        !Py_IS_TYPE(target, target_type))
        return fallback(self, args, nargsf, kwnames);
    PyObject *dv[D_N];
    for (int i = 0; i < D_N; i++) {
        dv[i] = SLOT(d, decision_off[i]);
        if (dv[i] == NULL) return fallback(self, args, nargsf, kwnames);
    }
    PyObject *model = SLOT(target, target_off[T_KEY]), *upstream = SLOT(target, target_off[T_UPSTREAM]);
    if (model == NULL || upstream == NULL) return fallback(self, args, nargsf, kwnames);

    if (!PyUnicode_CheckExact(endpoint) || !PyLong_CheckExact(status)) return fallback(self, args, nargsf, kwnames);
    int overflow = 0, answered = 0; /* endpoint == "chat" and status == 200 */
    if (PyLong_AsLongAndOverflow(status, &overflow) == 200 && !overflow) {
        int differ = endpoint == chat ? 0 : PyUnicode_Compare(endpoint, chat);
        if (differ == -1 && PyErr_Occurred()) return NULL;
        answered = differ == 0;
    }
    PyObject *prompt = Py_None, *completion = Py_None, *cached = Py_None, *cost = NULL, *estimate = NULL;
    int estimated = 0;
    if (answered) {
        if (!PyTuple_CheckExact(usage) || PyTuple_GET_SIZE(usage) != 3) return fallback(self, args, nargsf, kwnames);
        prompt = PyTuple_GET_ITEM(usage, 0);
        completion = PyTuple_GET_ITEM(usage, 1);
        cached = PyTuple_GET_ITEM(usage, 2);
        if (prompt == Py_None || completion == Py_None) { /* not reported: estimated, as build_record does */
            if (completion == Py_None && !PyLong_CheckExact(args[9])) return fallback(self, args, nargsf, kwnames);
            estimated = 1;
            if (prompt == Py_None) {
                /* estimate_prompt_tokens(ctx) only reads the context: the slots borrowed above stay valid */
                estimate = ascii_prompt_estimate(ctx);
                if (estimate == NULL && !PyErr_Occurred()) estimate = PyObject_CallOneArg(estimate_prompt, ctx);
                if (estimate == NULL) return NULL;
                prompt = estimate;
            }
            if (completion == Py_None) completion = args[9]; /* deltas */
        }
        int ok = 1;
        cost = cost_of(self, model, prompt, completion, cached, &ok);
        if (cost == NULL) {
            Py_XDECREF(estimate);
            return ok ? NULL : fallback(self, args, nargsf, kwnames);
        }
    }
    PyObject *latency = NULL, *ttft_r = NULL, *decision_ms = NULL;
    int bad = rounded(args[4], 1000.0, &latency);
    if (!bad) bad = rounded(dv[D_ELAPSED_MS], 10000.0, &decision_ms);
    if (!bad) {
        if (ttft == Py_None) {
            ttft_r = Py_NewRef(Py_None);
        } else {
            bad = rounded(ttft, 1000.0, &ttft_r);
        }
    }
    PyObject *guards = bad ? NULL : PyList_New(0);
    PyObject *record = guards == NULL ? NULL : record_type->tp_alloc(record_type, 0);
    if (record == NULL) {
        Py_XDECREF(estimate);
        Py_XDECREF(cost);
        Py_XDECREF(latency);
        Py_XDECREF(decision_ms);
        Py_XDECREF(ttft_r);
        Py_XDECREF(guards);
        if (bad == -1) return fallback(self, args, nargsf, kwnames);
        return NULL;
    }
    PyObject *values[R_N] = {
        [R_REQUEST_ID] = Py_NewRef(args[0]),
        [R_STARTED_AT] = Py_NewRef(args[1]),
        [R_ENDPOINT] = Py_NewRef(endpoint),
        [R_STATUS] = Py_NewRef(status),
        [R_ERROR] = Py_NewRef(args[6]),
        [R_ROUTER] = Py_NewRef(dv[D_ROUTER]),
        [R_ROUTE] = Py_NewRef(dv[D_ROUTE]),
        [R_MODEL] = Py_NewRef(model),
        [R_UPSTREAM] = Py_NewRef(upstream),
        [R_STRATEGY] = Py_NewRef(dv[D_STRATEGY]),
        [R_REASON] = Py_NewRef(dv[D_REASON]),
        [R_CONFIDENCE] = Py_NewRef(dv[D_CONFIDENCE]),
        [R_SCORES] = Py_NewRef(dv[D_SCORES]),
        [R_THRESHOLD] = Py_NewRef(dv[D_THRESHOLD]),
        [R_MARGIN] = Py_NewRef(dv[D_MARGIN]),
        [R_PROVENANCE] = Py_NewRef(dv[D_PROVENANCE]),
        [R_DECISION_MS] = decision_ms,
        [R_TRACE] = Py_NewRef(dv[D_TRACE]),
        [R_ATTEMPTS] = Py_NewRef(attempts),
        [R_STREAM] = Py_NewRef(stream),
        [R_LATENCY_MS] = latency,
        [R_TTFT_MS] = ttft_r,
        [R_PROMPT_TOKENS] = estimate != NULL ? estimate : Py_NewRef(prompt),
        [R_COMPLETION_TOKENS] = Py_NewRef(completion),
        [R_CACHED_TOKENS] = Py_NewRef(cached),
        [R_TOKENS_ESTIMATED] = Py_NewRef(estimated ? Py_True : Py_False),
        [R_COST_USD] = cost == NULL ? Py_NewRef(Py_None) : cost,
        [R_CACHE] = Py_NewRef(cache_default),
        [R_GUARDS] = guards,
    };
    for (int i = 0; i < R_N; i++) SLOT(record, record_off[i]) = values[i]; /* slots of a new object: empty */
    return record;
}

static PyTypeObject BuilderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "turnout.telemetry._record.Builder",
    .tp_doc = PyDoc_STR("Builder(prices, fallback)(*inputs) -> RequestRecord: record.build_record in C."),
    .tp_basicsize = sizeof(Builder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_new = builder_new,
    .tp_dealloc = (destructor)builder_dealloc,
    .tp_traverse = (traverseproc)builder_traverse,
    .tp_clear = (inquiry)builder_clear,
    .tp_vectorcall_offset = offsetof(Builder, vectorcall),
    .tp_call = PyVectorcall_Call,
};

/* --- audit rows -------------------------------------------------------------------------------- */

static PyObject *row_fallback;  /* audit._audit_row */
static PyObject *day_of;        /* audit.utc_day_bounds: ts -> (start, end, "YYYY-MM-DD") */
static PyObject *reason_of;     /* audit.stored_reason */
static PyObject *own_reasons;   /* audit.OWN_REASONS */
static Py_ssize_t reason_chars; /* audit.REASON_CHARS */
static double day_start = 0.0, day_end = 0.0;
static PyObject *day_name;

/* prepare_rows(_audit_row, utc_day_bounds, stored_reason, OWN_REASONS, REASON_CHARS): once, by audit.py. */
static PyObject *prepare_rows(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5 || !PyFrozenSet_CheckExact(args[3]) || !PyLong_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "prepare_rows() takes 3 functions, a frozenset and an int");
        return NULL;
    }
    Py_ssize_t chars = PyLong_AsSsize_t(args[4]);
    if (chars == -1 && PyErr_Occurred()) return NULL;
    Py_XSETREF(row_fallback, Py_NewRef(args[0]));
    Py_XSETREF(day_of, Py_NewRef(args[1]));
    Py_XSETREF(reason_of, Py_NewRef(args[2]));
    Py_XSETREF(own_reasons, Py_NewRef(args[3]));
    reason_chars = chars;
    day_start = day_end = 0.0;
    Py_CLEAR(day_name);
    Py_RETURN_NONE;
}

/* The UTC day of `ts` (a float), from the last day asked for or from utc_day_bounds. */
static PyObject *day(PyObject *ts) {
    double t = PyFloat_AS_DOUBLE(ts);
    if (day_name == NULL || !(day_start <= t && t < day_end)) {
        PyObject *bounds = PyObject_CallOneArg(day_of, ts);
        if (bounds == NULL) return NULL;
        if (!PyTuple_CheckExact(bounds) || PyTuple_GET_SIZE(bounds) != 3) {
            Py_DECREF(bounds);
            PyErr_SetString(PyExc_TypeError, "utc_day_bounds() must return (start, end, name)");
            return NULL;
        }
        double start = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, 0));
        double end = PyFloat_AsDouble(PyTuple_GET_ITEM(bounds, 1));
        if (PyErr_Occurred()) {
            Py_DECREF(bounds);
            return NULL;
        }
        Py_XSETREF(day_name, Py_NewRef(PyTuple_GET_ITEM(bounds, 2)));
        day_start = start;
        day_end = end;
        Py_DECREF(bounds);
    }
    return Py_NewRef(day_name);
}

/* stored_reason(record) where it is the reason itself, else the Python function. */
static PyObject *reason(PyObject *record, PyObject *strategy, PyObject *text) {
    if (strategy == Py_None || text == Py_None) return Py_NewRef(text);
    if (PyUnicode_CheckExact(strategy) && PyUnicode_CheckExact(text) && PyUnicode_GET_LENGTH(text) <= reason_chars) {
        int own = PySet_Contains(own_reasons, strategy);
        if (own < 0) return NULL;
        if (own) return Py_NewRef(text); /* text[:REASON_CHARS] is the string itself */
    }
    return PyObject_CallOneArg(reason_of, record);
}

/* Where each audit column comes from: a record field, or (-1, -2) the day and the stored reason. */
static const int COLUMNS[] = {
    R_STARTED_AT, -1, R_REQUEST_ID, R_ENDPOINT, R_STATUS, R_ERROR, R_ROUTER, R_ROUTE, R_MODEL, R_UPSTREAM,
    R_STRATEGY, -2, R_CONFIDENCE, R_THRESHOLD, R_MARGIN, R_SCORES, R_PROVENANCE, R_TRACE, R_DECISION_MS,
    R_ATTEMPTS, R_STREAM, R_LATENCY_MS, R_TTFT_MS, R_PROMPT_TOKENS, R_COMPLETION_TOKENS, R_TOKENS_ESTIMATED,
    R_COST_USD, R_CACHE, R_GUARDS, R_CACHED_TOKENS,
};
#define N_COLUMNS ((Py_ssize_t)(sizeof COLUMNS / sizeof COLUMNS[0]))

/* Whether `record` is a RequestRecord with every field set and a float time: one whose row is read here. */
static int readable(PyObject *record) {
    if (record_type == NULL || !Py_IS_TYPE(record, record_type)) return 0;
    for (int i = 0; i < R_N; i++)
        if (SLOT(record, record_off[i]) == NULL) return 0;
    return PyFloat_CheckExact(SLOT(record, record_off[R_STARTED_AT]));
}

/* The values of a readable record's row from column `first` on. */
static PyObject *row_values(PyObject *record, Py_ssize_t first) {
    PyObject *ts = SLOT(record, record_off[R_STARTED_AT]);
    PyObject *row = PyList_New(N_COLUMNS - first);
    if (row == NULL) return NULL;
    for (Py_ssize_t i = first; i < N_COLUMNS; i++) {
        PyObject *v;
        if (COLUMNS[i] >= 0) {
            v = Py_NewRef(SLOT(record, record_off[COLUMNS[i]]));
        } else if (COLUMNS[i] == -1) {
            v = day(ts);
        } else {
            v = reason(record, SLOT(record, record_off[R_STRATEGY]), SLOT(record, record_off[R_REASON]));
        }
        if (v == NULL) {
            Py_DECREF(row);
            return NULL;
        }
        PyList_SET_ITEM(row, i - first, v);
    }
    return row;
}

static PyObject *audit_row(PyObject *self, PyObject *record) {
    (void)self;
    if (row_fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "prepare_rows() was not called");
        return NULL;
    }
    return readable(record) ? row_values(record, 0) : PyObject_CallOneArg(row_fallback, record);
}

/* --- metrics ------------------------------------------------------------------------------------ */

static PyObject *signature_fallback; /* metrics._signature */
static PyObject *verdict_of;         /* metrics._VERDICT: a trace entry's (strategy, verdict) */
static PyObject *other_label;        /* metrics.OTHER */
static PyObject *columns_type;       /* metrics.Columns */
static PyObject *str_error, *str_target, *str_elapsed_ms; /* an Attempt's attributes */

/* prepare_metrics(_signature, _VERDICT, OTHER, Columns): once, by metrics.py. */
static PyObject *prepare_metrics(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "prepare_metrics() takes 4 arguments");
        return NULL;
    }
    Py_XSETREF(signature_fallback, Py_NewRef(args[0]));
    Py_XSETREF(verdict_of, Py_NewRef(args[1]));
    Py_XSETREF(other_label, Py_NewRef(args[2]));
    Py_XSETREF(columns_type, Py_NewRef(args[3]));
    if (str_error == NULL && ((str_error = PyUnicode_InternFromString("error")) == NULL ||
                              (str_target = PyUnicode_InternFromString("target")) == NULL ||
                              (str_elapsed_ms = PyUnicode_InternFromString("elapsed_ms")) == NULL))
        return NULL;
    Py_RETURN_NONE;
}

/* signature(record, models) -> metrics._signature(record, models): the key records are grouped by. */
static PyObject *signature(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || signature_fallback == NULL) {
        PyErr_SetString(PyExc_TypeError, "signature() takes 2 arguments, after prepare_metrics()");
        return NULL;
    }
    PyObject *r = args[0], *models = args[1];
    if (record_type == NULL || !Py_IS_TYPE(r, record_type) || !PyDict_CheckExact(models))
        return PyObject_Vectorcall(signature_fallback, args, 2, NULL);
    static const int FIELDS[] = {R_ENDPOINT, R_ROUTER, R_ROUTE, R_MODEL, R_STATUS, R_ERROR, R_STRATEGY,
                                 R_TRACE, R_CACHE, R_TOKENS_ESTIMATED, R_STREAM};
    PyObject *v[11];
    for (int i = 0; i < 11; i++) {
        v[i] = SLOT(r, record_off[FIELDS[i]]);
        if (v[i] == NULL) return PyObject_Vectorcall(signature_fallback, args, 2, NULL);
    }
    PyObject *trace = v[7];
    if (!PyList_CheckExact(trace)) return PyObject_Vectorcall(signature_fallback, args, 2, NULL);
    PyObject *label = PyDict_GetItemWithError(models, v[3]); /* borrowed */
    if (label == NULL) {
        if (PyErr_Occurred()) return NULL;
        label = other_label;
    }
    Py_ssize_t n = PyList_GET_SIZE(trace);
    PyObject *verdicts = PyTuple_New(n);
    if (verdicts == NULL) return NULL;
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(trace); i++) {
        PyObject *said = PyObject_CallOneArg(verdict_of, PyList_GET_ITEM(trace, i));
        if (said == NULL) {
            Py_DECREF(verdicts);
            return NULL;
        }
        PyTuple_SET_ITEM(verdicts, i, said);
    }
    if (PyList_GET_SIZE(trace) != n) { /* the list changed under the calls: let Python say what it makes of it */
        Py_DECREF(verdicts);
        return PyObject_Vectorcall(signature_fallback, args, 2, NULL);
    }
    PyObject *key = PyTuple_New(11);
    if (key == NULL) {
        Py_DECREF(verdicts);
        return NULL;
    }
    for (int i = 0; i < 11; i++) {
        PyObject *item = i == 3 ? label : v[i];
        PyTuple_SET_ITEM(key, i, i == 7 ? verdicts : Py_NewRef(item));
    }
    return key;
}

/* A count field as a C integer added to *sum: None adds 0; 0 when it is not an exact int or the sum
 * would overflow (the Python function adds it up). */
static int add_count(PyObject *v, long long *sum) {
    if (v == Py_None) return 1;
    int ok = 1;
    long long n = count_of(v, &ok);
    if (!ok || (n > 0 && *sum > LLONG_MAX - n) || (n < 0 && *sum < LLONG_MIN - n)) return 0;
    *sum += n;
    return 1;
}

/* Append `x / 1000` (x a float) to `list`; -1 on error. */
static int append_seconds(PyObject *list, double ms) {
    PyObject *v = PyFloat_FromDouble(ms / 1000);
    if (v == NULL) return -1;
    int rc = PyList_Append(list, v);
    Py_DECREF(v);
    return rc;
}

/* columns(group) -> metrics._columns(group), or None where a value is not of the type the C code adds
 * up as Python does (the caller then runs the Python function). */
static PyObject *columns(PyObject *self, PyObject *group) {
    if (columns_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "prepare_metrics() was not called");
        return NULL;
    }
    if (record_type == NULL || !PyList_CheckExact(group)) Py_RETURN_NONE;
    Py_ssize_t n = PyList_GET_SIZE(group);
    for (Py_ssize_t i = 0; i < n; i++) { /* every check first: the lists below are built without a way out */
        PyObject *r = PyList_GET_ITEM(group, i);
        if (!Py_IS_TYPE(r, record_type)) Py_RETURN_NONE;
        PyObject *dms = SLOT(r, record_off[R_DECISION_MS]), *lat = SLOT(r, record_off[R_LATENCY_MS]);
        PyObject *ttft = SLOT(r, record_off[R_TTFT_MS]), *cost = SLOT(r, record_off[R_COST_USD]);
        PyObject *att = SLOT(r, record_off[R_ATTEMPTS]), *comp = SLOT(r, record_off[R_COMPLETION_TOKENS]);
        if (dms == NULL || lat == NULL || ttft == NULL || cost == NULL || att == NULL || comp == NULL ||
            SLOT(r, record_off[R_PROMPT_TOKENS]) == NULL || SLOT(r, record_off[R_CACHED_TOKENS]) == NULL)
            Py_RETURN_NONE;
        if ((dms != Py_None && !PyFloat_CheckExact(dms)) || !PyFloat_CheckExact(lat) ||
            (ttft != Py_None && !PyFloat_CheckExact(ttft)) || (cost != Py_None && !PyFloat_CheckExact(cost)) ||
            !PyList_CheckExact(att))
            Py_RETURN_NONE;
        if (ttft != Py_None && comp != Py_None && !PyLong_CheckExact(comp)) Py_RETURN_NONE;
    }
    PyObject *decision = PyList_New(0), *latency = PyList_New(0), *ttft_l = PyList_New(0), *tpot = PyList_New(0);
    PyObject *answered = PyDict_New(), *several = PyList_New(0), *out = NULL;
    long long prompt = 0, completion = 0, cached = 0;
    double cost = 0.0;
    if (decision == NULL || latency == NULL || ttft_l == NULL || tpot == NULL || answered == NULL || several == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n && i < PyList_GET_SIZE(group); i++) {
        PyObject *r = PyList_GET_ITEM(group, i);
        PyObject *dms = SLOT(r, record_off[R_DECISION_MS]), *ttft = SLOT(r, record_off[R_TTFT_MS]);
        PyObject *c = SLOT(r, record_off[R_COST_USD]), *comp = SLOT(r, record_off[R_COMPLETION_TOKENS]);
        double lat = PyFloat_AS_DOUBLE(SLOT(r, record_off[R_LATENCY_MS]));
        if (dms != Py_None && append_seconds(decision, PyFloat_AS_DOUBLE(dms)) < 0) goto done;
        if (append_seconds(latency, lat) < 0) goto done;
        if (!add_count(SLOT(r, record_off[R_PROMPT_TOKENS]), &prompt) || !add_count(comp, &completion) ||
            !add_count(SLOT(r, record_off[R_CACHED_TOKENS]), &cached)) {
            Py_INCREF(Py_None);
            out = Py_None;
            goto done;
        }
        if (c != Py_None) cost += PyFloat_AS_DOUBLE(c); /* `cost_usd or 0.0`: adding 0.0 for None */
        else cost += 0.0;
        if (ttft != Py_None) {
            double t = PyFloat_AS_DOUBLE(ttft);
            if (append_seconds(ttft_l, t) < 0) goto done;
            int ok = 1;
            long long tokens = comp == Py_None ? 0 : count_of(comp, &ok);
            if (!ok) { /* past 64 bits */
                Py_INCREF(Py_None);
                out = Py_None;
                goto done;
            }
            if (tokens) {
                /* max((latency - ttft) / max(tokens - 1, 1) / 1000, 0.0) */
                double per = (lat - t) / (double)(tokens - 1 > 1 ? tokens - 1 : 1) / 1000;
                if (0.0 > per) per = 0.0;
                PyObject *v = PyFloat_FromDouble(per);
                if (v == NULL || PyList_Append(tpot, v) < 0) {
                    Py_XDECREF(v);
                    goto done;
                }
                Py_DECREF(v);
            }
        }
        PyObject *att = SLOT(r, record_off[R_ATTEMPTS]);
        Py_ssize_t na = PyList_GET_SIZE(att);
        if (na == 0) continue;
        PyObject *first = PyList_GET_ITEM(att, 0);
        Py_INCREF(first);
        PyObject *err = na == 1 ? PyObject_GetAttr(first, str_error) : Py_NewRef(Py_True);
        if (err == NULL) {
            Py_DECREF(first);
            goto done;
        }
        int single = err == Py_None;
        Py_DECREF(err);
        if (!single) {
            Py_DECREF(first);
            if (PyList_Append(several, att) < 0) goto done;
            continue;
        }
        PyObject *target = PyObject_GetAttr(first, str_target);
        PyObject *elapsed = target == NULL ? NULL : PyObject_GetAttr(first, str_elapsed_ms);
        Py_DECREF(first);
        if (elapsed == NULL || !PyFloat_CheckExact(elapsed)) {
            int failed = elapsed == NULL;
            Py_XDECREF(target);
            Py_XDECREF(elapsed);
            if (failed) goto done;
            Py_INCREF(Py_None); /* a time that is not a float: Python divides it */
            out = Py_None;
            goto done;
        }
        double ms = PyFloat_AS_DOUBLE(elapsed);
        Py_DECREF(elapsed);
        PyObject *values = PyDict_GetItemWithError(answered, target); /* borrowed */
        if (values == NULL) {
            if (PyErr_Occurred() || (values = PyList_New(0)) == NULL) {
                Py_DECREF(target);
                goto done;
            }
            int rc = PyDict_SetItem(answered, target, values);
            Py_DECREF(values); /* the dict holds it */
            if (rc < 0) {
                Py_DECREF(target);
                goto done;
            }
        }
        Py_DECREF(target);
        if (append_seconds(values, ms) < 0) goto done;
    }
    out = PyObject_CallFunction(columns_type, "OOLLLdOOOO", decision, latency, prompt, completion, cached, cost,
                                ttft_l, tpot, answered, several);
done:
    Py_XDECREF(decision);
    Py_XDECREF(latency);
    Py_XDECREF(ttft_l);
    Py_XDECREF(tpot);
    Py_XDECREF(answered);
    Py_XDECREF(several);
    return out;
}

#define MAX_BOUNDS 64

/* observe(counts, bounds, values): metrics._observe, `counts[bisect_left(bounds, v)] += 1` for each value
 * and their running sum added to `counts[-1]`, for float values and bounds; anything else -> False and
 * nothing changed (the Python function does it). */
static PyObject *observe(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "observe() takes 3 arguments");
        return NULL;
    }
    PyObject *counts = args[0], *bounds = args[1], *values = args[2];
    if (!PyList_CheckExact(counts) || !PyTuple_CheckExact(bounds) || !PyList_CheckExact(values)) Py_RETURN_FALSE;
    Py_ssize_t nb = PyTuple_GET_SIZE(bounds), nv = PyList_GET_SIZE(values);
    if (nb > MAX_BOUNDS || PyList_GET_SIZE(counts) != nb + 2) Py_RETURN_FALSE;
    double b[MAX_BOUNDS];
    long long adds[MAX_BOUNDS + 1] = {0};
    for (Py_ssize_t i = 0; i < nb; i++) {
        PyObject *x = PyTuple_GET_ITEM(bounds, i);
        if (!PyFloat_CheckExact(x)) Py_RETURN_FALSE;
        b[i] = PyFloat_AS_DOUBLE(x);
    }
    for (Py_ssize_t i = 0; i < nb + 2; i++)
        if (!PyFloat_CheckExact(PyList_GET_ITEM(counts, i))) Py_RETURN_FALSE;
    for (Py_ssize_t i = 0; i < nv; i++)
        if (!PyFloat_CheckExact(PyList_GET_ITEM(values, i))) Py_RETURN_FALSE;
    double total = 0.0;
    for (Py_ssize_t i = 0; i < nv; i++) {
        double x = PyFloat_AS_DOUBLE(PyList_GET_ITEM(values, i));
        Py_ssize_t lo = 0, hi = nb; /* bisect_left, comparison for comparison */
        while (lo < hi) {
            Py_ssize_t mid = ((size_t)lo + hi) / 2;
            if (b[mid] < x)
                lo = mid + 1;
            else
                hi = mid;
        }
        adds[lo]++;
        total += x;
    }
    /* `+= 1` k times on an integral float below 2**53 is `+= k` at once */
    for (Py_ssize_t i = 0; i <= nb + 1; i++) {
        double add = i <= nb ? (double)adds[i] : total;
        if (i <= nb && adds[i] == 0) continue;
        PyObject *now = PyFloat_FromDouble(PyFloat_AS_DOUBLE(PyList_GET_ITEM(counts, i)) + add);
        if (now == NULL) return NULL; /* counts already changed stay changed: out of memory */
        PyList_SetItem(counts, i, now);
    }
    Py_RETURN_TRUE;
}

/* --- the module -------------------------------------------------------------------------------- */

/* docs(records, dumps, option) is audit._docs: each record's audit row as its `ts` and the JSON text of its
 * other values, `dumps(values, default=str, option=option)` decoded, as (ts, doc) pairs, and the indices
 * of the records `dumps` could not write (TypeError, which orjson.JSONEncodeError is). Runs on the event
 * loop, in the batch that builds the records (AuditSink.emit_many): their values are still in the CPU's
 * caches there, and the writer thread is handed two objects per row instead of a list of 30 it would read
 * and free long after (docs/metrics.md). */
static PyObject *docs(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    static PyObject *kwnames = NULL; /* interned, as a call from Python code passes them: orjson compares
                                       * keyword names by identity first */
    if (kwnames == NULL) {
        PyObject *d = PyUnicode_InternFromString("default"), *o = PyUnicode_InternFromString("option");
        kwnames = d != NULL && o != NULL ? PyTuple_Pack(2, d, o) : NULL;
        Py_XDECREF(d);
        Py_XDECREF(o);
        if (kwnames == NULL) return NULL;
    }
    if (nargs != 3 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "docs(records: list, dumps, option)");
        return NULL;
    }
    if (row_fallback == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "prepare_rows() was not called");
        return NULL;
    }
    PyObject *records = args[0], *dumps = args[1];
    PyObject *pairs = PyList_New(0), *bad = PyList_New(0), *out = NULL;
    if (pairs == NULL || bad == NULL) goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) { /* dumps may run Python code: size re-read */
        PyObject *record = Py_NewRef(PyList_GET_ITEM(records, i)), *ts = NULL, *values = NULL;
        if (readable(record)) {
            ts = Py_NewRef(SLOT(record, record_off[R_STARTED_AT]));
            values = row_values(record, 1);
        } else {
            PyObject *row = PyObject_CallOneArg(row_fallback, record);
            if (row != NULL && (!PyList_Check(row) || PyList_GET_SIZE(row) < 1)) {
                PyErr_SetString(PyExc_TypeError, "docs: audit_row() must return a non-empty list");
                Py_CLEAR(row);
            }
            if (row != NULL) {
                ts = Py_NewRef(PyList_GET_ITEM(row, 0));
                values = PyList_GetSlice(row, 1, PyList_GET_SIZE(row));
                Py_DECREF(row);
            }
        }
        Py_DECREF(record);
        PyObject *text = NULL;
        if (values != NULL) {
            PyObject *call[3] = {values, (PyObject *)&PyUnicode_Type, args[2]};
            text = PyObject_Vectorcall(dumps, call, 1, kwnames);
            Py_DECREF(values);
        }
        if (text == NULL) {
            Py_XDECREF(ts);
            if (values == NULL || !PyErr_ExceptionMatches(PyExc_TypeError)) goto done;
            PyErr_Clear();
            PyObject *index = PyLong_FromSsize_t(i);
            int failed = index == NULL || PyList_Append(bad, index) < 0;
            Py_XDECREF(index);
            if (failed) goto done;
            continue;
        }
        PyObject *doc = PyBytes_Check(text)
                            ? PyUnicode_DecodeUTF8(PyBytes_AS_STRING(text), PyBytes_GET_SIZE(text), NULL)
                            : PyObject_CallMethod(text, "decode", NULL);
        Py_DECREF(text);
        PyObject *pair = doc == NULL ? NULL : PyTuple_Pack(2, ts, doc);
        Py_DECREF(ts);
        Py_XDECREF(doc);
        int failed = pair == NULL || PyList_Append(pairs, pair) < 0;
        Py_XDECREF(pair);
        if (failed) goto done;
    }
    out = PyTuple_Pack(2, pairs, bad);
done:
    Py_XDECREF(pairs);
    Py_XDECREF(bad);
    return out;
}

/* split(pairs, start, end) is audit._split: the (ts, doc) pairs of the day [start, end) as one flat list
 * (ts, doc, ts, doc, ...: insert_flat's values), and the other days' pairs as they are. The writer's one
 * loop over its batch; in Python, ~12 bytecodes a row. */
static PyObject *split(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "split(pairs: list, start, end)");
        return NULL;
    }
    PyObject *pairs = args[0], *start = args[1], *end = args[2];
    PyObject *flat = PyList_New(0), *other = PyList_New(0), *out = NULL;
    if (flat == NULL || other == NULL) goto done;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(pairs); i++) { /* a comparison may run Python code */
        PyObject *pair = Py_NewRef(PyList_GET_ITEM(pairs, i));
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
            Py_DECREF(pair);
            PyErr_SetString(PyExc_TypeError, "split: every item is a (ts, doc) pair");
            goto done;
        }
        PyObject *ts = PyTuple_GET_ITEM(pair, 0);
        int today; /* start <= ts < end */
        if (PyFloat_CheckExact(ts) && PyFloat_CheckExact(start) && PyFloat_CheckExact(end)) {
            double t = PyFloat_AS_DOUBLE(ts);
            today = PyFloat_AS_DOUBLE(start) <= t && t < PyFloat_AS_DOUBLE(end);
        } else {
            today = PyObject_RichCompareBool(start, ts, Py_LE);
            if (today == 1) today = PyObject_RichCompareBool(ts, end, Py_LT);
        }
        int failed = today < 0;
        if (!failed && today) {
            failed = PyList_Append(flat, ts) < 0 || PyList_Append(flat, PyTuple_GET_ITEM(pair, 1)) < 0;
        } else if (!failed) {
            failed = PyList_Append(other, pair) < 0;
        }
        Py_DECREF(pair);
        if (failed) goto done;
    }
    out = PyTuple_Pack(2, flat, other);
done:
    Py_XDECREF(flat);
    Py_XDECREF(other);
    return out;
}

/* --- a finished request's inputs, read from its ASGI scope --------------------------------------- */

static PyObject *no_usage, *zero, *five_hundred, *thousand; /* meter.NO_USAGE, and the defaults below */
static PyObject *k_t0, *k_meter, *k_error, *k_usage, *k_deltas, *k_status, *k_ctx, *k_wall; /* scope keys */
static PyObject *a_usage, *a_ttft, *a_deltas, *a_error; /* a stream meter's attributes */

/* scope.get(key, missing) as a new reference; NULL with an error set. */
static PyObject *scope_get(PyObject *scope, PyObject *key, PyObject *missing) {
    PyObject *v = PyDict_GetItemWithError(scope, key);
    if (v == NULL) {
        if (PyErr_Occurred()) return NULL;
        v = missing;
    }
    return Py_NewRef(v);
}

/* scope[key] as a new reference; NULL with KeyError set when it is missing. */
static PyObject *scope_item(PyObject *scope, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(scope, key);
    if (v == NULL) {
        if (!PyErr_Occurred()) PyErr_SetObject(PyExc_KeyError, key);
        return NULL;
    }
    return Py_NewRef(v);
}

/* take(scope, endpoint, request_id, now, pending) -> int: record._take in C. A finished request's record
 * inputs (build_record's arguments) read from its ASGI scope, appended to `pending` as one tuple; returns
 * how many wait there. A dict (a subclass too) is read with the dict's own lookups; any other mapping goes
 * to record._take. In Python this and its caller cost ~95 bytecodes per request on the event loop. */
static PyObject *take(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 5 || !PyList_Check(args[4])) {
        PyErr_SetString(PyExc_TypeError, "take(scope, endpoint, request_id, now, pending: list)");
        return NULL;
    }
    if (!PyDict_Check(args[0])) { /* ASGI servers pass a dict; any other mapping goes to record._take */
        PyObject *module = PyImport_ImportModule("turnout.telemetry.record");
        PyObject *reference = module == NULL ? NULL : PyObject_GetAttrString(module, "_take");
        Py_XDECREF(module);
        PyObject *out = reference == NULL ? NULL : PyObject_Vectorcall(reference, args, 5, NULL);
        Py_XDECREF(reference);
        return out;
    }
    PyObject *scope = args[0], *now = args[3], *pending = args[4];
    /* the tuple's values, in build_record's order */
    enum { ID, WALL, ENDPOINT, STATUS, LATENCY, CTX, ERROR, USAGE, TTFT, DELTAS, N };
    PyObject *v[N] = {NULL}, *meter = NULL, *out = NULL;
    PyObject *t0 = scope_item(scope, k_t0);
    if (t0 == NULL) goto done;
    if (PyFloat_CheckExact(now) && PyFloat_CheckExact(t0)) {
        v[LATENCY] = PyFloat_FromDouble((PyFloat_AS_DOUBLE(now) - PyFloat_AS_DOUBLE(t0)) * 1000.0);
    } else {
        PyObject *elapsed = PyNumber_Subtract(now, t0);
        v[LATENCY] = elapsed == NULL ? NULL : PyNumber_Multiply(elapsed, thousand);
        Py_XDECREF(elapsed);
    }
    Py_DECREF(t0);
    if (v[LATENCY] == NULL || (meter = scope_get(scope, k_meter, Py_None)) == NULL ||
        (v[ERROR] = scope_get(scope, k_error, Py_None)) == NULL)
        goto done;
    if (meter == Py_None) {
        if ((v[USAGE] = scope_get(scope, k_usage, no_usage)) == NULL) goto done;
        v[TTFT] = Py_NewRef(Py_None);
        if ((v[DELTAS] = scope_get(scope, k_deltas, zero)) == NULL) goto done;
    } else {
        if ((v[USAGE] = PyObject_CallMethodNoArgs(meter, a_usage)) == NULL ||
            (v[TTFT] = PyObject_GetAttr(meter, a_ttft)) == NULL ||
            (v[DELTAS] = PyObject_GetAttr(meter, a_deltas)) == NULL)
            goto done;
        int set = PyObject_IsTrue(v[ERROR]); /* error or meter.error */
        if (set < 0) goto done;
        if (!set) {
            PyObject *error = PyObject_GetAttr(meter, a_error);
            if (error == NULL) goto done;
            Py_SETREF(v[ERROR], error);
        }
    }
    if ((v[STATUS] = scope_get(scope, k_status, five_hundred)) == NULL ||
        (v[CTX] = scope_get(scope, k_ctx, Py_None)) == NULL || (v[WALL] = scope_item(scope, k_wall)) == NULL)
        goto done;
    v[ID] = Py_NewRef(args[2]);
    v[ENDPOINT] = Py_NewRef(args[1]);
    PyObject *inputs = PyTuple_New(N);
    if (inputs == NULL) goto done;
    for (int i = 0; i < N; i++) {
        PyTuple_SET_ITEM(inputs, i, v[i]); /* the tuple takes each reference */
        v[i] = NULL;
    }
    if (PyList_Append(pending, inputs) == 0) out = PyLong_FromSsize_t(PyList_GET_SIZE(pending));
    Py_DECREF(inputs);
done:
    for (int i = 0; i < N; i++) Py_XDECREF(v[i]);
    Py_XDECREF(meter);
    return out;
}

/* --- Recorder: Telemetry.record in C --------------------------------------------------------------
 *
 * Recorder(pending, batch, clock, flush, arm)(scope, endpoint, request_id): `take` with now = clock(),
 * then flush() when `batch` inputs wait, or arm() when these are the first since the last flush. What
 * the request path calls once per request (app.App._http): in Python (Telemetry._record, the reference
 * and the fallback) the same steps were ~22 bytecodes and a frame per request, and by CPU in the server
 * reading the request's end cost several times its instructions (docs/metrics.md, stop 20). */

typedef struct {
    PyObject_HEAD
    PyObject *pending, *clock, *flush, *arm;
    Py_ssize_t batch;
    vectorcallfunc vectorcall;
} Recorder;

static PyObject *recorder_call(PyObject *callable, PyObject *const *args, size_t nargsf, PyObject *kwnames) {
    Recorder *self = (Recorder *)callable;
    if (PyVectorcall_NARGS(nargsf) != 3 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) != 0)) {
        PyErr_SetString(PyExc_TypeError, "record(scope, endpoint, request_id)");
        return NULL;
    }
    PyObject *now = PyObject_CallNoArgs(self->clock);
    if (now == NULL) return NULL;
    PyObject *call[5] = {args[0], args[1], args[2], now, self->pending};
    PyObject *waiting = take(NULL, call, 5);
    Py_DECREF(now);
    if (waiting == NULL) return NULL;
    Py_ssize_t n = PyLong_AsSsize_t(waiting);
    Py_DECREF(waiting);
    if (n == -1 && PyErr_Occurred()) return NULL;
    PyObject *then = n >= self->batch ? self->flush : n == 1 ? self->arm : NULL;
    if (then == NULL) Py_RETURN_NONE;
    PyObject *out = PyObject_CallNoArgs(then);
    if (out == NULL) return NULL;
    Py_DECREF(out);
    Py_RETURN_NONE;
}

static PyObject *recorder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *pending, *clock, *flush, *arm;
    Py_ssize_t batch;
    static char *names[] = {"pending", "batch", "clock", "flush", "arm", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!nOOO:Recorder", names, &PyList_Type, &pending, &batch, &clock,
                                     &flush, &arm))
        return NULL;
    Recorder *self = (Recorder *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->pending = Py_NewRef(pending);
    self->clock = Py_NewRef(clock);
    self->flush = Py_NewRef(flush);
    self->arm = Py_NewRef(arm);
    self->batch = batch;
    self->vectorcall = recorder_call;
    return (PyObject *)self;
}

static int recorder_traverse(Recorder *self, visitproc visit, void *arg) {
    Py_VISIT(self->pending);
    Py_VISIT(self->clock);
    Py_VISIT(self->flush);
    Py_VISIT(self->arm);
    return 0;
}

static int recorder_clear(Recorder *self) {
    Py_CLEAR(self->pending);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->flush);
    Py_CLEAR(self->arm);
    return 0;
}

static void recorder_dealloc(Recorder *self) {
    PyObject_GC_UnTrack(self);
    recorder_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject RecorderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "turnout.telemetry._record.Recorder",
    .tp_basicsize = sizeof(Recorder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "Recorder(pending, batch, clock, flush, arm): Telemetry.record in C.",
    .tp_new = recorder_new,
    .tp_dealloc = (destructor)recorder_dealloc,
    .tp_traverse = (traverseproc)recorder_traverse,
    .tp_clear = (inquiry)recorder_clear,
    .tp_vectorcall_offset = offsetof(Recorder, vectorcall),
    .tp_call = PyVectorcall_Call,
};

/* The names and defaults `take` uses: interned once, at import. */
static int take_names(void) {
    static const char *const names[] = {"turnout.t0", "turnout.meter", "turnout.error", "turnout.usage",
                                        "turnout.deltas", "turnout.status", "turnout.ctx", "turnout.wall",
                                        "usage", "ttft_ms", "deltas", "error"};
    PyObject **slots[] = {&k_t0, &k_meter, &k_error, &k_usage, &k_deltas, &k_status, &k_ctx, &k_wall,
                          &a_usage, &a_ttft, &a_deltas, &a_error};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*slots[i] = PyUnicode_InternFromString(names[i])) == NULL) return -1;
    no_usage = PyTuple_Pack(3, Py_None, Py_None, Py_None);
    zero = PyLong_FromLong(0);
    five_hundred = PyLong_FromLong(500);
    thousand = PyLong_FromLong(1000);
    return no_usage != NULL && zero != NULL && five_hundred != NULL && thousand != NULL ? 0 : -1;
}

static PyMethodDef methods[] = {
    {"prepare", (PyCFunction)(void (*)(void))prepare, METH_FASTCALL,
     "prepare(RequestRecord, RequestContext, Decision, Target, cache_default, estimate_prompt_tokens)."},
    {"docs", (PyCFunction)(void (*)(void))docs, METH_FASTCALL,
     "docs(records, dumps, option) -> ((ts, doc) pairs, bad indices): audit._docs in C."},
    {"split", (PyCFunction)(void (*)(void))split, METH_FASTCALL,
     "split(pairs, start, end) -> (the day's flat ts and docs, other days' pairs): audit._split in C."},
    {"prepare_rows", (PyCFunction)(void (*)(void))prepare_rows, METH_FASTCALL,
     "prepare_rows(_audit_row, utc_day_bounds, stored_reason, OWN_REASONS, REASON_CHARS)."},
    {"take", (PyCFunction)(void (*)(void))take, METH_FASTCALL,
     "take(scope, endpoint, request_id, now, pending) -> int: record._take in C."},
    {"audit_row", (PyCFunction)audit_row, METH_O, "audit_row(record) -> list: audit._audit_row in C."},
    {"prepare_metrics", (PyCFunction)(void (*)(void))prepare_metrics, METH_FASTCALL,
     "prepare_metrics(_signature, _VERDICT, OTHER, Columns)."},
    {"columns", (PyCFunction)columns, METH_O, "columns(group) -> Columns | None: metrics._columns in C."},
    {"signature", (PyCFunction)(void (*)(void))signature, METH_FASTCALL,
     "signature(record, models) -> tuple: metrics._signature in C."},
    {"observe", (PyCFunction)(void (*)(void))observe, METH_FASTCALL,
     "observe(counts, bounds, values) -> bool: metrics._observe in C for floats; False: not done."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef record_module = {
    PyModuleDef_HEAD_INIT, "turnout.telemetry._record", NULL, -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__record(void) {
    if (PyType_Ready(&BuilderType) < 0 || PyType_Ready(&RecorderType) < 0) return NULL;
    if (chat == NULL && ((chat = PyUnicode_InternFromString("chat")) == NULL ||
                         (messages_key = PyUnicode_InternFromString("messages")) == NULL ||
                         (content_key = PyUnicode_InternFromString("content")) == NULL || take_names() < 0))
        return NULL;
    PyObject *m = PyModule_Create(&record_module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Builder", (PyObject *)&BuilderType) < 0 ||
        PyModule_AddObjectRef(m, "Recorder", (PyObject *)&RecorderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
