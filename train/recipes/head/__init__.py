"""The head recipe: an EAGLE-3 head for a real target, trained on the target's own answers.
`python -m talon_rt.train.recipes.head --help` lists the steps; models/smollm2-eagle3/README.md records a run."""
