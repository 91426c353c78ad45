"""The stdlib pair: a small Llama target, its EAGLE-3 head and a 2-layer draft LM, trained on the
CPython standard library. `python -m talon_rt.train.recipes.stdlib_pair --help` lists the steps;
models/stdlib-pair/README.md records what was trained and how to reproduce it."""
