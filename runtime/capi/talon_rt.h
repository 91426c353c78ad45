/*
 * talon_rt.h — C API of talon-rt: speculative decoding with adaptive draft trees (TALON).
 *
 * The library embeds the Python runtime (talon_rt.runtime.api.Generator, docs/python-api.md) in a C host.
 * Build it with `make capi` (-> runtime/capi/libtalon_rt.so) and link with
 * `-Iruntime/capi -Lruntime/capi -ltalon_rt -Wl,-rpath,$PWD/runtime/capi`.
 *
 * STATUS CODES
 *   Every function except talon_rt_free, talon_rt_last_error, talon_rt_status_name and
 *   talon_rt_version returns an int status: TALON_RT_OK (0) on success, one talon_rt_status code
 *   per kind of failure. After a failure talon_rt_last_error() gives a message that names the file,
 *   field or value at fault. No function aborts or exits the host: Python exceptions, including
 *   SystemExit and KeyboardInterrupt raised inside the runtime, become codes and messages.
 *
 * HANDLES
 *   talon_rt_open creates a handle; talon_rt_close releases its engine. Every handle the library
 *   has ever returned is remembered in a registry, and a function only dereferences a pointer found
 *   there. A closed handle's small struct (under 200 bytes) is kept, marked closed, for the life of
 *   the process, so its address is never reused for a new handle (the registry is meant for hosts
 *   that open a few engines, not millions). Hence:
 *     - NULL, a pointer never returned by talon_rt_open, or a closed handle passed to any function
 *       gives TALON_RT_E_HANDLE (nothing is dereferenced);
 *     - talon_rt_close on a closed handle (double close) gives TALON_RT_E_HANDLE and does nothing;
 *       talon_rt_close(NULL) is a no-op that returns TALON_RT_OK, like free(NULL);
 *     - the message of such a failure, and of TALON_RT_E_BUSY, goes to the global slot,
 *       talon_rt_last_error(NULL).
 *   Never free() a handle yourself.
 *
 * THREADS
 *   Any function may be called from any thread. Python work is serialised by the GIL, which the
 *   library takes with PyGILState_Ensure and gives back before returning, so a host that already
 *   holds the GIL on the calling thread may call too. A handle serves one call at a time: a call on a
 *   handle that is busy in another thread, or re-entered from its own stream callback, returns
 *   TALON_RT_E_BUSY at once (it never waits, so it never deadlocks). Different handles may be used
 *   from different threads; their Python parts take turns and their engine calls may overlap when
 *   the runtime releases the GIL. The global error slot is shared by all threads.
 *
 * THE INTERPRETER
 *   If the host has not initialised Python, the first talon_rt_open does, with the virtual
 *   environment the library was built against (its python executable, so its site-packages are on
 *   sys.path) and the repository root on sys.path; Python's signal handlers are not installed and
 *   the interpreter is never finalised (it lives until the process exits). Override at run time
 *   with the environment: TALON_RT_PYTHON=<venv>/bin/python, TALON_RT_ROOT=<directory holding the
 *   `runtime` package>. If the host already runs an interpreter (same libpython), it is used as is,
 *   TALON_RT_ROOT (or the built-in root) being appended to its sys.path if missing; such a host must
 *   not keep the GIL on a thread other than the caller's (release it with PyEval_SaveThread after
 *   Py_Initialize, as embedding hosts usually do), or the call waits for it.
 *   A failed interpreter start is final for the process (TALON_RT_E_INIT every time); a failed
 *   import of the runtime is retried by the next talon_rt_open.
 *
 * OWNERSHIP
 *   Input strings and arrays are borrowed for the duration of the call. Strings returned through a
 *   `char **` are allocated by the library (NUL-terminated UTF-8): release them with talon_rt_free.
 *   The pointer returned by talon_rt_last_error stays valid until the next failing call on the same
 *   handle (for a handle's message), or until the next failure recorded in the global slot (for
 *   talon_rt_last_error(NULL)); copy it if you need it longer.
 *
 * TOKENS
 *   Token ids are int32_t. A `size_t *n_out` is set to 0 by any failure except TALON_RT_E_BUFFER.
 *   max_new_tokens == 0 means "the handle's default" (the options_json `max_new_tokens`, else the
 *   engine manifest's default). Generated tokens exclude the prompt and include the EOS token when
 *   one was generated.
 */
#ifndef TALON_RT_H
#define TALON_RT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Version of this ABI; bumped on any incompatible change of a signature or of talon_rt_stats. */
#define TALON_RT_ABI_VERSION 1

typedef enum talon_rt_status {
    TALON_RT_OK = 0,
    TALON_RT_E_ENGINE = 1,    /* engine directory, manifest, checksum or graph I/O is wrong
                                 (talon_rt.runtime.errors.EngineError), e.g. the directory does not exist */
    TALON_RT_E_OPTION = 2,    /* options_json is not a JSON object, or an option is unknown, not
                                 finite or out of range, here or in the manifest's defaults
                                 (talon_rt.runtime.errors.OptionError) */
    TALON_RT_E_INPUT = 3,     /* bad prompt: empty, too long for the context, token id out of range,
                                 text that is not UTF-8 (talon_rt.runtime.errors.InputError) */
    TALON_RT_E_BUFFER = 4,    /* the caller's buffer is too small; *n_out holds the size needed and
                                 the buffer holds as much as fits; the result is kept (see
                                 talon_rt_last_tokens) */
    TALON_RT_E_HANDLE = 5,    /* NULL, unknown or closed handle (talon_rt.runtime.errors.ClosedError too) */
    TALON_RT_E_ARG = 6,       /* a required pointer argument is NULL */
    TALON_RT_E_BUSY = 7,      /* the handle is serving another call (another thread, or a re-entrant
                                 call from its own stream callback; talon_rt.runtime.errors.BusyError) */
    TALON_RT_E_CANCELLED = 8, /* the stream callback returned non-zero; generation stopped */
    TALON_RT_E_INIT = 9,      /* the Python interpreter could not start or the runtime could not be
                                 imported (message says which and why) */
    TALON_RT_E_PYTHON = 10,   /* any other exception inside the runtime (an internal error); the
                                 message names the exception type, its text and where it was raised */
    TALON_RT_E_NOMEM = 11     /* out of memory (in C, or MemoryError in Python) */
} talon_rt_status;

/* Why a generation stopped (talon_rt_stats.stop_reason). */
typedef enum talon_rt_stop_reason {
    TALON_RT_STOP_NONE = 0,           /* no generation finished yet */
    TALON_RT_STOP_EOS = 1,            /* an EOS token was generated (it is the last token) */
    TALON_RT_STOP_MAX_NEW_TOKENS = 2, /* max_new_tokens reached */
    TALON_RT_STOP_CONTEXT_FULL = 3    /* the engine's context (limits.max_seq_len) is full */
} talon_rt_stop_reason;

/* Statistics of the last generation on a handle (docs/python-api.md, RunStats).
 * tau = generated tokens per target call (MAT); delta = draft calls per target call. */
typedef struct talon_rt_stats {
    size_t n_tokens;        /* generated tokens */
    int stop_reason;        /* a talon_rt_stop_reason */
    double tau;
    double delta;
    double tokens_per_s;    /* as measured by the runtime (decode loop) */
    uint64_t rounds;        /* draft-verify rounds */
    uint64_t draft_calls;
    uint64_t target_calls;
    double engine_s;        /* seconds spent inside engine calls */
    double host_s;          /* seconds of host (Python) work in the loop */
    double host_share;      /* host_s / (engine_s + host_s) */
    double call_s;          /* wall seconds of the whole C call, measured in C (includes the
                               C <-> Python crossing, prefill and tokenizer work) */
} talon_rt_stats;

/* Stream callback: receives each round's accepted tokens as they are committed (borrowed for the
 * duration of the callback). Return 0 to continue, non-zero to stop the generation: the call then
 * returns TALON_RT_E_CANCELLED. The GIL is released while it runs. */
typedef int (*talon_rt_token_fn)(const int32_t *tokens, size_t n_tokens, void *user);

typedef struct talon_rt talon_rt;

/* Open the engine directory `engine_dir` with options: a JSON object whose keys are the options of
 * talon_rt.runtime.api.Generator.open (policy, budget, mu, root_k, eagle3_top_k, eagle3_depth, chain_depth,
 * max_new_tokens, temperature, top_p, top_k, min_p, repetition_penalty, frequency_penalty,
 * presence_penalty, seed, backend, threads, thread_mode), e.g.
 * {"policy": "talon", "budget": 16, "temperature": 0}. NULL or "" = the manifest's defaults.
 * On success *out is a new handle; on failure *out is set to NULL (when out is not NULL) and the
 * message is in talon_rt_last_error(NULL).
 * Errors: TALON_RT_E_ARG (engine_dir or out NULL), E_ENGINE, E_OPTION, E_INIT, E_PYTHON, E_NOMEM. */
int talon_rt_open(const char *engine_dir, const char *options_json, talon_rt **out);

/* Generate from the prompt token ids into out[0 .. out_capacity). On success *n_out is the number
 * of generated tokens. If they do not fit: TALON_RT_E_BUFFER, *n_out = the number needed, out holds
 * the first out_capacity of them, and the whole result stays available to talon_rt_last_tokens and
 * talon_rt_last_stats (no need to generate again). out may be NULL when out_capacity is 0.
 * Errors: E_HANDLE, E_BUSY, E_ARG (prompt NULL with n_prompt > 0, n_out NULL, out NULL with
 * out_capacity > 0), E_INPUT, E_BUFFER, E_PYTHON, E_NOMEM. */
int talon_rt_generate_ids(talon_rt *rt, const int32_t *prompt, size_t n_prompt,
                          size_t max_new_tokens, int32_t *out, size_t out_capacity, size_t *n_out);

/* Generate from a UTF-8 text prompt (encoded with the engine's tokenizer.json). On success
 * *out_text is the decoded generated text, allocated by the library: release it with
 * talon_rt_free. On failure *out_text is NULL. The generated ids are in talon_rt_last_tokens.
 * Errors: E_HANDLE, E_BUSY, E_ARG, E_INPUT (empty prompt, not UTF-8, too long), E_PYTHON, E_NOMEM. */
int talon_rt_generate_text(talon_rt *rt, const char *prompt, size_t max_new_tokens,
                           char **out_text /* release with talon_rt_free */);

/* Streaming variant of talon_rt_generate_ids: on_tokens (not NULL) is called with each round's
 * accepted tokens. On return *n_out (may be NULL) is the number of tokens delivered to the callback,
 * on success and on TALON_RT_E_CANCELLED alike. After success the tokens are also in
 * talon_rt_last_tokens; after a cancel they are not (talon_rt_last_tokens gives 0 tokens). */
int talon_rt_generate_stream(talon_rt *rt, const int32_t *prompt, size_t n_prompt,
                             size_t max_new_tokens, talon_rt_token_fn on_tokens, void *user,
                             size_t *n_out);

/* Copy the tokens of the handle's last generation call: every generate call replaces them, and a
 * call that failed (other than with TALON_RT_E_BUFFER) leaves none. Same buffer rule as
 * talon_rt_generate_ids: TALON_RT_E_BUFFER with *n_out = needed. */
int talon_rt_last_tokens(const talon_rt *rt, int32_t *out, size_t out_capacity, size_t *n_out);

/* Statistics of the handle's last generation call (all zero before the first one and after a
 * failed one, except after TALON_RT_E_BUFFER). Errors: E_HANDLE, E_BUSY, E_ARG (out NULL). */
int talon_rt_last_stats(const talon_rt *rt, talon_rt_stats *out);

/* Tokenize UTF-8 text with the engine's tokenizer (no generation). Buffer rule as above. */
int talon_rt_encode(talon_rt *rt, const char *text, int32_t *out, size_t out_capacity,
                    size_t *n_out);

/* Decode token ids to UTF-8 text; *out_text is allocated by the library (talon_rt_free).
 * Errors: E_HANDLE, E_BUSY, E_ARG, E_INPUT (an id outside [0, model.vocab_size)), E_PYTHON. */
int talon_rt_decode(talon_rt *rt, const int32_t *ids, size_t n_ids, char **out_text);

/* Render a conversation with the engine's chat template: messages_json is a JSON array of
 * {"role": "system" | "user" | "assistant", "content": "..."} objects; *out_text (release with
 * talon_rt_free) is the prompt text, ending with the assistant's turn header. Pass it to
 * talon_rt_generate_text (or talon_rt_encode + talon_rt_generate_stream): generation stops at the
 * template's end-of-turn token (manifest tokenizer.stop_ids) as well as at EOS.
 * Errors: E_HANDLE, E_BUSY, E_ARG, E_INPUT (not JSON, bad messages, the engine has no chat
 * template), E_ENGINE (the template fails to render), E_PYTHON, E_NOMEM. */
int talon_rt_render_chat(talon_rt *rt, const char *messages_json, char **out_text);

/* Release memory returned by the library (strings from generate_text / decode). NULL is a no-op. */
void talon_rt_free(void *p);

/* Message of the last failed call on `rt` ("" if none has failed; a success does not clear it, as
 * with errno). NULL: the global slot, i.e. the last failed talon_rt_open and the last call made
 * with a NULL, unknown or closed handle. For an unknown or closed `rt`, a fixed message saying so.
 * Never returns NULL; see OWNERSHIP for how long the pointer lives. */
const char *talon_rt_last_error(const talon_rt *rt /* NULL: the last failed open */);

/* Close the handle: the engine's sessions and buffers are released (runtime Generator.close).
 * Using the handle afterwards gives TALON_RT_E_HANDLE; closing it again gives TALON_RT_E_HANDLE.
 * NULL is a no-op (TALON_RT_OK). Errors: E_HANDLE, E_BUSY, E_PYTHON. */
int talon_rt_close(talon_rt *rt);

/* The enumerator name of a status code, e.g. "TALON_RT_E_OPTION"; "TALON_RT_E_UNKNOWN" otherwise. */
const char *talon_rt_status_name(int status);

/* Library version string, e.g. "talon-rt 0.1.0 (abi 1)". */
const char *talon_rt_version(void);

#ifdef __cplusplus
}
#endif

#endif /* TALON_RT_H */
