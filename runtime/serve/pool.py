"""Engine instances behind one bounded queue.

One Generator runs one generation at a time, so each instance is a thread that owns one Generator
and takes the oldest waiting job (first come, first served across all clients). The queue holds at
most `max_queue` waiting jobs; `submit` refuses more (QueueFull, with a Retry-After estimate). A job's
events (text deltas, then done, for each of its n choices in turn; or an error) reach the event loop
through an asyncio.Queue. Cancelling a
job (its client went away) stops it before it starts, or at the next round boundary: the instance's
on_tokens callback returns False (talon_rt.runtime.decode.OnTokens). Any exception stays inside its job.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from talon_rt.runtime.api import GenerationResult, Generator
from talon_rt.runtime.errors import TalonError
from talon_rt.runtime.logprobs import TokenLogprob
from talon_rt.runtime.options import Options, resolve_options
from talon_rt.runtime.serve.stops import StopText
from talon_rt.runtime.text import IncrementalText

log = logging.getLogger("talon_rt.serve")

# work(generator, max_new_tokens, on_tokens) -> result: what one request generates
Work = Callable[[Generator, "int | None", Callable[[list[int]], bool]], GenerationResult]
_STOP = None                       # queue sentinel: the instance thread exits
SERVICE_EWMA = 0.2                 # weight of the newest job in the mean service time (Retry-After)


def threads_per_instance(instances: int) -> int:
    """Threads per engine instance when `instances` share this machine's cores."""
    return max(1, (os.cpu_count() or 1) // instances)


class QueueFull(Exception):
    def __init__(self, waiting: int, retry_after_s: int):
        super().__init__(f"all engine instances are busy and {waiting} requests are waiting "
                         f"(--max-queue); retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class Delta:
    text: str
    tokens: list[int]                  # the ids that produced it (stop strings may hide their text)
    index: int = 0                     # the choice
    logprobs: list[TokenLogprob] | None = None   # the tokens', when the request asked for them


@dataclass(frozen=True)
class Done:
    result: GenerationResult
    options: Options
    stopped: bool                      # a stop string ended the text
    instance: int
    queue_s: float                     # waiting time before an instance took the job
    index: int = 0                     # the choice


@dataclass(frozen=True)
class Failed:
    error: BaseException


@dataclass
class Job:
    work: Work
    options: Options
    max_new_tokens: int | None
    stop: Sequence[str]
    loop: asyncio.AbstractEventLoop
    n: int = 1                         # choices, generated one after the other
    logprobs: bool = False             # stream each delta's logprobs (work asks the Generator for them)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)
    enqueued: float = field(default_factory=time.perf_counter)
    watched: float = 0.0               # time.monotonic() of the handler's last check of its client

    def post(self, event: Delta | Done | Failed) -> None:
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:          # the event loop is closed: the server is shutting down, nobody listens
            self.cancel()

    def cancel(self) -> None:
        self.cancelled.set()


class Instance:
    def __init__(self, index: int, generator: Generator, jobs: queue.Queue, on_done: Callable[[float], None]):
        self.index = index
        self.generator = generator
        self.busy = False
        self._jobs = jobs
        self._on_done = on_done
        self.thread = threading.Thread(target=self._serve, name=f"talon-instance-{index}", daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not _STOP:
            if job.cancelled.is_set():
                job.post(Failed(CancelledBeforeStart()))
                continue
            self.busy = True
            start = time.perf_counter()
            try:
                self._run(job, start - job.enqueued)
            except Exception as e:   # per request: a failing generation never stops the instance
                if not isinstance(e, TalonError):
                    log.exception("instance %d: generation failed", self.index)
                job.post(Failed(e))
            finally:
                self.busy = False
                self._on_done(time.perf_counter() - start)

    def _run(self, job: Job, queue_s: float) -> None:
        gen = self.generator_for(job.options)      # n choices share it: a seeded sampler carries on
        for index in range(job.n):
            if job.cancelled.is_set():
                return
            self._choice(gen, job, index, queue_s)

    def _choice(self, gen: Generator, job: Job, index: int, queue_s: float) -> None:
        text, stops = IncrementalText(gen.decode), StopText(job.stop)
        streamed = 0

        def on_tokens(new: list[int]) -> bool:
            nonlocal streamed
            piece = stops.feed(text.push(new))
            logprobs = None
            if job.logprobs:
                logprobs = gen.logprobs_so_far()[streamed:streamed + len(new)]
                streamed += len(new)
            job.post(Delta(piece, list(new), index, logprobs))
            return not (stops.matched or job.cancelled.is_set())

        res = job.work(gen, job.max_new_tokens, on_tokens)
        if not stops.matched:
            tail = stops.feed(text.rest())
            tail += "" if stops.matched else stops.flush()
            if tail:
                job.post(Delta(tail, [], index, [] if job.logprobs else None))
        job.post(Done(res, gen.options, stops.matched, self.index, queue_s, index))

    def generator_for(self, options: Options) -> Generator:
        """The instance's own Generator when the options match (a seeded sampler always starts fresh)."""
        base = self.generator
        seeded = options.seed is not None and options.temperature > 0
        if options == base.options and not seeded:
            return base
        return base.with_options(**asdict(options))


class CancelledBeforeStart(Exception):
    """The client went away while its request was waiting."""


class Pool:
    def __init__(self, generators: Sequence[Generator], max_queue: int):
        if not generators:
            raise ValueError("a pool needs at least one generator")
        if max_queue < 1:
            raise ValueError(f"max_queue: {max_queue} must be >= 1 (queue.Queue reads 0 as unbounded)")
        self.manifest = generators[0].manifest
        self.options = generators[0].options
        self.max_queue = max_queue
        self.service_s = 1.0            # mean seconds per job, refined as jobs finish
        self._jobs: queue.Queue = queue.Queue(maxsize=max_queue)
        self.instances = [Instance(i, g, self._jobs, self._record) for i, g in enumerate(generators)]

    def resolve(self, overrides: dict[str, Any]) -> Options:
        """The server's options with a request's overrides; raises OptionError."""
        return resolve_options(self.manifest, {**asdict(self.options), **overrides})

    def submit(self, job: Job) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(self.waiting(), self.retry_after_s()) from None

    def max_prompt_chars(self) -> int:
        """The most characters a text prompt may have (Generator.max_prompt_chars)."""
        return self.instances[0].generator.max_prompt_chars()

    def waiting(self) -> int:
        return self._jobs.qsize()

    def busy(self) -> int:
        return sum(i.busy for i in self.instances)

    def retry_after_s(self) -> int:
        """Seconds until a queue slot is likely free: the queue drained by every instance."""
        return max(1, math.ceil(self.service_s * (self.waiting() + 1) / len(self.instances)))

    def _record(self, seconds: float) -> None:
        self.service_s += SERVICE_EWMA * (seconds - self.service_s)

    def close(self) -> None:
        """Refuse what still waits, stop the threads, close the engines."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            job.cancel()
            job.post(Failed(CancelledBeforeStart()))
        for _ in self.instances:
            self._jobs.put(_STOP)
        for inst in self.instances:
            inst.thread.join()
            inst.generator.close()
