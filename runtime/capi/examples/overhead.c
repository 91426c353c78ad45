/*
 * overhead.c — time N calls through the C API: a one-token generation and a tokenizer call.
 * runtime/capi/overhead.py builds it, runs it and times the same calls in Python.
 *
 *   overhead ENGINE_DIR OPTIONS_JSON IDS TEXT N
 *
 * Prints one line per measurement: "c <name> median_us=<m> min_us=<m> calls=<N>".
 */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "talon_rt.h"

enum { CAP = 4096 };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

static void summary(const char *name, double *t, int n)
{
    qsort(t, (size_t)n, sizeof *t, cmp_double);
    printf("c %s median_us=%.2f min_us=%.2f calls=%d\n", name, 1e6 * t[n / 2], 1e6 * t[0], n);
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: %s ENGINE_DIR OPTIONS_JSON IDS TEXT N\n", argv[0]);
        return 2;
    }
    int calls = atoi(argv[5]);
    if (calls < 1)
        return 2;
    int32_t ids[CAP], out[CAP];
    size_t n_ids = 0, n_out = 0;
    for (const char *s = argv[3]; *s && n_ids < CAP;) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s)
            break;
        ids[n_ids++] = (int32_t)v;
        s = *end == ',' ? end + 1 : end;
    }
    talon_rt *rt = NULL;
    int status = talon_rt_open(argv[1], argv[2], &rt);
    if (status != TALON_RT_OK) {
        fprintf(stderr, "open: %s\n", talon_rt_last_error(NULL));
        return 1;
    }
    double *t = malloc((size_t)calls * sizeof *t);
    for (int i = -3; i < calls && status == TALON_RT_OK; i++) { /* 3 warm-up calls */
        double t0 = now_s();
        status = talon_rt_generate_ids(rt, ids, n_ids, 1, out, CAP, &n_out);
        if (i >= 0)
            t[i] = now_s() - t0;
    }
    if (status == TALON_RT_OK)
        summary("generate_1_token", t, calls);
    for (int i = -3; i < calls && status == TALON_RT_OK; i++) {
        double t0 = now_s();
        status = talon_rt_encode(rt, argv[4], out, CAP, &n_out);
        if (i >= 0)
            t[i] = now_s() - t0;
    }
    if (status == TALON_RT_OK)
        summary("encode", t, calls);
    if (status != TALON_RT_OK)
        fprintf(stderr, "%s: %s\n", talon_rt_status_name(status), talon_rt_last_error(rt));
    free(t);
    talon_rt_close(rt);
    return status == TALON_RT_OK ? 0 : 1;
}
