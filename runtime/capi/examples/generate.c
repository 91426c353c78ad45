/*
 * generate.c — example C host for libtalon_rt: open an engine, generate, print tokens, text, stats.
 *
 *   generate [--ids] [--stream] [--options JSON] ENGINE_DIR PROMPT [MAX_NEW_TOKENS]
 *
 * PROMPT is text (encoded with the engine's tokenizer), or with --ids comma-separated token ids.
 * --stream prints each round's accepted tokens as they come. MAX_NEW_TOKENS 0 or absent = the
 * engine's default. Build (after `make capi`):
 *
 *   cc -std=c99 -Iruntime/capi runtime/capi/examples/generate.c -Lruntime/capi -ltalon_rt \
 *      -Wl,-rpath,$PWD/runtime/capi -o generate
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "talon_rt.h"

static int fail(const char *what, int status, const talon_rt *rt)
{
    fprintf(stderr, "%s: %s: %s\n", what, talon_rt_status_name(status), talon_rt_last_error(rt));
    return 1;
}

static int print_round(const int32_t *tokens, size_t n, void *user)
{
    (void)user;
    printf("round:");
    for (size_t i = 0; i < n; i++)
        printf(" %d", (int)tokens[i]);
    printf("\n");
    fflush(stdout);
    return 0;
}

/* "1,5,9" -> ids; returns the count, or 0 on a malformed list. */
static size_t parse_ids(const char *s, int32_t *ids, size_t cap)
{
    size_t n = 0;
    while (*s && n < cap) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s)
            return 0;
        ids[n++] = (int32_t)v;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return 0;
    }
    return n;
}

enum { CAP = 4096 };

/* Text prompt: talon_rt_generate_text. Ids (or --stream): talon_rt_generate_ids / _stream, then
 * talon_rt_decode. Either way the ids come from talon_rt_last_tokens and the stats from
 * talon_rt_last_stats. Returns a status; prints the failure. */
static int generate(talon_rt *rt, const char *prompt, int use_ids, int stream, size_t max_new)
{
    static int32_t ids[CAP], first[CAP];
    int32_t *out = first;
    size_t n_ids = 0, n_out = 0;
    char *text = NULL;
    const char *step = "generate";
    int status = TALON_RT_OK;
    if (use_ids && (n_ids = parse_ids(prompt, ids, CAP)) == 0) {
        fprintf(stderr, "--ids: expected comma-separated token ids, got '%s'\n", prompt);
        return TALON_RT_E_INPUT;
    }
    if (!use_ids && !stream) {
        status = talon_rt_generate_text(rt, prompt, max_new, &text);
    } else {
        if (!use_ids && (status = talon_rt_encode(rt, prompt, ids, CAP, &n_ids)) != TALON_RT_OK) {
            fail("encode", status, rt);
            return status;
        }
        if (stream)
            status = talon_rt_generate_stream(rt, ids, n_ids, max_new, print_round, NULL, &n_out);
        else
            status = talon_rt_generate_ids(rt, ids, n_ids, max_new, out, CAP, &n_out);
    }
    if (status == TALON_RT_OK || status == TALON_RT_E_BUFFER) {
        /* the whole result, however long, without generating again */
        step = "last_tokens";
        status = talon_rt_last_tokens(rt, first, CAP, &n_out);
        if (status == TALON_RT_E_BUFFER) { /* *n_out = the size needed */
            out = malloc(n_out * sizeof *out);
            status = out ? talon_rt_last_tokens(rt, out, n_out, &n_out) : TALON_RT_E_NOMEM;
        }
    }
    if (status == TALON_RT_OK && !text && (status = talon_rt_decode(rt, out, n_out, &text)) != TALON_RT_OK)
        step = "decode";
    talon_rt_stats st;
    if (status == TALON_RT_OK && (status = talon_rt_last_stats(rt, &st)) != TALON_RT_OK)
        step = "stats";
    if (status == TALON_RT_OK) {
        printf("tokens:");
        for (size_t k = 0; k < n_out; k++)
            printf(" %d", (int)out[k]);
        printf("\ntext: %s\n", text);
        printf("stats: n_tokens=%zu stop_reason=%d tau=%.3f delta=%.3f tokens_per_s=%.1f rounds=%llu "
               "draft_calls=%llu target_calls=%llu host_share=%.3f call_s=%.6f\n",
               st.n_tokens, st.stop_reason, st.tau, st.delta, st.tokens_per_s,
               (unsigned long long)st.rounds, (unsigned long long)st.draft_calls,
               (unsigned long long)st.target_calls, st.host_share, st.call_s);
    } else {
        fail(step, status, rt);
    }
    talon_rt_free(text);
    if (out && out != first)
        free(out);
    return status;
}

int main(int argc, char **argv)
{
    int use_ids = 0, stream = 0;
    const char *options = NULL;
    int i = 1;
    for (; i < argc && strncmp(argv[i], "--", 2) == 0; i++) {
        if (strcmp(argv[i], "--ids") == 0)
            use_ids = 1;
        else if (strcmp(argv[i], "--stream") == 0)
            stream = 1;
        else if (strcmp(argv[i], "--options") == 0 && i + 1 < argc)
            options = argv[++i];
        else
            break;
    }
    if (argc - i < 2) {
        fprintf(stderr, "usage: %s [--ids] [--stream] [--options JSON] ENGINE_DIR PROMPT "
                        "[MAX_NEW_TOKENS]\n", argv[0]);
        return 2;
    }
    const char *engine = argv[i], *prompt = argv[i + 1];
    size_t max_new = argc - i > 2 ? (size_t)strtoul(argv[i + 2], NULL, 10) : 0;

    talon_rt *rt = NULL;
    int status = talon_rt_open(engine, options, &rt);
    if (status != TALON_RT_OK)
        return fail("open", status, NULL);
    status = generate(rt, prompt, use_ids, stream, max_new);
    int close_status = talon_rt_close(rt);
    if (status == TALON_RT_OK && close_status != TALON_RT_OK)
        return fail("close", close_status, NULL);
    return status == TALON_RT_OK ? 0 : 1;
}
