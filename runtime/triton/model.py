"""talon-rt as a Triton python-backend model (decoupled: each streamed piece is one response).

`talon-rt triton-repo` copies this file to REPO/talon/1/model.py beside config.pbtxt. Triton creates
one TritonPythonModel per instance of the instance group: each opens its own Generator, so
`count: N` runs N concurrent generations. The Python that runs it needs talon-rt installed (see
docs/serving.md). config.pbtxt parameters: `engine_dir` (relative to the model's folder, or absolute)
and `options` (a JSON object of runtime options, e.g. {"threads": 1}).
"""

from __future__ import annotations

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils  # provided by Triton's python backend

from talon_rt.runtime.api import Generator
from talon_rt.runtime.errors import TalonError
from talon_rt.runtime.triton.stream import generate_stream, piece_arrays, read_request


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException("talon: config.pbtxt must set model_transaction_policy "
                                                "{ decoupled: true } (tokens stream as separate responses)")
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        engine = Path(args["model_repository"]) / params.get("engine_dir", "engine")
        self.generator = Generator.open(engine, **json.loads(params.get("options") or "{}"))

    def execute(self, requests: list) -> None:
        for request in requests:
            sender = request.get_response_sender()
            try:
                req = read_request(lambda name: _input(request, name))
                for piece in generate_stream(self.generator, req, cancelled=sender.is_cancelled):
                    tensors = [pb_utils.Tensor(k, v) for k, v in piece_arrays(piece).items()]
                    sender.send(pb_utils.InferenceResponse(output_tensors=tensors))
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            except Exception as e:       # a request fails alone; the runtime's errors keep their names
                kind = type(e).__name__ if isinstance(e, TalonError) else "InternalError"
                error = pb_utils.TritonError(f"{kind}: {e}")
                sender.send(pb_utils.InferenceResponse(error=error), flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def finalize(self) -> None:
        self.generator.close()


def _input(request, name: str):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy()
