"""The training recipes, one package each: `python -m train.recipes.stdlib_pair --help`,
`python -m train.recipes.head --help`. A recipe imports train/ and export/, never another recipe."""
