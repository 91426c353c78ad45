"""Serving on Triton Inference Server (docs/serving.md).

    spec.py      the model's tensors: one definition for the python backend's config.pbtxt and PyTriton
    stream.py    one request's generation as an iterator of streamed pieces (text, token ids), and the
                 request and response tensors read and written
    model.py     the python-backend model (decoupled: one response per piece) that a stock Triton serves
    repo.py      `talon-rt triton-repo`: writes a model repository around an engine
    pytriton.py  the same model through PyTriton (Triton bundled in a wheel), for a local run
    client.py    a streaming gRPC client (PyTriton's DecoupledModelClient)
"""
