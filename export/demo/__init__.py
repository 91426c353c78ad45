"""The demo model pair: a small Llama target, its EAGLE-3 head and a 2-layer draft LM, trained on the
CPython standard library. `python -m export.demo --help` lists the steps; models/demo/README.md
records what was trained and how to reproduce it."""
