"""Build time: local checkpoints -> an engine directory (docs/engine-format.md). Needs torch.

    config.py       typed target / EAGLE-3 head configs parsed from config.json
    reference.py    PyTorch reference modules (target, EAGLE-3 head); the slow, obviously-correct path
    checkpoints.py  HF / EAGLE-3 folder loaders (safetensors, sharded, pytorch_model.bin)
    onnx_graphs.py  target.onnx, draft_fc.onnx, draft.onnx built node by node (standard ops)
    blocks.py       the MatMulNBits block layout (`BlockWeight`) every quantised weight is stored in
    quantize.py     int8 / int4 weights: round-to-nearest, or a GGUF's own blocks (gguf_blocks.py)
    build.py        the export pipeline and manifest; `python -m talon_rt.export` (__main__.py)
    engine_dir.py   `file_record` and `verify_engine_dir` (the runtime's validator)
    check.py        post-export parity check of the graphs against the reference (--check)
    parity.py       drive the graphs through ORT with numpy (tests, checks)
    trt.py          `python -m talon_rt.export.trt`: TensorRT plans
    tiny.py         tiny random pairs in the real on-disk formats, for tests and CI

The recipes that train models live in train/, which imports export; export never imports train.
"""
