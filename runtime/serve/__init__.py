"""`talon-rt serve`: an OpenAI-compatible HTTP API over a pool of engine instances (docs/serving.md).

    protocol.py  request models and OpenAI-shaped responses, chunks and errors
    stops.py     the `stop` strings of a request, applied to streamed text
    pool.py      engine instances behind one bounded first-come-first-served queue; cancellation
    metrics.py   the Prometheus metrics at /metrics
    app.py       the FastAPI application
    loadtest.py  the loopback load test (`python -m talon_rt.runtime.serve.loadtest`)

Needs the `serve` extra (fastapi, uvicorn, prometheus-client); the rest of the runtime does not.
"""

API_KEY_ENV = "TALON_RT_API_KEY"   # the API key when --api-key is not given (keeps it out of `ps`)
