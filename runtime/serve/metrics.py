"""Prometheus metrics of one server (GET /metrics, text exposition format). Each app has its own
registry, so several servers (tests) can live in one process."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from talon_rt.runtime.serve.pool import Done, Pool

# seconds; from a q=1 call (~1 ms on the tiny engines) to a long wait in a full queue
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKENS_PER_S_BUCKETS = (10, 25, 50, 100, 200, 400, 800, 1600, 3200)
TAU_BUCKETS = (1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, pool: Pool):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("talon_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.errors = Counter("talon_errors", "failed requests by error type", ["type"], registry=r)
        self.cancelled = Counter("talon_cancelled", "generations stopped because the client went away",
                                 registry=r)
        self.tokens = Counter("talon_generated_tokens", "tokens generated", registry=r)
        Gauge("talon_queue_depth", "requests waiting for an instance", registry=r).set_function(pool.waiting)
        Gauge("talon_instances_busy", "instances generating now", registry=r).set_function(pool.busy)
        Gauge("talon_instances", "engine instances", registry=r).set(len(pool.instances))
        self.ttft = Histogram("talon_time_to_first_token_seconds", "request arrival to first token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("talon_request_duration_seconds", "request arrival to last token",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self.tokens_per_s = Histogram("talon_tokens_per_second", "per generation, prefill included",
                                      buckets=TOKENS_PER_S_BUCKETS, registry=r)
        self.tau = Histogram("talon_tau", "tokens per target verify call, per generation",
                             buckets=TAU_BUCKETS, registry=r)

    def generation(self, done: Done) -> None:
        s = done.result.stats
        self.tokens.inc(len(done.result.tokens))
        self.tokens_per_s.observe(s.tokens_per_s)
        if s.rounds:
            self.tau.observe(s.tau)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
