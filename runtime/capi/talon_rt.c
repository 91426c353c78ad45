/*
 * talon_rt.c — the C API (talon_rt.h) over the embedded Python runtime.
 *
 * Every call: look the handle up in the registry and mark it busy (enter), take the GIL, call one
 * function of runtime/capi/bridge.py (which returns (status, payload) and never raises), copy the
 * payload into C memory, give the GIL back, mark the handle free (leave).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "talon_rt.h"

/* Set by `make capi`: the venv's python executable and the directory holding the `runtime` package. */
#ifndef TALON_RT_DEFAULT_PYTHON
#define TALON_RT_DEFAULT_PYTHON ""
#endif
#ifndef TALON_RT_DEFAULT_ROOT
#define TALON_RT_DEFAULT_ROOT ""
#endif

#define MAGIC_OPEN 0x544c4f50u   /* "TLOP" */
#define MAGIC_CLOSED 0x544c4344u /* "TLCD" */

struct talon_rt {
    uint32_t magic;
    int busy;              /* guarded by g_lock */
    PyObject *gen;         /* talon_rt.runtime.api.Generator; NULL once closed */
    char *error;           /* last failure on this handle (malloc), NULL if none */
    int32_t *tokens;       /* last generation's tokens */
    size_t n_tokens, cap_tokens;
    talon_rt_stats stats;
};

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER; /* registry, busy flags, global error */
static talon_rt **g_handles;                               /* every handle ever opened */
static size_t g_n_handles, g_cap_handles;
static char *g_error;                                      /* the global error slot */

static pthread_mutex_t g_init_lock = PTHREAD_MUTEX_INITIALIZER; /* starting the interpreter */
static int g_interp_failed;       /* the interpreter could not start: final */
static int g_started_here;        /* we started it (else the host did) */
static char *g_interp_error;
static PyObject *g_open, *g_generate, *g_encode, *g_decode, *g_close, *g_cancelled, *g_render_chat;

static const char MSG_NULL[] = "the handle is NULL";
static const char MSG_UNKNOWN[] = "not a handle returned by talon_rt_open";
static const char MSG_CLOSED[] = "the handle was closed by talon_rt_close";

/* ---- small helpers ---------------------------------------------------------------------------- */

static char *vformat(const char *fmt, va_list ap)
{
    va_list ap2;
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap2);
    va_end(ap2);
    if (n < 0)
        return NULL;
    char *s = malloc((size_t)n + 1);
    if (s)
        vsnprintf(s, (size_t)n + 1, fmt, ap);
    return s;
}

static char *format(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = vformat(fmt, ap);
    va_end(ap);
    return s;
}

static char *dup_string(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Takes ownership of msg (may be NULL: out of memory while formatting). Caller holds g_lock. */
static void set_global_error_locked(char *msg)
{
    free(g_error);
    g_error = msg;
}

static int global_error(int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = vformat(fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&g_lock);
    set_global_error_locked(msg);
    pthread_mutex_unlock(&g_lock);
    return status;
}

/* The handle is busy (owned by this call): only this thread touches rt->error. */
static int handle_error(talon_rt *rt, int status, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *msg = vformat(fmt, ap);
    va_end(ap);
    free(rt->error);
    rt->error = msg;
    return status;
}

static int registered_locked(const talon_rt *rt)
{
    for (size_t i = 0; i < g_n_handles; i++)
        if (g_handles[i] == rt)
            return 1;
    return 0;
}

/* Claim the handle for one call: TALON_RT_OK, or E_HANDLE / E_BUSY with a global message. */
static int enter(const talon_rt *crt, const char *fn)
{
    talon_rt *rt = (talon_rt *)crt;
    int status = TALON_RT_OK;
    const char *why = NULL;
    pthread_mutex_lock(&g_lock);
    if (!rt) {
        status = TALON_RT_E_HANDLE;
        why = MSG_NULL;
    } else if (!registered_locked(rt)) {
        status = TALON_RT_E_HANDLE;
        why = MSG_UNKNOWN;
    } else if (rt->magic != MAGIC_OPEN) {
        status = TALON_RT_E_HANDLE;
        why = MSG_CLOSED;
    } else if (rt->busy) {
        status = TALON_RT_E_BUSY;
        why = "the handle is serving another call (one call per handle at a time)";
    } else {
        rt->busy = 1;
    }
    if (why)
        set_global_error_locked(format("%s: %s", fn, why));
    pthread_mutex_unlock(&g_lock);
    return status;
}

static int leave(const talon_rt *crt, int status)
{
    talon_rt *rt = (talon_rt *)crt;
    pthread_mutex_lock(&g_lock);
    rt->busy = 0;
    pthread_mutex_unlock(&g_lock);
    return status;
}

/* ---- Python side ------------------------------------------------------------------------------ */

/* The pending exception as "Type: message" (malloc); clears it. Never calls PyErr_Print, which
 * would exit the process on SystemExit. */
static char *take_exception(int *is_memory_error)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (is_memory_error)
        *is_memory_error = type && PyErr_GivenExceptionMatches(type, PyExc_MemoryError);
    const char *name = type ? ((PyTypeObject *)type)->tp_name : "unknown exception";
    PyObject *text = value ? PyObject_Str(value) : NULL;
    const char *utf8 = text ? PyUnicode_AsUTF8(text) : NULL;
    if (!utf8)
        PyErr_Clear();
    char *msg = format("%s: %s", name, utf8 ? utf8 : "(no message)");
    Py_XDECREF(text);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(tb);
    return msg;
}

static int start_interpreter(void)
{
    const char *python = getenv("TALON_RT_PYTHON");
    if (!python || !*python)
        python = TALON_RT_DEFAULT_PYTHON;
    PyConfig config;
    PyConfig_InitPythonConfig(&config);
    config.install_signal_handlers = 0; /* the host owns SIGINT & co. */
    config.parse_argv = 0;
    config.buffered_stdio = 0;          /* never finalised: nothing may wait in a buffer */
    PyStatus status = PyStatus_Ok();
    if (*python) /* the venv's python: getpath finds its pyvenv.cfg, site adds its site-packages */
        status = PyConfig_SetBytesString(&config, &config.program_name, python);
    if (!PyStatus_Exception(status))
        status = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(status)) {
        g_interp_error = format("talon_rt: the Python interpreter could not start (program_name "
                                "'%s'; set TALON_RT_PYTHON): %s%s%s",
                                python, status.func ? status.func : "",
                                status.func ? ": " : "", status.err_msg ? status.err_msg : "");
        g_interp_failed = 1;
        return TALON_RT_E_INIT;
    }
    PyEval_SaveThread(); /* release the GIL: every call takes it with PyGILState_Ensure */
    return TALON_RT_OK;
}

/* Put the runtime's root on sys.path and import the bridge. GIL held. */
static int import_bridge(char **msg, int started_here)
{
    const char *root = getenv("TALON_RT_ROOT");
    if (!root || !*root)
        root = TALON_RT_DEFAULT_ROOT;
    PyObject *bridge = NULL;
    PyObject *sys_path = PySys_GetObject("path"); /* borrowed */
    if (*root && sys_path && PyList_Check(sys_path)) {
        PyObject *entry = PyUnicode_DecodeFSDefault(root);
        int present = entry ? PySequence_Contains(sys_path, entry) : -1;
        if (present == 0) /* ours: first; a host's interpreter: last, to leave its order alone */
            present = started_here ? PyList_Insert(sys_path, 0, entry) : PyList_Append(sys_path, entry);
        Py_XDECREF(entry);
        if (present < 0)
            goto fail;
    }
    bridge = PyImport_ImportModule("talon_rt.runtime.capi.bridge");
    if (!bridge)
        goto fail;
    static const char *const names[7] = {"open_generator", "generate", "encode", "decode",
                                         "close_generator", "Cancelled", "render_chat"};
    PyObject *fn[7] = {NULL};
    for (int i = 0; i < 7; i++) {
        fn[i] = PyObject_GetAttrString(bridge, names[i]);
        if (!fn[i]) {
            for (int j = 0; j < i; j++)
                Py_DECREF(fn[j]);
            Py_DECREF(bridge);
            goto fail;
        }
    }
    Py_DECREF(bridge);
    if (g_open) { /* another thread got here first while the import let go of the GIL */
        for (int i = 0; i < 7; i++)
            Py_DECREF(fn[i]);
        return TALON_RT_OK;
    }
    g_generate = fn[1];
    g_encode = fn[2];
    g_decode = fn[3];
    g_close = fn[4];
    g_cancelled = fn[5];
    g_render_chat = fn[6];
    g_open = fn[0]; /* last: g_open set means all are */
    return TALON_RT_OK;
fail:;
    char *why = take_exception(NULL);
    *msg = format("talon_rt: cannot import the runtime (talon_rt.runtime.capi.bridge; root '%s', set "
                  "TALON_RT_ROOT): %s", root, why ? why : "");
    free(why);
    return TALON_RT_E_INIT;
}

/* Start the interpreter if needed and import the bridge, once. Failure message -> *msg (malloc).
 * No lock is held while waiting for the GIL: a host thread that holds the GIL may be waiting for
 * g_init_lock. g_open and friends are read and written with the GIL held. */
static int ensure_runtime(char **msg)
{
    pthread_mutex_lock(&g_init_lock);
    if (!g_interp_failed && !Py_IsInitialized() && start_interpreter() == TALON_RT_OK)
        g_started_here = 1;
    int failed = g_interp_failed;
    pthread_mutex_unlock(&g_init_lock);
    if (failed) { /* g_interp_error is written once, before g_interp_failed */
        *msg = g_interp_error ? dup_string(g_interp_error, strlen(g_interp_error)) : NULL;
        return TALON_RT_E_INIT;
    }
    PyGILState_STATE gil = PyGILState_Ensure();
    int status = g_open ? TALON_RT_OK : import_bridge(msg, g_started_here); /* retried if it failed */
    PyGILState_Release(gil);
    return status;
}

/* Unpack a bridge result (status, payload). Returns the status; *payload gets a new reference on
 * success, *msg a malloc'd message on failure. Consumes res. GIL held. */
static int unpack(PyObject *res, PyObject **payload, char **msg)
{
    *payload = NULL;
    *msg = NULL;
    if (!res) {
        int nomem = 0;
        char *why = take_exception(&nomem);
        *msg = format("talon_rt: internal error: %s", why ? why : "");
        free(why);
        return nomem ? TALON_RT_E_NOMEM : TALON_RT_E_PYTHON;
    }
    int status = TALON_RT_E_PYTHON;
    if (PyTuple_Check(res) && PyTuple_GET_SIZE(res) == 2) {
        long s = PyLong_AsLong(PyTuple_GET_ITEM(res, 0));
        if (s == -1 && PyErr_Occurred())
            PyErr_Clear();
        else
            status = (int)s;
    }
    if (status == TALON_RT_E_PYTHON && !(PyTuple_Check(res) && PyTuple_GET_SIZE(res) == 2)) {
        *msg = format("talon_rt: internal error: the bridge returned %s, not (status, payload)",
                      Py_TYPE(res)->tp_name);
    } else if (status == TALON_RT_OK) {
        *payload = PyTuple_GET_ITEM(res, 1);
        Py_INCREF(*payload);
    } else {
        PyObject *text = PyObject_Str(PyTuple_GET_ITEM(res, 1));
        const char *utf8 = text ? PyUnicode_AsUTF8(text) : NULL;
        if (!utf8)
            PyErr_Clear();
        *msg = format("%s", utf8 ? utf8 : "(no message)");
        Py_XDECREF(text);
    }
    Py_DECREF(res);
    return status;
}

/* list[int] -> rt->tokens. GIL held. */
static int store_tokens(talon_rt *rt, PyObject *tokens, char **msg)
{
    PyObject *seq = PySequence_Fast(tokens, "generated tokens are not a sequence");
    if (!seq)
        goto py_fail;
    size_t n = (size_t)PySequence_Fast_GET_SIZE(seq);
    if (n > rt->cap_tokens) {
        int32_t *grown = realloc(rt->tokens, n * sizeof *grown);
        if (!grown) {
            Py_DECREF(seq);
            *msg = format("talon_rt: out of memory for %zu tokens", n);
            return TALON_RT_E_NOMEM;
        }
        rt->tokens = grown;
        rt->cap_tokens = n;
    }
    for (size_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)i));
        if (v == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            goto py_fail;
        }
        if (v < INT32_MIN || v > INT32_MAX) {
            Py_DECREF(seq);
            *msg = format("talon_rt: internal error: token id %ld does not fit int32", v);
            return TALON_RT_E_PYTHON;
        }
        rt->tokens[i] = (int32_t)v;
    }
    rt->n_tokens = n;
    Py_DECREF(seq);
    return TALON_RT_OK;
py_fail:;
    char *why = take_exception(NULL);
    *msg = format("talon_rt: internal error: %s", why ? why : "");
    free(why);
    return TALON_RT_E_PYTHON;
}

static PyObject *ids_to_list(const int32_t *ids, size_t n)
{
    PyObject *list = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; list && i < n; i++) {
        PyObject *v = PyLong_FromLong(ids[i]);
        if (!v) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, v);
    }
    return list;
}

/* Copy n ids into a caller buffer with the buffer rule of the header. */
static int copy_out(const int32_t *src, size_t n, int32_t *out, size_t cap, size_t *n_out)
{
    size_t k = n < cap ? n : cap;
    if (k)
        memcpy(out, src, k * sizeof *out);
    *n_out = n;
    return n <= cap ? TALON_RT_OK : TALON_RT_E_BUFFER;
}

/* ---- streaming -------------------------------------------------------------------------------- */

typedef struct stream_ctx {
    talon_rt_token_fn fn; /* NULL once the call returned: a late call raises instead */
    void *user;
    size_t delivered;
} stream_ctx;

static void stream_ctx_free(PyObject *capsule)
{
    free(PyCapsule_GetPointer(capsule, "talon_rt.stream"));
}

/* on_tokens(list[int]) for the runtime: hands each round's tokens to the host's callback. */
static PyObject *stream_trampoline(PyObject *self, PyObject *arg)
{
    stream_ctx *ctx = PyCapsule_GetPointer(self, "talon_rt.stream");
    if (!ctx)
        return NULL;
    if (!ctx->fn) {
        PyErr_SetString(PyExc_RuntimeError, "talon_rt: stream callback used after its call returned");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(arg, "on_tokens expects a sequence of token ids");
    if (!seq)
        return NULL;
    size_t n = (size_t)PySequence_Fast_GET_SIZE(seq);
    int32_t small[256];
    int32_t *buf = n <= 256 ? small : malloc(n * sizeof *buf);
    if (!buf) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (size_t i = 0; i < n; i++) {
        long v = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, (Py_ssize_t)i));
        if (v == -1 && PyErr_Occurred()) {
            if (buf != small)
                free(buf);
            Py_DECREF(seq);
            return NULL;
        }
        buf[i] = (int32_t)v;
    }
    Py_DECREF(seq);
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = ctx->fn(buf, n, ctx->user);
    Py_END_ALLOW_THREADS
    if (buf != small)
        free(buf);
    ctx->delivered += n;
    if (rc != 0) {
        PyErr_Format(g_cancelled, "generation stopped by the stream callback (it returned %d) "
                     "after %zu tokens", rc, ctx->delivered);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef g_stream_def = {"talon_rt_on_tokens", stream_trampoline, METH_O,
                                   "Hand a round's accepted tokens to the C host's callback."};

/* ---- generation ------------------------------------------------------------------------------- */

static void store_stats(talon_rt *rt, int stop_reason, PyObject *stats)
{
    double v[9] = {0};
    for (Py_ssize_t i = 0; i < 9 && i < PyTuple_GET_SIZE(stats); i++)
        v[i] = PyFloat_AsDouble(PyTuple_GET_ITEM(stats, i));
    if (PyErr_Occurred())
        PyErr_Clear();
    talon_rt_stats *s = &rt->stats;
    s->n_tokens = rt->n_tokens;
    s->stop_reason = stop_reason;
    s->tau = v[0];
    s->delta = v[1];
    s->tokens_per_s = v[2];
    s->rounds = (uint64_t)v[3];
    s->draft_calls = (uint64_t)v[4];
    s->target_calls = (uint64_t)v[5];
    s->engine_s = v[6];
    s->host_s = v[7];
    s->host_share = v[8];
}

/* One generation through the bridge. The handle is claimed; on return rt->tokens / rt->stats hold
 * the result (empty on failure) and *out_text (if asked) the decoded text. */
static int run_generate(talon_rt *rt, const int32_t *prompt, size_t n_prompt, const char *text,
                        size_t max_new_tokens, talon_rt_token_fn fn, void *user,
                        size_t *n_streamed, char **out_text)
{
    double t0 = now_s();
    rt->n_tokens = 0;
    memset(&rt->stats, 0, sizeof rt->stats);
    char *msg = NULL;
    int status = TALON_RT_OK;
    PyObject *ids = NULL, *ptext = NULL, *cb = NULL, *max_new = NULL, *payload = NULL;
    stream_ctx *ctx = NULL;

    PyGILState_STATE gil = PyGILState_Ensure();
    if (text) {
        ptext = PyUnicode_DecodeUTF8(text, (Py_ssize_t)strlen(text), "strict");
        if (!ptext) {
            char *why = take_exception(NULL);
            msg = format("prompt: not valid UTF-8 (%s)", why ? why : "");
            free(why);
            status = TALON_RT_E_INPUT;
            goto done;
        }
    } else {
        ids = ids_to_list(prompt, n_prompt);
    }
    if (fn) {
        ctx = calloc(1, sizeof *ctx);
        PyObject *capsule = ctx ? PyCapsule_New(ctx, "talon_rt.stream", stream_ctx_free)
                                : PyErr_NoMemory();
        if (!capsule)
            free(ctx);
        if (capsule) {
            ctx->fn = fn;
            ctx->user = user;
            cb = PyCFunction_New(&g_stream_def, capsule);
            Py_DECREF(capsule);
        }
        if (!cb)
            ctx = NULL;
    }
    max_new = PyLong_FromSize_t(max_new_tokens);
    if ((!text && !ids) || (fn && !cb) || !max_new) {
        status = unpack(NULL, &payload, &msg);
        goto done;
    }
    PyObject *res = PyObject_CallFunctionObjArgs(g_generate, rt->gen, ids ? ids : Py_None,
                                                 ptext ? ptext : Py_None, max_new,
                                                 cb ? cb : Py_None, NULL);
    status = unpack(res, &payload, &msg);
    if (status != TALON_RT_OK)
        goto done;
    /* payload = (tokens, text or None, stop_reason code, stats tuple) */
    if (!PyTuple_Check(payload) || PyTuple_GET_SIZE(payload) != 4 ||
        !PyTuple_Check(PyTuple_GET_ITEM(payload, 3))) {
        status = TALON_RT_E_PYTHON;
        msg = format("talon_rt: internal error: unexpected generation result");
        goto done;
    }
    status = store_tokens(rt, PyTuple_GET_ITEM(payload, 0), &msg);
    if (status != TALON_RT_OK)
        goto done;
    if (out_text) {
        PyObject *t = PyTuple_GET_ITEM(payload, 1);
        Py_ssize_t len = 0;
        const char *utf8 = PyUnicode_Check(t) ? PyUnicode_AsUTF8AndSize(t, &len) : NULL;
        if (!utf8) {
            PyErr_Clear();
            status = TALON_RT_E_PYTHON;
            msg = format("talon_rt: internal error: the generated text is not a str");
            goto done;
        }
        *out_text = dup_string(utf8, (size_t)len);
        if (!*out_text) {
            status = TALON_RT_E_NOMEM;
            msg = format("talon_rt: out of memory for %zd bytes of text", len);
            goto done;
        }
    }
    store_stats(rt, (int)PyLong_AsLong(PyTuple_GET_ITEM(payload, 2)), PyTuple_GET_ITEM(payload, 3));
    if (PyErr_Occurred())
        PyErr_Clear();
done:
    if (ctx) {
        if (n_streamed)
            *n_streamed = ctx->delivered;
        ctx->fn = NULL; /* the capsule (and ctx) may outlive this call if the runtime kept cb */
    }
    Py_XDECREF(cb);
    Py_XDECREF(ids);
    Py_XDECREF(ptext);
    Py_XDECREF(max_new);
    Py_XDECREF(payload);
    PyGILState_Release(gil);
    if (status != TALON_RT_OK) {
        rt->n_tokens = 0;
        memset(&rt->stats, 0, sizeof rt->stats);
        free(rt->error);
        rt->error = msg;
    } else {
        rt->stats.call_s = now_s() - t0;
        free(msg);
    }
    return status;
}

/* ---- the API ---------------------------------------------------------------------------------- */

int talon_rt_open(const char *engine_dir, const char *options_json, talon_rt **out)
{
    if (out)
        *out = NULL;
    if (!engine_dir || !out)
        return global_error(TALON_RT_E_ARG, "talon_rt_open: %s is NULL",
                            engine_dir ? "out" : "engine_dir");
    char *msg = NULL;
    int status = ensure_runtime(&msg);
    if (status != TALON_RT_OK) {
        pthread_mutex_lock(&g_lock);
        set_global_error_locked(msg);
        pthread_mutex_unlock(&g_lock);
        return status;
    }
    talon_rt *rt = calloc(1, sizeof *rt);
    if (!rt)
        return global_error(TALON_RT_E_NOMEM, "talon_rt_open: out of memory");

    PyObject *gen = NULL;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *dir = PyUnicode_DecodeFSDefault(engine_dir);
    PyObject *opts = NULL;
    if (options_json) {
        opts = PyUnicode_DecodeUTF8(options_json, (Py_ssize_t)strlen(options_json), "strict");
        if (!opts) {
            char *why = take_exception(NULL);
            msg = format("options_json: not valid UTF-8 (%s)", why ? why : "");
            free(why);
            status = TALON_RT_E_OPTION;
        }
    }
    if (status == TALON_RT_OK && !dir)
        status = unpack(NULL, &gen, &msg);
    else if (status == TALON_RT_OK)
        status = unpack(PyObject_CallFunctionObjArgs(g_open, dir, opts ? opts : Py_None, NULL),
                        &gen, &msg);
    Py_XDECREF(dir);
    Py_XDECREF(opts);
    PyGILState_Release(gil);
    if (status != TALON_RT_OK) {
        free(rt);
        pthread_mutex_lock(&g_lock);
        set_global_error_locked(msg);
        pthread_mutex_unlock(&g_lock);
        return status;
    }

    rt->magic = MAGIC_OPEN;
    rt->gen = gen;
    pthread_mutex_lock(&g_lock);
    if (g_n_handles == g_cap_handles) {
        size_t cap = g_cap_handles ? 2 * g_cap_handles : 16;
        talon_rt **grown = realloc(g_handles, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&g_lock);
            PyObject *none = NULL;
            gil = PyGILState_Ensure();
            unpack(PyObject_CallFunctionObjArgs(g_close, gen, NULL), &none, &msg);
            Py_XDECREF(none);
            Py_DECREF(gen);
            PyGILState_Release(gil);
            free(msg);
            free(rt);
            return global_error(TALON_RT_E_NOMEM, "talon_rt_open: out of memory (registry)");
        }
        g_handles = grown;
        g_cap_handles = cap;
    }
    g_handles[g_n_handles++] = rt;
    pthread_mutex_unlock(&g_lock);
    *out = rt;
    return TALON_RT_OK;
}

int talon_rt_generate_ids(talon_rt *rt, const int32_t *prompt, size_t n_prompt,
                          size_t max_new_tokens, int32_t *out, size_t out_capacity, size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    int status = enter(rt, "talon_rt_generate_ids");
    if (status != TALON_RT_OK)
        return status;
    if ((!prompt && n_prompt) || !n_out || (!out && out_capacity))
        return leave(rt, handle_error(rt, TALON_RT_E_ARG, "talon_rt_generate_ids: %s is NULL",
                                      !n_out ? "n_out" : (!out && out_capacity) ? "out" : "prompt"));
    status = run_generate(rt, prompt, n_prompt, NULL, max_new_tokens, NULL, NULL, NULL, NULL);
    if (status == TALON_RT_OK) {
        status = copy_out(rt->tokens, rt->n_tokens, out, out_capacity, n_out);
        if (status != TALON_RT_OK)
            handle_error(rt, status, "talon_rt_generate_ids: out_capacity %zu is too small for the "
                         "%zu generated tokens (*n_out = %zu; talon_rt_last_tokens has them all)",
                         out_capacity, rt->n_tokens, rt->n_tokens);
    }
    return leave(rt, status);
}

int talon_rt_generate_text(talon_rt *rt, const char *prompt, size_t max_new_tokens, char **out_text)
{
    if (out_text)
        *out_text = NULL;
    int status = enter(rt, "talon_rt_generate_text");
    if (status != TALON_RT_OK)
        return status;
    if (!prompt || !out_text)
        return leave(rt, handle_error(rt, TALON_RT_E_ARG, "talon_rt_generate_text: %s is NULL",
                                      prompt ? "out_text" : "prompt"));
    return leave(rt, run_generate(rt, NULL, 0, prompt, max_new_tokens, NULL, NULL, NULL, out_text));
}

int talon_rt_generate_stream(talon_rt *rt, const int32_t *prompt, size_t n_prompt,
                             size_t max_new_tokens, talon_rt_token_fn on_tokens, void *user,
                             size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    int status = enter(rt, "talon_rt_generate_stream");
    if (status != TALON_RT_OK)
        return status;
    if ((!prompt && n_prompt) || !on_tokens)
        return leave(rt, handle_error(rt, TALON_RT_E_ARG, "talon_rt_generate_stream: %s is NULL",
                                      on_tokens ? "prompt" : "on_tokens"));
    return leave(rt, run_generate(rt, prompt, n_prompt, NULL, max_new_tokens, on_tokens, user,
                                  n_out, NULL));
}

int talon_rt_last_tokens(const talon_rt *rt, int32_t *out, size_t out_capacity, size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    int status = enter(rt, "talon_rt_last_tokens");
    if (status != TALON_RT_OK)
        return status;
    talon_rt *h = (talon_rt *)rt;
    if (!n_out || (!out && out_capacity))
        return leave(rt, handle_error(h, TALON_RT_E_ARG, "talon_rt_last_tokens: %s is NULL",
                                      n_out ? "out" : "n_out"));
    status = copy_out(h->tokens, h->n_tokens, out, out_capacity, n_out);
    if (status != TALON_RT_OK)
        handle_error(h, status, "talon_rt_last_tokens: out_capacity %zu is too small for %zu tokens",
                     out_capacity, h->n_tokens);
    return leave(rt, status);
}

int talon_rt_last_stats(const talon_rt *rt, talon_rt_stats *out)
{
    int status = enter(rt, "talon_rt_last_stats");
    if (status != TALON_RT_OK)
        return status;
    if (!out)
        return leave(rt, handle_error((talon_rt *)rt, TALON_RT_E_ARG, "talon_rt_last_stats: out is NULL"));
    *out = rt->stats;
    return leave(rt, TALON_RT_OK);
}

int talon_rt_encode(talon_rt *rt, const char *text, int32_t *out, size_t out_capacity, size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    int status = enter(rt, "talon_rt_encode");
    if (status != TALON_RT_OK)
        return status;
    if (!text || !n_out || (!out && out_capacity))
        return leave(rt, handle_error(rt, TALON_RT_E_ARG, "talon_rt_encode: %s is NULL",
                                      !text ? "text" : !n_out ? "n_out" : "out"));
    char *msg = NULL;
    PyObject *payload = NULL;
    int32_t *ids = NULL;
    size_t n = 0;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *ptext = PyUnicode_DecodeUTF8(text, (Py_ssize_t)strlen(text), "strict");
    if (!ptext) {
        char *why = take_exception(NULL);
        msg = format("text: not valid UTF-8 (%s)", why ? why : "");
        free(why);
        status = TALON_RT_E_INPUT;
    } else {
        status = unpack(PyObject_CallFunctionObjArgs(g_encode, rt->gen, ptext, NULL), &payload, &msg);
        Py_DECREF(ptext);
    }
    if (status == TALON_RT_OK) { /* reuse the token store's conversion, then restore it */
        int32_t *keep = rt->tokens;
        size_t keep_n = rt->n_tokens, keep_cap = rt->cap_tokens;
        rt->tokens = NULL;
        rt->n_tokens = rt->cap_tokens = 0;
        status = store_tokens(rt, payload, &msg);
        ids = rt->tokens;
        n = rt->n_tokens;
        rt->tokens = keep;
        rt->n_tokens = keep_n;
        rt->cap_tokens = keep_cap;
    }
    Py_XDECREF(payload);
    PyGILState_Release(gil);
    if (status == TALON_RT_OK) {
        status = copy_out(ids, n, out, out_capacity, n_out);
        if (status != TALON_RT_OK)
            msg = format("talon_rt_encode: out_capacity %zu is too small for %zu tokens (*n_out = %zu)",
                         out_capacity, n, n);
    }
    free(ids);
    if (status != TALON_RT_OK) {
        free(rt->error);
        rt->error = msg;
    }
    return leave(rt, status);
}

/* Call fn(rt->gen, arg) (arg: a new reference or NULL with a Python error set) and copy the str it
 * returns into *out_text (malloc). Returns the status; on failure the message is in rt->error. */
static int call_for_text(talon_rt *rt, PyObject *fn, PyObject *arg, const char *label, char **out_text)
{
    char *msg = NULL;
    PyObject *payload = NULL;
    int status = unpack(arg ? PyObject_CallFunctionObjArgs(fn, rt->gen, arg, NULL) : NULL, &payload, &msg);
    Py_XDECREF(arg);
    if (status == TALON_RT_OK) {
        Py_ssize_t len = 0;
        const char *utf8 = PyUnicode_Check(payload) ? PyUnicode_AsUTF8AndSize(payload, &len) : NULL;
        if (!utf8) {
            PyErr_Clear();
            status = TALON_RT_E_PYTHON;
            msg = format("talon_rt: internal error: %s did not return a str", label);
        } else if (!(*out_text = dup_string(utf8, (size_t)len))) {
            status = TALON_RT_E_NOMEM;
            msg = format("%s: out of memory", label);
        }
    }
    Py_XDECREF(payload);
    if (status != TALON_RT_OK) {
        free(rt->error);
        rt->error = msg;
    }
    return status;
}

int talon_rt_decode(talon_rt *rt, const int32_t *ids, size_t n_ids, char **out_text)
{
    if (out_text)
        *out_text = NULL;
    int status = enter(rt, "talon_rt_decode");
    if (status != TALON_RT_OK)
        return status;
    if ((!ids && n_ids) || !out_text)
        return leave(rt, handle_error(rt, TALON_RT_E_ARG, "talon_rt_decode: %s is NULL",
                                      out_text ? "ids" : "out_text"));
    PyGILState_STATE gil = PyGILState_Ensure();
    status = call_for_text(rt, g_decode, ids_to_list(ids, n_ids), "talon_rt_decode", out_text);
    PyGILState_Release(gil);
    return leave(rt, status);
}

int talon_rt_render_chat(talon_rt *rt, const char *messages_json, char **out_text)
{
    if (out_text)
        *out_text = NULL;
    int status = enter(rt, "talon_rt_render_chat");
    if (status != TALON_RT_OK)
        return status;
    if (!messages_json || !out_text)
        return leave(rt, handle_error(rt, TALON_RT_E_ARG, "talon_rt_render_chat: %s is NULL",
                                      messages_json ? "out_text" : "messages_json"));
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *arg = PyUnicode_DecodeUTF8(messages_json, (Py_ssize_t)strlen(messages_json), "strict");
    if (!arg) {
        char *why = take_exception(NULL);
        free(rt->error);
        rt->error = format("messages_json: not valid UTF-8 (%s)", why ? why : "");
        free(why);
        status = TALON_RT_E_INPUT;
    } else {
        status = call_for_text(rt, g_render_chat, arg, "talon_rt_render_chat", out_text);
    }
    PyGILState_Release(gil);
    return leave(rt, status);
}

void talon_rt_free(void *p)
{
    free(p);
}

const char *talon_rt_last_error(const talon_rt *rt)
{
    const char *msg;
    pthread_mutex_lock(&g_lock);
    if (!rt)
        msg = g_error ? g_error : "";
    else if (!registered_locked(rt))
        msg = MSG_UNKNOWN;
    else if (rt->magic != MAGIC_OPEN)
        msg = MSG_CLOSED;
    else
        msg = rt->error ? rt->error : "";
    pthread_mutex_unlock(&g_lock);
    return msg;
}

int talon_rt_close(talon_rt *rt)
{
    if (!rt)
        return TALON_RT_OK;
    int status = enter(rt, "talon_rt_close");
    if (status != TALON_RT_OK)
        return status;
    char *msg = NULL;
    PyObject *none = NULL;
    PyGILState_STATE gil = PyGILState_Ensure();
    status = unpack(PyObject_CallFunctionObjArgs(g_close, rt->gen, NULL), &none, &msg);
    Py_XDECREF(none);
    Py_CLEAR(rt->gen); /* the engine goes with the last reference, even if close() failed */
    PyGILState_Release(gil);
    pthread_mutex_lock(&g_lock);
    rt->magic = MAGIC_CLOSED; /* the struct stays registered: a stale pointer is recognised */
    rt->busy = 0;
    free(rt->error);
    free(rt->tokens);
    rt->error = NULL;
    rt->tokens = NULL;
    rt->n_tokens = rt->cap_tokens = 0;
    if (status != TALON_RT_OK)
        set_global_error_locked(format("talon_rt_close: %s", msg ? msg : ""));
    pthread_mutex_unlock(&g_lock);
    free(msg);
    return status;
}

const char *talon_rt_status_name(int status)
{
    switch (status) {
    case TALON_RT_OK: return "TALON_RT_OK";
    case TALON_RT_E_ENGINE: return "TALON_RT_E_ENGINE";
    case TALON_RT_E_OPTION: return "TALON_RT_E_OPTION";
    case TALON_RT_E_INPUT: return "TALON_RT_E_INPUT";
    case TALON_RT_E_BUFFER: return "TALON_RT_E_BUFFER";
    case TALON_RT_E_HANDLE: return "TALON_RT_E_HANDLE";
    case TALON_RT_E_ARG: return "TALON_RT_E_ARG";
    case TALON_RT_E_BUSY: return "TALON_RT_E_BUSY";
    case TALON_RT_E_CANCELLED: return "TALON_RT_E_CANCELLED";
    case TALON_RT_E_INIT: return "TALON_RT_E_INIT";
    case TALON_RT_E_PYTHON: return "TALON_RT_E_PYTHON";
    case TALON_RT_E_NOMEM: return "TALON_RT_E_NOMEM";
    default: return "TALON_RT_E_UNKNOWN";
    }
}

const char *talon_rt_version(void)
{
    return "talon-rt 0.1.0 (abi " Py_STRINGIFY(TALON_RT_ABI_VERSION) ")";
}
