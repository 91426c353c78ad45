"""`talon-rt bench`: the paper's comparison (ar / chain / eagle3 / talon) and the peers, in one run.

datasets.py  evaluation prompts from their registry packages or a JSONL file
runner.py    one interleaved run: every prompt through every configuration, after a warm-up
metrics.py   per-(dataset, policy, budget, temperature) rows: tau, delta, tokens/s, speed-up, shapes
report.py    results.json and results.md;  plots.py: the PNG figures
sweep.py     the best budget for this engine on this machine, written into the manifest defaults
peers/       onnxruntime-genai and transformers on the same weights, each in its own process
cli.py       the `bench` subcommand
"""
