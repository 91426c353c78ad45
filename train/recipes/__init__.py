"""The training recipes, one package each: `python -m talon_rt.train.recipes.stdlib_pair --help`,
`python -m talon_rt.train.recipes.head --help`. A recipe imports train/ and export/, never another recipe."""
