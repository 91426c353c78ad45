/*
 * test_capi_host.c — C host driven by tests/capi/test_capi.py: error paths, two handles, threads, timing.
 *
 *   test_capi_host errors ENGINE                  every error path; one "case ..." line each, then "alive"
 *   test_capi_host two ENGINE_A ENGINE_B IDS MAX  both handles open at once: calls interleaved,
 *                                                 then both generating at the same time
 *   test_capi_host thread ENGINE IDS MAX          a handle moving between threads; two at once
 *
 * IDS is a comma-separated prompt. Output lines are "key=value" fields a test can parse.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "talon_rt.h"

enum { CAP = 1024 };

static void report(const char *name, int status, size_t n, const char *msg)
{
    printf("case=%s status=%s n=%zu msg=%s\n", name, talon_rt_status_name(status), n, msg);
    fflush(stdout);
}

static size_t parse_ids(const char *s, int32_t *ids)
{
    size_t n = 0;
    while (*s && n < CAP) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s)
            break;
        ids[n++] = (int32_t)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

/* One printf per line: lines from concurrent threads never mix. */
static void print_tokens(const char *label, const int32_t *t, size_t n)
{
    char line[CAP * 12 + 64];
    int k = snprintf(line, sizeof line, "%s:", label);
    for (size_t i = 0; i < n && k < (int)sizeof line - 12; i++)
        k += snprintf(line + k, sizeof line - (size_t)k, " %d", (int)t[i]);
    printf("%s\n", line);
    fflush(stdout);
}

/* ---- errors ------------------------------------------------------------------------------------ */

static int stop_after_first(const int32_t *tokens, size_t n, void *user)
{
    (void)tokens;
    (void)n;
    (void)user;
    return 1;
}

struct reenter_ctx {
    talon_rt *rt;
    int inner_status;
};

/* Calls back into its own handle: must get TALON_RT_E_BUSY, not a deadlock. */
static int reenter(const int32_t *tokens, size_t n, void *user)
{
    (void)tokens;
    (void)n;
    struct reenter_ctx *ctx = user;
    int32_t prompt[1] = {5}, out[4];
    size_t n_out = 0;
    ctx->inner_status = talon_rt_generate_ids(ctx->rt, prompt, 1, 1, out, 4, &n_out);
    return 0;
}

static int run_errors(const char *engine)
{
    talon_rt *rt = NULL;
    int s;
    char missing[4096];
    snprintf(missing, sizeof missing, "%s/does-not-exist", engine);

    s = talon_rt_open(missing, NULL, &rt);
    report("bad_engine", s, rt == NULL, talon_rt_last_error(NULL));
    s = talon_rt_open(engine, "{\"policy\": \"no-such-policy\"}", &rt);
    report("bad_option", s, rt == NULL, talon_rt_last_error(NULL));
    s = talon_rt_open(engine, "{\"budget\": 100000}", &rt);
    report("budget_too_big", s, rt == NULL, talon_rt_last_error(NULL));
    s = talon_rt_open(engine, "{\"policy\": ", &rt);
    report("bad_json", s, rt == NULL, talon_rt_last_error(NULL));
    s = talon_rt_open(engine, "[1, 2]", &rt);
    report("json_not_object", s, rt == NULL, talon_rt_last_error(NULL));
    s = talon_rt_open(NULL, NULL, &rt);
    report("open_null_dir", s, rt == NULL, talon_rt_last_error(NULL));
    s = talon_rt_open("/nonexistent/\xff\xfe-engine", NULL, &rt);
    report("open_not_utf8_path", s, rt == NULL, talon_rt_last_error(NULL));
    s = talon_rt_open(engine, "{\"threads\": 100000}", &rt);
    report("threads_too_many", s, rt == NULL, talon_rt_last_error(NULL));
    s = talon_rt_open(engine, "{\"temperature\": NaN}", &rt);
    report("temperature_nan", s, rt == NULL, talon_rt_last_error(NULL));
    s = talon_rt_open(engine, "{\"policy\": \"eagle3\", \"eagle3_top_k\": 1000000}", &rt);
    report("eagle3_top_k_huge", s, rt == NULL, talon_rt_last_error(NULL));

    s = talon_rt_open(engine, "{\"policy\": \"talon\", \"budget\": 8}", &rt);
    report("open", s, rt != NULL, talon_rt_last_error(NULL));
    if (s != TALON_RT_OK)
        return 1;

    int32_t prompt[3] = {5, 6, 7}, out[CAP], all[CAP];
    size_t n_out = 0, n_all = 0;
    s = talon_rt_generate_ids(rt, prompt, 3, 8, out, 2, &n_out);
    report("buffer_too_small", s, n_out, talon_rt_last_error(rt));
    int sl = talon_rt_last_tokens(rt, all, CAP, &n_all);
    report("last_tokens_after_small_buffer", sl, n_all,
           (n_all >= 2 && all[0] == out[0] && all[1] == out[1]) ? "prefix matches" : "PREFIX DIFFERS");
    s = talon_rt_last_tokens(rt, all, 1, &n_out);
    report("last_tokens_small_buffer", s, n_out, talon_rt_last_error(rt));
    s = talon_rt_generate_ids(rt, prompt, 3, 8, NULL, 0, &n_out);
    report("size_query", s, n_out, talon_rt_last_error(rt));

    s = talon_rt_generate_ids(rt, prompt, 0, 8, out, CAP, &n_out);
    report("empty_prompt", s, n_out, talon_rt_last_error(rt));
    int32_t bad[2] = {5, 1 << 30};
    s = talon_rt_generate_ids(rt, bad, 2, 8, out, CAP, &n_out);
    report("token_out_of_range", s, n_out, talon_rt_last_error(rt));
    s = talon_rt_generate_ids(rt, prompt, 3, 8, out, CAP, NULL);
    report("null_n_out", s, 0, talon_rt_last_error(rt));
    char *text = (char *)1;
    s = talon_rt_generate_text(rt, "\xff\xfe not utf-8", 4, &text);
    report("text_not_utf8", s, text == NULL, talon_rt_last_error(rt));
    s = talon_rt_generate_text(rt, "", 4, &text);
    report("text_empty", s, text == NULL, talon_rt_last_error(rt));
    int32_t unknown[2] = {5, 99999};
    s = talon_rt_decode(rt, unknown, 2, &text);
    report("decode_out_of_range", s, text == NULL, talon_rt_last_error(rt));

    size_t delivered = 0;
    s = talon_rt_generate_stream(rt, prompt, 3, 8, stop_after_first, NULL, &delivered);
    report("stream_cancel", s, delivered, talon_rt_last_error(rt));
    struct reenter_ctx ctx = {rt, -1};
    s = talon_rt_generate_stream(rt, prompt, 3, 4, reenter, &ctx, &delivered);
    report("reentrant_outer", s, delivered, talon_rt_last_error(rt));
    report("reentrant_inner", ctx.inner_status, 0, talon_rt_last_error(NULL));

    s = talon_rt_generate_ids(rt, prompt, 3, 8, out, CAP, &n_out);
    report("still_works", s, n_out, talon_rt_last_error(rt));

    s = talon_rt_close(rt);
    report("close", s, 0, talon_rt_last_error(NULL));
    s = talon_rt_close(rt);
    report("double_close", s, 0, talon_rt_last_error(NULL));
    s = talon_rt_generate_ids(rt, prompt, 3, 8, out, CAP, &n_out);
    report("use_after_close", s, 0, talon_rt_last_error(NULL));
    report("last_error_closed", 0, 0, talon_rt_last_error(rt));
    talon_rt_stats st;
    s = talon_rt_last_stats(rt, &st);
    report("stats_after_close", s, 0, talon_rt_last_error(NULL));
    int not_a_handle = 0;
    s = talon_rt_generate_ids((talon_rt *)&not_a_handle, prompt, 3, 8, out, CAP, &n_out);
    report("unknown_handle", s, 0, talon_rt_last_error(NULL));
    s = talon_rt_generate_ids(NULL, prompt, 3, 8, out, CAP, &n_out);
    report("null_handle", s, 0, talon_rt_last_error(NULL));
    s = talon_rt_close(NULL);
    report("close_null", s, 0, "");

    /* a fresh handle after all that: the library and the interpreter are still fine */
    talon_rt *again = NULL;
    s = talon_rt_open(engine, NULL, &again);
    if (s == TALON_RT_OK)
        s = talon_rt_generate_ids(again, prompt, 3, 4, out, CAP, &n_out);
    report("reopen_generate", s, n_out, talon_rt_last_error(again));
    report("reopen_is_new_address", 0, again != rt, "");
    talon_rt_close(again);
    printf("alive\n");
    return 0;
}

/* ---- two handles, threads ---------------------------------------------------------------------- */

static int generate_print(talon_rt *rt, const char *label, const int32_t *ids, size_t n, size_t max_new)
{
    int32_t out[CAP];
    size_t n_out = 0;
    int s = talon_rt_generate_ids(rt, ids, n, max_new, out, CAP, &n_out);
    if (s != TALON_RT_OK) {
        fprintf(stderr, "%s: %s: %s\n", label, talon_rt_status_name(s), talon_rt_last_error(rt));
        return 1;
    }
    print_tokens(label, out, n_out);
    return 0;
}

struct job {
    const char *engine; /* open it in the thread first (NULL: use rt) */
    talon_rt *rt;
    const char *label;
    const int32_t *ids;
    size_t n, max_new;
    int status;
};

static void *job_main(void *arg)
{
    struct job *j = arg;
    j->status = j->engine ? talon_rt_open(j->engine, NULL, &j->rt) : TALON_RT_OK;
    if (j->status != TALON_RT_OK)
        fprintf(stderr, "open: %s\n", talon_rt_last_error(NULL));
    else
        j->status = generate_print(j->rt, j->label, j->ids, j->n, j->max_new);
    return NULL;
}

/* Run the jobs at the same time, one thread each. */
static int run_concurrently(struct job *jobs, int n_jobs)
{
    pthread_t t[4];
    int bad = 0;
    for (int i = 0; i < n_jobs; i++)
        if (pthread_create(&t[i], NULL, job_main, &jobs[i]) != 0)
            return 1;
    for (int i = 0; i < n_jobs; i++) {
        pthread_join(t[i], NULL);
        bad |= jobs[i].status;
    }
    return bad;
}

static int run_two(const char *a, const char *b, const char *ids_s, size_t max_new)
{
    int32_t ids[CAP];
    size_t n = parse_ids(ids_s, ids);
    talon_rt *ra = NULL, *rb = NULL;
    if (talon_rt_open(a, NULL, &ra) || talon_rt_open(b, NULL, &rb)) {
        fprintf(stderr, "open: %s\n", talon_rt_last_error(NULL));
        return 1;
    }
    int bad = generate_print(ra, "a1", ids, n, max_new) | generate_print(rb, "b1", ids, n, max_new) |
              generate_print(ra, "a2", ids, n, max_new) | generate_print(rb, "b2", ids, n, max_new);
    struct job both[2] = {{NULL, ra, "a3", ids, n, max_new, 1}, {NULL, rb, "b3", ids, n, max_new, 1}};
    bad |= run_concurrently(both, 2);
    return bad | talon_rt_close(ra) | talon_rt_close(rb);
}

/* The interpreter starts on a thread that then exits; the handle moves between threads; two
 * handles generate at the same time. */
static int run_thread(const char *engine, const char *ids_s, size_t max_new)
{
    int32_t ids[CAP];
    size_t n = parse_ids(ids_s, ids);
    struct job first = {engine, NULL, "t1", ids, n, max_new, 1};
    if (run_concurrently(&first, 1) != 0)
        return 1;
    talon_rt *rt = first.rt, *rt2 = NULL;
    int bad = generate_print(rt, "main", ids, n, max_new);
    struct job later = {NULL, rt, "t2", ids, n, max_new, 1};
    bad |= run_concurrently(&later, 1);
    if (talon_rt_open(engine, NULL, &rt2) != TALON_RT_OK) {
        fprintf(stderr, "open: %s\n", talon_rt_last_error(NULL));
        return 1;
    }
    struct job both[2] = {{NULL, rt, "c1", ids, n, max_new, 1}, {NULL, rt2, "c2", ids, n, max_new, 1}};
    bad |= run_concurrently(both, 2);
    return bad | talon_rt_close(rt) | talon_rt_close(rt2);
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "errors") == 0)
        return run_errors(argv[2]);
    if (argc == 6 && strcmp(argv[1], "two") == 0)
        return run_two(argv[2], argv[3], argv[4], (size_t)atoi(argv[5]));
    if (argc == 5 && strcmp(argv[1], "thread") == 0)
        return run_thread(argv[2], argv[3], (size_t)atoi(argv[4]));
    fprintf(stderr, "usage: %s errors ENGINE | two A B IDS MAX | thread ENGINE IDS MAX\n", argv[0]);
    return 2;
}
